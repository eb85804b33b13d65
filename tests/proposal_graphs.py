"""Tiny ONNX graphs with the exact signatures of the three proposal formats (torchvision's
Mask R-CNN export, Ultralytics' YOLO-seg export, vosedge's own), built with onnx.helper: their
outputs are constants (or slices of the input image) so that a test knows what the sdk must
make of them; P is declared dynamic. And a fake export folder (dummy core graphs, a valid
manifest) that the sdk's manifest reader accepts, to add proposals to."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sdk.manifest import sha256_file

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SKIPS = {"f16": 112, "f8": 40, "f4": 24}
_ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
         np.dtype(np.int32): TensorProto.INT32}


def save_graph(path: Path, inputs: dict, outputs: dict, extra_nodes=(), opset: int = 17) -> Path:
    """inputs {name: (elem type, shape)}; outputs {name: array (a constant, output declared with
    ``shape`` when given as (array, shape)) | (None, elem, shape) for a tensor an extra node makes}."""
    nodes, out_info = list(extra_nodes), []
    for name, spec in outputs.items():
        if spec[0] is None:
            _, elem, shape = spec
            out_info.append(helper.make_tensor_value_info(name, elem, shape))
            continue
        value, shape = spec if isinstance(spec, tuple) else (spec, list(np.shape(spec)))
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value))))
        out_info.append(helper.make_tensor_value_info(name, _ELEM[np.asarray(value).dtype], shape))
    graph = helper.make_graph(nodes, "proposals", [helper.make_tensor_value_info(n, e, s) for n, (e, s) in
                                                   inputs.items()], out_info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


F = TensorProto.FLOAT


def maskrcnn_graph(path: Path, boxes, scores, masks=None, labels=None, image_shape=(3, "H", "W"),
                   mask_from_image: bool = False, names=("boxes", "labels", "scores", "masks"),
                   mask_dtype=np.float32) -> Path:
    """torchvision Mask R-CNN signature: images_tensors [3,H,W] → boxes [P,4], labels [P] int64,
    scores [P], masks [P,1,h,w]. ``mask_from_image``: masks = the image's R plane [1,1,H,W] (P = 1)."""
    boxes, scores = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32)
    p = len(scores)
    labels = np.ones(p, np.int64) if labels is None else labels
    nb, nl, ns, nm = names
    outputs = {nb: (boxes, ["P", 4]), nl: (labels, ["P"]), ns: (scores, ["P"])}
    extra = []
    if mask_from_image:
        consts = {"s0": [0], "s1": [1], "ax": [0]}
        for k, v in consts.items():
            extra.append(helper.make_node("Constant", [], [k], value=numpy_helper.from_array(np.asarray(v, np.int64))))
        extra += [helper.make_node("Slice", ["images_tensors", "s0", "s1", "ax"], ["red"]),
                  helper.make_node("Unsqueeze", ["red", "ax"], [nm])]
        outputs[nm] = (None, F, ["P", 1, "H", "W"])
    else:
        masks = np.asarray(masks, mask_dtype)
        outputs[nm] = (masks, ["P", *masks.shape[1:2], *(masks.shape[2:] if masks.shape[2:] == (28, 28) else
                                                         ("H", "W"))])
    return save_graph(path, {"images_tensors": (F, list(image_shape))}, outputs, extra)


def yolo_graph(path: Path, output0, output1, size=(64, 64), dynamic_input=False) -> Path:
    """Ultralytics YOLO-seg signature: images [1,3,S,S] → output0 [1,4+nc+nm,A], output1 [1,nm,S/4,S/4]."""
    shape = [1, 3, "height", "width"] if dynamic_input else [1, 3, *size]
    output0, output1 = np.asarray(output0, np.float32), np.asarray(output1, np.float32)
    return save_graph(path, {"images": (F, shape)}, {"output0": output0, "output1": output1})


def vosedge_graph(path: Path, boxes, scores, masks, inputs=("image", "f16"), size=(64, 96)) -> Path:
    """vosedge signature: image [1,3,H,W] (+ f16 …) → boxes [P,4], scores [P], masks [P,H/4,W/4]."""
    channels = {"image": 3, **SKIPS}
    stride = {"image": 1, "f16": 16, "f8": 8, "f4": 4}
    ins = {n: (F, [1, channels[n], f"H{stride[n]}", f"W{stride[n]}"]) for n in inputs}
    boxes, scores = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32)
    masks = np.asarray(masks, np.float32)
    return save_graph(path, ins, {"boxes": (boxes, ["P", 4]), "scores": (scores, ["P"]),
                                  "masks": (masks, ["P", *("H4", "W4", "?")[:masks.ndim - 1]] if masks.ndim <= 4
                                            else list(masks.shape))})


def fake_export(folder: Path) -> Path:
    """An export folder the sdk's manifest reader accepts (the core graph files are dummies:
    only their sha256 is checked), without proposals."""
    folder.mkdir(parents=True)
    graphs = {}
    for name in ("key_encoder", "value_encoder", "readout", "decoder"):
        (folder / f"{name}.onnx").write_bytes(name.encode())
        graphs[name] = {"file": f"{name}.onnx", "sha256": sha256_file(folder / f"{name}.onnx")}
    manifest = {"format": "vosedge-export", "manifest_version": 2, "config": "lite", "method": "every_k",
                "opset": 17, "stride": 16, "key_channels": 16, "value_channels": 32, "skip_channels": dict(SKIPS),
                "max_objects": 8, "normalisation": {"mean": list(MEAN), "std": list(STD)}, "resolution": 64,
                "top_k": 20, "policy_defaults": {"every_k": {"k": 5}}, "graphs": graphs}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def snapshot(folder: Path) -> dict:
    """{relative path: bytes} of every file under ``folder`` (to show nothing was written)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def normalise(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H,W,3] → float32 [1,3,H,W] as the key encoder's input."""
    x = (rgb.astype(np.float32) / 255 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32)
