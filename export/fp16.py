"""float16 graphs of a float32 export (``vos-export --precision fp16``), with float32 inputs
and outputs so that they keep the graph contract and any sdk runs them unchanged.

onnxconverter-common's ``float16.convert_float_to_float16(keep_io_types=True)`` turns weights
and activations into float16 and puts Casts at the graph's inputs and outputs
(https://onnxruntime.ai/docs/performance/model-optimizations/float16.html). The ``readout``
graph stays float32 (:data:`KEEP_FP32`): its empty-slot mask adds 1e30 to the affinity
(float16 overflows above 65504, and 0·inf is NaN for every occupied slot), and its top-k
softmax is what the memory policies count usage from. A converted graph that ONNX Runtime's
CPU provider cannot load is kept in float32 (:func:`convert_fp16`'s fallback, recorded in the
manifest).

Needs ``onnx`` and ``onnxconverter-common`` (the ``[bench]`` or ``[train]`` extra); the sdk
never imports them.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from .errors import ConversionError

KEEP_FP32 = ("readout",)


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
    """One float32 ONNX graph ``src`` → a float16 graph ``dst`` with float32 inputs and
    outputs. Raises :class:`~export.errors.ConversionError` naming the graph when
    onnxconverter-common fails on it."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    _detach_outputs(model)
    # Cast nodes stay as they are (float32 out; the converter casts around them): it does not
    # retarget a Cast(to=float) it puts between float16 nodes (SAM's attention scale)
    casts = [node.name for node in model.graph.node if node.op_type == "Cast"]
    try:
        with warnings.catch_warnings():   # "the model is already in float16" / value-clipping notices
            warnings.simplefilter("ignore")
            half = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=casts)
    except Exception as exc:
        raise ConversionError(f"onnxconverter-common cannot convert {src.name} to float16: "
                              f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from exc
    onnx.save(half, str(dst))


def load_error(path: Path) -> str | None:
    """None if ONNX Runtime's CPU provider loads the graph at ``path``, else its error's first line."""
    import onnxruntime

    try:
        onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:   # noqa: BLE001 - onnxruntime's errors derive from Exception only
        return (str(exc).splitlines() or [type(exc).__name__])[0]
    return None


def convert_fp16(graphs: dict[str, Path], folder: Path, keep_fp32=KEEP_FP32) -> tuple[dict, dict]:
    """Overwrite the graph files ``graphs`` ({name: path in ``folder``}, float32 copies) with
    float16 ones, except ``keep_fp32`` → ({name: "float16" | "float32"}, {name: load error of
    a graph kept in float32 because ONNX Runtime's CPU provider could not load its float16
    version}). Raises :class:`~export.errors.ConversionError` when the converter fails."""
    dtypes, fallback = {}, {}
    for name, path in graphs.items():
        dtypes[name] = "float32"
        if name in keep_fp32:
            continue
        half = folder / f".{path.name}.fp16"
        convert_graph(path, half)
        error = load_error(half)
        if error is None:
            shutil.move(half, path)
            dtypes[name] = "float16"
        else:
            half.unlink()
            fallback[name] = error
    return dtypes, fallback
