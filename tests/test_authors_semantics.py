"""The pieces of the authors' inference the sdk honours from a version-2 manifest, each on its
own: symmetric padding, per-object memory keys, the temporary memory slot, QDMN's admission and
eviction as its ``inference_core.py`` runs them, and its score normalisation."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdk.bank import MemoryBank
from sdk.ops import Geometry
from sdk.policies import QDMN, Quality


# -- padding ------------------------------------------------------------------------------------
@pytest.mark.parametrize("h, w, top, left, ph, pw", [(480, 854, 0, 5, 480, 864), (240, 427, 0, 2, 240, 432),
                                                      (241, 433, 7, 7, 256, 448), (255, 255, 0, 0, 256, 256)])
def test_centre_padding_splits_like_pad_divide_by(h, w, top, left, ph, pw):
    g = Geometry.for_frame(h, w, None, 16, "centre")
    assert (g.top, g.left, g.padded_h, g.padded_w) == (top, left, ph, pw)
    # the odd pixel goes to the bottom/right: bottom = total − ⌊total/2⌋
    assert ph - h - top == (ph - h) - (ph - h) // 2 and pw - w - left == (pw - w) - (pw - w) // 2
    frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = g.image(frame, np.zeros(3, np.float32), np.ones(3, np.float32))
    assert np.allclose(image[0, :, top:top + h, left:left + w], frame.transpose(2, 0, 1) / 255)
    assert image[0].sum() == pytest.approx(image[0, :, top:top + h, left:left + w].sum())   # zeros around
    labels = g.label_map((frame[..., 0] > 127).astype(np.uint8))
    assert labels[top:top + h, left:left + w].sum() == (frame[..., 0] > 127).sum() == labels.sum()
    probs = np.random.default_rng(1).random((2, ph, pw), dtype=np.float32)
    assert np.array_equal(g.to_input(probs), probs[:, top:top + h, left:left + w])


def test_bottom_right_padding_is_the_default_and_unknown_modes_are_refused():
    assert (Geometry.for_frame(241, 433, None, 16).top, Geometry.for_frame(241, 433, None, 16).left) == (0, 0)
    with pytest.raises(ValueError, match="padding must be one of"):
        Geometry.for_frame(240, 427, None, 16, "left")


# -- the bank: per-object keys and the temporary slot ---------------------------------------------
def test_per_object_keys_are_written_and_read_per_object():
    bank = MemoryBank(key_channels=2, value_channels=3, object_keys=True)
    bank.allocate(capacity=2, hw=4, num_objects=2)
    assert bank.keys.shape == (2, 2, 8) and bank.readout_keys.shape == (2, 2, 8)
    key = np.arange(16, dtype=np.float32).reshape(2, 2, 4)
    bank.write(1, key, np.ones((2, 3, 4), np.float32), frame=7)
    assert np.array_equal(bank.keys[:, :, 4:], key) and not bank.keys[:, :, :4].any()
    bank.add_objects(1)                                             # a new object: zero keys and values
    assert bank.keys.shape == (3, 2, 8) and np.array_equal(bank.keys[:2, :, 4:], key) and not bank.keys[2].any()
    shared = MemoryBank(2, 3)
    shared.allocate(2, 4, 2)
    assert shared.readout_keys.shape == (1, 2, 8)


def test_temporary_slot_is_read_but_hidden_from_the_policy():
    bank = MemoryBank(1, 1, temporary=True)
    bank.allocate(capacity=2, hw=3, num_objects=1)
    assert bank.capacity == 2 and len(bank.valid) == 9 and bank.frames.tolist() == [-1, -1]
    bank.write(0, np.full((1, 3), 1.0, np.float32), np.full((1, 1, 3), 1.0, np.float32), frame=0)
    assert bank.frames.tolist() == [0, -1] and bank.valid.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0]
    bank.write_temporary(np.full((1, 3), 2.0, np.float32), np.full((1, 1, 3), 2.0, np.float32), frame=4)
    assert bank.memory_frames == [0, 4] and bank.num_valid == 6 and bank.frames.tolist() == [0, -1]
    assert bank.keys[0, :3].tolist() == [2, 2, 2]
    usage = np.arange(9, dtype=np.float32)
    assert bank.policy_usage(usage).tolist() == [3, 4, 5, 6, 7, 8]
    bank.write(np.array([5, 4, 3]), np.zeros((1, 3), np.float32), np.zeros((1, 1, 3), np.float32), frame=5)
    assert bank.positions.tolist() == [0, 0, 0, 5, 5, 5] and bank.origin[:3].tolist() == [4, 4, 4]
    bank.clear_temporary()
    assert bank.memory_frames == [0, 5] and bank.num_valid == 6
    growable = MemoryBank(1, 1, growable=True, temporary=True)
    growable.allocate(capacity=1, hw=2, num_objects=1)
    assert len(growable.valid) == 2                                  # live: the temporary slot only
    for slot in range(3):
        growable.write(slot, np.full((1, 2), slot, np.float32), np.full((1, 1, 2), slot, np.float32), frame=slot)
    assert growable.frames.tolist() == [0, 1, 2] and growable.keys[0].tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    with pytest.raises(RuntimeError, match="no temporary slot"):
        MemoryBank(1, 1).write_temporary(None, None, 0)


# -- QDMN as inference_core.py runs it -------------------------------------------------------------
def authors_qdmn(raw, n, interval=5, sigma=0.8, limit=20):
    """Transcription of QDMN's ``do_pass`` bookkeeping: the memory tensor as a list of frames
    (position 0 the first frame), the admission list, S̄A per admission, the eviction removing
    the tensor entry at the chosen entry's list position. Returns the tensor's frames after
    every frame."""
    first_scores = [s for s in np.atleast_1d(raw(0)) if s != 0]
    first = np.float32(np.sum(np.asarray(first_scores, np.float32)) / np.float32(len(first_scores))) \
        if first_scores else np.float32(np.nan)
    tensor, memory, sa, index, last, out = [0], [], {}, 0, 0, [[0]]
    for t in range(1, n):
        s = np.atleast_1d(np.asarray(raw(t), np.float32))
        score = (np.sum(s) / np.float32(len(s))) / first
        if abs(t - last) >= interval and score > sigma:
            index += 1
            if len(memory) > limit:
                sr = {m: np.exp(-abs(index - m)) + sa[m] for m in memory}
                victim = min(sr, key=lambda m: sr[m])
                pos = memory.index(victim)
                memory.remove(victim)
                del sa[victim]
                tensor = tensor[:pos] + tensor[pos + 1:] + [t]
            else:
                tensor = tensor + [t]
            memory.append(index)
            sa[index] = score
            last = t
        out.append(sorted(tensor))
    return out


def replay(policy, raw, n):
    bank = MemoryBank(1, 1)
    bank.allocate(policy.capacity(), hw=1, num_objects=1)
    out = []
    for t in range(n):
        scores = np.atleast_1d(np.asarray(raw(t), np.float32)) if policy.needs_score(t, t == 0) else None
        decision = policy.on_frame(t, bank.frames, t == 0, scores)
        bank.apply(decision, np.full((1, 1), t, np.float32), np.full((1, 1, 1), t, np.float32), t)
        out.append(bank.memory_frames)
    return out


def test_authors_schedule_drops_the_first_frame_where_inference_core_does():
    # limit 1: the list holds 2 admissions; the 3rd evicts the older list entry (lower
    # exp(−|j−m|)), at list position 0, i.e. tensor position 0: the first frame leaves memory
    raw = lambda t: 1.0                                                     # noqa: E731
    policy = QDMN(interval=1, sigma=0.5, beta=1, schedule="authors")
    assert policy.capacity() == 3
    memory = replay(policy, raw, 6)
    assert memory == authors_qdmn(raw, 6, interval=1, sigma=0.5, limit=1)
    assert memory[:4] == [[0], [0, 1], [0, 1, 2], [1, 2, 3]]
    paper = replay(QDMN(interval=1, sigma=0.5, beta=1), raw, 6)
    assert all(m[0] == 0 for m in paper) and paper[3] == [0, 3]            # the paper's reading keeps it


def test_authors_schedule_admits_strictly_above_sigma():
    raw = lambda t: 0.8 if t else 1.0                                       # noqa: E731   S̄A = 0.8 exactly
    assert replay(QDMN(schedule="authors"), raw, 12)[-1] == [0]
    assert replay(QDMN(), raw, 12)[-1] == [0, 5, 10]                        # Alg. 1: ≥ σ


@settings(max_examples=80, deadline=None)
@given(raw=st.lists(st.floats(0, 1.5, width=32), min_size=2, max_size=70), interval=st.integers(1, 6),
       sigma=st.floats(0, 1), limit=st.integers(1, 4))
def test_authors_schedule_matches_inference_core(raw, interval, sigma, limit):
    n = len(raw)
    policy = QDMN(interval, sigma, limit, schedule="authors")
    assert replay(policy, lambda t: raw[t], n) == authors_qdmn(lambda t: raw[t], n, interval, sigma, limit)


def test_quality_leaves_zero_scored_first_objects_out():
    q = Quality()
    assert q(0, np.array([0.0, 0.5])) == pytest.approx(0.5)       # S̄A_1 = 0.5 (the 0 is left out)
    assert q(3, np.array([0.25, 0.25])) == pytest.approx(0.5)     # later frames average every object
    nan = Quality("nan", np.float32)
    nan(0, np.zeros(2, np.float32))
    assert math.isnan(nan(5, np.array([0.9, 0.9], np.float32)))
    never = QDMN(schedule="authors")
    assert replay(never, lambda t: 0.0 if t == 0 else 1.0, 12)[-1] == [0]   # no frame is admitted
