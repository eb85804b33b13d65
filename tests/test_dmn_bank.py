"""sdk/object_bank.py (the DMN object memory mirroring the pixel bank's slots under every frame
policy, constant bytes when bounded, objects added/removed mid-stream) and sdk/boxes.py."""
from __future__ import annotations

import numpy as np
import pytest

from sdk.bank import MemoryBank
from sdk.boxes import boxes_from_masks
from sdk.errors import InputError
from sdk.object_bank import ObjectMemoryBank, check_policy
from sdk.policies import make_policy

CK, CV, S, HW = 4, 6, 2, 3          # object key/value channels, ROI side, pixel positions per slot


def _entries(t, n):
    """Frame t's object key/value: object i's entries are t + i/100 (so a slot says which frame
    and object it came from)."""
    fill = t + np.arange(n, dtype=np.float32)[:, None, None, None] / 100
    return np.broadcast_to(fill, (n, CK, S, S)).copy(), np.broadcast_to(fill, (n, CV, S, S)).copy()


class Stream:
    """A pixel bank + policy + object bank driven as the Segmenter drives them."""

    def __init__(self, policy, n=2):
        self.policy = policy
        self.bank = MemoryBank(2, 3, growable=policy.growable)
        self.bank.allocate(policy.capacity(), HW, n)
        self.objects = ObjectMemoryBank(CK, CV, S)
        self.objects.allocate(self.bank.capacity, n)
        self.rng = np.random.default_rng(0)

    def step(self, t, given=False):
        n = self.bank.num_objects
        scores = self.rng.uniform(0.5, 1.0, n).astype(np.float32) if self.policy.needs_score(t, given) else None
        decision = self.policy.on_frame(t, self.bank.frames, given or t == 0, scores)
        self.bank.apply(decision, np.full((2, HW), t, np.float32), np.full((n, 3, HW), t, np.float32), t)
        key, value = _entries(t, n) if self.objects.slots_to_write(self.bank, t).size else (None, None)
        self.objects.sync(self.bank, t, key, value)

    def check(self):
        frames = self.bank.frames
        assert np.array_equal(self.objects.origin[:len(frames)], frames)
        assert (self.objects.origin[len(frames):] == -1).all()
        for slot, frame in enumerate(self.objects.origin):
            if frame < 0:
                assert (self.objects.valid[:, slot * S * S:(slot + 1) * S * S] == 0).all()


def _assert_slot(objects, slot, frame, rows):
    span = slice(slot * S * S, (slot + 1) * S * S)
    for i, source in enumerate(rows):
        if source is None:
            assert (objects.valid[i, span] == 0).all()
        else:
            assert (objects.valid[i, span] == 1).all()
            np.testing.assert_array_equal(objects.keys[i, :, span], np.float32(frame + source / 100))
            np.testing.assert_array_equal(objects.values[i, :, span], np.float32(frame + source / 100))


@pytest.mark.parametrize("method,params", [("first_latest", {}), ("every_k", {"k": 3, "max_frames": 4}),
                                           ("every_k", {"k": 2, "max_frames": 3, "quality_gate": 0.9}),
                                           ("first_latest", {"quality_gate": 0.5}),
                                           ("qdmn", {"interval": 2, "beta": 3})])
def test_object_bank_mirrors_bounded_policies_in_constant_bytes(method, params):
    stream = Stream(make_policy(method, **params))
    check_policy(stream.policy)
    sizes = set()
    for t in range(200):
        stream.step(t)
        stream.check()
        for slot, frame in enumerate(stream.objects.origin):
            if frame >= 0:
                _assert_slot(stream.objects, slot, frame, [0, 1])
        sizes.add(stream.objects.bank_bytes)
    assert len(sizes) == 1                                                 # constant bytes for any length
    m = stream.bank.capacity * S * S
    assert sizes == {2 * (CK + CV) * m * 4 + 2 * m * 4 + stream.bank.capacity * 8}
    assert stream.objects.keys.shape == (2, CK, m) and stream.objects.valid.shape == (2, m)
    assert stream.objects.origin[0] == 0                                    # the first frame stays


