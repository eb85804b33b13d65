"""Parameters (issue 13, item 4): every memory-policy parameter and Segmenter argument is type-
and range-checked (ParameterError naming the policy, the parameter, the value, its type and the
range), and vos-segment / vos-eval / vos-bench take policy parameters as --param NAME=VALUE with
the same checks. Runs on the bundled model (a refused Segmenter fails before any graph loads)."""
from __future__ import annotations

import inspect
import json
import math
from fractions import Fraction

import click
import numpy as np
import pytest
from click.testing import CliRunner
from fake_segmenter import CopyFirstSegmenter
from hypothesis import given, settings
from hypothesis import strategies as st

import sdk
import sdk.segmenter
from benchmarks import bench, runs
from benchmarks import eval as vos_eval
from sdk import cli
from sdk.errors import InputError, ManifestError, ParameterError
from sdk.manifest import DEFAULT_MODEL_DIR
from sdk.params import (
    MIN_FEATURE_ROWS,
    parse_assignment,
    parse_assignments,
    parse_value,
)
from sdk.policies import POLICIES, QDMN, QPM, EveryK, QualityGate, make_policy

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "manifest.json").is_file(), reason="no bundled model")

SIGMA_RANGE = r"a finite number in \[0, 1\]"


# --- the policies ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, params, message", [
    # the cases
    ("qdmn", {"sigma": 1.5}, rf"qdmn: sigma must be {SIGMA_RANGE}.*, got 1.5 \(float\)"),
    ("every_k", {"quality_gate": 2}, rf"every_k: quality_gate must be {SIGMA_RANGE}.*, got 2 \(int\)"),
    ("qdmn", {"sigma": math.nan}, rf"qdmn: sigma must be {SIGMA_RANGE}.*, got nan \(float\)"),
    ("qpm", {"sigma_m": math.inf}, rf"qpm: sigma_m must be {SIGMA_RANGE}.*, got inf \(float\)"),
    ("qpm", {"sigma_en": -math.inf}, rf"qpm: sigma_en must be {SIGMA_RANGE}.*, got -inf \(float\)"),
    ("lfu", {"quality_gate": math.nan}, r"lfu: quality_gate must be a finite number.*, got nan \(float\)"),
    ("every_k", {"k": 2.5}, r"every_k: k must be an int ≥ 1, got 2.5 \(float\)$"),
    ("every_k", {"k": "5"}, r"every_k: k must be an int ≥ 1, got '5' \(str\); pass the number 5, not a string"),
    ("lfu", {"k": True}, r"lfu: k must be an int ≥ 1, got True \(bool\)"),
    ("every_k", {"k": -1}, r"every_k: k must be an int ≥ 1, got -1 \(int\)"),
    ("qdmn", {"sigma": -0.1}, rf"qdmn: sigma must be {SIGMA_RANGE}.*, got -0.1 \(float\)"),
    # integral floats are not counts; the fix is named
    ("every_k", {"k": 5.0}, r"every_k: k must be an int ≥ 1, got 5.0 \(float\); write 5: a count takes no float"),
    ("rde", {"theta": np.float64(3)}, r"rde: theta must be an int ≥ 1, got .*3.0.* \(float64\); write 3"),
    ("every_k", {"k": np.bool_(True)}, r"every_k: k must be an int ≥ 1, got .*True.* \(bool_?\)"),
    # minimums and the other types
    ("every_k", {"max_frames": 1}, r"every_k: max_frames must be an int ≥ 2 or None \(the first frame \+ one more\)"),
    ("every_k", {"initial_slots": 0}, r"every_k: initial_slots must be an int ≥ 1, got 0"),
    ("qpm", {"initial_slots": 1}, r"qpm: initial_slots must be an int ≥ 2 \(the first \+ the latest frame\), got 1"),
    ("qpm", {"max_frames": 1}, r"qpm: max_frames must be an int ≥ 2 or None"),
    ("qpm", {"interval": 0}, r"qpm: interval must be an int ≥ 1, got 0"),
    ("qdmn", {"beta": 0}, r"qdmn: beta must be an int ≥ 1, got 0"),
    ("qdmn", {"interval": None}, r"qdmn: interval must be an int ≥ 1, got None \(NoneType\)"),
    ("lfu", {"capacity_frames": 0}, r"lfu: capacity_frames must be an int ≥ 1, got 0"),
    ("rde", {"top_k": 0}, r"rde: top_k must be an int ≥ 1, got 0"),
    ("qdmn", {"schedule": "Paper"}, r"qdmn: schedule must be one of 'paper', 'authors', got 'Paper' \(str\)"),
    ("qdmn", {"schedule": 1}, r"qdmn: schedule must be one of 'paper', 'authors', got 1 \(int\)"),
    ("qdmn", {"sigma": "0.8"}, rf"qdmn: sigma must be {SIGMA_RANGE}.*, got '0.8' \(str\)"),
    ("qdmn", {"sigma": Fraction(1, 2)}, r"qdmn: sigma must be .*\(Fraction\)"),
    ("first_latest", {"quality_gate": True}, r"first_latest: quality_gate must be .*, got True \(bool\)"),
    ("every_k", {"quality_gate": 10 ** 400}, r"every_k: quality_gate must be .*\(int\)"),   # beyond float
    # names
    ("every_k", {"sigma": 0.8}, (r"policy 'every_k' takes no parameter sigma; it takes: k, max_frames, "
                                 r"initial_slots, quality_gate")),
])
def test_make_policy_refuses_with_policy_parameter_value_type_and_range(method, params, message):
    with pytest.raises(ParameterError, match=message) as caught:
        make_policy(method, **params)
    (name, value), = params.items()
    assert caught.value.parameter == name and caught.value.owner == method
    assert caught.value.value is value
    assert isinstance(caught.value, InputError) and isinstance(caught.value, ValueError)   # what callers caught


