"""DMN-AOA's per-frame pipeline (``Segmenter(method="dmn_aoa")``; docs/dmn-aoa.md), torch-free.

Per frame t > 0, for the N objects in memory (Zhou et al., DMN-AOA §3.1–3.4):

1. **proposals** (§3.1 "Object Proposal Generator"): the ``proposals`` callable (by default the
   export's ``proposals.onnx``, :class:`sdk.proposal_graph.ProposalGenerator`) gives P object
   proposals of the padded frame — boxes [P,4] (x1, y1, x2, y2 float32, padded internal-input
   px), scores [P], masks [P,Hp/4,Wp/4] (full-frame probabilities on the stride-4 grid), the
   canonical form of ``sdk.proposals.Proposals``; P may be 0;
2. **DMN** (§3.2, Eq. 1): graph ``dmn_template`` — the query encoder on the objects' features in
   their boxes of the previous frame (:func:`sdk.boxes.boxes_from_masks`) with the relative-time
   embedding of t − (the object's first frame), the template decoder over the object memory
   (:class:`sdk.object_bank.ObjectMemoryBank`);
3. **AOA** (§3.3, Eq. 2–3 + the matching layer): graph ``aoa_match`` → the coarse mask
   [N,1,Hp/4,Wp/4] = A · proposal masks; with P = 0 the graph is skipped and the coarse mask is 0;
4. **refine** (§3.1 "RefineNet"): graph ``refine`` on the core readout over the pixel memory
   (the reference frames), the coarse mask and the frame's f16/f8/f4 → logits, then the sdk's
   sigmoid and multi-object soft aggregation (§3.4) as for every method.

When the frame-slot memory policy (``memory``: every_k by default, first_latest, qdmn, qpm,
sam2_window, QAM-gated or not) writes frame t, graph ``dmn_memory`` encodes each object's
features and predicted mask in its new box (§3.2 memory encoder) and the object memory mirrors
the pixel bank's slots. ROI Align runs inside the DMN/AOA graphs (ONNX ``RoiAlign``), so its
time counts in the ``dmn`` and ``aoa`` stages.
"""
from __future__ import annotations

from time import perf_counter

import numpy as np

from .boxes import MASK_STRIDE, boxes_from_masks
from .errors import InputError, ManifestError
from .object_bank import ObjectMemoryBank

METHOD = "dmn_aoa"
GRAPHS = ("dmn_memory", "dmn_template", "aoa_match", "refine")
GRAPH_STAGES = {"dmn_memory": "dmn", "dmn_template": "dmn", "aoa_match": "aoa", "refine": "refine"}
STAGES = ("proposals", "dmn", "aoa", "refine")
DEFAULT_MEMORY = "every_k"


def policy_of(method: str) -> str:
    """The memory policy a method's parameters belong to: ``dmn_aoa`` → its default pixel-memory
    policy (every_k), any other method → itself (the command lines check --param with it)."""
    return DEFAULT_MEMORY if method == METHOD else method


def dmn_settings(manifest) -> dict:
    """The manifest's ``dmn`` object (roi_size, channels, key_channels ints ≥ 1). Raises
    :class:`~sdk.errors.ManifestError` when the export has no DMN-AOA graphs or settings."""
    missing = [name for name in GRAPHS if name not in manifest.graphs]
    settings = manifest.raw.get("dmn")
    if missing or not isinstance(settings, dict):
        raise ManifestError(f"method {METHOD!r} needs the DMN-AOA graphs {', '.join(GRAPHS)} and the manifest's "
                            f"'dmn' settings, which the export {manifest.root} lacks"
                            + (f" (missing: {', '.join(missing)})" if missing else "")
                            + ": add them with export.dmn_export.export_dmn")
    for field in ("roi_size", "channels", "key_channels"):
        value = settings.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ManifestError(f"{manifest.root / 'manifest.json'}: dmn.{field} is {value!r}, expected a positive "
                                "int; re-export the model")
    return settings