def test_object_bank_follows_a_growable_pixel_bank():
    stream = Stream(make_policy("every_k", k=1, initial_slots=2))
    for t in range(9):
        stream.step(t)
        stream.check()
    assert stream.objects.capacity == stream.bank.capacity >= 9
    for slot in range(9):
        _assert_slot(stream.objects, slot, slot, [0, 1])


def test_objects_added_and_removed_mid_stream():
    stream = Stream(make_policy("every_k", k=2, max_frames=4))
    for t in range(4):
        stream.step(t)
    before = stream.objects.bank_bytes
    stream.bank.add_objects(1)
    stream.objects.add_objects(1)                       # appears at frame 4 with a given mask
    stream.step(4, given=True)
    stream.check()
    slots = {int(f): s for s, f in enumerate(stream.objects.origin) if f >= 0}
    _assert_slot(stream.objects, slots[0], 0, [0, 1, None])   # no entries before it appeared
    _assert_slot(stream.objects, slots[2], 2, [0, 1, None])
    _assert_slot(stream.objects, slots[4], 4, [0, 1, 2])
    stream.objects.remove_object(0)                      # object 0 leaves: the others move down
    stream.bank.remove_object(0)
    assert stream.objects.num_objects == 2
    _assert_slot(stream.objects, slots[4], 4, [1, 2])
    _assert_slot(stream.objects, slots[0], 0, [1, None])
    grown = stream.objects.bank_bytes
    assert grown > before
    stream.objects.add_objects(1)                        # reuses the freed rows: bytes unchanged
    stream.bank.add_objects(1)
    assert stream.objects.bank_bytes == grown
    _assert_slot(stream.objects, slots[4], 4, [1, 2, None])
    for t in range(5, 30):
        stream.step(t, given=False)
        stream.check()
    assert stream.objects.bank_bytes == grown
    with pytest.raises(IndexError, match="object 3"):
        stream.objects.remove_object(3)


def test_sync_refuses_missing_or_misshapen_entries():
    stream = Stream(make_policy("first_latest"))
    stream.step(0)
    decision = stream.policy.on_frame(1, stream.bank.frames, False, None)
    stream.bank.apply(decision, np.ones((2, HW), np.float32), np.ones((2, 3, HW), np.float32), 1)
    origin = stream.objects.origin.copy()
    with pytest.raises(ValueError, match="frame 1 went into slot"):
        stream.objects.sync(stream.bank, 1, None, None)
    key, value = _entries(1, 3)
    with pytest.raises(ValueError, match="object keys"):
        stream.objects.sync(stream.bank, 1, key, value)
    assert np.array_equal(stream.objects.origin, origin)


@pytest.mark.parametrize("method", ["lfu", "rde", "xmem"])
def test_position_level_policies_are_refused(method):
    with pytest.raises(ValueError, match="frame slots"):
        check_policy(make_policy(method))


def test_boxes_from_masks():
    probs = np.zeros((3, 6, 8), np.float32)
    probs[0, 1:3, 2:5] = 0.9
    probs[0, 5, 7] = 0.6                     # one far cell widens the box
    probs[1, 2, 3] = 0.5                     # not above the threshold: empty
    probs[2] = 0.2
    previous = np.array([[0, 0, 1, 1], [4, 8, 12, 16], [1, 2, 3, 4]], np.float32)
    boxes = boxes_from_masks(probs, previous)
    assert boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes, [[8, 4, 32, 24], [4, 8, 12, 16], [1, 2, 3, 4]])
    np.testing.assert_array_equal(boxes_from_masks(probs[:, None])[1:], [[0, 0, 32, 24]] * 2)
    with pytest.raises(InputError, match="previous boxes"):
        boxes_from_masks(probs, previous[:2])
    with pytest.raises(InputError, match="probabilities of shape"):
        boxes_from_masks(probs[0])
