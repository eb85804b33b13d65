"""vos-bench's PyTorch reference: the same STCN every-k loop on the same weights through
torch, in lockstep with the sdk, to give the sdk's overhead ratio.

Imports torch (and training/) only inside :func:`reference_run`; the rest of vos-bench
never does.

Both loops get the same frames, the same pre- and post-processing (`sdk.ops`: resize, pad,
normalise; sigmoid, soft aggregation, crop, resize, argmax), the same memory rule (the first
frame and every k-th frame, k from the manifest's ``policy_defaults.every_k``) and the same
readout top-k; the torch loop keeps its memory as tensors concatenated at each write (STCN's
own way). The frames are stepped alternately — sdk frame t, torch frame t, sdk frame t+1, … —
so background load on the machine falls on both alike.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from sdk.manifest import load_manifest
from sdk.ops import Geometry, channel_argmax, one_hot, sigmoid, soft_aggregate

CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "training" / "weights"
KEY_TOLERANCE = 1e-3   # max |Δkey|, ORT vs torch, of the same weights (vos-export's parity bound on logits)


def default_checkpoints(manifest) -> list[Path]:
    """Checkpoints the bundled export may have been made from: ``training/weights/<config>``
    and ``<config>-main`` (the main-stage weights before method heads), those present. The
    manifest does not name its checkpoint; :func:`reference_run` keeps the one whose key
    encoder reproduces the export's."""
    return [path for stem in (manifest.config, f"{manifest.config}-main")
            if (path := CHECKPOINT_DIR / f"{stem}.safetensors").is_file() and path.with_suffix(".json").is_file()]


class TorchLoop:
    """STCN every-k inference on a :class:`training.networks.VOSNetwork` (objects of the first
    frame only). Same contract as ``sdk.Segmenter.step`` for what vos-bench uses."""

    def __init__(self, net, manifest, resolution: int | None, k: int, top_k: int):
        import torch

        self.torch, self.net = torch, net
        self.manifest, self.resolution, self.k, self.top_k = manifest, resolution, k, top_k
        self.mean = np.asarray(manifest.mean, np.float32)
        self.std = np.asarray(manifest.std, np.float32)
        self.reset()

    def reset(self) -> None:
        self.geo = None
        self.keys = self.values = None   # [C_k, M], [N, C_v, M]
        self.lut = None
        self.t = 0

    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        torch, net = self.torch, self.net
        if self.t == 0:
            if mask is None:
                raise ValueError("the reference loop needs the first frame's mask")
            self.geo = Geometry.for_frame(*frame.shape[:2], self.resolution, self.manifest.stride)
            labels = [int(v) for v in np.unique(mask) if v]
            self.labels, self.lut = labels, np.array([0, *labels], np.uint8)
        elif mask is not None:
            raise ValueError("the reference loop takes objects of the first frame only")
        geo = self.geo
        image = torch.from_numpy(geo.image(frame, self.mean, self.std))
        key, f16, f8, f4 = net.encode_key(image)
        if self.t == 0:
            probs = one_hot(geo.label_map(mask), self.labels)
        else:
            m = self.keys.shape[1]
            readout, _ = net.readout(key, self.keys[None], self.values, torch.ones(m), min(self.top_k, m))
            probs = sigmoid(net.decode(readout, f16, f8, f4)[:, 0].numpy())
        agg = soft_aggregate(probs)
        out = self.lut[channel_argmax(geo.to_input(agg))]
        if self.t == 0 or self.t % self.k == 0:
            own = agg[1:]
            masks = torch.from_numpy(np.stack([own, own.sum(0, keepdims=True) - own], 1))
            value = net.encode_value(image, f16, masks)
            k_new, v_new = key.flatten(2)[0], value.flatten(2)
            if self.keys is None:
                self.keys, self.values = k_new, v_new
            else:
                self.keys = torch.cat([self.keys, k_new], 1)
                self.values = torch.cat([self.values, v_new], 2)
        self.t += 1
        return out


def _matching_network(checkpoints, manifest, image: np.ndarray, ort_key: np.ndarray):
    """(checkpoint, network, max |Δkey|) of the first checkpoint whose key encoder gives the
    export's key for `image` within KEY_TOLERANCE; ValueError naming each candidate's miss."""
    import torch

    from training.checkpoint import load_checkpoint

    misses = []
    for checkpoint in checkpoints:
        try:
            net, meta = load_checkpoint(checkpoint)
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            misses.append(f"{checkpoint}: {exc}")
            continue
        cfg = meta["config"]
        if (cfg.get("key_channels"), cfg.get("value_channels")) != (manifest.key_channels, manifest.value_channels):
            misses.append(f"{checkpoint}: C_k {cfg.get('key_channels')}, C_v {cfg.get('value_channels')}")
            continue
        net.eval()
        with torch.inference_mode():
            diff = float(np.abs(net.encode_key(torch.from_numpy(image))[0].numpy() - ort_key).max())
        if diff <= KEY_TOLERANCE:
            return checkpoint, net, diff
        misses.append(f"{checkpoint}: max |Δkey| {diff:.3g} > {KEY_TOLERANCE}")
    raise ValueError(f"no checkpoint holds the weights of the export {manifest.root} ({'; '.join(misses) or 'none given'})")


