"""vos-export: turn a training checkpoint into an ONNX export folder the sdk can run."""
from __future__ import annotations

from pathlib import Path

import click

from sdk.cli import parse_resolution

from .onnx_export import check_method, export_model


def _method(ctx, param, value: str) -> str:
    try:
        check_method(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog="""\b
Examples:
  vos-export --checkpoint runs/lite/last.safetensors --method every_k --out exports/lite
  vos-export --checkpoint runs/lite/last.safetensors --method every_k \\
             --out sdk/models/default --parity-data ../shared/data/davis2016-240p
""")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path), metavar="CKPT",
              help="Checkpoint from vos-train: X.safetensors (weights) with X.json (network config) beside it.")
@click.option("--method", default="every_k", show_default=True, callback=_method,
              help="Default memory policy recorded in the manifest (the sdk can pick any other the graphs "
                   "allow): every_k (first frame + every 5th), first_latest (first + previous frame), "
                   "lfu (fixed feature budget, least-frequently-used eviction), qdmn (QAM-gated, β frames), "
                   "qpm (QAM-gated + selective prior), rde (SAM-folded recurrent embedding). qdmn/qpm need a "
                   "network with QAM + prior heads, rde one with SAM (vos-train --method).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Export folder to create (replaced if it already holds an export).")
@click.option("--resolution", default="480", show_default=True, callback=parse_resolution, metavar="PX|native",
              help="Default internal short side in px the sdk resizes frames to, or 'native'.")
@click.option("--parity-data", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="ROOT",
              help="DAVIS-layout folder (e.g. ../shared/data/davis2016-240p): the parity check runs on "
                   "the first frames and GT masks of 3 val sequences. Default: a synthetic clip.")
@click.option("--opset", default=17, show_default=True, help="ONNX opset of the graphs.")
def main(checkpoint, method, out, resolution, parity_data, opset):
    """Export a vos-train checkpoint to ONNX for the vosedge sdk.

    Writes OUT/key_encoder.onnx, value_encoder.onnx, readout.onnx, decoder.onnx, one graph
    per method head the checkpoint carries (prior_enhance.onnx, qam.onnx, sam_key.onnx +
    sam_value.onnx) and manifest.json (docs/graph-contract.md: sha256 of each graph,
    channels, stride, normalisation, default method/resolution/top-k, every policy's paper
    defaults). Before anything lands in OUT, the ONNX graphs are run against the PyTorch
    network on one memory write + readout: logits must agree within 1e-3 and masks with IoU
    >= 0.999, each head graph within 1e-3 of its torch module (the numbers are kept in the
    manifest). Then run it with `vos-segment --model OUT` or `sdk.Segmenter(model=OUT)`.
    """
    from training.checkpoint import load_checkpoint  # torch only here: the sdk never needs it

    try:
        net, _ = load_checkpoint(checkpoint)
        manifest = export_model(net, out, method=method, resolution=resolution, parity_frames=parity_data,
                                opset=opset)
    except (OSError, RuntimeError, ValueError) as exc:   # missing files, occupied OUT, ParityError, no heads
        raise click.ClickException(str(exc)) from exc
    parity = manifest["parity"]
    heads = parity.get("heads_max_rel_diff", {})
    click.echo(f"exported {manifest['config']} ({method}, resolution {resolution or 'native'}, graphs "
               f"{', '.join(manifest['graphs'])}) to {out}; parity: max |dlogit| {parity['max_abs_logit_diff']:.2e}, "
               f"min mask IoU {parity['min_mask_iou']:.4f}"
               + "".join(f", {n} {d:.1e}" for n, d in heads.items()) + f" on {parity['frames']}")
