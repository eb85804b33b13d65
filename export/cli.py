"""vos-export: turn a checkpoint (vosedge's own, or the authors' STCN / RDE-VOS / QDMN
release) into an ONNX export folder the sdk can run, in float32, float16 or int8; or convert an
existing float32 export folder to float16 / int8 (``--from-export``, no torch needed)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click
from click.core import ParameterSource

from sdk.cli import comma_list, parse_resolution
from sdk.errors import VosEdgeError
from sdk.extras import MissingExtraError, extra_imports, require_extra
from sdk.policies import POLICIES
from sdk.proposal_formats import FORMATS as PROPOSAL_FORMATS

from .calibration import DEFAULT_CALIBRATION_ROOT
from .errors import CalibrationError, ConversionError, ParityError, ProposalModelError
from .int8 import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_INT8_GRAPHS,
    SAMPLES_PER_GRAPH,
    SCHEMES,
)
from .precision import CALIBRATION_FRAMES, CALIBRATION_SEQUENCES
from .precision_parity import MIN_MEAN_IOU

ARCH_CHOICES = ("stcn", "rde", "qdmn")
# options that only mean something for --precision int8 / for a checkpoint
INT8_OPTIONS = ("int8_scheme", "calibration_method", "int8_graphs", "calibration_sequences", "calibration_frames",
                "samples_per_graph")
CHECKPOINT_OPTIONS = ("arch", "qam_activation", "method", "resolution", "opset")


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
\b
Reduced precision (float32 export first, then conversion, then a mask parity check
against the float32 graphs on real frames; nothing lands in OUT if any step fails):
  vos-export --from-export sdk/models/default --precision int8 --out exports/lite-int8
  vos-export --from-export sdk/models/default --precision int8 --int8-scheme tensorrt \\
             --out exports/lite-int8-trt                 # symmetric int8 QDQ for TensorRT
  vos-export --from-export sdk/models/default --precision fp16 --out exports/lite-fp16
  vos-export --checkpoint runs/lite/last.safetensors --precision int8 \\
             --calibration-data ../shared/data/davis2016-480p --out exports/lite-int8
\b
int8 calibrates on real frames (default: the train split of ../shared/data/davis2016-240p,
8 sequences x 10 frames, at the export's default internal resolution) and on the masks,
memory and readouts the float32 graphs produce on them; parity runs on the val split
(3 x 25 frames) and needs a mean mask IoU vs float32 >= 0.99 for every memory policy that
runs a converted graph (|change of J| <= 1 point, docs/graph-contract.md). Then run it with
`vos-segment --model OUT`, `vos-eval --model OUT` or `vos-bench --model OUT`.
\b
Object proposals (DMN-AOA) from your own instance segmenter, checked against its format and
copied in as OUT/proposals.onnx (docs/graph-contract.md, "Proposals"); a model whose outputs do
not fit is refused and nothing is written:
  vos-export --checkpoint runs/lite/last.safetensors --proposals maskrcnn.onnx \\
             --proposal-format maskrcnn --out exports/lite-dmn
  vos-export --from-export sdk/models/default --proposals yolov8n-seg.onnx \\
             --proposal-format yolo-seg --out exports/lite-yolo   # a copy; OUT = DIR: in place
""")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), metavar="CKPT",
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
@click.option("--from-export", "from_export", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Instead of --checkpoint: a float32 export folder to convert to --precision fp16/int8 "
                   "(needs onnx + onnxconverter-common, the [bench] extra; no torch).")
@click.option("--precision", type=click.Choice(("fp32", "fp16", "int8")), default="fp32", show_default=True,
              help="fp16: every graph but the readout in float16 (onnxconverter-common). int8: ONNX Runtime "
                   "static quantisation (QDQ, per-channel weights) of --int8-graphs. Graph inputs and outputs "
                   "stay float32, so the sdk runs every precision on every provider alike.")
