"""Quantisation-aware fine-tuning of the lite key encoder for an int8 export
(``python3 -m training.qat CHECKPOINT --out QAT``, then ``vos-export --checkpoint QAT --precision
int8 --int8-graphs key_encoder,decoder --parity-reference FP32_EXPORT``).

Why: post-training int8 of the EfficientNet-Lite0 key encoder moves its features 19–27 %
(relative L2, ``export/int8.py``), evenly over its 11 inverted-residual blocks, so no layer can
be kept in float32 to save it. Quantisation-aware training (Jacob et al., "Quantization and
Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018, §3:
simulated quantisation in the forward pass, straight-through gradients, batch norm folded into
the convolution weights before they are quantised, §3.2) lets the weights adapt to the int8
grid. Here it is a distillation (no labels): the student is the key encoder *as ONNX Runtime
will run it after* ``vos-export --precision int8`` — every ConvBN folded, its weights fake-
quantised per output channel, every activation tensor fake-quantised with one scale per tensor
— and it learns to reproduce the float32 teacher's four outputs (key, f16, f8, f4), the
tensors the readout's affinity and the decoder's skips consume:

    L = Σ_o ‖q(student)_o − teacher_o‖² / ‖teacher_o‖²,   o ∈ {key, f16, f8, f4}

Where the fake quantisation sits mirrors ORT's QDQ placement (``quantize_static``, QDQ
format): the image input, the output of every ConvBN after its ReLU6 (ORT folds Conv + Clip
into one quantised node when the range fits), the output of every residual Add, and the key
projection's output. The grids are those of :data:`export.int8.SCHEMES` (:data:`GRIDS`):

* ``ort``: activations uint8 asymmetric [0, 255]; weights int8 symmetric with ORT's
  ``reduce_range`` [−64, 64] (scale = max|w| / 64 per output channel);
* ``tensorrt``: activations int8 symmetric [−127, 127]; weights [−127, 127].

Activation ranges are observed as an exponential moving average (momentum
:data:`RANGE_MOMENTUM`) of each batch's min and max — the moving-average observers of Jacob et
al. §3.1 — first on the unmodified network (:data:`OBSERVE_BATCHES` batches), then while it
trains. The export recalibrates on real frames anyway (``export/calibration.py``); these
ranges only have to be close to those.

Only the key encoder (trunk + key projection) changes; the rest of the checkpoint is copied.
The batch-norm statistics stay frozen (they are folded); their affine parameters and the
convolution weights and biases train. The result is a checkpoint like any other (fp16 by
default); its float32 export is *not* the reference its int8 export must match — the teacher
is, hence ``vos-export --parity-reference`` (the float32 export of the original checkpoint).
Measured on the bundled model (800 iterations, weights ``training/weights/lite-qat``):
``training/README.md``, "Quantisation-aware fine-tuning for int8", and the README's "Reduced
precision" section.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sdk.ops import normalise_table

from .backbones import ConvBN, MBConv

log = logging.getLogger("vosedge.qat")

# (activation qmin, qmax, symmetric), (weight qmin, qmax): export.int8.SCHEMES in numbers
GRIDS = {
    "ort": ((0, 255, False), (-64, 64)),
    "tensorrt": ((-127, 127, True), (-127, 127)),
}
RANGE_MOMENTUM = 0.01
OBSERVE_BATCHES = 16
OUTPUTS = ("key", "f16", "f8", "f4")


class ActivationQuantiser(nn.Module):
    """Fake quantisation of one activation tensor (one scale and zero point per tensor).

    forward(x float32, any shape) → x rounded to the int8/uint8 grid and back (float32, same
    shape); gradients pass straight through inside the range and are 0 outside it
    (``torch.fake_quantize_per_tensor_affine``). While ``observing`` (set by
    :class:`QuantisedKeyEncoder`) it first updates its range: the moving average of batch
    min/max, always including 0 (ORT's ``compute_scale_zp``).
    """

    def __init__(self, qmin: int, qmax: int, symmetric: bool):
        super().__init__()
        self.qmin, self.qmax, self.symmetric = qmin, qmax, symmetric
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.observing = True
        self.enabled = True

    def forward(self, x):
        if self.observing:
            with torch.no_grad():
                lo, hi = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)
                if self.seen == 0:
                    self.low.copy_(lo), self.high.copy_(hi)
                else:
                    self.low.lerp_(lo, RANGE_MOMENTUM), self.high.lerp_(hi, RANGE_MOMENTUM)
                self.seen += 1
        if not self.enabled:
            return x
        scale, zero = self.scale_zero_point()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, self.qmin, self.qmax)

    def scale_zero_point(self) -> tuple[float, int]:
        """(scale, zero point) of the current range, as ORT computes them from (min, max)."""
        lo, hi = float(self.low), float(self.high)
        if self.symmetric:
            bound = max(abs(lo), abs(hi), 1e-8)
            return 2 * bound / (self.qmax - self.qmin), 0
        scale = max(hi - lo, 1e-8) / (self.qmax - self.qmin)
        return scale, int(min(max(round(self.qmin - lo / scale), self.qmin), self.qmax))


def folded(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight [C_out, C_in/g, k, k] and bias [C_out] with the batch norm (running
    statistics) folded in, as the ONNX export computes them (Jacob et al. §3.2, Eq. 9 with
    frozen statistics). Differentiable in the conv weight and the batch norm's γ and β."""
    if bn is None:
        bias = conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
        return conv.weight, bias
    gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * gain
    if conv.bias is not None:
        bias = bias + conv.bias * gain
    return conv.weight * gain.reshape(-1, 1, 1, 1), bias


def quantise_weight(weight: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Symmetric per-output-channel fake quantisation of a conv weight: scale = max|w| /
    (qmax − qmin) · 2 per channel (axis 0), zero point 0; straight-through gradient."""
    bound = weight.detach().abs().amax(dim=tuple(range(1, weight.dim()))).clamp(min=1e-12)
    scale = (2 * bound / (qmax - qmin)).float()
    zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, qmin, qmax)


class QuantisedKeyEncoder(nn.Module):
    """The lite network's ``encode_key`` (EfficientNet-Lite0 blocks 0..10 + key projection)
    under simulated int8 (see the module docstring). It shares its parameters with ``net``:
    training it trains ``net``.

    forward(image [B,3,H,W] float32, normalised) → (key [B,64,H/16,W/16], f16 [B,112,…],
    f8 [B,40,H/8,W/8], f4 [B,24,H/4,W/4]), like ``net.encode_key``.

    Raises ValueError for a network whose key encoder is not the lite EfficientNet one.
    """

    def __init__(self, net, scheme: str = "ort"):
        super().__init__()
        if scheme not in GRIDS:
            raise ValueError(f"unknown int8 scheme {scheme!r}; known: {sorted(GRIDS)}")
        trunk = getattr(net.key_encoder, "trunk", None)
        if net.config.get("key_backbone") != "efficientnet-lite0" or trunk is None:
            raise ValueError("quantisation-aware fine-tuning supports the lite (EfficientNet-Lite0) key "
                             f"encoder only, not {net.config.get('key_backbone')!r}")
        (self.act_grid, (self.wmin, self.wmax)) = GRIDS[scheme]
        self.net = net
        self.trunk = trunk
        self.weights_enabled = True
        self.quantisers = nn.ModuleDict()
        self._q("image")
        for name, module in self.trunk.named_modules():
            if isinstance(module, ConvBN):
                self._q(name)
            elif isinstance(module, MBConv) and module.residual:
                self._q(f"{name}.add")
        self._q("key")

    def _q(self, name):
        self.quantisers[name.replace(".", "/")] = ActivationQuantiser(*self.act_grid)

    def quantiser(self, name) -> ActivationQuantiser:
        """The quantiser of tensor ``name`` ("image", "key", a ConvBN's module path such as
        "blocks.3.expand", or "blocks.i.add"); KeyError for an unknown one."""
        return self.quantisers[name.replace(".", "/")]

    def set_mode(self, observing: bool, enabled: bool) -> None:
        """observing: update the activation ranges; enabled: apply the fake quantisation."""
        for q in self.quantisers.values():
            q.observing, q.enabled = observing, enabled
        self.weights_enabled = enabled

    def _conv(self, x, conv, bn=None, act=False):
        weight, bias = folded(conv, bn)
        if self.weights_enabled:
            weight = quantise_weight(weight, self.wmin, self.wmax)
        y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return F.relu6(y) if act else y

    def _convbn(self, name, module: ConvBN, x):
        act = len(module) > 2
        return self.quantiser(name)(self._conv(x, module[0], module[1], act))

    def forward(self, image):
        x = self.quantiser("image")(image)
        x = self._convbn("stem", self.trunk.stem, x)
        feats = []
        for i, block in enumerate(self.trunk.blocks):
            y = self._convbn(f"blocks.{i}.expand", block.expand, x) if block.expand is not None else x
            y = self._convbn(f"blocks.{i}.depthwise", block.depthwise, y)
            y = self._convbn(f"blocks.{i}.project", block.project, y)
            x = self.quantiser(f"blocks.{i}.add")(x + y) if block.residual else y
            feats.append(x)
        f4, f8, f16 = feats[2], feats[4], feats[10]
        key = self.quantiser("key")(self._conv(f16, self.net.key_proj))
        return key, f16, f8, f4


def distillation_loss(student: tuple, teacher: tuple) -> torch.Tensor:
    """Σ over the outputs (key, f16, f8, f4: float32 tensors [B,C,h,w], student and teacher
    alike) of ‖s − t‖² / ‖t‖² over the whole batch → scalar float32 tensor (unitless; its
    square root per term is the relative L2 error)."""
    return torch.stack([(s - t).pow(2).sum() / t.pow(2).sum().clamp(min=1e-12)
                        for s, t in zip(student, teacher)]).sum()


class FrameCrops:
    """Random crops of video frames for the distillation (no labels needed): each item is a
    frame rescaled by a factor in ``zoom`` (the sdk upsamples 240p frames ×2 to its 480 px
    default; the range covers 360–480 px as well), randomly cropped to ``crop`` × ``crop`` px
    and flipped, normalised with ``mean``/``std`` ([0,1] units, as ``net.config``) by the sdk's
    own look-up table (:func:`sdk.ops.normalise_table`): the values the key encoder gets in use.

    ``frames``: list of RGB uint8 [H,W,3] arrays. ``batch(rng, n)`` → float32 tensor
    [n,3,crop,crop]. Raises ValueError when there are no frames.
    """

    def __init__(self, frames: list, crop: int, zoom=(1.5, 2.0), mean=(0.5,) * 3, std=(0.5,) * 3):
        if not frames:
            raise ValueError("no frames to fine-tune on")
        self.frames, self.crop, self.zoom = frames, crop, zoom
        self.table = normalise_table(np.asarray(mean, np.float32), np.asarray(std, np.float32))

    def item(self, rng: np.random.Generator) -> np.ndarray:
        """One crop → float32 [3, crop, crop], normalised."""
        import cv2

        frame = self.frames[int(rng.integers(len(self.frames)))]
        h, w = frame.shape[:2]
        z = max(float(rng.uniform(*self.zoom)), (self.crop + 1) / min(h, w))
        big = cv2.resize(frame, (round(w * z), round(h * z)), interpolation=cv2.INTER_LINEAR)
        y = int(rng.integers(big.shape[0] - self.crop + 1))
        x = int(rng.integers(big.shape[1] - self.crop + 1))
        out = big[y:y + self.crop, x:x + self.crop]
        if rng.random() < 0.5:
            out = out[:, ::-1]
        return np.stack([self.table[c][out[..., c]] for c in range(3)])

    def batch(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.item(rng) for _ in range(n)]))


def load_frames(roots, split: str, every: int = 2) -> list[np.ndarray]:
    """Every ``every``-th frame of the sequences of ``split`` under each DAVIS-layout root (RGB
    uint8). Raises FileNotFoundError naming a missing root or split file."""
    from sdk.davis import davis_sequence_dirs, read_split
    from sdk.io import iter_frames

    frames = []
    for root in roots:
        for name in read_split(root, split):
            fdir, _ = davis_sequence_dirs(root, name)
            frames += [rgb for i, (_, rgb) in enumerate(iter_frames(fdir)) if i % every == 0]
    return frames


def evaluate(qnet: QuantisedKeyEncoder, images: torch.Tensor, targets: tuple) -> dict:
    """Relative L2 error ‖s − t‖ / ‖t‖ over the batch of each output of the simulated-int8 key
    encoder on ``images`` [B,3,H,W] (float32, normalised) against ``targets`` (the teacher's
    key, f16, f8, f4 on them) → {output: float, 4 decimals}. Leaves the ranges unchanged."""
    qnet.set_mode(observing=False, enabled=True)
    with torch.no_grad():
        student = qnet(images)
    return {o: round(float((s - t).norm() / t.norm().clamp(min=1e-12)), 4)
            for o, s, t in zip(OUTPUTS, student, targets)}


def fine_tune(net, frames: list, *, scheme: str = "ort", iterations: int = 800, batch_size: int = 4,
              crop: int = 320, lr: float = 3e-5, seed: int = 0, held_out: list | None = None,
              eval_every: int = 100, progress=None) -> list[dict]:
    """Quantisation-aware fine-tuning of ``net``'s key encoder in place (see the module
    docstring); returns the history: one dict per ``eval_every`` iterations (and the last)
    with ``iteration``, the mean training ``loss`` since the previous record and, when
    ``held_out`` frames are given, ``held_out``: the relative L2 error of each output
    (simulated int8 vs the float32 teacher) on them at 480 px-scale crops.

    Adam on the key encoder's weights and batch-norm affine parameters, cosine learning rate
    from ``lr`` to 0. Raises ValueError for a non-lite network or an unknown scheme.
    """
    teacher = copy.deepcopy(net).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    net.eval()                                  # batch-norm statistics frozen (folded)
    qnet = QuantisedKeyEncoder(net, scheme)
    mean, std = net.config["mean"], net.config["std"]
    data = FrameCrops(frames, crop, mean=mean, std=std)
    rng = np.random.default_rng(seed)
    fixed = None
    if held_out:
        fixed = FrameCrops(held_out, crop, mean=mean, std=std).batch(np.random.default_rng(seed + 1), 8)
        with torch.no_grad():
            fixed_targets = teacher.encode_key(fixed)

    qnet.set_mode(observing=True, enabled=False)   # ranges of the float32 network first
    with torch.no_grad():
        for _ in range(OBSERVE_BATCHES):
            qnet(data.batch(rng, batch_size))
    params = list(net.key_encoder.parameters()) + list(net.key_proj.parameters())
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / iterations)))

    history = []
    if fixed is not None:
        history.append({"iteration": 0, "loss": None, "held_out": evaluate(qnet, fixed, fixed_targets)})
        log.info("qat %s", json.dumps(history[0]))
    losses, start = [], time.perf_counter()
    for it in range(1, iterations + 1):
        qnet.set_mode(observing=True, enabled=True)
        images = data.batch(rng, batch_size)
        with torch.no_grad():
            target = teacher.encode_key(images)
        loss = distillation_loss(qnet(images), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(it, losses[-1])
        if it % eval_every == 0 or it == iterations:
            rec = {"iteration": it, "loss": round(float(np.mean(losses)), 5),
                   "seconds": round(time.perf_counter() - start, 1)}
            if fixed is not None:
                rec["held_out"] = evaluate(qnet, fixed, fixed_targets)
            history.append(rec)
            log.info("qat %s", json.dumps(rec))
            losses = []
    for p in net.parameters():
        p.requires_grad_(True)
    return history


def main(argv=None) -> int:
    import argparse

    from sdk.errors import VosEdgeError

    from .checkpoint import load_checkpoint, save_checkpoint

    default_data = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016-240p"
    parser = argparse.ArgumentParser(
        prog="python3 -m training.qat",
        description="Quantisation-aware fine-tuning of a lite checkpoint's key encoder for an int8 export "
                    "(distillation from the float32 network; see training/qat.py).",
        epilog="Then: vos-export --checkpoint OUT --precision int8 --int8-graphs key_encoder,decoder "
               "--parity-reference <float32 export of CHECKPOINT> --out exports/lite-qat-int8 (the bundled "
               "model's run reached a mean mask IoU of 0.967 against its float32 export: add --parity-min-iou "
               "0.96; training/README.md).")
    parser.add_argument("checkpoint", help="vos-train checkpoint (X.safetensors + X.json), e.g. "
                                           "training/weights/lite.safetensors")
    parser.add_argument("--out", required=True, help="checkpoint to write (X.safetensors + X.json)")
    parser.add_argument("--data", action="append", help=f"DAVIS-layout root, repeatable (default {default_data})")
    parser.add_argument("--split", default="train", help="split of every --data root to train on (default train)")
    parser.add_argument("--held-out-split", default="val", help="split of the first --data root whose "
                        "frames measure the error (default val; '' for none)")
    parser.add_argument("--scheme", choices=sorted(GRIDS), default="ort",
                        help="int8 grid to train for: vos-export's --int8-scheme (default ort)")
    parser.add_argument("--iterations", type=int, default=800,
                        help="optimiser steps (default 800, the bundled run: 25 min on 2 CPU cores)")
    parser.add_argument("--batch-size", type=int, default=4, help="crops per step (default 4)")
    parser.add_argument("--crop", type=int, default=320, help="crop side in px (default 320)")
    parser.add_argument("--lr", type=float, default=3e-5,
                        help="Adam learning rate, cosine to 0 (default 3e-5, the bundled run's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--eval-every", type=int, default=100, help="iterations between held-out measurements")
    parser.add_argument("--seed", type=int, default=0, help="crop sampling seed")
    parser.add_argument("--fp32", action="store_true", help="write float32 weights (default fp16, as the "
                                                            "bundled weights)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("iterations", "batch_size", "crop", "eval_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be ≥ 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    roots = args.data or [str(default_data)]
    try:
        net, meta = load_checkpoint(args.checkpoint)
        frames = load_frames(roots, args.split)
        held = load_frames(roots[:1], args.held_out_split, every=5) if args.held_out_split else None
    except (FileNotFoundError, RuntimeError, ValueError, VosEdgeError) as e:
        parser.exit(2, f"error: {e}\n")
    log.info("%d training frames, %d held-out frames", len(frames), len(held or []))
    try:
        history = fine_tune(net, frames, scheme=args.scheme, iterations=args.iterations,
                            batch_size=args.batch_size, crop=args.crop, lr=args.lr, seed=args.seed,
                            held_out=held, eval_every=args.eval_every)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    state = dict(meta.get("state") or {})
    state["qat"] = {"from": str(args.checkpoint), "scheme": args.scheme, "iterations": args.iterations,
                    "batch_size": args.batch_size, "crop": args.crop, "lr": args.lr, "data": roots,
                    "split": args.split, "history": history}
    path = save_checkpoint(args.out, net, state, half=not args.fp32)
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
