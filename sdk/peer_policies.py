"""The peers' memory managers as policies (issue 16): XMem's working + long-term memory with
consolidation (:class:`XMem`) and SAM 2's window of conditioning and recent frames
(:class:`SAM2Window`), on the protocol of :mod:`sdk.policy_protocol`."""
from __future__ import annotations

import numpy as np

from .params import integer, refuse
from .policy_protocol import Consolidate, MemoryPolicy, Write

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

