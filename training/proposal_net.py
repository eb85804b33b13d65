"""Class-agnostic instance proposals on the frozen key encoder's features (DMN-AOA §3.1).

DMN-AOA takes its object proposals from "an off-the-shelf instance segmentation model" (§3.1;
the top 30 after NMS 0.4, §4.1). The bundled proposal network is a small **SOLOv2** head
(Wang, Zhang, Kong, Li, Shen, "SOLOv2: Dynamic and Fast Instance Segmentation", NeurIPS 2020)
made class-agnostic and put on the features the key encoder already computes, so the sdk runs
no second backbone:

* **category branch** (SOLOv2 §3, SOLO §3.2): an S×S grid whose cells are the stride-16 cells
  of ``f16`` (S follows the image: h = H/16, w = W/16); one objectness logit per cell (one
  class, "object") — cell (i, j) is positive when it lies in the centre region of an object;
* **kernel branch** (SOLOv2 §3.2.1, "mask kernel G"): per cell a dynamic 1×1 kernel of E
  weights, from the same tower with CoordConv's two normalised coordinate channels
  (SOLOv2 §3.2.1: "the normalized coordinates … are concatenated");
* **unified mask feature** (SOLOv2 §3.2.2, "mask feature F"): f16 through two 3×3 convs
  (coordinates concatenated first, as SOLOv2 feeds them to its 1/32 level), upsampled to
  stride 8, plus f8 through a 3×3 conv, a 3×3 conv, upsampled to stride 4, plus f4 through a
  3×3 conv, then two 3×3 and one 1×1 conv → F [1,E,H/4,W/4] (``mask_refine`` = False: one conv
  per level, no conv at stride 8, one 3×3 at stride 4);
* **mask** of cell k = σ(G_k ∗ F) (SOLOv2 Eq. 1 with a 1×1 kernel), full frame on the f4 grid;
* **score** = objectness × maskness (SOLOv2 §3.3.1: the mean mask probability over the pixels
  above 0.5), boxes from the thresholded mask (pixels of the padded input: f4 grid × 4).

Training (:mod:`training.proposal_train`): focal loss (Lin et al. 2017, α = 0.25, γ = 2) on the
category grid and Dice loss on the masks of the positive cells, L = L_cate + λ·L_mask with λ = 3
(SOLOv2 §3.2.3, SOLO Eq. 2–3). SOLOv2's Matrix NMS (§3.3) is not used: the product applies NMS
0.4 (DMN-AOA §4.1) in the sdk. One grid level instead of SOLOv2's five FPN levels (the key
encoder has no stride-32 feature; dilated convolutions in the tower widen its receptive field).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: feature channels of the lite key encoder (training/networks.py CONFIGS["lite"])
SKIP_CHANNELS = {"f16": 112, "f8": 40, "f4": 24}

DEFAULTS = {
    "tower_channels": 96,      # category/kernel tower width
    "tower_dilations": [1, 2, 4],
    "mask_channels": 32,       # E: unified mask feature channels = dynamic 1×1 kernel size
    "top_k": 100,              # cells kept by the exported graph (before threshold / NMS)
    "prior_prob": 0.01,        # focal-loss bias initialisation (Lin et al. 2017 §4.1)
    "mask_refine": True,       # a second 3×3 conv at each of f16, f8, f4 in the mask branch
}


def coord_channels(x: torch.Tensor) -> torch.Tensor:
    """CoordConv channels for a feature [B,C,h,w] → [B,2,h,w] float32 (x then y), cell centres
    normalised to [−1, 1] (SOLOv2 §3.2.1). Built from the runtime shape (exports dynamic)."""
    b, _, h, w = x.shape
    xs = (torch.arange(w, dtype=x.dtype, device=x.device) + 0.5) / w * 2 - 1
    ys = (torch.arange(h, dtype=x.dtype, device=x.device) + 0.5) / h * 2 - 1
    gx = xs.view(1, 1, 1, -1).expand(b, 1, h, w)
    gy = ys.view(1, 1, -1, 1).expand(b, 1, h, w)
    return torch.cat([gx, gy], 1)


class ConvGN(nn.Sequential):
    """3×3 conv (optionally dilated) + GroupNorm + ReLU (SOLOv2's heads use GN)."""

    def __init__(self, cin, cout, dilation=1, groups=8):
        super().__init__(nn.Conv2d(cin, cout, 3, 1, dilation, dilation=dilation, bias=False),
                         nn.GroupNorm(groups, cout), nn.ReLU(inplace=True))


class ProposalNet(nn.Module):
    """SOLOv2-style class-agnostic proposal head (module docstring).

    Args (``config`` dict, keys of :data:`DEFAULTS` plus ``skip_channels``): tower_channels,
    tower_dilations, mask_channels (E), top_k (exported graph), prior_prob.

    :meth:`forward` (training): f16 [B,112,h,w], f8 [B,40,2h,2w], f4 [B,24,4h,4w] float32 →
    (cate_logits [B,h,w], kernels [B,E,h,w], mask_feature [B,E,4h,4w]).
    :meth:`propose` (inference, one frame, what ``proposals.onnx`` computes).
    """

    def __init__(self, config: dict | None = None):
        super().__init__()
        cfg = {**DEFAULTS, "skip_channels": dict(SKIP_CHANNELS), **(config or {})}
        unknown = sorted(set(cfg) - set(DEFAULTS) - {"skip_channels"})
        if unknown:
            raise ValueError(f"unknown proposal-net option(s) {unknown}; known: {sorted(DEFAULTS)}")
        self.config = cfg
        c16, c8, c4 = (cfg["skip_channels"][k] for k in ("f16", "f8", "f4"))
        t, e = cfg["tower_channels"], cfg["mask_channels"]
        layers, cin = [], c16 + 2
        for d in cfg["tower_dilations"]:
            layers.append(ConvGN(cin, t, d))
            cin = t
        self.tower = nn.Sequential(*layers)
        self.cate = nn.Conv2d(t, 1, 3, 1, 1)
        self.kernel = nn.Conv2d(t, e, 3, 1, 1)
        deep = bool(cfg["mask_refine"])
        self.lat16 = nn.Sequential(ConvGN(c16 + 2, e), *([ConvGN(e, e)] if deep else []))
        self.lat8 = ConvGN(c8, e)
        self.fuse8 = ConvGN(e, e) if deep else nn.Identity()
        self.lat4 = ConvGN(c4, e)
        self.fuse = nn.Sequential(ConvGN(e, e), *([ConvGN(e, e)] if deep else []))
        self.mask_out = nn.Conv2d(e, e, 1)
        nn.init.constant_(self.cate.bias, -math.log((1 - cfg["prior_prob"]) / cfg["prior_prob"]))
        nn.init.normal_(self.cate.weight, std=0.01)
        nn.init.normal_(self.kernel.weight, std=0.01)
        nn.init.zeros_(self.kernel.bias)

    @property
    def top_k(self) -> int:
        return int(self.config["top_k"])

    def forward(self, f16, f8, f4):
        """f16 [B,112,h,w], f8 [B,40,2h,2w], f4 [B,24,4h,4w] float32 → cate_logits [B,h,w],
        kernels [B,E,h,w] (the per-cell dynamic 1×1 kernels G), mask_feature F [B,E,4h,4w]."""
        x16 = torch.cat([f16, coord_channels(f16)], 1)
        tower = self.tower(x16)
        cate = self.cate(tower)[:, 0]
        kernels = self.kernel(tower)
        size4 = f4.shape[-2:]
        m = F.interpolate(self.lat16(x16), size=f8.shape[-2:], mode="bilinear", align_corners=False)
        m = F.interpolate(self.fuse8(m + self.lat8(f8)), size=size4, mode="bilinear", align_corners=False)
        m = self.mask_out(self.fuse(m + self.lat4(f4)))
        return cate, kernels, m

    @staticmethod
    def mask_logits(kernels: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """Dynamic convolution (SOLOv2 Eq. 1, 1×1 kernel): kernels [K,E], feature [E,H4,W4]
        → mask logits [K,H4,W4]."""
        e, h, w = feature.shape
        return (kernels @ feature.reshape(e, h * w)).reshape(-1, h, w)

    def propose(self, f16, f8, f4):
        """One frame's proposals, before threshold / NMS / top-P (the exported graph).

        f16 [1,112,h,w], f8 [1,40,2h,2w], f4 [1,24,4h,4w] float32 →
        boxes [K,4] float32 (x1, y1, x2, y2 in px of the padded input image: the f4 grid × 4;
        all 0 for an empty mask), scores [K] float32 in [0,1] (objectness × maskness, SOLOv2
        §3.3.1; 0 for an empty mask), masks [K,4h,4w] float32 probabilities, full frame on the
        f4 grid; K = min(top_k, h·w), cells ranked by objectness.
        """
        cate, kernels, feature = self.forward(f16, f8, f4)
        obj = torch.sigmoid(cate[0].flatten())                                # [h·w]
        k = torch.clamp(torch.tensor(obj.shape[0]), max=self.top_k) if torch.jit.is_tracing() \
            else min(self.top_k, obj.shape[0])
        top, idx = torch.topk(obj, k)
        g = kernels[0].flatten(1).transpose(0, 1)[idx]                        # [K,E]
        masks = torch.sigmoid(self.mask_logits(g, feature[0]))                # [K,H4,W4]
        on = (masks > 0.5).to(masks.dtype)
        area = on.sum((1, 2))
        maskness = (masks * on).sum((1, 2)) / torch.clamp(area, min=1.0)
        scores = top * maskness                                               # 0 where empty
        boxes = boxes_from_masks(on) * 4.0
        return boxes, scores, masks


def boxes_from_masks(on: torch.Tensor) -> torch.Tensor:
    """Tight boxes of binary masks: on [K,H,W] float32 ∈ {0,1} → [K,4] float32 (x1, y1, x2, y2)
    in grid cells, x2/y2 exclusive (a one-pixel mask at (x, y) → (x, y, x+1, y+1)); an empty
    mask → (0, 0, 0, 0). Written with reductions only (exports to ONNX)."""
    _, h, w = on.shape
    cols = on.amax(1)                                                         # [K,W]
    rows = on.amax(2)                                                         # [K,H]
    xs = torch.arange(w, dtype=on.dtype, device=on.device)
    ys = torch.arange(h, dtype=on.dtype, device=on.device)
    big = 1e9
    x1 = (xs + (1 - cols) * big).amin(1)
    x2 = ((xs + 1) * cols).amax(1)
    y1 = (ys + (1 - rows) * big).amin(1)
    y2 = ((ys + 1) * rows).amax(1)
    nonempty = cols.amax(1)
    return torch.stack([x1, y1, x2, y2], 1) * nonempty.unsqueeze(1)


# -- targets and losses (SOLO §3.2–3.3, SOLOv2 §3.2.3) ----------------------------------------

def assign_targets(instances: torch.Tensor, grid: tuple[int, int], sigma: float = 0.2,
                   min_pixels: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """SOLO's centre sampling on one image's grid.

    instances: [N,H,W] bool/float ∈ {0,1}, one binary mask per object (any resolution that is
    grid × stride); grid (h, w) cells. An object (≥ ``min_pixels`` px) makes positive the cells
    whose centre lies in its centre region — the box of half-size σ/2 × its mask's box side
    around its mass centre (σ = 0.2, SOLO §3.3) — always the cell holding the mass centre, and
    at most one cell away from it (≤ 3×3, SOLO's implementation). Where objects compete for a
    cell the smaller one wins. Returns cate [h,w] float32 ∈ {0,1} and owner [h,w] int64 (index
    of the object, −1 for negatives).
    """
    n, hh, ww = instances.shape
    gh, gw = grid
    sy, sx = hh / gh, ww / gw
    cate = torch.zeros(gh, gw)
    owner = torch.full((gh, gw), -1, dtype=torch.long)
    masks = instances.float()
    areas = masks.sum((1, 2))
    for i in torch.argsort(areas, descending=True).tolist():   # small last → small wins
        if areas[i] < min_pixels:
            continue
        ys, xs = torch.nonzero(masks[i] > 0, as_tuple=True)
        cy, cx = ys.float().mean() + 0.5, xs.float().mean() + 0.5
        half_h = sigma / 2 * (ys.max() - ys.min() + 1).float()
        half_w = sigma / 2 * (xs.max() - xs.min() + 1).float()
        ci, cj = min(int(cy / sy), gh - 1), min(int(cx / sx), gw - 1)
        top = max(int((cy - half_h) / sy), ci - 1, 0)
        bottom = min(int((cy + half_h) / sy), ci + 1, gh - 1)
        left = max(int((cx - half_w) / sx), cj - 1, 0)
        right = min(int((cx + half_w) / sx), cj + 1, gw - 1)
        cate[top:bottom + 1, left:right + 1] = 1
        owner[top:bottom + 1, left:right + 1] = i
    return cate, owner


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017 Eq. 5), summed: logits and target of one shape."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    at = alpha * target + (1 - alpha) * (1 - target)
    return (at * (1 - pt) ** gamma * ce).sum()


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice loss per mask (SOLO Eq. 3–4, squared denominators): logits, target [K,H,W] → [K]."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return 1 - 2 * inter / ((p * p).sum(1) + (t * t).sum(1) + 1e-3)


def proposal_loss(net: ProposalNet, f16, f8, f4, instances: list, targets=None, mask_weight: float = 3.0,
                  max_masks: int = 64, generator: torch.Generator | None = None) -> dict:
    """SOLOv2's loss L = L_cate + λ·L_mask (§3.2.3, λ = 3) on a batch.

    f16/f8/f4 [B,…] float32 features; instances: B tensors [N_b,4h,4w] ∈ {0,1} (the objects at
    the f4 grid; N_b may be 0); targets: optional precomputed (cate [B,h,w] float32, owner
    [B,h,w] int64 indexing each image's instances), else :func:`assign_targets`. L_cate: focal loss over all cells / (positives + 1); L_mask:
    mean Dice over the positive cells (at most ``max_masks`` sampled). Returns a dict of
    scalar tensors: loss, cate, mask, positives.
    """
    cate, kernels, feature = net(f16, f8, f4)
    grid = tuple(cate.shape[-2:])
    cates, preds, gts = [], [], []
    for b, inst in enumerate(instances):
        if targets is not None:
            t, owner = targets[0][b], targets[1][b]
        elif inst.shape[0]:
            t, owner = assign_targets(inst, grid)
        else:
            t, owner = torch.zeros(grid), torch.full(grid, -1)
        cates.append(t)
        pos = torch.nonzero(owner.flatten() >= 0, as_tuple=True)[0]
        if len(pos):
            preds.append((b, pos))
            gts.append(inst[owner.flatten()[pos]].float())
    target = torch.stack(cates)
    npos = float(target.sum())
    l_cate = focal_loss(cate, target) / (npos + 1)
    if preds:
        ks, fs, tg = [], [], []
        for (b, pos), gt in zip(preds, gts):
            ks.append(kernels[b].flatten(1).transpose(0, 1)[pos])
            fs.append(torch.full((len(pos),), b, dtype=torch.long))
            tg.append(gt)
        k_all, b_all, t_all = torch.cat(ks), torch.cat(fs), torch.cat(tg)
        if len(k_all) > max_masks:
            pick = torch.randperm(len(k_all), generator=generator)[:max_masks]
            k_all, b_all, t_all = k_all[pick], b_all[pick], t_all[pick]
        e, h, w = feature.shape[1:]
        logits = torch.einsum("ke,keq->kq", k_all, feature[b_all].reshape(len(k_all), e, h * w)).reshape(-1, h, w)
        l_mask = dice_loss(logits, t_all).mean()
    else:
        l_mask = kernels.sum() * 0
    return {"loss": l_cate + mask_weight * l_mask, "cate": l_cate.detach(), "mask": l_mask.detach(),
            "positives": torch.tensor(npos)}
