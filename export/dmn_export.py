"""DMN-AOA's graphs (``training/dmn.py``) → ONNX, added to an existing export folder and declared
in its manifest, with a torch-vs-onnxruntime parity check (docs/dmn-aoa.md, issue 27 item 4).

Four graphs, each traced from one :class:`training.dmn.DMNAOA` method (TorchScript exporter,
opset 17; ROI Align becomes ONNX ``RoiAlign``):

=============== ==================================================== ============================================
graph           inputs                                               outputs
=============== ==================================================== ============================================
``dmn_memory``  f16 [1,C16,h,w], boxes [N,4], masks [N,1,4h,4w],     key [N,C/4,S,S], value [N,C,S,S]
                time [N]
``dmn_template`` f16, boxes [N,4], time [N], memory_keys [N,C/4,M],  template [N,C,S,S]
                memory_values [N,C,M], valid [N,M]
``aoa_match``   template [N,C,S,S], f16, proposal_boxes [P,4],       assignment [N,P], similarity [N,P],
                proposal_masks [P,4h,4w]                             coarse [N,1,4h,4w]
``refine``      readout [N,C_v,h,w], coarse [N,1,4h,4w], f16, f8, f4 logits [N,1,16h,16w]
=============== ==================================================== ============================================

All float32; dynamic axes N, P (≥ 1: the sdk skips ``aoa_match`` when a frame has no
proposals), M, h, w. The manifest gains those four ``graphs`` entries (file, sha256, inputs,
outputs) and ``"dmn"``: the hyper-parameters of :class:`~training.dmn.DMNAOA` (``roi_size``,
``channels``, ``key_channels``, ``proj_channels``, ``alpha``, ``sinkhorn_iters``, ``align``) and
the spatial scales of the ROI Align inputs; ``parity.dmn_max_rel_diff`` holds the check's numbers.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sdk.manifest import MANIFEST_FILE, load_manifest, sha256_file

from .errors import ParityError
from .onnx_export import PARITY_MAX_ABS, graph_signature

# graph name → (DMNAOA method, input names, output names, dynamic axes)
DMN_GRAPHS = {
    "dmn_memory": ("encode_memory", ["f16", "boxes", "masks", "time"], ["key", "value"],
                   {"f16": {2: "h", 3: "w"}, "boxes": {0: "N"}, "masks": {0: "N", 2: "h4", 3: "w4"},
                    "time": {0: "N"}, "key": {0: "N"}, "value": {0: "N"}}),
    "dmn_template": ("template", ["f16", "boxes", "time", "memory_keys", "memory_values", "valid"], ["template"],
                     {"f16": {2: "h", 3: "w"}, "boxes": {0: "N"}, "time": {0: "N"},
                      "memory_keys": {0: "N", 2: "M"}, "memory_values": {0: "N", 2: "M"},
                      "valid": {0: "N", 1: "M"}, "template": {0: "N"}}),
    "aoa_match": ("match", ["template", "f16", "proposal_boxes", "proposal_masks"],
                  ["assignment", "similarity", "coarse"],
                  {"template": {0: "N"}, "f16": {2: "h", 3: "w"}, "proposal_boxes": {0: "P"},
                   "proposal_masks": {0: "P", 1: "h4", 2: "w4"}, "assignment": {0: "N", 1: "P"},
                   "similarity": {0: "N", 1: "P"}, "coarse": {0: "N", 2: "h4", 3: "w4"}}),
    "refine": ("refine", ["readout", "coarse", "f16", "f8", "f4"], ["logits"],
               {"readout": {0: "N", 2: "h", 3: "w"}, "coarse": {0: "N", 2: "h4", 3: "w4"},
                "f16": {2: "h", 3: "w"}, "f8": {2: "h8", 3: "w8"}, "f4": {2: "h4", 3: "w4"},
                "logits": {0: "N", 2: "H", 3: "W"}}),
}


class _Part(nn.Module):
    def __init__(self, dmn: nn.Module, method: str):
        super().__init__()
        self.dmn, self.method = dmn, method

    def forward(self, *inputs):
        return getattr(self.dmn, self.method)(*inputs)


def example_feeds(manifest, hparams: dict, seed: int = 0, h: int = 4, w: int = 6, n: int = 2, p: int = 3,
                  slots: int = 2) -> dict[str, dict[str, np.ndarray]]:
    """Random inputs of each DMN graph ({graph: {input: float32 array}}), with the manifest's
    channel counts: f16 of h×w, N objects, P proposals, M = slots·S² memory positions of which
    the last slot is invalid for object 0; boxes inside, across and outside the frame."""
    rng = np.random.default_rng(seed)
    skips, s, c = manifest.skip_channels, hparams["roi_size"], hparams["channels"]
    height, width = 16 * h, 16 * w
    f16 = rng.standard_normal((1, skips["f16"], h, w)).astype(np.float32)
    f8 = rng.standard_normal((1, skips["f8"], 2 * h, 2 * w)).astype(np.float32)
    f4 = rng.standard_normal((1, skips["f4"], 4 * h, 4 * w)).astype(np.float32)

    def boxes(count):
        x1, y1 = rng.uniform(-0.2 * width, 0.8 * width, count), rng.uniform(-0.2 * height, 0.8 * height, count)
        bw, bh = rng.uniform(2, 0.6 * width, count), rng.uniform(2, 0.6 * height, count)
        return np.stack([x1, y1, x1 + bw, y1 + bh], 1).astype(np.float32)

    m = slots * s * s
    valid = np.ones((n, m), np.float32)
    valid[0, (slots - 1) * s * s:] = 0
    time = rng.integers(0, 40, n).astype(np.float32)
    return {
        "dmn_memory": {"f16": f16, "boxes": boxes(n), "masks": rng.random((n, 1, 4 * h, 4 * w), np.float32),
                       "time": time},
        "dmn_template": {"f16": f16, "boxes": boxes(n), "time": time,
                         "memory_keys": rng.standard_normal((n, c // 4, m)).astype(np.float32),
                         "memory_values": rng.standard_normal((n, c, m)).astype(np.float32), "valid": valid},
        "aoa_match": {"template": rng.standard_normal((n, c, s, s)).astype(np.float32), "f16": f16,
                      "proposal_boxes": boxes(p), "proposal_masks": rng.random((p, 4 * h, 4 * w), np.float32)},
        "refine": {"readout": rng.standard_normal((n, manifest.value_channels, h, w)).astype(np.float32),
                   "coarse": rng.random((n, 1, 4 * h, 4 * w), np.float32), "f16": f16, "f8": f8, "f4": f4},
    }


def _check_channels(dmn: nn.Module, manifest) -> None:
    f16 = dmn.objects.reduce.in_channels
    value = dmn.refiner.decoder.compress.conv1.in_channels - manifest.skip_channels["f16"]
    if f16 != manifest.skip_channels["f16"] or value != manifest.value_channels:
        raise ValueError(f"the DMN-AOA modules take f16 of {f16} and readouts of {value} channels, the export "
                         f"{manifest.skip_channels['f16']} and {manifest.value_channels}: build them "
                         "(training.dmn.DMNAOA) on the network this export came from")


def export_dmn(dmn: nn.Module, export_dir: str | Path, opset: int = 17) -> dict:
    """Add the DMN-AOA graphs of ``dmn`` (a :class:`training.dmn.DMNAOA` built on the network
    of the export in ``export_dir``) to that export; returns the updated manifest.

    Writes ``dmn_memory.onnx``, ``dmn_template.onnx``, ``aoa_match.onnx``, ``refine.onnx``
    (:data:`DMN_GRAPHS`) and the manifest entries of the module docstring. Parity: every graph
    runs in onnxruntime (CPU) on two sets of random inputs (:func:`example_feeds`: the traced
    sizes and other h, w, N, P, M, so the dynamic axes are exercised) and must match the torch
    module within max |Δ| / max(1, max |torch output|) ≤ 1e-3 per output.

    The graphs are written and checked in a temporary folder; the export is changed only after
    parity passes (the manifest replaced atomically). Raises FileNotFoundError / ManifestError
    for a folder that is not a vosedge export, ValueError for modules built on another network
    (channel counts), :class:`~export.errors.ParityError` (export unchanged)."""
    export_dir = Path(export_dir).resolve()
    manifest = load_manifest(export_dir)
    _check_channels(dmn, manifest)
    was_training = dmn.training
    dmn.eval()
    tmp = Path(tempfile.mkdtemp(prefix=".dmn-", dir=export_dir.parent))
    try:
        feeds = example_feeds(manifest, dmn.hparams)
        for name, (method, inputs, outputs, axes) in DMN_GRAPHS.items():
            args = tuple(torch.from_numpy(feeds[name][i]) for i in inputs)
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(_Part(dmn, method).eval(), args, str(tmp / f"{name}.onnx"), input_names=inputs,
                                  output_names=outputs, dynamic_axes=axes, opset_version=opset, dynamo=False)
        diffs = check_dmn_parity(dmn, tmp, manifest)
        raw = json.loads((export_dir / MANIFEST_FILE).read_text())
        for name in DMN_GRAPHS:
            raw["graphs"][name] = {"file": f"{name}.onnx", "sha256": sha256_file(tmp / f"{name}.onnx"),
                                   **graph_signature(tmp / f"{name}.onnx")}
        raw["dmn"] = {**dmn.hparams, "spatial_scale": {"f16": 1 / 16, "masks": 1 / 4}, "sampling_ratio": 2,
                      "roi_align": "onnx RoiAlign avg half_pixel"}
        raw.setdefault("parity", {})["dmn_max_rel_diff"] = diffs
        (tmp / MANIFEST_FILE).write_text(json.dumps(raw, indent=2) + "\n")
        for name in DMN_GRAPHS:
            shutil.copyfile(tmp / f"{name}.onnx", export_dir / f".{name}.onnx.part")
        for name in DMN_GRAPHS:
            os.replace(export_dir / f".{name}.onnx.part", export_dir / f"{name}.onnx")
        shutil.copyfile(tmp / MANIFEST_FILE, export_dir / f".{MANIFEST_FILE}.part")
        os.replace(export_dir / f".{MANIFEST_FILE}.part", export_dir / MANIFEST_FILE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for leftover in export_dir.glob(".*.part"):
            leftover.unlink()
        dmn.train(was_training)
    return raw


def check_dmn_parity(dmn: nn.Module, folder: Path, manifest) -> dict[str, float]:
    """Each DMN graph of ``folder`` (onnxruntime CPU) vs its torch method on two random input
    sets; → {graph: max |Δ| / max(1, max |torch output|) over its outputs and both sets}.
    Raises :class:`~export.errors.ParityError` when one exceeds 1e-3."""
    import onnxruntime as ort

    sets = [example_feeds(manifest, dmn.hparams),
            example_feeds(manifest, dmn.hparams, seed=1, h=3, w=5, n=3, p=1, slots=3)]
    diffs = {}
    for name, (method, inputs, outputs, _) in DMN_GRAPHS.items():
        session = ort.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        worst = 0.0
        for feeds in sets:
            with torch.no_grad():
                ref = getattr(dmn, method)(*(torch.from_numpy(feeds[name][i]) for i in inputs))
            ref = ref if isinstance(ref, tuple) else (ref,)
            got = session.run(outputs, feeds[name])
            for r, g in zip(ref, got):
                r = r.numpy()
                if r.shape != g.shape:
                    raise ParityError(f"{name}: ONNX output of shape {g.shape}, torch {r.shape}")
                worst = max(worst, float(np.abs(g - r).max()) / max(1.0, float(np.abs(r).max())))
        diffs[name] = worst
    bad = {n: d for n, d in diffs.items() if not d <= PARITY_MAX_ABS}
    if bad:
        raise ParityError("DMN-AOA graph(s) disagree with the torch modules: "
                          + ", ".join(f"{n} max |Δ|/max(1, max|out|) = {d:.3g}" for n, d in bad.items())
                          + f" (limit {PARITY_MAX_ABS})")
    return diffs


def _main():
    import click

    @click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
    @click.option("--weights", required=True, metavar="W",
                  help="DMN-AOA weights of python -m training.dmn_train (W.safetensors + W.json).")
    @click.option("--export", "folder", required=True, type=click.Path(file_okay=False, path_type=Path),
                  help="The export of the weights' core network (its graphs gain dmn_memory, dmn_template, "
                       "aoa_match, refine).")
    @click.option("--core", default=None, help="The core checkpoint (default: the one the weights were trained on).")
    @click.option("--no-align", is_flag=True, help="Export the 'without AOA' ablation (raw proposal features).")
    def main(weights, folder, core, no_align):
        """Add trained DMN-AOA graphs to an export, parity-checked; nothing changes when a check fails.

          python -m export.dmn_export --weights training/weights/dmn-lite --export sdk/models/default
        """
        from training.checkpoint import load_checkpoint
        from training.dmn_train import load_dmn

        try:
            js = Path(str(weights).removesuffix(".safetensors").removesuffix(".json") + ".json")
            if not js.is_file():
                raise FileNotFoundError(f"DMN-AOA weights file {js} not found (weights are W.safetensors + W.json "
                                        "of python -m training.dmn_train)")
            meta = json.loads(js.read_text())
            net, _ = load_checkpoint(core or meta["recipe"]["core"])
            dmn, _ = load_dmn(weights, net)
            if no_align:
                dmn.matcher.align = dmn.hparams["align"] = False
            export_dmn(dmn, folder)
        except (FileNotFoundError, ValueError, KeyError, ParityError) as error:
            raise click.ClickException(str(error)) from None
        click.echo(f"added {', '.join(DMN_GRAPHS)} to {folder}")

    main()


if __name__ == "__main__":
    _main()
