"""vos-eval: J&F of the sdk on a DAVIS-layout data set (semi-supervised protocol)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import click
from tqdm import tqdm

from benchmarks.common import machine_info, play, prompts, read_ground_truth
from benchmarks.eval_batch import evaluate_parallel
from sdk import cli
from sdk.batch_cli import batch_options, check_batch_options
from sdk.davis import davis_sequence_dirs, split_subset
from sdk.errors import InputError
from sdk.io import iter_frames, list_frames, write_mask
from sdk.metrics import evaluate_sequence, summarize

EXAMPLES = """\b
Examples:
  vos-eval --data ../shared/data/davis2016-480p --split val --out runs/val --json runs/val.json
  vos-eval --data ../shared/data/davis2016-240p --split val --sequences blackswan,cows \\
           --method first_latest --providers cpu --out runs/q --json runs/q.json
  vos-eval --data ../shared/data/davis2016-240p --split val --method qdmn \\
           --param sigma=0.7 --param beta=10 --out runs/qdmn --json runs/qdmn.json

\b
Each sequence is segmented from its first-frame ground-truth mask (an object that first
appears later is given on its first frame); J (region IoU) and F (boundary F-measure) are
scored per object without the first and last frames (DAVIS 2017 toolkit) and reported x100.
Means are over objects, as in the toolkit; fps = frames / seconds spent in Segmenter.step.
"""


def evaluate(segmenter, root: Path, sequence: str, out: Path, progress: bool = True,
             on_frame=None) -> tuple[dict, list[float]]:
    """Segment one sequence, write `out/<sequence>/<frame>.png`, score it
    -> ({object_id: {"J": [...], "F": [...]}}, seconds spent in step per frame).
    ``progress=False``: no progress bar; ``on_frame()`` is called after each frame (a
    parallel run's worker reports its progress with it)."""
    frames, annotations = davis_sequence_dirs(root, sequence)
    names = list_frames(frames)
    gt = read_ground_truth(annotations, names)
    segmenter.reset()
    latencies: list[float] = []
    stream = play(segmenter, (rgb for _, rgb in iter_frames(frames)), prompts(gt), latencies)

    def predictions():
        for name, labels in tqdm(zip(names, stream), total=len(names), desc=sequence, unit="frame",
                                 disable=not progress):
            write_mask(out / sequence / f"{name}.png", labels)
            if on_frame:
                on_frame()
            yield labels

    return evaluate_sequence(predictions(), gt), latencies


def split_sequences(data: Path, split: str, sequences: list[str] | None) -> list[str]:
    """The sequences of ``ImageSets/<split>.txt`` under ``data``, or the given subset of them.
    Raises click.UsageError naming any of ``sequences`` the split lacks (and what
    :func:`sdk.davis.split_subset` raises for a missing split file)."""
    try:
        return split_subset(data, split, sequences)
    except InputError as error:
        raise click.UsageError(str(error)) from None


def _row(name: str, scores: dict) -> str:
    return (f"{name:<20} {scores['J']:6.1f} {scores['F']:6.1f} {scores['J&F']:6.1f} "
            f"{scores['frames']:7d} {scores['fps']:7.2f}")


def _percent(summary: dict) -> dict:
    """J&F, J, F (means) and the recalls/decays of a `summarize` result, x100."""
    keys = {"J&F": "J&F", "J": "J-Mean", "F": "F-Mean", "J-Recall": "J-Recall", "J-Decay": "J-Decay",
            "F-Recall": "F-Recall", "F-Decay": "F-Decay"}
    return {key: round(100 * summary[name], 2) for key, name in keys.items()}


@click.command(context_settings=cli.CONTEXT_SETTINGS, epilog=EXAMPLES)
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path), metavar="ROOT",
              help="DAVIS-layout root: JPEGImages/, Annotations/, ImageSets/.")
@click.option("--split", default="val", show_default=True, help="Split file ImageSets/<split>.txt.")
@click.option("--sequences", callback=cli.comma_list, metavar="A,B",
              help="Evaluate only these sequences of the split.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Where the predicted palette PNGs go: DIR/<sequence>/<frame>.png.")
