"""PyTorch network → four ONNX graphs + manifest.json (``docs/graph-contract.md``), with a
torch-vs-onnxruntime parity check whose numbers go into the manifest."""
from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sdk.davis import davis_sequence_dirs, read_split
from sdk.io import iter_frames, list_frames, read_mask
from sdk.manifest import FORMAT, MANIFEST_FILE, MANIFEST_VERSION, load_manifest, sha256_file
from sdk.ops import Geometry, one_hot
from sdk.policies import POLICIES
from sdk.runtime import Graphs

VOSEDGE_VERSION = "0.1.0"
POLICY_DEFAULTS = {"every_k": {"k": 5}, "first_latest": {}, "lfu": {"k": 5, "capacity_frames": 2}}
PARITY_MAX_ABS = 1e-3
PARITY_MIN_IOU = 0.999

# graph name → (network method, input names, output names, dynamic axes)
GRAPHS = {
    "key_encoder": ("encode_key", ["image"], ["key", "f16", "f8", "f4"],
                    {"image": {2: "H", 3: "W"}, "key": {2: "h", 3: "w"}, "f16": {2: "h", 3: "w"},
                     "f8": {2: "h8", 3: "w8"}, "f4": {2: "h4", 3: "w4"}}),
    "value_encoder": ("encode_value", ["image", "f16", "masks"], ["value"],
                      {"image": {2: "H", 3: "W"}, "f16": {2: "h", 3: "w"}, "masks": {0: "N", 2: "H", 3: "W"},
                       "value": {0: "N", 2: "h", 3: "w"}}),
    "readout": ("readout", ["query_key", "memory_keys", "memory_values", "valid", "top_k"], ["readout", "usage"],
                {"query_key": {2: "h", 3: "w"}, "memory_keys": {2: "M"}, "memory_values": {0: "N", 2: "M"},
                 "valid": {0: "M"}, "readout": {0: "N", 2: "h", 3: "w"}, "usage": {0: "M"}}),
    "decoder": ("decode", ["readout", "f16", "f8", "f4"], ["logits"],
                {"readout": {0: "N", 2: "h", 3: "w"}, "f16": {2: "h", 3: "w"}, "f8": {2: "h8", 3: "w8"},
                 "f4": {2: "h4", 3: "w4"}, "logits": {0: "N", 2: "H", 3: "W"}}),
}


class ParityError(RuntimeError):
    """The ONNX graphs disagree with the PyTorch network beyond the tolerances."""


class _Part(nn.Module):
    """One exported part: ``forward(*inputs) = getattr(net, method)(*inputs)``."""

    def __init__(self, net: nn.Module, method: str):
        super().__init__()
        self.net, self.method = net, method

    def forward(self, *inputs):
        return getattr(self.net, self.method)(*inputs)


def check_method(method: str) -> None:
    """Raise ValueError unless ``method`` is a memory policy whose graphs this version exports
    (policies that need QAM/SAM heads wait for those heads: issue 3)."""
    if method not in POLICIES or POLICIES[method].requires:
        ready = [n for n, p in POLICIES.items() if not p.requires]
        later = [n for n in POLICIES if n not in ready]
        raise ValueError(f"unknown method {method!r}; supported now: {', '.join(ready)} "
                         f"({', '.join(later)} need QAM/SAM heads that arrive with issue 3)")


