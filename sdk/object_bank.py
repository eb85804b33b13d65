"""DMN-AOA's object memory bank (§3.2: "the key feature maps and the value feature maps of all
memory frames are stacked along the temporal axis"): the objects' DMN keys and values, one S×S
map per object per pixel-memory frame slot, preallocated like :class:`~sdk.bank.MemoryBank`.

It composes with the pixel bank rather than having its own schedule: after the pixel bank
carried out a policy's decision for frame t, :meth:`ObjectMemoryBank.sync` reads the pixel bank's
slot table (:attr:`~sdk.bank.MemoryBank.frames`) and writes frame t's object key/value into every
slot that now holds frame t, and empties every slot whose frame changed otherwise (a policy's
``Write.clear``). So every frame-slot policy (every_k, first_latest, QDMN, QPM, SAM 2's window,
the QAM gate on any of them) fills the object bank with its own schedule, unchanged, and a bounded
policy gives constant bytes for any video length. Feature-level policies (LFU, XMem's
consolidation) and RDE folds address positions, not frames: refused (:func:`check_policy`).

Arrays (views of buffers allocated at :meth:`allocate`; slots = the pixel bank's capacity, S² =
``roi_size``², M = slots·S²):

* ``keys``   [N, C/4, M] float32 — DMN memory keys (graph ``dmn_memory``'s ``key``, flattened)
* ``values`` [N, C, M]   float32 — DMN memory values
* ``valid``  [N, M]      float32 — 1 where the object has an entry (slot filled while the object
  existed), 0 elsewhere: an object added mid-video has none in slots written before it appeared
* ``origin`` [slots]     int64   — frame index each slot's entries come from, −1 = empty

They are fed to the ``dmn_template`` graph as they are.
"""
from __future__ import annotations

import numpy as np

from .bank import MemoryBank

# policies whose decisions are frame slots (sync mirrors them); the others address positions
FRAME_SLOT_POLICIES = ("every_k", "first_latest", "qdmn", "qpm", "sam2_window")


def check_policy(policy) -> None:
    """Raise ValueError unless ``policy`` (a :class:`~sdk.policies.MemoryPolicy`, possibly QAM-gated)
    decides whole frame slots, which the object bank can mirror."""
    name = getattr(policy, "name", type(policy).__name__)
    if getattr(policy, "per_feature", False) or policy.feature_positions() or "sam_key" in policy.requires:
        raise ValueError(f"the DMN-AOA object memory mirrors frame slots; policy {name!r} keeps features "
                         f"position by position or folds frames (choose one of {', '.join(FRAME_SLOT_POLICIES)})")


