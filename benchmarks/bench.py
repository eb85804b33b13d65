"""vos-bench: speed, latency, memory and J&F of memory policies on long videos played from a real clip.

A video of length L plays a DAVIS sequence forward then backward L times (RDE-VOS §4.3:
every frame keeps its ground truth and neighbouring frames stay smooth); ``--stream-frames N``
plays that same order for exactly N frames (a soak run). ``--frames N``, its old name, still
works with a deprecation warning (vos-segment's ``--frames`` is the input video, not a count). Each (method, length) run happens
in a fresh process by default, so its peak resident set is its own. The JSON it writes is
documented in docs/bench-json.md.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import shlex
import sys
from collections import Counter
from pathlib import Path

import click
from tqdm import tqdm

import sdk
from benchmarks.machine import bench_machine
from benchmarks.playback import check_sequence, run_counts, schedule, unit_frames
from benchmarks.report import markdown_table, measured, plot, plot_soak, soak_table
from benchmarks.runs import (
    WARMUP_FRAMES,
    lockstep,
    run_inprocess,
    run_isolated,
    summarize_runs,
)
from sdk import cli, dmn_aoa
from sdk.errors import ParameterError
from sdk.manifest import DEFAULT_MODEL_DIR, MANIFEST_FILE, resolve_model, sha256_file
from sdk.params import resolution as check_resolution

FORMAT, VERSION = "vosedge-bench", 1
EXIT_INTERRUPTED = cli.EXIT_INTERRUPTED  # 130 = 128 + SIGINT, as a shell reports Ctrl-C

EXAMPLES = """\b
Examples:
  vos-bench --data ../shared/data/davis2016-480p --sequence blackswan \\
            --methods every_k,first_latest,lfu --lengths 1,10,20 --resolution 240p \\
            --json runs/bench.json --plots runs/plots --table runs/bench.md
  vos-bench --data ../shared/data/davis2016-240p --sequence cows --methods lfu \\
            --stream-frames 10000 --json runs/soak.json           # constant-memory soak
  vos-export --from-export sdk/models/default --precision fp16 --out exports/lite-fp16
  vos-bench --data ../shared/data/davis2016-240p --sequence cows --lengths 1 \\
            --model exports/lite-fp16 --providers cuda,cpu --json runs/fp16.json

