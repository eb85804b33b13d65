"""Object boxes from predicted masks, for DMN-AOA's ROI Align (§3.2: the query's object features
are "obtained by ROI pooling on the base features of the current frame using the object box from
the previous frame"; the memory encoder's use the memory frame's own box).

Boxes are float32 x1, y1, x2, y2 in padded internal-input pixels (the frame as the graphs see it,
H × W multiples of the stride), the coordinates of the ``proposals`` contract (sdk/proposals.py)
and of the ``dmn_memory`` / ``dmn_template`` graphs.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError

MASK_STRIDE = 4          # masks live on the stride-4 grid (H/4 × W/4)
THRESHOLD = 0.5


def boxes_from_masks(probabilities: np.ndarray, previous: np.ndarray | None = None,
                     threshold: float = THRESHOLD, stride: int = MASK_STRIDE) -> np.ndarray:
    """Tight boxes of each object's mask.

    probabilities [N, H/4, W/4] float32 (each object's probability on the stride-4 grid; a
    leading [N,1,…] channel axis is accepted), previous [N,4] float32 or None → boxes [N,4]
    float32: the cells with probability > ``threshold`` span rows y0..y1 and columns x0..x1,
    the box is (x0·4, y0·4, (x1+1)·4, (y1+1)·4) — the cells' outer edges in internal-input
    pixels. An object whose mask has no such cell keeps its ``previous`` box (the paper's box
    "from the previous frame"), or, without one, the whole frame (0, 0, W, H).

    Raises :class:`~sdk.errors.InputError` for probabilities that are not [N,h,w] / [N,1,h,w]
    or a ``previous`` that is not [N,4]."""
    probs = np.asarray(probabilities)
    if probs.ndim == 4 and probs.shape[1] == 1:
        probs = probs[:, 0]
    if probs.ndim != 3:
        raise InputError(f"boxes_from_masks: probabilities of shape {probs.shape}, expected [N, H/4, W/4] "
                         "(or [N, 1, H/4, W/4])")
    n, h, w = probs.shape
    if previous is not None and np.shape(previous) != (n, 4):
        raise InputError(f"boxes_from_masks: previous boxes of shape {np.shape(previous)}, expected [{n}, 4] "
                         "(one x1, y1, x2, y2 row per object)")
    inside = probs > threshold
    rows, cols = inside.any(2), inside.any(1)                              # [N,h], [N,w]
    full = np.array([0, 0, w * stride, h * stride], np.float32)
    boxes = np.empty((n, 4), np.float32)
    for i in range(n):
        if not rows[i].any():
            boxes[i] = full if previous is None else previous[i]
            continue
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        boxes[i] = (xs[0] * stride, ys[0] * stride, (xs[-1] + 1) * stride, (ys[-1] + 1) * stride)
    return boxes
