"""PyTorch network → ONNX graphs + manifest.json (``docs/graph-contract.md``), with a
torch-vs-onnxruntime parity check whose numbers go into the manifest.

Four core graphs always; one more per method head the network carries (``prior_enhance``,
``qam``, ``sam_key`` + ``sam_value``)."""
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
from sdk.manifest import FORMAT, INFERENCE_FIELDS, MANIFEST_FILE, MANIFEST_VERSION, load_manifest, sha256_file
from sdk.ops import Geometry, one_hot
from sdk.policies import POLICIES
from sdk.runtime import Graphs

from .errors import ParityError

VOSEDGE_VERSION = "0.1.0"
# paper defaults of every memory policy (sdk/policies.py cites the sources)
POLICY_DEFAULTS = {"every_k": {"k": 5}, "first_latest": {}, "lfu": {"k": 5, "capacity_frames": 2},
                   "qdmn": {"interval": 5, "sigma": 0.8, "beta": 20},
                   "qpm": {"interval": 5, "sigma_m": 0.7, "sigma_en": 0.65},
                   "rde": {"theta": 3, "top_k": 40}}
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
# method heads: graph name → (network method, inputs, outputs, dynamic axes); HEAD_OF: its head
HEAD_GRAPHS = {
    "prior_enhance": ("enhance", ["f16", "prior"], ["key", "enhanced_f16"],
                      {"f16": {2: "h", 3: "w"}, "prior": {2: "H", 3: "W"}, "key": {2: "h", 3: "w"},
                       "enhanced_f16": {2: "h", 3: "w"}}),
    "qam": ("score", ["value"], ["score"], {"value": {0: "N", 2: "h", 3: "w"}, "score": {0: "N"}}),
    "sam_key": ("fold_key", ["previous", "new"], ["rde"],
                {"previous": {2: "h", 3: "w"}, "new": {2: "h", 3: "w"}, "rde": {2: "h", 3: "w"}}),
    "sam_value": ("fold_value", ["previous", "new"], ["rde"],
                  {"previous": {0: "N", 2: "h", 3: "w"}, "new": {0: "N", 2: "h", 3: "w"},
                   "rde": {0: "N", 2: "h", 3: "w"}}),
}
HEAD_OF = {"prior_enhance": "prior", "qam": "qam", "sam_key": "sam", "sam_value": "sam"}
ALL_GRAPHS = {**GRAPHS, **HEAD_GRAPHS}
# networks whose memory keys are per object (STM/QDMN, inference["memory_keys"] == "per_object"):
# the value encoder (no f16 input) returns the memory key, the value and the feature its QAM
# reads; the key encoder returns no key (the query key comes from prior enhancement or is
# not used); the readout takes one key per object.
PER_OBJECT_GRAPHS = {
    "key_encoder": ("encode_key", ["image"], ["f16", "f8", "f4"],
                    {"image": {2: "H", 3: "W"}, "f16": {2: "h", 3: "w"}, "f8": {2: "h8", 3: "w8"},
                     "f4": {2: "h4", 3: "w4"}}),
    "value_encoder": ("encode_value", ["image", "masks"], ["key", "value", "qam_feature"],
                      {"image": {2: "H", 3: "W"}, "masks": {0: "N", 2: "H", 3: "W"}, "key": {0: "N", 2: "h", 3: "w"},
                       "value": {0: "N", 2: "h", 3: "w"}, "qam_feature": {0: "N", 2: "h", 3: "w"}}),
    "readout": ("readout", ["query_key", "memory_keys", "memory_values", "valid", "top_k"], ["readout", "usage"],
                {"query_key": {2: "h", 3: "w"}, "memory_keys": {0: "N", 2: "M"}, "memory_values": {0: "N", 2: "M"},
                 "valid": {0: "M"}, "readout": {0: "N", 2: "h", 3: "w"}, "usage": {0: "M"}}),
    "qam": ("score_from", ["qam_feature"], ["score"], {"qam_feature": {0: "N", 2: "h", 3: "w"}, "score": {0: "N"}}),
}


def inference_of(net: nn.Module) -> dict:
    """The network's ``inference`` semantics (manifest version 2; {} for vosedge's own networks,
    whose sdk defaults are those of manifest version 1)."""
    return dict(getattr(net, "inference", {}) or {})


def graph_specs(net: nn.Module) -> dict[str, tuple]:
    """graph name → (network method, input names, output names, dynamic axes) of every graph
    ``net`` exports: the four core ones + those of its heads, per-object variants
    (:data:`PER_OBJECT_GRAPHS`) for networks with per-object memory keys."""
    heads = getattr(net, "heads", ())
    names = [*GRAPHS, *(name for name, head in HEAD_OF.items() if head in heads)]
    per_object = inference_of(net).get("memory_keys") == "per_object"
    return {name: (PER_OBJECT_GRAPHS.get(name) if per_object else None) or ALL_GRAPHS[name] for name in names}


