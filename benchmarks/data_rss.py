"""Peak RSS of streamed training data (issue 28 item 2): a generated YouTube-VOS fixture of N
videos is indexed (training.data.read_youtube_vos) and ``--items`` clips are drawn from a
ClipDataset over it, in a fresh process per N; ``ru_maxrss`` of that process is the figure.
Streaming holds when the peak at 1000 videos is within 10 % of that at 10 (only paths grow).

    python -m benchmarks.data_rss --videos 10 1000 --out benchmarks/results/data_rss.json
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(root: str, items: int) -> dict:
    """In this process: index ``root``, draw ``items`` clips → {videos, peak_rss_mb, seconds}."""
    from training.data import read_youtube_vos
    from training.datasets import ClipDataset

    t = time.time()
    seqs = read_youtube_vos(root)
    ds = ClipDataset(seqs, crop=64, num_frames=3, max_skip=2, length=items)
    for i in range(items):
        ds[i]
    return {"videos": len(seqs), "items": items, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds": time.time() - t}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, nargs="+", default=[10, 1000])
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--_measure", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._measure:
        print(json.dumps(measure(a._measure, a.items)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.dataset_fixtures import make_youtube_vos

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.videos:
            root = make_youtube_vos(Path(tmp) / f"yv{n}", videos=n, frames=a.frames, size=(120, 160))
            p = subprocess.run([sys.executable, "-m", "benchmarks.data_rss", "--items", str(a.items),
                                "--_measure", str(root)], capture_output=True, text=True, check=True)
            runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    result = {"benchmark": "data_rss", "frames_per_video": a.frames, "frame_size": [120, 160], "runs": runs,
              "ratio_largest_to_smallest": runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"],
              "machine": platform.processor() or platform.machine(), "python": platform.python_version()}
    print(json.dumps(result, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
