"""Issue 28 item 3: torchrun with 2 gloo processes trains like 1 process on the same global batch,
and a 2-rank checkpoint resumes on 1 rank."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dataset_fixtures import make_davis2017

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4          # relative, per iteration's loss: gloo's all-reduce sums in another order


def _run(cfg, out, procs, tmp_path):
    path = tmp_path / f"cfg{procs}.json"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)]
           if procs > 1 else [sys.executable])
    p = subprocess.run(cmd + [str(ROOT / "tests" / "ddp_driver.py"), str(path), str(out)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_gloo_processes_match_one_and_resume_on_one(tmp_path):
    from tests.conftest import TINY_CONFIG
    from training.train import load_config

    d17 = make_davis2017(tmp_path / "d17", train=2, val=0, frames=5)
    cfg = {**load_config("tiny"), "network": TINY_CONFIG, "crop": 32, "batch_size": 2, "iterations": 20,
           "checkpoint_every": 10, "device": "cpu", "datasets": [{"reader": "davis2017", "root": str(d17)}]}
    one = _run(cfg, tmp_path / "one", 1, tmp_path)
    two = _run(cfg, tmp_path / "two", 2, tmp_path)
    assert [h["iteration"] for h in two] == list(range(1, 21))
    for history, world in ((one, 1), (two, 2)):                  # throughput fields of every step
        assert all(h["world"] == world and h["samples_per_s_rank"] > 0 and 0 <= h["data_wait_share"] <= 1
                   and "gpu_memory_mb" not in h for h in history)
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=TOL), a["iteration"]
    # a 2-rank run stopped by its time limit after iteration 1 resumes on 1 rank: 2..20 as before
    resumed = tmp_path / "resumed"
    first = _run({**cfg, "time_limit": 1e-6}, resumed, 2, tmp_path)
    assert [h["iteration"] for h in first] == [1]
    after = _run(cfg, resumed, 1, tmp_path)
    assert [h["iteration"] for h in after] == list(range(1, 21))
    for a, b in zip(one[1:], after[1:]):
        assert b["loss"] == pytest.approx(a["loss"], rel=TOL), a["iteration"]
