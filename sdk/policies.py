"""Memory policies: what a frame's memory write does (DESIGN.md, "Memory policies").

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

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from .params import choice, integer, number, parameter_error, refuse, shown

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

    Parameters: ``k`` int ≥ 1; ``max_frames`` int ≥ 2 (the first frame + one more) or None
    (unbounded); ``initial_slots`` int ≥ 1. Raises :class:`~sdk.errors.ParameterError`.
    """

    name = "every_k"

    def __init__(self, k: int = 5, max_frames: int | None = None, initial_slots: int = 8):
        self.k = integer(self.name, "k", k, 1)
        self.max_frames = integer(self.name, "max_frames", max_frames, 2, optional=True,
                                  why="the first frame + one more")
        self.initial_slots = integer(self.name, "initial_slots", initial_slots, 1)
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

    Parameters: ``interval`` (N) int ≥ 1; ``sigma`` (σ) finite number in [0, 1] (the scale of
    S̄A_t; §4 uses 0.8, 0 = no filtering in Table 4); ``beta`` (β) int ≥ 1; ``schedule``
    ``"paper"`` or ``"authors"``. Raises :class:`~sdk.errors.ParameterError`.
    """

    name = "qdmn"
    requires = ("qam", "prior_enhance")

    def __init__(self, interval: int = 5, sigma: float = 0.8, beta: int = 20, schedule: str = "paper"):
        self.interval = integer(self.name, "interval", interval, 1)
        self.sigma = number(self.name, "sigma", sigma, 0, 1, why=SIGMA_WHY)
        self.beta = integer(self.name, "beta", beta, 1)
        self.schedule = choice(self.name, "schedule", schedule, ("paper", "authors"))
        self.quality = (Quality("nan", np.float32) if schedule == "authors" else Quality())
        self._last = 0                                        # frame of the last write
        self._j = 0                                           # relative index of the last write
        self._score = np.zeros(0)                             # slot → S̄A_k (sized at frame 0, as the bank)
        self._index = np.zeros(0, np.int64)                   # slot → relative index k
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
        if t == 0:                                            # table: the capacity() slots the bank holds
            self._score, self._index = np.zeros(len(table)), np.zeros(len(table), np.int64)
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

    Parameters: ``k`` int ≥ 1; ``capacity_frames`` int ≥ 1. Raises
    :class:`~sdk.errors.ParameterError`.
    """

    name = "lfu"
    per_feature = True

    def __init__(self, k: int = 5, capacity_frames: int = 2):
        self.k = integer(self.name, "k", k, 1)
        self.capacity_frames = integer(self.name, "capacity_frames", capacity_frames, 1)
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

    Parameters: ``interval`` int ≥ 1; ``sigma_m``, ``sigma_en`` finite numbers in [0, 1] (the
    scale of the normalised score, Eq. 2); ``max_frames`` int ≥ 2 (the first + the previous
    frame) or None (unbounded); ``initial_slots`` int ≥ 2. Raises
    :class:`~sdk.errors.ParameterError`.
    """

    name = "qpm"
    requires = ("qam", "prior_enhance")

    def __init__(self, interval: int = 5, sigma_m: float = 0.7, sigma_en: float = 0.65,
                 max_frames: int | None = None, initial_slots: int = 8):
        self.interval = integer(self.name, "interval", interval, 1)
        self.sigma_m = number(self.name, "sigma_m", sigma_m, 0, 1, why=SIGMA_WHY)
        self.sigma_en = number(self.name, "sigma_en", sigma_en, 0, 1, why=SIGMA_WHY)
        self.max_frames = integer(self.name, "max_frames", max_frames, 2, optional=True,
                                  why="the first + the previous frame")
        self.initial_slots = integer(self.name, "initial_slots", initial_slots, 2, why="the first + the latest frame")
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

    Parameters: ``theta`` (θ) int ≥ 1; ``top_k`` int ≥ 1. Raises
    :class:`~sdk.errors.ParameterError`.
    """

    name = "rde"
    requires = ("sam_key", "sam_value")

    def __init__(self, theta: int = 3, top_k: int = 40):
        self.theta = integer(self.name, "theta", theta, 1)
        self.top_k = integer(self.name, "top_k", top_k, 1)

    def capacity(self) -> int:
        return 4

    def on_frame(self, t, table, given, scores=None):
        if t == 0:
            return Write(slots=(2, 3))
        if not (given or t % self.theta == 0):
            return None
        return Write(slots=(1,), fold=(0 if table[0] >= 0 else 2, 0))


