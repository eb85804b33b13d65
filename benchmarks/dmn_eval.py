"""DMN-AOA against its core policy and its ablations, per sequence (issue 27 targets).

``python -m benchmarks.dmn_eval --model DIR --data ROOT [--split val] [--no-align DIR2]
[--maskrcnn DIR3] --json benchmarks/results/dmn-aoa-val.json`` runs, on the same machine and
in one process, the J&F of (vos-eval's protocol, :func:`benchmarks.eval.evaluate`):

* ``every_k`` — the core policy DMN-AOA's memory follows (the baseline of the targets);
* ``dmn_aoa`` — the export's own proposals graph;
* ``no_proposals`` — ``proposals=False`` (the coarse mask is 0: what RefineNet's trained
  injections do alone);
* ``oracle`` — the frame's ground-truth objects given as proposals (a perfect proposal generator:
  the ceiling that better proposals could reach; not a result, a diagnosis);
* ``no_align`` (with ``--no-align``) — the "without AOA" export (raw proposal features);
* ``maskrcnn`` (with ``--maskrcnn``) — the same proposals through the Mask R-CNN adapter.

Per sequence also the identity swaps (:func:`identity_swaps`: frames × objects whose predicted
mask lies mostly on another ground-truth object).

Writes the JSON (per variant: per-sequence J, F, J&F, fps; the mean over objects) and a
Markdown table beside it, with the machine.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import cv2
import numpy as np

import sdk
from sdk.boxes import MASK_STRIDE
from sdk.davis import davis_sequence_dirs, split_subset
from sdk.io import list_frames, read_mask
from sdk.metrics import summarize
from sdk.ops import Geometry

from .common import machine_info, read_ground_truth
from .eval import evaluate


class OracleProposals:
    """Ground truth as DMN-AOA proposals: callable(image [1,3,Hp,Wp], features) →
    (boxes [K,4], scores [K], masks [K,Hp/4,Wp/4]) for the K objects present in frame
    ``self.frame`` of ``gt`` (label maps uint8 [H,W]), resized and padded as the Segmenter's
    geometry (``resolution``, ``stride``), pooled to the stride-4 grid. Set ``frame`` before each
    step (:meth:`advance` counts the frames)."""

    def __init__(self, gt: list[np.ndarray], resolution: int | None, stride: int):
        self.gt, self.frame = gt, 0
        h, w = gt[0].shape
        self.geo = Geometry.for_frame(h, w, resolution, stride)

    def advance(self) -> None:
        self.frame += 1

    def __call__(self, image, features=None):
        g, labels = self.geo, self.gt[min(self.frame, len(self.gt) - 1)]
        resized = cv2.resize(labels, (g.resized_w, g.resized_h), interpolation=cv2.INTER_NEAREST)
        padded = np.zeros((g.padded_h, g.padded_w), np.uint8)
        padded[g.inside] = resized
        ids = [i for i in np.unique(padded) if i not in (0, 255)]
        hs, ws = g.padded_h // MASK_STRIDE, g.padded_w // MASK_STRIDE
        masks = np.stack([(padded == i).reshape(hs, MASK_STRIDE, ws, MASK_STRIDE).mean((1, 3))
                          for i in ids]).astype(np.float32) if ids else np.zeros((0, hs, ws), np.float32)
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m > 0.5)
            boxes.append([xs.min() * 4, ys.min() * 4, (xs.max() + 1) * 4, (ys.max() + 1) * 4] if len(ys) else [0] * 4)
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.ones(len(ids), np.float32), masks


def identity_swaps(pred: list[np.ndarray], gt: list[np.ndarray]) -> int:
    """(frame, object) pairs, frames 1.., where the mask predicted for object k lies mostly on
    another ground-truth object j ≠ k: ≥ half of its pixels, and more of them than on k itself.
    pred, gt: label maps uint8 [H,W] of the same frames (255 = void in gt)."""
    swaps = 0
    for p, g in zip(pred[1:], gt[1:]):
        for k in (i for i in np.unique(g) if i not in (0, 255)):
            own = p == k
            area = int(own.sum())
            if not area:
                continue
            on = np.bincount(g[own], minlength=256)
            mine = on[k]
            on[[0, 255, k]] = 0
            if on.max() * 2 >= area and on.max() > mine:
                swaps += 1
    return swaps


def _score(make, data: Path, names: list[str], out: Path, oracle: bool) -> dict:
    """J, F, J&F and fps per sequence and over objects; ``make(**kwargs)`` builds the Segmenter
    (once, or per sequence with that sequence's :class:`OracleProposals`)."""
    per_sequence, objects_all = {}, []
    segmenter = None if oracle else make()
    for name in names:
        if oracle:
            frames, annotations = davis_sequence_dirs(data, name)
            gt = read_ground_truth(annotations, list_frames(frames))
            probe = make(proposals=False)
            proposals = OracleProposals(gt, probe.resolution, probe.manifest.stride)
            objects, latencies = evaluate(make(proposals=proposals), data, name, out, progress=False,
                                          on_frame=proposals.advance)
        else:
            objects, latencies = evaluate(segmenter, data, name, out, progress=False)
        objects_all += list(objects.values())
        s = summarize(objects.values())
        frames, annotations = davis_sequence_dirs(data, name)
        stems = list_frames(frames)
        swaps = identity_swaps([read_mask(out / name / f"{stem}.png") for stem in stems],
                               read_ground_truth(annotations, stems))
        per_sequence[name] = {"J": round(100 * s["J-Mean"], 1), "F": round(100 * s["F-Mean"], 1),
                              "J&F": round(100 * s["J&F"], 1), "fps": round(len(latencies) / sum(latencies), 2),
                              "identity_swaps": swaps}
    s = summarize(objects_all)
    return {"sequences": per_sequence, "J": round(100 * s["J-Mean"], 1), "F": round(100 * s["F-Mean"], 1),
            "J&F": round(100 * s["J&F"], 1)}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--model", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Export with the DMN-AOA graphs and a proposals graph.")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path), help="DAVIS-layout root.")
