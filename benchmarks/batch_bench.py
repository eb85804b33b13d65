"""Batch throughput (issue 29; a benchmark, not a test): ``vos-segment --batch`` over a
DAVIS-layout split with 1 and 2 workers, on the local pool and on a one-machine Ray →
videos/hour, frames/s, Ray's overhead per video against the local pool, and the scaling of
2 workers over 1, with the machine they were measured on.

    python -m benchmarks.batch_bench --data ../shared/data/davis2016-240p --split val \\
        --resolution 240 --json benchmarks/results/batch-davis2016-240p-val-r240.json

Each configuration segments every sequence into a fresh temporary folder (nothing skipped)
through :func:`sdk.batch.run_batch`, the code ``vos-segment --batch`` runs, with the same
ONNX Runtime threads per worker in every configuration (``--threads``, default 1) so the
workers' count is the only change. The wall time of a configuration runs from the first
video handed out to the last result, the workers' start (spawned processes or Ray actors,
each loading the graphs) included; Ray's own start (``ray.init``) is timed apart, once, since
a cluster is started once for many batches. Configurations run interleaved
(local 1, Ray 1, local 2, Ray 2) ``--repeats`` times; the best of each is reported.
"""
from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import click

from benchmarks.machine import bench_machine
from sdk import cli
from sdk.batch import WorkerConfig, davis_jobs, run_batch


def measure(jobs_of, config: WorkerConfig, workers: int, ray: str | None) -> dict:
    """One configuration's run → its figures (wall s, videos/hour, frames/s, per-video fps)."""
    with tempfile.TemporaryDirectory(prefix="vosedge-batch-bench-") as tmp:
        jobs = jobs_of(Path(tmp))
        summary = run_batch(jobs, config, Path(tmp) / "summary.json", workers, ray, progress=False)
    failed = [v for v in summary["videos"] if v["status"] != "ok"]
    if failed:
        raise click.ClickException(f"{failed[0]['name']}: {failed[0]['error']}")
    return {"backend": "ray" if ray else "local", "workers": workers, "videos": summary["videos_ok"],
            "frames": summary["frames_segmented"], "wall_seconds": summary["wall_seconds"],
            "videos_per_hour": summary["videos_per_hour"], "frames_per_second": summary["frames_per_second"],
            "workers_seen": sorted({v["worker"] for v in summary["videos"]})}


def analyse(best: dict[tuple[str, int], dict]) -> dict:
    """Ray's overhead per video against the local pool (same workers: (wall Ray − wall
    local) / videos) and the scaling of 2 workers over 1 (speed-up = frames/s ratio;
    efficiency = speed-up / 2)."""
    out = {}
    for workers in (1, 2):
        local, ray = best.get(("local", workers)), best.get(("ray", workers))
        if local and ray:
            out[f"ray_overhead_s_per_video_{workers}w"] = round((ray["wall_seconds"] - local["wall_seconds"])
                                                                / local["videos"], 3)
    for backend in ("local", "ray"):
        one, two = best.get((backend, 1)), best.get((backend, 2))
        if one and two:
            speedup = two["frames_per_second"] / one["frames_per_second"]
            out[f"{backend}_speedup_2w"] = round(speedup, 3)
            out[f"{backend}_scaling_efficiency_2w"] = round(speedup / 2, 3)
    return out


def markdown(report: dict) -> str:
    """The README table of a report."""
    m = report["machine"]
    lines = [f"Batch throughput: {report['videos']} videos ({report['frames']} frames) of {report['data']} "
             f"{report['split']}, {report['resolution']} px internal, method {report['method']}, "
             f"{report['threads']} ONNX Runtime thread(s) per worker, best of {report['repeats']}; "
             f"{m['cpu']}, {m['cores']} logical cores, ORT {m['onnxruntime']} "
             f"(load average at start {m.get('load_average')}).", "",
             "| backend | workers | wall s | videos/hour | frames/s |", "|---|---|---|---|---|"]
    for r in report["best"]:
        lines.append(f"| {r['backend']} | {r['workers']} | {r['wall_seconds']:.1f} | {r['videos_per_hour']:.0f} "
                     f"| {r['frames_per_second']:.1f} |")
    a = report["analysis"]
    start = report["ray_init_seconds"]
    notes = [f"Ray's start (ray.init, once, not in the wall times): {start:.1f} s"] if start is not None else []
    overhead = [f"{a[f'ray_overhead_s_per_video_{w}w']:+.2f} s ({w} worker{'s' * (w > 1)})" for w in (1, 2)
                if f"ray_overhead_s_per_video_{w}w" in a]
    if overhead:
        notes.append("Ray's overhead per video against the local pool: " + ", ".join(overhead))
    scaling = [f"{b} {a[f'{b}_speedup_2w']:.2f}× (efficiency {100 * a[f'{b}_scaling_efficiency_2w']:.0f} %)"
               for b in ("local", "ray") if f"{b}_speedup_2w" in a]
    if scaling:
        notes.append("Speed-up of 2 workers over 1 (frames/s): " + ", ".join(scaling))
    lines += ["", ". ".join(notes) + "."]
    return "\n".join(lines) + "\n"


@click.command(context_settings=cli.CONTEXT_SETTINGS)
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path), metavar="ROOT")
@click.option("--split", default="val", show_default=True)
@click.option("--resolution", default="240", show_default=True, callback=cli.parse_resolution, metavar="PX|native")
@click.option("--method", default=None, help="Memory policy (default: the model's).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="ONNX Runtime intra-op threads per worker, in every configuration.")
@click.option("--repeats", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--no-ray", is_flag=True, help="Only the local pool.")
@click.option("--json", "json_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Report JSON; the markdown table goes beside it (.md).")
def main(data, split, resolution, method, threads, repeats, no_ray, json_path):
    """Measure vos-segment --batch throughput: local pool vs Ray, 1 and 2 workers."""
    config = WorkerConfig(method=method, resolution=resolution, providers=("cpu",), params={"threads": threads})

    def jobs_of(out: Path):
        return davis_jobs(data, split, out)

    machine = bench_machine(["CPUExecutionProvider"])
    ray_init = None
    if not no_ray:
        from sdk.batch_ray import import_ray   # noqa: PLC0415

        ray = import_ray("batch_bench")
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray_init = round(time.perf_counter() - start, 3)
    runs = []
    try:
        for _ in range(repeats):
            for workers in (1, 2):
                for backend in ("local",) if no_ray else ("local", "ray"):
                    run = measure(jobs_of, config, workers, "auto" if backend == "ray" else None)
                    click.echo(f"{backend} {workers} worker(s): {run['wall_seconds']:.1f} s, "
                               f"{run['frames_per_second']:.1f} frames/s", err=True)
                    runs.append(run)
    finally:
        if not no_ray:
            ray.shutdown()
    best = {}
    for run in runs:
        key = (run["backend"], run["workers"])
        if key not in best or run["wall_seconds"] < best[key]["wall_seconds"]:
            best[key] = run
    report = {"data": str(data), "split": split, "resolution": resolution or "native",
              "method": method or "model default", "threads": threads, "repeats": repeats,
              "videos": runs[0]["videos"], "frames": runs[0]["frames"], "ray_init_seconds": ray_init,
              "best": list(best.values()), "runs": runs, "analysis": analyse(best), "machine": machine,
              "command": "python -m benchmarks.batch_bench " + shlex.join(sys.argv[1:])}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    json_path.with_suffix(".md").write_text(markdown(report))
    click.echo(markdown(report))


if __name__ == "__main__":
    main()
