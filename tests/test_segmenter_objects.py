"""Soft output (``step(..., return_probabilities=True)``), ``remove_object`` under every policy,
and the class docstring's example, on the bundled model (sdk/models/default, which has every
head) and the synthetic square clip at native size (96x128: 6x8 key features)."""
from __future__ import annotations

import doctest

import numpy as np
import pytest

import sdk.segmenter
from sdk import POLICIES, Segmenter
from sdk.errors import InputError, ParameterError
from sdk.io import VOID
from sdk.policies import QPM, Quality, QualityGate, make_policy
from sdk.prior import Priors
from sdk.soft_output import SoftOutput

METHODS = [(m, {}) for m in POLICIES] + [("every_k", {"quality_gate": 0.5})]
BLOCK = (slice(64, 92), slice(4, 40))                    # object 2: a white block, still (the bundled model
#                                                          tracks it; a small blue one at the right it loses)


@pytest.fixture(scope="module")
def make():
    """make(method, **params) → a reset Segmenter on the bundled model (kept per module)."""
    made = {}

    def build(method="every_k", **params):
        key = (method, tuple(sorted(params.items())))
        if key not in made:
            made[key] = Segmenter(method=method, providers="cpu", threads=1, resolution=None, **params)
        made[key].reset()
        return made[key]
    return build


def twins(make, method, **params):
    """Two Segmenters of the same policy (the second built anew: make keeps one per key)."""
    return make(method, **params), Segmenter(method=method, providers="cpu", threads=1, resolution=None, **params)


@pytest.fixture
def clip(square_clip):
    """8 frames with object 1 (the red square, moving) and object 2 (a white block, still)."""
    frames, masks = square_clip(8)
    for frame, mask in zip(frames, masks):
        frame[BLOCK] = 250
        mask[BLOCK] = 2
    return frames, masks


def only(mask: np.ndarray, *labels: int) -> np.ndarray:
    return np.where(np.isin(mask, labels), mask, 0).astype(np.uint8)


def argmax_labels(out: SoftOutput) -> np.ndarray:
    index = np.argmax(np.concatenate([out.background[None], out.probabilities]), axis=0)
    return np.array([0, *out.objects], np.uint8)[index]


# -- soft output ----------------------------------------------------------------------------------
def test_probabilities_are_what_the_labels_are_the_argmax_of(make, clip):
    frames, masks = clip
    plain, soft = twins(make, "every_k")
    first = only(masks[0], 1)
    later = masks[3].copy()
    later[:12] = VOID                                   # void over part of it
    later[40:50, :20] = 3                               # a new object
    given = {0: first, 3: later}
    for t, frame in enumerate(frames):
        labels = plain.step(frame, given.get(t))
        out = soft.step(frame, given.get(t), return_probabilities=True)
        assert isinstance(out, SoftOutput) and np.array_equal(out.labels, labels)   # the same label map
        n = len(soft.objects)
        assert out.objects == soft.objects == ((1,) if t < 3 else (1, 2, 3))
        assert out.probabilities.shape == (n, 96, 128) and out.probabilities.dtype == np.float32
        assert out.background.shape == (96, 128) and out.background.dtype == np.float32
        assert out.probabilities.min() >= 0 and out.probabilities.max() <= 1
        assert np.array_equal(argmax_labels(out), out.labels)
        if t not in given:                              # soft aggregation: channels sum to 1
            np.testing.assert_allclose(out.background + out.probabilities.sum(0), 1, atol=1e-5)
    assert {1, 2} <= set(np.unique(labels).tolist())    # objects the model tracks (not the thin band 3)


