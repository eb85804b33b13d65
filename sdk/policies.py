"""Memory policies: what a frame's memory write does (DESIGN.md, "Memory policies").

A policy *decides*; the :class:`~sdk.bank.MemoryBank` *holds* the tensors (Cutie's
MemoryManager / KVMemoryStore split). Policies see only small arrays (the frame index held by
each slot or position, QAM scores, readout usage), never keys and values, so they are testable
without ONNX.

Protocol, driven by :class:`~sdk.segmenter.Segmenter` for frame index t = 0, 1, …:

1. ``capacity()`` frame slots of hw positions are preallocated at the first frame; a
   ``growable`` bank may grow (unbounded policies), any other never reallocates.
2. ``prior(t)``: the frame (t − 1 or 0) whose mask is the prior of frame t for policies that
   require ``"prior_enhance"`` (prior enhancement, QDMN Eq. 5 / QPM Eq. 4); called before
   frame t is encoded.
3. After each readout, ``on_readout(t, usage)`` receives the top-k usage of every live memory
   position (LFU counts it; the others ignore it).
4. ``on_frame(t, table, given, scores)`` decides frame t's write. ``table`` is the bank's
   :attr:`~sdk.bank.MemoryBank.frames` (slot → frame index, −1 = empty), or its per-position
   :attr:`~sdk.bank.MemoryBank.origin` for ``per_feature`` policies; ``given`` is True when the
   caller supplied a mask for this frame; ``scores`` float32 [N] are the QAM scores of frame t's
   objects (predicted mask IoU, QDMN Eq. 1) when ``needs_score(t, given)`` (policies that
   require ``"qam"``), else None. It returns None (no write), a slot (int; ``== len(table)``
   asks a growable bank to grow), positions (int64 [hw]: feature i → position i, per-feature
   policies) or a :class:`Write`. The first frame (t = 0) must be written: it holds the only
   ground truth.

``requires`` names the graphs a policy needs beyond the four core ones (docs/graph-contract.md):
``"qam"`` (scores), ``"prior_enhance"`` (the prior mask enhances the query feature),
``"sam_key"``/``"sam_value"`` (RDE folds). ``top_k`` is the readout top-k
the method prescribes (None: the manifest's).
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class Write:
    """A compound write: first slot ``fold[1]`` ← SAM(slot ``fold[0]``, frame) (RDE Eq. 4–6)
    when ``fold`` is set, then the frame into each of ``slots``."""

    slots: tuple[int, ...] = ()
    fold: tuple[int, int] | None = None


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
    Raises ValueError when ``scores`` is None (the export lacks the QAM head).
    """

    def __init__(self, all_zero: str = "raw", dtype=np.float64):
        self.all_zero, self.dtype = all_zero, dtype
        self.first = dtype(1.0)

    def _mean(self, scores: np.ndarray):
        return np.sum(scores) / self.dtype(len(scores))

    def __call__(self, t: int, scores: np.ndarray | None):
        if scores is None:
            raise ValueError("this memory policy needs the frame's QAM scores [N]")
        scores = np.asarray(scores, self.dtype).ravel()
        if t == 0:
            rated = scores[scores != 0]
            if rated.size:
                self.first = self._mean(rated)
            else:
                self.first = self.dtype(np.nan if self.all_zero == "nan" else 1.0)
        return self._mean(scores) / self.first


class EveryK(MemoryPolicy):
    """STM/STCN baseline: write the first frame, every k-th frame (t mod k = 0) and every frame
    with a user-given mask.

    Unbounded by default: the bank preallocates ``initial_slots`` and doubles when full; the
    readout sees only the written slots (:class:`~sdk.bank.MemoryBank`), so a large start costs
    memory, not compute. With ``max_frames`` the bank is preallocated at that many slots and,
    when full, the oldest slot other than the first frame's (slot 0) is overwritten (FIFO).
    """

    name = "every_k"

    def __init__(self, k: int = 5, max_frames: int | None = None, initial_slots: int = 8):
        if int(k) < 1:
            raise InputError(f"every_k: k must be ≥ 1, got {k}")
        if max_frames is not None and int(max_frames) < 2:
            raise InputError(f"every_k: max_frames must be ≥ 2 (first frame + one more), got {max_frames}")
        self.k = int(k)
        self.max_frames = None if max_frames is None else int(max_frames)
        self.initial_slots = max(1, int(initial_slots))
        self.growable = self.max_frames is None

    def capacity(self) -> int:
        return self.initial_slots if self.max_frames is None else self.max_frames

    def on_frame(self, t, table, given, scores=None):
        if not (given or t % self.k == 0):
            return None
        empty = np.flatnonzero(table < 0)
        if empty.size:
            return int(empty[0])
        if self.max_frames is None:
            return len(table)
        return 1 + int(np.argmin(table[1:]))


