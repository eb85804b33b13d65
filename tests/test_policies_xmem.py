"""The peers' memory managers as policies: XMem's working + long-term memory with consolidation
(:class:`sdk.policies.XMem`) and SAM 2's window of conditioning + recent frames
(:class:`sdk.policies.SAM2Window`).

First on a bank driven as the Segmenter drives it, with scripted usage and features that name
their frame and position, checked against the rules written out here and a direct NumPy
softmax-weighted readout; then through the Segmenter on the tiny exports: the potentiation
through the real readout graph, a long stream at constant bank bytes, the QAM gate, the heads
export, and a failing potentiation that leaves the Segmenter unchanged.
"""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sdk.segmenter
from sdk import Segmenter
from sdk.bank import MemoryBank
from sdk.errors import GraphRunError, ParameterError
from sdk.policies import LIFE0, POLICIES, Consolidate, SAM2Window, Write, XMem, make_policy


# -- references ---------------------------------------------------------------------------------
def softmax_readout(prototype_keys, keys, values, affinity="l2"):
    """Potentiation written out in float64: prototype p's value = Σ_c softmax_c(A[p, c]) · v_c
    over all C candidates, A = (2·k_pᵀk_c − ‖k_c‖²)/√C_k (STCN/XMem without shrinkage) or
    k_pᵀk_c/√C_k (dot). prototype_keys [C_k,P], keys [C_k,C], values [N,C_v,C] → [N,C_v,P]."""
    p, k, v = (np.asarray(a, np.float64) for a in (prototype_keys, keys, values))
    a = 2 * p.T @ k - (k ** 2).sum(0)[None] if affinity == "l2" else p.T @ k
    a /= math.sqrt(k.shape[0])
    w = np.exp(a - a.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)                                            # [P, C]
    return v @ w.T


def numpy_potentiate(prototype_keys, keys, values):
    return softmax_readout(prototype_keys, keys, values).astype(np.float32)


class Drive:
    """A policy on a bank (2 key channels, 1 value channel, 1 object), driven as the Segmenter
    drives it: readout usage (scripted: t → {position: usage}), then the frame's decision,
    carried out with :func:`numpy_potentiate`. Frame t's feature i has key (t, i) and value
    100·t + i, so a prototype's key names the candidate it came from."""

    def __init__(self, policy, hw):
        self.policy, self.hw = policy, hw
        self.bank = MemoryBank(2, 1)
        self.bank.allocate(policy.capacity(), hw, 1, features=policy.feature_positions())
        self.arrays = (self.bank.keys, self.bank.values, self.bank.valid, self.bank.origin)
        self.decisions = {}

    def step(self, t, given=False, usage=None):
        bank = self.bank
        if t > 0 and bank.num_valid:
            u = np.zeros(len(bank.positions))
            for position, value in (usage or {}).items():
                u[position] = value
            self.policy.on_readout(t, u)
        table = bank.positions if self.policy.per_position else bank.frames
        decision = self.policy.on_frame(t, table, t == 0 or given)
        self.decisions[t] = decision
        key = np.stack([np.full(self.hw, t), np.arange(self.hw)]).astype(np.float32)
        value = (100 * t + np.arange(self.hw, dtype=np.float32))[None, None]
        self.before = (bank.keys.copy(), bank.values.copy())
        bank.apply(decision, key, value, t, potentiate=numpy_potentiate)
        return decision

    def working(self):
        return sorted(f for f in self.bank.frames.tolist() if f >= 0)

    def long_term(self):
        return self.bank.positions[len(self.bank.positions) - self.policy.feature_positions():]


