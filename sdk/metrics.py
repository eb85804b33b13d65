"""DAVIS region (J) and boundary (F) measures, semi-supervised protocol of DAVIS 2017.

Perazzi et al., CVPR 2016 (J, F); Pont-Tuset et al., 2017 (multi-object protocol). Values are
fractions in [0,1]; reports multiply by 100.

Lives in the sdk (NumPy + OpenCV only, no torch, not imported by ``sdk/__init__``) because
both sides score with it: ``training/validate.py`` (held-in J&F during training) and
``benchmarks/`` (vos-eval, vos-bench). ``benchmarks`` already imports ``training`` (the torch
reference of vos-bench), so the metric inside ``benchmarks`` made the two packages import
each other; both depend on ``sdk`` anyway, as for the DAVIS layout (:mod:`sdk.davis`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

VOID = 255
BOUNDARY_TOLERANCE = 0.008  # fraction of the image diagonal


def region_similarity(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """J = |pred ∩ gt| / |pred ∪ gt| over non-void pixels; bool [H,W] masks -> float.
    J = 1 when both masks are empty."""
    keep = np.ones_like(gt, bool) if void is None else ~void
    union = np.count_nonzero((pred | gt) & keep)
    return 1.0 if union == 0 else np.count_nonzero(pred & gt & keep) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary of a bool [H,W] mask -> bool [H,W] (the DAVIS toolkit's
    seg2bmap at native size): a pixel is on the boundary if it differs from its east, south or
    south-east neighbour; the last row/column compare with east/south only."""
    east = np.zeros_like(mask)
    south = np.zeros_like(mask)
    south_east = np.zeros_like(mask)
    east[:, :-1] = mask[:, 1:]
    south[:-1, :] = mask[1:, :]
    south_east[:-1, :-1] = mask[1:, 1:]
    boundary = (mask ^ east) | (mask ^ south) | (mask ^ south_east)
    boundary[-1, :] = mask[-1, :] ^ east[-1, :]
    boundary[:, -1] = mask[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def _disk(radius: int) -> np.ndarray:
    """uint8 [2r+1, 2r+1] disk x² + y² ≤ r² (structuring element of the toolkit)."""
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def boundary_tolerance(shape: tuple[int, int]) -> int:
    """Matching distance in px: ceil(0.008 · image diagonal)."""
    return math.ceil(BOUNDARY_TOLERANCE * math.hypot(*shape))


def boundary_measure(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """F = 2PR / (P + R) of the boundaries of bool [H,W] masks (void pixels removed first); a
    boundary pixel counts as matched if the other boundary lies within `boundary_tolerance`
    (disk dilation). Both boundaries empty -> 1; exactly one empty -> 0."""
    if void is not None:
        pred, gt = pred & ~void, gt & ~void
    pred_b, gt_b = boundary_map(pred), boundary_map(gt)
    n_pred, n_gt = np.count_nonzero(pred_b), np.count_nonzero(gt_b)
    if n_pred == 0 or n_gt == 0:
        return float(n_pred == n_gt)
    disk = _disk(boundary_tolerance(gt.shape))
    pred_near = cv2.dilate(pred_b.astype(np.uint8), disk).astype(bool)
    gt_near = cv2.dilate(gt_b.astype(np.uint8), disk).astype(bool)
    precision = np.count_nonzero(pred_b & gt_near) / n_pred
    recall = np.count_nonzero(gt_b & pred_near) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def first_appearance(gt_labels: Iterable[np.ndarray]) -> dict[int, int]:
    """{object_id: index of the first ground-truth frame holding it}, ids 1..254 in order."""
    first: dict[int, int] = {}
    for t, gt in enumerate(gt_labels):
        for obj in np.unique(gt).tolist():
            if obj not in (0, VOID):
                first.setdefault(obj, t)
    return dict(sorted(first.items()))


def evaluate_sequence(
    pred_labels: Iterable[np.ndarray], gt_labels: Sequence[np.ndarray]
) -> dict[int, dict[str, list[float]]]:
    """Per-object, per-frame J and F of one sequence.

    pred_labels: T label maps int [H,W], consumed one by one (may be a generator that runs the
    segmenter); gt_labels: the T ground-truth label maps (255 = void). Objects are the ids that
    occur in the ground truth. An object is scored on the frames after the one where its mask
    is given (its first ground-truth frame) up to, not including, the last frame: for objects
    of the first frame these are frames 1..T−2 (DAVIS 2017 semi-supervised). Objects with no
    such frame are left out. Returns {object_id: {"J": [...], "F": [...]}}.
    Raises ValueError if the frame counts differ or a pair of maps differs in shape.
    """
    last = len(gt_labels) - 1
    first = first_appearance(gt_labels)
    results = {obj: {"J": [], "F": []} for obj, t0 in first.items() if t0 + 1 < last}
    for t, (pred, gt) in enumerate(zip(pred_labels, gt_labels, strict=True)):
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"frame {t}: predicted {pred.shape} vs ground truth {gt.shape}")
        void = gt == VOID
        for obj, scores in results.items():
            if first[obj] < t < last:
                scores["J"].append(region_similarity(pred == obj, gt == obj, void))
                scores["F"].append(boundary_measure(pred == obj, gt == obj, void))
    return results


def statistics(values: Sequence[float]) -> dict[str, float]:
    """Mean, recall (fraction of values > 0.5) and decay (mean of the first quarter − mean of
    the last quarter, quarters as in the DAVIS toolkit) of one object's per-frame values."""
    values = np.asarray(values, float)
    edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(int)
    first, last = values[edges[0] : edges[1] + 1], values[edges[3] : edges[4] + 1]
    return {
        "mean": float(values.mean()),
        "recall": float((values > 0.5).mean()),
        "decay": float(first.mean() - last.mean()),
    }


def summarize(objects: Iterable[dict[str, list[float]]]) -> dict[str, float]:
    """Dataset summary over objects ({"J": [...], "F": [...]} each, e.g. the values of
    `evaluate_sequence` of every sequence): J-/F-Mean, -Recall, -Decay are means over objects
    of the per-object statistics; J&F = (J-Mean + F-Mean) / 2. Raises ValueError if empty."""
    per_object = [{m: statistics(o[m]) for m in ("J", "F")} for o in objects]
    if not per_object:
        raise ValueError("no object to summarize")
    summary = {
        f"{m}-{s.capitalize()}": float(np.mean([o[m][s] for o in per_object]))
        for m in ("J", "F")
        for s in ("mean", "recall", "decay")
    }
    summary["J&F"] = (summary["J-Mean"] + summary["F-Mean"]) / 2
    return summary


def prompts(gt_labels: list[np.ndarray]) -> list[np.ndarray | None]:
    """Masks to give the segmenter, one per frame (None = none): on the frame where objects
    first appear, a label map uint8 [H,W] of just those objects (void -> background); the
    first frame's holds every object it shows (DAVIS 2017 / YouTube-VOS semi-supervised)."""
    masks: list[np.ndarray | None] = [None] * len(gt_labels)
    first = first_appearance(gt_labels)
    for t in sorted(set(first.values())):
        new = [obj for obj, t0 in first.items() if t0 == t]
        masks[t] = np.where(np.isin(gt_labels[t], new), gt_labels[t], 0).astype(np.uint8)
    return masks
