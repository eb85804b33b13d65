"""Parity of a reduced-precision export (float16, int8) with its float32 original: both run
through :class:`sdk.Segmenter` on real frames, and their masks must agree.

Why mask IoU against float32, and why :data:`MIN_MEAN_IOU` = 0.99: DAVIS' region score J of a
mask M is its IoU with the ground truth G, and the Jaccard distance d(A, B) = 1 − IoU(A, B) is
a metric on sets (it satisfies the triangle inequality; Kosub, "A note on the triangle
inequality for the Jaccard distance", Pattern Recognition Letters 120, 2019). Hence for the
reduced mask R and the float32 mask P of the same frame and object

    |J(R) − J(P)| = |d(P, G) − d(R, G)| ≤ d(R, P) = 1 − IoU(R, P),

and averaged over frames and objects (J-Mean) the same holds for the means: a mean IoU vs
float32 of at least 0.99 bounds the change of J-Mean on those frames by 1 point (×100),
whatever the ground truth — a bound needing no labels, so the check also runs on data without
annotations beyond the first frame. Frames where both masks are empty count as IoU 1.

F (boundary F-measure) has no such bound, and the bound is loose in practice: errors move
boundaries both ways. Measured on the bundled lite model, 6 DAVIS 2016 val sequences
(blackswan, bmx-trees, camel, car-roundabout, cows, dance-twirl) × 25 frames at 480 px,
every_k, J/F/J&F of the reduced export minus float32's, ×100:

=====================================  =========  =========  ======  ======  =======
export (graphs converted)              mean IoU   1 − IoU    ΔJ      ΔF      ΔJ&F
=====================================  =========  =========  ======  ======  =======
float16 (all but readout)              0.9982     0.18       +0.05   −0.01   +0.02
int8 decoder                           0.9938     0.62       +0.06   +0.05   +0.05
int8 decoder + value encoder           0.9921     0.79       −0.08   +0.02   −0.03
int8 value encoder (8-bit weights)     0.9767     2.33       −0.64   −0.44   −0.54
int8 key encoder                       0.9523     4.77       +0.01   +0.60   +0.31
int8 dec. + value enc. (8-bit w.)      0.9578     4.22       −1.60   −0.98   −1.29
int8 key encoder (8-bit weights)       0.9214     7.86       −1.02   +0.30   −0.36
=====================================  =========  =========  ======  ======  =======

|ΔF| stayed within 1 − IoU too, and |ΔJ&F| was 5–31 % of it: a mean IoU of 0.958 already
cost 1.3 J&F points, while 0.99 costs at most 1 J point by the bound and ~0.3 J&F points at
the worst ratio measured. The ratio depends on the data, the bound does not: hence 0.99.

The per-frame minimum and the per-sequence means are recorded too (a single frame of a small
object can have a low IoU from a few pixels; they are not gated). Each memory policy that runs
a reduced graph is checked (:func:`~export.calibration.covering_methods`, the export's default
method first): the heads (QAM, prior enhancement, SAM) change masks only through the policies
that use them.
"""
from __future__ import annotations

import numpy as np

from .calibration import Clip, FeedRecorder, covering_methods, play
from .errors import ParityError

MIN_MEAN_IOU = 0.99
# parity clips: the first frames of a few sequences of the data's val split
PARITY_SEQUENCES, PARITY_FRAMES = 3, 25
# feeds kept per graph (from the float32 run) for the per-graph numeric comparison
NUMERIC_SAMPLES = 6


def mask_ious(reduced: list[np.ndarray], reference: list[np.ndarray], labels) -> list[float]:
    """IoU of each label's mask in ``reduced`` vs ``reference`` (label maps uint8 [H,W]) for
    every frame after the first (the given mask) → one value per (frame, label); 1 where
    both masks are empty."""
    out = []
    for a, b in zip(reduced[1:], reference[1:]):
        for label in labels:
            ma, mb = a == label, b == label
            union = np.count_nonzero(ma | mb)
            out.append(1.0 if union == 0 else np.count_nonzero(ma & mb) / union)
    return out


