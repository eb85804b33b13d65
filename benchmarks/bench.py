"""vos-bench: speed, latency, memory and J&F of memory policies on synthetic long videos.

A video of length L plays a DAVIS sequence forward then backward L times (RDE-VOS §4.3:
every frame keeps its ground truth and neighbouring frames stay smooth).
"""

from __future__ import annotations

import json
import resource
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np

from benchmarks.common import machine_info, play, prompts, read_ground_truth
from benchmarks.metrics import evaluate_sequence, summarize
from sdk import cli
from sdk.davis import davis_sequence_dirs
from sdk.io import iter_frames

WARMUP_FRAMES = 3

EXAMPLES = """\b
Examples:
  vos-bench --data ../shared/data/davis2016-240p --sequence cows --json runs/bench.json
  vos-bench --data ../shared/data/davis2016-240p --sequence cows \\
            --methods every_k,first_latest --lengths 1,5,10 --providers cpu --json runs/long.json

\b
Latency is the time of one Segmenter.step (time.perf_counter) after 3 warm-up frames; fps
counts the same frames. peak_rss_bytes is the process' peak resident set so far
(getrusage), so it never decreases from one run to the next of the same invocation.
"""


def ping_pong(frames: int, length: int) -> list[int]:
    """Frame order of a synthetic long video: (0..T−1, T−2..1) repeated `length` times."""
    unit = list(range(frames)) + list(range(frames - 2, 0, -1))
    return unit * length


def _lengths(ctx, param, value: str) -> list[int]:
    """Click callback: '1,5,10' -> [1, 5, 10], each ≥ 1."""
    try:
        lengths = [int(v) for v in cli.comma_list(ctx, param, value) or []]
    except ValueError:
        raise click.BadParameter("expected comma-separated integers") from None
    if not lengths or min(lengths) < 1:
        raise click.BadParameter("lengths must be ≥ 1")
    return lengths


def run(segmenter, frames: Sequence[np.ndarray], gt: Sequence[np.ndarray], order: list[int]) -> dict:
    """Play frames[order] through a reset segmenter -> fps, latency percentiles (ms), bank
    bytes at the end, peak RSS and J&F (x100) against gt[order]."""
    played_gt = [gt[i] for i in order]
    latencies: list[float] = []
    stream = play(segmenter, (frames[i] for i in order), prompts(played_gt), latencies)
    objects = evaluate_sequence(stream, played_gt)
    timed = np.asarray(latencies[WARMUP_FRAMES:] or latencies)
    p50, p90, p99 = np.percentile(timed * 1000, [50, 90, 99])
    return {
        "frames": len(order),
        "fps": round(len(timed) / timed.sum(), 2),
        "latency_ms": {"p50": round(p50, 2), "p90": round(p90, 2), "p99": round(p99, 2)},
        "bank_bytes": int(segmenter.bank_bytes),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
        "jf": round(100 * summarize(objects.values())["J&F"], 2),
    }


@click.command(epilog=EXAMPLES)
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path), metavar="ROOT",
              help="DAVIS-layout root: JPEGImages/, Annotations/.")
@click.option("--sequence", required=True, help="Sequence to play, e.g. cows.")
@click.option("--methods", default="every_k,first_latest", show_default=True, metavar="A,B",
              callback=cli.comma_list, help="Memory policies to compare.")
@click.option("--lengths", default="1", show_default=True, metavar="L1,L2", callback=_lengths,
              help="Video lengths in forward+backward units.")
@click.option("--json", "json_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Where the results go (JSON).")
@cli.segmenter_options(method=False)
def main(data, sequence, methods, lengths, json_path, model, resolution, providers):
    """Benchmark memory policies: fps, latency p50/p90/p99, bank bytes, peak RSS, J&F."""
    if not methods:
        raise click.BadParameter("name at least one memory policy", param_hint="--methods")
    with cli.user_errors():
        frames_dir, annotations = davis_sequence_dirs(data, sequence)
        names, frames = zip(*iter_frames(frames_dir))
        gt = read_ground_truth(annotations, names)
        results = []
        for name in methods:
            segmenter = cli.make_segmenter(model, name, resolution, providers)
            for length in lengths:
                segmenter.reset()
                order = ping_pong(len(frames), length)
                result = {"method": name, "length": length, **run(segmenter, frames, gt, order)}
                results.append(result)
                click.echo(f"{name:<14} L={length:<3} {result['frames']:6d} frames {result['fps']:7.2f} fps  "
                           f"p50 {result['latency_ms']['p50']:.1f} ms  bank {result['bank_bytes'] / 2**20:.1f} MiB  "
                           f"J&F {result['jf']:.1f}")
    report = {
        "machine": machine_info(segmenter.providers),
        "sequence": sequence,
        "model": str(model) if model else "bundled",
        "resolution": segmenter.resolution or "native",
        "results": results,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    click.echo(f"results: {json_path}")
