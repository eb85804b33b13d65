"""STCN-family networks (Cheng et al., "Rethinking Space-Time Networks with Improved Memory
Coverage", NeurIPS 2021), in two configurations (DESIGN.md):

* ``lite`` — key encoder on ImageNet EfficientNet-Lite0 blocks 0..10, C_k = 64, light
  strided-conv value encoder fused with the stride-16 key feature, C_v = 128.
* ``paper`` — ResNet-50 key encoder (layer3), ResNet-18 value encoder (5-channel conv1),
  C_k = 64, C_v = 512, as in STCN and RDE-VOS.

The four core parts match the exported graphs of ``docs/graph-contract.md``:
``encode_key``, ``encode_value``, ``readout``, ``decode``; the optional method heads
(``config["heads"]``, :mod:`training.heads`) add ``enhance`` (prior enhancement), ``score``
(QAM), ``fold_key``/``fold_value`` (SAM).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import EfficientNetLite0, ResNetTrunk, load_lite0_imagenet
from .heads import HEADS, SAM, PriorEnhance, QAMHead

CONFIGS = {
    "lite": {
        "name": "lite", "key_backbone": "efficientnet-lite0", "key_channels": 64,
        "value_channels": 128, "skip_channels": {"f16": 112, "f8": 40, "f4": 24},
        "decoder_channels": [128, 64, 32], "value_encoder_channels": [16, 32, 64, 128],
        "stride": 16, "max_objects": 16, "top_k": 20, "heads": [],
        # (rgb/255 − mean)/std == (rgb − 127.5)/128, the Lite0 ImageNet normalisation
        "mean": [0.5, 0.5, 0.5], "std": [128 / 255] * 3,
    },
    "paper": {
        "name": "paper", "key_backbone": "resnet50", "key_channels": 64,
        "value_channels": 512, "skip_channels": {"f16": 1024, "f8": 512, "f4": 256},
        "decoder_channels": [512, 256, 256], "stride": 16, "max_objects": 16, "top_k": 20,
        "heads": [],
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    },
}


def resolve_config(config) -> dict:
    """``"lite"``/``"paper"`` or a dict (overrides on top of its ``name``'s defaults)."""
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ValueError(f"unknown network config {config!r}; known: {sorted(CONFIGS)}")
        return copy.deepcopy(CONFIGS[config])
    base = resolve_config(config.get("name", "lite"))
    base.update(copy.deepcopy(config))
    unknown = sorted(set(base["heads"]) - set(HEADS))
    if unknown:
        raise ValueError(f"unknown head(s) {unknown}; known: {list(HEADS)}")
    return base


def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride, 1)


