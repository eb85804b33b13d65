"""Memory policies on scripted inputs: no ONNX, no Segmenter — a policy decides from the
bank's slot → frame table alone."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdk.bank import MemoryBank
from sdk.errors import InputError
from sdk.policies import POLICIES, EveryK, FirstLatest, MemoryPolicy, QualityGate, make_policy


def simulate(policy: MemoryPolicy, n: int, given_at=()):
    """Drive ``policy`` over frames 0..n−1 with a 1-position-per-frame bank; returns the
    bank's memory frames after each frame and the bank."""
    bank = MemoryBank(key_channels=1, value_channels=1, growable=policy.growable)
    bank.allocate(policy.capacity(), hw=1, num_objects=1)
    history = []
    for t in range(n):
        slot = policy.on_frame(t, bank.frames, t == 0 or t in given_at)
        if slot is not None:
            bank.write(slot, np.full((1, 1), t, np.float32), np.full((1, 1, 1), t, np.float32), t)
        history.append(bank.memory_frames)
    return history, bank


def test_every_k_writes_first_and_every_kth_frame():
    history, bank = simulate(EveryK(k=5), 16)
    assert history[0] == [0]
    assert history[4] == [0]
    assert history[5] == [0, 5]
    assert history[15] == [0, 5, 10, 15]
    assert bank.keys[0, :4].tolist() == [0, 5, 10, 15]    # slot i holds the i-th write


def test_every_k_always_writes_given_frames_without_shifting_the_schedule():
    history, _ = simulate(EveryK(k=5), 11, given_at={3})
    assert history[3] == [0, 3]
    assert history[10] == [0, 3, 5, 10]


def test_every_k_unbounded_grows_by_doubling():
    policy = EveryK(k=1, initial_slots=2)
    history, bank = simulate(policy, 9)
    assert history[-1] == list(range(9))
    assert bank.capacity == 16                             # 2 → 4 → 8 → 16
    full = np.arange(4)
    assert policy.on_frame(4, full, False) == 4             # full table: ask for slot == capacity


def test_every_k_cap_evicts_oldest_non_first_frame():
    history, bank = simulate(EveryK(k=5, max_frames=3), 26)
    assert history[10] == [0, 5, 10]
    assert history[15] == [0, 10, 15]
    assert history[25] == [0, 20, 25]
    assert bank.capacity == 3


def test_first_latest_keeps_first_and_previous_frame():
    history, bank = simulate(FirstLatest(), 6)
    assert history == [[0], [0, 1], [0, 2], [0, 3], [0, 4], [0, 5]]
    assert bank.capacity == 2 and not FirstLatest.growable


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 6), cap=st.integers(2, 5), n=st.integers(1, 60),
       given_at=st.sets(st.integers(1, 59), max_size=8))
def test_every_k_cap_invariants(k, cap, n, given_at):
    history, bank = simulate(EveryK(k=k, max_frames=cap), n, given_at)
    written = [t for t in range(n) if t % k == 0 or t in given_at]
    assert bank.capacity == cap
    assert history[-1][0] == 0                              # the first frame is never evicted
    assert history[-1] == sorted({0, *written[-(cap - 1):]})   # FIFO keeps the latest writes


def test_make_policy_defaults_and_params():
    assert isinstance(make_policy("every_k"), EveryK) and make_policy("every_k").k == 5
    assert make_policy("every_k", k=3, max_frames=4).capacity() == 4
    assert isinstance(make_policy("first_latest"), FirstLatest)
    assert set(POLICIES) == {"every_k", "first_latest", "qdmn", "lfu", "qpm", "rde", "xmem", "sam2_window"}
    gated = make_policy("every_k", k=3, quality_gate=0.8)
    assert isinstance(gated, QualityGate) and gated.inner.k == 3 and gated.sigma == 0.8
    assert gated.name == "every_k" and gated.requires == ("qam",) and gated.growable


def test_make_policy_errors_name_what_is_accepted():
    with pytest.raises(InputError, match="every_k, first_latest, qdmn, lfu, qpm, rde, xmem, sam2_window"):
        make_policy("cutie")
    with pytest.raises(InputError, match="takes: k, max_frames, initial_slots, quality_gate"):
        make_policy("every_k", sigma=0.8)
    with pytest.raises(InputError, match="takes: quality_gate"):
        make_policy("first_latest", k=5)
    with pytest.raises(InputError, match="k must be"):
        make_policy("every_k", k=0)
    with pytest.raises(InputError, match="max_frames must be"):
        make_policy("every_k", max_frames=1)