LIFE0 = 1e-7   # XMem's life count of a new memory element (kv_memory_store.add): its usage starts at 0 / 1e-7 = 0


class XMem(MemoryPolicy):
    """XMem's memory manager (Cheng & Schwing, "XMem: Long-Term Video Object Segmentation with an
    Atkinson-Shiffrin Memory Model", ECCV 2022, §3, "Multi-Store Memory": "Working Memory",
    "Long-Term Memory"; facts read from the authors' ``hkchengrex/XMem``, ``inference/
    memory_manager.py``, ``inference/kv_memory_store.py``, ``inference/inference_core.py``,
    ``model/memory_util.py``, ``eval.py`` defaults).

    **Working memory**: ``max_frames`` (T_max) frame slots; slot 0 holds the first frame, never
    removed. A frame is written when ``k`` (XMem's ``mem_every``, r) frames have passed since the
    last write (t − last ≥ k, ``inference_core.py``: the counter restarts at every write) or when
    it has a user-given mask. Frame t is read out before it is written, so XMem's "not the last
    frame" rule changes nothing here.

    **Usage** (``kv_memory_store.update_usage`` / ``get_usage``): every readout adds each
    position's usage (``on_readout``) to its count and 1 to the life of every position; usage =
    count / life, a new element (frame write or prototype) starting at count 0, life 1e-7. XMem
    sums the top-k *softmax weights* of each element (``memory_util.do_softmax(...,
    return_usage=True)``); the readout graph returns the *number* of query positions having it
    in their top-k (``docs/graph-contract.md``), which is used instead. Long-term usage is
    always counted (XMem's ``eval.py`` switches it off for videos too short to fill the
    long-term memory, where it is never read).

    **Consolidation** (``memory_manager.add_memory`` / ``compress_features`` /
    ``consolidation``): when a write brings the working memory to T_max frames, the candidates —
    every working frame but the first and the newest ``min_frames`` − 1 (T_min − 1), i.e. the
    T_max − T_min oldest others, ``candidates`` in frame order — give P = min(``num_prototypes``,
    C) prototypes: the candidates with the highest usage (ties → the older frame, then the lower
    position), whose keys are the prototypes' keys ("prototype selection"). Each prototype's
    value is the softmax-weighted readout of the candidates' values with the prototype's key as
    the query, over all C candidates, no top-k ("memory potentiation", XMem's
    ``do_softmax(similarity)`` with ``top_k=None``): the Segmenter runs it through the export's
    own readout graph (:class:`Consolidate`), with the export's affinity (STCN's L2 or STM's
    dot product). The candidates then leave working memory, which keeps T_min frames.

    **Long-term memory**: ``long_term_elements`` (L_max) positions after the working slots,
    each holding one prototype (origin: the frame its key came from). Before a consolidation,
    if it holds ≥ L_max − ``num_prototypes`` elements, the n = held − (L_max −
    ``num_prototypes``) least used are removed, and with them every element whose usage equals
    the n-th smallest (``remove_obsolete_features``: ``usage > values[-1]`` survives); the
    prototypes fill the lowest empty positions. Readouts read the first frame, the working
    memory and the long-term memory together (one top-k softmax over all, as
    ``match_memory``). Bank bytes: T_max·hw + L_max positions, allocated at the first frame,
    the same for any video length.

    Left out, as they need XMem's network: the sensory memory (GRU hidden state, §3
    "Sensory memory"), the shrinkage s and selection e terms of the anisotropic L2 affinity
    ("Memory reading"), which also weigh the potentiation (the prototypes' shrinkage is not
    read out), and object groups (objects that appear mid-video have zero values in older
    positions, as in the rest of the sdk, rather than a memory of their own length).

    Per-object memory keys (STM/QDMN exports, ``memory_keys = per_object``): one usage for all
    objects (the readout's usage sums them); prototype keys are per object (the selected
    candidates' keys of each object) and each object's values are potentiated with its own keys.

    Parameters: ``k`` int ≥ 1 (5); ``min_frames`` (T_min) int ≥ 1 (5; 1 = only the first frame
    stays in working memory after a consolidation); ``max_frames`` (T_max) int > ``min_frames``
    (10; at least one candidate frame per consolidation); ``num_prototypes`` (P) int ≥ 1
    (128); ``long_term_elements`` (L_max) int ≥ ``num_prototypes`` (10 000; room for one
    consolidation). A pair out of order blames the parameter that differs from its default
    (``max_frames`` first, then ``long_term_elements``), which is one the caller gave. Raises
    :class:`~sdk.errors.ParameterError`.
    """

    name = "xmem"

    def __init__(self, k: int = 5, min_frames: int = 5, max_frames: int = 10, num_prototypes: int = 128,
                 long_term_elements: int = 10_000):
        self.k = integer(self.name, "k", k, 1, why="XMem's mem_every")
        self.min_frames = integer(self.name, "min_frames", min_frames, 1, why="T_min, the first frame included")
        self.max_frames = integer(self.name, "max_frames", max_frames, 2, why="T_max, the first frame included")
        self.num_prototypes = integer(self.name, "num_prototypes", num_prototypes, 1)
        self.long_term_elements = integer(self.name, "long_term_elements", long_term_elements, 1)
        if self.max_frames <= self.min_frames:
            if self.max_frames != 10:
                raise refuse(self.name, "max_frames", max_frames, f"an int > min_frames = {self.min_frames} "
                             "(T_max > T_min: consolidation turns T_max − T_min working frames into prototypes)")
            raise refuse(self.name, "min_frames", min_frames, f"an int in [1, {self.max_frames - 1}] "
                         f"(T_min < max_frames = T_max = {self.max_frames})")
        if self.long_term_elements < self.num_prototypes:
            if self.long_term_elements != 10_000:
                raise refuse(self.name, "long_term_elements", long_term_elements,
                             f"an int ≥ num_prototypes = {self.num_prototypes} (room for one consolidation)")
            raise refuse(self.name, "num_prototypes", num_prototypes,
                         f"an int in [1, {self.long_term_elements}] (≤ long_term_elements)")
        self.hw = 0                                           # positions per frame slot (set at t = 0)
        self.count = np.zeros(0)                              # position → summed readout usage
        self.life = np.zeros(0)                               # position → readouts since written (+ 1e-7)
        self._last = 0                                        # frame of the last write

    def capacity(self) -> int:
        return self.max_frames

    def feature_positions(self) -> int:
        return self.long_term_elements

    def usage(self) -> np.ndarray:
        """float64 [positions]: XMem's normalised usage count / life of every policy position
        (meaningless at empty ones)."""
        return self.count / self.life

    def on_readout(self, t, usage):
        self.count += usage
        self.life += 1

    def _fresh(self, positions) -> None:
        self.count[positions] = 0
        self.life[positions] = LIFE0

    def on_frame(self, t, table, given, scores=None):
        if t == 0:                                            # table: slots × hw + long-term positions
            self.hw = (len(table) - self.long_term_elements) // self.max_frames
            self.count, self.life = np.zeros(len(table)), np.full(len(table), LIFE0)
            self._last = 0
            return 0
        if not (given or t - self._last >= self.k):
            return None
        self._last = t
        hw, slots = self.hw, self.max_frames
        frames = table[:slots * hw:hw].copy()
        slot = int(np.flatnonzero(frames < 0)[0])            # free: consolidation leaves T_min < T_max
        self._fresh(slice(slot * hw, (slot + 1) * hw))
        frames[slot] = t
        held = np.flatnonzero(frames >= 0)
        if len(held) < slots:
            return slot
        order = held[np.argsort(frames[held], kind="stable")]                 # oldest first: the first frame
        chosen_slots = order[1:slots - self.min_frames + 1]
        candidates = (chosen_slots[:, None] * hw + np.arange(hw)).ravel()
        usage = self.usage()[candidates]
        p = min(self.num_prototypes, len(candidates))
        prototypes = np.lexsort((np.arange(len(candidates)), -usage))[:p]    # most used; ties → older, lower
        base, long_term = slots * hw, table[slots * hw:]
        stored = np.flatnonzero(long_term >= 0)
        excess = len(stored) - (self.long_term_elements - self.num_prototypes)
        evict = np.zeros(0, np.int64)
        if excess > 0:
            lt_usage = self.usage()[base + stored]
            threshold = np.partition(lt_usage, excess - 1)[excess - 1]
            evict = base + stored[lt_usage <= threshold]
        free = long_term < 0
        free[evict - base] = True
        targets = base + np.flatnonzero(free)[:p]
        self._fresh(candidates)
        self._fresh(targets)
        return Write(slots=(slot,), consolidate=Consolidate(candidates.astype(np.int64), prototypes.astype(np.int64),
                                                            targets.astype(np.int64), evict.astype(np.int64)))


