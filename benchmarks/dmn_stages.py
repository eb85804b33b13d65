"""DMN-AOA's per-frame cost vs every_k, stage by stage (issue 27: "a 480 px frame ≤ 2× every_k's
time, with the stage breakdown"), before any DMN training: the bundled export copied, freshly
initialised DMN-AOA graphs added (export/dmn_export.py; RefineNet's injections at zero), then
one DAVIS clip through ``Segmenter`` with every_k, dmn_aoa without proposals (P = 0: aoa_match
skipped) and dmn_aoa with P = 30 synthetic proposals (random boxes and masks of the canonical
form: the proposals graph itself is not timed here). Also checks that dmn_aoa's label maps equal
every_k's (they must, with zero injections).

    python -m benchmarks.dmn_stages --data ../shared/data/davis2016-480p --sequence blackswan \\
        --frames 30 --json benchmarks/results/dmn-stages-blackswan-r480.json
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import click
import numpy as np

import sdk
from benchmarks.common import machine_info
from sdk.davis import davis_sequence_dirs
from sdk.io import iter_frames, list_frames, read_mask
from sdk.manifest import DEFAULT_MODEL_DIR

PROPOSALS = 30            # the paper's top-30 (§3.1)


def bundled_network():
    """The checkpoint under training/weights whose decoder reproduces the bundled decoder.onnx
    (max |Δlogit| on one random input), loaded."""
    import onnxruntime as ort
    import torch

    from training.checkpoint import load_checkpoint

    rng = np.random.default_rng(0)
    feeds = {"readout": (1, 128, 4, 5), "f16": (1, 112, 4, 5), "f8": (1, 40, 8, 10), "f4": (1, 24, 16, 20)}
    feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in feeds.items()}
    want = ort.InferenceSession(str(DEFAULT_MODEL_DIR / "decoder.onnx"), providers=["CPUExecutionProvider"]).run(
        None, feeds)[0]
    best = None
    for path in sorted((Path(__file__).resolve().parents[1] / "training" / "weights").glob("*.safetensors")):
        net, _ = load_checkpoint(path)
        with torch.no_grad():
            diff = float(np.abs(net.decode(*(torch.from_numpy(feeds[k]) for k in feeds)).numpy() - want).max())
        if best is None or diff < best[0]:
            best = (diff, path, net.eval())
    if best is None or best[0] > 1e-3:
        raise click.ClickException("no checkpoint under training/weights reproduces the bundled decoder")
    return best[2], best[1].name


def synthetic_proposals(image: np.ndarray):
    """P = 30 proposals of the canonical form for the padded frame ``image`` [1,3,Hp,Wp]."""
    _, _, h, w = image.shape
    rng = np.random.default_rng(1)
    x1, y1 = rng.uniform(0, w - 40, PROPOSALS), rng.uniform(0, h - 40, PROPOSALS)
    size = rng.uniform(16, 200, (2, PROPOSALS))
    boxes = np.stack([x1, y1, x1 + size[0], y1 + size[1]], 1).astype(np.float32)
    return boxes, np.ones(PROPOSALS, np.float32), rng.random((PROPOSALS, h // 4, w // 4), np.float32)


@click.command()
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path), help="DAVIS-layout root.")
@click.option("--sequence", required=True)
@click.option("--frames", type=click.IntRange(min=3), default=30, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--json", "json_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
def main(data, sequence, frames, threads, json_path):
    import torch

    from export.dmn_export import export_dmn
    from training.dmn import DMNAOA

    torch.set_num_threads(threads)
    net, checkpoint = bundled_network()
    frames_dir, masks_dir = davis_sequence_dirs(data, sequence)
    rgb = [frame for _, frame in zip(range(frames), (f for _, f in iter_frames(frames_dir)))]
    first = read_mask(masks_dir / f"{list_frames(frames_dir)[0]}.png")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bundled-dmn"
        shutil.copytree(DEFAULT_MODEL_DIR, folder)
        torch.manual_seed(0)
        export_dmn(DMNAOA(net), folder)
        runs = {"every_k": {"method": "every_k"}, "dmn_aoa_P0": {"method": "dmn_aoa"},
                "dmn_aoa_P30": {"method": "dmn_aoa", "proposals": synthetic_proposals}}
        labels = {}
        for name, kwargs in runs.items():
            seg = sdk.Segmenter(folder, providers="cpu", threads=threads, **kwargs)
            stages, labels[name] = [], []
            for t, frame in enumerate(rgb):
                labels[name].append(seg.step(frame, first if t == 0 else None))
                if t >= 2:                                   # after the first frames' warm-up
                    stages.append(dict(seg.timings))
            p50 = {k: float(np.median([s[k] for s in stages])) for k in stages[0]}
            results[name] = {"p50_ms": round(p50["total"], 2),
                             "stages_p50_ms": {k: round(v, 2) for k, v in p50.items() if v > 0 and k != "total"},
                             "bank_bytes": seg.bank_bytes, "resolution": seg.resolution,
                             "padded": [seg.geometry.padded_h, seg.geometry.padded_w]}
            click.echo(f"{name}: {json.dumps(results[name])}")
    same = {name: all(np.array_equal(a, b) for a, b in zip(labels["every_k"], labels[name]))
            for name in ("dmn_aoa_P0", "dmn_aoa_P30")}
    out = {"sequence": sequence, "data": str(data), "frames": len(rgb), "threads": threads,
           "checkpoint": checkpoint, "dmn_weights": "fresh (seed 0), RefineNet injections zero",
           "proposals": f"P0: none; P30: {PROPOSALS} synthetic (random boxes, masks)",
           "labels_equal_every_k": same, "ratio_p50_vs_every_k": {
               name: round(results[name]["p50_ms"] / results["every_k"]["p50_ms"], 3) for name in results},
           "results": results, "machine": machine_info(["CPUExecutionProvider"])}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(out, indent=2) + "\n")
    click.echo(f"labels equal every_k: {same}; p50 ratios: {out['ratio_p50_vs_every_k']}")


if __name__ == "__main__":
    main()