def check_proposals(out, padded: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A proposals callable's result (an object with ``boxes``, ``masks`` attributes, or a
    (boxes, scores, masks) tuple) → (boxes float32 [P,4], masks float32 [P,Hp/4,Wp/4]) as
    C-contiguous arrays. Raises :class:`~sdk.errors.InputError` naming what does not fit."""
    try:
        boxes, masks = (out.boxes, out.masks) if hasattr(out, "boxes") else (out[0], out[2])
        boxes, masks = np.asarray(boxes), np.asarray(masks)
    except Exception as error:
        raise InputError(f"proposals must return an object with boxes [P,4] and masks [P,H/4,W/4] "
                         f"(sdk.proposals.Proposals) or a (boxes, scores, masks) tuple; got "
                         f"{type(out).__name__}: {error}") from error
    grid = (padded[0] // MASK_STRIDE, padded[1] // MASK_STRIDE)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InputError(f"proposal boxes of shape {boxes.shape}, expected [P, 4] (x1, y1, x2, y2)")
    if masks.shape != (len(boxes), *grid):
        raise InputError(f"proposal masks of shape {masks.shape}, expected [{len(boxes)}, {grid[0]}, {grid[1]}] "
                         f"(full-frame probabilities on the stride-4 grid of the padded {padded[0]}x{padded[1]} "
                         "frame)")
    if boxes.dtype.kind not in "fiu" or masks.dtype.kind not in "fiu" \
            or not (np.isfinite(boxes).all() and np.isfinite(masks).all()):
        raise InputError("proposal boxes and masks must be finite real numbers")
    return np.ascontiguousarray(boxes, np.float32), np.ascontiguousarray(masks, np.float32)


def pool_to_mask_grid(probs: np.ndarray) -> np.ndarray:
    """[N,Hp,Wp] float32 probabilities → [N,Hp/4,Wp/4]: the mean of each 4×4 cell."""
    n, h, w = probs.shape
    return probs.reshape(n, h // MASK_STRIDE, MASK_STRIDE, w // MASK_STRIDE, MASK_STRIDE).mean((2, 4),
                                                                                                  dtype=np.float32)


class DMNPipeline:
    """The object-level state of a ``dmn_aoa`` Segmenter: the object memory, each object's box
    of the last frame and the frame it appeared at. ``proposals``: callable(image [1,3,Hp,Wp]
    float32, the normalised padded frame, features {"f16", "f8", "f4": the frame's features as
    the decoder gets them}) → proposals (:func:`check_proposals`), e.g.
    :class:`sdk.proposal_graph.ProposalGenerator`; or None (no proposals: the coarse mask is 0
    on every frame)."""

    def __init__(self, manifest, proposals=None):
        if proposals is not None and not callable(proposals):
            raise InputError(f"proposals must be a callable image → proposals (e.g. sdk.proposals."
                             f"ProposalGenerator) or None, got {type(proposals).__name__}")
        self.settings = dmn_settings(manifest)
        self.proposals = proposals
        self.last_assignment: np.ndarray | None = None
        self.reset()

    def reset(self) -> None:
        s = self.settings
        self.bank = ObjectMemoryBank(s["key_channels"], s["channels"], s["roi_size"])
        self.boxes = np.zeros((0, 4), np.float32)
        self.first: list[int] = []

    @property
    def bank_bytes(self) -> int:
        return self.bank.bank_bytes

    def remove_object(self, index: int) -> None:
        if index < self.bank.num_objects:
            self.bank.remove_object(index)
        self.boxes = np.delete(self.boxes, index, 0)
        del self.first[index]

    def logits(self, graphs, t: int, image, readout, f16, f8, f4, ms: dict, check) -> np.ndarray:
        """Steps 1–4 of the module docstring for the N objects in memory → logits [N,1,Hp,Wp].
        ``check(graph, **outputs)`` raises for non-finite outputs (the Segmenter's)."""
        n = readout.shape[0]
        t0 = perf_counter()
        boxes, masks = (np.zeros((0, 4), np.float32), None) if self.proposals is None else \
            check_proposals(self.proposals(image, {"f16": f16, "f8": f8, "f4": f4}), image.shape[2:])
        ms["proposals"] += (perf_counter() - t0) * 1e3
        time = np.asarray([t - f for f in self.first[:n]], np.float32)
        (template,) = graphs.run("dmn_template", {"f16": f16, "boxes": self.boxes[:n], "time": time,
                                                  "memory_keys": self.bank.keys, "memory_values": self.bank.values,
                                                  "valid": self.bank.valid})
        check("dmn_template", template=template)
        grid = (image.shape[2] // MASK_STRIDE, image.shape[3] // MASK_STRIDE)
        if len(boxes):
            assignment, _, coarse = graphs.run("aoa_match", {"template": template, "f16": f16,
                                                             "proposal_boxes": boxes, "proposal_masks": masks})
            check("aoa_match", coarse=coarse)
            self.last_assignment = assignment
        else:
            coarse, self.last_assignment = np.zeros((n, 1, *grid), np.float32), np.zeros((n, 0), np.float32)
        (logits,) = graphs.run("refine", {"readout": readout, "coarse": coarse, "f16": f16, "f8": f8, "f4": f4})
        return logits

    def encode(self, graphs, t: int, f16, agg: np.ndarray, write: bool, check):
        """After frame t's prediction agg [N+1,Hp,Wp] (soft-aggregated, given masks merged in):
        the objects' new boxes and, when the policy writes frame t, their ``dmn_memory`` key and
        value → a pending state for :meth:`commit` (nothing changes here)."""
        probs = pool_to_mask_grid(agg[1:])
        n = len(probs)
        grid = probs.shape[1:]
        previous = np.concatenate([self.boxes, np.tile(np.array([[0, 0, grid[1] * MASK_STRIDE,
                                                                  grid[0] * MASK_STRIDE]], np.float32),
                                                       (n - len(self.boxes), 1))])
        boxes = boxes_from_masks(probs, previous)
        first = self.first + [t] * (n - len(self.first))
        key = value = None
        if write:
            time = np.asarray([t - f for f in first], np.float32)
            key, value = graphs.run("dmn_memory", {"f16": f16, "boxes": boxes, "masks": probs[:, None], "time": time})
            check("dmn_memory", key=key, value=value)
        return boxes, first, key, value

    def commit(self, bank, t: int, pending) -> None:
        """Take the pending state of :meth:`encode` after the pixel bank carried out frame t's
        decision: objects added, the object memory mirrors ``bank``'s slots."""
        boxes, first, key, value = pending
        n = len(boxes)
        if not self.bank.capacity:
            self.bank.allocate(bank.capacity, n)
        elif n > self.bank.num_objects:
            self.bank.add_objects(n - self.bank.num_objects)
        self.bank.sync(bank, t, key, value)
        self.boxes, self.first = boxes, first