def graphs_of(net: nn.Module) -> list[str]:
    """Names of the graphs ``net`` exports: the four core ones + those of its heads."""
    return list(graph_specs(net))


class _Part(nn.Module):
    """One exported part: ``forward(*inputs) = getattr(net, method)(*inputs)``."""

    def __init__(self, net: nn.Module, method: str):
        super().__init__()
        self.net, self.method = net, method

    def forward(self, *inputs):
        return getattr(self.net, self.method)(*inputs)


def check_method(method: str, net: nn.Module | None = None) -> None:
    """Raise ValueError unless ``method`` is a memory policy (:data:`sdk.policies.POLICIES`)
    and, given ``net``, the network carries the heads whose graphs the policy requires."""
    if method not in POLICIES:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(POLICIES)}")
    if net is not None:
        missing = [g for g in POLICIES[method].requires if g not in graphs_of(net)]
        if missing:
            heads = sorted({HEAD_OF[g] for g in missing})
            raise ValueError(f"method {method!r} needs graph(s) {', '.join(missing)}, but this network has no "
                             f"{'/'.join(heads)} head: train them with `vos-train --method {method}` "
                             f"(or --method all)")


def export_model(net: nn.Module, out_dir: str | Path, method: str = "every_k", resolution: int | None = 480,
                 parity_frames=None, opset: int = 17) -> dict:
    """Export ``net`` (a ``training.networks.VOSNetwork``) to ``out_dir``; returns the manifest.

    Writes ``key_encoder.onnx``, ``value_encoder.onnx``, ``readout.onnx``, ``decoder.onnx``,
    one graph per method head the network has (``prior_enhance``, ``qam``, ``sam_key``,
    ``sam_value``; :data:`HEAD_GRAPHS`) (TorchScript exporter, ``opset``, dynamic H, W, N, M)
    and ``manifest.json`` (sha256 of
    every graph, channels, stride, normalisation, ``resolution`` = default internal short
    side in px or None, default ``method`` and policy defaults — the network's
    ``policy_defaults`` over :data:`POLICY_DEFAULTS` —, for the authors' networks their
    ``inference`` semantics (every field of :data:`sdk.manifest.INFERENCE_FIELDS`) and the
    checkpoint they came from as ``source``). Then checks parity: frame 0
    (+ its mask) is encoded into memory next to one empty slot, frame 1 is read out and
    decoded, by the torch parts and by the ONNX graphs (onnxruntime CPU, via the sdk's own
    preprocessing); logits must agree within 1e-3 max-abs and the masks (logit > 0) with
    IoU ≥ 0.999 (over pixels with |logit| ≥ 1e-3, see :func:`check_parity`); each head graph
    must match its torch module within 1e-3 relative to the output's magnitude. The numbers
    are stored in ``manifest["parity"]``.

    parity_frames: a DAVIS-layout folder (its first 3 val sequences, see
    :func:`load_davis_parity_frames`), a list of (frame0 RGB uint8 [H,W,3], mask0 label map
    [H,W], frame1 RGB uint8 [H,W,3]), or None = a synthetic moving-square clip of 96×128.
    Everything is written to a temporary folder and moved to ``out_dir`` only
    after parity passes (an existing export there is replaced).

    Raises ValueError for an unknown method or one whose heads the network lacks, FileExistsError if ``out_dir`` exists and is
    neither empty nor an export, :class:`ParityError` if parity fails.
    """
    check_method(method, net)
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
        inference = inference_of(net)
        defaults = {**POLICY_DEFAULTS, **getattr(net, "policy_defaults", {})}
        manifest = {
            "format": FORMAT, "manifest_version": MANIFEST_VERSION, "vosedge_version": VOSEDGE_VERSION,
            "config": cfg["name"], "method": method, "opset": opset, "stride": cfg["stride"],
            "key_channels": cfg["key_channels"], "value_channels": cfg["value_channels"],
            "skip_channels": dict(cfg["skip_channels"]), "max_objects": cfg["max_objects"],
            "normalisation": {"mean": list(cfg["mean"]), "std": list(cfg["std"])},
            "resolution": resolution, "top_k": cfg["top_k"], "policy_defaults": defaults,
            **({"inference": {name: inference.get(name, default)
                              for name, (_, default) in INFERENCE_FIELDS.items()}} if inference else {}),
            **({"source": net.source} if getattr(net, "source", None) else {}),
            "graphs": {name: {"file": f"{name}.onnx", "sha256": sha256_file(tmp / f"{name}.onnx"),
                              **graph_signature(tmp / f"{name}.onnx")} for name in graphs_of(net)},
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


def _example_inputs(net: nn.Module, specs: dict) -> dict[str, tuple]:
    """Inputs to trace each graph on: small frames (H ≠ W), N = 2 objects, M = 2 frames."""
    h, w, n = 4, 6, 2
    image = torch.randn(1, 3, h * 16, w * 16)
    masks = torch.rand(n, 2, h * 16, w * 16)
    prior = masks[:1, :1]
    run = _torch_runner(net, specs)
    with torch.no_grad():
        query = run("key_encoder", {"image": image})
        key, f16 = query.get("key"), query["f16"]
        if "prior_enhance" in specs:
            enhanced = run("prior_enhance", {"f16": f16, "prior": prior})
            key = enhanced["key"] if key is None else key
        encoded = run("value_encoder", {"image": image, "f16": f16, "masks": masks})
        value = encoded["value"]
        memory_key = encoded["key"] if "key" in encoded else key
        memory = (memory_key.flatten(2).repeat(1, 1, 2), value.flatten(2).repeat(1, 1, 2))
        readout_args = (key, *memory, torch.ones(memory[0].shape[2]), torch.tensor(3, dtype=torch.int64))
        readout = run("readout", dict(zip(specs["readout"][1], readout_args)))["readout"]
    feeds = {"image": image, "f16": f16, "masks": masks, "prior": prior, **query, **encoded,
             "readout": readout}
    examples = {"readout": readout_args, "sam_key": (key, key.flip(3)), "sam_value": (value, value.flip(3))}
    for name, (_, inputs, _, _) in specs.items():
        if name not in examples:
            examples[name] = tuple(feeds[i] for i in inputs)
    return examples


def _torch_runner(net: nn.Module, specs: dict):
    """run(graph name, {input name: tensor or array}) → {output name: tensor} through the torch
    network's part methods (what the graph of that name was traced from)."""
    def run(name, feeds):
        method, inputs, outputs, _ = specs[name]
        args = [torch.from_numpy(feeds[i]) if isinstance(feeds[i], np.ndarray) else feeds[i] for i in inputs]
        return dict(zip(outputs, _as_tuple(getattr(net, method)(*args))))
    return run


def _export_graphs(net: nn.Module, folder: Path, opset: int) -> None:
    """Trace each part on small example inputs (H ≠ W, N = 2, M = 2 frames) and export it."""
    specs = graph_specs(net)
    examples = _example_inputs(net, specs)
    for name, (method, inputs, outputs, axes) in specs.items():
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
    would otherwise flip by rounding alone). Frames are padded as the manifest's
    ``inference.padding`` says; a network with prior enhancement on every frame runs it in the
    chain (the previous frame's mask as the prior)."""
    manifest = load_manifest(folder)
    specs = graph_specs(net)
    heads = [name for name in HEAD_GRAPHS if name in manifest.graphs]
    graphs = Graphs(manifest, providers="cpu", names=tuple(specs))
    head_diff = dict.fromkeys(heads, 0.0)
    mean, std = np.asarray(manifest.mean, np.float32), np.asarray(manifest.std, np.float32)
    chain = _Chain(manifest)
    run_torch = _torch_runner(net, specs)
    max_diff, min_iou = 0.0, 1.0
    for frame0, mask0, frame1 in frames:
        geo = Geometry.for_frame(frame0.shape[0], frame0.shape[1], resolution, manifest.stride,
                                 manifest.inference["padding"])
        img0, img1 = geo.image(frame0, mean, std), geo.image(frame1, mean, std)
        labels = np.unique(mask0[mask0 > 0])
        own = one_hot(geo.label_map(np.asarray(mask0, np.uint8)), labels)
        masks = np.stack([own, own.sum(0, keepdims=True) - own], 1)
        lo_ort = chain(graphs.run_named, img0, masks, img1)
        with torch.no_grad():
            lo_pt = chain(lambda name, feeds: {k: v.numpy() for k, v in run_torch(name, feeds).items()},
                          img0, masks, img1)
        max_diff = max(max_diff, float(np.abs(lo_ort - lo_pt).max()))
        for name, diff in _head_parity(run_torch, graphs, heads, img0, masks, img1).items():
            head_diff[name] = max(head_diff[name], diff)
        decisive = np.abs(lo_pt) >= PARITY_MAX_ABS      # a 1e-3-accurate graph may flip the others
        a, b = (lo_ort > 0) & decisive, (lo_pt > 0) & decisive
        for i in range(len(labels)):
            union = np.logical_or(a[i], b[i]).sum()
            min_iou = min(min_iou, float(np.logical_and(a[i], b[i]).sum() / union) if union else 1.0)
    result = {"max_abs_logit_diff": max_diff, "min_mask_iou": min_iou,
              "iou_ignores_abs_logit_below": PARITY_MAX_ABS, "resolution": resolution}
    if heads:
        result["heads_max_rel_diff"] = head_diff
    if max_diff > PARITY_MAX_ABS or min_iou < PARITY_MIN_IOU:
        raise ParityError(f"ONNX graphs disagree with the torch network: max |Δlogit| {max_diff:.3g} "
                          f"(limit {PARITY_MAX_ABS}), min mask IoU {min_iou:.4f} (limit {PARITY_MIN_IOU})")
    bad = {name: diff for name, diff in head_diff.items() if diff > PARITY_MAX_ABS}
    if bad:
        raise ParityError("head graph(s) disagree with the torch network: "
                          + ", ".join(f"{n} max |Δ|/max(1, max|out|) = {d:.3g}" for n, d in bad.items())
                          + f" (limit {PARITY_MAX_ABS})")
    return result


class _Chain:
    """Memory write of frame 0 into slot 0 of a 2-slot bank, readout + decode of frame 1 →
    logits, through ``run(graph, feeds) → {output: array}`` (torch parts or ORT sessions)."""

    def __init__(self, manifest):
        self.per_object = manifest.inference["memory_keys"] == "per_object"
        self.always_pe = manifest.inference["prior_enhance"] == "always"
        self.top_k = manifest.top_k

    def query(self, run, image, prior):
        q = run("key_encoder", {"image": image})
        key, f16 = q.get("key"), q["f16"]
        if self.always_pe:
            enhanced = run("prior_enhance", {"f16": f16, "prior": prior})
            key, f16 = enhanced["key"], enhanced["enhanced_f16"]
        return key, f16, q["f8"], q["f4"]

    def __call__(self, run, img0, masks, img1) -> np.ndarray:
        prior = masks[:, :1].max(0, keepdims=True)
        key0, f16_0, _, _ = self.query(run, img0, prior)
        encoded = run("value_encoder", {"image": img0, "f16": f16_0, "masks": masks})
        value0 = encoded["value"]
        memory_key = encoded["key"] if self.per_object else key0
        n, hw = value0.shape[0], value0.shape[2] * value0.shape[3]
        rows = memory_key.shape[0]
        mem_k = np.zeros((rows, memory_key.shape[1], 2 * hw), np.float32)
        mem_v = np.zeros((n, value0.shape[1], 2 * hw), np.float32)
        mem_k[:, :, :hw] = memory_key.reshape(rows, -1, hw)
        mem_v[:, :, :hw] = value0.reshape(n, -1, hw)
        valid = np.zeros(2 * hw, np.float32)
        valid[:hw] = 1
        key1, f16, f8, f4 = self.query(run, img1, prior)
        readout = run("readout", {"query_key": key1, "memory_keys": mem_k, "memory_values": mem_v, "valid": valid,
                                  "top_k": np.array(min(self.top_k, hw), np.int64)})["readout"]
        return run("decoder", {"readout": readout, "f16": f16, "f8": f8, "f4": f4})["logits"]


def _head_parity(run_torch, graphs, heads, img0, masks, img1) -> dict[str, float]:
    """Each head graph vs its torch module on the same inputs taken from the torch network on
    the clip (frame 0 + masks, frame 1): max |Δ| / max(1, max |torch output|) per graph."""
    if not heads:
        return {}
    with torch.no_grad():
        torch_run = lambda name, feeds: {k: v.numpy() for k, v in run_torch(name, feeds).items()}  # noqa: E731
        q0, q1 = torch_run("key_encoder", {"image": img0}), torch_run("key_encoder", {"image": img1})
        e0 = torch_run("value_encoder", {"image": img0, "f16": q0["f16"], "masks": masks})
        e1 = torch_run("value_encoder", {"image": img1, "f16": q1["f16"], "masks": masks})
        key0 = e0.get("key", q0.get("key"))
        key1 = e1.get("key", q1.get("key"))
        inputs = {"prior_enhance": {"f16": q1["f16"], "prior": masks[:, :1].max(0, keepdims=True)},
                  "qam": e0, "sam_key": {"previous": key0, "new": key1},
                  "sam_value": {"previous": e0["value"], "new": e1["value"]}}
        out = {}
        for name in heads:
            ref = torch_run(name, inputs[name])
            got = graphs.run_named(name, inputs[name])
            out[name] = max(float(np.abs(got[k] - r).max()) / max(1.0, float(np.abs(r).max())) for k, r in ref.items())
    return out


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


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