# -- the bank: feature positions after the slots, clearing ----------------------------------------
def test_bank_holds_feature_positions_after_its_slots():
    bank = MemoryBank(2, 1, temporary=True)
    bank.allocate(2, hw=3, num_objects=1, features=4)      # temporary slot, 2 slots, 4 feature positions
    assert len(bank.valid) == 3 + 6 + 4 and len(bank.positions) == 10 and bank.frames.tolist() == [-1, -1]
    assert bank.capacity == 2 and bank.features == 4 and bank.bank_bytes == 4 * 13 * (2 + 1 + 1) + 8 * 13
    key, value = np.ones((2, 4), np.float32), np.full((1, 1, 4), 7, np.float32)
    bank.write(np.array([6, 7, 8, 9]), key, value, frame=5)                 # the feature positions
    bank.write(1, np.ones((2, 3), np.float32), np.ones((1, 1, 3), np.float32), frame=6)
    assert bank.frames.tolist() == [-1, 6] and bank.origin.tolist() == [-1] * 6 + [6] * 3 + [5] * 4
    with pytest.raises(IndexError, match="outside the bank's 10 live positions"):
        bank.write(np.array([10]), key[:, :1], value[:, :, :1], frame=7)
    bank.clear(np.array([7, 9]))
    bank.clear(1)
    assert bank.origin.tolist() == [-1] * 9 + [5, -1, 5, -1] and bank.valid.tolist() == [0] * 9 + [1, 0, 1, 0]
    bank.add_objects(1)
    assert bank.values.shape == (2, 1, 13) and bank.values[0, 0, 9:].tolist() == [7] * 4
    bank.apply(Write(slots=(0,), clear=(1,)), np.ones((2, 3), np.float32), np.ones((2, 1, 3), np.float32), frame=8)
    assert bank.frames.tolist() == [8, -1]
    with pytest.raises(ValueError, match="growable"):
        MemoryBank(2, 1, growable=True).allocate(2, hw=3, num_objects=1, features=4)


# -- XMem: working memory, usage, consolidation, long-term eviction -----------------------------
def test_xmem_writes_every_k_frames_since_the_last_write_and_given_frames():
    drive = Drive(XMem(k=3, max_frames=20, long_term_elements=128), hw=1)
    written = [t for t in range(14) if drive.step(t, given=t in (4, 9)) is not None]
    assert written == [0, 3, 4, 7, 9, 12]                # the count restarts at a given frame (XMem's last_mem_ti)
    assert drive.working() == written and all(a is b for a, b in zip(drive.arrays, (
        drive.bank.keys, drive.bank.values, drive.bank.valid, drive.bank.origin)))


def test_xmem_usage_is_count_over_life_reset_at_every_write():
    policy = XMem(k=2, max_frames=20, long_term_elements=128)
    drive = Drive(policy, hw=2)
    drive.step(0)
    drive.step(1, usage={0: 3, 1: 1})
    drive.step(2, usage={0: 1})                          # frame 2 written into positions 2, 3
    assert np.allclose(policy.usage()[:2], [4 / (2 + LIFE0), 1 / (2 + LIFE0)])
    assert policy.count[2:4].tolist() == [0, 0] and policy.life[2:4].tolist() == [LIFE0, LIFE0]
    drive.step(3, usage={0: 2, 2: 5, 3: 1})
    assert np.allclose(policy.usage()[:4], [6 / 3, 1 / 3, 5 / 1, 1 / 1], rtol=1e-6)


def consolidating_clip():
    """XMem(k=1, T_min=2, T_max=4, P=3, L_max=6) on hw = 2 (working positions 0–7, long-term 8–13)
    over frames 0–3, with usage that raw counts and normalised usage rank differently."""
    policy = XMem(k=1, min_frames=2, max_frames=4, num_prototypes=3, long_term_elements=6)
    drive = Drive(policy, hw=2)
    for t, usage in enumerate([None, {0: 1}, {2: 5, 3: 1}, {3: 1, 4: 3}]):
        drive.step(t, usage=usage)
    return policy, drive


def test_xmem_consolidation_turns_the_most_used_candidates_into_prototypes():
    policy, drive = consolidating_clip()
    decision = drive.decisions[3]
    assert isinstance(decision, Write) and decision.slots == (3,) and isinstance(decision.consolidate, Consolidate)
    c = decision.consolidate
    # candidates: all but the first frame and the newest T_min − 1 = 1 frame (3) → frames 1, 2 = positions 2–5
    assert c.candidates.tolist() == [2, 3, 4, 5]
    # usage = count / life: position 2 5/2, 3 2/2, 4 3/1, 5 0/1 → 4, 2, 3 (raw counts would put 2 first)
    assert c.candidates[c.prototypes].tolist() == [4, 2, 3]
    assert c.targets.tolist() == [8, 9, 10] and c.evict.tolist() == []
    assert drive.working() == [0, 3] and drive.bank.num_valid == 4 + 3
    assert drive.long_term().tolist() == [2, 1, 1, -1, -1, -1]        # each prototype's key's frame
    bank = drive.bank
    assert bank.keys[:, 8:11].tolist() == [[2, 1, 1], [0, 0, 1]]       # the candidates' keys (frame, position)
    old_keys, old_values = drive.before
    expected = softmax_readout(old_keys[:, [4, 2, 3]], old_keys[:, 2:6], old_values[:, :, 2:6])
    np.testing.assert_allclose(bank.values[:, :, 8:11], expected, rtol=1e-6)
    assert 100 < bank.values[0, 0, 8] < 201                           # a mix of frames 1 and 2, not a copy
    assert bank.valid[2:6].tolist() == [0] * 4 and bank.origin[2:6].tolist() == [-1] * 4
    assert policy.count[8:11].tolist() == [0] * 3 and policy.life[8:11].tolist() == [LIFE0] * 3