class ResBlock(nn.Module):
    """Pre-activation residual block (STCN decoder/fuser)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = conv3x3(cin, cout)
        self.conv2 = conv3x3(cout, cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        y = self.conv2(F.relu(self.conv1(F.relu(x))))
        return y + (x if self.skip is None else self.skip(x))


class UpsampleBlock(nn.Module):
    """×2 bilinear upsampling of the coarse feature + 3×3 conv of the skip feature, then a ResBlock."""

    def __init__(self, skip_c, up_c, out_c):
        super().__init__()
        self.skip_conv = conv3x3(skip_c, out_c)
        self.up_conv = nn.Conv2d(up_c, out_c, 1)
        self.out = ResBlock(out_c, out_c)

    def forward(self, skip, up):
        up = F.interpolate(self.up_conv(up), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.skip_conv(skip) + up)


class LiteKeyEncoder(nn.Module):
    """EfficientNet-Lite0 blocks 0..10 → f4 (24 ch), f8 (40 ch), f16 (112 ch)."""

    def __init__(self, pretrained: bool):
        super().__init__()
        self.trunk = EfficientNetLite0(num_blocks=11)
        if pretrained:
            load_lite0_imagenet(self.trunk)

    def forward(self, image):
        feats = self.trunk(image)
        return feats[2], feats[4], feats[10]


class ResNetKeyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = ResNetTrunk(50, 3)

    def forward(self, image):
        return self.trunk(image)


class LiteValueEncoder(nn.Module):
    """Strided 3×3 convs over [image, own mask, other objects' mask] (5 ch) to stride 16,
    fused with the key encoder's f16 (STCN's value encoder + fuser, lightened)."""

    def __init__(self, f16_c, widths, value_c):
        super().__init__()
        layers, cin = [], 5
        for w in widths:
            layers += [conv3x3(cin, w, 2), nn.ReLU(inplace=True)]
            cin = w
        self.down = nn.Sequential(*layers)
        self.fuse = ResBlock(cin + f16_c, value_c)
        self.out = ResBlock(value_c, value_c)

    def forward(self, image, f16, masks):
        n = masks.shape[0]
        x = torch.cat([image.expand(n, -1, -1, -1), masks], 1)
        x = torch.cat([self.down(x), f16.expand(n, -1, -1, -1)], 1)
        return self.out(self.fuse(x))


class ResNetValueEncoder(nn.Module):
    """ResNet-18 (conv1 takes 5 channels) to layer3 (256 ch) fused with f16 (STCN)."""

    def __init__(self, f16_c, value_c):
        super().__init__()
        self.trunk = ResNetTrunk(18, 5)
        self.fuse = ResBlock(256 + f16_c, value_c)
        self.out = ResBlock(value_c, value_c)

    def forward(self, image, f16, masks):
        n = masks.shape[0]
        x = torch.cat([image.expand(n, -1, -1, -1), masks], 1)
        x = torch.cat([self.trunk(x)[2], f16.expand(n, -1, -1, -1)], 1)
        return self.out(self.fuse(x))


class Decoder(nn.Module):
    """readout ⊕ f16 → stride 16 → 8 → 4 → one logit per object, bilinear to input size."""

    def __init__(self, value_c, skips, widths):
        super().__init__()
        c16, c8, c4 = widths
        self.compress = ResBlock(value_c + skips["f16"], c16)
        self.up_16_8 = UpsampleBlock(skips["f8"], c16, c8)
        self.up_8_4 = UpsampleBlock(skips["f4"], c8, c4)
        self.pred = conv3x3(c4, 1)

    def forward(self, readout, f16, f8, f4):
        n = readout.shape[0]
        x = self.compress(torch.cat([readout, f16.expand(n, -1, -1, -1)], 1))
        x = self.up_16_8(f8.expand(n, -1, -1, -1), x)
        x = self.up_8_4(f4.expand(n, -1, -1, -1), x)
        x = self.pred(F.relu(x))
        return F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False)


def affinity(memory_keys: torch.Tensor, query_keys: torch.Tensor) -> torch.Tensor:
    """Negative squared-L2 affinity of STCN (RDE-VOS Eq. 2).

    memory_keys [B,C_k,M], query_keys [B,C_k,Q] float32 → [B,M,Q] float32:
    (2·k_mᵀk_q − ‖k_m‖²)/√C_k; the −‖k_q‖² term is constant per query and cancels in the
    softmax over memory positions.
    """
    ck = memory_keys.shape[1]
    sq = memory_keys.pow(2).sum(1).unsqueeze(2)                 # [B,M,1]
    ab = memory_keys.transpose(1, 2) @ query_keys               # [B,M,Q]
    return (2 * ab - sq) / math.sqrt(ck)


class VOSNetwork(nn.Module):
    """STCN-family network. ``config``: see :data:`CONFIGS`."""

    def __init__(self, config="lite", pretrained: bool = True):
        super().__init__()
        cfg = resolve_config(config)
        self.config = cfg
        skips, ck, cv = cfg["skip_channels"], cfg["key_channels"], cfg["value_channels"]
        if cfg["key_backbone"] == "efficientnet-lite0":
            self.key_encoder = LiteKeyEncoder(pretrained)
            self.value_encoder = LiteValueEncoder(skips["f16"], cfg["value_encoder_channels"], cv)
        elif cfg["key_backbone"] == "resnet50":
            self.key_encoder = ResNetKeyEncoder()   # no ImageNet weights reachable here
            self.value_encoder = ResNetValueEncoder(skips["f16"], cv)
        else:
            raise ValueError(f"unknown key backbone {cfg['key_backbone']!r}")
        self.key_proj = conv3x3(skips["f16"], ck)
        self.decoder = Decoder(cv, skips, cfg["decoder_channels"])
        heads = cfg["heads"]
        self.prior_enhance = PriorEnhance(skips["f16"]) if "prior" in heads else None
        self.qam = QAMHead(cv) if "qam" in heads else None
        self.sam_key = SAM(ck) if "sam" in heads else None
        self.sam_value = SAM(cv) if "sam" in heads else None

    @property
    def heads(self) -> tuple[str, ...]:
        """The method heads this network carries (subset of :data:`training.heads.HEADS`)."""
        return tuple(self.config["heads"])

    # -- the four exported parts -------------------------------------------------------
    def encode_key(self, image):
        """image [B,3,H,W] float32 normalised → key [B,C_k,H/16,W/16], f16, f8, f4."""
        f4, f8, f16 = self.key_encoder(image)
        return self.key_proj(f16), f16, f8, f4

    def encode_value(self, image, f16, masks):
        """image [1,3,H,W], f16 [1,C16,h,w], masks [N,2,H,W] (own, others) → value [N,C_v,h,w]."""
        return self.value_encoder(image, f16, masks)

    @staticmethod
    def readout(query_key, memory_keys, memory_values, valid, top_k):
        """Memory readout (STCN; RDE-VOS Eq. 2–3) with top-k softmax.

        query_key [1,C_k,h,w], memory_keys [1,C_k,M], memory_values [N,C_v,M], valid [M]
        float32 (1 = occupied), top_k int64 scalar with 1 ≤ top_k ≤ number of valid positions
        → readout [N,C_v,h,w], usage [M] float32 (number of query positions whose top-k holds
        m; exactly top_k per query, so usage sums to top_k·h·w).
        """
        _, ck, h, w = query_key.shape
        n, cv, m = memory_values.shape
        scale = 1 / math.sqrt(ck)
        # empty slots: ‖k_m‖² + 1e30 puts them far below any valid position. The −‖k_m‖² term
        # rides in the matmul as an extra key channel against a constant 1 in the query, so the
        # [Q,M] affinity is written once and never traversed again before the top-k.
        mk = memory_keys[0]
        sq = (mk.pow(2).sum(0, keepdim=True) + (1 - valid) * 1e30) * scale           # [1,M]
        q = query_key.flatten(2)[0]
        q = torch.cat([q, torch.ones_like(q[:1])], 0).transpose(0, 1)               # [Q,C_k+1]
        aff = q @ torch.cat([mk * (2 * scale), -sq], 0)                             # [Q,M]
        vals, idx = torch.topk(aff, top_k, dim=1)                                   # [Q,k]
        weights = torch.softmax(vals, dim=1)
        flat = idx.flatten()
        usage = torch.zeros_like(valid).scatter_add(0, flat, torch.ones_like(flat, dtype=valid.dtype))
        # gather the k memory values of each query as contiguous C_v rows: N·C_v·Q·k work
        # instead of the N·C_v·Q·M of a dense scatter + matmul
        picked = memory_values.transpose(1, 2)[:, flat].view(n, idx.shape[0], idx.shape[1], cv)  # [N,Q,k,C_v]
        out = (weights.unsqueeze(1) @ picked).squeeze(2)                           # [N,Q,C_v]
        return out.transpose(1, 2).reshape(n, cv, h, w), usage

    def decode(self, readout, f16, f8, f4):
        """readout [N,C_v,h,w], f16/f8/f4 of the query [1,…] → logits [N,1,H,W]."""
        return self.decoder(readout, f16, f8, f4)

    # -- method heads (graphs prior_enhance, qam, sam_key, sam_value) --------------------
    def enhance(self, f16, prior):
        """Prior enhancement (QDMN Eq. 5) of the query feature, then its key: f16 [B,C16,h,w],
        prior [B,1,H,W] → key [B,C_k,h,w], enhanced f16 [B,C16,h,w]."""
        f16 = self.prior_enhance(f16, prior)
        return self.key_proj(f16), f16

    def score(self, value):
        """QAM (QDMN Eq. 1): value [N,C_v,h,w] → predicted mask IoU [N]."""
        return self.qam(value)

    def fold_key(self, previous, new):
        """SAM for keys (RDE-VOS Eq. 4–6): [1,C_k,h,w] × 2 → new RDE key [1,C_k,h,w]."""
        return self.sam_key(previous, new)

    def fold_value(self, previous, new):
        """SAM for values (RDE-VOS Eq. 4–6): [N,C_v,h,w] × 2 → new RDE values [N,C_v,h,w]."""
        return self.sam_value(previous, new)


def build_network(config="lite", pretrained: bool = True) -> VOSNetwork:
    """Build a :class:`VOSNetwork`; ``pretrained`` loads ImageNet Lite0 weights (lite only)."""
    return VOSNetwork(config, pretrained=pretrained)