\b
L = 1 is the sequence forward then backward (2T-2 frames for T frames), L = 10 that ten
times. By default (--balance) shorter videos are repeated until every length is timed over
about as many frames as the longest (L = 1 twenty times next to L = 20 once), and
(--lockstep) a method's lengths run side by side, one process each, taking turns one frame
at a time, so the comparison across lengths does not hang on a noisy machine's drift. Each
video first steps --warmup frames and resets, then times every frame of the video: latency
= one Segmenter.step (time.perf_counter), fps = frames / their summed latency, stage times
= Segmenter.timings means. Bank bytes: the memory bank's arrays at the end (and after frame
0). Peak RSS: the process' high-water resident set over the timed frames (Linux VmHWM,
reset at their start); with the default --isolate each length has its own process. J&F:
DAVIS 2017 protocol over the whole played video. The reference (--reference) runs the
same weights' every_k loop through PyTorch on the first length, frame by frame alternating
with the sdk: overhead_ratio = sdk ms/frame over torch ms/frame. Methods the model cannot
run (e.g. rde without SAM graphs) are recorded as skipped. Ctrl-C stops the benchmark and
leaves a valid JSON of the runs done ("interrupted": true, exit code 130); the JSON is also
rewritten after every run. Full schema: docs/bench-json.md.
"""


# --- the report -----------------------------------------------------------------------------------


def write_json(path: Path, report: dict) -> None:
    """Atomically replace `path` with `report` as JSON (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


def _summary_line(r: dict) -> str:
    if "skipped" in r:
        return f"{r['method']:<13} skipped: {r['skipped']}"
    length = r["length"] if isinstance(r["length"], int) else f"{r['length']:.2f}"
    jf = "–" if r["jf"] is None else f"{r['jf']:.1f}"
    return (f"{r['method']:<13} L={length:<5} {r['frames']:6d} frames {r['fps']:7.2f} fps  "
            f"p50 {r['latency_ms']['p50']:.1f} ms  bank {r['bank_bytes'] / 2**20:.1f} MiB  "
            f"RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB  J&F {jf}")


# --- options ---------------------------------------------------------------------------------------


def _lengths(ctx, param, value: str | None) -> list[int] | None:
    """Click callback: '1,5,10' -> [1, 5, 10], each ≥ 1; absent -> None."""
    if value is None:
        return None
    try:
        lengths = [int(v) for v in cli.comma_list(ctx, param, value) or []]
    except ValueError:
        raise click.BadParameter("expected comma-separated integers") from None
    if not lengths or min(lengths) < 1:
        raise click.BadParameter("lengths must be ≥ 1")
    return list(dict.fromkeys(lengths))


def parse_resolution(ctx, param, value: str | None):
    """Click callback → (Segmenter resolution, input size): absent → ('manifest', None);
    'native' → (None, None); '240' or '240p' → (240, None): internal short side 240 px;
    'WxH' → (None, (W, H)): frames and ground truth resized to W×H, run at that native size."""
    if value is None:
        return "manifest", None
    text = value.strip().lower()
    if text == "native":
        return None, None
    if (m := re.fullmatch(r"(\d+)p?", text)) and int(m[1]) > 0:
        return int(m[1]), None
    if (m := re.fullmatch(r"(\d+)x(\d+)", text)) and int(m[1]) > 0 and int(m[2]) > 0:
        return None, (int(m[1]), int(m[2]))
    raise click.BadParameter("expected a short side in px ('240', '480p'), 'WxH' (e.g. '854x480') or 'native'")


def _methods(ctx, param, value: str | None) -> list[str]:
    methods = list(dict.fromkeys(cli.comma_list(ctx, param, value) or []))
    if not methods:
        raise click.BadParameter("name at least one memory policy")
    known = (*sdk.POLICIES, dmn_aoa.METHOD)
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise click.BadParameter(f"unknown {', '.join(unknown)}; known: {', '.join(known)}")
    return methods


@click.command(context_settings=cli.CONTEXT_SETTINGS, epilog=EXAMPLES)
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path), metavar="ROOT",
              help="DAVIS-layout root: JPEGImages/, Annotations/.")
@click.option("--sequence", required=True, help="Sequence to play, e.g. blackswan.")
@click.option("--methods", default=",".join(sdk.POLICIES), show_default=True, metavar="A,B", callback=_methods,
              help="Memory policies to compare; those the model lacks graphs for are recorded as skipped.")
@click.option("--lengths", metavar="L1,L2", callback=_lengths,
              help="Video lengths in forward+backward units.  [default: 1,10,20]")
@click.option("--stream-frames", "stream_frames", type=click.IntRange(min=1), metavar="N",
              help="Instead of --lengths: one stream of exactly N frames of the same order (soak run).")
@click.option("--frames", "old_stream_frames", type=click.IntRange(min=1), hidden=True,
              help="Deprecated name of --stream-frames (warns).")
@click.option("--resolution", callback=parse_resolution, metavar="PX|Np|WxH|native",
              help="Internal short side ('240', '240p'), input resized to W×H ('854x480'), or 'native'. "
                   "Default: the model's.")
@click.option("--providers", callback=cli.comma_list, metavar="LIST",
              help="ONNX Runtime providers in order of preference, e.g. 'cpu' or 'cuda,cpu'. "
                   "Default: CUDA if available, else CPU.")
@click.option("--model", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Export folder (manifest.json + ONNX graphs), of any precision (vos-export --precision "
                   "fp16|int8; the JSON's precision is the manifest's). Default: the bundled model.")
@click.option("--json", "json_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Where the results go (JSON, rewritten after every run).")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write fps/memory/J&F-vs-length PNG plots here.")
@click.option("--table", "table_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the results as a markdown table here.")
@click.option("--reference/--no-reference", default=None,
              help="Also run the same weights through PyTorch (every_k, first length) for the sdk's overhead "
                   "ratio. Default: on when torch is installed and the checkpoint is known.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Checkpoint (.safetensors + .json) the model was exported from, for --reference. Default "
                   "for the bundled model: training/weights/<config>[-main].safetensors, whichever reproduces "
                   "the export's keys.")
@click.option("--warmup", type=click.IntRange(min=0), default=WARMUP_FRAMES, show_default=True,
              help="Frames stepped (then reset) before each timed video.")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run every (method, length) this many times (× the balance factor); latencies are "
                   "pooled.")