@click.option("--int8-scheme", type=click.Choice(tuple(SCHEMES)), default="ort", show_default=True,
              help="ort: uint8 activations / int8 7-bit-range weights, exact on every x86 and ARM CPU (ONNX "
                   "Runtime CPU provider). tensorrt: symmetric int8 activations and weights (zero points 0), "
                   "float32 biases: the explicit-quantisation QDQ graphs TensorRT (e.g. on Jetson) consumes.")
@click.option("--int8-graphs", callback=comma_list, metavar="A,B",
              help=f"Graphs to quantise. Default: {','.join(DEFAULT_INT8_GRAPHS)} (measured: int8 key encoders "
                   "change the masks too much, less after quantisation-aware fine-tuning with python3 -m "
                   "training.qat; the readout always stays float32).")
@click.option("--calibration-data", type=click.Path(file_okay=False, path_type=Path), metavar="ROOT",
              help="DAVIS-layout folder whose train split the int8 ranges are calibrated on. "
                   f"Default: {DEFAULT_CALIBRATION_ROOT}.")
@click.option("--calibration-method", type=click.Choice(CALIBRATION_METHODS), default=DEFAULT_CALIBRATION_METHOD,
              show_default=True,
              help="Activation ranges: minmax (min/max over the samples), entropy (KL threshold), percentile "
                   "(99.999 % of |x|).")
@click.option("--calibration-sequences", type=click.IntRange(min=1), default=CALIBRATION_SEQUENCES,
              show_default=True, metavar="N", help="Sequences of the train split, spread over it.")
@click.option("--calibration-frames", type=click.IntRange(min=2), default=CALIBRATION_FRAMES, show_default=True,
              metavar="N", help="First frames played of each calibration sequence.")
@click.option("--samples-per-graph", type=click.IntRange(min=1), default=SAMPLES_PER_GRAPH, show_default=True,
              metavar="N", help="Recorded feeds kept per graph (a uniform sample of its calls).")
@click.option("--parity-reference", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="DIR",
              help="Float32 export the reduced graphs' masks must match, instead of the float32 export of "
                   "--checkpoint/--from-export itself: for a checkpoint fine-tuned for int8 (python3 -m "
                   "training.qat), the float32 export of the checkpoint it was distilled from.")
@click.option("--parity-min-iou", type=click.FloatRange(0, 1), default=MIN_MEAN_IOU, show_default=True,
              metavar="IOU", help="Refuse a reduced-precision export whose mean mask IoU vs float32 is below this.")
@click.option("--proposals", type=click.Path(dir_okay=False, path_type=Path), metavar="MODEL.onnx",
              help="Instance-segmentation ONNX model whose detections become DMN-AOA's object proposals, copied "
                   "into OUT as proposals.onnx and recorded in the manifest (float32, never converted). With "
                   "--from-export and no --precision: adds it to a copy of DIR in OUT (in place when OUT is DIR).")
@click.option("--proposal-format", type=click.Choice(PROPOSAL_FORMATS), default=None,
              help="Signature of --proposals: maskrcnn (torchvision Mask R-CNN export: boxes, labels, scores, masks), "
                   "yolo-seg (Ultralytics YOLOv8/11-seg export: output0, output1 prototypes), vosedge (boxes, "
                   "scores, masks [P,H/4,W/4] from the image and/or the key encoder's f16/f8/f4).")
