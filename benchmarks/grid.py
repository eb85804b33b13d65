"""vos-grid: vos-eval over a grid of exports × internal resolutions × memory policies, in one
run, into one JSON, one markdown table and one plot of J&F against fps (the Pareto front).

Every cell (model, resolution, method) is a whole vos-eval of the split in a fresh process (its
own peak RSS, no heap history of the cells before it). The cells run method by method,
resolution by resolution, and the models take turns inside (fp32, int8, fp32, int8, …), so a
machine that drifts during the run weighs on every model alike: the speed-up of one export
over another is read off cells that ran minutes apart, never an hour apart.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import click
import numpy as np

from benchmarks.report import MIB, save_figure
from sdk import POLICIES, cli, dmn_aoa
from sdk.errors import ParameterError
from sdk.manifest import MANIFEST_FILE, sha256_file

EXAMPLES = """\b
Examples:
  vos-grid --data ../shared/data/davis2016-480p --split val \\
           --models fp32=sdk/models/default,int8=exports/lite-int8 --resolutions 240,360,480 \\
           --json runs/grid.json --table runs/grid.md --plot runs/pareto.png
  vos-grid --data ../shared/data/davis2016-240p --split val --sequences blackswan,cows \\
           --models bundled --methods every_k,lfu --resolutions 240 --json runs/quick.json

