"""The memory bank: preallocated key/value arrays that the readout graph reads in place.

It *holds* tensors; a :class:`~sdk.policies.MemoryPolicy` *decides* which slot a frame goes
to (the split of Cutie's KVMemoryStore / MemoryManager). Memory is addressed in slots of one
frame each; slot s covers memory positions [s·hw, (s+1)·hw) with hw = h·w the number of
stride-16 feature positions of a frame.
"""
from __future__ import annotations

import numpy as np


class MemoryBank:
    """Keys, values and a validity mask over ``capacity`` frame slots.

    Arrays (float32, C-contiguous, allocated by :meth:`allocate` at the first frame):

    * ``keys``   [C_k, capacity·hw]     memory keys (STCN key encoder output, flattened)
    * ``values`` [N, C_v, capacity·hw]  memory values, one row per object
    * ``valid``  [capacity·hw]          1 where the position belongs to an occupied slot
    * ``frames`` [capacity] int64       frame index held by each slot, −1 = empty

    They are fed to the readout graph as they are (``keys[None]``, ``values``, ``valid``: views,
    no per-frame concatenation); empty slots are masked by ``valid``. They are reallocated only
    (a) when :meth:`add_objects` appends value rows for objects that appear mid-video (their
    values in older memory frames are zero) and (b) when a growable bank (unbounded policies,
    every-k) is asked to write past its capacity, which doubles it (amortised O(1) per write).
    """

    def __init__(self, key_channels: int, value_channels: int, growable: bool = False):
        self.key_channels = key_channels
        self.value_channels = value_channels
        self.growable = growable
        self.hw = 0
        self.keys = np.zeros((key_channels, 0), np.float32)
        self.values = np.zeros((0, value_channels, 0), np.float32)
        self.valid = np.zeros(0, np.float32)
        self.frames = np.zeros(0, np.int64)

    def allocate(self, capacity: int, hw: int, num_objects: int) -> None:
        """Allocate zeroed arrays for ``capacity`` slots of ``hw`` positions and ``num_objects``."""
        self.hw = hw
        self.keys = np.zeros((self.key_channels, capacity * hw), np.float32)
        self.values = np.zeros((num_objects, self.value_channels, capacity * hw), np.float32)
        self.valid = np.zeros(capacity * hw, np.float32)
        self.frames = np.full(capacity, -1, np.int64)

    @property
    def capacity(self) -> int:
        """Number of frame slots currently allocated."""
        return len(self.frames)

    @property
    def num_objects(self) -> int:
        return self.values.shape[0]

    @property
    def num_valid(self) -> int:
        """Number of occupied memory positions (valid slots × hw)."""
        return int(np.count_nonzero(self.frames >= 0)) * self.hw

    @property
    def bank_bytes(self) -> int:
        """Bytes held by the preallocated arrays (keys + values + valid + frames)."""
        return self.keys.nbytes + self.values.nbytes + self.valid.nbytes + self.frames.nbytes

    @property
    def memory_frames(self) -> list[int]:
        """Frame indices held in memory, ascending."""
        return sorted(int(f) for f in self.frames if f >= 0)

    def add_objects(self, count: int) -> None:
        """Append ``count`` object rows to ``values`` (zeros: no older frame holds them)."""
        rows = np.zeros((count, self.value_channels, self.values.shape[2]), np.float32)
        self.values = np.concatenate([self.values, rows])

    def write(self, slot: int, key: np.ndarray, value: np.ndarray, frame: int) -> None:
        """Write one frame into ``slot`` (overwriting it), growing a growable bank if needed.

        key [C_k, hw] float32, value [N, C_v, hw] float32 with N = :attr:`num_objects`.
        Raises IndexError if ``slot`` is outside a bounded bank.
        """
        if slot >= self.capacity:
            if not self.growable:
                raise IndexError(f"slot {slot} outside a bounded bank of {self.capacity} slots")
            self._grow(max(2 * self.capacity, slot + 1))
        span = slice(slot * self.hw, (slot + 1) * self.hw)
        self.keys[:, span] = key
        self.values[:, :, span] = value
        self.valid[span] = 1
        self.frames[slot] = frame

    def _grow(self, capacity: int) -> None:
        used = self.keys.shape[1]
        old = (self.keys, self.values, self.valid, self.frames)
        self.allocate(capacity, self.hw, self.num_objects)
        self.keys[:, :used] = old[0]
        self.values[:, :, :used] = old[1]
        self.valid[:used] = old[2]
        self.frames[:len(old[3])] = old[3]
