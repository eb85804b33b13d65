"""MemoryBank: preallocated arrays, slot and feature writes, live prefix of growable banks,
compound (RDE) writes, objects added mid-video."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdk.bank import MemoryBank
from sdk.policies import Write


def filled(value, *shape):
    return np.full(shape, value, np.float32)


def arrays(bank):
    return bank.keys, bank.values, bank.valid, bank.origin


def test_allocate_shapes_dtypes_and_bytes():
    bank = MemoryBank(key_channels=4, value_channels=6)
    assert bank.bank_bytes == 0 and bank.capacity == 0
    bank.allocate(capacity=3, hw=5, num_objects=2)
    assert bank.keys.shape == (4, 15) and bank.values.shape == (2, 6, 15) and bank.valid.shape == (15,)
    assert {a.dtype for a in (bank.keys, bank.values, bank.valid)} == {np.dtype(np.float32)}
    assert bank.origin.dtype == np.int64 and bank.origin.tolist() == [-1] * 15
    assert all(a.flags.c_contiguous for a in arrays(bank))
    assert bank.frames.tolist() == [-1, -1, -1] and bank.num_valid == 0 and bank.capacity == 3
    assert bank.bank_bytes == 4 * (4 * 15 + 2 * 6 * 15 + 15) + 8 * 15


def test_write_fills_one_slot_and_marks_it_valid():
    bank = MemoryBank(2, 3)
    bank.allocate(3, hw=4, num_objects=1)
    before = arrays(bank)
    bank.write(1, filled(7, 2, 4), filled(9, 1, 3, 4), frame=12)
    assert bank.valid.tolist() == [0] * 4 + [1] * 4 + [0] * 4
    assert (bank.keys[:, 4:8] == 7).all() and (bank.keys[:, :4] == 0).all()
    assert (bank.values[:, :, 4:8] == 9).all()
    assert bank.frames.tolist() == [-1, 12, -1] and bank.memory_frames == [12] and bank.num_valid == 4
    bank.write(1, filled(1, 2, 4), filled(2, 1, 3, 4), frame=13)      # overwrite in place
    assert bank.memory_frames == [13] and (bank.keys[:, 4:8] == 1).all()
    assert all(a is b for a, b in zip(arrays(bank), before))          # bounded: the same arrays
    key, value = bank.slot(1)
    assert key.shape == (2, 4) and value.shape == (1, 3, 4) and np.shares_memory(key, bank.keys)


def test_write_positions_scatters_features():
    bank = MemoryBank(2, 1)
    bank.allocate(2, hw=3, num_objects=1)
    key = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    bank.write(np.array([5, 0, 2]), key, key[None, :1], frame=7)
    assert bank.keys.tolist() == [[2, 0, 3, 0, 0, 1], [5, 0, 6, 0, 0, 4]]
    assert bank.values[0, 0].tolist() == [2, 0, 3, 0, 0, 1]
    assert bank.origin.tolist() == [7, -1, 7, -1, -1, 7] and bank.valid.tolist() == [1, 0, 1, 0, 0, 1]
    assert bank.memory_frames == [7] and bank.num_valid == 3
    with pytest.raises(IndexError, match="positions outside"):
        bank.write(np.array([0, 1, 6]), key, key[None, :1], frame=8)


def test_bounded_bank_never_grows():
    bank = MemoryBank(2, 3)
    bank.allocate(2, hw=4, num_objects=1)
    with pytest.raises(IndexError, match="bounded"):
        bank.write(2, filled(1, 2, 4), filled(1, 1, 3, 4), frame=5)


def test_growable_bank_is_live_over_its_written_prefix_only():
    bank = MemoryBank(2, 3, growable=True)
    bank.allocate(4, hw=2, num_objects=1)
    assert bank.keys.shape == (2, 0) and bank.frames.tolist() == [] and bank.capacity == 4
    nbytes = bank.bank_bytes
    bank.write(0, filled(1, 2, 2), filled(1, 1, 3, 2), frame=0)
    bank.write(2, filled(3, 2, 2), filled(3, 1, 3, 2), frame=10)      # skips slot 1: live = 3 slots
    assert bank.keys.shape == (2, 6) and bank.values.shape == (1, 3, 6)
    assert bank.keys.tolist() == [[1, 1, 0, 0, 3, 3]] * 2 and bank.values[0].tolist() == [[1, 1, 0, 0, 3, 3]] * 3
    assert bank.valid.tolist() == [1, 1, 0, 0, 1, 1] and bank.frames.tolist() == [0, -1, 10]
    assert all(a.flags.c_contiguous for a in arrays(bank))            # fed to ONNX Runtime without a copy
    assert bank.bank_bytes == nbytes and bank.capacity == 4           # lengthened in place


def test_growable_bank_doubles_and_keeps_contents():
    bank = MemoryBank(2, 3, growable=True)
    bank.allocate(2, hw=4, num_objects=1)
    for slot in range(3):
        bank.write(slot, filled(slot + 1, 2, 4), filled(slot + 1, 1, 3, 4), frame=10 * slot)
    assert bank.capacity == 4 and bank.keys.shape == (2, 12)
    assert bank.keys[0].tolist() == [1] * 4 + [2] * 4 + [3] * 4
    assert bank.values[0, 2].tolist() == [1] * 4 + [2] * 4 + [3] * 4
    assert bank.valid.tolist() == [1] * 12 and bank.frames.tolist() == [0, 10, 20]


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 5), slots=st.lists(st.integers(0, 9), min_size=1, max_size=12),
       block=st.integers(1, 7))
def test_growable_bank_matches_a_dense_reference(rows, slots, block):
    """Whatever order slots are written in (and however rows move in blocks), the live arrays
    equal a dense reference."""
    import sdk.bank
    old, sdk.bank._MOVE_FLOATS = sdk.bank._MOVE_FLOATS, block
    try:
        hw = 3
        bank = MemoryBank(rows, 2, growable=True)
        bank.allocate(1, hw=hw, num_objects=2)
        ref_k = np.zeros((rows, 10 * hw), np.float32)
        ref_v = np.zeros((2, 2, 10 * hw), np.float32)
        for i, slot in enumerate(slots):
            key = np.random.default_rng(i).random((rows, hw), dtype=np.float32)
            value = np.random.default_rng(100 + i).random((2, 2, hw), dtype=np.float32)
            bank.write(slot, key, value, frame=i)
            ref_k[:, slot * hw:(slot + 1) * hw], ref_v[:, :, slot * hw:(slot + 1) * hw] = key, value
        live = (max(slots) + 1) * hw
        np.testing.assert_array_equal(bank.keys, ref_k[:, :live])
        np.testing.assert_array_equal(bank.values, ref_v[:, :, :live])
        assert bank.capacity >= max(slots) + 1
    finally:
        sdk.bank._MOVE_FLOATS = old


def test_add_objects_appends_zero_value_rows():
    bank = MemoryBank(2, 3)
    bank.allocate(2, hw=4, num_objects=1)
    bank.write(0, filled(1, 2, 4), filled(5, 1, 3, 4), frame=0)
    bank.add_objects(2)
    assert bank.num_objects == 3 and bank.values.shape == (3, 3, 8)
    assert (bank.values[0, :, :4] == 5).all() and (bank.values[1:] == 0).all()
    bank.write(1, filled(1, 2, 4), filled(6, 3, 3, 4), frame=1)
    assert (bank.values[:, :, 4:] == 6).all()
    grow = MemoryBank(2, 3, growable=True)
    grow.allocate(4, hw=1, num_objects=1)
    grow.write(1, filled(1, 2, 1), filled(5, 1, 3, 1), frame=0)
    grow.add_objects(1)
    assert grow.values.shape == (2, 3, 2) and grow.values[:, 0].tolist() == [[0, 5], [0, 0]]


def test_apply_carries_out_every_kind_of_decision():
    bank = MemoryBank(1, 1)
    bank.allocate(4, hw=2, num_objects=1)
    frame = lambda v: (filled(v, 1, 2), filled(v, 1, 1, 2))   # noqa: E731
    mean = lambda k0, v0, k1, v1: ((k0 + k1) / 2, (v0 + v1) / 2)  # noqa: E731   stand-in for SAM
    bank.apply(None, *frame(9), frame=0)
    assert bank.num_valid == 0
    bank.apply(Write(slots=(2, 3)), *frame(4), frame=0)
    assert bank.frames.tolist() == [-1, -1, 0, 0]
    bank.apply(Write(slots=(1,), fold=(2, 0)), *frame(8), frame=3, sam=mean)
    assert bank.frames.tolist() == [3, 3, 0, 0] and bank.keys[0].tolist() == [6, 6, 8, 8, 4, 4, 4, 4]
    bank.apply(Write(slots=(1,), fold=(0, 0)), *frame(2), frame=6, sam=mean)
    assert bank.keys[0].tolist() == [4, 4, 2, 2, 4, 4, 4, 4] and bank.values[0, 0, :2].tolist() == [4, 4]
    bank.apply(1, *frame(5), frame=7)
    bank.apply(np.array([0, 7]), *frame(1), frame=8)
    assert bank.origin.tolist() == [8, 6, 7, 7, 0, 0, 0, 8]


# -- objects removed (Segmenter.remove_object) --------------------------------------------------
@pytest.mark.parametrize("object_keys", [False, True])
def test_remove_object_moves_the_later_rows_down_in_place(object_keys):
    bank = MemoryBank(2, 3, object_keys=object_keys)
    bank.allocate(capacity=2, hw=4, num_objects=3)
    key = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4) if object_keys else filled(5, 2, 4)
    value = np.arange(3 * 3 * 4, dtype=np.float32).reshape(3, 3, 4) + 1
    bank.write(1, key, value, frame=3)
    nbytes, buffers = bank.bank_bytes, (bank._k, bank._v)
    bank.remove_object(1)
    assert bank.num_objects == 2 and bank.values.shape == (2, 3, 8) and bank.bank_bytes == nbytes
    assert bank._k is buffers[0] and bank._v is buffers[1]                 # no reallocation
    assert np.array_equal(bank.values[:, :, 4:], value[[0, 2]]) and not bank.values[:, :, :4].any()
    if object_keys:
        assert bank.keys.shape == (2, 2, 8) and np.array_equal(bank.keys[:, :, 4:], key[[0, 2]])
    else:
        assert bank.keys.shape == (2, 8) and np.array_equal(bank.keys[:, 4:], key)
    assert bank.memory_frames == [3] and bank.valid.tolist() == [0] * 4 + [1] * 4   # the frame stays
    with pytest.raises(IndexError, match="object 2 outside the bank's 2 objects"):
        bank.remove_object(2)
    bank.add_objects(1)                                  # takes the freed row: zeros, the same buffers
    assert bank.num_objects == 3 and bank.bank_bytes == nbytes and bank._v is buffers[1]
    assert not bank.values[2].any() and np.array_equal(bank.values[:2, :, 4:], value[[0, 2]])
    if object_keys:
        assert not bank.keys[2].any()
    bank.add_objects(1)                                  # no spare row left: reallocated
    assert bank.num_objects == 4 and bank.bank_bytes > nbytes and np.array_equal(bank.values[:2, :, 4:], value[[0, 2]])


def test_removed_rows_stay_through_growth_and_rollback():
    """A growable bank keeps the freed rows when it doubles; an in-place add_objects undone by
    restore leaves the objects as they were."""
    bank = MemoryBank(1, 2, growable=True, object_keys=True)
    bank.allocate(capacity=1, hw=2, num_objects=3)
    bank.write(0, np.full((3, 1, 2), 1, np.float32), np.full((3, 2, 2), 1, np.float32), frame=0)
    bank.remove_object(0)
    nbytes, snapshot = bank.bank_bytes, bank.snapshot()
    bank.add_objects(1)
    bank.restore(snapshot)
    assert bank.num_objects == 2 and bank.bank_bytes == nbytes and bank.values.shape == (2, 2, 2)
    bank.write(1, np.full((2, 1, 2), 2, np.float32), np.full((2, 2, 2), 2, np.float32), frame=1)   # doubles
    assert bank.frames.tolist() == [0, 1] and bank.bank_bytes > nbytes
    assert bank.values.tolist() == [[[1, 1, 2, 2]] * 2] * 2 and bank.keys.tolist() == [[[1, 1, 2, 2]]] * 2
    held = bank.bank_bytes
    bank.add_objects(1)                                  # the freed row came along: no reallocation
    assert bank.bank_bytes == held and not bank.values[2].any() and not bank.keys[2].any()