class FirstLatest(MemoryPolicy):
    """First frame kept forever (slot 0) + the previous frame (slot 1, overwritten every frame)."""

    name = "first_latest"

    def capacity(self) -> int:
        return 2

    def on_frame(self, t, table, given, scores=None):
        return 0 if t == 0 else 1


class QDMN(MemoryPolicy):
    """Quality-aware dynamic memory bank (QDMN, Liu et al. ECCV 2022, §3.2–3.3, Alg. 1).

    A write is due when ``interval`` (N) frames have passed since the last write; a due frame
    is admitted if its normalised score S̄A_t (Eq. 3, :class:`Quality`) passes σ (``sigma``),
    else the write is deferred to the next frame, and so on. Frames with a user-given mask are
    always written (they count as admissions). The annotated first frame sits in slot 0.

    ``schedule`` says how the rest of Alg. 1 is read:

    * ``"paper"`` (default) — admitted when S̄A_t ≥ σ (Alg. 1 line 4). The memory holds the
      first frame (never evicted) + at most ``beta`` (β) frames: Alg. 1 line 7 adds while
      len(Memory) ≤ β with the first frame in Memory, i.e. "memory limit 20 + first" on DAVIS
      (YouTube-VOS: σ 0.75, β 10). When full, the frame with the lowest reference score
      S^R_k = S̄A_k + S^C_k is replaced, S^C_k = exp(k − j) (lines 10–18; Eq. 4) with k, j the
      relative memory indices (write order) of the memory frame and the incoming one; ties →
      the oldest.
    * ``"authors"`` — what QDMN's ``inference_core.py`` does with its released model: admitted
      when S̄A_t > σ (strictly); the admission list excludes the first frame and grows while it
      holds ≤ β entries, so memory reaches first + β + 1 frames; when full, the entry m with the
      lowest exp(−|j − m|) + S̄A_m (first on ties, in admission-list order) leaves the list and
      the new frame joins it, but the tensor entry removed is the one at that entry's *list
      position* counted in the memory tensor, whose position 0 is the first frame — so the
      frame that leaves memory is the one before it in admission order, or the first frame when
      the entry was at the head of the list. Kept bit for bit so that imported QDMN weights give
      the authors' masks; only videos with more than β + 1 admissions (over ~110 frames at
      N = 5) reach it.

      A first frame whose objects all score 0 leaves S̄A undefined and no frame is admitted
      (:class:`Quality` ``all_zero="nan"``), as there.

    QAM scores are needed only at t = 0, on due frames and on given frames
    (:meth:`needs_score`); the prior mask (PE, Eq. 5) is the previous frame's.
    """

    name = "qdmn"
    requires = ("qam", "prior_enhance")

    def __init__(self, interval: int = 5, sigma: float = 0.8, beta: int = 20, schedule: str = "paper"):
        if int(interval) < 1 or int(beta) < 1:
            raise InputError(f"qdmn: interval and beta must be ≥ 1, got {interval}, {beta}")
        if schedule not in ("paper", "authors"):
            raise InputError(f"qdmn: schedule must be 'paper' or 'authors', got {schedule!r}")
        self.interval, self.sigma, self.beta, self.schedule = int(interval), float(sigma), int(beta), schedule
        self.quality = (Quality("nan", np.float32) if schedule == "authors" else Quality())
        self._last = 0                                        # frame of the last write
        self._j = 0                                           # relative index of the last write
        slots = self.capacity()
        self._score = np.zeros(slots)                         # slot → S̄A_k
        self._index = np.zeros(slots, np.int64)               # slot → relative index k
        self._admitted: list[int] = []                        # authors: admission list (relative indices)
        self._sa: dict[int, float] = {}                       # authors: relative index → S̄A
        self._order: list[int] = [0]                          # authors: memory tensor order (slots)

    def capacity(self) -> int:
        return self.beta + (2 if self.schedule == "authors" else 1)

    def needs_score(self, t, given):
        return t == 0 or given or t - self._last >= self.interval

    def on_frame(self, t, table, given, scores=None):
        if not self.needs_score(t, given):
            return None
        score = self.quality(t, scores)
        if t == 0:
            self._score[0] = score
            return 0
        passes = score > self.sigma if self.schedule == "authors" else score >= self.sigma
        if not (given or passes):
            return None
        self._j += 1
        self._last = t
        if self.schedule == "authors":
            return self._authors_write(table, score)
        empty = np.flatnonzero(table < 0)
        if empty.size:
            slot = int(empty[0])
        else:
            reference = self._score[1:] + np.exp(self._index[1:] - self._j)
            slot = 1 + int(np.lexsort((self._index[1:], reference))[0])
        self._score[slot], self._index[slot] = score, self._j
        return slot

    def _authors_write(self, table, score) -> int:
        if len(self._admitted) > self.beta:
            reference = [np.exp(-abs(self._j - m)) + self._sa[m] for m in self._admitted]
            pos = int(np.argmin(reference))                   # first minimum, in list order
            del self._sa[self._admitted.pop(pos)]
            slot = self._order.pop(pos)                       # the tensor entry at that position
        else:
            slot = int(np.flatnonzero(table < 0)[0])
        self._admitted.append(self._j)
        self._sa[self._j] = score
        self._order.append(slot)
        self._score[slot], self._index[slot] = score, self._j
        return slot