def test_a_given_mask_is_imposed_on_the_probabilities(make, clip):
    frames, masks = clip
    seg = make("every_k")
    first = seg.step(frames[0], masks[0], return_probabilities=True)
    for i, label in enumerate(first.objects):        # the first frame: exactly its mask
        assert np.array_equal(first.probabilities[i], (masks[0] == label).astype(np.float32))
    assert np.all(first.background[masks[0] > 0] == 0)
    seg.step(frames[1])
    mask = np.full((96, 128), VOID, np.uint8)
    mask[20:50, 10:60] = 1                             # object 1 given, 0 on a band, the rest void
    mask[:, :6] = 0
    free = make("every_k", k=5)                        # a twin that gets no mask on frame 2
    for t in range(2):
        free.step(frames[t], masks[0] if t == 0 else None)
    out, ref = seg.step(frames[2], mask, return_probabilities=True), free.step(frames[2], return_probabilities=True)
    one, two = out.probabilities
    assert np.all(one[mask == 1] == 1) and np.all(two[mask == 1] == 0) and np.all(out.background[mask == 1] == 0)
    assert np.all(one[mask == 0] == 0)                # the given object is absent where 0 is given
    # the other keeps its prediction, aggregated with the given one's 0 (native size: per pixel, sums to 1)
    assert np.all(two[mask == 0] > 0)
    np.testing.assert_allclose((out.background + two)[mask == 0], 1, atol=1e-5)
    void = mask == VOID
    assert np.array_equal(out.probabilities[:, void], ref.probabilities[:, void])   # the prediction, untouched
    assert np.array_equal(argmax_labels(out), out.labels)


def test_without_the_flag_no_soft_output_is_made(make, clip, monkeypatch):
    frames, masks = clip
    seg = make("every_k")
    monkeypatch.setattr(sdk.segmenter, "soft_output", lambda *a, **k: pytest.fail("soft output computed"))
    for t, frame in enumerate(frames[:3]):
        assert isinstance(seg.step(frame, masks[0] if t == 0 else None), np.ndarray)


@pytest.mark.parametrize("flag", [1, 0, "yes", None, np.array([True])])
def test_return_probabilities_takes_a_bool(make, clip, flag):
    frames, masks = clip
    seg = make("every_k")
    seg.step(frames[0], masks[0])
    with pytest.raises(ParameterError, match=r"return_probabilities must be True or False"):
        seg.step(frames[1], return_probabilities=flag)
    assert seg.frame_index == 1
    assert isinstance(seg.step(frames[1], return_probabilities=np.bool_(True)), SoftOutput)


# -- remove_object under every policy ---------------------------------------------------------------
def capture_predictions(monkeypatch, seg):
    """The decoder's per-object probabilities [N_mem,Hp,Wp] of every frame seg predicts (copies)."""
    seen, predict = [], seg._predict
    monkeypatch.setattr(seg, "_predict", lambda *a: seen.append(predict(*a).copy()) or seen[-1])
    return seen


def capture_priors(monkeypatch, seg):
    """The prior masks seg feeds to prior_enhance (copies)."""
    seen, run = [], seg._graphs.run
    monkeypatch.setattr(seg._graphs, "run", lambda name, feeds: (name == "prior_enhance" and seen.append(
        feeds["prior"].copy())) or run(name, feeds))
    return seen


@pytest.mark.parametrize("method, params", METHODS, ids=[m + ("+gate" if p else "") for m, p in METHODS])
def test_remove_object_under_every_policy(make, clip, monkeypatch, method, params):
    """Object 1 from the first frame, object 2 added mid-stream (frame 2), object 1 removed at
    frame 4: the bank keeps its bytes, object 2's rows move down and it is predicted as it
    would have been (its decoder probability equals a twin's that kept object 1, given the
    same prior), object 1 is gone from every output, then comes back from a mask as a new object."""
    frames, masks = clip
    a, b = twins(make, method, **params)
    given = {0: only(masks[0], 1), 2: only(masks[2], 2)}
    for t in range(4):
        for seg in (a, b):
            seg.step(frames[t], given.get(t))
    assert a.objects == (1, 2)
    nbytes, rows = a.bank_bytes, a.bank.values[1].copy()
    aggregate = a._priors.aggregate.copy() if a._priors.aggregate is not None else None
    a.remove_object(1)
    assert a.objects == (2,) and a.bank_bytes == nbytes and a.bank.num_objects == 1
    assert np.array_equal(a.bank.values[0], rows)                  # object 2's memory, moved down
    mine, theirs, priors = capture_predictions(monkeypatch, a), capture_predictions(monkeypatch, b), []
    if a._prior_input:                                             # b gets a's prior: the same query
        priors = capture_priors(monkeypatch, a)
        monkeypatch.setattr(b._priors, "of_frame", lambda *args: priors[-1])
    out = a.step(frames[4], return_probabilities=True)
    b.step(frames[4])
    np.testing.assert_allclose(mine[-1][0], theirs[-1][1], atol=1e-5)
    if a._prior_input:                                             # QDMN: the previous frame; QPM: it or the first
        source = a.policy.prior(4) if method == "qpm" else 3
        # frame 3's aggregate [bg, 1, 2] without object 1; frame 0's annotation held object 1 only
        expected = np.zeros_like(priors[-1][0, 0]) if source == 0 else aggregate[2]
        np.testing.assert_array_equal(priors[-1][0, 0], expected)
    assert out.objects == (2,) and out.probabilities.shape == (1, 96, 128) and 1 not in out.labels
    assert np.array_equal(argmax_labels(out), out.labels)
    assert 2 in out.labels                                         # the mid-stream object is still tracked
    monkeypatch.undo()
    assert 1 not in a.step(frames[5]) and a.bank_bytes == nbytes
    back = a.step(frames[6], only(masks[6], 1))                    # object 1 again: a new object, the freed rows
    assert a.objects == (2, 1) and a.bank_bytes == nbytes and np.array_equal(back == 1, masks[6] == 1)
    before = (a.bank.origin >= 0) & (a.bank.origin < 6)            # positions written before: no memory of it
    assert before.any() and not a.bank.values[1][:, before].any()
    out = a.step(frames[7], return_probabilities=True)
    assert out.objects == (2, 1) and set(np.unique(out.labels).tolist()) <= {0, 1, 2}
    assert np.array_equal(argmax_labels(out), out.labels)