@pytest.mark.parametrize("method", ["cutie", "", 5, None, ["every_k"], {"every_k": 1}])
def test_unknown_or_unhashable_methods_are_parameter_errors(method):
    with pytest.raises(ParameterError, match="unknown memory policy .*; known: every_k, first_latest, qdmn, lfu"):
        make_policy(method)


def test_edge_values_are_accepted_and_reach_the_policy():
    q = make_policy("qdmn", interval=1, sigma=0, beta=1, schedule="authors")
    assert (q.interval, q.sigma, q.beta, q.schedule, q.capacity()) == (1, 0.0, 1, "authors", 3)
    assert type(q.sigma) is float
    q = make_policy("qdmn", sigma=1, interval=np.int64(7), beta=np.uint8(3))
    assert (q.sigma, q.interval, q.beta) == (1.0, 7, 3) and type(q.interval) is int and type(q.beta) is int
    e = make_policy("every_k", k=1, max_frames=2, initial_slots=1)
    assert (e.k, e.max_frames, e.initial_slots, e.growable, e.capacity()) == (1, 2, 1, False, 2)
    assert make_policy("every_k", max_frames=None).growable
    p = make_policy("qpm", interval=1, sigma_m=np.float32(0.5), sigma_en=0.0, max_frames=2, initial_slots=2)
    assert (p.interval, p.sigma_m, p.sigma_en, p.max_frames, p.initial_slots) == (1, 0.5, 0.0, 2, 2)
    lfu = make_policy("lfu", k=1, capacity_frames=1)
    assert (lfu.k, lfu.capacity_frames) == (1, 1)
    rde = make_policy("rde", theta=1, top_k=1)
    assert (rde.theta, rde.top_k) == (1, 1)
    gated = make_policy("first_latest", quality_gate=1)
    assert isinstance(gated, QualityGate) and gated.sigma == 1.0
    assert not isinstance(make_policy("lfu", quality_gate=None), QualityGate)      # None: no gate
    huge = make_policy("qdmn", beta=10 ** 12)                  # no allocation before the bank's, at frame 0
    assert huge.capacity() == 10 ** 12 + 1


def test_direct_construction_is_checked_too():
    with pytest.raises(ParameterError, match=r"qdmn: sigma"):
        QDMN(sigma=1.5)
    with pytest.raises(ParameterError, match=r"qpm: sigma_en"):
        QPM(sigma_en=float("nan"))
    with pytest.raises(ParameterError, match=r"every_k: k"):
        EveryK(k=2.5)
    with pytest.raises(ParameterError, match=r"every_k: quality_gate"):
        QualityGate(EveryK(), 2)


