"""NumPy-only helpers of the proposal recall (no torch: the torch-free benchmark uses them too):
the sdk's threshold / box NMS / top-P (DMN-AOA §4.1: NMS 0.4 before the §3.1 top 30) and best
mask IoU per object."""
from __future__ import annotations

import numpy as np

from sdk.proposals import select


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.4, top: int = 30, threshold: float = 0.0) -> np.ndarray:
    """The product's post-processing (:func:`sdk.proposals.select`: scores > ``threshold``,
    greedy box NMS at ``iou``, the ``top`` best) → int64 indices, best first, so that recall is
    measured on what the sdk keeps."""
    return select(boxes, scores, score_threshold=threshold, nms_iou=iou, top_p=top)


def best_ious(props: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """props bool [K,H,W], gt bool [N,H,W] → best mask IoU [N] of each object over the props."""
    if len(props) == 0:
        return np.zeros(len(gt), np.float32)
    p = props.reshape(len(props), -1).astype(np.float32)
    g = gt.reshape(len(gt), -1).astype(np.float32)
    inter = g @ p.T
    union = g.sum(1)[:, None] + p.sum(1)[None] - inter
    return (inter / np.maximum(union, 1)).max(1)