def reference_run(segmenter, checkpoints, frames, masks, gt, order, warmup: int, progress=None) -> dict:
    """Play frames[order] (prompt masks[t] per played frame, ground truth gt[order]) through
    `segmenter` (an sdk every_k Segmenter) and the torch loop of the first of `checkpoints`
    that holds the export's weights, alternately.

    → {"checkpoint", "frames", "torch_ms_per_frame", "sdk_ms_per_frame", "overhead_ratio"
    (sdk / torch), "torch_p50_ms", "sdk_p50_ms", "torch_threads", "omp_wait_policy", "torch",
    "jf_torch", "jf_sdk", "mask_agreement" (mean IoU of the two label maps' foregrounds over
    the played frames), "max_abs_key_diff" (first frame's key, ORT vs torch)}.

    torch's OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE unless set, effective when
    torch is first imported here): with the default active wait, two torch threads on a CPU
    shared with other work ran 10-30x slower here, which says nothing about the sdk.
    Raises ValueError when no checkpoint matches the export.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import onnxruntime
    import torch

    from sdk.metrics import evaluate_sequence, summarize

    manifest = segmenter.manifest
    geo = Geometry.for_frame(*frames[order[0]].shape[:2], segmenter.resolution, manifest.stride)
    image = geo.image(frames[order[0]], np.asarray(manifest.mean, np.float32), np.asarray(manifest.std, np.float32))
    # a float16/int8 export (vos-export --precision): check the float32 original when it is still there
    source = ((manifest.raw.get("precision") or {}).get("source") or {}).get("path")
    source = source if source and (Path(source) / "manifest.json").is_file() else None
    key_graph = load_manifest(source).graphs["key_encoder"] if source else manifest.graphs["key_encoder"]
    session = onnxruntime.InferenceSession(str(key_graph), providers=segmenter.providers)
    ort_key = session.run(None, {"image": image})[0]
    del session
    checkpoint, net, key_diff = _matching_network(checkpoints, manifest, image, ort_key)
    k = int(manifest.policy_defaults.get("every_k", {}).get("k", 5))
    loop = TorchLoop(net, manifest, segmenter.resolution, k, segmenter.top_k)
    played_gt = [gt[i] for i in order]
    with torch.inference_mode():
        for runner in (segmenter, loop):   # warm-up, then a fresh video
            runner.reset()
            for t in range(min(warmup, len(order))):
                runner.step(frames[order[t]], masks[t])
            runner.reset()
        times = {"sdk": [], "torch": []}
        outputs = {"sdk": [], "torch": []}
        agreement = []
        for t, i in enumerate(order):
            for name, runner in (("sdk", segmenter), ("torch", loop)):
                start = time.perf_counter()
                labels = runner.step(frames[i], masks[t])
                times[name].append(time.perf_counter() - start)
                outputs[name].append(labels)
            a, b = outputs["sdk"][-1] > 0, outputs["torch"][-1] > 0
            union = np.count_nonzero(a | b)
            agreement.append(1.0 if union == 0 else np.count_nonzero(a & b) / union)
            if progress:
                progress(t + 1)
        jf = {name: round(100 * summarize(evaluate_sequence(outputs[name], played_gt).values())["J&F"], 2)
              for name in outputs}
    sdk_ms, torch_ms = (1e3 * float(np.mean(times[n])) for n in ("sdk", "torch"))
    return {
        "checkpoint": str(checkpoint),
        "method": "every_k",
        "frames": len(order),
        "torch_ms_per_frame": round(torch_ms, 2),
        "sdk_ms_per_frame": round(sdk_ms, 2),
        "overhead_ratio": round(sdk_ms / torch_ms, 3),
        "torch_p50_ms": round(1e3 * float(np.median(times["torch"])), 2),
        "sdk_p50_ms": round(1e3 * float(np.median(times["sdk"])), 2),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "jf_torch": jf["torch"],
        "jf_sdk": jf["sdk"],
        "mask_agreement": round(float(np.mean(agreement)), 4),
        "max_abs_key_diff": key_diff,
    }
