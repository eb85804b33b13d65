"""Memory policies: what a frame's memory write does (DESIGN.md, "Memory policies").

A policy *decides*; the :class:`~sdk.bank.MemoryBank` *holds* the tensors (Cutie's
MemoryManager / KVMemoryStore split). Policies see only small arrays (the frame index of each
slot, the readout usage), never the keys and values, so they are testable without ONNX.

Protocol, driven by :class:`~sdk.segmenter.Segmenter` for frame index t = 0, 1, …:

1. ``capacity()`` slots are preallocated at the first frame; ``growable`` banks may double.
2. After each readout, ``on_readout(t, usage)`` receives the top-k usage of every memory
   position (LFU-style policies count it; the baselines ignore it).
3. ``on_frame(t, frames, given)`` returns the slot the frame is written to (overwriting it;
   ``== len(frames)`` asks a growable bank to grow) or None (not written). ``frames`` is the
   bank's slot → frame index array (−1 = empty); ``given`` is True when the caller supplied a
   mask for this frame. The first frame (t = 0) must be written: it holds the only ground truth.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod

import numpy as np

from .errors import InputError


class MemoryPolicy(ABC):
    """Base class; subclasses set ``name`` and implement :meth:`capacity` and :meth:`on_frame`."""

    name = ""
    growable = False

    @abstractmethod
    def capacity(self) -> int:
        """Frame slots preallocated at the first frame."""

    def on_readout(self, t: int, usage: np.ndarray) -> None:
        """usage [capacity·hw] float32: query positions having each memory position in their top-k."""

    @abstractmethod
    def on_frame(self, t: int, frames: np.ndarray, given: bool) -> int | None:
        """Slot to write frame ``t`` into, or None to leave memory unchanged."""


class EveryK(MemoryPolicy):
    """STM/STCN baseline: write the first frame, every k-th frame (t mod k = 0) and every frame
    with a user-given mask.

    Unbounded by default: the bank starts at ``initial_slots`` and doubles when full. With
    ``max_frames`` the bank is preallocated at that many slots and, when full, the oldest slot
    other than the first frame's (slot 0) is overwritten (FIFO).
    """

    name = "every_k"

    def __init__(self, k: int = 5, max_frames: int | None = None, initial_slots: int = 8):
        if int(k) < 1:
            raise InputError(f"every_k: k must be ≥ 1, got {k}")
        if max_frames is not None and int(max_frames) < 2:
            raise InputError(f"every_k: max_frames must be ≥ 2 (first frame + one more), got {max_frames}")
        self.k = int(k)
        self.max_frames = None if max_frames is None else int(max_frames)
        self.initial_slots = int(initial_slots)
        self.growable = self.max_frames is None

    def capacity(self) -> int:
        return self.initial_slots if self.max_frames is None else self.max_frames

    def on_frame(self, t: int, frames: np.ndarray, given: bool) -> int | None:
        if not (given or t % self.k == 0):
            return None
        empty = np.flatnonzero(frames < 0)
        if empty.size:
            return int(empty[0])
        if self.max_frames is None:
            return len(frames)
        return 1 + int(np.argmin(frames[1:]))


class FirstLatest(MemoryPolicy):
    """First frame kept forever (slot 0) + the previous frame (slot 1, overwritten every frame)."""

    name = "first_latest"

    def capacity(self) -> int:
        return 2

    def on_frame(self, t: int, frames: np.ndarray, given: bool) -> int | None:
        return 0 if t == 0 else 1


POLICIES = {cls.name: cls for cls in (EveryK, FirstLatest)}


def make_policy(method: str, **params) -> MemoryPolicy:
    """Instantiate the policy called ``method`` with ``params``.

    Raises :class:`~sdk.errors.InputError` for an unknown method (listing the known ones) or a
    parameter the policy does not take (listing those it takes).
    """
    if method not in POLICIES:
        raise InputError(f"unknown memory policy {method!r}; known: {', '.join(POLICIES)}")
    cls = POLICIES[method]
    accepted = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise InputError(f"policy {method!r} takes no parameter {', '.join(unknown)}; "
                         f"it takes: {', '.join(accepted) or 'none'}")
    return cls(**params)