# --- the property: a policy with exactly the given values, or a ParameterError -------------------------

def _signature(method: str) -> list[str]:
    return [*inspect.signature(POLICIES[method]).parameters, "quality_gate"]


EDGES = st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0, 0.0, 1, 1.0, 1 + 2 ** -52, 1.5, 2, -1, 5.0, 2.5,
                         10 ** 400, np.nan, np.float32("nan"), np.int64(0), np.int64(-1), np.int64(2)])
ANY_VALUE = (EDGES | EDGES | st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4)
             | st.sampled_from(["paper", "authors", "5", "0.8", "nan"])
             | st.integers(-3, 40).map(np.int64) | st.integers(0, 255).map(np.uint8)
             | st.floats(width=32).map(np.float32) | st.floats(-2, 2).map(np.float64) | st.booleans().map(np.bool_)
             | st.complex_numbers(max_magnitude=3) | st.fractions(max_denominator=4) | st.binary(max_size=2)
             | st.lists(st.integers(0, 3), max_size=2) | st.dictionaries(st.text(max_size=1), st.integers(), max_size=1)
             | st.just(np.array([0.5])) | st.just(np.array(3)))


@settings(max_examples=400, deadline=None)
@given(data=st.data(), method=st.sampled_from(list(POLICIES)))
def test_any_value_of_any_parameter_gives_that_policy_or_a_parameter_error(data, method):
    names = data.draw(st.lists(st.sampled_from(_signature(method)), unique=True, min_size=1, max_size=3))
    params = {name: data.draw(ANY_VALUE, label=name) for name in names}
    try:
        policy = make_policy(method, **params)
    except ParameterError as error:
        assert error.parameter in params and error.owner == method
        assert type(error.value).__name__ in str(error)
        return
    gate = params.pop("quality_gate", None)
    if gate is not None:
        assert isinstance(policy, QualityGate) and policy.sigma == gate and type(policy.sigma) is float
        assert 0 <= policy.sigma <= 1
        policy = policy.inner
    assert type(policy) is POLICIES[method]
    for name, value in params.items():
        attribute = getattr(policy, name)
        assert attribute == value and type(attribute) in (int, float, str, type(None)), (name, value, attribute)
        assert not isinstance(value, (bool, np.bool_))
        if isinstance(attribute, float):
            assert math.isfinite(attribute) and 0 <= attribute <= 1


# --- the Segmenter ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"resolution": 8}, (r"Segmenter: resolution must be 'manifest', None \(the frames' own size\) or an int "
                         r"short side ≥ 64 px \(4 × the model's stride 16.*got 8 \(int\)")),
    ({"resolution": 63}, r"resolution .* ≥ 64 px.*got 63 \(int\)"),
    ({"resolution": 240.0}, r"resolution .*got 240.0 \(float\); write 240"),
    ({"resolution": "480p"}, r"resolution .*got '480p' \(str\)"),
    ({"resolution": True}, r"resolution .*got True \(bool\)"),
    ({"top_k": 0}, r"Segmenter: top_k must be an int ≥ 1 or None, got 0 \(int\)"),
    ({"top_k": 2.5}, r"Segmenter: top_k .*got 2.5 \(float\)"),
    ({"threads": 0}, r"Segmenter: threads must be a positive int \(≥ 1\) or None, got 0 \(int\)"),
    ({"threads": "2"}, r"Segmenter: threads .*got '2' \(str\); pass the number 2"),
    ({"temporary_memory": 1}, r"Segmenter: temporary_memory must be True or False or None, got 1 \(int\)"),
    ({"method": "lfu", "temporary_memory": True}, r"temporary_memory works with frame-slot policies; 'lfu'"),
    ({"method": 5}, r"unknown memory policy 5 \(int\)"),
    ({"method": ""}, r"unknown memory policy ''"),
    ({"method": "qdmn", "sigma": 1.5}, rf"qdmn: sigma must be {SIGMA_RANGE}"),
    ({"quality_gate": 2}, rf"every_k: quality_gate must be {SIGMA_RANGE}"),
    ({"k": 2.5}, r"every_k: k must be an int ≥ 1, got 2.5"),
    ({"k": "5"}, r"every_k: k must be an int ≥ 1, got '5' \(str\)"),
    ({"k": True}, r"every_k: k .*got True \(bool\)"),
    ({"method": "rde", "theta": -3}, r"rde: theta must be an int ≥ 1, got -3"),
    ({"sigma": 0.8}, r"policy 'every_k' takes no parameter sigma"),
])
def test_segmenter_refuses_before_loading_any_graph(kwargs, message, monkeypatch):
    def no_graphs(*args, **kw):
        raise AssertionError("graphs loaded for a refused argument")

    monkeypatch.setattr(sdk.segmenter, "Graphs", no_graphs)
    with pytest.raises(ParameterError, match=message):
        sdk.Segmenter(providers="cpu", **kwargs)


