"""STCN (Cheng, Tai, Tang, "Rethinking Space-Time Networks with Improved Memory Coverage for
Efficient Video Object Segmentation", NeurIPS 2021) as the authors release it
(``hkchengrex/STCN``, ``model/network.py``, ``model/modules.py``, ``model/cbam.py``), with their
parameter names and shapes so that ``stcn.pth`` loads strictly.

Modules (C_k = 64, C_v = 512, ImageNet normalisation):

* ``key_encoder`` — ResNet-50 ``conv1``/``bn1``/max-pool, ``res2`` (= layer1, f4 256 ch),
  ``layer2`` (f8 512), ``layer3`` (f16 1024).
* ``key_proj.key_proj`` — 3×3 conv 1024 → 64: the key. ``key_comp`` — 3×3 conv 1024 → 512: the
  query feature the decoder reads beside the readout.
* ``value_encoder`` — ResNet-18 of STCN's ``mod_resnet`` (every conv with a bias; ``conv1``
  takes 5 channels: RGB, this object's probability, the sum of the other objects') to
  ``layer3`` (256 ch), then ``fuser`` =
  ResBlock(256 + 1024 → 512) on [layer3, key f16], CBAM (channel gate 512 → 32 → 512 over
  average- and max-pooled features; spatial gate 7×7 conv over [max, mean] across channels),
  residual, ResBlock(512 → 512).
* ``decoder`` — ``compress`` ResBlock(1024 → 512) on [readout, key_comp(f16)];
  ``up_16_8`` / ``up_8_4``: 3×3 conv of the skip feature + ×2 bilinear of the coarse one,
  ResBlock; ``pred`` 3×3 conv 256 → 1; ×4 bilinear (align_corners False).

ResBlock here is STCN's: r = conv2(relu(conv1(relu(x)))), shortcut a **3×3** conv when the
channel count changes. No code is copied from the authors' repository; the layout facts come
from reading it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import BasicBlock, Bottleneck
from ..networks import VOSNetwork

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def resnet_layer(block, cin: int, planes: int, blocks: int, stride: int, bias: bool = False) -> nn.Sequential:
    """torchvision-named ResNet stage: ``blocks`` blocks, the first with ``stride``; ``bias``:
    convs with biases (the authors' ``mod_resnet``)."""
    layers = [block(cin, planes, stride, bias)]
    layers += [block(planes * block.expansion, planes, 1, bias) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNetStem(nn.Module):
    """``conv1`` (7×7, stride 2; a bias in STCN's ``mod_resnet``, none in torchvision's) +
    ``bn1`` + ReLU + 3×3 max-pool, stride 2."""

    def __init__(self, in_channels: int, bias: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=bias)
        self.bn1 = nn.BatchNorm2d(64)

    def stem(self, x):
        return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)


class KeyEncoder(ResNetStem):
    """ResNet-50 to layer3: image [B,3,H,W] → f16 [B,1024,H/16,W/16], f8 [B,512], f4 [B,256]."""

    def __init__(self):
        super().__init__(3)
        self.res2 = resnet_layer(Bottleneck, 64, 64, 3, 1)
        self.layer2 = resnet_layer(Bottleneck, 256, 128, 4, 2)
        self.layer3 = resnet_layer(Bottleneck, 512, 256, 6, 2)

    def forward(self, image):
        f4 = self.res2(self.stem(image))
        f8 = self.layer2(f4)
        return self.layer3(f8), f8, f4


class ResBlock(nn.Module):
    """STCN's residual block: x' + conv2(relu(conv1(relu(x)))), x' = 3×3 ``downsample`` conv of x
    when indim ≠ outdim, else x."""

    def __init__(self, indim: int, outdim: int | None = None):
        super().__init__()
        outdim = outdim or indim
        self.conv1 = nn.Conv2d(indim, outdim, 3, padding=1)
        self.conv2 = nn.Conv2d(outdim, outdim, 3, padding=1)
        self.downsample = nn.Conv2d(indim, outdim, 3, padding=1) if indim != outdim else None

    def forward(self, x):
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        return r + (x if self.downsample is None else self.downsample(x))


class ChannelGate(nn.Module):
    """CBAM channel attention (Woo et al. 2018): x · σ(MLP(avgpool x) + MLP(maxpool x)); the
    MLP is ``mlp.1`` (C → C/16), ReLU, ``mlp.3`` (C/16 → C) (index 0 is a flatten)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, channels // reduction), nn.ReLU(),
                                 nn.Linear(channels // reduction, channels))

    def forward(self, x):
        att = self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3)))
        return x * torch.sigmoid(att)[:, :, None, None]


class _SpatialConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        return self.conv(x)


class SpatialGate(nn.Module):
    """CBAM spatial attention: x · σ(conv7×7([max_c x, mean_c x])) (``spatial.conv``, with bias)."""

    def __init__(self):
        super().__init__()
        self.spatial = _SpatialConv()

    def forward(self, x):
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    """Channel gate then spatial gate (``ChannelGate``, ``SpatialGate``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.ChannelGate = ChannelGate(channels)
        self.SpatialGate = SpatialGate()

    def forward(self, x):
        return self.SpatialGate(self.ChannelGate(x))


class FeatureFusionBlock(nn.Module):
    """[x, f16] → ``block1`` ResBlock → + CBAM(·) → ``block2`` ResBlock."""

    def __init__(self, indim: int, outdim: int):
        super().__init__()
        self.block1 = ResBlock(indim, outdim)
        self.attention = CBAM(outdim)
        self.block2 = ResBlock(outdim, outdim)

    def forward(self, x, f16):
        x = self.block1(torch.cat([x, f16], 1))
        return self.block2(x + self.attention(x))


class ValueEncoder(ResNetStem):
    """ResNet-18 of STCN's ``mod_resnet`` (5-channel conv1, convs with biases) to layer3 +
    fuser: image [N,3,H,W], masks [N,2,H,W] (own, others), key f16 [N,1024,h,w] → value
    [N,512,h,w]."""

    def __init__(self, key_f16_channels: int = 1024, value_channels: int = 512):
        super().__init__(5, bias=True)
        self.layer1 = resnet_layer(BasicBlock, 64, 64, 2, 1, bias=True)
        self.layer2 = resnet_layer(BasicBlock, 64, 128, 2, 2, bias=True)
        self.layer3 = resnet_layer(BasicBlock, 128, 256, 2, 2, bias=True)
        self.fuser = FeatureFusionBlock(256 + key_f16_channels, value_channels)

    def forward(self, image, masks, key_f16):
        x = self.stem(torch.cat([image, masks], 1))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fuser(x, key_f16)


class KeyProjection(nn.Module):
    """``key_proj``: 3×3 conv C16 → C_k."""

    def __init__(self, indim: int, keydim: int):
        super().__init__()
        self.key_proj = nn.Conv2d(indim, keydim, 3, padding=1)

    def forward(self, x):
        return self.key_proj(x)


class UpsampleBlock(nn.Module):
    """skip_conv(skip) + ×2 bilinear(up) → ``out_conv`` ResBlock(up_c → out_c)."""

    def __init__(self, skip_c: int, up_c: int, out_c: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_c, up_c, 3, padding=1)
        self.out_conv = ResBlock(up_c, out_c)

    def forward(self, skip, up):
        up = F.interpolate(up, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.out_conv(self.skip_conv(skip) + up)


class Decoder(nn.Module):
    """[readout 512, key_comp(f16) 512] (1024) → ``compress`` → ``up_16_8`` (f8) → ``up_8_4``
    (f4) → ``pred`` → ×4 bilinear: logits [N,1,H,W]. ``upsample`` is the class of the two
    upsampling blocks (STCN's :class:`UpsampleBlock`; QDMN's has an extra skip ResBlock)."""

    def __init__(self, upsample: type[nn.Module] | None = None):
        super().__init__()
        upsample = upsample or UpsampleBlock
        self.compress = ResBlock(1024, 512)
        self.up_16_8 = upsample(512, 512, 256)
        self.up_8_4 = upsample(256, 256, 256)
        self.pred = nn.Conv2d(256, 1, 3, padding=1)

    def forward(self, x, f8, f4):
        x = self.up_8_4(f4, self.up_16_8(f8, self.compress(x)))
        x = self.pred(F.relu(x))
        return F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False)


def stcn_config(name: str, top_k: int, heads: list[str]) -> dict:
    """The manifest fields of an STCN-layout network (C_k 64, C_v 512, stride 16)."""
    return {"name": name, "key_channels": 64, "value_channels": 512,
            "skip_channels": {"f16": 1024, "f8": 512, "f4": 256}, "stride": 16, "max_objects": 64,
            "top_k": top_k, "heads": heads, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


class STCN(nn.Module):
    """The authors' STCN with vosedge's exported parts (``docs/graph-contract.md``).

    ``inference`` is what the authors' ``eval_davis.py`` does (manifest version 2): frames at
    their native size, padded symmetrically to a multiple of 16, negative squared-L2
    affinity, top-k 20, every 5th frame written to memory (t mod 5 = 0), no previous-frame
    memory, soft aggregation, bilinear resize to the input size.
    """

    arch = "stcn"
    default_method = "every_k"
    inference = {"padding": "centre", "affinity": "l2", "resolution": None, "temporary_memory": False}

    def __init__(self):
        super().__init__()
        self.config = stcn_config("stcn", 20, [])
        self.key_encoder = KeyEncoder()
        self.value_encoder = ValueEncoder()
        self.key_proj = KeyProjection(1024, 64)
        self.key_comp = nn.Conv2d(1024, 512, 3, padding=1)
        self.decoder = Decoder()

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(self.config["heads"])

    @staticmethod
    def matches(keys: set) -> bool:
        """Whether a state_dict's keys are STCN's (and not RDE-VOS's, which adds mem_compress)."""
        return ({"key_proj.key_proj.weight", "key_comp.weight", "value_encoder.fuser.block1.conv1.weight"} <= keys
                and not any(k.startswith("mem_compress.") for k in keys))

    @staticmethod
    def convert_state_dict(sd: dict) -> dict:
        """The stage-0 checkpoint's 4-channel value ``conv1`` (RGB + mask) gets a zero 5th input
        channel (the other objects' mask), as STCN's ``eval_davis.py`` pads it; other
        checkpoints pass unchanged."""
        w = sd.get("value_encoder.conv1.weight")
        if w is not None and w.ndim == 4 and w.shape[1] == 4:
            sd = {**sd, "value_encoder.conv1.weight": torch.cat([w, w.new_zeros(w.shape[0], 1, *w.shape[2:])], 1)}
        return sd

    def encode_key(self, image):
        """image [1,3,H,W] float32 normalised → key [1,64,h,w], f16 [1,1024,h,w], f8
        [1,512,2h,2w], f4 [1,256,4h,4w]."""
        f16, f8, f4 = self.key_encoder(image)
        return self.key_proj(f16), f16, f8, f4

    def encode_value(self, image, f16, masks):
        """image [1,3,H,W], key f16 [1,1024,h,w], masks [N,2,H,W] (this object's probability,
        sum of the others') → value [N,512,h,w]."""
        n = masks.shape[0]
        return self.value_encoder(image.expand(n, -1, -1, -1), masks, f16.expand(n, -1, -1, -1))

    readout = staticmethod(VOSNetwork.readout)   # −‖k_m − k_q‖²/√C_k, top-k softmax (STCN Eq. 2–3)

    def decode(self, readout, f16, f8, f4):
        """readout [N,512,h,w], the query's f16/f8/f4 [1,…] → logits [N,1,H,W]; the decoder reads
        [readout, key_comp(f16)]."""
        n = readout.shape[0]
        x = torch.cat([readout, self.key_comp(f16).expand(n, -1, -1, -1)], 1)
        return self.decoder(x, f8.expand(n, -1, -1, -1), f4.expand(n, -1, -1, -1))