@pytest.mark.parametrize("method, params", [("qdmn", {}), ("qpm", {}), ("every_k", {"quality_gate": 0.5})])
def test_the_quality_normalisation_forgets_a_removed_object(make, clip, method, params):
    frames, masks = clip
    seg = make(method, **params)
    seg.step(frames[0], masks[0])
    seg.step(frames[1])
    quality = seg.policy.quality
    scores = quality.first_scores.copy()
    assert len(scores) == 2 and quality.first == pytest.approx(scores[scores != 0].mean())
    seg.remove_object(1)
    quality = seg.policy.quality
    assert quality.first_scores.tolist() == scores[1:].tolist() and len(quality.last) == 1
    assert quality.first == (scores[1] if scores[1] else 1.0)
    if method == "qpm":
        assert seg.policy._previous == pytest.approx(quality.last[0] / quality.first)


# -- the policies' per-object state ------------------------------------------------------------------
def test_quality_remove():
    q = Quality()
    assert q(0, np.array([0.8, 0.4, 0.0])) == pytest.approx(0.4 / 0.6)       # 0 is left out of S̄A_1
    assert q(1, np.array([0.3, 0.6, 0.3, 0.9])) == pytest.approx(0.525 / 0.6)  # a 4th object came later
    assert q.remove(0) == pytest.approx(0.6 / 0.4) and q.first == pytest.approx(0.4)
    assert q.remove(2) == pytest.approx(0.45 / 0.4) and q.first_scores.tolist() == [0.4, 0.0]   # the later one
    assert q(2, np.array([0.2, 0.6])) == pytest.approx(1.0)
    assert q.remove(0) == pytest.approx(0.6) and q.first == 1.0              # only a 0-scored one: raw
    assert q.remove(0) is None and q.first == 1.0                            # none left: S̄A_1 stays
    nan = Quality("nan", np.float32)
    nan(0, np.array([0.5, 0.0], np.float32))
    nan.remove(0)
    assert np.isnan(nan.first)                                               # the authors' 0/0


def test_policy_remove_object_hooks():
    qpm = QPM()
    qpm.on_frame(0, np.full(8, -1), True, np.array([0.9, 0.1]))
    qpm.on_frame(1, np.array([0, -1, -1, -1, -1, -1, -1, -1]), False, np.array([0.9, 0.0]))
    assert qpm.prior(2) == 2 - 1                                             # 0.45 / 0.5 = 0.9 > σ_en
    qpm.remove_object(0)
    assert qpm._previous == pytest.approx(0.0) and qpm.prior(2) == 0         # object 2 alone: 0 / 0.1
    gate = make_policy("qpm", quality_gate=0.5)
    assert isinstance(gate, QualityGate)
    gate.on_frame(0, np.full(8, -1), True, np.array([0.9, 0.3]))
    gate.remove_object(0)
    assert gate.quality.first == pytest.approx(0.3) and gate.inner.quality.first == pytest.approx(0.3)
    for name in ("every_k", "first_latest", "lfu", "rde", "xmem", "sam2_window"):
        policy = make_policy(name)
        before = {k: np.copy(v) for k, v in vars(policy).items()}
        policy.remove_object(0)                                              # nothing per object: no change
        assert all(np.array_equal(np.copy(v), before[k]) for k, v in vars(policy).items())


