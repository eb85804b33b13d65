"""Object proposals of one frame (DMN-AOA §3.1 "Object Proposal Generator") and their
class-agnostic post-processing in NumPy: score threshold, greedy box NMS, top-P.

A :class:`Proposals` is what every proposals graph is turned into (``docs/graph-contract.md``,
"Proposals"): boxes, scores and full-frame mask probabilities on the stride-4 grid of the padded
internal input image the key encoder sees, sorted by descending score, after the score threshold,
NMS at IoU 0.4 (DMN-AOA §4.1, "non-maximum suppression [19] with a ratio of 0.4") and the top 30
(§3.1, "we collect top30 output instances … as object proposals"). :func:`select` applies the
stages a graph does not do itself (the manifest's ``proposals.postprocess_in_graph``).

NMS is on **boxes**, not masks: the paper cites [19] for it, the box NMS that Mask R-CNN-style
detectors use (torchvision's ``batched_nms`` and Ultralytics' ``non_max_suppression`` too), and
box IoU costs O(P²) four-number comparisons where mask IoU would cost O(P²·h·w).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

# DMN-AOA §4.1 (NMS ratio 0.4) and §3.1 (top30); the score threshold is the usual detector
# default (torchvision's box_score_thresh 0.05): low, the top 30 are meant for recall
DEFAULT_NMS_IOU = 0.4
DEFAULT_TOP_P = 30
DEFAULT_SCORE_THRESHOLD = 0.05
# a mask or box coordinate may be off by float32 rounding after a resize
_EPS = 1e-4


@dataclass(frozen=True)
class Proposals:
    """The object proposals of one frame (DMN-AOA §3.1), class-agnostic.

    * ``boxes`` float32 [P,4]: x1, y1, x2, y2 in pixels of the padded internal input image the
      key encoder sees (H×W, multiples of the stride; the frame of f16 scaled by 16), with
      0 ≤ x1 ≤ x2 ≤ W and 0 ≤ y1 ≤ y2 ≤ H (continuous coordinates: pixel i spans [i, i+1)).
    * ``scores`` float32 [P] in [0, 1], descending.
    * ``masks`` float32 [P,H/4,W/4]: each proposal's foreground probability in [0, 1] over the
      whole frame, on the stride-4 grid (the key encoder's f4): cell (r, c) covers input pixels
      [4r, 4r+4) × [4c, 4c+4).

    P may be 0 (arrays [0,4], [0], [0,H/4,W/4]). The arrays are made read-only. Raises
    :class:`~sdk.errors.InputError` naming the field when a dtype, shape or range is wrong, a
    value is not finite, or the scores are not sorted descending.
    """

    boxes: np.ndarray
    scores: np.ndarray
    masks: np.ndarray

    def __post_init__(self):
        boxes, scores, masks = self.boxes, self.scores, self.masks
        for name, value, rank in (("boxes", boxes, 2), ("scores", scores, 1), ("masks", masks, 3)):
            if not isinstance(value, np.ndarray) or value.dtype != np.float32 or value.ndim != rank:
                got = (f"{value.dtype} {list(value.shape)}" if isinstance(value, np.ndarray)
                       else type(value).__name__)
                raise InputError(f"Proposals.{name} must be a float32 array of rank {rank}, got {got}")
            if not np.isfinite(value).all():
                raise InputError(f"Proposals.{name} holds NaN or infinite values")
        p = len(scores)
        if boxes.shape != (p, 4) or masks.shape[0] != p:
            raise InputError(f"Proposals: boxes {list(boxes.shape)}, scores {list(scores.shape)} and masks "
                             f"{list(masks.shape)} must be [P,4], [P] and [P,H/4,W/4] with one P")
        h4, w4 = masks.shape[1:]
        if h4 < 1 or w4 < 1:
            raise InputError(f"Proposals.masks {list(masks.shape)} has an empty grid")
        if p:
            if scores.min() < 0 or scores.max() > 1:
                raise InputError(f"Proposals.scores must lie in [0, 1], got {scores.min():g}..{scores.max():g}")
            if (np.diff(scores) > 0).any():
                raise InputError("Proposals.scores must be sorted descending (apply sdk.proposals.select)")
            if masks.min() < 0 or masks.max() > 1:
                raise InputError(f"Proposals.masks must be probabilities in [0, 1], got "
                                 f"{masks.min():g}..{masks.max():g}")
            x1, y1, x2, y2 = boxes.T
            if (x1 < -_EPS).any() or (y1 < -_EPS).any() or (x2 > 4 * w4 + _EPS).any() \
                    or (y2 > 4 * h4 + _EPS).any() or (x2 < x1).any() or (y2 < y1).any():
                raise InputError(f"Proposals.boxes must satisfy 0 <= x1 <= x2 <= {4 * w4} and 0 <= y1 <= y2 <= "
                                 f"{4 * h4} (input pixels of the padded frame), got {boxes.tolist()[:3]}…")
        for value in (boxes, scores, masks):
            value.flags.writeable = False

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def grid(self) -> tuple[int, int]:
        """(H/4, W/4) of the masks."""
        return self.masks.shape[1], self.masks.shape[2]

    @classmethod
    def empty(cls, grid: tuple[int, int]) -> Proposals:
        """No proposals (P = 0) on an (H/4, W/4) grid."""
        h4, w4 = grid
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, h4, w4), np.float32))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` [N,4] with every box of ``b`` [M,4] (x1, y1, x2, y2,
    continuous coordinates; area = (x2 − x1)·(y2 − y1), as torchvision's ``box_area``) →
    float32 [N,M]; 0 where both boxes are empty."""
    a, b = np.asarray(a, np.float32).reshape(-1, 4), np.asarray(b, np.float32).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = DEFAULT_NMS_IOU,
        limit: int | None = None) -> np.ndarray:
    """Greedy class-agnostic box non-maximum suppression (DMN-AOA §4.1, its reference [19]).

    Visits the boxes [N,4] by descending ``scores`` [N] (ties: lower index first) and keeps a box
    unless its IoU (:func:`box_iou`) with a box already kept is **greater than** ``iou_threshold``
    (torchvision's ``nms`` rule). Stops after ``limit`` kept boxes (None: no limit). Returns the
    kept indices, int64, in descending score order. Raises :class:`~sdk.errors.InputError` for an
    ``iou_threshold`` outside [0, 1] or mismatched shapes."""
    boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
    _check_pair(boxes, scores)
    if not 0 <= iou_threshold <= 1:
        raise InputError(f"NMS IoU threshold must lie in [0, 1], got {iou_threshold!r}")
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[order, k]) for k in range(4))
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    kept: list[int] = []
    remaining = np.arange(len(order))          # positions in `order` not yet kept or suppressed
    while remaining.size and (limit is None or len(kept) < limit):
        i, rest = remaining[0], remaining[1:]
        kept.append(int(order[i]))
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        union = area[i] + area[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        remaining = rest[iou <= iou_threshold]
    return np.asarray(kept, np.int64)


def select(boxes: np.ndarray, scores: np.ndarray, score_threshold: float | None = DEFAULT_SCORE_THRESHOLD,
           nms_iou: float | None = DEFAULT_NMS_IOU, top_p: int | None = DEFAULT_TOP_P) -> np.ndarray:
    """Indices of the proposals to keep, in descending score order: scores **greater than**
    ``score_threshold`` (torchvision's and Ultralytics' rule), then greedy box NMS at ``nms_iou``
    (:func:`nms`), then the ``top_p`` best (DMN-AOA §3.1 top30, §4.1 NMS 0.4). A stage given
    None is skipped (the graph did it: ``proposals.postprocess_in_graph``); with every stage
    None the result is just the descending-score order. boxes float32 [N,4], scores float32 [N]
    → int64 [≤ N]. Raises :class:`~sdk.errors.InputError` for mismatched shapes, a threshold
    outside [0, 1] or a ``top_p`` < 1."""
    boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
    _check_pair(boxes, scores)
    if score_threshold is not None and not 0 <= score_threshold <= 1:
        raise InputError(f"score threshold must lie in [0, 1], got {score_threshold!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, np.integer)) or top_p < 1):
        raise InputError(f"top_p must be a positive int or None, got {top_p!r}")
    candidates = np.arange(len(scores)) if score_threshold is None else np.flatnonzero(scores > score_threshold)
    if nms_iou is not None:
        kept = candidates[nms(boxes[candidates], scores[candidates], nms_iou, top_p)]
    else:
        kept = candidates[np.argsort(-scores[candidates], kind="stable")]
    return (kept if top_p is None else kept[:top_p]).astype(np.int64)


def _check_pair(boxes: np.ndarray, scores: np.ndarray) -> None:
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.ndim != 1 or len(scores) != len(boxes):
        raise InputError(f"boxes must be [N,4] and scores [N], got {list(boxes.shape)} and {list(scores.shape)}")