class _Graphs:
    """Stands in for sdk.runtime.Graphs: records its arguments, loads nothing."""

    def __init__(self, manifest, providers, names, threads=None):
        self.threads = threads


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(["resolution", "top_k", "threads", "temporary_memory"]), value=ANY_VALUE)
def test_any_segmenter_argument_is_taken_as_given_or_refused(name, value):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sdk.segmenter, "Graphs", _Graphs)
        try:
            seg = sdk.Segmenter(providers="cpu", **{name: value})
        except ParameterError as error:
            assert (error.owner, error.parameter) == ("Segmenter", name) and error.value is value
            return
    taken = seg._graphs.threads if name == "threads" else getattr(seg, name)
    if value is None:
        assert taken == {"resolution": None, "top_k": 20, "threads": None, "temporary_memory": False}[name]
    else:
        assert taken == value and type(taken) is (bool if name == "temporary_memory" else int)
        assert not isinstance(value, (bool, np.bool_)) or name == "temporary_memory"
        assert name != "resolution" or taken >= 64


def test_resolution_minimum_follows_the_stride():
    manifest = sdk.load_manifest(DEFAULT_MODEL_DIR)
    assert MIN_FEATURE_ROWS * manifest.stride == 64
    seg = sdk.Segmenter(providers="cpu", resolution=64)
    frame = np.zeros((72, 128, 3), np.uint8)
    mask = np.zeros((72, 128), np.uint8)
    mask[20:50, 30:70] = 1
    seg.step(frame, mask)
    assert seg.step(frame).shape == (72, 128)
    assert (seg.geometry.padded_h, seg.geometry.padded_w) == (64, 128)   # 4 feature rows
    assert sdk.Segmenter(providers="cpu", resolution=np.int64(96)).resolution == 96
    assert sdk.Segmenter(providers="cpu").resolution == manifest.resolution
    assert sdk.Segmenter(providers="cpu", resolution=None).resolution is None


def test_segmenter_edge_values_reach_the_policy():
    seg = sdk.Segmenter(providers="cpu", method="qdmn", interval=1, sigma=0, beta=1, schedule="authors",
                        top_k=1, threads=1, temporary_memory=False)
    assert (seg.policy.interval, seg.policy.sigma, seg.policy.beta, seg.policy.schedule) == (1, 0.0, 1, "authors")
    assert (seg.top_k, seg.temporary_memory) == (1, False)
    seg.reset()                                                         # the same parameters for the next video
    assert (seg.policy.sigma, seg.policy.beta) == (0.0, 1)
    seg = sdk.Segmenter(providers="cpu", method="qpm", sigma_m=1, sigma_en=np.float32(0.25), max_frames=2)
    assert (seg.policy.sigma_m, seg.policy.sigma_en, seg.policy.max_frames) == (1.0, 0.25, 2)
    seg = sdk.Segmenter(providers="cpu", method="lfu", quality_gate=0.5, k=np.int32(2), temporary_memory=None)
    assert isinstance(seg.policy, QualityGate) and seg.policy.sigma == 0.5 and seg.policy.inner.k == 2
    assert sdk.Segmenter(providers="cpu", method="rde", theta=1).top_k == 40    # rde's top-k unless given