class LFU(MemoryPolicy):
    """Least-frequently-used feature memory (Adaptive Memory Management thesis, ch. 3.3.4).

    Every k-th frame (t mod k = 0), the first frame and frames with a user-given mask are
    written, feature by feature, into a bank of ``capacity_frames`` frames' worth of positions
    (default 2, Table 3). Each memory feature counts how often it is in a query feature's top-k
    (``usage`` of each readout); LFU score = count / age, age = t − frame written = readouts it
    took part in. To make room for a frame's hw features, empty positions are used first, then
    the hw lowest-scoring features are removed (ties → the oldest, then the lowest position);
    the new features start at count 0. One counter is shared by all objects (keys are
    object-agnostic, §3.4); the first frame is not protected (the thesis keeps no feature).
    """

    name = "lfu"
    per_feature = True

    def __init__(self, k: int = 5, capacity_frames: int = 2):
        if int(k) < 1 or int(capacity_frames) < 1:
            raise InputError(f"lfu: k and capacity_frames must be ≥ 1, got {k}, {capacity_frames}")
        self.k, self.capacity_frames = int(k), int(capacity_frames)
        self.count: np.ndarray | None = None                  # position → times in a top-k

    def capacity(self) -> int:
        return self.capacity_frames

    def _counts(self, positions: int) -> np.ndarray:
        if self.count is None:
            self.count = np.zeros(positions)
        return self.count

    def on_readout(self, t, usage):
        self._counts(len(usage))[:] += usage

    def on_frame(self, t, table, given, scores=None):
        if not (given or t % self.k == 0):
            return None
        count = self._counts(len(table))
        occupied = table >= 0
        lfu = np.where(occupied, count / np.where(occupied, t - table, 1), -np.inf)
        order = np.lexsort((np.arange(len(table)), table, lfu))
        positions = np.sort(order[:len(table) // self.capacity_frames])
        count[positions] = 0
        return positions


class QPM(MemoryPolicy):
    """Quality-aware and selective prior memory (QPM, Liu et al. 2021, §2.2–2.3).

    Memory = the first frame (slot 0) + the previous frame + every ``interval``-th frame
    (t mod 5 = 0) whose normalised score (Eq. 2, :class:`Quality`) > ``sigma_m`` (σ_m = 0.7,
    Eq. 3) + frames with a user-given mask. Every frame t > 0 goes to the "latest" slot; when it
    is kept, that slot stays and the next frame's latest slot is a fresh one, so the previous
    frame is never held twice. Prior mask of frame t (Eq. 4): frame t − 1's if its normalised
    score > ``sigma_en`` (σ_en = 0.65), else the first frame's.

    Unbounded as in the paper (the bank preallocates ``initial_slots`` and grows); with
    ``max_frames`` it is bounded and the oldest kept frame other than the first gives its slot
    to the next latest frame (FIFO).
    """

    name = "qpm"
    requires = ("qam", "prior_enhance")

    def __init__(self, interval: int = 5, sigma_m: float = 0.7, sigma_en: float = 0.65,
                 max_frames: int | None = None, initial_slots: int = 8):
        if int(interval) < 1:
            raise InputError(f"qpm: interval must be ≥ 1, got {interval}")
        if max_frames is not None and int(max_frames) < 2:
            raise InputError(f"qpm: max_frames must be ≥ 2 (first + previous frame), got {max_frames}")
        self.interval, self.sigma_m, self.sigma_en = int(interval), float(sigma_m), float(sigma_en)
        self.max_frames = None if max_frames is None else int(max_frames)
        self.initial_slots = max(2, int(initial_slots))
        self.growable = self.max_frames is None
        self.quality = Quality()
        self._latest = 1                                      # slot of the latest frame
        self._previous = 1.0                                  # S̄A of frame t − 1

    def capacity(self) -> int:
        return self.initial_slots if self.max_frames is None else self.max_frames

    def prior(self, t):
        return t - 1 if self._previous > self.sigma_en else 0

    def on_frame(self, t, table, given, scores=None):
        self._previous = score = self.quality(t, scores)
        if t == 0:
            return 0
        slot = self._latest
        if given or (t % self.interval == 0 and score > self.sigma_m):
            if self.growable:
                self._latest = slot + 1
            else:
                kept = table[1:].copy()
                kept[slot - 1] = t                            # the slot now holds frame t
                self._latest = 1 + int(np.argmin(kept))       # an empty slot, else the oldest
        return slot


class RDE(MemoryPolicy):
    """Recurrent dynamic embedding memory (RDE-VOS, Li et al. CVPR 2022, §3.3, Table 5).

    Memory = [RDE, latest memory frame, first frame, first frame] (slots 0–3, "2F & L & RDE":
    the first frame sampled twice). Every θ frames (``theta``; t mod θ = 0 on DAVIS with θ = 3;
    YouTube-VOS θ = 4) and on frames with a user-given mask: RDE ← SAM(RDE, frame) (Eq. 4–6, the
    frame being the new memory frame) and the latest slot ← the frame. Before the first update
    the memory is [first, first] and the RDE starts as the first frame. Readout top-k 40 (§4.2).
    """

    name = "rde"
    requires = ("sam_key", "sam_value")

    def __init__(self, theta: int = 3, top_k: int = 40):
        if int(theta) < 1 or int(top_k) < 1:
            raise InputError(f"rde: theta and top_k must be ≥ 1, got {theta}, {top_k}")
        self.theta, self.top_k = int(theta), int(top_k)

    def capacity(self) -> int:
        return 4

    def on_frame(self, t, table, given, scores=None):
        if t == 0:
            return Write(slots=(2, 3))
        if not (given or t % self.theta == 0):
            return None
        return Write(slots=(1,), fold=(0 if table[0] >= 0 else 2, 0))


class QualityGate(MemoryPolicy):
    """QAM as a plug-in (QDMN §5.2, Tables 3–4): wraps ``inner`` so that a frame t > 0 without
    a user-given mask is offered to it only if its normalised score S̄A_t (:class:`Quality`) ≥
    ``sigma``; frames below σ are not written and ``inner`` never sees them."""

    def __init__(self, inner: MemoryPolicy, sigma: float):
        self.inner, self.sigma = inner, float(sigma)
        self.name, self.growable, self.per_feature, self.top_k = (
            inner.name, inner.growable, inner.per_feature, inner.top_k)
        self.requires = tuple(dict.fromkeys((*inner.requires, "qam")))
        self.quality = Quality()

    def capacity(self) -> int:
        return self.inner.capacity()

    def prior(self, t):
        return self.inner.prior(t)

    def on_readout(self, t, usage):
        self.inner.on_readout(t, usage)

    def needs_score(self, t, given):
        return True

    def on_frame(self, t, table, given, scores=None):
        quality = self.quality(t, scores)                     # t = 0 sets S̄A_1
        if t > 0 and not given and not quality >= self.sigma:   # NaN never passes
            return None
        return self.inner.on_frame(t, table, given, scores)


POLICIES = {cls.name: cls for cls in (EveryK, FirstLatest, QDMN, LFU, QPM, RDE)}


def make_policy(method: str, **params) -> MemoryPolicy:
    """Instantiate the policy called ``method`` with ``params``; ``quality_gate=σ`` (any
    policy) wraps it in a :class:`QualityGate`.

    Raises :class:`~sdk.errors.InputError` for an unknown method (listing the known ones), a
    parameter the policy does not take (listing those it takes) or an invalid value.
    """
    if method not in POLICIES:
        raise InputError(f"unknown memory policy {method!r}; known: {', '.join(POLICIES)}")
    cls = POLICIES[method]
    accepted = [*inspect.signature(cls).parameters, "quality_gate"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise InputError(f"policy {method!r} takes no parameter {', '.join(unknown)}; "
                         f"it takes: {', '.join(accepted)}")
    gate = params.pop("quality_gate", None)
    policy = cls(**params)
    return policy if gate is None else QualityGate(policy, gate)
