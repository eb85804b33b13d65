"""vos-export: turn a checkpoint (vosedge's own, or the authors' STCN / RDE-VOS / QDMN
release) into an ONNX export folder the sdk can run."""
from __future__ import annotations

from pathlib import Path

import click

from sdk.cli import parse_resolution
from sdk.extras import MissingExtraError, extra_imports, require_extra
from sdk.policies import POLICIES

ARCH_CHOICES = ("stcn", "rde", "qdmn")


def _method(ctx, param, value: str | None) -> str | None:
    if value is not None and value not in POLICIES:   # as onnx_export.check_method, without torch
        raise click.BadParameter(f"unknown method {value!r}; known: {', '.join(POLICIES)}")
    return value


def _resolution(ctx, param, value: str | None):
    return "arch" if value is None else parse_resolution(ctx, param, value)


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog="""\b
Examples:
  vos-export --checkpoint runs/lite/last.safetensors --method every_k --out exports/lite
  vos-export --checkpoint runs/lite/last.safetensors --method every_k \\
             --out sdk/models/default --parity-data ../shared/data/davis2016-240p
\b
The authors' released weights (layout recognised from the state_dict keys):
  vos-export --checkpoint stcn.pth --out exports/stcn                  # every_k, top-k 20
  vos-export --checkpoint model_s012_final.pth --out exports/rde      # rde, θ 3, top-k 40
  vos-export --checkpoint QDMN.pth --out exports/qdmn                  # qdmn, top-k 50
  vos-export --checkpoint stcn_s0.pth --arch stcn --out exports/stcn-s0
""")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path), metavar="CKPT",
              help="vos-train checkpoint (X.safetensors with X.json beside it), or an authors' release "
                   "(.pth: STCN stcn.pth / stcn_s0.pth, RDE-VOS model_s012_final*.pth, QDMN s012), read with "
                   "torch.load(weights_only=True) and matched key for key.")
@click.option("--arch", type=click.Choice(ARCH_CHOICES), default=None,
              help="Layout of a .pth checkpoint; default: recognised from its keys. A file that does not "
                   "match it exactly (missing, unexpected or misshapen tensors) is refused.")
@click.option("--qam-activation", type=click.Choice(("relu", "sigmoid")), default=None,
              help="QDMN only: the last activation of the QAM score head, which a checkpoint does not record. "
                   "Default relu (the released model); sigmoid for runs trained with the variant QDMN's README "
                   "suggests when pre-training scores collapse to 0.")
@click.option("--method", default=None, callback=_method,
              help="Default memory policy recorded in the manifest (the sdk can pick any other the graphs "
                   "allow): every_k (first frame + every 5th), first_latest (first + previous frame), "
                   "lfu (fixed feature budget, least-frequently-used eviction), qdmn (QAM-gated, β frames), "
                   "qpm (QAM-gated + selective prior), rde (SAM-folded recurrent embedding). qdmn/qpm need a "
                   "network with QAM + prior heads, rde one with SAM. Default: every_k for vos-train "
                   "checkpoints, the paper's own method for the authors' (stcn every_k, rde rde, qdmn qdmn).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Export folder to create (replaced if it already holds an export).")
@click.option("--resolution", default=None, callback=_resolution, metavar="PX|native",
              help="Default internal short side in px the sdk resizes frames to, or 'native'. Default: 480 "
                   "for vos-train checkpoints, native (the authors' DAVIS evaluation) for the authors'.")
@click.option("--parity-data", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="ROOT",
              help="DAVIS-layout folder (e.g. ../shared/data/davis2016-240p): the parity check runs on "
                   "the first frames and GT masks of 3 val sequences. Default: a synthetic clip.")
@click.option("--opset", default=17, show_default=True, help="ONNX opset of the graphs.")
def main(checkpoint, arch, qam_activation, method, out, resolution, parity_data, opset):
    """Export a checkpoint to ONNX for the vosedge sdk.

    Writes OUT/key_encoder.onnx, value_encoder.onnx, readout.onnx, decoder.onnx, one graph
    per method head the checkpoint carries (prior_enhance.onnx, qam.onnx, sam_key.onnx +
    sam_value.onnx) and manifest.json (docs/graph-contract.md: sha256 of each graph,
    channels, stride, normalisation, default method/resolution/top-k, every policy's paper
    defaults and, for the authors' networks, their inference semantics: symmetric padding,
    per-object keys, temporary memory, prior enhancement). Before anything lands in OUT, the
    ONNX graphs are run against the PyTorch network on one memory write + readout: logits must
    agree within 1e-3 and masks with IoU >= 0.999, each head graph within 1e-3 of its torch
    module (the numbers are kept in the manifest). Then run it with `vos-segment --model OUT`
    or `sdk.Segmenter(model=OUT)`. Needs the [train] extra (PyTorch, ONNX); without it, exits
    with one line naming it.
    """
    try:
        require_extra("vos-export", "train")
        with extra_imports("vos-export", "train"):   # e.g. onnxscript, efficientnet weights: the same line
            from .onnx_export import export_model

            net = _load(checkpoint, arch, qam_activation)
            if method is None:
                method = getattr(net, "default_method", "every_k")
            if resolution == "arch":
                resolution = net.inference["resolution"] if hasattr(net, "inference") else 480
            manifest = export_model(net, out, method=method, resolution=resolution, parity_frames=parity_data,
                                    opset=opset)
    except MissingExtraError as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, RuntimeError, ValueError) as exc:   # missing files, occupied OUT, ParityError, bad checkpoint
        raise click.ClickException(str(exc)) from exc
    parity = manifest["parity"]
    heads = parity.get("heads_max_rel_diff", {})
    click.echo(f"exported {manifest['config']} ({method}, resolution {resolution or 'native'}, graphs "
               f"{', '.join(manifest['graphs'])}) to {out}; parity: max |dlogit| {parity['max_abs_logit_diff']:.2e}, "
               f"min mask IoU {parity['min_mask_iou']:.4f}"
               + "".join(f", {n} {d:.1e}" for n, d in heads.items()) + f" on {parity['frames']}")


def _load(checkpoint: Path, arch: str | None, qam_activation: str | None):
    """vos-train checkpoint (.safetensors/.json) or authors' release (anything else, e.g. .pth)."""
    # torch only here: the sdk never needs it
    if checkpoint.suffix in (".safetensors", ".json"):
        if arch is not None or qam_activation is not None:
            raise click.UsageError("--arch and --qam-activation are for the authors' .pth checkpoints; a "
                                   "vos-train checkpoint names its network in its .json")
        from training.checkpoint import load_checkpoint
        return load_checkpoint(checkpoint)[0]
    from training.authors.checkpoints import load_authors_checkpoint
    return load_authors_checkpoint(checkpoint, arch, qam_activation)