def test_a_bad_default_in_the_manifest_is_a_manifest_error(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for path in DEFAULT_MODEL_DIR.iterdir():
        if path.name != "manifest.json":
            (model / path.name).symlink_to(path)
    raw = json.loads((DEFAULT_MODEL_DIR / "manifest.json").read_text())
    raw["policy_defaults"]["every_k"] = {"k": 5.0}
    (model / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=r"policy_defaults.*every_k.*k must be an int"):
        sdk.Segmenter(model, providers="cpu")
    assert sdk.Segmenter(model, providers="cpu", k=3).policy.k == 3   # the caller's value replaces it


# --- parsing NAME=VALUE --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("5", 5), (" -2 ", -2), ("0.7", 0.7), ("1e-3", 1e-3), ("5.0", 5.0), ("true", True), ("False", False),
    ("none", None), ("NULL", None), ("'5'", "5"), ('"paper"', "paper"), ("paper", "paper"), ("", ""),
])
def test_parse_value(text, value):
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_parse_value_keeps_nan_and_inf_as_floats_for_the_checks():
    assert math.isnan(parse_value("nan")) and parse_value("-inf") == -math.inf


def test_parse_assignments():
    assert parse_assignment("sigma=0.7") == ("sigma", 0.7)
    assert parse_assignment(" schedule = authors") == ("schedule", "authors")
    assert parse_assignment("x=a=b") == ("x", "a=b")
    assert parse_assignments(["k=3", "max_frames=none"]) == {"k": 3, "max_frames": None}
    for bad in ("k", "=5", "1k=2", "k-2=1", ""):
        with pytest.raises(ParameterError, match="expected NAME=VALUE"):
            parse_assignment(bad)
    with pytest.raises(ParameterError, match=r"parameter k is given twice \(1 and 2\)"):
        parse_assignments(["k=1", "k=2"])


# --- the command lines --------------------------------------------------------------------------------

REFUSED_ON_THE_COMMAND_LINE = [   # (--method or None, --param values, words the message must hold): before a model loads
    ("qdmn", ["sigma=1.5"], ["qdmn: sigma", "got 1.5 (float)", "[0, 1]"]),
    (None, ["quality_gate=2"], ["quality_gate", "got 2 (int)", "[0, 1]"]),
    ("qdmn", ["sigma=nan"], ["sigma", "got nan (float)"]),
    ("qpm", ["sigma_m=inf"], ["qpm: sigma_m", "got inf (float)"]),
    (None, ["k=2.5"], ["k must be an int ≥ 1", "got 2.5 (float)"]),
    (None, ["k=\"5\""], ["k must be an int ≥ 1", "got '5' (str)"]),
    (None, ["k=true"], ["k must be an int ≥ 1", "got True (bool)"]),
    (None, ["k=-1"], ["got -1 (int)"]),
    (None, ["k=5.0"], ["write 5"]),
    ("qdmn", ["beta=0"], ["qdmn: beta must be an int ≥ 1"]),
    ("qdmn", ["schedule=fast"], ["schedule must be one of 'paper', 'authors'"]),
    (None, ["threads=0"], ["threads must be a positive int"]),
    (None, ["foo=1"], ["no memory policy takes a parameter 'foo'", "every_k: k, max_frames, initial_slots"]),
    (None, ["method=qdmn"], ["use --method"]),
    (None, ["k"], ["expected NAME=VALUE"]),
    (None, ["k=1", "k=2"], ["given twice"]),
    # issue 31: whether the method takes the parameter is asked before its range (the bundled model: every_k)
    (None, ["sigma=2"], ["policy 'every_k' takes no parameter sigma", "sigma is a parameter of qdmn"]),
    (None, ["sigma=0.5"], ["policy 'every_k' takes no parameter sigma", "choose one with --method"]),
    ("lfu", ["sigma_m=7"], ["policy 'lfu' takes no parameter sigma_m", "sigma_m is a parameter of qpm"]),
]


def _no_segmenter(monkeypatch):
    def refuse(*options):
        raise AssertionError("make_segmenter called for a refused --param")

    monkeypatch.setattr(cli, "make_segmenter", refuse)


