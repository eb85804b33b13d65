"""NumPy-only helpers of the proposal recall (no torch: the torch-free benchmark uses them too):
box IoU, greedy box NMS (DMN-AOA §4.1: NMS 0.4 before the top 30) and best mask IoU per object.
``sdk.proposals`` (issue 27 item 1) is the product's NMS; these measure the bundled network."""
from __future__ import annotations

import numpy as np


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box [4] with boxes [K,4] (x1, y1, x2, y2) → [K] float32 (0 for empty unions)."""
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.4, top: int = 30, threshold: float = 0.0) -> np.ndarray:
    """Greedy box NMS: indices (int64, best first) of at most ``top`` boxes with score ≥
    ``threshold``, none overlapping a better kept one by IoU > ``iou``."""
    order = [int(i) for i in np.argsort(-scores, kind="stable") if scores[i] >= threshold]
    keep = []
    while order and len(keep) < top:
        i = order.pop(0)
        keep.append(i)
        if order:
            rest = np.asarray(order)
            order = rest[box_iou(boxes[i], boxes[rest]) <= iou].tolist()
    return np.asarray(keep, np.int64)


def best_ious(props: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """props bool [K,H,W], gt bool [N,H,W] → best mask IoU [N] of each object over the props."""
    if len(props) == 0:
        return np.zeros(len(gt), np.float32)
    p = props.reshape(len(props), -1).astype(np.float32)
    g = gt.reshape(len(gt), -1).astype(np.float32)
    inter = g @ p.T
    union = g.sum(1)[:, None] + p.sum(1)[None] - inter
    return (inter / np.maximum(union, 1)).max(1)
