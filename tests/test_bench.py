"""vos-bench: orders, the JSON schema (docs/bench-json.md), skipped methods, Ctrl-C, plots,
markdown table, the model's precision; first with an injected segmenter on a tiny synthetic DAVIS
layout, then the real sdk in spawned processes, then real DAVIS frames."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from ctrl_c import interrupt
from fake_segmenter import CopyFirstSegmenter
from PIL import Image

import sdk
from benchmarks import bench, machine, playback, runs
from benchmarks.report import PLOTS, markdown_table, p50_change
from sdk import cli
from sdk.demo import make_clip
from sdk.io import write_mask
from sdk.manifest import DEFAULT_MODEL_DIR, GRAPH_NAMES
from sdk.metrics import evaluate_sequence, summarize

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PNG = b"\x89PNG\r\n\x1a\n"


def make_sequence(root: Path, name: str = "clip", frames: int = 6, height: int = 48, width: int = 64) -> Path:
    """A `frames`-frame sequence with objects 1 and 2 in DAVIS layout under root → root."""
    rgb, labels = make_clip(frames=frames, height=height, width=width, seed=0)
    for i, (frame, gt) in enumerate(zip(rgb, labels)):
        (root / "JPEGImages" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(root / "JPEGImages" / name / f"{i:05d}.jpg", quality=95)
        write_mask(root / "Annotations" / name / f"{i:05d}.png", gt)
    return root


def invoke(*args) -> tuple:
    result = CliRunner().invoke(bench.main, [str(a) for a in args])
    return result


def fake_bench(tmp_path, monkeypatch, *extra):
    """vos-bench in this process on CopyFirstSegmenters (one per method) → (result, report, built)."""
    make_sequence(tmp_path / "data")
    built = []

    def make(*options):        # (model, method, resolution, providers, params), as cli.make_segmenter takes them
        built.append(options)
        segmenter = CopyFirstSegmenter()
        segmenter.method = options[1]
        return segmenter

    monkeypatch.setattr(cli, "make_segmenter", make)
    result = invoke("--data", tmp_path / "data", "--sequence", "clip", "--no-isolate", "--no-reference",
                    "--json", tmp_path / "b.json", *extra)
    path = tmp_path / "b.json"
    return result, json.loads(path.read_text()) if path.is_file() else None, built


TOP = {"format": str, "version": int, "created": str, "machine": dict, "data": str, "sequence": str,
       "sequence_frames": int, "unit_frames": int, "input_size": list, "model": str, "model_config": str,
       "model_manifest_sha256": str,
       "precision": str, "precision_graphs": dict, "params": dict,
       "mode": str, "warmup_frames": int, "repeats": int, "balance": bool, "isolation": str,
       "lockstep": bool,
       "complete": bool,
       "interrupted": bool, "results": list}
MACHINE = {"cpu": str, "cores": int, "platform": str, "onnxruntime": str, "providers": list, "python": str,
           "numpy": str, "gpus": list}
RESULT = {"method": str, "length": (int, float), "frames": int, "repeats": int, "fps": float, "latency_ms": dict,
          "p50_per_repeat_ms": list, "stages_ms": dict, "bank_bytes": int, "bank_bytes_first": int,
          "peak_rss_bytes": int, "rss_scope": str, "windows": dict, "providers": list, "seconds": float,
          "bank_bytes_range": list, "samples": dict}
NULLABLE = {"jf": float, "j": float, "f": float, "jf_spread": float, "gpu_memory_bytes": int,
            "baseline_rss_bytes": int, "rss_growth_bytes": int}
REFERENCE = {"checkpoint": str, "method": str, "frames": int, "torch_ms_per_frame": float, "sdk_ms_per_frame": float,
             "overhead_ratio": float, "torch_p50_ms": float, "sdk_p50_ms": float, "torch": str, "torch_threads": int,
             "omp_wait_policy": str,
             "jf_torch": float, "jf_sdk": float, "mask_agreement": float, "max_abs_key_diff": float}


def check_schema(report: dict) -> None:
    """Every field docs/bench-json.md promises, with its type."""
    for fields, obj in ((TOP, report), (MACHINE, report["machine"])):
        for key, kind in fields.items():
            assert isinstance(obj[key], kind), (key, obj.get(key))
    assert report["format"] == "vosedge-bench" and report["version"] == 1
    assert report["mode"] in ("lengths", "stream") and report["isolation"] in ("process", "none")
    assert isinstance(report["resolution"], int) or report["resolution"] == "native"
    assert report["unit_frames"] == 2 * report["sequence_frames"] - 2
    for r in report["results"]:
        if "skipped" in r:
            assert set(r) == {"method", "skipped"} and r["skipped"]
            continue
        for key, kind in RESULT.items():
            assert isinstance(r[key], kind) and not isinstance(r[key], bool), (key, r.get(key))
        for key, kind in NULLABLE.items():
            assert r[key] is None or isinstance(r[key], kind), (key, r[key])
        lat = r["latency_ms"]
        assert set(lat) == {"p50", "p90", "p99", "mean", "max"} and 0 <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert len(r["p50_per_repeat_ms"]) == r["repeats"] and r["fps"] > 0
        assert set(r["windows"]) == {"first", "last"}
        for w in r["windows"].values():
            assert set(w) == {"frames", "latency_p50_ms", "bank_bytes"} and 1 <= w["frames"] <= r["frames"]
        assert r["rss_scope"] in ("run", "process") and r["peak_rss_bytes"] > 0
        lo, hi = r["bank_bytes_range"]
        assert lo <= r["bank_bytes_first"] <= hi and lo <= r["bank_bytes"] <= hi
        samples = r["samples"]
        assert set(samples) == {"frame", "rss_bytes", "bank_bytes", "latency_p50_ms"}
        assert samples["frame"][-1] == r["frames"] and samples["bank_bytes"][-1] == r["bank_bytes"]
        assert len({len(v) for v in samples.values()}) == 1
        if report["mode"] == "lengths":
            assert isinstance(r["length"], int) and r["frames"] == r["length"] * report["unit_frames"]
    reference = report["reference"]
    if "skipped" in reference:
        assert set(reference) == {"skipped"}
    else:
        for key, kind in REFERENCE.items():
            assert isinstance(reference[key], kind), (key, reference.get(key))


# --- orders -------------------------------------------------------------------------------------


def test_ping_pong_plays_forward_then_backward():
    assert playback.ping_pong(4, 2) == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
    assert playback.unit_frames(50) == 98


def test_stream_order_cuts_or_extends_the_ping_pong():
    assert playback.stream_order(4, 3) == [0, 1, 2]
    assert playback.stream_order(4, 8) == [0, 1, 2, 3, 2, 1, 0, 1]
    assert playback.make_order(4, ("frames", 8)) == playback.stream_order(4, 8)
    assert playback.make_order(4, ("length", 2)) == playback.ping_pong(4, 2)


def test_prompts_are_given_where_a_frame_is_first_played():
    seq = ["m0", None, "m2"]
    assert playback.played_prompts(seq, playback.ping_pong(3, 2)) == ["m0", None, "m2", None, None, None, None, None]


@pytest.mark.parametrize("text, parsed", [(None, ("manifest", None)), ("native", (None, None)), ("240", (240, None)),
                                          ("480p", (480, None)), ("854x480", (None, (854, 480)))])
def test_resolution_forms(text, parsed):
    assert bench.parse_resolution(None, None, text) == parsed


def test_bad_resolution_is_a_usage_error(tmp_path):
    result = invoke("--data", tmp_path, "--sequence", "x", "--resolution", "big", "--json", tmp_path / "b.json")
    assert result.exit_code == 2 and "WxH" in result.output


# --- the CLI on an injected segmenter -------------------------------------------------------------


def test_bench_reports_per_method_and_length(tmp_path, monkeypatch):
    result, report, built = fake_bench(tmp_path, monkeypatch, "--methods", "every_k,first_latest", "--lengths", "1,2",
                                       "--plots", tmp_path / "plots", "--table", tmp_path / "t.md")
    assert result.exit_code == 0, result.output
    check_schema(report)
    assert [(r["method"], r["length"], r["frames"]) for r in report["results"]] == [
        ("every_k", 1, 10), ("every_k", 2, 20), ("first_latest", 1, 10), ("first_latest", 2, 20)]
    assert [options[1] for options in built] == ["every_k", "first_latest"]   # one segmenter per method
    assert report["complete"] and not report["interrupted"] and report["isolation"] == "none"
    assert report["reference"] == {"skipped": "--no-reference"}
    first = report["results"][0]
    assert 0 < first["jf"] < 100 and first["stages_ms"] == {}   # the fake has no stage timings
    assert report["machine"]["providers"] == ["CPUExecutionProvider"]
    for name in PLOTS:
        assert (tmp_path / "plots" / name).read_bytes()[:8] == PNG
    table = (tmp_path / "t.md").read_text()
    assert table == markdown_table(report["results"]) and table in result.output
    assert "| `first_latest` | 2 | 20 |" in table


@pytest.mark.parametrize("option", ["--stream-frames", "--frames"])
def test_stream_mode_plays_exactly_n_frames(tmp_path, monkeypatch, option):
    result, report, _ = fake_bench(tmp_path, monkeypatch, "--methods", "lfu", option, "25")
    assert result.exit_code == 0, result.output
    check_schema(report)
    (r,) = report["results"]
    assert report["mode"] == "stream" and r["frames"] == 25 and r["length"] == 2.5
    assert r["windows"]["first"]["frames"] == r["windows"]["last"]["frames"] == 2   # 10 % of 25, rounded
    deprecated = [line for line in result.stderr.splitlines() if "deprecated" in line]
    assert deprecated == ([] if option == "--stream-frames" else
                          ["warning: vos-bench --frames N is deprecated (vos-segment's --frames is the input video): "
                           "use --stream-frames N"])


@pytest.mark.parametrize("args, words", [
    (["--stream-frames", "25", "--lengths", "1"], "exclude"),
    (["--frames", "25", "--lengths", "1"], "exclude"),
    (["--frames", "25", "--stream-frames", "25"], "old name of --stream-frames"),
])
def test_frames_and_lengths_exclude_each_other(tmp_path, monkeypatch, args, words):
    result, _, built = fake_bench(tmp_path, monkeypatch, *args)
    assert result.exit_code == 2 and words in result.output and built == []


def test_help_names_the_stream_option_and_the_real_clip():
    """Issue 31: --frames (a folder or video in vos-segment) is not offered as a count, and the
    videos are a real clip played forward and back, not synthetic."""
    text = " ".join(CliRunner().invoke(bench.main, ["--help"]).output.split())
    assert "--stream-frames N" in text and "--frames" not in text.replace("--stream-frames", "")
    assert "synthetic" not in text and "played from a real DAVIS clip (forward then backward" in text


def test_unknown_method_is_a_usage_error(tmp_path, monkeypatch):
    result, _, built = fake_bench(tmp_path, monkeypatch, "--methods", "every_k,nope")
    assert result.exit_code == 2 and "nope" in result.output and "first_latest" in result.output and not built


def record_runs(monkeypatch) -> list:
    """→ the list that gets (segmenter.method, frames) of every measured run, in order."""
    calls, real = [], runs.measure

    def counting(segmenter, frames, gt, prompts, order, *args, **kwargs):
        calls.append((segmenter.method, len(order)))
        return real(segmenter, frames, gt, prompts, order, *args, **kwargs)

    monkeypatch.setattr(runs, "measure", counting)
    return calls


def test_repeats_are_pooled(tmp_path, monkeypatch):
    calls = record_runs(monkeypatch)
    result, report, _ = fake_bench(tmp_path, monkeypatch, "--methods", "every_k,lfu", "--lengths", "1,2",
                                   "--repeats", "2", "--no-balance")
    assert result.exit_code == 0, result.output
    check_schema(report)
    assert report["balance"] is False
    # each method's lengths back to back; the second repeat in reverse order
    assert calls == [("every_k", 10), ("every_k", 20), ("lfu", 10), ("lfu", 20),
                     ("lfu", 20), ("lfu", 10), ("every_k", 20), ("every_k", 10)]
    assert all(r["repeats"] == 2 and len(r["p50_per_repeat_ms"]) == 2 for r in report["results"])


def test_balance_spreads_short_videos_around_the_longest(tmp_path, monkeypatch):
    calls = record_runs(monkeypatch)
    result, report, _ = fake_bench(tmp_path, monkeypatch, "--methods", "every_k,lfu", "--lengths", "1,4")
    assert result.exit_code == 0, result.output
    check_schema(report)
    assert report["balance"] is True and report["repeats"] == 1 and report["lockstep"] is False
    # L=1 (10 frames) runs 4 times, as many frames as L=4's one run, two before it and two after
    assert calls == [("every_k", 10), ("every_k", 10), ("every_k", 40), ("every_k", 10), ("every_k", 10),
                     ("lfu", 10), ("lfu", 10), ("lfu", 40), ("lfu", 10), ("lfu", 10)]
    assert [(r["length"], r["repeats"], r["frames"]) for r in report["results"]] == [(1, 4, 10), (4, 1, 40)] * 2


def test_balanced_schedule_centres_every_length_in_the_middle():
    frames = [98, 980, 1960]                          # lengths 1, 10, 20 of blackswan
    runs = playback.schedule(["lfu", "rde"], frames, repeats=1, balance=True)
    assert runs[:len(runs) // 2] == [("lfu", p) for _, p in runs[len(runs) // 2:]]   # same block per method
    block = [p for _, p in runs[:len(runs) // 2]]
    assert [block.count(p) for p in range(3)] == [20, 2, 1]
    start, centres = 0, {p: [] for p in range(3)}      # time centre of each run, in frames
    for p in block:
        centres[p].append(start + frames[p] / 2)
        start += frames[p]
    for p in range(3):                                 # every length's runs centred on the block's middle
        assert np.mean(centres[p]) == pytest.approx(start / 2, rel=0.02)
    assert playback.schedule(["lfu"], frames, repeats=2, balance=True).count(("lfu", 0)) == 40
    assert playback.schedule(["lfu"], [5, 7], repeats=1, balance=True).count(("lfu", 0)) == 2    # ⌈7/5⌉
    assert playback.schedule(["lfu"], [20], repeats=3, balance=True) == [("lfu", 0)] * 3


def test_ctrl_c_leaves_a_valid_partial_json(tmp_path, monkeypatch):
    real, calls = runs.measure, []

    def interrupted_second_run(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runs, "measure", interrupted_second_run)
    result, report, _ = fake_bench(tmp_path, monkeypatch, "--methods", "every_k", "--lengths", "1,2,3",
                                   "--table", tmp_path / "t.md")
    assert result.exit_code == bench.EXIT_INTERRUPTED == 130, result.output
    check_schema(report)
    assert report["interrupted"] and not report["complete"]
    assert [(r["method"], r["length"]) for r in report["results"]] == [("every_k", 1)]
    assert "| `every_k` | 1 |" in (tmp_path / "t.md").read_text()
    assert "interrupted" in result.output


def test_json_is_replaced_atomically(tmp_path):
    path = tmp_path / "r.json"
    bench.write_json(path, {"a": 1})
    bench.write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2} and [p.name for p in tmp_path.iterdir()] == ["r.json"]


# --- pieces ---------------------------------------------------------------------------------------


def _raw(latencies_ms, banks, jf=50.0, samples=None):
    n = len(latencies_ms)
    samples = samples or {"frame": [n], "rss_bytes": [95], "bank_bytes": [banks[-1]], "latency_p50_ms": [1.0]}
    return {"latency_s": [x / 1e3 for x in latencies_ms], "stages_ms": {"readout": [1.0] * n},
            "bank_bytes": banks, "jf": jf, "j": jf, "f": jf, "peak_rss_bytes": 100, "baseline_rss_bytes": 90,
            "rss_scope": "run", "gpu_memory_bytes": None, "providers": ["CPUExecutionProvider"], "resolution": 240,
            "wall_s": 1.0, "samples": samples}


def test_summaries_pool_repeats_and_compare_windows():
    lat = list(range(1, 21))                            # 20 frames, 1..20 ms
    growing = [100 * (i + 1) for i in range(20)]
    r = runs.summarize_runs("every_k", 2, [_raw(lat, growing), _raw([x + 20 for x in lat], growing, 52.0)])
    assert r["frames"] == 20 and r["repeats"] == 2
    assert r["latency_ms"]["p50"] == 20.5 and r["latency_ms"]["max"] == 40.0      # pooled 1..40
    assert r["p50_per_repeat_ms"] == [10.5, 30.5]
    assert r["fps"] == round(40 / (sum(range(1, 41)) / 1e3), 2)
    assert r["windows"]["first"] == {"frames": 2, "latency_p50_ms": 11.5, "bank_bytes": 200}    # 1,2,21,22
    assert r["windows"]["last"] == {"frames": 2, "latency_p50_ms": 29.5, "bank_bytes": 2000}    # 19,20,39,40
    assert r["bank_bytes_first"] == 100 and r["bank_bytes"] == 2000
    assert r["jf"] == 50.0 and r["jf_spread"] == 2.0 and r["stages_ms"] == {"readout": 1.0}


def test_rss_growth_counts_only_samples_after_the_warm_up():
    frames = [100 * (i + 1) for i in range(10)]                  # samples every 100 of 1000 frames
    rss = [50, 80, 90, 90, 91, 90, 95, 90, 90, 92]                  # warm-up (first 10 %) ends at frame 100
    samples = {"frame": frames, "rss_bytes": rss, "bank_bytes": [7] * 10, "latency_p50_ms": [1.0] * 10}
    r = runs.summarize_runs("lfu", 1, [_raw([1] * 1000, [7] * 1000, samples=samples)])
    assert r["rss_growth_bytes"] == 95 - 50 and r["samples"] == samples and r["bank_bytes_range"] == [7, 7]
    flat = {**samples, "rss_bytes": [60, 60] + [61] * 8}
    assert runs.summarize_runs("lfu", 1, [_raw([1] * 1000, [7] * 1000, samples=flat)])["rss_growth_bytes"] == 1
    one = {"frame": [1000], "rss_bytes": [60], "bank_bytes": [7], "latency_p50_ms": [1.0]}
    assert runs.summarize_runs("lfu", 1, [_raw([1] * 1000, [7] * 1000, samples=one)])["rss_growth_bytes"] is None


def test_measure_samples_every_n_frames_and_scores_like_evaluate_sequence(square_clip):
    frames, masks = square_clip(n=6)
    segmenter = CopyFirstSegmenter()
    order = [0, 1, 2, 3, 4, 5, 4, 3, 2, 1, 0, 1]
    raw = runs.measure(segmenter, frames, masks, [masks[0]] + [None] * 5, order, warmup=2, sample_every=5)
    assert raw["samples"]["frame"] == [5, 10, 12] and len(raw["samples"]["rss_bytes"]) == 3
    assert all(rss > 0 for rss in raw["samples"]["rss_bytes"])
    assert len(raw["latency_s"]) == 12 and not np.isnan(raw["latency_s"]).any()
    expected = summarize(evaluate_sequence([masks[0]] * 12, [masks[i] for i in order]).values())
    assert raw["jf"] == round(100 * expected["J&F"], 2) and raw["jf"] < 100


def test_markdown_table_rows_and_skips():
    rows = [runs.summarize_runs("lfu", 1, [_raw([10, 20, 30], [2 ** 20] * 3)]),
            {"method": "rde", "skipped": "needs graph(s) sam_key | sam_value"}]
    table = markdown_table(rows).splitlines()
    assert table[0].startswith("| method | L | frames | fps | p50 latency |") and len(table) == 4
    assert table[2] == ("| `lfu` | 1 | 3 | 50.0 | 20.0 ms | +0.0 % | 28.0 ms | 29.8 ms | 1.0 MiB | 0.0 MiB | 50.0 |")
    assert table[3].startswith("| `rde` | – | – | skipped: needs graph(s) sam_key \\| sam_value |")
    assert all(len(re.findall(r"(?<!\\)\|", line)) == table[0].count("|") for line in table)   # same columns


def test_p50_change_is_relative_to_each_methods_shortest_video():
    rows = [runs.summarize_runs("lfu", 10, [_raw([21, 21, 21], [1] * 3)]),      # listed before its L=1
            runs.summarize_runs("lfu", 1, [_raw([20, 20, 20], [1] * 3)]),
            {"method": "rde", "skipped": "no SAM graphs"},
            runs.summarize_runs("every_k", 2, [_raw([10, 10, 10], [1] * 3)]),
            runs.summarize_runs("every_k", 20, [_raw([30, 30, 30], [9] * 3)])]
    change = p50_change(rows)
    assert change == pytest.approx({0: 5.0, 1: 0.0, 3: 0.0, 4: 200.0})
    table = markdown_table(rows).splitlines()
    assert "| 21.0 ms | +5.0 % |" in table[2] and "| 30.0 ms | +200.0 % |" in table[6]


def test_rss_helpers():
    assert machine.peak_rss_bytes() > 1 << 20
    if sys.platform.startswith("linux"):
        assert machine.reset_peak_rss()
        assert machine.peak_rss_bytes() >= machine.proc_status_bytes("VmRSS") > 0
    assert machine.gpu_memory_bytes(pid=2 ** 22 + 1) is None   # no such process (or no nvidia-smi)


# --- the real sdk ---------------------------------------------------------------------------------


def core_only_model(dst: Path) -> Path:
    """A copy of the bundled model with only the four core graphs (no QAM/SAM heads, no DMN-AOA
    graphs or proposals)."""
    dst.mkdir()
    raw = json.loads((DEFAULT_MODEL_DIR / "manifest.json").read_text())
    raw["graphs"] = {name: raw["graphs"][name] for name in GRAPH_NAMES}
    raw.pop("proposals", None)
    raw.pop("dmn", None)
    for name in GRAPH_NAMES:
        shutil.copyfile(DEFAULT_MODEL_DIR / raw["graphs"][name]["file"], dst / raw["graphs"][name]["file"])
    (dst / "manifest.json").write_text(json.dumps(raw))
    return dst


@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "manifest.json").is_file(), reason="no bundled model")
def test_a_method_the_model_cannot_run_is_skipped_in_spawned_runs(tmp_path):
    make_sequence(tmp_path / "data")
    model = core_only_model(tmp_path / "core")
    result = invoke("--data", tmp_path / "data", "--sequence", "clip", "--model", model, "--methods", "rde,every_k",
                    "--lengths", "1", "--resolution", "native", "--providers", "cpu", "--no-reference",
                    "--warmup", "1", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b.json").read_text())
    check_schema(report)
    rde, every_k = report["results"]
    assert rde["method"] == "rde" and "sam_key" in rde["skipped"] and "rde skipped" in result.output
    assert every_k["method"] == "every_k" and every_k["frames"] == 10
    assert report["isolation"] == "process" and report["lockstep"] and every_k["rss_scope"] == "run"
    assert every_k["providers"] == report["machine"]["providers"] == ["CPUExecutionProvider"]
    assert every_k["bank_bytes"] == every_k["bank_bytes_first"] > 0 and every_k["gpu_memory_bytes"] is None
    # every stage of the sdk is reported and they add up to the total
    assert set(every_k["stages_ms"]) == {*sdk.segmenter.STAGES, "total"}
    stages = every_k["stages_ms"]
    assert sum(v for k, v in stages.items() if k != "total") == pytest.approx(stages["total"], abs=0.02)
    assert report["results"][1]["peak_rss_bytes"] >= report["results"][1]["baseline_rss_bytes"]


def lane_task(data: Path, length: int, videos: int, **extra) -> dict:
    """A lockstep task for every_k on the bundled model, CPU, native size, 1 warm-up frame."""
    return {"kind": "bench", "data": str(data), "sequence": "clip", "max_frames": None, "size": None, "model": None,
            "resolution": None, "providers": ["cpu"], "warmup": 1, "method": "every_k", "order": ["length", length],
            "videos": videos, "manifest_sha256": bench.sha256_file(DEFAULT_MODEL_DIR / "manifest.json"), **extra}


@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "manifest.json").is_file(), reason="no bundled model")
def test_lockstep_lanes_take_turns_one_step_at_a_time(tmp_path):
    make_sequence(tmp_path / "data")                    # 6 frames: 10 per forward+backward unit
    ended, seen = [], []
    outcomes = runs.lockstep([lane_task(tmp_path / "data", 1, 3), lane_task(tmp_path / "data", 3, 1)],
                              progress=seen.append, finished=lambda i, kind, _: ended.append((i, kind)))
    (short_kind, short), (long_kind, long) = outcomes
    assert short_kind == long_kind == "result" and sorted(ended) == [(0, "result"), (1, "result")]
    assert [len(r["latency_s"]) for r in short] == [10, 10, 10] and [len(r["latency_s"]) for r in long] == [30]
    assert seen == sorted(seen) and seen[-1] == 60
    steps = sorted((start, start + lat, lane) for lane, records in enumerate((short, long)) for r in records
                   for start, lat in zip(r["started_s"], r["latency_s"]))
    # never two steps at once, and no lane runs more than two steps in a row (c mod n rotation)
    assert all(end <= next_start for (_, end, _), (next_start, _, _) in zip(steps, steps[1:]))
    lanes = "".join(str(lane) for _, _, lane in steps)
    assert "000" not in lanes and "111" not in lanes and lanes.count("0") == lanes.count("1") == 30
    # the long lane waited about as long as it stepped; that wait is not the run's time
    assert long[0]["wall_s"] < 1.6 * sum(long[0]["latency_s"])


@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "manifest.json").is_file(), reason="no bundled model")
def test_a_failing_lane_stops_the_others(tmp_path):
    make_sequence(tmp_path / "data")
    good = lane_task(tmp_path / "data", 50, 1)          # 500 frames: would take a while
    bad = lane_task(tmp_path / "data", 1, 1, sequence="nowhere")
    start = time.monotonic()
    (kind_good, why_good), (kind_bad, why_bad) = runs.lockstep([good, bad])
    assert kind_good == kind_bad == "error" and why_good == why_bad and "nowhere" in why_bad
    assert time.monotonic() - start < 60


def test_lockstep_needs_process_isolation(tmp_path):
    make_sequence(tmp_path / "data")
    result = invoke("--data", tmp_path / "data", "--sequence", "clip", "--lockstep", "--no-isolate",
                    "--json", tmp_path / "b.json")
    assert result.exit_code == 2 and "--no-isolate" in result.output and not (tmp_path / "b.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "manifest.json").is_file(), reason="no bundled model")
def test_sigint_stops_a_real_run_with_a_partial_json(tmp_path):
    make_sequence(tmp_path / "data")
    out = tmp_path / "b.json"
    cmd = [sys.executable, "-c", "from benchmarks.bench import main; main()", "--data", tmp_path / "data",
           "--sequence", "clip", "--methods", "first_latest", "--lengths", "1,5000", "--resolution", "native",
           "--providers", "cpu", "--no-reference", "--warmup", "0", "--no-balance", "--json", out]
    def started() -> bool:
        return out.is_file() and bool(json.loads(out.read_text())["results"])

    returncode, output = interrupt(cmd, started, settle_s=2)       # well into the 50 000-frame run
    assert returncode == 130, output
    report = json.loads(out.read_text())
    check_schema(report)
    assert report["interrupted"] and [r["length"] for r in report["results"]] == [1]
    assert "Traceback" not in output


def test_the_json_reports_the_models_precision(tmp_path, monkeypatch):
    """vos-bench converts nothing (float16/int8 exports come from vos-export --precision): the
    JSON's precision is the model's manifest's (the bundled model: float32 everywhere)."""
    result, report, _ = fake_bench(tmp_path, monkeypatch, "--methods", "every_k", "--lengths", "1")
    assert result.exit_code == 0, result.output
    assert report["precision"] == "float32" and set(report["precision_graphs"].values()) == {"float32"}
    result = invoke("--data", tmp_path / "data", "--sequence", "clip", "--precision", "fp16", "--json", tmp_path / "x.json")
    assert result.exit_code == 2 and "No such option" in result.output


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "davis2016-240p").is_dir(), reason="../shared/data is absent")
def test_real_sequence_with_the_torch_reference(tmp_path):
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    # spawned runs (the default): the reference's process imports torch itself, with passive OpenMP waits
    args = ["--data", DATA / "davis2016-240p", "--sequence", "blackswan", "--max-frames", "8",
            "--methods", "every_k,first_latest", "--lengths", "1,2", "--resolution", "240p", "--providers", "cpu",
            "--reference", "--warmup", "2", "--json", tmp_path / "b.json", "--plots", tmp_path / "p"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b.json").read_text())
    check_schema(report)
    every_k, every_k2, first_latest, first_latest2 = report["results"]
    assert report["unit_frames"] == 14 and every_k2["frames"] == 28 and report["input_size"] == [427, 240]
    # a bounded bank never changes size; the every-5 bank holds frames 0, 5, 10, … (8 slots preallocated)
    assert first_latest["bank_bytes"] == first_latest2["bank_bytes"] == first_latest2["bank_bytes_first"]
    assert every_k2["bank_bytes"] >= every_k["bank_bytes"] > first_latest["bank_bytes"]
    assert every_k["jf"] > 60 and first_latest["jf"] > 60
    ref = report["reference"]
    assert ref["frames"] == 14 and ref["max_abs_key_diff"] < 1e-3 and ref["mask_agreement"] > 0.99
    assert ref["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    assert abs(ref["jf_torch"] - ref["jf_sdk"]) < 1
    assert ref["overhead_ratio"] == pytest.approx(ref["sdk_ms_per_frame"] / ref["torch_ms_per_frame"], rel=0.01)
    assert all((tmp_path / "p" / name).is_file() for name in PLOTS)