def graph_errors(reference_export, reduced_export, feeds: dict) -> dict:
    """Per graph of ``feeds`` ({graph: [feeds, …]}, recorded from the float32 export): the
    relative error ‖reduced − float32‖₂ / ‖float32‖₂ of each output on each feed, worst over
    the feeds → {graph: {output: error}} (onnxruntime CPU, float32 inputs)."""
    import onnxruntime as ort

    from sdk.manifest import load_manifest

    ref, red = load_manifest(reference_export), load_manifest(reduced_export)
    out = {}
    for graph, samples in feeds.items():
        sessions = [ort.InferenceSession(str(m.graphs[graph]), providers=["CPUExecutionProvider"]) for m in (ref, red)]
        names = [o.name for o in sessions[0].get_outputs()]
        worst = dict.fromkeys(names, 0.0)
        for sample in samples:
            a, b = (s.run(None, sample) for s in sessions)
            for name, x, y in zip(names, a, b):
                norm = float(np.linalg.norm(x.astype(np.float64)))
                err = float(np.linalg.norm((x - y).astype(np.float64))) / norm if norm else float(np.abs(y).max())
                worst[name] = max(worst[name], err)
        out[graph] = {k: round(v, 5) for k, v in worst.items()}
    return out


def check_precision_parity(reference_export, reduced_export, clips: list[Clip], resolution, reduced_graphs,
                           min_mean_iou: float = MIN_MEAN_IOU, description: str = "") -> dict:
    """Segment ``clips`` with the float32 ``reference_export`` and the ``reduced_export`` at
    internal short side ``resolution`` (px; None = native) under every policy of
    :func:`~export.calibration.covering_methods` (the export's default method first) and
    compare the masks per frame and object (:func:`mask_ious`) →
    ``{"min_mean_iou": threshold, "methods": {method: {"mean_iou", "min_iou",
    "per_sequence": {name: mean IoU}}}, "mean_iou": worst method's, "resolution",
    "frames": description, "graphs_rel_error": {graph: {output: error}}}``.

    Raises :class:`~export.errors.ParityError` (one line: each failing policy's mean IoU, the
    threshold, and the per-graph relative errors of the reduced graphs) when a policy's mean
    IoU is below ``min_mean_iou``.
    """
    from sdk.manifest import load_manifest

    manifest = load_manifest(reference_export)
    recorder = FeedRecorder(NUMERIC_SAMPLES, seed=1)
    methods = {}
    for method in covering_methods(manifest, reduced_graphs):
        ref = play(reference_export, clips, method, resolution, recorder)
        red = play(reduced_export, clips, method, resolution)
        per_sequence, ious = {}, []
        for clip, a, b in zip(clips, red, ref):
            labels = [int(v) for v in np.unique(clip.mask) if 0 < v < 255]
            seq = mask_ious(a, b, labels)
            per_sequence[clip.name] = round(float(np.mean(seq)), 5) if seq else 1.0
            ious += seq
        methods[method] = {"mean_iou": round(float(np.mean(ious)), 5) if ious else 1.0,
                           "min_iou": round(float(np.min(ious)), 5) if ious else 1.0, "per_sequence": per_sequence}
    errors = graph_errors(reference_export, reduced_export,
                          {g: recorder.feeds[g] for g in reduced_graphs if g in recorder.feeds})
    result = {"min_mean_iou": min_mean_iou, "mean_iou": min(m["mean_iou"] for m in methods.values()),
              "methods": methods, "resolution": resolution, "frames": description, "graphs_rel_error": errors}
    bad = {m: r["mean_iou"] for m, r in methods.items() if r["mean_iou"] < min_mean_iou}
    if bad:
        worst = ", ".join(f"{g} {max(e.values()):.3g}" for g, e in errors.items())
        raise ParityError(
            "the reduced-precision masks disagree with float32: mean IoU "
            + ", ".join(f"{m} {v:.4f}" for m, v in bad.items())
            + f" < {min_mean_iou} on {description or 'the parity clips'}"
            + (f" (relative error of each reduced graph's outputs vs float32: {worst}; keep the worst in "
               "float32 with --int8-graphs, or try another --calibration-method)" if errors else ""))
    return result