class ObjectMemoryBank:
    """Object keys/values over the frame slots of a pixel :class:`~sdk.bank.MemoryBank`.

    key_channels C/4 and value_channels C: the manifest's ``dmn.key_channels`` and
    ``dmn.channels``; roi_size S: ``dmn.roi_size``."""

    def __init__(self, key_channels: int, value_channels: int, roi_size: int):
        self.key_channels, self.value_channels = key_channels, value_channels
        self.area = roi_size * roi_size
        self._objects = self._rows = 0
        self._k = np.zeros((0, key_channels, 0), np.float32)
        self._v = np.zeros((0, value_channels, 0), np.float32)
        self._valid = np.zeros((0, 0), np.float32)
        self.origin = np.zeros(0, np.int64)
        self._views()

    def allocate(self, slots: int, num_objects: int) -> None:
        """Empty buffers for ``slots`` frame slots and ``num_objects`` objects. Raises
        MemoryError when they cannot be allocated (the bank unchanged)."""
        m = slots * self.area
        try:
            k = np.zeros((num_objects, self.key_channels, m), np.float32)
            v = np.zeros((num_objects, self.value_channels, m), np.float32)
            valid = np.zeros((num_objects, m), np.float32)
        except (MemoryError, ValueError) as error:
            raise MemoryError(f"an object memory of {slots} slots × {num_objects} objects does not fit "
                              f"in memory: {error}") from error
        self._k, self._v, self._valid = k, v, valid
        self.origin = np.full(slots, -1, np.int64)
        self._objects = self._rows = num_objects
        self._views()

    def _views(self) -> None:
        self.keys = self._k[:self._objects]
        self.values = self._v[:self._objects]
        self.valid = self._valid[:self._objects]

    @property
    def capacity(self) -> int:
        """Frame slots held."""
        return len(self.origin)

    @property
    def num_objects(self) -> int:
        return self._objects

    @property
    def bank_bytes(self) -> int:
        """Bytes held by the buffers (keys + values + valid + origin), used or not."""
        return self._k.nbytes + self._v.nbytes + self._valid.nbytes + self.origin.nbytes

    def _grow(self, slots: int) -> None:
        """More slots (a growable pixel bank doubled): entries copied, the new slots empty."""
        old, objects = self.capacity * self.area, self._objects
        k, v, valid, origin = self._k, self._v, self._valid, self.origin
        self.allocate(slots, self._rows)
        self._k[:, :, :old], self._v[:, :, :old], self._valid[:, :old] = k, v, valid
        self.origin[:len(origin)] = origin
        self._objects = objects
        self._views()

    def slots_to_write(self, bank: MemoryBank, t: int) -> np.ndarray:
        """Policy slots of ``bank`` that hold frame ``t`` (after its decision for frame t) — the
        slots :meth:`sync` writes; empty: no ``dmn_memory`` run is needed for frame t."""
        return np.flatnonzero(bank.frames == t)

    def sync(self, bank: MemoryBank, t: int, key: np.ndarray | None, value: np.ndarray | None) -> None:
        """Mirror ``bank``'s slot table after its decision for frame ``t``: every slot holding
        frame t gets ``key`` [N,C/4,S,S] and ``value`` [N,C,S,S] (the ``dmn_memory`` outputs of
        frame t, N = :attr:`num_objects`), every slot whose frame differs from this bank's
        ``origin`` otherwise is emptied. Grows with a growable pixel bank (never shrinks).
        Raises ValueError when a slot needs frame t's entries and none (or ones of the wrong
        shape) are given; the bank is then unchanged."""
        frames = bank.frames
        if bank.capacity > self.capacity:
            self._grow(bank.capacity)
        written = np.flatnonzero(frames == t)
        if written.size:
            want = ((self._objects, self.key_channels, self.area), (self._objects, self.value_channels, self.area))
            got = tuple(None if a is None else (a.shape[:2] + (int(np.prod(a.shape[2:])),) if a.ndim >= 3 else a.shape)
                        for a in (key, value))
            if got != want:
                raise ValueError(f"frame {t} went into slot(s) {written.tolist()}: its object keys [N, C/4, S, S] "
                                 f"and values [N, C, S, S] with (N, C/4, S²) = {want[0]}, (N, C, S²) = {want[1]} "
                                 f"are needed, got {None if key is None else key.shape} and "
                                 f"{None if value is None else value.shape}")
        live = np.full(self.capacity, -1, np.int64)
        live[:len(frames)] = frames
        for slot in np.flatnonzero((live != self.origin) & (live != t)):
            self.clear(int(slot))
        for slot in written:
            span = slice(slot * self.area, (slot + 1) * self.area)
            self.keys[:, :, span] = key.reshape(self._objects, self.key_channels, self.area)
            self.values[:, :, span] = value.reshape(self._objects, self.value_channels, self.area)
            self.valid[:, span] = 1
            self.origin[slot] = t

    def clear(self, slot: int) -> None:
        """Empty frame slot ``slot`` for every object."""
        self._valid[:, slot * self.area:(slot + 1) * self.area] = 0
        self.origin[slot] = -1

    def add_objects(self, count: int) -> None:
        """Append ``count`` objects with no entries (valid 0 in every slot); rows freed by
        :meth:`remove_object` are reused in place (constant bytes), else the buffers are
        reallocated for exactly the objects held."""
        if self._objects + count > self._rows:
            k, v, valid = self.keys.copy(), self.values.copy(), self.valid.copy()
            origin = self.origin.copy()
            self.allocate(self.capacity, self._objects + count)
            self._k[:len(k)], self._v[:len(v)], self._valid[:len(valid)] = k, v, valid
            self.origin[:] = origin
            return
        old = self._objects
        self._objects += count
        self._views()
        self.keys[old:], self.values[old:], self.valid[old:] = 0, 0, 0

    def remove_object(self, index: int) -> None:
        """Forget object ``index``: the objects after it move down one row, in place (bytes
        unchanged). Raises IndexError for an index outside 0..N−1 (bank unchanged)."""
        if not 0 <= index < self._objects:
            raise IndexError(f"object {index} outside the object memory's {self._objects} objects")
        for rows in (self._k, self._v, self._valid):
            for i in range(index, self._objects - 1):
                rows[i] = rows[i + 1]
        self._objects -= 1
        self._views()
