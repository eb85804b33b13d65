"""The memory bank: preallocated key/value arrays that the readout graph reads in place.

It *holds* tensors; a :class:`~sdk.policies.MemoryPolicy` *decides* where a frame goes (the
split of Cutie's KVMemoryStore / MemoryManager). Memory is addressed in frame slots of hw = h·w
stride-16 feature positions each (slot s covers positions [s·hw, (s+1)·hw)) or, for
feature-level policies (LFU), position by position. A bounded bank may also hold ``features``
positions after its slots, addressed one by one (XMem's long-term memory of prototypes).

Two options follow the network's authors (manifest ``inference``): keys per object
(``object_keys``: STM/QDMN memory keys come from the value encoder, one per object) and a
temporary slot (``temporary``: the previous frame, read when the policy did not write it, QDMN).
The temporary slot is the bank's physical slot 0; policies never see it: their slot s is
physical slot s + 1, their position p physical position p + hw.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .policy_protocol import Consolidate, Write

_MOVE_FLOATS = 1 << 20   # floats per block moved when a growable bank lengthens its rows (4 MiB temporaries)


class MemoryBank:
    """Keys, values, validity and per-position frame indices over ``capacity`` frame slots.

    Public arrays (C-contiguous views of buffers allocated by :meth:`allocate` at the first
    frame), M = live slots × hw memory positions:

    * ``keys``   [C_k, M]     float32  memory keys (key encoder output, flattened), or
      [N, C_k, M] with ``object_keys`` (one key per object, from the value encoder)
    * ``values`` [N, C_v, M]  float32  memory values, one row per object
    * ``valid``  [M]          float32  1 where the position holds a feature, 0 where empty
    * ``origin`` [M]          int64    frame index each position was written at, −1 = empty

    They are fed to the readout graph as they are (``keys[None]``, ``values``, ``valid``: no
    per-frame copy or concatenation). A **bounded** bank is live over its whole capacity: the
    arrays are the same objects for the whole video and empty slots are masked by ``valid``. A
    **growable** bank (unbounded policies: every-k, QPM) is live over its written prefix only
    (1 + the highest slot written), so the readout never computes over never-written slots; a
    write past the prefix lengthens every row in place inside the buffer (one memmove of the
    bank per new slot, no reallocation) and a write past the capacity doubles the buffers.
    The buffers are reallocated otherwise only by :meth:`add_objects` (objects that appear
    mid-video) when they hold no spare object rows: :meth:`remove_object` frees an object's rows
    without shrinking the buffers (:attr:`bank_bytes` unchanged), and a later object takes them.

    These arrays cover every physical slot, the temporary one included (what the readout
    reads), then the ``features`` positions of :meth:`allocate` (bounded banks only), so M =
    live slots × hw + features. Policies decide from :attr:`frames` / :attr:`positions` and
    address slots and positions through :meth:`apply`, which leave the temporary slot out.
    """

    def __init__(self, key_channels: int, value_channels: int, growable: bool = False,
                 object_keys: bool = False, temporary: bool = False):
        self.key_channels = key_channels
        self.value_channels = value_channels
        self.growable = growable
        self.object_keys = object_keys
        self.temporary = temporary
        self.offset = 1 if temporary else 0          # physical slots before the policy's slot 0
        self.hw = 0
        self.features = 0                            # positions after the slots (allocate)
        self._k = np.zeros(0, np.float32)
        self._v = np.zeros(0, np.float32)
        self._valid = np.zeros(0, np.float32)
        self._origin = np.zeros(0, np.int64)
        self._objects = 0
        self._rows = 0                               # object rows the buffers hold (≥ _objects)
        self._live = 0
        self._views()

    def allocate(self, capacity: int, hw: int, num_objects: int, features: int = 0) -> None:
        """Allocate empty buffers for ``capacity`` policy frame slots (+ the temporary one) of
        ``hw`` positions, then ``features`` positions addressed one by one
        (:meth:`~sdk.policies.MemoryPolicy.feature_positions`), and ``num_objects`` objects; a
        bounded bank is then live over all of them, a growable one over the temporary slot
        only. Raises ValueError for ``features`` > 0 in a growable bank (its rows lengthen by
        slots), MemoryError when the buffers cannot be allocated (sizes beyond memory or the
        address space); the bank is then unchanged."""
        if features and self.growable:
            raise ValueError("a growable memory bank holds frame slots only (features must be 0)")
        slots = capacity + self.offset
        p = slots * hw + features
        key_rows = self.key_channels * (num_objects if self.object_keys else 1)
        try:                                         # numpy refuses sizes beyond the address space otherwise
            k = np.zeros(key_rows * p, np.float32)
            v = np.zeros(num_objects * self.value_channels * p, np.float32)
            valid, origin = np.zeros(p, np.float32), np.full(p, -1, np.int64)
        except (MemoryError, ValueError, OverflowError) as error:
            raise MemoryError(f"a memory bank of {p} positions ({slots} slots of {hw} + {features}) "
                              f"does not fit in memory: {error}") from error
        self.hw, self._objects, self._rows, self.features = hw, num_objects, num_objects, features
        self._k, self._v, self._valid, self._origin = k, v, valid, origin
        self._live = self.offset if self.growable else slots
        self._views()

    @property
    def _key_rows(self) -> int:
        return self.key_channels * (self._objects if self.object_keys else 1)

    def _views(self) -> None:
        m = self._live * self.hw + self.features
        keys = self._k[:self._key_rows * m]
        self.keys = (keys.reshape(self._objects, self.key_channels, m) if self.object_keys
                     else keys.reshape(self.key_channels, m))
        self._values_view()
        self.valid = self._valid[:m]
        self.origin = self._origin[:m]

    def _values_view(self) -> None:
        m = self._live * self.hw + self.features
        self.values = self._v[:self._objects * self.value_channels * m].reshape(
            self._objects, self.value_channels, m)

    @property
    def readout_keys(self) -> np.ndarray:
        """The keys as the readout graph takes them: [1, C_k, M], or [N, C_k, M] per object."""
        return self.keys if self.object_keys else self.keys[None]

    @property
    def capacity(self) -> int:
        """Policy frame slots the buffers hold (live or not; the temporary slot and the
        feature positions not counted)."""
        return (len(self._origin) - self.features) // self.hw - self.offset if self.hw else 0

    @property
    def positions(self) -> np.ndarray:
        """int64 [policy positions] view of :attr:`origin` without the temporary slot: the
        per-position table feature-level policies decide from (slot s at [s·hw, (s+1)·hw),
        then the ``features`` positions)."""
        return self.origin[self.offset * self.hw:]

    @property
    def frames(self) -> np.ndarray:
        """int64 [live policy slots] view: frame index written into each slot (its first
        position), −1 = empty. The slot table frame-level policies decide from."""
        return self.positions[:len(self.positions) - self.features:self.hw] if self.hw else self.origin

    def policy_usage(self, usage: np.ndarray) -> np.ndarray:
        """The readout's usage [M] without the temporary slot's positions."""
        return usage[self.offset * self.hw:]

    @property
    def num_objects(self) -> int:
        return self._objects

    @property
    def num_valid(self) -> int:
        """Number of occupied memory positions."""
        return int(np.count_nonzero(self.origin >= 0))

    @property
    def bank_bytes(self) -> int:
        """Bytes held by the buffers (keys + values + valid + origin), live or not."""
        return self._k.nbytes + self._v.nbytes + self._valid.nbytes + self._origin.nbytes

    @property
    def memory_frames(self) -> list[int]:
        """Frame indices with at least one feature in memory, ascending."""
        return np.unique(self.origin[self.origin >= 0]).tolist()

    def slot(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """Views (key [C_k, hw] or [N, C_k, hw], value [N, C_v, hw]) of policy slot ``slot``."""
        span = slice((slot + self.offset) * self.hw, (slot + self.offset + 1) * self.hw)
        return self.keys[..., span], self.values[:, :, span]

    def add_objects(self, count: int) -> None:
        """Append ``count`` object rows to ``values`` (and to per-object ``keys``): zeros, no
        older frame holds them. Rows freed by :meth:`remove_object` are reused in place (only
        rows past the live objects are written, so a :meth:`snapshot` stays good); without
        enough of them the buffers are reallocated for exactly the objects held."""
        if self._objects + count <= self._rows:      # spare rows: constant memory
            old = self._objects
            self._objects += count
            self._views()
            self.values[old:] = 0
            if self.object_keys:
                self.keys[old:] = 0
            return
        old_v, old_k = self.values, self.keys
        self._objects += count
        self._rows = self._objects
        self._v = np.zeros(self._objects * self.value_channels * len(self._origin), np.float32)
        self._values_view()
        self.values[:len(old_v)] = old_v
        if self.object_keys:                         # the keys of a bounded shared-key bank stay put
            self._k = np.zeros(self._key_rows * len(self._origin), np.float32)
            self._views()
            self.keys[:len(old_k)] = old_k

    def remove_object(self, index: int) -> None:
        """Forget object ``index`` (0 ≤ index < :attr:`num_objects`): its value rows (and its
        per-object keys) leave ``values`` (``keys``), the objects after it move down one row.
        In place: the buffers keep their size (:attr:`bank_bytes` unchanged), the freed rows
        wait for :meth:`add_objects`; shared keys, ``valid`` and ``origin`` are untouched (the
        frames stay in memory for the other objects). Raises IndexError for an index out of
        range, the bank unchanged. Changes the buffers in place (a :meth:`snapshot` taken
        before does not undo it)."""
        if not 0 <= index < self._objects:
            raise IndexError(f"object {index} outside the bank's {self._objects} objects")
        arrays = (self.values, self.keys) if self.object_keys else (self.values,)
        for rows in arrays:                          # row by row: no temporary of the bank's size
            for i in range(index, self._objects - 1):
                rows[i] = rows[i + 1]
        self._objects -= 1
        self._views()

    def write(self, target: int | np.ndarray, key: np.ndarray, value: np.ndarray, frame: int) -> None:
        """Write frame ``frame``'s features into policy slot or positions ``target``,
        overwriting what was there.

        target: a frame slot (int; position i of the frame → position slot·hw + i) or int
        positions [hw] (feature i → position ``target[i]``, distinct, < M). key [C_k, hw]
        (or [N, C_k, hw] with ``object_keys``) float32, value [N, C_v, hw] float32 with N =
        :attr:`num_objects`. A growable bank extends its live prefix (and buffers) to reach a
        slot past it. Raises IndexError for a slot outside a bounded bank or a position outside
        the live positions.
        """
        if isinstance(target, (int, np.integer)):
            physical = int(target) + self.offset
            if physical >= self._live:
                if not self.growable:
                    raise IndexError(f"slot {target} outside a bounded bank of {self.capacity} slots")
                self._extend(physical + 1)
            target = slice(physical * self.hw, (physical + 1) * self.hw)
        else:
            if len(target) and (target.min() < 0 or target.max() >= len(self.positions)):
                raise IndexError(f"positions outside the bank's {len(self.positions)} live positions")
            target = target + self.offset * self.hw
        self._put(target, key, value, frame)

    def _put(self, target, key, value, frame) -> None:
        self.keys[..., target] = key
        self.values[:, :, target] = value
        self.valid[target] = 1
        self.origin[target] = frame

    def write_temporary(self, key: np.ndarray, value: np.ndarray, frame: int) -> None:
        """Frame ``frame``'s key [C_k, hw] (or [N, C_k, hw] with ``object_keys``) and value
        [N, C_v, hw] float32 into the temporary slot, read by the next readouts until it is
        cleared or replaced (QDMN's previous-frame memory). Raises RuntimeError for a bank
        without one."""
        if not self.temporary:
            raise RuntimeError("this memory bank has no temporary slot")
        self._put(slice(0, self.hw), key, value, frame)

    def clear_temporary(self) -> None:
        """Empty the temporary slot (no-op without one)."""
        if self.temporary and self.hw:
            self.valid[:self.hw] = 0
            self.origin[:self.hw] = -1

    def clear(self, target: int | np.ndarray) -> None:
        """Empty policy slot ``target`` (int) or policy positions ``target`` (int [K]): valid 0,
        origin −1 (the keys and values stay, masked by ``valid``)."""
        if isinstance(target, (int, np.integer)):
            start = (int(target) + self.offset) * self.hw
            target = slice(start, start + self.hw)
        else:
            target = np.asarray(target, np.int64) + self.offset * self.hw
        self.valid[target] = 0
        self.origin[target] = -1

    def apply(self, decision: int | np.ndarray | Write | None, key: np.ndarray, value: np.ndarray,
              frame: int, sam: Callable | None = None, potentiate: Callable | None = None) -> None:
        """Carry out a policy's decision (:meth:`~sdk.policies.MemoryPolicy.on_frame`) for frame
        ``frame`` with key [C_k, hw] (or [N, C_k, hw] with ``object_keys``) and value
        [N, C_v, hw]: nothing (None), :meth:`write` (a slot or positions), or a
        :class:`~sdk.policies.Write`, in this order:

        1. what the graphs compute, before anything is written (so that a graph that raises
           leaves the bank as it was): its ``fold``, slot ``dst`` ← ``sam(key_src [C_k,hw],
           value_src [N,C_v,hw], key, value)`` → (key, value) of slot ``src`` and the frame (RDE
           Eq. 4–6); its ``consolidate`` (:class:`~sdk.policies.Consolidate`, XMem "Long-term memory"): the
           candidates' keys [C_k, C] (or [N, C_k, C]) and values [N, C_v, C] as they will be
           after the frame's write (a candidate in one of the frame's slots is the frame's
           feature), prototype keys = the candidates' keys at ``prototypes``, prototype values
           = ``potentiate(prototype keys [C_k, P] (or [N, C_k, P]), candidate keys, candidate
           values)`` → [N, C_v, P];
        2. the slots of ``clear`` are emptied, the fold is written, the frame goes into each of
           ``slots``;
        3. consolidation: ``evict`` and the candidates are emptied, then prototype i goes to
           position ``targets[i]`` (origin: the frame its key came from).
        """
        if decision is None:
            return
        if not isinstance(decision, Write):
            self.write(decision, key, value, frame)
            return
        folded = prototypes = None
        if decision.fold is not None:
            folded = sam(*self.slot(decision.fold[0]), key, value)
        if decision.consolidate is not None:
            prototypes = self._prototypes(decision.consolidate, decision.slots, key, value, frame, potentiate)
        for slot in decision.clear:
            self.clear(slot)
        if folded is not None:
            self.write(decision.fold[1], *folded, frame)
        for slot in decision.slots:
            self.write(slot, key, value, frame)
        if prototypes is not None:
            c = decision.consolidate
            self.clear(c.evict)
            self.clear(c.candidates)
            target = c.targets + self.offset * self.hw
            self.keys[..., target], self.values[:, :, target] = prototypes[:2]
            self.valid[target] = 1
            self.origin[target] = prototypes[2]

    def _prototypes(self, c: Consolidate, slots: tuple[int, ...], key: np.ndarray, value: np.ndarray, frame: int,
                    potentiate: Callable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Consolidation's prototypes (keys [C_k,P] or [N,C_k,P], values [N,C_v,P], origins
        int64 [P]) from the candidates as they are after the frame's write into ``slots``
        (gathered copies; nothing in the bank changes). Raises IndexError for a candidate or
        target outside the policy positions."""
        for name in ("candidates", "targets", "evict"):
            positions = getattr(c, name)
            if len(positions) and (positions.min() < 0 or positions.max() >= len(self.positions)):
                raise IndexError(f"consolidation {name} outside the bank's {len(self.positions)} positions")
        physical = c.candidates + self.offset * self.hw
        keys, values = self.keys[..., physical], self.values[:, :, physical]     # copies (fancy indexing)
        origin = self.origin[physical]
        for slot in slots:                               # candidates the frame's write replaces
            inside = c.candidates // self.hw == slot
            if inside.any():
                within = c.candidates[inside] - slot * self.hw
                keys[..., inside], values[:, :, inside], origin[inside] = key[..., within], value[:, :, within], frame
        prototype_keys = keys[..., c.prototypes]
        return prototype_keys, potentiate(prototype_keys, keys, values), origin[c.prototypes]

    def snapshot(self) -> dict:
        """The bank's state for :meth:`restore` (its attributes; the buffers by reference, not
        copied). Good until the next write: :meth:`allocate` and :meth:`add_objects` replace the
        buffers (or write only rows past the live objects), :meth:`write`,
        :meth:`write_temporary`, :meth:`clear_temporary`, :meth:`clear`, :meth:`apply` and
        :meth:`remove_object` change them in place."""
        return dict(vars(self))

    def restore(self, snapshot: dict) -> None:
        """Go back to a :meth:`snapshot` taken since the last write (undoes :meth:`allocate`
        and :meth:`add_objects`)."""
        vars(self).clear()
        vars(self).update(snapshot)

    def _extend(self, live: int) -> None:
        """Make the first ``live`` slots live: rows of keys/values lengthen from old·hw to
        live·hw positions (moved in place, or into doubled buffers when they do not fit)."""
        old, new = self._live * self.hw, live * self.hw
        rows_k, rows_v = self._key_rows, self._objects * self.value_channels
        slots = len(self._origin) // self.hw
        if live > slots:                             # the spare object rows stay (constant bytes per object)
            size = max(2 * slots, live) * self.hw
            held_k = self.key_channels * (self._rows if self.object_keys else 1)
            held_v = self._rows * self.value_channels
            grown = [np.zeros(held_k * size, np.float32), np.zeros(held_v * size, np.float32),
                     np.zeros(size, np.float32), np.full(size, -1, np.int64)]
            for buf, src, rows in zip(grown, (self._k, self._v), (rows_k, rows_v)):
                buf[:rows * new].reshape(rows, new)[:, :old] = src[:rows * old].reshape(rows, old)
            grown[2][:old], grown[3][:old] = self.valid, self.origin
            self._k, self._v, self._valid, self._origin = grown
        else:
            _lengthen_rows(self._k, rows_k, old, new)
            _lengthen_rows(self._v, rows_v, old, new)
        self._live = live
        self._views()


def _lengthen_rows(flat: np.ndarray, rows: int, old: int, new: int) -> None:
    """In place: ``rows`` rows of ``old`` floats packed at the start of ``flat`` become rows of
    ``new`` ≥ old floats (new columns zeroed). Blocks move last row first, so a block's
    destination (≥ start·new) never covers a source row still to move (< start·old)."""
    dst = flat[:rows * new].reshape(rows, new)
    block = max(1, _MOVE_FLOATS // max(old, 1))
    for stop in range(rows, 0, -block):
        start = max(0, stop - block)
        dst[start:stop, :old] = flat[start * old:stop * old].reshape(stop - start, old)
    dst[:, old:] = 0
