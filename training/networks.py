"""STCN-family networks (Cheng et al., "Rethinking Space-Time Networks with Improved Memory
Coverage", NeurIPS 2021), in two configurations (DESIGN.md):

* ``lite`` — key encoder on ImageNet EfficientNet-Lite0 blocks 0..10, C_k = 64, light
  strided-conv value encoder fused with the stride-16 key feature, C_v = 128.
* ``paper`` — ResNet-50 key encoder (layer3), ResNet-18 value encoder (5-channel conv1),
  C_k = 64, C_v = 512, as in STCN and RDE-VOS.

The four parts match the exported graphs of ``docs/graph-contract.md``:
``encode_key``, ``encode_value``, ``readout``, ``decode``.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import EfficientNetLite0, ResNetTrunk, load_lite0_imagenet

CONFIGS = {
    "lite": {
        "name": "lite", "key_backbone": "efficientnet-lite0", "key_channels": 64,
        "value_channels": 128, "skip_channels": {"f16": 112, "f8": 40, "f4": 24},
        "decoder_channels": [128, 64, 32], "value_encoder_channels": [16, 32, 64, 128],
        "stride": 16, "max_objects": 16, "top_k": 20,
        # (rgb/255 − mean)/std == (rgb − 127.5)/128, the Lite0 ImageNet normalisation
        "mean": [0.5, 0.5, 0.5], "std": [128 / 255] * 3,
    },
    "paper": {
        "name": "paper", "key_backbone": "resnet50", "key_channels": 64,
        "value_channels": 512, "skip_channels": {"f16": 1024, "f8": 512, "f4": 256},
        "decoder_channels": [512, 256, 256], "stride": 16, "max_objects": 16, "top_k": 20,
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

    # -- training ------------------------------------------------------------------------
    def segment_clip(self, frames, first_mask, first_other=None):
        """Training forward of STCN on a clip: frame 0 (ground truth) is memory; each later
        frame is segmented from all earlier frames and then written to memory with its own
        prediction (full softmax over memory, as STCN trains).

        frames [B,T,3,H,W] float32 normalised, first_mask [B,1,H,W] in {0,1}, first_other
        [B,1,H,W] (other objects) or None → logits [B,T−1,1,H,W] for frames 1..T−1.
        """
        b, t = frames.shape[:2]
        keys, f16, f8, f4 = self.encode_key(frames.flatten(0, 1))
        unflat = lambda x: x.view(b, t, *x.shape[1:])  # noqa: E731
        keys, f16, f8, f4 = map(unflat, (keys, f16, f8, f4))
        other = torch.zeros_like(first_mask) if first_other is None else first_other
        enc = lambda i, m: self.value_encoder(frames[:, i], f16[:, i], torch.cat([m, other], 1))  # noqa: E731
        values = [enc(0, first_mask)]
        logits = []
        for i in range(1, t):
            mk = keys[:, :i].transpose(1, 2).flatten(2)            # [B,C_k,i*h*w]
            mv = torch.stack(values, 2).flatten(2)                 # [B,C_v,i*h*w]
            aff = torch.softmax(affinity(mk, keys[:, i].flatten(2)), dim=1)
            readout = (mv @ aff).view(b, -1, *keys.shape[-2:])
            lg = self.decoder(readout, f16[:, i], f8[:, i], f4[:, i])  # batch-wise broadcasting
            logits.append(lg)
            if i < t - 1:
                values.append(enc(i, torch.sigmoid(lg)))
        return torch.stack(logits, 1)


def build_network(config="lite", pretrained: bool = True) -> VOSNetwork:
    """Build a :class:`VOSNetwork`; ``pretrained`` loads ImageNet Lite0 weights (lite only)."""
    return VOSNetwork(config, pretrained=pretrained)