def export_model(net: nn.Module, out_dir: str | Path, method: str = "every_k", resolution: int | None = 480,
                 parity_frames=None, opset: int = 17) -> dict:
    """Export ``net`` (a ``training.networks.VOSNetwork``) to ``out_dir``; returns the manifest.

    Writes ``key_encoder.onnx``, ``value_encoder.onnx``, ``readout.onnx``, ``decoder.onnx``
    (TorchScript exporter, ``opset``, dynamic H, W, N, M) and ``manifest.json`` (sha256 of
    every graph, channels, stride, normalisation, ``resolution`` = default internal short
    side in px or None, default ``method`` and policy defaults). Then checks parity: frame 0
    (+ its mask) is encoded into memory next to one empty slot, frame 1 is read out and
    decoded, by the torch parts and by the ONNX graphs (onnxruntime CPU, via the sdk's own
    preprocessing); logits must agree within 1e-3 max-abs and the masks (logit > 0) with
    IoU ≥ 0.999 (over pixels with |logit| ≥ 1e-3, see :func:`check_parity`). The numbers are
    stored in ``manifest["parity"]``.

    parity_frames: a DAVIS-layout folder (its first 3 val sequences, see
    :func:`load_davis_parity_frames`), a list of (frame0 RGB uint8 [H,W,3], mask0 label map
    [H,W], frame1 RGB uint8 [H,W,3]), or None = a synthetic moving-square clip of 96×128.
    Everything is written to a temporary folder and moved to ``out_dir`` only
    after parity passes (an existing export there is replaced).

    Raises ValueError for an unknown method, FileExistsError if ``out_dir`` exists and is
    neither empty nor an export, :class:`ParityError` if parity fails.
    """
    check_method(method)
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).is_file():
        raise FileExistsError(f"{out_dir} exists and is not a vosedge export; choose an empty or new folder")
    cfg, was_training = net.config, net.training
    net.eval()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        _export_graphs(net, tmp, opset)
        manifest = {
            "format": FORMAT, "manifest_version": MANIFEST_VERSION, "vosedge_version": VOSEDGE_VERSION,
            "config": cfg["name"], "method": method, "opset": opset, "stride": cfg["stride"],
            "key_channels": cfg["key_channels"], "value_channels": cfg["value_channels"],
            "skip_channels": dict(cfg["skip_channels"]), "max_objects": cfg["max_objects"],
            "normalisation": {"mean": list(cfg["mean"]), "std": list(cfg["std"])},
            "resolution": resolution, "top_k": cfg["top_k"], "policy_defaults": POLICY_DEFAULTS,
            "graphs": {name: {"file": f"{name}.onnx", "sha256": sha256_file(tmp / f"{name}.onnx"),
                              **graph_signature(tmp / f"{name}.onnx")} for name in GRAPHS},
        }
        _write_json(tmp / MANIFEST_FILE, manifest)
        if parity_frames is None:
            frames, description = _synthetic_clip(), "synthetic moving square 96x128, frame 0 + mask -> frame 1"
        elif isinstance(parity_frames, (str, Path)):
            frames, names = load_davis_parity_frames(parity_frames)
            description = f"{Path(parity_frames).name}: {', '.join(names)}, frame 0 + GT mask -> frame 1"
        else:
            frames, description = parity_frames, f"{len(parity_frames)} given clips, frame 0 + mask -> frame 1"
        manifest["parity"] = {**check_parity(net, tmp, frames, resolution), "frames": description}
        _write_json(tmp / MANIFEST_FILE, manifest)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        net.train(was_training)
    return manifest