\b
A cell already in --json (same data, split, sequences, --param values, providers and the same
export: its manifest's sha256) is not run again: an interrupted grid resumes where it stopped;
the cells of a re-exported model run again (--no-resume runs every cell). fps = frames / seconds in
Segmenter.step; p50/p90 over every frame of the split; bank = the largest at a sequence's end;
peak RSS = the cell's process (graphs, bank, frames).
"""


def _models(ctx, param, value: str) -> dict[str, str | None]:
    """'fp32=DIR,int8=DIR' (or 'bundled', or a bare DIR named after its folder) → {name: DIR or None}."""
    models = {}
    for item in cli.comma_list(ctx, param, value) or []:
        name, _, folder = item.rpartition("=") if "=" in item else (None, None, item)
        folder = None if folder == "bundled" else folder
        name = name or ("bundled" if folder is None else Path(folder).name)
        if name in models:
            raise click.BadParameter(f"model name {name!r} given twice; name them: A=DIR,B=DIR")
        models[name] = folder
    if not models:
        raise click.BadParameter("give at least one export: NAME=DIR or 'bundled'")
    return models


def _resolutions(ctx, param, value: str) -> list[int | None]:
    """'240,360,native' → [240, 360, None] (each as vos-eval's --resolution parses it)."""
    return [cli.parse_resolution(ctx, param, item) for item in cli.comma_list(ctx, param, value) or []]


def _methods(ctx, param, value: str | None) -> list[str]:
    methods = cli.comma_list(ctx, param, value) or list(POLICIES)
    known = (*POLICIES, dmn_aoa.METHOD)
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise click.BadParameter(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return methods


def run_cell(data: str, split: str, sequences: list[str], model: str | None, method: str, resolution,
             providers: list[str] | None, params: dict) -> dict:
    """One vos-eval (in the calling process: vos-grid runs it in a fresh one) → its scores, speed
    and memory: ``J&F``/``J``/``F`` (x100, means over objects), ``fps``, ``latency_ms``
    {p50, p90, mean} over every frame, ``frames``, ``bank_bytes`` (largest at a sequence's end),
    ``peak_rss_bytes`` (this process), ``precision`` (the manifest's ``precision.dtype``:
    float32, float16 or int8), ``per_sequence`` J&F. Raises what vos-eval's steps raise
    (sdk errors, OSError)."""
    from benchmarks.eval import _percent, evaluate
    from benchmarks.machine import peak_rss_bytes
    from sdk.metrics import summarize

    segmenter = cli.make_segmenter(Path(model) if model else None, method, resolution, providers, params)
    objects, latencies, per_sequence, bank = [], [], {}, 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vos-grid-") as out:
        for sequence in sequences:
            scores, seconds = evaluate(segmenter, Path(data), sequence, Path(out))
            objects += scores.values()
            latencies += seconds
            per_sequence[sequence] = _percent(summarize(scores.values()))["J&F"]
            bank = max(bank, segmenter.bank_bytes)
    ms = np.asarray(latencies) * 1e3
    return {**_percent(summarize(objects)), "fps": round(len(ms) / (ms.sum() / 1e3), 2),
            "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 2),
                           "p90": round(float(np.percentile(ms, 90)), 2), "mean": round(float(ms.mean()), 2)},
            "frames": len(ms), "bank_bytes": bank, "peak_rss_bytes": peak_rss_bytes(),
            "precision": segmenter.manifest.precision["dtype"], "providers": segmenter.providers,
            "resolution": segmenter.resolution or "native", "per_sequence": per_sequence,
            "seconds": round(time.perf_counter() - start, 1)}


def resumable_cells(old: dict, report: dict) -> tuple[list[dict], dict[str, str]]:
    """The cells of an earlier grid ``old`` (its parsed --json) that this run (``report``) may
    keep instead of running again, and the manifest digests ({model name: sha256 hex}) of the
    models they belong to that this run does not name. A cell is kept when the data, split,
    sequences, --param values and providers are the same and its model is still the same export
    (the sha256 of its manifest.json, which lists every graph's sha256) — or is not in this run
    at all (its cells stay in the file as they were). The cells of a model re-exported since (or
    of a grid that recorded no digests) are dropped with a line on stderr naming the model, so a
    changed export is never reported with the old one's scores. Raises nothing."""
    cells = old.get("cells", [])
    if not all(old.get(k) == report[k] for k in ("data", "split", "sequences", "params", "providers")):
        if cells:
            click.echo(f"vos-grid: not resuming {len(cells)} cell(s): the earlier run had other data, "
                       "split, sequences, --param values or providers", err=True)
        return [], {}
    then, now = old.get("model_manifests_sha256") or {}, report["model_manifests_sha256"]
    kept, stale = [], set()
    for c in cells:
        name = c.get("model")
        if name in now and then.get(name) != now[name]:
            stale.add(name)
        else:
            kept.append(c)
    if stale:
        click.echo(f"vos-grid: running again the cells of {', '.join(sorted(map(str, stale)))}: the export differs "
                   "from the one the earlier run measured (or that run recorded no manifest digest)", err=True)
    others = {c.get("model") for c in kept} - set(now)
    return kept, {name: then[name] for name in others if name in then}


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (fps, J&F) points no other point beats on both (≥ on both, > on one),
    by increasing fps: the front of the J&F-against-fps plot."""
    front = [i for i, (f, j) in enumerate(points)
             if not any(f2 >= f and j2 >= j and (f2 > f or j2 > j) for f2, j2 in points)]
    return sorted(front, key=lambda i: points[i][0])


def markdown_table(cells: list[dict]) -> str:
    """One row per cell (method, resolution, model order), with the fps ratio against the first
    model's cell of the same method and resolution."""
    first = {}
    for c in cells:
        first.setdefault((c["method"], c["resolution"]), c)
    lines = ["| method | internal | model | precision | J&F | J | F | fps | × first | p50 | p90 | bank | peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        base = first[(c["method"], c["resolution"])]
        lines.append(f"| `{c['method']}` | {c['resolution']} | {c['model']} | {c['precision']} | {c['J&F']:.1f} | "
                     f"{c['J']:.1f} | {c['F']:.1f} | {c['fps']:.1f} | {c['fps'] / base['fps']:.2f} | "
                     f"{c['latency_ms']['p50']:.1f} ms | {c['latency_ms']['p90']:.1f} ms | "
                     f"{c['bank_bytes'] / MIB:.1f} MiB | {c['peak_rss_bytes'] / MIB:.0f} MiB |")
    return "\n".join(lines) + "\n"


def plot(cells: list[dict], path: Path, title: str) -> Path:
    """J&F against fps, one colour per model, one marker per internal resolution, the Pareto
    front as a line; needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    models = list(dict.fromkeys(c["model"] for c in cells))
    resolutions = list(dict.fromkeys(str(c["resolution"]) for c in cells))
    markers = "os^Dv<>P*X"
    for c in cells:
        ax.scatter(c["fps"], c["J&F"], color=f"C{models.index(c['model'])}",
                   marker=markers[resolutions.index(str(c["resolution"])) % len(markers)], s=36)
        ax.annotate(c["method"], (c["fps"], c["J&F"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    front = pareto([(c["fps"], c["J&F"]) for c in cells])
    ax.plot([cells[i]["fps"] for i in front], [cells[i]["J&F"] for i in front], "k--", lw=0.8, label="Pareto front")
    for i, m in enumerate(models):
        ax.scatter([], [], color=f"C{i}", label=m)
    for i, r in enumerate(resolutions):
        ax.scatter([], [], color="grey", marker=markers[i % len(markers)], label=f"{r} px")
    ax.set_xlabel("fps (Segmenter.step)")
    ax.set_ylabel("J&F")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path, title)


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXAMPLES)
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              metavar="ROOT", help="DAVIS-layout root: JPEGImages/, Annotations/, ImageSets/.")
@click.option("--split", default="val", show_default=True, help="Split file ImageSets/<split>.txt.")
@click.option("--sequences", callback=cli.comma_list, metavar="A,B", help="Only these sequences of the split.")
@click.option("--models", required=True, callback=_models, metavar="NAME=DIR,...",
              help="Exports to compare, named (fp32=sdk/models/default,int8=exports/lite-int8); "
                   "'bundled' is the bundled model.")
@click.option("--resolutions", default="240,360,480", show_default=True, callback=_resolutions,
              metavar="PX,...", help="Internal short sides ('native': input size).")
@click.option("--methods", default=None, callback=_methods, metavar="A,B",
              help=f"Memory policies. Default: all ({', '.join(POLICIES)}).")
@click.option("--providers", callback=cli.comma_list, metavar="LIST",
              help="ONNX Runtime providers in order of preference. Default: CUDA if available, else CPU.")
@cli.param_option()
@click.option("--json", "json_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Results (JSON), rewritten after every cell.")
@click.option("--table", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Markdown table of the cells.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="PNG: J&F against fps with the Pareto front (needs matplotlib).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Keep the cells --json already holds for the same data, split, sequences, --param values, "
                   "providers and exports (manifest sha256).")
def main(data, split, sequences, models, resolutions, methods, providers, params, json_path, table, plot_path,
         resume):
    """Evaluate every (export, internal resolution, memory policy) on a DAVIS split: J&F, fps,
    p50/p90 latency, bank bytes and peak RSS, each cell in its own process."""
    from benchmarks.eval import split_sequences
    from benchmarks.machine import bench_machine

    try:                                      # every --param goes to every method: each must take it
        for name, value in params.items():
            cli.check_param(name, value, None if name in cli.SEGMENTER_PARAMS else methods)
    except ParameterError as error:
        raise cli.usage_error(error) from error
    with cli.user_errors():
        names = split_sequences(data, split, sequences)
        digests = {}
        for name, folder in models.items():   # a bad export or parameter fails now, not after an hour
            segmenter = cli.make_segmenter(Path(folder) if folder else None, methods[0], resolutions[0], providers,
                                           params)
            used, digests[name] = segmenter.providers, sha256_file(segmenter.manifest.root / MANIFEST_FILE)
    report = {"format": "vosedge-grid", "version": 1, "command": "vos-grid " + " ".join(sys.argv[1:]),
              "data": str(data), "split": split, "sequences": names, "models": models,
              "model_manifests_sha256": digests, "params": params, "providers": providers,
              "machine": bench_machine(used), "cells": []}
    if resume and json_path.is_file():
        report["cells"], others = resumable_cells(json.loads(json_path.read_text()), report)
        report["model_manifests_sha256"].update(others)
    done = {(c["model"], str(c["resolution"]), c["method"]) for c in report["cells"]}
    todo = [(m, r, name) for m in methods for r in resolutions for name in models
            if (name, str(r if r is not None else "native"), m) not in done]
    ctx = get_context("spawn")
    with click.progressbar(todo, label="vos-grid cells", show_pos=True,
                           item_show_func=lambda c: c and f"{c[0]} {c[1]} {c[2]}") as bar:
        for method, resolution, name in bar:
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:   # a fresh process per cell
                cell = pool.submit(run_cell, str(data), split, names, models[name], method, resolution,
                                   providers, params).result()
            report["cells"].append({"model": name, "method": method, **cell})
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(report, indent=2) + "\n")
    order = {(m, str(r if r is not None else "native"), n): i
             for i, (m, r, n) in enumerate((m, r, n) for m in methods for r in resolutions for n in models)}
    cells = sorted(report["cells"], key=lambda c: order.get((c["method"], str(c["resolution"]), c["model"]), 1e9))
    if table:
        table.parent.mkdir(parents=True, exist_ok=True)
        table.write_text(markdown_table(cells))
    if plot_path:
        plot(cells, plot_path, f"{Path(data).name} {split}: J&F against fps ({report['machine']['cpu']}, "
                               f"{report['machine']['cores']} cores)")
    click.echo(markdown_table(cells))
    click.echo(f"results: {json_path}")