class SAM2Window(MemoryPolicy):
    """SAM 2's memory bank (Ravi et al., "SAM 2: Segment Anything in Images and Videos", 2024,
    §4 "Model", "Memory bank"; ``facebookresearch/sam2``, ``sam2/modeling/sam2_base.py``
    ``_prepare_memory_conditioned_features``: ``num_maskmem = 7`` = 1 + 6 previous frames).

    Every frame is written. Frames with a user-given mask are *conditioning* frames, kept in
    ``max_conditioning`` slots (slot 0: the first frame, never removed). The other frames go to
    a FIFO of ``num_recent`` (N) slots holding the non-conditioning frames among the N frames
    before the next one, t − N + 1 … t after frame t's write, as SAM 2 reads frame t + 1's
    memory (the previous N frames, a conditioning frame among them read once, as a conditioning
    frame): a frame older than that leaves the FIFO even if a slot is free.

    SAM 2 attends to every conditioning frame by default (``max_cond_frames_in_attn = −1``);
    here they are bounded, for a constant bank: when a conditioning frame comes and the
    ``max_conditioning`` slots are full, the oldest conditioning frame other than the first
    leaves (with ``max_conditioning = 1`` the new one is written as a recent frame). SAM 2's
    own bound keeps the temporally closest ones, which for online tracking are the most recent
    but not necessarily the first. Default 4: DAVIS-style videos have one conditioning frame,
    YouTube-VOS-style ones a few more (objects that appear later come with their mask), and
    every slot costs readout time even when empty (a bounded bank is read over its whole
    capacity). Left out, as they need SAM 2's network: the temporal position encodings of the
    memories, object pointers and occlusion scores; the temporal stride r is 1 (SAM 2's default
    ``memory_temporal_stride_for_eval``). A conditioning frame that has left its slot is not
    read as a recent frame either (SAM 2 reads an unselected conditioning frame inside the
    window as a recent one). With ``quality_gate``, a frame the gate refuses is not seen by the
    policy: the FIFO then moves on at the next written frame, keeping the older frames until then.

    Parameters: ``num_recent`` (N) int ≥ 1 (6, SAM 2's); ``max_conditioning`` int ≥ 1 (4, the
    first frame included). Bank: ``max_conditioning`` + ``num_recent`` frame slots. Raises
    :class:`~sdk.errors.ParameterError`.
    """

    name = "sam2_window"

    def __init__(self, num_recent: int = 6, max_conditioning: int = 4):
        self.num_recent = integer(self.name, "num_recent", num_recent, 1, why="SAM 2: 6")
        self.max_conditioning = integer(self.name, "max_conditioning", max_conditioning, 1,
                                        why="conditioning frames kept, the first included")

    def capacity(self) -> int:
        return self.max_conditioning + self.num_recent

    def on_frame(self, t, table, given, scores=None):
        if t == 0:
            return 0
        c = self.max_conditioning
        recent = table[c:]
        stale = [c + int(s) for s in np.flatnonzero((recent >= 0) & (recent < t - self.num_recent + 1))]
        if given and c > 1:
            kept = table[1:c]
            empty = np.flatnonzero(kept < 0)
            slot = 1 + int(empty[0] if empty.size else np.argmin(kept))
        else:
            empty = np.flatnonzero(recent < 0)
            if stale:                                         # the oldest stale slot takes the frame
                slot = min(stale, key=lambda s: table[s])
                stale.remove(slot)
            else:                                             # a window not yet full, or with a given frame
                slot = c + int(empty[0])
        return Write(slots=(slot,), clear=tuple(stale)) if stale else slot


