"""Memory policies (DESIGN.md, "Memory policies"): the papers' (STM/STCN every-k, first +
latest, QDMN, LFU, QPM, RDE-VOS), the QAM gate, and the registry :data:`POLICIES` with
:func:`make_policy`, which also holds the peers' managers (:mod:`sdk.peer_policies`). The
protocol a policy follows is documented in :mod:`sdk.policy_protocol`, whose names are
re-exported here.
"""
from __future__ import annotations

import inspect

import numpy as np

from .params import choice, integer, number, parameter_error, shown
from .peer_policies import LIFE0, SAM2Window, XMem
from .policy_protocol import SIGMA_WHY, Consolidate, MemoryPolicy, Quality, Write

__all__ = ["LIFE0", "SIGMA_WHY", "Consolidate", "MemoryPolicy", "Quality", "Write", "EveryK", "FirstLatest", "QDMN",
           "LFU", "QPM", "RDE", "XMem", "SAM2Window", "QualityGate", "POLICIES", "make_policy"]


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

    def remove_object(self, index):
        """S̄A_1 without the object (:meth:`Quality.remove`); the memory frames' scores S̄A_k
        stay as they were computed (their frames' quality when admitted)."""
        self.quality.remove(index)


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

    def remove_object(self, index):
        """S̄A_1 and the previous frame's S̄A (the prior's choice, Eq. 4) without the object
        (:meth:`Quality.remove`); with no other object in that frame the choice stays."""
        previous = self.quality.remove(index)
        if previous is not None:
            self._previous = previous


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

    def remove_object(self, index):
        self.quality.remove(index)
        self.inner.remove_object(index)


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