@click.option("--balance/--no-balance", default=True, show_default=True,
              help="Repeat shorter videos until each length is timed over about as many frames as the longest, "
                   "their runs spread evenly around the longest one's (machine drift then weighs on every "
                   "length alike). --no-balance: each length --repeats times, alternate repeats reversed.")
@click.option("--max-frames", type=click.IntRange(min=2), metavar="N",
              help="Use only the first N frames of the sequence (quick runs, tests).")
@click.option("--isolate/--no-isolate", default=True, show_default=True,
              help="Each run in a fresh process (its own peak RSS), or all in this one.")
@click.option("--lockstep/--no-lockstep", "lockstep_runs", default=None,
              help="Run a method's lengths at once, one process each, taking turns frame by frame, so "
                   "machine drift weighs on every length alike. Default: on with --isolate. "
                   "--no-lockstep: one run after another.")
@cli.param_option()
def main(data, sequence, methods, lengths, stream_frames, old_stream_frames, resolution, providers, model, json_path,
         plots_dir, table_path, reference, checkpoint, warmup, repeats, balance, max_frames, isolate,
         lockstep_runs, params):
    """Benchmark memory policies on long videos played from a real DAVIS clip (forward then
    backward, repeated): fps, latency p50/p90/p99, stage times, memory-bank bytes, peak RSS,
    GPU memory and J&F against video length."""
    if old_stream_frames is not None:
        if stream_frames is not None:
            raise click.UsageError("--frames is the old name of --stream-frames: give --stream-frames alone")
        click.echo("warning: vos-bench --frames N is deprecated (vos-segment's --frames is the input video): "
                   "use --stream-frames N", err=True)
        stream_frames = old_stream_frames
    if stream_frames is not None and lengths is not None:
        raise click.UsageError("--stream-frames (one stream of N frames) and --lengths exclude each other")
    if lockstep_runs and not isolate:
        raise click.UsageError("--lockstep runs every length in its own process; it cannot go with --no-isolate")
    lockstep_runs = isolate if lockstep_runs is None else lockstep_runs
    resolution, size = resolution
    _check_params(params, methods)
    with cli.user_errors():
        count, native_size = check_sequence(data, sequence, max_frames)
        if count < 2:
            raise click.UsageError(f"sequence {sequence!r} needs at least 2 frames, has {count}")
        manifest = resolve_model(model)            # a broken model fails here, before any run
        if resolution != "manifest":               # the Segmenter's check, before any run
            try:
                check_resolution(resolution, manifest.stride)
            except ParameterError as error:
                raise cli.usage_error(error, model) from error     # in the command line's terms
        unit = unit_frames(count)
        if stream_frames is not None:
            points = [(stream_frames, ("frames", stream_frames), round(stream_frames / unit, 3))]
        else:
            points = [(length * unit, ("length", length), length) for length in lengths or [1, 10, 20]]
        reference, checkpoints, why_not = _reference_plan(reference, checkpoint, manifest)
        manifest_sha256 = sha256_file(resolve_model(model).root / MANIFEST_FILE)
        base = {"data": str(data), "sequence": sequence, "max_frames": max_frames, "size": size,
                "model": model and str(model), "resolution": resolution, "providers": providers,
                "warmup": warmup, "manifest_sha256": manifest_sha256, "params": params}
        report = {
            "format": FORMAT, "version": VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["vos-bench", *sys.argv[1:]]) if Path(sys.argv[0]).name == "vos-bench" else None,
            "machine": bench_machine([]),
            "data": str(data), "sequence": sequence, "sequence_frames": count, "unit_frames": unit,
            "input_size": list(size or native_size),
            "model": str(model) if model else "bundled", "model_config": manifest.config,
            "model_manifest_sha256": sha256_file(manifest.root / MANIFEST_FILE),
            "precision": manifest.precision["dtype"], "precision_graphs": manifest.precision["graphs"],
            "params": params,
            "resolution": manifest.resolution if resolution == "manifest" else resolution or "native",
            "mode": "stream" if stream_frames is not None else "lengths",
            "warmup_frames": warmup, "repeats": repeats, "balance": balance,
            "isolation": "process" if isolate else "none", "lockstep": lockstep_runs,
            "complete": False, "interrupted": False,
            "results": [], "reference": None if reference else {"skipped": why_not},
        }
        _bench(report, base, methods, points, reference, checkpoints, repeats, balance, isolate, lockstep_runs,
               json_path, plots_dir, table_path)