class QualityGate(MemoryPolicy):
    """QAM as a plug-in (QDMN §5.2, Tables 3–4): wraps ``inner`` so that a frame t > 0 without
    a user-given mask is offered to it only if its normalised score S̄A_t (:class:`Quality`) ≥
    ``sigma``; frames below σ are not written and ``inner`` never sees them.

    ``sigma`` (``quality_gate`` of :func:`make_policy`): finite number in [0, 1] (QDMN §5.2 uses
    0.8); else :class:`~sdk.errors.ParameterError` naming the inner policy."""

    def __init__(self, inner: MemoryPolicy, sigma: float):
        self.inner, self.sigma = inner, number(inner.name, "quality_gate", sigma, 0, 1, why=SIGMA_WHY)
        self.name, self.growable, self.per_feature, self.top_k = (
            inner.name, inner.growable, inner.per_feature, inner.top_k)
        self.requires = tuple(dict.fromkeys((*inner.requires, "qam")))
        self.quality = Quality()

    def capacity(self) -> int:
        return self.inner.capacity()

    def feature_positions(self) -> int:
        return self.inner.feature_positions()

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


POLICIES = {cls.name: cls for cls in (EveryK, FirstLatest, QDMN, LFU, QPM, RDE, XMem, SAM2Window)}


