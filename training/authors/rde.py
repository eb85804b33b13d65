"""RDE-VOS (Li, Hu, Xu, Wang, Zhang, Wu, "Recurrent Dynamic Embedding for Video Object
Segmentation", CVPR 2022) as the authors release it (``Limingxing00/RDE-VOS-CVPR2022``,
``model/eval_network.py``, ``model/modules.py``): STCN (:mod:`.stcn`) plus ``mem_compress``, the
spatio-temporal aggregation module (SAM, §3.3 Eq. 4–6) with the authors' parameter names.

``mem_compress`` = ``key_encoder`` SAM(64) + ``compress_key`` Conv3d(64, 64, (2,3,3), pad
(0,1,1)) for keys and ``value_encoder`` SAM(512) + ``compress_value`` for values (one batch row
per object). A SAM over x = [previous RDE, new memory frame] stacked on a time axis of 2 (Eq. 4):

* ``non_local`` (Eq. 5, extracting): θ = ``theta`` (1×1×1 conv C → C/2), φ = ``phi.0`` and
  g = ``g.0`` (1×1×1 convs C → C/2, each max-pooled (1,2,2)); f = θᵀφ / P↓ (P↓ = number of pooled
  positions; no softmax), y = f·gᵀ, z = ``W``(y) + x (1×1×1 conv C/2 → C, bias).
* ``conv1`` (Eq. 6, enhancing): ASPP over z: ``aspp1`` 1×1×1 conv, ``aspp2..4`` (1,3,3) convs with
  spatial dilations 2, 4, 6, each C → C/4 without bias + ReLU, concatenated → ``conv1`` (1,3,3)
  conv C → C without bias + ReLU; x = ASPP(z) + z.
* squeezing: ``compress_key``/``compress_value`` collapse the time axis → the new RDE.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .stcn import STCN, stcn_config


class NonLocal3D(nn.Module):
    """Non-local block over [B,C,T,h,w] with (1,2,2)-max-pooled φ and g and a 1/P↓ normaliser."""

    def __init__(self, channels: int):
        super().__init__()
        inner = max(1, channels // 2)
        self.inner = inner
        self.g = nn.Sequential(nn.Conv3d(channels, inner, 1))
        self.theta = nn.Conv3d(channels, inner, 1)
        self.phi = nn.Sequential(nn.Conv3d(channels, inner, 1))
        self.W = nn.Conv3d(inner, channels, 1)

    def forward(self, x):
        b = x.shape[0]
        g = F.max_pool3d(self.g(x), (1, 2, 2)).reshape(b, self.inner, -1)         # [B,C',P↓]
        phi = F.max_pool3d(self.phi(x), (1, 2, 2)).reshape(b, self.inner, -1)     # [B,C',P↓]
        theta = self.theta(x).reshape(b, self.inner, -1)                          # [B,C',P]
        f = theta.transpose(1, 2) @ phi / phi.shape[2]                            # [B,P,P↓]
        y = (f @ g.transpose(1, 2)).transpose(1, 2).reshape(b, self.inner, *x.shape[2:])
        return self.W(y) + x


class _Atrous(nn.Module):
    def __init__(self, cin: int, cout: int, kernel, padding, dilation):
        super().__init__()
        self.atrous_conv = nn.Conv3d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False)

    def forward(self, x):
        return F.relu(self.atrous_conv(x))


class ASPP3D(nn.Module):
    """``aspp1`` (1×1×1) and ``aspp2..4`` ((1,3,3), dilation 2/4/6) C → C/4 + ReLU, concat,
    ``conv1`` (1,3,3) → C + ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        mid = channels // 4
        self.aspp1 = _Atrous(channels, mid, 1, 0, 1)
        for i, d in enumerate((2, 4, 6), start=2):
            setattr(self, f"aspp{i}", _Atrous(channels, mid, (1, 3, 3), (0, d, d), (1, d, d)))
        self.conv1 = nn.Conv3d(4 * mid, channels, (1, 3, 3), padding=(0, 1, 1), bias=False)

    def forward(self, x):
        x = torch.cat([self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x)], 1)
        return F.relu(self.conv1(x))


class SAM(nn.Module):
    """``non_local`` then x + ``conv1`` (ASPP) (x: [B,C,2,h,w])."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ASPP3D(channels)
        self.non_local = NonLocal3D(channels)

    def forward(self, x):
        x = self.non_local(x)
        return self.conv1(x) + x


class MemCompress(nn.Module):
    """RDE-VOS's ``mem_compress``: SAMs and squeeze convs for keys (64) and values (512)."""

    def __init__(self):
        super().__init__()
        self.key_encoder = SAM(64)
        self.value_encoder = SAM(512)
        self.compress_key = nn.Conv3d(64, 64, (2, 3, 3), padding=(0, 1, 1))
        self.compress_value = nn.Conv3d(512, 512, (2, 3, 3), padding=(0, 1, 1))

    @staticmethod
    def _fold(sam, squeeze, previous, new):
        return squeeze(sam(torch.stack([previous, new], 2)))[:, :, 0]


class RDE(STCN):
    """The authors' RDE-VOS network with vosedge's exported parts, SAM graphs included.

    ``inference``: as STCN, with the ``two-frames-compress`` memory of the authors'
    ``eval_davis.py`` (``--mem_every 3 --top 40``): memory = [RDE, latest memory frame, first,
    first], every frame with t mod 3 = 0 folded into the RDE (the sdk's ``rde`` policy).
    """

    arch = "rde"
    default_method = "rde"

    def __init__(self):
        super().__init__()
        self.config = stcn_config("rde", 40, ["sam"])
        self.mem_compress = MemCompress()

    @staticmethod
    def matches(keys: set) -> bool:
        """Whether a state_dict's keys are RDE-VOS's: STCN's + ``mem_compress.``."""
        return "key_proj.key_proj.weight" in keys and any(k.startswith("mem_compress.") for k in keys)

    def fold_key(self, previous, new):
        """SAM for keys (RDE-VOS Eq. 4–6): previous RDE key [1,64,h,w], new memory frame's key
        [1,64,h,w] → new RDE key [1,64,h,w]."""
        m = self.mem_compress
        return m._fold(m.key_encoder, m.compress_key, previous, new)

    def fold_value(self, previous, new):
        """SAM for values, one row per object: [N,512,h,w] × 2 → new RDE values [N,512,h,w]."""
        m = self.mem_compress
        return m._fold(m.value_encoder, m.compress_value, previous, new)