def _check_params(params: dict, methods: list[str]) -> None:
    """Every --param NAME=... goes to every method of --methods, METHOD.NAME=... to that one:
    each must take it, with a value in its range (:func:`sdk.cli.check_param`); else a usage
    error (exit 2) before any run."""
    try:
        for name, value in params.items():
            cli.check_param(name, value, None if name in cli.SEGMENTER_PARAMS else methods)
    except ParameterError as error:
        raise click.BadParameter(f"{error} (every --param NAME=... goes to every method of --methods; "
                                 "--param METHOD.NAME=... to one)",
                                 param_hint="'--param'") from error


def _params_line(report: dict) -> str:
    """'Policy parameters: `sigma=0.7`, `beta=10`' + a blank line, or '' when there are none."""
    params = report.get("params") or {}
    return f"Policy parameters (--param): {', '.join(f'`{k}={v!r}`' for k, v in params.items())}\n\n" if params else ""


def _reference_plan(reference: bool | None, checkpoint: Path | None, manifest) -> tuple[bool, list[Path], str]:
    """→ (run it?, candidate checkpoints, why not). Explicit --reference without torch or a
    checkpoint is a usage error; the default quietly goes without."""
    have_torch = importlib.util.find_spec("torch") is not None
    if checkpoint is not None:
        checkpoints = [checkpoint]
    elif manifest.root == DEFAULT_MODEL_DIR.resolve():
        from benchmarks.reference import default_checkpoints

        checkpoints = default_checkpoints(manifest)
    else:
        checkpoints = []
    why = ("--no-reference" if reference is False else "torch is not installed" if not have_torch
           else "no checkpoint known for this model (give --checkpoint)" if not checkpoints else "")
    if reference and why:
        raise click.UsageError(f"--reference: {why}")
    return (not why), checkpoints, why