def main(checkpoint, arch, qam_activation, method, out, resolution, parity_data, opset, from_export, precision,
         int8_scheme, int8_graphs, calibration_data, calibration_method, calibration_sequences, calibration_frames,
         samples_per_graph, parity_reference, parity_min_iou, proposals, proposal_format):
    """Export a checkpoint to ONNX for the vosedge sdk, in float32, float16 or int8.

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

    --precision fp16/int8 exports float32 to a temporary folder first, converts it and checks
    the converted graphs' masks against the float32 ones (manifest `precision`, with the
    per-graph choice, calibration and parity numbers); --from-export DIR converts an existing
    float32 export instead (no torch).

    --proposals MODEL.onnx --proposal-format F checks the model against F before anything is
    exported (export/proposals.py) and adds it to OUT as proposals.onnx; with --from-export DIR
    and the default --precision fp32 it only adds the graph (to a copy of DIR in OUT, or to DIR
    itself when OUT is DIR).
    """
    ctx = click.get_current_context()
    given = {name for name in (*INT8_OPTIONS, *CHECKPOINT_OPTIONS)
             if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
    if (checkpoint is None) == (from_export is None):
        raise click.UsageError("give exactly one of --checkpoint CKPT (export a network) and --from-export DIR "
                               "(convert a float32 export)")
    if precision != "int8" and given & set(INT8_OPTIONS):
        raise click.UsageError(f"{', '.join('--' + n.replace('_', '-') for n in sorted(given & set(INT8_OPTIONS)))} "
                               "only apply to --precision int8")
    if precision == "fp32" and parity_reference is not None:
        raise click.UsageError("--parity-reference judges a reduced-precision export: give --precision fp16 or int8")
    if (proposals is None) != (proposal_format is None):
        raise click.UsageError("give --proposals MODEL.onnx together with --proposal-format "
                               f"{'|'.join(PROPOSAL_FORMATS)}")
    if proposals is not None:     # before anything is exported or written: a model that does not fit fails now
        _check_proposals(proposals, proposal_format, from_export)
    if from_export is not None:
        if precision == "fp32" and proposals is None:
            raise click.UsageError("--from-export converts a float32 export: give --precision fp16 or int8 "
                                   "(or --proposals MODEL.onnx to add a proposals graph)")
        if given & set(CHECKPOINT_OPTIONS):
            raise click.UsageError(f"{', '.join('--' + n.replace('_', '-') for n in sorted(given & set(CHECKPOINT_OPTIONS)))}"
                                   " apply to --checkpoint exports; --from-export keeps the export's own")
    reduced = None if precision == "fp32" else {
        "precision": precision, "scheme": int8_scheme, "calibration_method": calibration_method,
        "int8_graphs": int8_graphs, "calibration_data": calibration_data, "parity_data": parity_data,
        "calibration_sequences": calibration_sequences, "calibration_frames": calibration_frames,
        "samples_per_graph": samples_per_graph, "min_mean_iou": parity_min_iou, "parity_reference": parity_reference}
    if reduced is not None:       # before any export: a missing extra, an occupied OUT or missing data fail now
        try:
            if from_export is not None:
                _require_converter(precision)
            from .precision import check_target

            check_target(out, precision, calibration_data, parity_data)
        except (MissingExtraError, CalibrationError, OSError) as exc:
            raise click.ClickException(str(exc)) from None
    if from_export is not None:
        if reduced is None:
            _add_proposals(from_export, proposals, proposal_format, out)
            return
        manifest = _convert(from_export, out, reduced, None)
        _report_reduced(manifest, out)
        if proposals is not None:
            _add_proposals(out, proposals, proposal_format, out)
        return
    try:
        require_extra("vos-export", "train")
        with extra_imports("vos-export", "train"):   # e.g. onnxscript, efficientnet weights: the same line
            from .onnx_export import export_model

            net = _load(checkpoint, arch, qam_activation)
            if method is None:
                method = getattr(net, "default_method", "every_k")
            if resolution == "arch":
                resolution = net.inference["resolution"] if hasattr(net, "inference") else 480
            if reduced is not None:
                require_extra(f"vos-export --precision {precision}", "train", _converter_modules(precision))
            target = out
            if reduced is not None:   # float32 first, next to OUT (same file system), then converted into OUT
                out.expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
                target = Path(tempfile.mkdtemp(prefix=f".{out.name}-fp32-", dir=out.expanduser().resolve().parent))
            try:
                manifest = export_model(net, target, method=method, resolution=resolution, parity_frames=parity_data,
                                        opset=opset)
                _report_fp32(manifest, method, resolution, target if reduced is None else "a temporary folder")
                if reduced is not None:
                    manifest = _convert(target, out, reduced, {"checkpoint": str(checkpoint), "path": None})
            finally:
                if reduced is not None:
                    shutil.rmtree(target, ignore_errors=True)
    except MissingExtraError as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, RuntimeError, ValueError) as exc:   # missing files, occupied OUT, ParityError, bad checkpoint
        raise click.ClickException(str(exc)) from exc
    if reduced is not None:
        _report_reduced(manifest, out)
    if proposals is not None:
        _add_proposals(out, proposals, proposal_format, out)