def make_policy(method: str, **params) -> MemoryPolicy:
    """Instantiate the policy called ``method`` with ``params``; ``quality_gate=σ`` (any
    policy; a float in [0, 1], None = no gate) wraps it in a :class:`QualityGate`.

    Every value is type- and range-checked by the policy (:mod:`sdk.params`; each class says
    its parameters' types and ranges). Raises :class:`~sdk.errors.ParameterError` (an
    :class:`~sdk.errors.InputError`) for an unknown method (listing the known ones), a
    parameter the policy does not take (listing those it takes) or a value of the wrong type
    or out of its range (naming the policy, the parameter, the value, its type and the range).
    """
    if not isinstance(method, str) or method not in POLICIES:
        raise parameter_error(f"unknown memory policy {shown(method)}"
                              f"{'' if isinstance(method, str) else f' ({type(method).__name__})'}; "
                              f"known: {', '.join(POLICIES)}", "make_policy", "method", method)
    cls = POLICIES[method]
    accepted = [*inspect.signature(cls).parameters, "quality_gate"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise parameter_error(f"policy {method!r} takes no parameter {', '.join(unknown)}; "
                              f"it takes: {', '.join(accepted)}", method, unknown[0], params[unknown[0]])
    gate = params.pop("quality_gate", None)
    policy = cls(**params)
    return policy if gate is None else QualityGate(policy, gate)