def _bench(report, base, methods, points, reference, checkpoints, repeats, balance, isolate, lockstep_runs,
           json_path, plots_dir, table_path) -> None:
    """Run the schedule (method by method in :func:`lockstep`, or run by run), rewriting the
    JSON after every run; Ctrl-C → partial JSON, exit 130."""
    cache: dict = {}
    run = (lambda task, progress: run_isolated(task, progress)) if isolate else (
        lambda task, progress: run_inprocess(task, cache, progress))
    raws: dict[tuple[str, int], list[dict]] = {}
    skipped: dict[str, str] = {}
    providers: list[str] = []

    def results() -> list[dict]:
        out = []
        for method in methods:
            if method in skipped:
                out.append({"method": method, "skipped": skipped[method]})
            for p, (_, _, length) in enumerate(points):
                if (method, p) in raws:
                    out.append(summarize_runs(method, length, raws[(method, p)]))
        return out

    def save(**status) -> None:
        report.update(status)
        report["results"] = results()
        report["machine"]["providers"] = providers
        write_json(json_path, report)

    def bar(total: int, desc: str):
        b = tqdm(total=total, desc=desc, unit="frame", leave=False, dynamic_ncols=True)
        return b, (lambda n: b.update(n - b.n))

    def gave_up(method: str, p: int, kind: str, why: str) -> None:
        """A run of (method, point p) was skipped (the method is, from now on) or failed (raise)."""
        if kind == "error":
            save()
            raise click.ClickException(f"{method} L={points[p][2]}: {why}")
        skipped[method] = why
        tqdm.write(f"warning: {method} skipped: {why}", file=sys.stderr)

    def measured_runs(method: str, p: int, records: list[dict], last: bool) -> None:
        """Keep records of (method, point p); print its summary after its `last` run."""
        raws.setdefault((method, p), []).extend(records)
        providers[:] = providers or records[0]["providers"]
        if last:
            tqdm.write(_summary_line(summarize_runs(method, points[p][2], raws[(method, p)])))

    point_frames = [frames for frames, _, _ in points]

    def run_lockstep(method: str) -> None:
        """All of `method`'s lengths at once, in lockstep; each saved as its lane ends."""
        counts = run_counts(point_frames, repeats, balance)
        tasks = [{**base, "kind": "bench", "method": method, "order": order, "videos": counts[p]}
                 for p, (_, order, _) in enumerate(points)]
        failure: list[tuple[int, str, str]] = []          # the lane that failed first: (point, kind, why)

        def finished(p: int, kind: str, payload) -> None:
            if kind == "result":
                measured_runs(method, p, payload, last=True)
                save()
            elif not failure:
                failure.append((p, kind, payload))

        lengths = ",".join(str(length) for _, _, length in points)
        b, progress = bar(sum(c * f for c, f in zip(counts, point_frames)),
                          f"{method} L={lengths} in lockstep" if len(points) > 1 else f"{method} L={lengths}")
        with b:
            lockstep(tasks, progress, finished)
        if failure:
            gave_up(method, *failure[0])
            save()

    runs = [] if lockstep_runs else schedule(methods, point_frames, repeats, balance)
    total, done = Counter(runs), Counter()
    try:
        save()
        if reference:   # the first length (a stream: one forward+backward unit)
            order = points[0][1] if points[0][1][0] == "length" else ("length", 1)
            b, progress = bar(report["unit_frames"] * order[1] if order[0] == "length" else 0,
                              "reference (torch vs sdk)")
            with b:
                kind, payload = run({**base, "kind": "reference", "order": order,
                                     "checkpoints": [str(c) for c in checkpoints]}, progress)
            if kind == "result":
                report["reference"] = payload
                tqdm.write(f"reference: sdk {payload['sdk_ms_per_frame']:.1f} ms/frame, torch "
                           f"{payload['torch_ms_per_frame']:.1f} ms/frame → overhead ratio "
                           f"{payload['overhead_ratio']:.2f}")
            else:
                report["reference"] = {"skipped": payload}
                tqdm.write(f"warning: PyTorch reference skipped: {payload}", file=sys.stderr)
            save()
        for method in methods if lockstep_runs else []:
            run_lockstep(method)
        for method, p in runs:
            if method in skipped:
                continue
            frames, order, length = points[p]
            done[(method, p)] += 1
            n = done[(method, p)]
            b, progress = bar(frames, f"{method} L={length}" + (f" #{n}/{total[(method, p)]}"
                                                                if total[(method, p)] > 1 else ""))
            with b:
                kind, payload = run({**base, "kind": "bench", "method": method, "order": order}, progress)
            if kind == "result":
                measured_runs(method, p, [payload], last=n == total[(method, p)])
            else:
                gave_up(method, p, kind, payload)
            save()
    except KeyboardInterrupt:
        save(interrupted=True, complete=False)
        _outputs(report, plots_dir, table_path)
        click.echo(f"\ninterrupted: {len(measured(report['results']))} result(s) written to {json_path}", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    report["machine"].update({"load_average_end": bench_machine([])["load_average"]})
    save(complete=True)
    _outputs(report, plots_dir, table_path)
    click.echo(_params_line(report) + (soak_table if report["mode"] == "stream" else markdown_table)(report["results"]),
               nl=False)
    click.echo(f"results: {json_path}" + (f"; plots: {plots_dir}/" if plots_dir else "")
               + (f"; table: {table_path}" if table_path else ""))


def _outputs(report: dict, plots_dir: Path | None, table_path: Path | None) -> None:
    """The markdown table and the plots of whatever is in `report`."""
    stream = report["mode"] == "stream"
    if table_path:
        table_path.parent.mkdir(parents=True, exist_ok=True)
        table_path.write_text(_params_line(report) + (soak_table if stream else markdown_table)(report["results"]))
    if plots_dir and measured(report["results"]):
        resolution = report["resolution"]
        title = (f"{report['sequence']} ({report['unit_frames']} frames per unit), internal "
                 f"{resolution}{' px' if isinstance(resolution, int) else ''}, {report['precision']}, "
                 f"{report['machine']['cpu']} ×{report['machine']['cores']}, "
                 f"{', '.join(p.removesuffix('ExecutionProvider') for p in report['machine']['providers'])}")
        if stream:
            plot_soak(report["results"], plots_dir, title)
        else:
            plot(report["results"], plots_dir, title=title)
