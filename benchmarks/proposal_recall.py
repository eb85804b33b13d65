"""Recall of ground-truth objects by the proposals graph (issue 27 item 2; DMN-AOA §3.1, §4.1).

Per frame, as the sdk will run it (NumPy + ONNX Runtime, no torch): the frame is resized to the
internal resolution and padded (:class:`sdk.ops.Geometry`), the export's ``key_encoder.onnx``
gives f16/f8/f4, ``proposals.onnx`` the proposals; those scoring > the manifest's
``score_threshold`` go through NMS at IoU 0.4 and the top 30 are kept (DMN-AOA §4.1: "NMS with a
ratio of 0.4"; the sdk's :func:`sdk.proposals.select`, box NMS); their f4 masks are
upsampled to the padded frame, cropped and resized to the frame (``Geometry.to_input``),
thresholded at 0.5. A ground-truth object of a frame (non-empty mask) is **recalled at τ** when
one of the kept proposals has mask IoU ≥ τ with it; recall = recalled / (frame, object) pairs,
per sequence and over all, at τ = 0.5 and 0.7; also the mean best IoU and proposals kept a frame.

``python -m benchmarks.proposal_recall --model DIR`` (an export with ``proposals.onnx``, see
``export.proposal_export``) writes ``benchmarks/results/proposal-recall.json`` and ``.md``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from benchmarks.common import machine_info
from sdk.davis import davis_sequence_dirs, read_split
from sdk.io import iter_frames, read_mask
from sdk.ops import Geometry
from training.proposal_metrics import best_ious, nms  # noqa: F401  (numpy only, no torch)

THRESHOLDS = (0.5, 0.7)


class ProposalRunner:
    """key_encoder.onnx + proposals.onnx of an export folder. Raises FileNotFoundError /
    ValueError when the folder has no proposals entry."""

    def __init__(self, folder: str | Path, threads: int = 1, resolution: int | None = 480,
                 score_threshold: float | None = None):
        folder = Path(folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        if "proposals" not in manifest:
            raise ValueError(f"{folder}/manifest.json has no \"proposals\" entry (add one with export.proposal_export)")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        mk = lambda f: ort.InferenceSession(str(folder / f), so, providers=["CPUExecutionProvider"])  # noqa: E731
        self.encoder = mk(manifest["graphs"]["key_encoder"]["file"])
        self.proposals = mk(manifest["proposals"]["file"])
        self.entry = manifest["proposals"]
        self.defaults = dict(self.entry["defaults"])
        if score_threshold is not None:
            self.defaults["score_threshold"] = score_threshold
        self.mean = np.asarray(manifest["normalisation"]["mean"], np.float32)
        self.std = np.asarray(manifest["normalisation"]["std"], np.float32)
        self.stride = manifest["stride"]
        self.resolution = resolution
        self.seconds = {"key_encoder": 0.0, "proposals": 0.0, "post": 0.0}

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 [H,W,3] → (masks bool [K,H,W] of the kept proposals, scores [K])."""
        d = self.defaults
        geo = Geometry.for_frame(rgb.shape[0], rgb.shape[1], self.resolution, self.stride)
        t0 = time.perf_counter()
        out = dict(zip([o.name for o in self.encoder.get_outputs()],
                       self.encoder.run(None, {"image": geo.image(rgb, self.mean, self.std)})))
        t1 = time.perf_counter()
        boxes, scores, masks = self.proposals.run(["boxes", "scores", "masks"],
                                                  {k: out[k] for k in ("f16", "f8", "f4")})
        t2 = time.perf_counter()
        keep = nms(boxes, scores, d["nms_iou"], d["top_p"], d["score_threshold"])
        if len(keep) == 0:
            full = np.zeros((0,) + rgb.shape[:2], bool)
        else:
            import cv2
            m = masks[keep]
            up = np.stack([cv2.resize(p, (geo.padded_w, geo.padded_h), interpolation=cv2.INTER_LINEAR) for p in m])
            full = geo.to_input(np.ascontiguousarray(up)) > 0.5
        self.seconds["key_encoder"] += t1 - t0
        self.seconds["proposals"] += t2 - t1
        self.seconds["post"] += time.perf_counter() - t2
        return full, scores[keep]


def sequence_recall(runner: ProposalRunner, root: Path, name: str, every: int) -> dict:
    """Recall numbers of one DAVIS-layout sequence (every ``every``-th annotated frame)."""
    fdir, adir = davis_sequence_dirs(root, name)
    ious, kept = [], []
    for i, (stem, rgb) in enumerate(iter_frames(fdir)):
        if i % every or not (adir / f"{stem}.png").is_file():
            continue
        lab = read_mask(adir / f"{stem}.png")
        ids = [v for v in np.unique(lab) if v not in (0, 255)]
        if not ids:
            continue
        props, _ = runner(rgb)
        kept.append(len(props))
        ious.extend(best_ious(props, np.stack([lab == v for v in ids])).tolist())
    ious = np.asarray(ious)
    return {"frames": len(kept), "objects": int(len(ious)),
            **{f"recall@{t}": round(float((ious >= t).mean()), 4) for t in THRESHOLDS},
            "mean_best_iou": round(float(ious.mean()), 4), "proposals_per_frame": round(float(np.mean(kept)), 2)}