def test_priors_without_an_object():
    first = np.zeros((4, 6), np.uint8)
    first[:2, :3], first[2:, 3:] = 1, 2
    agg = np.random.default_rng(0).random((3, 4, 6)).astype(np.float32)
    priors = Priors()
    from sdk.ops import Workspace
    work = Workspace()
    work.array("aggregate", agg.shape)[:] = agg
    priors.commit(0, first, (first > 0).astype(np.float32)[None, None], work.array("aggregate", agg.shape), work)
    assert priors.aggregate is not None and "aggregate" not in work._arrays   # kept, not copied
    out = priors.without(0, 1)
    assert np.array_equal(out.first[0, 0], (first == 2).astype(np.float32)) and out.first_map.max() == 2
    assert np.array_equal(out.previous[0, 0], agg[2]) and np.array_equal(priors.previous[0, 0], agg[1:].max(0))
    assert not out.without(0, 2).previous.any() and not out.without(0, 2).first.any()


# -- errors ----------------------------------------------------------------------------------------
def test_remove_object_errors_change_nothing(make, clip):
    frames, masks = clip
    seg = make("qdmn")
    with pytest.raises(InputError, match=r"unknown object id 1: .*tracked: none \(no frame with a mask yet\)"):
        seg.remove_object(1)
    seg.step(frames[0], masks[0])
    state = (seg.objects, seg.bank_bytes, seg.bank.values.copy(), seg.policy.quality.first_scores.copy(),
             seg._priors.previous.copy())
    for bad, message in [(3, r"unknown object id 3: not a tracked object \(tracked: 1, 2\)"),
                         (True, r"int label value.*got True \(bool\)"), ("1", r"got '1' \(str\)"),
                         (1.0, r"got 1.0 \(float\)")]:
        with pytest.raises(InputError, match=message):
            seg.remove_object(bad)
        assert (seg.objects, seg.bank_bytes) == state[:2] and np.array_equal(seg.bank.values, state[2])
        assert np.array_equal(seg.policy.quality.first_scores, state[3])
        assert np.array_equal(seg._priors.previous, state[4])
    seg.remove_object(np.uint8(2))                                 # NumPy ints are ids too
    assert seg.objects == (1,)


def test_removing_the_last_object_needs_a_mask_next(make, clip):
    frames, masks = clip
    seg = make("every_k", max_frames=3)
    seg.step(frames[0], only(masks[0], 1))
    seg.step(frames[1])
    nbytes = seg.bank_bytes
    seg.remove_object(1)
    assert seg.objects == () and seg.bank_bytes == nbytes and seg.frame_index == 2
    with pytest.raises(InputError, match=r"no object is tracked: remove_object removed the last one.*mask"):
        seg.step(frames[2])
    with pytest.raises(InputError, match=r"unknown object id 1: .*tracked: none \(all removed\)"):
        seg.remove_object(1)
    assert seg.frame_index == 2
    out = seg.step(frames[2], only(masks[2], 2), return_probabilities=True)
    assert out.objects == (2,) and seg.bank_bytes == nbytes and np.array_equal(out.labels, only(masks[2], 2))
    assert 2 in seg.step(frames[3])


# -- the class docstring's example ---------------------------------------------------------------------
def test_the_class_docstring_example_runs():
    tests = [t for t in doctest.DocTestFinder().find(Segmenter, "Segmenter", globs={}) if t.name == "Segmenter"]
    assert len(tests) == 1 and len(tests[0].examples) >= 10
    runner = doctest.DocTestRunner()
    runner.run(tests[0])
    assert runner.summarize(verbose=False) == (0, len(tests[0].examples))
    assert ">>> seg.remove_object(2)" in Segmenter.__doc__ and "return_probabilities=True" in Segmenter.__doc__
