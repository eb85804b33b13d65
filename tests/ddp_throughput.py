"""Samples/s of vos-train with 1 and 2 gloo processes (issue 28 targets), on a generated DAVIS
2017 fixture with the tiny network: ``python tests/ddp_throughput.py [--json FILE]``.

Each run trains 40 iterations of the same global batch (4 clips, crop 96) through
tests/ddp_driver.py (2 processes: ``torchrun --standalone --nproc-per-node 2``), one thread
per process; the medians over iterations 6–40 of history.jsonl's ``samples_per_s_rank`` (and
× world size) and ``data_wait_share`` are printed as JSON. Not a test: a measurement."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import TINY_CONFIG  # noqa: E402
from tests.dataset_fixtures import make_davis2017  # noqa: E402
from training.train import load_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the result here too")
    ap.add_argument("--iterations", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        d17 = make_davis2017(tmp / "d17", train=4, val=0, frames=8)
        cfg = {**load_config("tiny"), "network": TINY_CONFIG, "crop": 96, "batch_size": 4,
               "iterations": args.iterations, "checkpoint_every": args.iterations, "device": "cpu",
               "datasets": [{"reader": "davis2017", "root": str(d17)}]}
        (tmp / "cfg.json").write_text(json.dumps(cfg))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
                  "network": "tiny", "global_batch": 4, "crop": 96, "backend": "gloo"}
        for n in (1, 2):
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] \
                if n == 2 else [sys.executable]
            subprocess.run(launcher + [str(ROOT / "tests" / "ddp_driver.py"), str(tmp / "cfg.json"),
                                       str(tmp / f"out{n}")], env=env, check=True, capture_output=True, cwd=ROOT)
            history = [json.loads(line) for line in (tmp / f"out{n}" / "history.jsonl").read_text().splitlines()][5:]
            per_rank = statistics.median(r["samples_per_s_rank"] for r in history)
            result[f"processes_{n}"] = {"samples_per_s_rank": round(per_rank, 2),
                                        "samples_per_s": round(per_rank * n, 2),
                                        "data_wait_share": round(statistics.median(r["data_wait_share"]
                                                                                   for r in history), 3)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
