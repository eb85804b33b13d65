"""The papers' memory policies (QDMN, LFU, QPM, RDE, the QAM gate) replayed on scripted scores,
usage counts and frame indices, checked after every frame; then through the Segmenter: LFU on
the tiny export, and the QAM / SAM / prior-enhancement paths on the tiny network exported with
all heads (``heads_export``; a fresh SAM returns the mean of its two inputs, see
:class:`training.heads.SAM`)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdk import Segmenter
from sdk.bank import MemoryBank
from sdk.errors import InputError, ManifestError
from sdk.policies import LFU, QDMN, QPM, RDE, EveryK, FirstLatest, Write, make_policy


def mean_sam(key_rde, value_rde, key, value):
    """Stand-in for SAM: the mean of the previous RDE and the new memory frame."""
    return (key_rde + key) / 2, (value_rde + value) / 2


def arrays(bank):
    return bank.keys, bank.values, bank.valid, bank.origin


class Replay:
    """Drives a policy over frames 0..n−1 as the Segmenter does, on a bank whose features of
    frame t all equal t (1 key channel, 1 value channel, 1 object).

    scores: t → QAM scores of the frame's objects (a float for one object, or a list);
    usage: (t, bank) → usage [M] of the readout; given_at: frames with a user-given mask.
    ``tables[t]`` is the slot (or, per-feature, position) → frame table after frame t.
    """

    def __init__(self, policy, n, scores=lambda t: 1.0, usage=None, given_at=(), hw=1):
        self.policy, self.bank = policy, MemoryBank(1, 1, growable=policy.growable)
        self.bank.allocate(policy.capacity(), hw=hw, num_objects=1)
        self.initial, self.nbytes = arrays(self.bank), self.bank.bank_bytes
        self.tables, self.decisions, self.priors, self.reallocated = [], [], [], False
        for t in range(n):
            given = t == 0 or t in given_at
            if t > 0:
                self.priors.append(policy.prior(t))
                if self.bank.num_valid:
                    policy.on_readout(t, np.zeros(len(self.bank.valid)) if usage is None else usage(t, self.bank))
            s = np.atleast_1d(np.asarray(scores(t), np.float64)) if policy.needs_score(t, given) else None
            table = self.bank.origin if policy.per_feature else self.bank.frames
            decision = policy.on_frame(t, table, given, s)
            self.decisions.append(decision)
            self.bank.apply(decision, np.full((1, hw), t, np.float32), np.full((1, 1, hw), t, np.float32), t,
                            mean_sam)
            self.tables.append((self.bank.origin if policy.per_feature else self.bank.frames).tolist())
            self.reallocated |= any(a is not b for a, b in zip(arrays(self.bank), self.initial))

    def memory(self, t):
        """Frames in memory after frame t, ascending."""
        return sorted({f for f in self.tables[t] if f >= 0})


# -- QDMN (Algorithm 1) -------------------------------------------------------------------------
def algorithm1(raw, given_at, n, interval=5, sigma=0.8, beta=20):
    """QDMN Algorithm 1 in the paper's own form: Memory = {relative index j: (frame, S̄A)} with
    the annotated first frame at j = 1 (never removed), a write due ``interval`` frames after
    the last one and deferred while S̄A_t < σ; full (len(Memory) > β) → remove argmin
    S̄A_k + exp(k − j). Returns the memory frames after every frame."""
    first = float(np.mean(raw(0))) or 1.0
    memory, j, last, out = {1: (0, 1.0)}, 1, 0, [[0]]
    for t in range(1, n):
        if t in given_at or t - last >= interval:
            score = float(np.mean(raw(t))) / first
            if t in given_at or score >= sigma:
                j += 1
                if len(memory) > beta:
                    reference = {k: memory[k][1] + math.exp(k - j) for k in memory if k != 1}
                    del memory[min(reference, key=lambda k: (reference[k], k))]
                memory[j], last = (t, score), t
        out.append(sorted(f for f, _ in memory.values()))
    return out


def test_qdmn_defers_writes_and_evicts_by_reference_score():
    raw = {0: 0.5, 5: 0.45, 10: 0.35, 11: 0.5, 16: 0.4, 21: 0.475, 26: 0.5}      # S̄A = raw / 0.5
    r = Replay(QDMN(interval=5, sigma=0.8, beta=3), 27, scores=lambda t: raw[t])
    assert [r.memory(t) for t in (0, 4, 5, 9, 10)] == [[0], [0], [0, 5], [0, 5], [0, 5]]   # S̄A_10 = 0.7 < σ
    assert r.memory(11) == [0, 5, 11]                       # deferred write lands on frame 11
    assert r.memory(15) == [0, 5, 11]                       # next trigger: 5 frames after the write
    assert r.memory(16) == [0, 5, 11, 16]                   # S̄A = σ is admitted (Alg. 1 line 4: ≥)
    # full (β = 3): S^R = S̄A + e^(k−j), j = 4: frame 5 0.9+e^-3, 11 1.0+e^-2, 16 0.8+e^-1 → evict 5
    assert r.memory(21) == [0, 11, 16, 21] and r.tables[21] == [0, 21, 11, 16]
    # j = 5: frame 11 1.0+e^-3 = 1.050, 16 0.8+e^-2 = 0.935, 21 0.95+e^-1 = 1.318 → evict 16
    assert r.memory(26) == [0, 11, 21, 26]
    assert not r.reallocated and r.bank.capacity == 4
    assert r.memory(26) == algorithm1(lambda t: raw.get(t, 0.0), (), 27, beta=3)[26]


def test_qdmn_tie_evicts_the_older_frame_and_keeps_the_annotation():
    # first raw 0.2 → S̄A = 5·raw. A (frame 2) and B (frame 4) score 5; frames 5..50 score 1 and
    # keep replacing each other; by frame 52, e^(k−j) of A and B is below float64 resolution at 5.
    raw = lambda t: 0.2 if t in (0, 1, 3) or 5 <= t <= 50 else 1.0   # noqa: E731
    r = Replay(QDMN(interval=1, beta=3), 54, scores=raw)
    assert r.tables[3] == [0, 1, 2, 3] and r.tables[4] == [0, 4, 2, 3]     # B replaces frame 1
    assert r.tables[51] == [0, 4, 2, 51]
    assert r.tables[52] == [0, 4, 52, 51]       # tie A/B at exactly 5.0 → the older, A (in the higher slot)
    assert r.tables[53] == [0, 53, 52, 51]
    assert [r.memory(t) for t in range(54)] == algorithm1(raw, (), 54, interval=1, beta=3)


def test_qdmn_first_frame_score_zero_uses_raw_scores():
    raw = {0: 0.0, 5: 0.75, 6: 0.85, 11: 0.0, 12: 0.9}
    r = Replay(QDMN(), 13, scores=lambda t: raw[t])
    assert [r.memory(t) for t in (5, 6, 11, 12)] == [[0], [0, 6], [0, 6], [0, 6, 12]]


def test_qdmn_given_frames_and_objects_that_appear_mid_video():
    # object 2 appears at frame 7 (given mask: written whatever its score, and it restarts the
    # schedule); later frames average both objects' scores over the first frame's (0.6).
    raw = {0: [0.6], 7: [0.1, 0.2], 12: [0.6, 0.3], 13: [0.6, 0.6], 18: [0.0, 0.0]}
    score = lambda t: raw.get(t, [0.3])                       # noqa: E731   S̄A = 0.5: deferred
    r = Replay(QDMN(beta=2), 19, scores=score, given_at={7})
    assert [r.memory(t) for t in (6, 7, 11, 12, 13, 18)] == [[0], [0, 7], [0, 7], [0, 7], [0, 7, 13], [0, 7, 13]]
    assert [r.memory(t) for t in range(19)] == algorithm1(score, {7}, 19, beta=2)


@settings(max_examples=60, deadline=None)
@given(raw=st.lists(st.floats(0, 1), min_size=2, max_size=60), interval=st.integers(1, 6),
       sigma=st.floats(0, 1), beta=st.integers(1, 5), given_at=st.sets(st.integers(1, 59), max_size=6))
def test_qdmn_matches_algorithm1(raw, interval, sigma, beta, given_at):
    n = len(raw)
    r = Replay(QDMN(interval, sigma, beta), n, scores=lambda t: raw[t], given_at=given_at)
    assert [r.memory(t) for t in range(n)] == algorithm1(lambda t: raw[t], given_at, n, interval, sigma, beta)
    assert all(table[0] == 0 for table in r.tables)          # the annotated frame is never evicted
    assert not r.reallocated and r.bank.capacity == beta + 1 and r.bank.bank_bytes == r.nbytes


def test_qdmn_needs_scores_only_when_a_write_is_due():
    policy = QDMN()
    assert policy.needs_score(0, True) and not policy.needs_score(4, False) and policy.needs_score(3, True)
    assert policy.needs_score(5, False) and policy.capacity() == 21 and policy.requires == ("qam", "prior_enhance")
    with pytest.raises(ValueError, match="QAM scores"):
        policy.on_frame(0, np.full(21, -1), True, None)


# -- LFU (thesis ch. 3) ---------------------------------------------------------------------------
def test_lfu_scripted_counts_and_evictions():
    # hw = 2 features per frame, capacity 2 frames' worth = 4 positions, a write every 2 frames
    usage = {1: [2, 0, 0, 0], 2: [2, 1, 0, 0], 3: [0, 0, 1, 1], 4: [0, 1, 0, 0], 5: [1, 0, 0, 0],
             6: [0, 0, 0, 0], 7: [0, 0, 0, 4], 8: [0, 0, 0, 0], 9: [0, 3, 0, 0]}
    r = Replay(LFU(k=2, capacity_frames=2), 10, usage=lambda t, bank: np.array(usage[t], np.float32),
               given_at={9}, hw=2)
    assert r.tables[0] == [0, 0, -1, -1] and r.tables[1] == [0, 0, -1, -1]
    assert r.tables[2] == [0, 0, 2, 2]                                 # empty positions first
    # t=4: counts 4,2,1,1 over ages 4,4,2,2 → 1, .5, .5, .5: tie → oldest (pos 1), then lowest position (2)
    assert r.tables[4] == [0, 4, 4, 2]
    # t=6: counts 5,0,0,1 (new features start at 0) over ages 6,2,2,4 → evict positions 1, 2
    assert r.tables[6] == [0, 6, 6, 2]
    assert r.tables[8] == [0, 8, 8, 2]                                 # 5/8, 0, 0, 5/6
    # t=9 (given mask, off schedule): 5/9, 3/1, 0/1, 5/7 → the first frame's last feature goes
    assert r.tables[9] == [9, 8, 9, 2] and r.memory(9) == [2, 8, 9]
    assert r.policy.count.tolist() == [0, 3, 0, 5]
    assert not r.reallocated and r.bank.capacity == 2 and r.bank.num_valid == 4


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 4), frames_worth=st.integers(1, 3), hw=st.integers(1, 4),
       seed=st.integers(0, 2**16), given_at=st.sets(st.integers(1, 39), max_size=5))
def test_lfu_invariants(n, k, frames_worth, hw, seed, given_at):
    rng = np.random.default_rng(seed)
    snapshots = []

    def usage(t, bank):
        u = np.where(bank.valid > 0, rng.integers(0, 4, len(bank.valid)), 0).astype(np.float32)
        return u

    policy = LFU(k, frames_worth)
    original = policy.on_frame

    def spy(t, table, given, scores=None):
        before = (table.copy(), None if policy.count is None else policy.count.copy())
        out = original(t, table, given, scores)
        snapshots.append((t, *before, out))
        return out

    policy.on_frame = spy
    r = Replay(policy, n, usage=usage, given_at=given_at, hw=hw)
    assert not r.reallocated and r.bank.bank_bytes == r.nbytes and len(r.bank.origin) == frames_worth * hw
    for t, table, count, out in snapshots:
        written = t % k == 0 or t in given_at
        assert (out is not None) == written
        if out is None:
            continue
        assert len(set(out.tolist())) == hw and r.tables[t].count(t) == hw      # exactly one frame's worth
        if count is None:
            continue
        occupied = table >= 0
        score = np.where(occupied, count / np.maximum(t - table, 1), -np.inf)
        kept = np.setdiff1d(np.flatnonzero(occupied), out)
        if kept.size:                          # LFU: nothing kept scores below what was removed
            assert score[out].max() <= score[kept].min()


# -- QPM ------------------------------------------------------------------------------------------
def test_qpm_memory_and_selective_prior():
    raw = {0: 0.5, 1: 0.25, 2: 0.375, 5: 0.35, 10: 0.4, 15: 0.25}    # S̄A = raw / 0.5; others 1.0
    r = Replay(QPM(), 19, scores=lambda t: raw.get(t, 0.5), given_at={17})
    assert [r.memory(t) for t in (0, 1, 2, 4)] == [[0], [0, 1], [0, 2], [0, 4]]
    assert r.memory(5) == [0, 5] and r.memory(6) == [0, 6]          # S̄A_5 = 0.7 is not > σ_m
    assert r.memory(10) == [0, 10] and r.memory(11) == [0, 10, 11]  # kept; the latest moves on
    assert r.memory(15) == [0, 10, 15] and r.memory(16) == [0, 10, 16]
    assert r.memory(17) == [0, 10, 17] and r.memory(18) == [0, 10, 17, 18]   # given masks are kept
    # prior of frame t: frame t−1 if S̄A_{t−1} > σ_en = 0.65 else the first frame (index 0)
    assert r.priors[:4] == [0, 0, 2, 3]                             # S̄A_1 = 0.5 → frame 2 gets the first
    assert r.priors[5] == 5 and r.priors[15] == 0                    # S̄A_5 = 0.7; S̄A_15 = 0.5
    assert r.bank.capacity == 8 and r.bank.bank_bytes == r.nbytes     # the 8 preallocated slots suffice


def test_qpm_bounded_fifo_and_first_score_zero():
    r = Replay(QPM(max_frames=3), 17, scores=lambda t: 0.8)
    assert [r.memory(t) for t in (4, 5, 6, 10, 11, 15, 16)] == [
        [0, 4], [0, 5], [0, 5, 6], [0, 5, 10], [0, 10, 11], [0, 10, 15], [0, 15, 16]]
    assert not r.reallocated
    two = Replay(QPM(max_frames=2), 12, scores=lambda t: 0.8)
    assert [two.memory(t) for t in range(12)] == [[0]] + [[0, t] for t in range(1, 12)]
    zero = Replay(QPM(), 7, scores=lambda t: [0.0, 0.72, 0.6, 0.6, 0.6, 0.6, 0.6][t])
    assert zero.priors[:3] == [0, 1, 0]          # raw scores: 0 ≤ σ_en, 0.72 > σ_en, 0.6 ≤ σ_en
    assert zero.memory(5) == [0, 5] and zero.memory(6) == [0, 6]    # 0.6 is not > 0.7


# -- RDE ------------------------------------------------------------------------------------------
def test_rde_memory_layout_and_folds():
    r = Replay(RDE(theta=3), 11, given_at={7})
    assert r.tables[0] == r.tables[2] == [-1, -1, 0, 0]               # [first, first] before the first update
    assert r.tables[3] == r.tables[5] == [3, 3, 0, 0]
    assert r.tables[6] == [6, 6, 0, 0] and r.tables[7] == [7, 7, 0, 0] and r.tables[9] == [9, 9, 0, 0]
    assert r.decisions[3] == Write(slots=(1,), fold=(2, 0))           # the RDE starts as the first frame
    assert r.decisions[6] == Write(slots=(1,), fold=(0, 0))
    rde = 0.0
    for t in (3, 6, 7, 9):
        rde = (rde + t) / 2                                           # mean_sam(RDE, frame t)
    assert r.bank.keys[0].tolist() == [rde, 9, 0, 0] and not r.reallocated
    assert RDE().top_k == 40 and RDE().requires == ("sam_key", "sam_value")


# -- QAM gate, parameters ---------------------------------------------------------------------------
def test_quality_gate_filters_any_policy():
    raw = lambda t: 0.3 if t in (2, 4, 5) else 0.5                  # noqa: E731   S̄A = 0.6 there
    gated = Replay(make_policy("every_k", k=1, quality_gate=0.8), 7, scores=raw, given_at={4})
    assert gated.memory(6) == [0, 1, 3, 4, 6]                         # 2, 5 rejected; 4 is given
    latest = Replay(make_policy("first_latest", quality_gate=0.8), 4, scores=raw)
    assert [latest.memory(t) for t in range(4)] == [[0], [0, 1], [0, 1], [0, 3]]
    zero = Replay(make_policy("lfu", k=1, quality_gate=0.5), 3, scores=lambda t: [0.0, 0.4, 0.6][t], hw=1)
    assert zero.memory(2) == [0, 2]                                   # first score 0 → raw scores


def test_paper_defaults_and_parameter_errors():
    q, lfu, qpm, rde = QDMN(), LFU(), QPM(), RDE()
    assert (q.interval, q.sigma, q.beta) == (5, 0.8, 20)
    assert (lfu.k, lfu.capacity(), lfu.per_feature, lfu.requires) == (5, 2, True, ())
    assert (qpm.interval, qpm.sigma_m, qpm.sigma_en, qpm.growable) == (5, 0.7, 0.65, True)
    assert (rde.theta, rde.capacity(), rde.growable) == (3, 4, False)
    assert not QPM(max_frames=4).growable and not EveryK(max_frames=4).growable and not FirstLatest.growable
    for method, bad in [("qdmn", {"beta": 0}), ("lfu", {"capacity_frames": 0}), ("qpm", {"max_frames": 1}),
                        ("rde", {"theta": 0})]:
        with pytest.raises(InputError, match=method):
            make_policy(method, **bad)


@settings(max_examples=30, deadline=None)
@given(method=st.sampled_from(["qdmn", "lfu", "qpm", "rde", "first_latest", "every_k"]),
       raw=st.lists(st.floats(0, 1), min_size=1, max_size=40), given_at=st.sets(st.integers(1, 39), max_size=5),
       gate=st.none() | st.floats(0, 1), hw=st.integers(1, 3))
def test_bounded_policies_never_reallocate(method, raw, given_at, gate, hw):
    params = {"qpm": {"max_frames": 4}, "every_k": {"max_frames": 3}}.get(method, {})
    if gate is not None:
        params["quality_gate"] = gate
    policy = make_policy(method, **params)
    r = Replay(policy, len(raw), scores=lambda t: raw[t], given_at=given_at, hw=hw,
               usage=lambda t, bank: bank.valid.copy())
    assert not r.reallocated and r.bank.bank_bytes == r.nbytes
    assert all(len(table) == policy.capacity() * (hw if policy.per_feature else 1) for table in r.tables)
    keeps_first = {"rde": lambda tab: tab[2:] == [0, 0], "lfu": lambda tab: True}
    assert all(keeps_first.get(method, lambda tab: tab[0] == 0)(table) for table in r.tables)


# -- through the Segmenter ------------------------------------------------------------------------
def test_lfu_end_to_end_constant_memory(tiny_export, square_clip):
    frames, masks = square_clip(30)
    seg = Segmenter(tiny_export, method="lfu", providers="cpu")
    seg.step(frames[0], masks[0])
    bank, hw = seg.bank, seg.bank.hw
    initial, nbytes = arrays(bank), seg.bank_bytes
    assert len(bank.origin) == 2 * hw and bank.origin.tolist() == [0] * hw + [-1] * hw
    decisions = []
    original = seg.policy.on_frame
    seg.policy.on_frame = lambda *a: decisions.append((a[0], a[1].copy(), seg.policy.count.copy(),
                                                       out := original(*a))) or out
    for t in range(1, 30):
        assert seg.step(frames[t]).shape == (96, 128)
        assert all(a is b for a, b in zip(arrays(bank), initial)) and seg.bank_bytes == nbytes
        assert set(bank.origin.tolist()) <= {-1, *range(0, t + 1, 5)} and bank.num_valid <= 2 * hw
    assert bank.num_valid == 2 * hw and seg.policy.count.sum() > 0        # readout usage reached the policy
    for t, table, count, out in decisions:
        if out is None:
            assert t % 5
            continue
        score = np.where(table >= 0, count / np.maximum(t - table, 1), -np.inf)
        kept = np.setdiff1d(np.arange(2 * hw), out)
        assert len(out) == hw and score[out].max() <= score[kept].min()


def test_lfu_objects_appearing_mid_video(tiny_export, square_clip):
    frames, masks = square_clip(12, label=3)
    seg = Segmenter(tiny_export, method="lfu", providers="cpu")
    seg.step(frames[0], masks[0])
    keys, nbytes = seg.bank.keys, seg.bank_bytes
    new = np.zeros((96, 128), np.uint8)
    new[70:90, 100:120] = 7
    seg.step(frames[1])
    seg.step(frames[2], new)                                  # given mask: written off schedule
    assert seg.objects == (3, 7) and seg.bank.keys is keys and seg.bank.values.shape[0] == 2
    assert sorted(set(seg.bank.origin.tolist())) == [0, 2]
    grown = seg.bank_bytes
    assert grown > nbytes
    for t in range(3, 12):
        assert set(np.unique(seg.step(frames[t]))) <= {0, 3, 7} and seg.bank_bytes == grown


def test_growable_every_k_reads_only_written_slots(tiny_export, square_clip):
    frames, masks = square_clip(11)
    seg = Segmenter(tiny_export, method="every_k", providers="cpu")
    fed = []
    run = seg._graphs.run
    seg._graphs.run = lambda name, feeds: (fed.append(feeds) if name == "readout" else None) or run(name, feeds)
    seg.step(frames[0], masks[0])
    nbytes = seg.bank_bytes
    for t in range(1, 11):
        seg.step(frames[t])
    hw = seg.bank.hw
    assert seg.bank.capacity == 8 and seg.bank_bytes == nbytes and seg.bank.memory_frames == [0, 5, 10]
    m = [f["memory_keys"].shape[2] for f in fed]
    assert m == [hw] * 5 + [2 * hw] * 5                       # frames 1–5 read 1 slot, 6–10 read 2
    assert all(f[k].flags.c_contiguous for f in fed for k in ("memory_keys", "memory_values", "valid"))


@pytest.mark.parametrize("method, params, missing", [
    ("qdmn", {}, "qam, prior_enhance"), ("qpm", {}, "qam, prior_enhance"), ("rde", {}, "sam_key, sam_value"),
    ("every_k", {"quality_gate": 0.8}, "qam"), ("lfu", {"quality_gate": 0.8}, "qam")])
def test_policy_needing_absent_heads_is_refused(tiny_export, method, params, missing):
    with pytest.raises(ManifestError, match=f"{method!r} needs graph\\(s\\) {missing}.*exported with those heads"):
        Segmenter(tiny_export, method=method, providers="cpu", **params)


# -- the QAM / SAM / prior paths of the Segmenter, on the tiny network's real head graphs ----------------


def spy_graphs(seg):
    """Record (graph name, feeds, outputs) of every graph run."""
    calls, run = [], seg._graphs.run
    seg._graphs.run = lambda name, feeds: calls.append((name, feeds, out := run(name, feeds))) or out
    return calls


def test_qdmn_through_the_segmenter_with_qam(heads_export, square_clip):
    frames, masks = square_clip(14, label=2)
    seg = Segmenter(heads_export, method="qdmn", providers="cpu", beta=1, sigma=0.0)
    calls = spy_graphs(seg)
    memory, qam_ms = [], []
    for t, frame in enumerate(frames):
        seg.step(frame, masks[0] if t == 0 else None)
        memory.append(seg.bank.memory_frames)
        qam_ms.append(seg.timings["qam"])
    scored, frame_of = {}, -1
    for name, feeds, outputs in calls:
        frame_of += name == "key_encoder"
        if name == "qam":
            scored[frame_of] = outputs[0]
            assert outputs[0].shape == (1,) and 0 <= outputs[0][0] <= 1
    assert sorted(scored) == [0, 5, 10]              # scores only when a write is due
    assert sum(name == "value_encoder" for name, _, _ in calls) == 3   # the scored value is the one written
    assert memory == algorithm1(lambda t: scored[t], (), 14, sigma=0.0, beta=1)
    assert memory[-1] == [0, 10]                                      # β = 1: frame 10 replaced frame 5
    assert [t for t, ms in enumerate(qam_ms) if ms > 0] == [0, 5, 10]


@pytest.mark.parametrize("quality, prior_of_2", [(0.5, "first"), (0.9, "previous")])
def test_qpm_feeds_the_selected_prior(heads_export, square_clip, quality, prior_of_2):
    frames, masks = square_clip(3)
    seg = Segmenter(heads_export, method="qpm", providers="cpu")          # σ_en = 0.65 (QPM Eq. 4)
    seg.policy.quality = lambda t, scores: 1.0 if t == 0 else quality   # scripted S̄A_t (σ_en ∈ [0, 1])
    calls = spy_graphs(seg)
    for t, frame in enumerate(frames):
        seg.step(frame, masks[0] if t == 0 else None)
    priors = [feeds["prior"] for name, feeds, _ in calls if name == "prior_enhance"]
    geo = seg.geometry
    first = (geo.label_map(masks[0]) > 0).astype(np.float32)
    assert all(p.shape == (1, 1, geo.padded_h, geo.padded_w) and p.dtype == np.float32 for p in priors)
    assert np.array_equal(priors[0][0, 0], first)               # frame 0: its own annotation
    assert np.array_equal(priors[1][0, 0], first)               # frame 1: its previous frame is the first
    assert np.array_equal(priors[2][0, 0], first) == (prior_of_2 == "first")   # else frame 1's prediction
    assert 0 <= priors[2].min() <= priors[2].max() <= 1
    assert sum(name == "qam" for name, _, _ in calls) == 3 and seg.bank.memory_frames == [0, 2]


def test_rde_through_the_segmenter_with_sam(heads_export, square_clip):
    frames, masks = square_clip(8)
    seg = Segmenter(heads_export, method="rde", providers="cpu")
    assert seg.top_k == 40 and Segmenter(heads_export, method="rde", providers="cpu", top_k=7).top_k == 7
    seg.step(frames[0], masks[0])
    initial, nbytes = arrays(seg.bank), seg.bank_bytes
    first = seg.bank.slot(2)[0].copy()
    assert np.array_equal(seg.bank.slot(3)[0], first) and seg.bank.frames.tolist() == [-1, -1, 0, 0]
    rde = first
    for t in range(1, 8):
        seg.step(frames[t])
        if t % 3 == 0:
            rde = (rde + seg.bank.slot(1)[0]) / 2               # fresh SAM: mean(RDE, new memory frame)
            assert seg.timings["sam"] > 0
        np.testing.assert_allclose(seg.bank.slot(0)[0], rde if t >= 3 else 0, rtol=1e-4, atol=1e-5)
        assert all(a is b for a, b in zip(arrays(seg.bank), initial)) and seg.bank_bytes == nbytes
    assert seg.bank.frames.tolist() == [6, 6, 0, 0]
