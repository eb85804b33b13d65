"""QDMN (Liu, Yu, Ni, Chen, Xu, Yang, "Learning Quality-aware Dynamic Memory for Video Object
Segmentation", ECCV 2022) as the authors release it (``workforai/QDMN``,
``model/eval_network.py``, ``model/modules.py``, ``model/mod_resnet.py``), with their parameter
names and shapes so that their s012 checkpoint loads strictly.

An STM/MiVOS-style network: memory keys are computed per object from the mask encoder.

* ``rgb_encoder`` — ResNet-50 (every conv with a bias, as in QDMN's ``mod_resnet``) ``conv1``,
  ``bn1``, max-pool, ``res2`` (f4 256), ``layer2`` (f8 512), ``layer3`` (f16 1024).
* ``mask_rgb_encoder`` — the same ResNet-50 with a 5-channel ``conv1`` (RGB, this object's
  probability, the sum of the other objects'), ``layer1..3`` → f16_m [N,1024,h,w].
* ``kv_m_f16`` / ``kv_q_f16`` — 3×3 convs 1024 → key 128 (``key_proj``) and value 512
  (``val_proj``) for memory and query.
* prior enhancement (QDMN Eq. 5) — ``concat_conv`` 3×3 conv 1025 → 1 over [f16, previous
  foreground bilinearly resized to h×w]; f16 ← f16 · σ(·); the query key and value come from it.
* readout — affinity k_mᵀk_q/√128 per object, top-50 softmax over memory positions.
* ``aspp`` — DeepLab ASPP on [readout, query value] (1024): 1×1 and 3×3 (dilation 6/12/18) convs
  to 256 + BN + ReLU, image pooling (1×1 conv + BN + ReLU, bilinear back with align_corners
  True), concat 1280 → 1×1 conv 1024 + BN + ReLU (dropout is off in eval).
* ``decoder`` — ``compress`` ResBlock(1024 → 512); ``up_16_8``/``up_8_4``: ``skip_conv1`` 3×3 conv,
  ``skip_conv2`` ResBlock, + ×2 bilinear of the coarse feature, ``out_conv`` ResBlock; ``pred``;
  ×4 bilinear.
* ``score`` — the QAM (Eq. 1): f16_m bilinearly resized to 24×24 → ``conv1..3`` 3×3 (1024/256 →
  256) + ReLU, ``conv4`` stride 2 + ReLU → ``fc1`` 36864 → 1024 + ReLU → ``fc2`` → 1 + **ReLU**
  (the released model's activation: predicted quality ≥ 0, unbounded).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Bottleneck
from .stcn import IMAGENET_MEAN, IMAGENET_STD, Decoder, ResBlock, ResNetStem, resnet_layer


class _Trunk(ResNetStem):
    """QDMN's ResNet-50 (``mod_resnet``: every conv with a bias) to layer3: ``conv1`` (7×7,
    stride 2) + ``bn1`` + ReLU + max-pool, then ``first`` (``layer1`` or ``res2``), ``layer2``,
    ``layer3`` → (f16 1024, f8 512, f4 256)."""

    def __init__(self, in_channels: int, first: str):
        super().__init__(in_channels, bias=True)
        setattr(self, first, resnet_layer(Bottleneck, 64, 64, 3, 1, bias=True))
        self.layer2 = resnet_layer(Bottleneck, 256, 128, 4, 2, bias=True)
        self.layer3 = resnet_layer(Bottleneck, 512, 256, 6, 2, bias=True)
        self._first = first

    def forward(self, x):
        f4 = getattr(self, self._first)(self.stem(x))
        f8 = self.layer2(f4)
        return self.layer3(f8), f8, f4


class KeyValue(nn.Module):
    """``key_proj`` 3×3 conv C → 128 and ``val_proj`` 3×3 conv C → 512."""

    def __init__(self, indim: int = 1024, keydim: int = 128, valdim: int = 512):
        super().__init__()
        self.key_proj = nn.Conv2d(indim, keydim, 3, padding=1)
        self.val_proj = nn.Conv2d(indim, valdim, 3, padding=1)


class UpsampleBlock(nn.Module):
    """``skip_conv2``(``skip_conv1``(skip)) + ×2 bilinear(up) → ``out_conv``."""

    def __init__(self, skip_c: int, up_c: int, out_c: int):
        super().__init__()
        self.skip_conv1 = nn.Conv2d(skip_c, up_c, 3, padding=1)
        self.skip_conv2 = ResBlock(up_c, up_c)
        self.out_conv = ResBlock(up_c, out_c)

    def forward(self, skip, up):
        x = self.skip_conv2(self.skip_conv1(skip))
        x = x + F.interpolate(up, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.out_conv(x)


class _ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, dilation: int):
        super().__init__()
        self.atrous_conv = nn.Conv2d(cin, cout, kernel, padding=0 if kernel == 1 else dilation,
                                     dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.atrous_conv(x)))


class ASPP(nn.Module):
    """DeepLab-v3 ASPP at output stride 16 (dilations 1, 6, 12, 18) with image pooling
    (``global_avg_pool.1`` conv, ``.2`` BN), ``conv1`` 1280 → 1024 + ``bn1`` + ReLU."""

    def __init__(self, channels: int = 1024):
        super().__init__()
        self.aspp1 = _ConvBNReLU(channels, 256, 1, 1)
        self.aspp2 = _ConvBNReLU(channels, 256, 3, 6)
        self.aspp3 = _ConvBNReLU(channels, 256, 3, 12)
        self.aspp4 = _ConvBNReLU(channels, 256, 3, 18)
        self.global_avg_pool = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 256, 1, bias=False),
                                             nn.BatchNorm2d(256), nn.ReLU())
        self.conv1 = nn.Conv2d(1280, 1024, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(1024)

    def forward(self, x):
        pooled = self.global_avg_pool(x.mean((2, 3), keepdim=True))
        # bilinear resize of a 1×1 map with align_corners=True is a broadcast
        pooled = pooled.expand(-1, -1, x.shape[2], x.shape[3])
        x = torch.cat([self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x), pooled], 1)
        return F.relu(self.bn1(self.conv1(x)))


class Score(nn.Module):
    """QAM score head (QDMN Eq. 1) on a [N,1024,24,24] feature → [N]: ReLU output (≥ 0, the
    released model) or, with ``activation="sigmoid"``, in (0,1) (the variant QDMN's README
    suggests for pre-training runs whose scores collapse to 0; same parameters)."""

    def __init__(self, channels: int = 1024, activation: str = "relu"):
        super().__init__()
        if activation not in ("relu", "sigmoid"):
            raise ValueError(f"QAM activation must be 'relu' or 'sigmoid', got {activation!r}")
        self.activation = activation
        self.conv1 = nn.Conv2d(channels, 256, 3, 1, 1)
        self.conv2 = nn.Conv2d(256, 256, 3, 1, 1)
        self.conv3 = nn.Conv2d(256, 256, 3, 1, 1)
        self.conv4 = nn.Conv2d(256, 256, 3, 2, 1)
        self.fc1 = nn.Linear(256 * 12 * 12, 1024)
        self.fc2 = nn.Linear(1024, 1)

    def forward(self, x):
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu(conv(x))
        x = self.fc2(F.relu(self.fc1(x.flatten(1))))[:, 0]
        return F.relu(x) if self.activation == "relu" else torch.sigmoid(x)


class QDMN(nn.Module):
    """The authors' QDMN network with vosedge's exported parts (``docs/graph-contract.md``).

    ``inference`` (QDMN's ``eval_davis.py`` + ``inference_core.py``; manifest version 2): native
    size, symmetric padding, scaled dot-product affinity, top-k 50, memory keys per object (from
    the mask encoder), prior enhancement on every frame with the previous frame's foreground
    (max over objects of its soft-aggregated probabilities), the previous frame read as a
    temporary memory when it is not in memory, QAM on the mask encoder's f16, and the ``qdmn``
    policy with the authors' schedule (see ``export/authors.py``).
    """

    arch = "qdmn"
    default_method = "qdmn"
    inference = {"padding": "centre", "affinity": "dot", "resolution": None, "temporary_memory": True,
                 "memory_keys": "per_object", "prior_enhance": "always",
                 "qam_activation": "relu"}
    # inference_core.py: mem_freq 5, admitted when S̄A > 0.8, memory_thr 20 (→ first + 21 frames)
    policy_defaults = {"qdmn": {"interval": 5, "sigma": 0.8, "beta": 20, "schedule": "authors"}}

    def __init__(self, qam_activation: str = "relu"):
        super().__init__()
        self.inference = {**QDMN.inference, "qam_activation": qam_activation}
        self.config = {"name": "qdmn", "key_channels": 128, "value_channels": 512,
                       "skip_channels": {"f16": 1024, "f8": 512, "f4": 256}, "stride": 16, "max_objects": 64,
                       "top_k": 50, "heads": ["qam", "prior"], "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        self.mask_rgb_encoder = _Trunk(5, "layer1")
        self.rgb_encoder = _Trunk(3, "res2")
        self.kv_m_f16 = KeyValue()
        self.kv_q_f16 = KeyValue()
        self.decoder = Decoder(UpsampleBlock)
        self.aspp = ASPP(1024)
        self.score = Score(1024, qam_activation)
        self.concat_conv = nn.Conv2d(1025, 1, 3, 1, 1)

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(self.config["heads"])

    @staticmethod
    def matches(keys: set) -> bool:
        """Whether a state_dict's keys are QDMN's (mask/RGB encoders, KV projections, score)."""
        return {"mask_rgb_encoder.conv1.weight", "kv_m_f16.key_proj.weight", "score.fc1.weight",
                "concat_conv.weight"} <= keys

    @staticmethod
    def convert_state_dict(sd: dict) -> dict:
        """QDMN's released files load as they are (no conversion)."""
        return sd

    # -- exported parts --------------------------------------------------------------------
    def encode_key(self, image):
        """image [1,3,H,W] normalised → f16 [1,1024,h,w], f8 [1,512,2h,2w], f4 [1,256,4h,4w]
        (the query key comes from :meth:`enhance`)."""
        return self.rgb_encoder(image)

    def encode_value(self, image, masks):
        """image [1,3,H,W], masks [N,2,H,W] (own, others) → memory key [N,128,h,w], value
        [N,512,h,w], and the mask encoder's f16 [N,1024,h,w] (the QAM's input)."""
        n = masks.shape[0]
        f16 = self.mask_rgb_encoder(torch.cat([image.expand(n, -1, -1, -1), masks], 1))[0]
        return self.kv_m_f16.key_proj(f16), self.kv_m_f16.val_proj(f16), f16

    def enhance(self, f16, prior):
        """Prior enhancement (QDMN Eq. 5): f16 [1,1024,h,w], prior [1,1,H,W] (previous frame's
        foreground probability) → query key [1,128,h,w], enhanced f16 [1,1024,h,w]."""
        small = F.interpolate(prior, size=f16.shape[-2:], mode="bilinear", align_corners=False)
        f16 = f16 * torch.sigmoid(self.concat_conv(torch.cat([f16, small], 1)))
        return self.kv_q_f16.key_proj(f16), f16

    @staticmethod
    def readout(query_key, memory_keys, memory_values, valid, top_k):
        """Per-object memory readout (STM; QDMN ``EvalMemoryReader``) with top-k softmax.

        query_key [1,C_k,h,w], memory_keys [N,C_k,M], memory_values [N,C_v,M], valid [M]
        float32 (1 = occupied), top_k int64 scalar (1 ≤ top_k ≤ valid positions) → readout
        [N,C_v,h,w], usage [M] (query positions, summed over objects, whose top-k holds m).
        Affinity A[n,q,m] = k_{n,m}ᵀk_q/√C_k; empty slots get −1e30.
        """
        _, ck, h, w = query_key.shape
        n, cv, m = memory_values.shape
        q = query_key.flatten(2)[0] / math.sqrt(ck)                                  # [C_k,Q]
        aff = memory_keys.transpose(1, 2) @ q                                        # [N,M,Q]
        aff = aff.transpose(1, 2) - ((1 - valid) * 1e30)                             # [N,Q,M]
        vals, idx = torch.topk(aff, top_k, dim=2)                                    # [N,Q,k]
        weights = torch.softmax(vals, dim=2)
        flat = idx.flatten()
        usage = torch.zeros_like(valid).scatter_add(0, flat, torch.ones_like(flat, dtype=valid.dtype))
        rows = (torch.arange(n).view(n, 1) * m + idx.view(n, -1)).flatten()          # [N·Q·k]
        picked = memory_values.transpose(1, 2).reshape(n * m, cv)[rows].view(n, idx.shape[1], idx.shape[2], cv)
        out = (weights.unsqueeze(2) @ picked).squeeze(2)                             # [N,Q,C_v]
        return out.transpose(1, 2).reshape(n, cv, h, w), usage

    def decode(self, readout, f16, f8, f4):
        """readout [N,512,h,w], enhanced f16 [1,1024,h,w], f8, f4 → logits [N,1,H,W]: ASPP over
        [readout, query value], decoder."""
        n = readout.shape[0]
        x = torch.cat([readout, self.kv_q_f16.val_proj(f16).expand(n, -1, -1, -1)], 1)
        return self.decoder(self.aspp(x), f8.expand(n, -1, -1, -1), f4.expand(n, -1, -1, -1))

    def score_from(self, feature):
        """QAM (QDMN Eq. 1): the mask encoder's f16 [N,1024,h,w] → bilinear 24×24 → score [N] ≥ 0."""
        small = F.interpolate(feature, size=(24, 24), mode="bilinear", align_corners=False)
        return self.score(small)
