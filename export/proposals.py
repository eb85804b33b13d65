"""Proposals graphs in an export (DMN-AOA §3.1 "Object Proposal Generator";
``docs/graph-contract.md``, "Proposals"): check a user's instance-segmentation ONNX model
against the format asked for (``vosedge``, torchvision ``maskrcnn``, Ultralytics ``yolo-seg``;
:mod:`sdk.proposal_formats`), build the manifest's ``proposals`` object, and add the graph to an
export folder as ``proposals.onnx``. Needs the ``onnx`` package (the [train] or [bench] extra),
not torch.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from sdk.manifest import MANIFEST_FILE, load_manifest, sha256_file
from sdk.proposal_formats import (
    DEFAULTS,
    FILE,
    FORMATS,
    POSTPROCESS_STAGES,
    Signature,
    SignatureMismatch,
    check_signature,
    default_postprocess_in_graph,
    default_preprocess,
)

from .errors import ProposalModelError


def read_signature(path: str | Path) -> tuple[dict, dict]:
    """({input name: (dtype, shape)}, {output name: (dtype, shape)}) of an ONNX file, read with
    the onnx package (weights in external data are not loaded); shape items are ints for static
    axes and the dim_param string (or "?") for dynamic ones. Initialisers listed as inputs are
    left out. Raises :class:`~export.errors.ProposalModelError` for a missing or unreadable file."""
    import onnx
    from onnx import helper

    path = Path(path)
    if not path.is_file():
        raise ProposalModelError(f"proposals model {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:   # protobuf's DecodeError and friends
        raise ProposalModelError(f"{path} is not an ONNX model: {str(exc).splitlines()[0] if str(exc) else exc!r}") \
            from exc
    initialisers = {t.name for t in model.graph.initializer}

    def table(values):
        out = {}
        for v in values:
            if v.name in initialisers:
                continue
            t = v.type.tensor_type
            try:
                dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name
            except Exception:   # undefined/unknown element type
                dtype = f"elem_type {t.elem_type}"
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
            out[v.name] = (dtype, dims)
        return out

    return table(model.graph.input), table(model.graph.output)


def check_proposal_model(path: str | Path, fmt: str, skip_channels: dict | None = None,
                         load: bool = True) -> Signature:
    """Check the ONNX model at ``path`` against proposal format ``fmt`` (one of
    :data:`sdk.proposal_formats.FORMATS`): output (and input) names, ranks, static axes and
    dtypes (:func:`sdk.proposal_formats.check_signature`); for vosedge graphs, the channels of
    their f16/f8/f4 inputs against the export's ``skip_channels``; with ``load``, that ONNX Runtime
    (CPU) can load it (e.g. no custom operators). Writes nothing. Returns the
    :class:`~sdk.proposal_formats.Signature`; raises :class:`~export.errors.ProposalModelError`
    naming the output and what was expected."""
    if fmt not in FORMATS:
        raise ProposalModelError(f"unknown proposal format {fmt!r}; known: {', '.join(FORMATS)}")
    path = Path(path)
    inputs, outputs = read_signature(path)
    try:
        signature = check_signature(fmt, inputs, outputs)
    except SignatureMismatch as exc:
        raise ProposalModelError(f"{path} does not fit --proposal-format {fmt}: {exc}") from None
    for level, channels in (skip_channels or {}).items():
        shape = signature.inputs.get(level)
        if shape is not None and isinstance(shape[1], int) and shape[1] != channels:
            raise ProposalModelError(f"{path} does not fit this export: input {level!r} is [1,{shape[1]},h,w], but the "
                                     f"export's key encoder gives {level} with {channels} channels")
    if load:
        import onnxruntime as ort

        try:
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:   # onnxruntime's Fail/InvalidGraph/NotImplemented derive from Exception only
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise ProposalModelError(f"onnxruntime {ort.__version__} cannot load {path}: {first}") from None
    return signature


def manifest_entry(graph: str | Path, fmt: str, inputs: dict | None = None, postprocess_in_graph: dict | None = None,
                   defaults: dict | None = None, preprocess: dict | None = None, *, file: str | None = None,
                   masks: str | None = None, load: bool = True) -> dict:
    """The manifest's ``proposals`` object for the graph file ``graph`` in format ``fmt``.

    ``graph``: the ONNX file as it lies (or will lie, byte for byte) in the export folder; its
    signature is checked against ``fmt`` (:func:`check_proposal_model`, ``load`` as there) and
    its sha256 recorded. ``file``: its name in the export (default ``graph``'s name; the sdk
    expects ``proposals.onnx``). ``inputs``: {name: shape} recorded (default: read from the
    graph; given, the names must be the graph's). ``postprocess_in_graph``: {threshold, nms,
    top_p: bool} — what the graph already does; the sdk does the rest (default: all False, see
    :func:`sdk.proposal_formats.default_postprocess_in_graph`; a partial dict is completed with
    False). ``defaults``: {score_threshold, nms_iou, top_p} of the sdk's stages (default 0.05,
    0.4 (DMN-AOA §4.1), 30 (§3.1); a partial dict is completed). ``preprocess``: default the
    format's (:func:`sdk.proposal_formats.default_preprocess`); given keys override. ``masks``:
    default what the signature says (vosedge "full-frame-f4"; maskrcnn "full-frame" or
    "box-28"; yolo-seg "yolo-prototypes").

    Example (the bundled network's export)::

        manifest["proposals"] = manifest_entry(out / "proposals.onnx", "vosedge",
                                               postprocess_in_graph={"threshold": True},
                                               defaults={"score_threshold": 0.1})

    Raises :class:`~export.errors.ProposalModelError` when the graph does not fit ``fmt`` or an
    argument names unknown stages/inputs."""
    graph = Path(graph)
    signature = check_proposal_model(graph, fmt, load=load)
    if inputs is not None and list(inputs) != list(signature.inputs):
        raise ProposalModelError(f"inputs {list(inputs)} given for {graph}, whose inputs are {list(signature.inputs)}")
    post = {**default_postprocess_in_graph(fmt), **(postprocess_in_graph or {})}
    if set(post) != set(POSTPROCESS_STAGES) or not all(isinstance(v, bool) for v in post.values()):
        raise ProposalModelError(f"postprocess_in_graph {postprocess_in_graph!r}: expected booleans for "
                                 f"{', '.join(POSTPROCESS_STAGES)}")
    values = {**DEFAULTS, **(defaults or {})}
    if set(values) != set(DEFAULTS):
        raise ProposalModelError(f"defaults {defaults!r}: expected {', '.join(DEFAULTS)}")
    return {
        "file": file or graph.name,
        "sha256": sha256_file(graph),
        "format": fmt,
        "inputs": {n: list(s) for n, s in (inputs or signature.inputs).items()},
        "outputs": {n: list(s) for n, s in signature.outputs.items()},
        "preprocess": {**default_preprocess(signature), **(preprocess or {})},
        "postprocess_in_graph": post,
        "defaults": values,
        "masks": masks or signature.masks,
    }


def add_proposals(export: str | Path, model: str | Path, fmt: str, out: str | Path | None = None,
                  postprocess_in_graph: dict | None = None, defaults: dict | None = None) -> dict:
    """Add the proposals model ``model`` (format ``fmt``) to the export folder ``export`` as
    ``proposals.onnx`` and record it in its manifest (replacing a proposals graph it had).

    ``out`` None or ``export``: in place (the graph file and then the manifest are each
    replaced atomically). Otherwise ``export`` is copied to ``out`` with the graph added (``out``
    must be new, empty or an export, which is replaced). Everything is checked first — the export
    (:func:`sdk.manifest.load_manifest`), the model against ``fmt`` and the export's
    ``skip_channels``, ``out`` — and nothing is written when a check fails. Returns the new
    manifest dict. Raises :class:`~export.errors.ProposalModelError` (model),
    :class:`~sdk.errors.ManifestError` (export), FileExistsError (``out``)."""
    source = load_manifest(export)
    check_proposal_model(model, fmt, source.skip_channels)
    target = source.root if out is None else Path(out).expanduser().resolve()
    if target != source.root and target.exists() and any(target.iterdir()) \
            and not (target / MANIFEST_FILE).is_file():
        raise FileExistsError(f"{target} exists and is not a vosedge export; choose an empty or new folder")
    if target == source.root:
        return _add_in_place(source.root, Path(model), fmt, postprocess_in_graph, defaults)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tmp.chmod(0o755)
        work = tmp / "export"
        shutil.copytree(source.root, work)
        raw = _add_in_place(work, Path(model), fmt, postprocess_in_graph, defaults)
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return raw


def _add_in_place(folder: Path, model: Path, fmt: str, postprocess_in_graph, defaults) -> dict:
    graph = folder / FILE
    staged = folder / f".{FILE}.partial"
    manifest_path = folder / MANIFEST_FILE
    try:
        shutil.copyfile(model, staged)
        entry = manifest_entry(staged, fmt, postprocess_in_graph=postprocess_in_graph, defaults=defaults,
                               file=FILE, load=False)
        raw = json.loads(manifest_path.read_text())
        raw["proposals"] = entry
        os.replace(staged, graph)
        partial = manifest_path.with_name(f".{MANIFEST_FILE}.partial")
        partial.write_text(json.dumps(raw, indent=2) + "\n")
        os.replace(partial, manifest_path)
    finally:
        staged.unlink(missing_ok=True)
    load_manifest(folder)      # the sdk's own checks pass
    return raw