def graph_signature(path: Path) -> dict:
    """{"inputs": {name: shape}, "outputs": {name: shape}} of an ONNX graph, each shape a list
    of ints (fixed) and strings (dynamic axes: "H", "W", "N", "M", …)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    shape = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    return {"inputs": {v.name: shape(v) for v in graph.input},
            "outputs": {v.name: shape(v) for v in graph.output}}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _export_graphs(net: nn.Module, folder: Path, opset: int) -> None:
    """Trace each part on small example inputs (H ≠ W, N = 2, M = 2 frames) and export it."""
    h, w, n = 4, 6, 2
    image = torch.randn(1, 3, h * 16, w * 16)
    masks = torch.rand(n, 2, h * 16, w * 16)
    with torch.no_grad():
        key, f16, f8, f4 = net.encode_key(image)
        value = net.encode_value(image, f16, masks)
        memory = (key.flatten(2).repeat(1, 1, 2), value.flatten(2).repeat(1, 1, 2))
        readout_args = (key, *memory, torch.ones(memory[0].shape[2]), torch.tensor(3, dtype=torch.int64))
        readout, _ = net.readout(*readout_args)
    examples = {"key_encoder": (image,), "value_encoder": (image, f16, masks), "readout": readout_args,
                "decoder": (readout, f16, f8, f4)}
    for name, (method, inputs, outputs, axes) in GRAPHS.items():
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Part(net, method).eval(), examples[name], str(folder / f"{name}.onnx"),
                              input_names=inputs, output_names=outputs, dynamic_axes=axes,
                              opset_version=opset, dynamo=False)


def check_parity(net: nn.Module, folder: Path, frames, resolution: int | None) -> dict:
    """Run torch parts and ONNX graphs of ``folder`` on each (frame0, mask0, frame1); returns
    ``{"max_abs_logit_diff", "min_mask_iou", "iou_ignores_abs_logit_below", "resolution"}`` or
    raises :class:`ParityError`. Masks are logit > 0; the IoU skips pixels whose torch logit is
    within ±1e-3 of 0 (undecided at the logit tolerance; near-zero logits of untrained networks
    would otherwise flip by rounding alone)."""
    manifest = load_manifest(folder)
    graphs = Graphs(manifest, providers="cpu")
    mean, std = np.asarray(manifest.mean, np.float32), np.asarray(manifest.std, np.float32)
    max_diff, min_iou = 0.0, 1.0
    for frame0, mask0, frame1 in frames:
        geo = Geometry.for_frame(frame0.shape[0], frame0.shape[1], resolution, manifest.stride)
        img0, img1 = geo.image(frame0, mean, std), geo.image(frame1, mean, std)
        labels = np.unique(mask0[mask0 > 0])
        own = one_hot(geo.label_map(np.asarray(mask0, np.uint8)), labels)
        masks = np.stack([own, own.sum(0, keepdims=True) - own], 1)
        hw = int(np.prod(geo.feature_size))
        valid = np.zeros(2 * hw, np.float32)
        valid[:hw] = 1
        top_k = np.array(min(manifest.top_k, hw), np.int64)
        lo_ort = _chain(lambda name, *x: graphs.run(name, dict(zip(GRAPHS[name][1], x))), img0, masks, img1,
                        valid, top_k)
        with torch.no_grad():
            lo_pt = _chain(lambda name, *x: [t.numpy() for t in _as_tuple(
                getattr(net, GRAPHS[name][0])(*map(torch.from_numpy, x)))], img0, masks, img1, valid, top_k)
        max_diff = max(max_diff, float(np.abs(lo_ort - lo_pt).max()))
        decisive = np.abs(lo_pt) >= PARITY_MAX_ABS      # a 1e-3-accurate graph may flip the others
        a, b = (lo_ort > 0) & decisive, (lo_pt > 0) & decisive
        for i in range(len(labels)):
            union = np.logical_or(a[i], b[i]).sum()
            min_iou = min(min_iou, float(np.logical_and(a[i], b[i]).sum() / union) if union else 1.0)
    result = {"max_abs_logit_diff": max_diff, "min_mask_iou": min_iou,
              "iou_ignores_abs_logit_below": PARITY_MAX_ABS, "resolution": resolution}
    if max_diff > PARITY_MAX_ABS or min_iou < PARITY_MIN_IOU:
        raise ParityError(f"ONNX graphs disagree with the torch network: max |Δlogit| {max_diff:.3g} "
                          f"(limit {PARITY_MAX_ABS}), min mask IoU {min_iou:.4f} (limit {PARITY_MIN_IOU})")
    return result


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _chain(run, img0, masks, img1, valid, top_k) -> np.ndarray:
    """Memory write of frame 0 into slot 0 of a 2-slot bank, readout + decode of frame 1 → logits."""
    key0, f16_0, _, _ = run("key_encoder", img0)
    (value0,) = run("value_encoder", img0, f16_0, masks)
    hw = key0.shape[2] * key0.shape[3]
    mem_k = np.zeros((1, key0.shape[1], 2 * hw), np.float32)
    mem_v = np.zeros((value0.shape[0], value0.shape[1], 2 * hw), np.float32)
    mem_k[:, :, :hw] = key0.reshape(1, key0.shape[1], hw)
    mem_v[:, :, :hw] = value0.reshape(value0.shape[0], value0.shape[1], hw)
    key1, f16, f8, f4 = run("key_encoder", img1)
    readout, _ = run("readout", key1, mem_k, mem_v, valid, top_k)
    (logits,) = run("decoder", readout, f16, f8, f4)
    return logits


def _synthetic_clip(height: int = 96, width: int = 128):
    """Two frames of a bright square moving on a gradient, with the first frame's mask."""
    yy, xx = np.mgrid[:height, :width]
    background = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 96)], -1).astype(np.uint8)
    frames, mask = [], np.zeros((height, width), np.uint8)
    for dx in (0, 6):
        frame = background.copy()
        frame[30:62, 40 + dx:72 + dx] = (250, 40, 40)
        frames.append(frame)
    mask[30:62, 40:72] = 1
    return [(frames[0], mask, frames[1])]


def load_davis_parity_frames(root: str | Path, split: str = "val", max_sequences: int = 3):
    """→ ([(frame 0, GT mask 0, frame 1), …], sequence names) of the first ``max_sequences``
    sequences of ``<root>/ImageSets/<split>.txt`` (DAVIS layout, :mod:`sdk.davis`).
    Raises VideoReadError / FileNotFoundError naming the incomplete sequence."""
    names = read_split(root, split)[:max_sequences]
    out = []
    for name in names:
        frames_dir, masks_dir = davis_sequence_dirs(root, name)
        frames = list_frames(frames_dir)
        if len(frames) < 2:
            raise FileNotFoundError(f"{frames_dir}: the parity check needs two frames")
        (_, rgb0), (_, rgb1) = itertools.islice(iter_frames(frames_dir), 2)
        out.append((rgb0, read_mask(masks_dir / f"{frames[0]}.png"), rgb1))
    return out, names