@click.option("--json", "json_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Where the scores go (JSON).")
@batch_options("the sequences")
@cli.segmenter_options()
def main(data, split, sequences, out, json_path, model, method, resolution, providers, params,
         workers=1, ray_address=None, gpus_per_worker=0.0, retries=2):
    """Evaluate semi-supervised VOS (J&F, fps) of the sdk on a DAVIS-layout data set
    (in parallel with --workers N or --ray: the same scores as a serial run)."""
    parallel = workers > 1 or ray_address is not None
    check_batch_options(workers, ray_address, gpus_per_worker, "vos-eval --ray")
    with cli.user_errors():
        cli.check_method_params(model, method, params)
        names = split_sequences(data, split, sequences)
        segmenter = None if parallel else cli.make_segmenter(model, method, resolution, providers, params)
        all_objects, per_sequence, total_frames, total_seconds = [], {}, 0, 0.0
        warned = False

        def add(sequence: str, objects: dict, latencies: list[float], bank_bytes: int) -> None:
            nonlocal total_frames, total_seconds
            all_objects.extend(objects.values())
            per_sequence[sequence] = {**_percent(summarize(objects.values())), "frames": len(latencies),
                                      "fps": round(len(latencies) / sum(latencies), 2),
                                      "bank_bytes": bank_bytes}   # at the sequence's end
            total_frames += len(latencies)
            total_seconds += sum(latencies)

        def add_result(result: dict) -> None:     # a worker's sequence (eval_batch.eval_task), in split order
            nonlocal segmenter, warned
            if segmenter is None:                 # what the report says of the run: the workers' segmenter
                segmenter = SimpleNamespace(method=result["method"], resolution=result["resolution"],
                                            providers=result["providers"], manifest=None)
            if result["warning"] and not warned:
                click.echo(f"{result['warning']} (said for the first such sequence only)", err=True)
                warned = True
            add(result["name"], result["objects"], result["latencies"], result["bank_bytes"])

        try:
            if parallel:
                evaluate_parallel(data, names, out, model, method, resolution, providers, params, workers,
                                  ray_address, gpus_per_worker, retries, add_result)
            for sequence in [] if parallel else names:
                if not warned and segmenter.resolution is not None:    # one line for the first upscaled input
                    warned = _warn_upscaled(segmenter, data, sequence)
                objects, latencies = evaluate(segmenter, data, sequence, out)
                add(sequence, objects, latencies, segmenter.bank_bytes)
        except KeyboardInterrupt:
            if per_sequence:
                _write(json_path, {**_report(all_objects, per_sequence, total_frames, total_seconds, data, split,
                                             segmenter, params, model), "interrupted": True})
            click.echo(f"\ninterrupted after {len(per_sequence)} of {len(names)} sequence(s): their masks in {out}/"
                       + (f" and scores in {json_path} are kept" if per_sequence else " are kept"), err=True)
            raise SystemExit(cli.EXIT_INTERRUPTED) from None
    report = _report(all_objects, per_sequence, total_frames, total_seconds, data, split, segmenter, params, model)
    click.echo(cli.run_settings(segmenter, model))
    click.echo(f"{'sequence':<20} {'J':>6} {'F':>6} {'J&F':>6} {'frames':>7} {'fps':>7}")
    for sequence, scores in per_sequence.items():
        click.echo(_row(sequence, scores))
    click.echo(_row("mean (over objects)", report))
    _write(json_path, report)
    click.echo(f"scores: {json_path}; masks: {out}/")


def _warn_upscaled(segmenter, data: Path, sequence: str) -> bool:
    """Say on stderr (one line) when ``sequence``'s frames are smaller than the internal
    resolution (:func:`sdk.cli.upscale_warning`) → whether it said so."""
    frames, _ = davis_sequence_dirs(data, sequence)
    _, rgb = next(iter(iter_frames(frames)))
    warning = cli.upscale_warning(segmenter, *rgb.shape[:2], what=f"sequence {sequence}")
    if warning:
        click.echo(f"{warning} (said for the first such sequence only)", err=True)
    return warning is not None


def _report(all_objects, per_sequence, total_frames, total_seconds, data, split, segmenter, params, model) -> dict:
    """The JSON report of the sequences evaluated (``interrupted`` false)."""
    return {
        **_percent(summarize(all_objects)),
        "fps": round(total_frames / total_seconds, 2),
        "frames": total_frames,
        "bank_bytes": max(seq["bank_bytes"] for seq in per_sequence.values()),
        "per_sequence": per_sequence,
        "data": str(data),
        "split": split,
        "method": segmenter.method,
        "params": params,
        "model": str(model) if model else "bundled",
        "precision": _precision(segmenter, model)["dtype"],          # float32 | float16 | int8 (vos-export)
        "precision_graphs": _precision(segmenter, model)["graphs"],
        "resolution": segmenter.resolution or "native",
        "machine": machine_info(segmenter.providers),
        "interrupted": False,
    }


def _precision(segmenter, model) -> dict:
    """The model's manifest ``precision`` ({"dtype", "graphs"}; float32 without one)."""
    from sdk.manifest import resolve_model

    manifest = getattr(segmenter, "manifest", None) or resolve_model(model)
    return manifest.precision


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