def test_xmem_long_term_drops_its_least_used_elements_and_their_ties():
    _, drive = consolidating_clip()                       # prototypes at 8–10 (t = 3)
    drive.step(4)
    drive.step(5)                                         # working 0, 3, 4, 5 → prototypes at 11–13
    assert drive.decisions[5].consolidate.evict.tolist() == []         # 3 held = L_max − P: nothing to drop
    assert drive.decisions[5].consolidate.targets.tolist() == [11, 12, 13] and drive.working() == [0, 5]
    drive.step(6)
    drive.step(7, usage={10: 2, 13: 3})                   # usage 8: 0, 9: 0, 10: 2/4, 11: 0, 12: 0, 13: 3/2
    c = drive.decisions[7].consolidate
    # 6 held ≥ L_max − P = 3: the 3 least used go, and every other one tied with the 3rd (usage 0)
    assert c.evict.tolist() == [8, 9, 11, 12]
    assert c.targets.tolist() == [8, 9, 11]               # the lowest empty positions
    assert drive.long_term().tolist() == [5, 5, 1, 6, -1, 4]           # 10 and 13 survive; 12 stays empty
    assert drive.working() == [0, 7] and drive.bank.num_valid == 2 * 2 + 5


def test_xmem_with_t_min_1_consolidates_the_frame_just_written():
    policy = XMem(k=1, min_frames=1, max_frames=2, num_prototypes=2, long_term_elements=4)
    drive = Drive(policy, hw=2)
    drive.step(0)
    drive.step(1, usage={0: 1})
    c = drive.decisions[1].consolidate
    assert c.candidates.tolist() == [2, 3] and drive.working() == [0]   # frame 1 went straight to long-term
    assert drive.long_term().tolist() == [1, 1, -1, -1]
    keys = np.array([[1, 1], [0, 1]], np.float32)                       # frame 1's features, not the bank's zeros
    np.testing.assert_allclose(drive.bank.values[:, :, 4:6],
                               softmax_readout(keys[:, c.prototypes], keys, [[[100, 101]]]), rtol=1e-6)


def test_xmem_prototypes_are_bounded_by_the_candidates():
    drive = Drive(XMem(k=1, min_frames=1, max_frames=2, num_prototypes=128, long_term_elements=200), hw=3)
    for t in range(3):
        drive.step(t)
    assert [len(drive.decisions[t].consolidate.targets) for t in (1, 2)] == [3, 3]
    assert drive.bank.num_valid == 3 + 6


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 3), t_min=st.integers(1, 4), extra=st.integers(1, 3), p=st.integers(1, 5),
       room=st.integers(0, 6), hw=st.integers(1, 3), n=st.integers(1, 60), seed=st.integers(0, 99),
       given_at=st.sets(st.integers(1, 59), max_size=5))