def _no_graphs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("graphs loaded for a refused --param")

    monkeypatch.setattr(sdk.segmenter, "Graphs", refuse)


def _params(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--param", value)]


def _usage_error(result, words):
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--param'" in result.output, result.output
    flat = " ".join(result.output.split())
    assert all(word in flat for word in words), (words, result.output)


def _method(method: str | None) -> list[str]:
    return ["--method", method] if method else []


@pytest.mark.parametrize("method, values, words", REFUSED_ON_THE_COMMAND_LINE)
def test_vos_segment_refuses_a_bad_param_before_any_model_work(method, values, words, monkeypatch, tmp_path):
    _no_segmenter(monkeypatch)
    result = CliRunner().invoke(cli.main, ["--demo", "--out", str(tmp_path / "out"), *_method(method),
                                           *_params(values)])
    _usage_error(result, words)
    assert not (tmp_path / "out").exists()


def test_a_param_the_method_does_not_take_is_named_as_such_whatever_its_value():
    """Issue 31: every_k and σ = 2 (outside qdmn's range) or 0.5 (inside it) get the same answer,
    from the API as from the CLI; qdmn then checks the range."""
    for sigma in (2, 0.5):
        with pytest.raises(ParameterError, match="policy 'every_k' takes no parameter sigma"):
            sdk.Segmenter(method="every_k", sigma=sigma)
        with pytest.raises(ParameterError, match="policy 'every_k' takes no parameter sigma"):
            make_policy("every_k", sigma=sigma)
    with pytest.raises(ParameterError, match=r"qdmn: sigma must be a finite number in \[0, 1\].*got 2 \(int\)"):
        sdk.Segmenter(method="qdmn", sigma=2)
    cli.check_param("sigma", 2)                       # the method is not known yet: left to it
    with pytest.raises(ParameterError, match="quality_gate"):
        cli.check_param("quality_gate", 2)            # every policy takes it: refused at once
    with pytest.raises(click.BadParameter, match="policy 'every_k' takes no parameter sigma"):
        cli.check_method_params(None, None, {"sigma": 2})      # the bundled model's method, every_k
    cli.check_method_params(None, "qdmn", {"sigma": 0.5, "threads": 1, "every_k.k": 3})


def test_resolution_errors_speak_the_callers_language(tmp_path, monkeypatch):
    """Issue 31: the CLI says PX or 'native' (its words), the API 'manifest' or None (its values)."""
    with pytest.raises(ParameterError, match="'manifest', None") as api:
        sdk.Segmenter(resolution=10)
    assert "native" not in str(api.value)
    _no_graphs(monkeypatch)
    result = CliRunner().invoke(cli.main, ["--demo", "--out", str(tmp_path / "out"), "--resolution", "10"])
    assert result.exit_code == 2 and "Invalid value for '--resolution'" in result.output
    flat = " ".join(result.output.split())
    assert "10 px is too small" in flat and "at least 64 px" in flat and "'native'" in flat
    assert "manifest" not in flat and "None" not in flat
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, words, option", [
    (["--method", "qdmn", "--param", "k=3"], ["policy 'qdmn' takes no parameter k"], "--param"),
    (["--method", "qpm", "--param", "initial_slots=1"], ["qpm: initial_slots must be an int ≥ 2"], "--param"),
    (["--param", "sigma_en=0.5"], ["policy 'every_k' takes no parameter sigma_en"], "--param"),
    (["--resolution", "8"], ["8 px is too small", "at least 64 px", "'native'"], "--resolution"),
    (["--method", "cutie"], ["unknown memory policy 'cutie'"], "--method"),
])
def test_vos_segment_refuses_what_only_the_method_decides_before_loading_graphs(args, words, option, monkeypatch,
                                                                               tmp_path):
    _no_graphs(monkeypatch)
    result = CliRunner().invoke(cli.main, ["--demo", "--out", str(tmp_path / "out"), "--providers", "cpu", *args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    flat = " ".join(result.output.split())
    assert all(word in flat for word in words), result.output


def test_vos_segment_params_reach_the_segmenter(monkeypatch, tmp_path):
    seen = []

    class Recorder(CopyFirstSegmenter):
        def __init__(self, **kwargs):
            seen.append(kwargs)
            super().__init__()

    monkeypatch.setattr(sdk, "Segmenter", Recorder)
    result = CliRunner().invoke(cli.main, ["--demo", "--out", str(tmp_path / "out"), "--method", "qdmn",
                                           *_params(["sigma=0.7", "beta=10", "schedule=authors", "quality_gate=none",
                                                     "threads=1"])])
    assert result.exit_code == 0, result.output
    assert seen == [{"model": None, "method": "qdmn", "providers": None, "resolution": "manifest", "sigma": 0.7,
                     "beta": 10, "schedule": "authors", "quality_gate": None, "threads": 1}]


def test_vos_segment_runs_the_bundled_model_with_params(tmp_path, monkeypatch):
    built = []
    make = cli.make_segmenter
    monkeypatch.setattr(cli, "make_segmenter", lambda *options: built.append(make(*options)) or built[-1])
    result = CliRunner().invoke(cli.main, ["--demo", "--out", str(tmp_path / "out"), "--providers", "cpu",
                                           "--resolution", "64", "--param", "k=2", "--param", "max_frames=3"])
    assert result.exit_code == 0, result.output
    policy = built[0].policy
    assert (policy.k, policy.max_frames, built[0].resolution) == (2, 3, 64)
    assert built[0].bank.memory_frames[0] == 0 and len(built[0].bank.memory_frames) == 3   # capped at 3 frames


def _eval(tmp_path, *extra):
    from test_eval import make_dataset

    make_dataset(tmp_path / "data")
    args = ["--data", tmp_path / "data", "--split", "val", "--out", tmp_path / "out", "--json", tmp_path / "r.json",
            *extra]
    return CliRunner().invoke(vos_eval.main, [str(a) for a in args])


@pytest.mark.parametrize("method, values, words", REFUSED_ON_THE_COMMAND_LINE[:6] + REFUSED_ON_THE_COMMAND_LINE[-3:])
def test_vos_eval_refuses_a_bad_param(method, values, words, monkeypatch, tmp_path):
    _no_segmenter(monkeypatch)
    _usage_error(_eval(tmp_path, *_method(method), *_params(values)), words)


def test_vos_eval_params_reach_the_factory_and_the_report(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(cli, "make_segmenter", lambda *options: seen.append(options) or CopyFirstSegmenter())
    result = _eval(tmp_path, "--method", "every_k", *_params(["k=3", "max_frames=4"]))
    assert result.exit_code == 0, result.output
    assert seen == [(None, "every_k", "manifest", None, {"k": 3, "max_frames": 4})]
    assert json.loads((tmp_path / "r.json").read_text())["params"] == {"k": 3, "max_frames": 4}


def test_vos_eval_checks_params_against_the_method(monkeypatch, tmp_path):
    _no_graphs(monkeypatch)
    result = _eval(tmp_path, "--method", "qdmn", "--providers", "cpu", "--param", "k=3")
    assert result.exit_code == 2 and "policy 'qdmn' takes no parameter k" in result.output


def _bench(tmp_path, monkeypatch, *extra):
    from test_bench import fake_bench

    return fake_bench(tmp_path, monkeypatch, "--lengths", "1", "--warmup", "0", "--max-frames", "3", *extra)


def test_vos_bench_params_go_to_every_run_the_json_and_the_table(tmp_path, monkeypatch):
    result, report, built = _bench(tmp_path, monkeypatch, "--methods", "every_k,lfu", "--table", tmp_path / "t.md",
                                   *_params(["k=3", "quality_gate=0.5"]))
    assert result.exit_code == 0, result.output
    assert [options[1] for options in built] == ["every_k", "lfu"]
    assert all(options[4] == {"k": 3, "quality_gate": 0.5} for options in built)
    assert report["params"] == {"k": 3, "quality_gate": 0.5}
    assert "Policy parameters (--param): `k=3`, `quality_gate=0.5`" in (tmp_path / "t.md").read_text()
    assert "`k=3`" in result.output
    result, report, _ = _bench(tmp_path / "none", monkeypatch, "--methods", "every_k", "--table", tmp_path / "n.md")
    assert result.exit_code == 0 and report["params"] == {}
    assert "Policy parameters" not in (tmp_path / "n.md").read_text()


@pytest.mark.parametrize("args, words", [
    (["--methods", "every_k,qdmn", "--param", "k=3"], ["policy 'qdmn' takes no parameter k",
                                                       "every --param NAME=... goes to every method",
                                                       "METHOD.NAME"]),
    (["--methods", "every_k", "--param", "qdmn.sigma=0.5"], ["qdmn.sigma is for qdmn", "not among the methods"]),
    (["--methods", "every_k", "--param", "every_k.max_frames=1"], ["max_frames", "got 1"]),
    (["--methods", "every_k", "--param", "nope.k=3"], ["'nope' is not a memory policy"]),
    (["--methods", "qpm", "--param", "initial_slots=1"], ["qpm: initial_slots must be an int ≥ 2"]),
    (["--methods", "qdmn", "--param", "sigma=1.5"], ["qdmn: sigma", "got 1.5 (float)"]),
    (["--methods", "every_k", "--param", "k=2.5"], ["got 2.5 (float)"]),
])
def test_vos_bench_refuses_a_param_before_any_run(args, words, monkeypatch, tmp_path):
    result, report, built = _bench(tmp_path, monkeypatch, *args)
    _usage_error(result, words)
    assert built == [] and report is None


def test_scoped_params_go_to_their_method_only(monkeypatch, tmp_path):
    result, report, built = _bench(tmp_path, monkeypatch, "--methods", "every_k,qpm,lfu",
                                   "--param", "every_k.max_frames=10", "--param", "qpm.max_frames=4",
                                   "--param", "quality_gate=0.5")
    assert result.exit_code == 0, result.output
    assert report["params"] == {"every_k.max_frames": 10, "qpm.max_frames": 4, "quality_gate": 0.5}
    assert cli.params_for("every_k", report["params"]) == {"max_frames": 10, "quality_gate": 0.5}
    assert cli.params_for("lfu", report["params"]) == {"quality_gate": 0.5}
    with pytest.raises(ParameterError, match="given both"):
        cli.params_for("qpm", {"max_frames": 3, "qpm.max_frames": 4})


def test_the_real_factory_applies_the_scoped_params_of_the_method_it_builds():
    params = {"every_k.max_frames": 10, "lfu.capacity_frames": 3}
    segmenter = cli.make_segmenter(None, "every_k", 64, ["cpu"], params)
    assert segmenter.policy.max_frames == 10 and not segmenter.policy.growable
    default = cli.make_segmenter(None, None, 64, ["cpu"], params)      # the manifest's method: every_k
    assert default.method == "every_k" and default.policy.max_frames == 10
    assert cli.make_segmenter(None, "lfu", 64, ["cpu"], params).policy.capacity_frames == 3


def test_vos_bench_refuses_a_too_small_resolution_before_any_run(monkeypatch, tmp_path):
    result, report, built = _bench(tmp_path, monkeypatch, "--methods", "every_k", "--resolution", "32")
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert "Invalid value for '--resolution'" in flat and "at least 64 px" in flat and "manifest" not in flat
    assert built == [] and report is None


def test_a_bench_task_builds_its_segmenter_with_the_params_and_the_reference_without(tmp_path):
    from test_bench import lane_task, make_sequence

    make_sequence(tmp_path / "data", frames=3)
    cache: dict = {}
    record = runs.execute(lane_task(tmp_path / "data", 1, 1, warmup=0, params={"k": 2, "max_frames": 2}),
                          segmenters=cache)
    assert len(record["latency_s"]) == 4
    (key, segmenter), = cache.items()
    assert (segmenter.policy.k, segmenter.policy.max_frames) == (2, 2) and "k" in key
    assert segmenter.bank.memory_frames == [0, 2]          # first + the latest every-2nd frame
    with pytest.raises(ParameterError, match="every_k: k must be an int ≥ 1, got 0"):   # the sdk's error, not click's
        runs.execute(lane_task(tmp_path / "data", 1, 1, warmup=0, params={"k": 0}))
    assert bench._params_line({"params": {}}) == ""