def _table(name: str, block: dict) -> list[str]:
    lines = [f"### {name} ({block['resolution']})", "",
             "| sequence | frames | objects | recall@0.5 | recall@0.7 | mean best IoU | kept/frame |",
             "|---|---|---|---|---|---|---|"]
    for seq, r in list(block["sequences"].items()) + [("**all**", block["all"])]:
        lines.append(f"| {seq} | {r['frames']} | {r['objects']} | {r['recall@0.5']:.3f} | {r['recall@0.7']:.3f} "
                     f"| {r['mean_best_iou']:.3f} | {r['proposals_per_frame']} |")
    return lines + [""]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False),
              help="Export folder with proposals.onnx and its manifest entry.")
@click.option("--davis", default="../shared/data/davis2016-480p", show_default=True,
              type=click.Path(file_okay=False), help="DAVIS 2016 480p root (val split), run at --resolution.")
@click.option("--multi", default="../shared/data/davis2017-240p", show_default=True,
              type=click.Path(file_okay=False), help="DAVIS 2017 root with schoolgirls (train split), at native 240 px.")
@click.option("--resolution", default=480, show_default=True, type=int, help="Internal short side for --davis.")
@click.option("--every", default=1, show_default=True, type=click.IntRange(1), help="Use every N-th frame.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="ORT intra-op threads.")
@click.option("--score-threshold", type=click.FloatRange(0, 1),
              help="Override the manifest's defaults.score_threshold.")
@click.option("--out", default="benchmarks/results/proposal-recall", show_default=True,
              help="Output stem: writes STEM.json and STEM.md.")
def main(model, davis, multi, resolution, every, threads, score_threshold, out):
    """Recall of ground-truth objects among the top-30 proposals after NMS 0.4 (IoU 0.5 / 0.7)."""
    blocks = {}
    for key, root, split, res in (("davis2016-480p val", Path(davis), "val", resolution),
                                  ("davis2017-240p schoolgirls", Path(multi), "train", None)):
        if not root.is_dir():
            raise click.ClickException(f"data root {root} not found")
        runner = ProposalRunner(model, threads, res, score_threshold)
        names = read_split(root, split)
        seqs = {n: sequence_recall(runner, root, n, every) for n in tqdm(names, desc=key)}
        frames = sum(r["frames"] for r in seqs.values())
        tot = sum(r["objects"] for r in seqs.values())
        allr = {"frames": frames, "objects": tot,
                **{f"recall@{t}": round(sum(r[f"recall@{t}"] * r["objects"] for r in seqs.values()) / tot, 4)
                   for t in THRESHOLDS},
                "mean_best_iou": round(sum(r["mean_best_iou"] * r["objects"] for r in seqs.values()) / tot, 4),
                "proposals_per_frame": round(sum(r["proposals_per_frame"] * r["frames"] for r in seqs.values()) / frames, 2)}
        blocks[key] = {"resolution": f"{res} px internal" if res else "native 240 px", "sequences": seqs, "all": allr,
                       "ms_per_frame": {k: round(1000 * v / frames, 1) for k, v in runner.seconds.items()}}
    result = {"model": str(model), "proposals": {k: v for k, v in runner.entry.items() if k != "parity"},
              "score_threshold": runner.defaults["score_threshold"],
              "every": every, "threads": threads, "machine": machine_info(["CPUExecutionProvider"]),
              "protocol": "top-30 after score threshold and box NMS 0.4 (DMN-AOA §4.1); a GT object of a frame is "
                          "recalled at τ when a kept proposal's mask (prob > 0.5, upsampled to the frame) has IoU ≥ τ",
              "results": blocks}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["# Proposal recall (issue 27 item 2)", "", result["protocol"] + ".", "",
          f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, ORT "
          f"{result['machine']['onnxruntime']} CPU, {threads} thread(s); every {every} frame(s); "
          f"score threshold {runner.defaults['score_threshold']}, NMS {runner.defaults['nms_iou']}, "
          f"top {runner.defaults['top_p']}.", ""]
    for key, block in blocks.items():
        md += _table(key, block)
        md += [f"ms/frame: {block['ms_per_frame']}", ""]
    Path(out + ".md").write_text("\n".join(md))
    click.echo("\n".join(md))


if __name__ == "__main__":
    main()