def test_xmem_invariants_on_any_stream(k, t_min, extra, p, room, hw, n, seed, given_at):
    """Whatever the usage: the first frame stays, working memory never exceeds T_max frames, the
    long-term memory never exceeds L_max, nothing is reallocated, every write leaves the working
    memory with < T_max frames, and the newest T_min − 1 frames are never candidates."""
    policy = XMem(k=k, min_frames=t_min, max_frames=t_min + extra, num_prototypes=p, long_term_elements=p + room)
    drive = Drive(policy, hw)
    rng = np.random.default_rng(seed)
    for t in range(n):
        usage = dict(enumerate(rng.integers(0, 3, len(drive.bank.positions))))
        before = drive.working()
        decision = drive.step(t, given=t in given_at, usage=usage)
        working = drive.working()
        assert working[0] == 0 and len(working) < policy.max_frames
        assert np.count_nonzero(drive.long_term() >= 0) <= policy.long_term_elements
        if isinstance(decision, Write):
            candidates = sorted(set(drive.bank.frames[decision.consolidate.candidates // hw].tolist()) - {-1})
            assert candidates == [] and working == [0, *([*before, t][-(t_min - 1):] if t_min > 1 else [])]
    assert all(a is b for a, b in zip(drive.arrays, (drive.bank.keys, drive.bank.values, drive.bank.valid,
                                                      drive.bank.origin)))


# -- SAM 2: conditioning frames + a FIFO of the recent ones ----------------------------------------
def sam2_reference(n, given_at, num_recent, max_conditioning):
    """Memory after each frame written out: conditioning frames (the first; given frames, the
    oldest non-first one leaving when there are more than ``max_conditioning``) ∪ the other frames
    among the last ``num_recent``."""
    conditioning, recent, out = [0], [], []
    for t in range(n):
        if t > 0:
            if t in given_at and max_conditioning > 1:
                if len(conditioning) == max_conditioning:
                    conditioning.remove(min(conditioning[1:]))
                conditioning.append(t)
            else:
                recent.append(t)
        recent = [f for f in recent if f > t - num_recent]
        out.append(sorted(conditioning + recent))
    return out


def test_sam2_window_keeps_the_conditioning_frames_and_the_last_n():
    policy = SAM2Window(num_recent=3, max_conditioning=3)
    drive = Drive(policy, hw=2)
    memory = []
    for t in range(12):
        drive.step(t, given=t in (2, 5, 9))
        memory.append(drive.bank.memory_frames)
    assert memory[4] == [0, 2, 3, 4]                      # frame 2 given: read once, as a conditioning frame
    assert memory[5] == [0, 2, 3, 4, 5]
    assert memory[6] == [0, 2, 4, 5, 6]                   # window 4–6: frame 3 left though a slot was free
    assert memory[8] == [0, 2, 5, 6, 7, 8]
    assert memory[9] == [0, 5, 7, 8, 9]                   # a 4th conditioning frame: the oldest non-first (2) goes
    assert memory[11] == [0, 5, 9, 10, 11]
    assert memory == sam2_reference(12, {2, 5, 9}, 3, 3)
    assert policy.capacity() == 6 and drive.bank.capacity == 6


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 50), given_at=st.sets(st.integers(1, 49), max_size=10), num_recent=st.integers(1, 7),
       max_conditioning=st.integers(1, 4), hw=st.integers(1, 2))
def test_sam2_window_matches_the_reference(n, given_at, num_recent, max_conditioning, hw):
    drive = Drive(SAM2Window(num_recent, max_conditioning), hw)
    memory = []
    for t in range(n):
        drive.step(t, given=t in given_at)
        memory.append(drive.bank.memory_frames)
        assert drive.bank.num_valid == hw * len(memory[-1])           # no frame held twice
    assert memory == sam2_reference(n, given_at, num_recent, max_conditioning)
    assert all(a is b for a, b in zip(drive.arrays, (drive.bank.keys, drive.bank.values, drive.bank.valid,
                                                      drive.bank.origin)))


# -- parameters ---------------------------------------------------------------------------------
def test_defaults_and_registration():
    x, s = make_policy("xmem"), make_policy("sam2_window")
    assert (x.k, x.min_frames, x.max_frames, x.num_prototypes, x.long_term_elements) == (5, 5, 10, 128, 10_000)
    assert (x.capacity(), x.feature_positions(), x.per_position, x.per_feature, x.growable) == (10, 10_000, True,
                                                                                                False, False)
    assert (s.num_recent, s.max_conditioning, s.capacity(), s.feature_positions(), s.per_position) == (6, 4, 10, 0,
                                                                                                       False)
    assert POLICIES["xmem"] is XMem and POLICIES["sam2_window"] is SAM2Window
    gated = make_policy("xmem", quality_gate=0.5)
    assert gated.feature_positions() == 10_000 and gated.per_position and gated.requires == ("qam",)


@pytest.mark.parametrize("method, params, message", [
    ("xmem", {"k": 0}, r"xmem: k must be an int ≥ 1 \(XMem's mem_every\), got 0 \(int\)"),
    ("xmem", {"k": 5.0}, r"xmem: k .*got 5.0 \(float\); write 5"),
    ("xmem", {"min_frames": 0}, r"xmem: min_frames must be an int ≥ 1"),
    ("xmem", {"max_frames": 1}, r"xmem: max_frames must be an int ≥ 2"),
    ("xmem", {"max_frames": 5}, r"xmem: max_frames must be an int > min_frames = 5 .*got 5 \(int\)"),
    ("xmem", {"min_frames": 10}, r"xmem: min_frames must be an int in \[1, 9\] .*got 10 \(int\)"),
    ("xmem", {"min_frames": 12, "max_frames": 10}, r"xmem: min_frames must be an int in \[1, 9\]"),
    ("xmem", {"long_term_elements": 100}, r"xmem: long_term_elements must be an int ≥ num_prototypes = 128"),
    ("xmem", {"num_prototypes": 20_000}, r"xmem: num_prototypes must be an int in \[1, 10000\]"),
    ("xmem", {"num_prototypes": True}, r"xmem: num_prototypes .*got True \(bool\)"),
    ("xmem", {"long_term_elements": "10000"}, r"long_term_elements .*got '10000' \(str\); pass the number"),
    ("sam2_window", {"num_recent": 0}, r"sam2_window: num_recent must be an int ≥ 1 \(SAM 2: 6\), got 0"),
    ("sam2_window", {"max_conditioning": 2.5}, r"sam2_window: max_conditioning .*got 2.5 \(float\)"),
    ("sam2_window", {"k": 5}, r"policy 'sam2_window' takes no parameter k; it takes: num_recent, max_conditioning"),
    ("sam2_window", {"quality_gate": 1.5}, r"sam2_window: quality_gate must be a finite number in \[0, 1\]"),
])
def test_parameters_are_checked(method, params, message):
    with pytest.raises(ParameterError, match=message) as error:
        make_policy(method, **params)
    assert error.value.owner == method and error.value.parameter in params


# -- through the Segmenter ----------------------------------------------------------------------
def test_potentiation_through_the_readout_graph_matches_numpy(tiny_export, monkeypatch):
    seg = Segmenter(tiny_export, method="xmem", providers="cpu", threads=1)
    rng = np.random.default_rng(0)
    ck, cv, n, c = seg.manifest.key_channels, seg.manifest.value_channels, 2, 37
    keys = rng.normal(size=(ck, c)).astype(np.float32)
    values = rng.normal(size=(n, cv, c)).astype(np.float32)
    prototypes = keys[:, [3, 30, 7, 0, 1, 2, 5, 9, 11, 20, 36]]
    expected = softmax_readout(prototypes, keys, values)
    seg._graphs.run_ms.clear()
    np.testing.assert_allclose(seg._potentiate(prototypes, keys, values), expected, rtol=1e-4, atol=1e-5)
    assert seg._graphs.run_ms["readout"] > 0                 # the readout stage's session time
    calls, run = [], seg._graphs.run
    monkeypatch.setattr(seg._graphs, "run",
                        lambda name, feeds: calls.append(feeds["query_key"].shape) or run(name, feeds))
    monkeypatch.setattr(sdk.segmenter, "POTENTIATION_FLOATS", 4 * c * (n * cv + 2))    # 4 prototypes a call
    np.testing.assert_allclose(seg._potentiate(prototypes, keys, values), expected, rtol=1e-4, atol=1e-5)
    assert calls == [(1, ck, 1, 4), (1, ck, 1, 4), (1, ck, 1, 3)]


def test_per_object_potentiation_uses_each_objects_keys(tiny_export, tmp_path):
    """Per-object keys (STM/QDMN exports): one readout per object, with the export's dot-product
    affinity, through QDMN's readout exported to ONNX."""
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    from training.authors.qdmn import QDMN as QDMNNet

    class Readout(torch.nn.Module):
        def forward(self, *inputs):
            return QDMNNet.readout(*inputs)

    rng = np.random.default_rng(1)
    ck, cv, n, c = 8, 5, 3, 20
    keys = rng.normal(size=(n, ck, c)).astype(np.float32)
    values = rng.normal(size=(n, cv, c)).astype(np.float32)
    prototypes = keys[:, :, [4, 0, 19, 7, 8, 2]]
    path = tmp_path / "readout.onnx"
    feeds = {"query_key": prototypes[0][None, :, None], "memory_keys": keys, "memory_values": values,
             "valid": np.ones(c, np.float32), "top_k": np.array(c, np.int64)}
    with warnings.catch_warnings():                       # the exporter's deprecation and tracer notes
        warnings.simplefilter("ignore")
        torch.onnx.export(Readout(), tuple(torch.from_numpy(np.asarray(v)) for v in feeds.values()), str(path),
                          input_names=list(feeds), output_names=["readout", "usage"], opset_version=17, dynamo=False,
                          dynamic_axes={"query_key": {2: "h", 3: "w"}, "memory_keys": {0: "N", 2: "M"},
                                        "memory_values": {0: "N", 2: "M"}, "valid": {0: "M"}, "readout": {0: "N"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    seg = Segmenter(tiny_export, method="xmem", providers="cpu", threads=1)
    seg._object_keys = True
    seg._graphs = type("Graphs", (), {"run": staticmethod(lambda name, f: session.run(None, f))})()
    out = seg._potentiate(prototypes, keys, values)
    for i in range(n):
        np.testing.assert_allclose(out[i:i + 1], softmax_readout(prototypes[i], keys[i], values[i:i + 1], "dot"),
                                   rtol=1e-4, atol=1e-5)


def record_decisions(seg):
    """Wrap seg.bank.apply: (frame, decision, keys and values before the write) of every write."""
    log, apply = [], seg.bank.apply

    def spy(decision, key, value, frame, *args):
        log.append((frame, decision, seg.bank.keys.copy(), seg.bank.values.copy(), seg.bank.offset * seg.bank.hw))
        return apply(decision, key, value, frame, *args)
    seg.bank.apply = spy
    return log


@pytest.mark.parametrize("temporary", [False, True])
def test_xmem_consolidates_through_the_segmenter(tiny_export, square_clip, temporary):
    frames, masks = square_clip(9)
    seg = Segmenter(tiny_export, method="xmem", providers="cpu", threads=1, temporary_memory=temporary,
                    k=2, min_frames=2, max_frames=3, num_prototypes=6, long_term_elements=20)
    seg.step(frames[0], masks[0])
    log = record_decisions(seg)
    for frame in frames[1:]:
        seg.step(frame)
    hw, bank = seg.bank.hw, seg.bank
    assert hw == 24 and bank.capacity == 3 and bank.features == 20 and seg.temporary_memory == temporary
    # writes 0, 2, 4, …: from the third on, each brings working memory to T_max = 3 frames and
    # consolidates its oldest non-first frame (T_min − 1 = 1 newest frame stays with the first)
    consolidations = [entry for entry in log if isinstance(entry[1], Write)]
    assert [t for t, *_ in consolidations] == [4, 6, 8]
    _, decision, keys, values, offset = consolidations[-1]
    c = decision.consolidate
    assert c.candidates.tolist() == list(range(hw, 2 * hw))           # frame 6, in slot 1
    assert len(c.prototypes) == 6 and c.evict.tolist() == []
    cand = c.candidates + offset
    expected = softmax_readout(keys[:, cand[c.prototypes]], keys[:, cand], values[:, :, cand])
    target = c.targets + offset
    np.testing.assert_allclose(bank.values[:, :, target], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(bank.keys[:, target], keys[:, cand[c.prototypes]])
    assert sorted(set(bank.frames.tolist()) - {-1}) == [0, 8]
    long_term = bank.positions[3 * hw:]
    assert sorted(long_term[long_term >= 0].tolist()) == [2] * 6 + [4] * 6 + [6] * 6
    assert seg.timings["readout"] > 0


@pytest.mark.parametrize("method, params", [
    ("xmem", {"k": 2, "min_frames": 2, "max_frames": 4, "num_prototypes": 16, "long_term_elements": 40}),
    ("sam2_window", {"num_recent": 4, "max_conditioning": 2}),
])
def test_bank_bytes_are_constant_over_a_long_stream(tiny_export, square_clip, method, params):
    frames, masks = square_clip(300)
    seg = Segmenter(tiny_export, method=method, providers="cpu", threads=1, **params)
    seg.step(frames[0], masks[0])
    bank = seg.bank
    arrays, nbytes = (bank.keys, bank.values, bank.valid, bank.origin), seg.bank_bytes
    positions = bank.capacity * bank.hw + bank.features + bank.offset * bank.hw
    assert nbytes == 4 * positions * (16 + 32 + 1) + 8 * positions      # C_k 16, C_v 32, 1 object; origin int64
    held = []
    for t in range(1, 300):
        seg.step(frames[t], masks[t] if t in (101, 201) else None)
        assert seg.bank_bytes == nbytes and all(a is b for a, b in zip(arrays, (bank.keys, bank.values, bank.valid,
                                                                                 bank.origin)))
        held.append(bank.num_valid)
    if method == "xmem":
        assert bank.positions[:bank.hw].tolist() == [0] * bank.hw and max(held) <= 4 * bank.hw + 40
        assert np.count_nonzero(bank.positions[4 * bank.hw:] >= 0) >= 16    # long-term memory in use
        assert max(bank.positions[4 * bank.hw:]) >= 280                       # refreshed: evictions happened
    else:
        assert bank.memory_frames == [0, 201, 296, 297, 298, 299] and max(held) == 6 * bank.hw


@pytest.mark.parametrize("method", ["xmem", "sam2_window"])
def test_quality_gate_and_heads_export(heads_export, square_clip, method):
    frames, masks = square_clip(12)
    seg = Segmenter(heads_export, method=method, providers="cpu", threads=1, quality_gate=0.5,
                    **({"k": 1, "min_frames": 2, "max_frames": 3, "num_prototypes": 4, "long_term_elements": 8}
                       if method == "xmem" else {"num_recent": 2}))
    seg.policy.quality = lambda t, scores: 1.0 if t == 0 or t % 3 else 0.1     # scripted S̄A_t: every 3rd frame fails
    working, long_term = [], []
    for t, frame in enumerate(frames):
        out = seg.step(frame, masks[0] if t == 0 else None)
        assert out.shape == (96, 128) and set(np.unique(out)) <= {0, 1}
        working.append(sorted(set(seg.bank.frames.tolist()) - {-1}))
        long_term.append(set(seg.bank.positions[len(seg.bank.frames) * seg.bank.hw:].tolist()) - {-1})
    assert all(t not in seg.bank.memory_frames for t in (3, 6, 9))
    if method == "sam2_window":                           # the gated frames are not seen: the window waits
        assert working[:9] == [[0], [0, 1], [0, 1, 2], [0, 1, 2], [0, 4], [0, 4, 5], [0, 4, 5], [0, 7], [0, 7, 8]]
    else:                                         # k = 1: every frame due; from the 3rd, each write consolidates
        assert working[:9] == [[0], [0, 1], [0, 2], [0, 2], [0, 4], [0, 5], [0, 5], [0, 7], [0, 8]]
        assert long_term[2] == {1} and long_term[4] == {1, 2} and 4 in long_term[5] and 5 in long_term[7]
        assert seg.bank.features == 8 and all(3 not in lt and 6 not in lt for lt in long_term)


def test_a_failing_potentiation_changes_nothing(tiny_export, square_clip, monkeypatch):
    frames, masks = square_clip(5)
    params = {"method": "xmem", "providers": "cpu", "threads": 1, "k": 1, "min_frames": 2, "max_frames": 3,
              "num_prototypes": 4, "long_term_elements": 8}
    a, b = Segmenter(tiny_export, **params), Segmenter(tiny_export, **params)
    for t in range(2):                                    # frames 0, 1 in working memory; frame 2 consolidates
        for seg in (a, b):
            seg.step(frames[t], masks[0] if t == 0 else None)
    run = a._graphs.run

    def nan_potentiation(name, feeds):
        out = run(name, feeds)
        potentiation = name == "readout" and feeds["query_key"].shape[2] == 1          # prototypes: 1 × q queries
        return [np.full_like(out[0], np.nan), out[1]] if potentiation else out
    monkeypatch.setattr(a._graphs, "run", nan_potentiation)
    with pytest.raises(GraphRunError, match=r"graph 'readout' returned .* NaN .*'potentiation'.* at frame 2"):
        a.step(frames[2])
    monkeypatch.setattr(a._graphs, "run", run)
    for name in ("keys", "values", "valid", "origin"):
        assert np.array_equal(getattr(a.bank, name), getattr(b.bank, name)), name
    assert a.frame_index == b.frame_index == 2 and np.array_equal(a.policy.count, b.policy.count)
    for t in range(2, 5):
        assert np.array_equal(a.step(frames[t]), b.step(frames[t]))
    assert np.array_equal(a.bank.values, b.bank.values) and a.bank.memory_frames == b.bank.memory_frames
