"""MemoryBank: preallocated arrays, slot writes, growth, objects added mid-video."""
import numpy as np
import pytest

from sdk.bank import MemoryBank


def filled(value, *shape):
    return np.full(shape, value, np.float32)


def test_allocate_shapes_dtypes_and_bytes():
    bank = MemoryBank(key_channels=4, value_channels=6)
    assert bank.bank_bytes == 0 and bank.capacity == 0
    bank.allocate(capacity=3, hw=5, num_objects=2)
    assert bank.keys.shape == (4, 15) and bank.values.shape == (2, 6, 15) and bank.valid.shape == (15,)
    assert {a.dtype for a in (bank.keys, bank.values, bank.valid)} == {np.dtype(np.float32)}
    assert all(a.flags.c_contiguous for a in (bank.keys, bank.values, bank.valid))
    assert bank.frames.tolist() == [-1, -1, -1] and bank.num_valid == 0
    assert bank.bank_bytes == 4 * (4 * 15 + 2 * 6 * 15 + 15) + 8 * 3


def test_write_fills_one_slot_and_marks_it_valid():
    bank = MemoryBank(2, 3)
    bank.allocate(3, hw=4, num_objects=1)
    bank.write(1, filled(7, 2, 4), filled(9, 1, 3, 4), frame=12)
    assert bank.valid.tolist() == [0] * 4 + [1] * 4 + [0] * 4
    assert (bank.keys[:, 4:8] == 7).all() and (bank.keys[:, :4] == 0).all()
    assert (bank.values[:, :, 4:8] == 9).all()
    assert bank.frames.tolist() == [-1, 12, -1] and bank.memory_frames == [12] and bank.num_valid == 4
    bank.write(1, filled(1, 2, 4), filled(2, 1, 3, 4), frame=13)      # overwrite in place
    assert bank.memory_frames == [13] and (bank.keys[:, 4:8] == 1).all()


def test_bounded_bank_never_grows():
    bank = MemoryBank(2, 3)
    bank.allocate(2, hw=4, num_objects=1)
    with pytest.raises(IndexError, match="bounded"):
        bank.write(2, filled(1, 2, 4), filled(1, 1, 3, 4), frame=5)


def test_growable_bank_doubles_and_keeps_contents():
    bank = MemoryBank(2, 3, growable=True)
    bank.allocate(2, hw=4, num_objects=1)
    for slot in range(3):
        bank.write(slot, filled(slot + 1, 2, 4), filled(slot + 1, 1, 3, 4), frame=10 * slot)
    assert bank.capacity == 4 and bank.keys.shape == (2, 16)
    assert bank.keys[0].tolist() == [1] * 4 + [2] * 4 + [3] * 4 + [0] * 4
    assert bank.valid.tolist() == [1] * 12 + [0] * 4
    assert bank.frames.tolist() == [0, 10, 20, -1]


def test_add_objects_appends_zero_value_rows():
    bank = MemoryBank(2, 3)
    bank.allocate(2, hw=4, num_objects=1)
    bank.write(0, filled(1, 2, 4), filled(5, 1, 3, 4), frame=0)
    bank.add_objects(2)
    assert bank.num_objects == 3 and bank.values.shape == (3, 3, 8)
    assert (bank.values[0, :, :4] == 5).all() and (bank.values[1:] == 0).all()
    bank.write(1, filled(1, 2, 4), filled(6, 3, 3, 4), frame=1)
    assert (bank.values[:, :, 4:] == 6).all()
