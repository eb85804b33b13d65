"""The memory-policy protocol: what a frame's memory write does (DESIGN.md, "Memory policies").

The policies themselves are in :mod:`sdk.policies` (the papers') and :mod:`sdk.peer_policies`
(XMem's, SAM 2's); this module holds what they share: the protocol, :class:`Write`,
:class:`Consolidate`, :class:`MemoryPolicy` and the QAM :class:`Quality` normalisation.

A policy *decides*; the :class:`~sdk.bank.MemoryBank` *holds* the tensors (Cutie's
MemoryManager / KVMemoryStore split). Policies see only small arrays (the frame index held by
each slot or position, QAM scores, readout usage), never keys and values, so they are testable
without ONNX.

Protocol, driven by :class:`~sdk.segmenter.Segmenter` for frame index t = 0, 1, …:

1. ``capacity()`` frame slots of hw positions, then ``feature_positions()`` positions addressed
   one by one (XMem's long-term memory; 0 for the others), are preallocated at the first frame;
   a ``growable`` bank may grow (unbounded policies), any other never reallocates.
2. ``prior(t)``: the frame (t − 1 or 0) whose mask is the prior of frame t for policies that
   require ``"prior_enhance"`` (prior enhancement, QDMN Eq. 5 / QPM Eq. 4); called before
   frame t is encoded.
3. After each readout, ``on_readout(t, usage)`` receives the top-k usage of every live memory
   position (LFU and XMem count it; the others ignore it).
4. ``on_frame(t, table, given, scores)`` decides frame t's write. ``table`` is the bank's
   :attr:`~sdk.bank.MemoryBank.frames` (slot → frame index, −1 = empty), or its per-position
   :attr:`~sdk.bank.MemoryBank.positions` (position → frame index; slot s at [s·hw, (s+1)·hw),
   then the feature positions) for ``per_feature`` policies and policies with
   ``feature_positions()`` (:attr:`MemoryPolicy.per_position`); ``given`` is True when the
   caller supplied a mask for this frame; ``scores`` float32 [N] are the QAM scores of frame t's
   objects (predicted mask IoU, QDMN Eq. 1) when ``needs_score(t, given)`` (policies that
   require ``"qam"``), else None. It returns None (no write), a slot (int; ``== len(table)``
   asks a growable bank to grow), positions (int64 [hw]: feature i → position i, per-feature
   policies) or a :class:`Write` (an RDE fold, slots to empty first (SAM 2's window), an XMem
   :class:`Consolidate`). The first frame (t = 0) must be written: it holds the only ground
   truth. The bank carries the decision out (:meth:`~sdk.bank.MemoryBank.apply`); what graphs
   compute for it (SAM's fold, XMem's potentiation through the readout graph) is computed before
   anything is written, so that a graph that fails leaves memory as it was.

5. ``remove_object(index)``: the caller stopped tracking object ``index`` (its channel in
   ``scores``; the objects after it move down one index). A policy drops what it keeps per
   object (the QAM normalisation's first-frame scores, :meth:`Quality.remove`); its tables are
   per frame and per position, shared by the objects, and stay.

``requires`` names the graphs a policy needs beyond the four core ones (docs/graph-contract.md):
``"qam"`` (scores), ``"prior_enhance"`` (the prior mask enhances the query feature),
``"sam_key"``/``"sam_value"`` (RDE folds). ``top_k`` is the readout top-k
the method prescribes (None: the manifest's).

Parameters are checked when a policy is built (:mod:`sdk.params`): counts are ints (NumPy ints
too; not bool, float or str) with the minimum each class gives, thresholds σ are finite numbers in
[0, 1]; anything else raises :class:`~sdk.errors.ParameterError` naming the policy, the
parameter, the value, its type and the accepted range.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

SIGMA_WHY = "a threshold on the normalised QAM quality S̄A_t, whose scale is [0, 1]"


@dataclass(frozen=True, eq=False)
class Consolidate:
    """XMem's memory consolidation (Cheng & Schwing, ECCV 2022, "Long-term memory": prototype
    selection, memory potentiation, removal of obsolete features), decided by :class:`XMem` and
    carried out by :meth:`~sdk.bank.MemoryBank.apply` after the frame's write. All int64 policy
    positions (the temporary slot not counted):

    * ``candidates`` [C]: the working-memory features consolidated; their keys and values are the
      memory of the potentiation readout, and they are emptied afterwards (they leave working
      memory);
    * ``prototypes`` [P]: indices into ``candidates`` whose keys become the prototypes' keys;
    * ``targets`` [P]: where prototype i is written (long-term positions, empty after ``evict``);
    * ``evict`` [E]: long-term positions emptied first (XMem's obsolete features).

    Prototype i's value is the readout of the candidates' values with its key as the query
    (the Segmenter's ``potentiate``: the readout graph, softmax over all C candidates).
    """

    candidates: np.ndarray
    prototypes: np.ndarray
    targets: np.ndarray
    evict: np.ndarray


@dataclass(frozen=True)
class Write:
    """A compound write: slots ``clear`` are emptied; slot ``fold[1]`` ← SAM(slot ``fold[0]``,
    frame) (RDE Eq. 4–6) when ``fold`` is set; the frame goes into each of ``slots``; then
    ``consolidate`` (:class:`Consolidate`) runs when set."""

    slots: tuple[int, ...] = ()
    fold: tuple[int, int] | None = None
    clear: tuple[int, ...] = ()
    consolidate: Consolidate | None = None


class MemoryPolicy(ABC):
    """Base class; subclasses set ``name`` and implement :meth:`capacity` and :meth:`on_frame`."""

    name = ""
    growable = False
    per_feature = False
    requires: tuple[str, ...] = ()
    top_k: int | None = None

    @abstractmethod
    def capacity(self) -> int:
        """Frame slots (of hw positions each) preallocated at the first frame."""

    def feature_positions(self) -> int:
        """Positions preallocated after the :meth:`capacity` frame slots and addressed one by
        one (XMem's long-term memory); 0 = none (every policy but XMem)."""
        return 0

    @property
    def per_position(self) -> bool:
        """Whether :meth:`on_frame` gets the per-position table (``per_feature`` policies and
        policies with :meth:`feature_positions`) rather than the slot table."""
        return self.per_feature or self.feature_positions() > 0

    def prior(self, t: int) -> int:
        """Frame whose mask is the prior of frame t: the previous one (QDMN Eq. 5)."""
        return t - 1

    def on_readout(self, t: int, usage: np.ndarray) -> None:
        """usage [M] float32: query positions having each live memory position in their top-k."""

    def needs_score(self, t: int, given: bool) -> bool:
        """Whether :meth:`on_frame` needs frame t's QAM scores."""
        return "qam" in self.requires

    @abstractmethod
    def on_frame(self, t: int, table: np.ndarray, given: bool,
                 scores: np.ndarray | None = None) -> int | np.ndarray | Write | None:
        """Where frame ``t`` is written, or None to leave memory unchanged."""

    def remove_object(self, index: int) -> None:
        """Forget what is kept of object ``index`` (0-based, in ``scores`` order); the objects
        after it move down one index. Nothing per object here (the tables are per frame)."""


class Quality:
    """Normalised frame quality S̄A_t = (1/N Σ_i S^A_{t,i}) / S̄A_1 (QDMN Eq. 3, QPM Eq. 2):
    the mean QAM score of the frame's objects over the first frame's. The first frame (t = 0)
    sets S̄A_1, from the objects it holds (objects that appear later do not change it).

    As QDMN's ``inference_core.py`` computes it, objects scoring exactly 0 on the first frame
    are left out of S̄A_1 (a ReLU-ended QAM gives 0 to what it cannot rate); later frames
    average all their objects. If every first-frame score is 0, S̄A_1 is undefined:
    ``all_zero="raw"`` (default) then uses the scores unnormalised (S̄A_1 := 1) for the rest of
    the video; ``all_zero="nan"`` makes every later S̄A_t NaN, so that no comparison with a
    threshold holds and no frame passes (what the authors' code does: 0/0). ``dtype`` is the
    arithmetic's: float64, or float32 as QDMN's code computes it (sum / count of the network's
    float32 scores), which decides frames within rounding of σ the same way.

    The first frame's scores are kept per object (``first_scores`` [N_0], object order) and the
    last call's (``last`` [N]), so that :meth:`remove` can take an object out of both.
    Raises ValueError when ``scores`` is None (the export lacks the QAM head).
    """

    def __init__(self, all_zero: str = "raw", dtype=np.float64):
        self.all_zero, self.dtype = all_zero, dtype
        self.first = dtype(1.0)
        self.first_scores = np.zeros(0, dtype)
        self.last = np.zeros(0, dtype)

    def _mean(self, scores: np.ndarray):
        return np.sum(scores) / self.dtype(len(scores))

    def _normaliser(self, scores: np.ndarray):
        rated = scores[scores != 0]
        if rated.size:
            return self._mean(rated)
        return self.dtype(np.nan if self.all_zero == "nan" else 1.0)

    def __call__(self, t: int, scores: np.ndarray | None):
        if scores is None:
            raise ValueError("this memory policy needs the frame's QAM scores [N]")
        scores = np.asarray(scores, self.dtype).ravel()
        if t == 0:
            self.first_scores = scores
            self.first = self._normaliser(scores)
        self.last = scores
        return self._mean(scores) / self.first

    def remove(self, index: int):
        """Take object ``index`` out: S̄A_1 is recomputed from the first frame's other objects
        (the rules above; unchanged when none of them is left: it still gives the scale of
        this video's scores), and the last frame's S̄A is recomputed without it → that S̄A, or
        None when the last call held no other object. Objects after ``index`` move down one."""
        if index < len(self.first_scores):
            self.first_scores = np.delete(self.first_scores, index)
            if self.first_scores.size:
                self.first = self._normaliser(self.first_scores)
        if index < len(self.last):
            self.last = np.delete(self.last, index)
        return self._mean(self.last) / self.first if self.last.size else None