def _check_proposals(model: Path, fmt: str, from_export: Path | None) -> None:
    """ClickException (one line, nothing written) unless ``model`` fits proposal format ``fmt``
    (and, with --from-export, that export's key-encoder channels)."""
    try:
        require_extra("vos-export --proposals", "bench", ("onnx",), what="onnx")
        skips = None
        if from_export is not None:
            from sdk.manifest import load_manifest

            skips = load_manifest(from_export).skip_channels
        from .proposals import check_proposal_model

        check_proposal_model(model, fmt, skips)
    except (MissingExtraError, ProposalModelError, VosEdgeError) as exc:
        raise click.ClickException(str(exc)) from None


def _add_proposals(export: Path, model: Path, fmt: str, out: Path) -> None:
    """:func:`export.proposals.add_proposals` (``out`` = ``export``: in place), one line of report."""
    from .proposals import add_proposals

    try:
        raw = add_proposals(export, model, fmt, out)
    except (ProposalModelError, VosEdgeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    entry = raw["proposals"]
    post, d = entry["postprocess_in_graph"], entry["defaults"]
    stages = [text for stage, text in (("threshold", f"score > {d['score_threshold']}"),
                                       ("nms", f"box NMS IoU {d['nms_iou']}"), ("top_p", f"top {d['top_p']}"))
              if not post[stage]]
    click.echo(f"added {fmt} proposals graph {model} to {Path(out)} as {entry['file']} (masks {entry['masks']}; "
               f"done by the sdk: {', '.join(stages) or 'nothing (all in the graph)'})")


def _converter_modules(precision: str) -> tuple[str, ...]:
    """The modules a conversion to ``precision`` imports (onnxruntime.quantization needs onnx)."""
    return ("onnx", "onnxconverter_common") if precision == "fp16" else ("onnx",)


def _require_converter(precision: str) -> None:
    """MissingExtraError (one line naming the [bench] extra) without the modules a conversion
    to ``precision`` needs."""
    require_extra(f"vos-export --precision {precision}", "bench", _converter_modules(precision),
                  what=None if precision == "fp16" else "onnx")


def _convert(src: Path, out: Path, reduced: dict, source_note: dict | None) -> dict:
    """:func:`export.precision.convert_export` with every failure as one line (ClickException)."""
    command = f"vos-export --precision {reduced['precision']}"
    try:
        _require_converter(reduced["precision"])
        with extra_imports(command, "bench"):
            from .precision import convert_export

            return convert_export(src, out, **reduced, source_note=source_note,
                                  log=lambda line: click.echo(line, err=True))
    except MissingExtraError as exc:
        raise click.ClickException(str(exc)) from None
    except (VosEdgeError, CalibrationError, ConversionError, ParityError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


def _report_reduced(manifest: dict, out: Path) -> None:
    p = manifest["precision"]
    parity = p["parity"]
    graphs = ", ".join(f"{n} {d}" for n, d in p["graphs"].items())
    fallback = "".join(f"; kept float32: {n} ({why})" for n, why in p["float32_fallback"].items())
    ref = parity.get("reference", {})
    against = "" if ref.get("is_source", True) else f" {ref['path']}"
    click.echo(f"wrote {p['dtype']} export to {out} in {p['seconds']:.0f} s: {graphs}{fallback}; "
               f"parity vs float32{against}: "
               + ", ".join(f"{m} mean mask IoU {r['mean_iou']:.4f} (min {r['min_iou']:.3f})"
                           for m, r in parity["methods"].items())
               + f" >= {parity['min_mean_iou']} on {parity['frames']}")


def _report_fp32(manifest: dict, method: str, resolution, out) -> None:
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
