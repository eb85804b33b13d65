"""Object proposals for training DMN-AOA's matcher and RefineNet (issue 27 item 7).

DMN-AOA trains its aligned matcher on the proposals of a detector whose output it must learn to
match, reject and refine (§3.1, §4.1: Mask R-CNN proposals). Our own proposal network is weak on
real frames (recall@0.5 0.59 on DAVIS 2016 val), so a training clip's proposals are drawn here
from its ground truth, degraded the ways a detector fails, optionally mixed with the real
proposal network's output (:func:`network_proposals`):

* a **jittered copy** of each object (probability ``keep``): shifted by up to ``shift`` cells,
  dilated or eroded by a 3–7-cell square, softened to probabilities with a random confidence;
  an object without one must go to the dustbin;
* **fragments** (probability ``fragment`` per object): the object cut to one half of its box;
* **merges** (probability ``merge`` per clip with ≥ 2 objects): the union of two objects, the
  proposal that makes look-alike neighbours swap identities;
* **clutter**: 0..``blobs`` random ellipses.

Everything lives on the stride-4 grid of the ``proposals`` contract (docs/graph-contract.md):
masks [P, H/4, W/4] float32 probabilities, boxes [P,4] x1, y1, x2, y2 in input px.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .proposal_net import boxes_from_masks

STRIDE = 4


@dataclass(frozen=True)
class ProposalNoise:
    """How ground truth becomes proposals (module docstring). ``keep``: probability that an
    object has its jittered copy; ``shift``: largest shift in cells; ``morph``: probability of
    dilating or eroding a copy; ``fragment``: probability of
    a half-box fragment per object; ``merge``: probability of a two-object union per clip;
    ``blobs``: most random ellipses; ``confidence``: range of the copies' peak probability."""

    keep: float = 0.85
    shift: int = 2
    morph: float = 0.7
    fragment: float = 0.3
    merge: float = 0.3
    blobs: int = 3
    confidence: tuple[float, float] = (0.6, 1.0)


def boxes_of(masks: torch.Tensor) -> torch.Tensor:
    """masks [P,h,w] (probabilities on the stride-4 grid) → boxes [P,4] float32 in input px
    (cells > 0.5; an empty mask → 0, 0, 0, 0)."""
    return boxes_from_masks((masks > 0.5).to(masks.dtype)) * float(STRIDE)


def _morph(mask: torch.Tensor, size: int, dilate: bool) -> torch.Tensor:
    m = mask[None, None]
    out = F.max_pool2d(m, size, 1, size // 2) if dilate else 1 - F.max_pool2d(1 - m, size, 1, size // 2)
    return out[0, 0]


def _jitter(rng: np.random.Generator, mask: torch.Tensor, noise: ProposalNoise) -> torch.Tensor:
    dy, dx = (int(v) for v in rng.integers(-noise.shift, noise.shift + 1, 2))
    m = torch.roll(mask, (dy, dx), (0, 1))
    if rng.random() < noise.morph:
        m = _morph(m, int(rng.choice([3, 5])), bool(rng.random() < 0.5))
    soft = F.avg_pool2d(m[None, None], 3, 1, 1, count_include_pad=False)[0, 0]
    return soft * float(rng.uniform(*noise.confidence))


def _fragment(rng: np.random.Generator, mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    if len(ys) == 0:
        return mask
    cut = mask.clone()
    side = int(rng.integers(4))
    if side < 2:
        mid = int((ys.min() + ys.max()) // 2)
        cut[:mid] = 0 if side == 0 else cut[:mid]
        cut[mid:] = 0 if side == 1 else cut[mid:]
    else:
        mid = int((xs.min() + xs.max()) // 2)
        cut[:, :mid] = 0 if side == 2 else cut[:, :mid]
        cut[:, mid:] = 0 if side == 3 else cut[:, mid:]
    return cut


def _ellipse(rng: np.random.Generator, h: int, w: int) -> torch.Tensor:
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(2, max(3.0, h / 4)), rng.uniform(2, max(3.0, w / 4))
    y = torch.arange(h, dtype=torch.float32)[:, None]
    x = torch.arange(w, dtype=torch.float32)[None, :]
    return (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1).float()


def synthetic_proposals(rng: np.random.Generator, objects: torch.Tensor,
                        noise: ProposalNoise = ProposalNoise()) -> torch.Tensor:
    """objects [N,h,w] float32 ∈ {0,1} (the ground truth on the stride-4 grid) → proposal masks
    [P,h,w] float32 in [0,1], shuffled, empty ones dropped (P may be 0)."""
    n, h, w = objects.shape
    out = []
    for i in range(n):
        if objects[i].sum() == 0:
            continue
        if rng.random() < noise.keep:
            out.append(_jitter(rng, objects[i], noise))
        if rng.random() < noise.fragment:
            out.append(_fragment(rng, objects[i]))
    if n >= 2 and rng.random() < noise.merge:
        a, b = rng.choice(n, 2, replace=False)
        out.append(torch.maximum(objects[a], objects[b]))
    out += [_ellipse(rng, h, w) for _ in range(int(rng.integers(0, noise.blobs + 1)))]
    out = [m for m in out if (m > 0.5).any()]
    if not out:
        return objects.new_zeros((0, h, w))
    order = rng.permutation(len(out))
    return torch.stack([out[i] for i in order])


@torch.no_grad()
def network_proposals(proposal_net, f16, f8, f4, defaults: dict) -> torch.Tensor:
    """The proposal network's masks [K,h,w] after the sdk's score threshold, NMS and top-P
    (:func:`sdk.proposals.select` with ``defaults``: score_threshold, nms_iou, top_p)."""
    from sdk.proposals import select

    boxes, scores, masks = proposal_net.propose(f16, f8, f4)
    keep = select(boxes.numpy(), scores.numpy(), score_threshold=defaults["score_threshold"],
                  nms_iou=defaults["nms_iou"], top_p=defaults["top_p"])
    return masks[torch.as_tensor(keep, dtype=torch.long)]


def match_targets(objects: torch.Tensor, proposals: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """The proposal each object should be assigned: objects [N,h,w] ∈ {0,1}, proposals [P,h,w]
    probabilities → int64 [N], the index of the proposal of highest mask IoU (binarised at 0.5)
    when that IoU ≥ ``threshold``, else −1 (the dustbin)."""
    n = objects.shape[0]
    if proposals.shape[0] == 0:
        return torch.full((n,), -1, dtype=torch.long)
    g = objects.flatten(1)
    p = (proposals > 0.5).float().flatten(1)
    inter = g @ p.T
    union = g.sum(1, keepdim=True) + p.sum(1)[None] - inter
    iou = inter / union.clamp(min=1)
    best, idx = iou.max(1)
    return torch.where(best >= threshold, idx, torch.full_like(idx, -1))
