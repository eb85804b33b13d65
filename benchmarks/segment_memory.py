"""Resident memory of a long ``vos-segment`` run on a video file (issue 13's soak of the CLI):
frames are streamed from the video, masks written one by one, so the process' resident set
must stay flat however long the video.

    python -m benchmarks.segment_memory --frames 20000 --json benchmarks/results/segment-memory.json

makes a synthetic video (the demo clip, forward and backward, as an MP4), runs ``vos-segment``
on it in a child process and samples the child's VmRSS (``/proc/<pid>/status``) every
``--every`` seconds. Linux only.
"""
from __future__ import annotations

import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from benchmarks.common import machine_info
from benchmarks.machine import proc_status_bytes
from sdk.demo import make_clip
from sdk.overlay import OverlayWriter


def write_video(path: Path, frames: int, height: int, width: int) -> np.ndarray:
    """An MP4 of `frames` frames of the demo clip played forward and backward → its first mask."""
    rgb, labels = make_clip(frames=40, height=height, width=width)
    unit = list(range(40)) + list(range(38, 0, -1))
    with OverlayWriter(path, alpha=0.0) as writer:           # alpha 0: the plain frames
        for t in range(frames):
            writer.write(rgb[unit[t % len(unit)]], labels[0])
    return labels[0]


@click.command()
@click.option("--frames", type=click.IntRange(min=100), default=20000, show_default=True, help="Video length.")
@click.option("--size", default="160x120", show_default=True, metavar="WxH", help="Frame size of the video.")
@click.option("--method", default="first_latest", show_default=True, help="Memory policy (a bounded one).")
@click.option("--resolution", default="120", show_default=True, help="vos-segment --resolution.")
@click.option("--every", type=float, default=1.0, show_default=True, help="Seconds between two RSS samples.")
@click.option("--json", "json_path", required=True, type=click.Path(dir_okay=False, path_type=Path), metavar="FILE")
def main(frames, size, method, resolution, every, json_path):
    """Sample the resident set of vos-segment over a long synthetic video."""
    width, height = (int(v) for v in size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="vosedge-segmem-") as tmp:
        tmp = Path(tmp)
        click.echo(f"writing a {frames}-frame {width}x{height} video …", err=True)
        from sdk.io import write_mask

        write_mask(tmp / "first.png", write_video(tmp / "video.mp4", frames, height, width))
        cmd = [sys.executable, "-c", "from sdk.cli import main; main()", "--frames", str(tmp / "video.mp4"),
               "--mask", str(tmp / "first.png"), "--out", str(tmp / "out"), "--method", method,
               "--resolution", resolution, "--providers", "cpu"]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        samples = {"seconds": [], "masks": [], "rss_bytes": []}
        while proc.poll() is None:
            rss = proc_status_bytes("VmRSS", proc.pid)
            masks = sum(1 for _ in (tmp / "out").glob("*.png")) if (tmp / "out").is_dir() else 0
            if rss is not None:
                samples["seconds"].append(round(time.monotonic() - start, 2))
                samples["masks"].append(masks)
                samples["rss_bytes"].append(rss)
            time.sleep(every)
        output = proc.communicate()[0].decode()
        if proc.returncode != 0:
            raise click.ClickException(f"vos-segment failed ({proc.returncode}): {output.strip()}")
    after = [r for m, r in zip(samples["masks"], samples["rss_bytes"]) if m >= frames // 10]
    report = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.segment_memory", *sys.argv[1:]]),
        "machine": machine_info(["CPUExecutionProvider"]),
        "frames": frames, "size": [width, height], "method": method, "resolution": resolution,
        "seconds": round(time.monotonic() - start, 1),
        "rss_after_warmup_bytes": after[0] if after else None,
        "rss_growth_after_warmup_bytes": int(max(after) - after[0]) if len(after) >= 2 else None,
        "rss_peak_bytes": max(samples["rss_bytes"]) if samples["rss_bytes"] else None,
        "samples": samples,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    growth = report["rss_growth_after_warmup_bytes"]
    click.echo(f"{frames} frames in {report['seconds']} s; RSS after warm-up "
               f"{(report['rss_after_warmup_bytes'] or 0) / 2**20:.1f} MiB, growth after it "
               f"{'–' if growth is None else f'{growth / 1024:+.0f} KiB'}; {json_path}")


if __name__ == "__main__":
    main()
