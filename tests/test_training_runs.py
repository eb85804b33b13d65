"""Run folders (issue 15): stage 0 → stage 1 from the CLI, wall-time stops that later runs
resume, resumes that refuse another recipe, the fixed-time script, batches from workers."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from training.cli import main
from training.run_folder import recipe_differences

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SCHOOLGIRLS = DATA / "davis2017-240p"          # one sequence, 7 objects: quick to load
needs_data = pytest.mark.skipif(not SCHOOLGIRLS.is_dir(), reason="../shared/data (DAVIS frames) not present")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(path: Path, **changes) -> str:
    cfg = yaml.safe_load((ROOT / "training" / "configs" / "tiny.yaml").read_text())
    cfg.update(changes)
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def vos_train(*args):
    return CliRunner().invoke(main, [*map(str, args), "--data", str(SCHOOLGIRLS)])


def iterations(run: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (run / "history.jsonl").read_text().splitlines()]


@needs_data
def test_stage_0_chains_into_multi_object_stage_1_from_the_cli(tmp_path):
    stage0 = tiny_config(tmp_path / "static.yaml", dataset="static", iterations=2, checkpoint_every=2)
    res = vos_train("--config", stage0, "--out", tmp_path / "s0")
    assert res.exit_code == 0, res.output
    # stage 1 from the stage-0 run folder, learning rates 0: its weights are stage 0's
    frozen = tiny_config(tmp_path / "stage1.yaml", lr=0.0, backbone_lr=0.0, iterations=1)
    res = vos_train("--config", frozen, "--init", tmp_path / "s0", "--objects", "2", "--out", tmp_path / "s1")
    assert res.exit_code == 0, res.output
    a, b = load_file(str(tmp_path / "s0" / "last.safetensors")), load_file(str(tmp_path / "s1" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    hist = json.loads((tmp_path / "s1" / "history.jsonl").read_text())
    assert np.isfinite(hist["loss"]) and hist["objects"] in (1.0, 2.0)
    saved = json.loads((tmp_path / "s1" / "last.json").read_text())["state"]["train_config"]
    assert saved["objects"] == 2 and saved["data"] == [{"root": str(SCHOOLGIRLS), "split": "train"}]
    res = vos_train("--config", stage0, "--objects", "2", "--out", tmp_path / "bad")
    assert res.exit_code != 0 and "needs dataset: clips" in res.output
    res = vos_train("--config", stage0, "--distractor-prob", "0.5", "--out", tmp_path / "bad2")
    assert res.exit_code != 0 and "distractor_prob > 0 (pasted distractors) needs dataset: clips" in res.output
    assert not (tmp_path / "bad2" / "last.safetensors").exists()


@needs_data
def test_a_wall_time_stop_checkpoints_and_the_folder_resumes(tmp_path):
    run = tmp_path / "run"
    args = ("--config", "tiny", "--iterations", "500", "--objects", "2", "--out", run)
    res = vos_train(*args, "--time-limit", "0.01")          # stops after its first iteration
    assert res.exit_code == 0, res.output
    assert iterations(run) == [1]
    assert json.loads((run / "last.json").read_text())["state"]["iteration"] == 1
    res = vos_train(*args, "--time-limit", "0.01")          # the same command continues
    assert res.exit_code == 0, res.output
    assert iterations(run) == [1, 2]
    # another recipe into the same folder is refused before anything changes
    res = vos_train("--config", "tiny", "--iterations", "500", "--out", run)
    assert res.exit_code == 1 and "another recipe (objects differ)" in res.output
    assert iterations(run) == [1, 2]
    res = CliRunner().invoke(main, ["--resume", str(run), "--objects", "3", "--batch-size", "2"])
    assert res.exit_code == 2 and "drop --objects, --batch-size" in res.output
    res = CliRunner().invoke(main, ["--resume", str(tmp_path)])
    assert res.exit_code == 2 and "holds no run to resume" in res.output


def test_recipe_differences_ignore_session_keys_and_old_folders():
    saved = {"network": "lite", "crop": 224, "iterations": 100, "device": "cpu"}       # predates objects/data
    assert recipe_differences({**saved, "iterations": 900, "device": "cuda", "time_limit": 60,
                               "data": [{"root": "x", "split": "train"}]}, saved) == []
    assert recipe_differences({**saved, "objects": 3}, saved) == ["objects"]
    assert recipe_differences({**saved, "synthesis": {"zoom": (0.5, 1.0)}},
                              {**saved, "synthesis": {"zoom": [0.5, 1.0]}}) == []


def gpu_run(tmp_path, seconds, *options, **env):
    run, weights, scratch = tmp_path / "run", tmp_path / "weights", tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "THREADS": "1", "MARGIN": "0", "TMPDIR": str(scratch), **env}
    proc = subprocess.run([str(ROOT / "training" / "gpu_run.sh"), str(seconds), str(weights), str(run), "--",
                           "--config", "tiny", *options, "--data", str(SCHOOLGIRLS)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
    return proc, run, scratch


@needs_data
def test_the_fixed_time_script_trains_publishes_and_leaves_a_resumable_run(tmp_path):
    proc, run, _ = gpu_run(tmp_path, 3, "--iterations", "1000", "--objects", "2")
    weights = tmp_path / "weights"
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = json.loads((run / "last.json").read_text())["state"]["iteration"]
    assert 1 <= done < 1000
    meta = json.loads((weights / "lite-main.json").read_text())
    assert meta["dtype"] == "float16" and meta["state"]["iteration"] == done
    assert {"lite-main.safetensors", "history.jsonl", "last.json"} <= {p.name for p in weights.iterdir()}
    assert "--time-limit 3" in proc.stderr
    res = CliRunner().invoke(main, ["--resume", str(run), "--iterations", str(done + 1), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert iterations(run)[-1] == done + 1


@needs_data
def test_the_fixed_time_script_sizes_a_new_run_to_the_time_left(tmp_path):
    proc, run, scratch = gpu_run(tmp_path, 45, "--iterations", "auto", CALIBRATE="6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    sized = re.search(r"--iterations auto: ([0-9.]+) s/iteration, .*: (\d+) iterations", proc.stderr)
    assert sized, proc.stderr[-2000:]
    n = int(sized.group(2))
    assert n >= 6
    saved = json.loads((run / "last.json").read_text())["state"]
    assert saved["train_config"]["iterations"] == n          # the schedules are fractions of this N
    assert 1 <= saved["iteration"] <= n
    real = re.search(r"\+ vos-train --config tiny --iterations (\d+) .*--time-limit (\d+) ", proc.stderr)
    assert real and int(real.group(1)) == n
    assert int(real.group(2)) < 45                           # the calibration's wall time is taken off
    assert not list(scratch.glob("gpu_run-calibrate.*"))      # the calibration run is removed


@needs_data
@pytest.mark.parametrize("seconds, env, message", [
    (1, {"CALIBRATE": "6"}, "only -?\\d+ iterations fit in the time left"),
    (30, {"CALIBRATE": "3"}, "CALIBRATE must be at least 6, got 3"),
    (30, {"CALIBRATE": "x"}, "CALIBRATE must be a whole number, got 'x'"),
])
def test_the_fixed_time_script_refuses_a_run_that_cannot_be_sized(tmp_path, seconds, env, message):
    proc, run, scratch = gpu_run(tmp_path, seconds, "--iterations", "auto", **env)
    assert proc.returncode != 0
    assert re.search(message, proc.stderr), proc.stderr[-2000:]
    assert not run.exists() and not list(scratch.glob("gpu_run-calibrate.*"))


def test_batches_from_workers_equal_the_in_process_ones():
    from training.datasets import ClipDataset, Sequence
    from training.loader import iterate_batches

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (72, 96, 3), dtype=np.uint8) for _ in range(5)]
    masks = [np.zeros((72, 96), np.uint8) for _ in range(5)]
    for t, m in enumerate(masks):
        m[20:50, 10 + 5 * t:40 + 5 * t] = 1
    ds = ClipDataset([Sequence("s", frames, masks, [1])], crop=48, synthesis={"objects": 2, "multi_prob": 1.0,
                                                                              "min_pixels": 40})
    here = list(iterate_batches(ds, 2, 3, 5))
    there = list(iterate_batches(ds, 2, 3, 5, workers=1))
    assert len(here) == len(there) == 2
    for a, b in zip(here, there):
        assert a.keys() == b.keys() == {"frames", "masks", "others", "valid"}
        assert a["masks"].shape == (2, 3, 2, 48, 48)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(here[0]["frames"][0], torch.from_numpy(ds[6]["frames"]))      # item = it·B + j
    with pytest.raises(ValueError, match="workers"):
        next(iterate_batches(ds, 2, 0, 1, workers=-1))


@needs_data
def test_the_clip_zoom_of_a_config_reaches_the_dataset_and_is_saved_with_the_run(tmp_path, monkeypatch):
    import training.train as train_module

    seen = {}

    class Recorded(train_module.ClipDataset):
        def __init__(self, *args, **kwargs):
            seen["scale"] = kwargs["scale"]
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(train_module, "ClipDataset", Recorded)
    res = vos_train("--config", tiny_config(tmp_path / "z.yaml", zoom=[1.5, 2.5], iterations=1), "--out", tmp_path / "z")
    assert res.exit_code == 0, res.output
    assert seen["scale"] == (1.5, 2.5)
    saved = json.loads((tmp_path / "z" / "last.json").read_text())["state"]["train_config"]
    assert saved["zoom"] == [1.5, 2.5]


def test_a_folder_from_before_the_zoom_key_trained_with_the_default_zoom():
    old = {"network": "lite", "crop": 224}
    assert recipe_differences({**old, "zoom": (0.9, 1.8)}, old) == []
    assert recipe_differences({**old, "zoom": [1.2, 2.4]}, old) == ["zoom"]


@pytest.mark.parametrize("zoom, message", [
    ([2.0, 1.0], "zoom must be"), (1.5, "zoom must be"), ([0, 1], "zoom must be"), ([True, 2], "zoom must be"),
])
@needs_data
def test_a_bad_clip_zoom_is_refused_before_anything_is_written(tmp_path, zoom, message):
    res = vos_train("--config", tiny_config(tmp_path / "z.yaml", zoom=zoom), "--out", tmp_path / "z")
    assert res.exit_code != 0 and message in res.output
    assert not (tmp_path / "z").exists()


@needs_data
def test_zoom_is_refused_for_static_pseudo_videos(tmp_path):
    res = vos_train("--config", tiny_config(tmp_path / "s.yaml", dataset="static", zoom=[1, 2]),
                    "--out", tmp_path / "s")
    assert res.exit_code != 0 and "static: {zoom" in res.output