@click.option("--split", default="val", show_default=True)
@click.option("--sequences", default=None, help="Comma-separated subset of the split.")
@click.option("--resolution", default=480, show_default=True, type=int, help="Internal short side in px.")
@click.option("--no-align", "no_align", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Export of the 'without AOA' ablation.")
@click.option("--maskrcnn", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Export whose proposals are ours in the Mask R-CNN format (export.proposal_maskrcnn).")
@click.option("--variants", default=None, help="Comma-separated subset of the variants to run.")
@click.option("--threads", default=1, show_default=True, help="ORT intra-op threads.")
@click.option("--json", "json_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", default="/tmp/dmn-eval-masks", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where the masks go (one folder per variant).")
def main(model, data, split, sequences, resolution, no_align, maskrcnn, variants, threads, json_path, out):
    """Per-sequence J&F of every_k, dmn_aoa and DMN-AOA's ablations in one run (module docstring)."""
    names = split_subset(data, split, sequences.split(",") if sequences else None)
    plan = {"every_k": (model, "every_k", {}), "dmn_aoa": (model, "dmn_aoa", {}),
            "no_proposals": (model, "dmn_aoa", {"proposals": False}), "oracle": (model, "dmn_aoa", {})}
    if no_align:
        plan["no_align"] = (no_align, "dmn_aoa", {})
    if maskrcnn:
        plan["maskrcnn"] = (maskrcnn, "dmn_aoa", {})
    if variants:
        plan = {k: v for k, v in plan.items() if k in variants.split(",")}
    report = {"data": str(data), "split": split, "resolution": resolution, "model": str(model),
              "machine": machine_info(["CPUExecutionProvider"]), "variants": {}}
    for label, (folder, method, kwargs) in plan.items():
        t0 = time.time()
        def make(folder=folder, method=method, kwargs=kwargs, **extra):
            return sdk.Segmenter(str(folder), method=method, resolution=resolution,
                                 providers=["CPUExecutionProvider"], threads=threads, **{**kwargs, **extra})

        report["variants"][label] = _score(make, data, names, out / label, oracle=label == "oracle")
        click.echo(f"{label:<13} J&F {report['variants'][label]['J&F']:5.1f}  ({time.time() - t0:.0f} s)")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    json_path.with_suffix(".md").write_text(markdown(report))
    click.echo(f"wrote {json_path} and {json_path.with_suffix('.md')}")


def markdown(report: dict) -> str:
    """The per-sequence J&F table of a :func:`main` report."""
    variants = list(report["variants"])
    names = list(next(iter(report["variants"].values()))["sequences"])
    lines = [f"J&F ×100 on {report['data']} {report['split']} at {report['resolution']} px; "
             f"{report['machine']['cpu']}, {report['machine']['cores']} cores, ORT CPU.", "",
             "| sequence | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{report['variants'][v]['sequences'][name]['J&F']:.1f}"
                                                 for v in variants) + " |")
    lines.append("| **mean (objects)** | " + " | ".join(f"**{report['variants'][v]['J&F']:.1f}**" for v in variants)
                 + " |")
    lines.append("| identity swaps (frames × objects) | " + " | ".join(
        str(sum(x.get("identity_swaps", 0) for x in report["variants"][v]["sequences"].values())) for v in variants)
        + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
