"""`vos-bench --precision fp16`: a float16 copy of an export folder.

The graphs' weights and activations become float16 (onnxconverter-common,
``convert_float_to_float16(keep_io_types=True)``), their inputs and outputs stay float32, so
the copy keeps the graph contract (docs/graph-contract.md) and any sdk runs it unchanged. The
``readout`` graph stays float32: its empty-slot mask adds 1e30 (float16 overflows at 65504,
and 0·inf is NaN for every occupied slot), and its top-k softmax is what the memory policies
count usage from. The manifest of the copy lists the new sha256 of every converted graph and
says what was converted (``"precision"``).

Needs ``onnx`` and ``onnxconverter-common`` (``pip install vosedge[bench]``); the sdk itself
never imports them.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

from sdk.extras import extra_imports, require_extra
from sdk.manifest import MANIFEST_FILE, load_manifest, sha256_file

KEEP_FP32 = ("readout",)
FP16_COMMAND = "vos-bench --precision fp16"


def _detach_outputs(model) -> None:
    """Make every graph output the output of its own Identity node.

    onnxconverter-common (1.16) mis-types outputs that other nodes also consume (the key
    encoder's f4 feeds its next block) and outputs of nodes it keeps in float32 (the
    decoder's final Resize): with an Identity in front of each output its keep_io_types casts
    land where they belong.
    """
    from onnx import helper

    for out in model.graph.output:
        inner = f"{out.name}__fp16_inner"
        for node in model.graph.node:
            for i, name in enumerate(node.input):
                if name == out.name:
                    node.input[i] = inner
            for i, name in enumerate(node.output):
                if name == out.name:
                    node.output[i] = inner
        model.graph.node.append(helper.make_node("Identity", [inner], [out.name], name=f"{out.name}__fp16_out"))


def convert_graph(src: Path, dst: Path) -> None:
    """One float32 ONNX graph → a float16 graph with float32 inputs and outputs. Raises
    :class:`sdk.extras.MissingExtraError` (an ImportError) without the [bench] extra."""
    require_extra(FP16_COMMAND, "bench")
    with extra_imports(FP16_COMMAND, "bench"):
        import onnx
        from onnxconverter_common import float16
    model = onnx.load(str(src))
    _detach_outputs(model)
    # Cast nodes stay as they are (float32 out; the converter casts around them): it does not
    # retarget a Cast(to=float) it puts between float16 nodes (SAM's attention scale)
    casts = [node.name for node in model.graph.node if node.op_type == "Cast"]
    with warnings.catch_warnings():   # "the model is already in float16" / value-clipping notices
        warnings.simplefilter("ignore")
        half = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=casts)
    onnx.save(half, str(dst))


def _loads(path: Path) -> str | None:
    """None if ONNX Runtime's CPU provider loads the graph, else its error."""
    import onnxruntime

    try:
        onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:   # noqa: BLE001 - onnxruntime's errors derive from Exception only
        return str(exc).splitlines()[0]
    return None


def convert_model(src: str | Path, dst: str | Path, keep_fp32: tuple[str, ...] = KEEP_FP32) -> Path:
    """Write a float16 copy of export folder `src` into the (new or empty) folder `dst`:
    every graph of its manifest but `keep_fp32` converted, the others copied, and a manifest
    with the new sha256 and ``"precision": {"dtype": "float16", "float16_graphs": [...],
    "float32_graphs": [...], "float32_fallback": {graph: error}, "source": src}``. A converted
    graph that ONNX Runtime's CPU provider cannot load is copied in float32 instead, with its
    error in ``float32_fallback``. Returns `dst`.

    Raises sdk.ManifestError if `src` is not a valid export, :class:`sdk.extras.MissingExtraError`
    (a VosEdgeError and ImportError: one line naming the [bench] extra) without onnx or
    onnxconverter-common, before anything is written.
    """
    require_extra(FP16_COMMAND, "bench")
    manifest = load_manifest(src)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    raw = json.loads(json.dumps(manifest.raw))
    half, full, fallback = [], [], {}
    for name, path in manifest.graphs.items():
        target = dst / path.name
        if name not in keep_fp32:
            convert_graph(path, target)
            error = _loads(target)
            if error is None:
                half.append(name)
            else:
                fallback[name] = error
        if name in keep_fp32 or name in fallback:
            shutil.copyfile(path, target)
            full.append(name)
        raw["graphs"][name]["sha256"] = sha256_file(target)
    raw["precision"] = {"dtype": "float16", "float16_graphs": half, "float32_graphs": full,
                        "float32_fallback": fallback, "source": str(manifest.root)}
    (dst / MANIFEST_FILE).write_text(json.dumps(raw, indent=2) + "\n")
    load_manifest(dst)   # the copy must pass the sdk's own checks
    return dst
