"""int8 graphs of a float32 export (``vos-export --precision int8``): ONNX Runtime static
quantisation in QDQ format with per-channel weights, calibrated on the feeds the float32
export itself produces on real frames (:mod:`export.calibration`).

Each graph of :data:`DEFAULT_INT8_GRAPHS` is pre-processed (``quant_pre_process``: symbolic and
ONNX shape inference + ORT's basic graph optimisation, as ORT recommends before quantising;
symbolic shape inference is skipped for graphs it cannot complete, e.g. the value encoder's
Shape/Where chains), then ``quantize_static(quant_format=QDQ, per_channel=True)`` inserts
QuantizeLinear/DequantizeLinear pairs on activations (one scale per tensor, from the
calibration ranges) and int8 weights with one scale per output channel (axis 0 of each Conv
weight). Sources: ONNX Runtime, "Quantize ONNX models",
https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html, and the
``quantize_static`` docstring of onnxruntime 1.31 (parameter guidance per CPU).

Schemes (:data:`SCHEMES`, ``--int8-scheme``):

* ``ort`` (default): uint8 asymmetric activations, int8 symmetric per-channel weights with
  ``reduce_range`` (7-bit weight range). On x86 CPUs without VNNI (AVX2: the project VM's AMD
  EPYC, family 25) ORT's u8·s8 kernels add pairs of products in int16 (``vpmaddubsw``) and
  saturate — ORT's own guidance for such CPUs is ``reduce_range=True``. Measured on the bundled
  model at 480 px (3 DAVIS 2016 val clips × 25 frames, every_k): decoder alone int8 mean mask
  IoU vs float32 0.970 with 8-bit weights, 0.994 with 7-bit ones; value encoder 0.974 vs
  0.993 (the key encoder's features: 35–40 % relative L2 error with 8-bit weights in ORT's
  fused kernels, 12–15 % when the same QDQ graph runs unfused, 22–26 % with 7-bit weights).
  With 7-bit weights no x86 or ARM CPU saturates, so the parity measured here holds on every
  CPU the export may run on; a VNNI or ARM CPU would be as exact with 8-bit weights.
* ``tensorrt``: TensorRT explicit quantisation (NVIDIA TensorRT developer guide, "Explicit
  Quantization", https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html):
  int8 symmetric activations and weights (zero points 0; weights in [−127, 127]), per-channel
  weight scales on the output-channel axis, QDQ nodes that TensorRT (e.g. on Jetson) fuses
  into int8 kernels; biases stay float32 (``QuantizeBias=False``: TensorRT's DequantizeLinear
  takes int8/fp8/int4 inputs, not int32). ORT's CPU provider also runs it (the parity check
  does), but on CPUs without VNNI its s8·s8 kernels saturate too (the value encoder: 15.6 %
  relative error fused vs 4.8 % unfused; decoder + value encoder mean IoU 0.952), so the CPU
  parity of this scheme is pessimistic for TensorRT; the decoder alone is not affected (1.1 %
  either way).

Which graphs (:data:`DEFAULT_INT8_GRAPHS`, ``--int8-graphs``) — measured on the bundled lite
model, 480 px, DAVIS 2016 val blackswan + car-roundabout + dance-twirl × 25 frames (240p frames
upsampled), mean mask IoU of the int8 export vs float32 (every_k unless said), and the graph's
time at 480×864 on the project VM (2 AMD EPYC cores, AVX2, float32 → int8, A/B interleaved):

============================  ======================  ==================================
graph(s) in int8              mean IoU vs float32     ms float32 → int8 (speed-up)
============================  ======================  ==================================
decoder                       0.9947 (percentile),    126 → 71 (1.8×), every frame;
                              0.994 (minmax)          tensorrt scheme on this CPU 1.2×
value_encoder                 0.993 (minmax)          94 → 62 (1.5×), written frames only
decoder + value_encoder       0.9896 (minmax), 0.9919 (percentile)
key_encoder                   0.947 (0.951 with its stride-2 layers kept float32)
                              174 → 106 (1.65×); features 15–27 % off (relative L2)
all three                     0.949 (percentile); J&F −1.5 points (below)
prior_enhance + qam           0.988 (qdmn, minmax)    tiny graphs
sam_key + sam_value           0.9896 (rde, tensorrt scheme); RDE fold 9–28 % off
float16 (all but readout)     0.997                   decoder 125 → 132 (0.95×) on AVX2
============================  ======================  ==================================

J&F on DAVIS 2016 val at 480 px (480p frames, breakdance + camel + car-shadow, every_k,
vos-eval): float32 75.72, int8 decoder 75.53, int8 decoder with the tensorrt scheme (run on
this CPU) 75.40, float16 75.71, int8 key + value encoder + decoder 74.18.

So the decoder — the graph that runs on every frame and gains most — is int8 by default; the
value encoder (0.3 % more IoU lost for ~6 ms per frame on average with every_k, which writes
one frame in five) and the heads are float32 unless named (``--int8-graphs
decoder,value_encoder`` passes parity with the percentile method); the key encoder stays
float32: its int8 features move the keys of the top-k affinity and every skip feature of the
decoder (through EfficientNet-Lite's 11 inverted-residual blocks the signal-to-quantisation-
noise ratio falls from 33 dB after the stem to 17 dB at f16, ORT's ``qdq_loss_debug``).
Keeping part of it float32 does not help (``nodes_to_exclude``, 2026-12-01, 32 calibration
feeds, worst relative L2 error of its outputs key / f16 / f8 / f4 on 8 val feeds at 480 px):
all Conv nodes int8 0.225 / 0.270 / 0.233 / 0.187; the key projection float 0.224 / 0.270 /
0.233 / 0.187; blocks 5–10 (stride 16) and the key projection float 0.212 / 0.261 / 0.233 /
0.187; every depthwise Conv float 0.405 / 0.484 / 0.429 / 0.353 (worse: ORT then runs the
pointwise Convs between float depthwise ones unfused). The error is already 19 % at f4, after
the stem and three blocks, and grows evenly with depth — no single layer to keep in float32;
quantisation-aware fine-tuning is the way to an int8 key encoder.
Quantisation-aware fine-tuning (``python3 -m training.qat``, 800 iterations, 2026-12-01;
``--parity-reference`` = the bundled float32 export) halves that error in ONNX Runtime
(worst of the parity feeds, key / f16 / f8 / f4): post-training 0.221 / 0.273 / 0.254 / 0.200,
after fine-tuning 0.128 / 0.151 / 0.145 / 0.116; mean mask IoU of key encoder + decoder int8
vs the bundled float32 0.950 → 0.967 (dance-twirl 0.880 → 0.918) — still below the 0.99
gate, so the default stays the decoder alone. By J&F (all of DAVIS 2016 val at 480 px, one
vos-grid run) it is better than float32: every_k 77.0 → 77.7 at ×1.37 fps, rde 77.3 → 77.7
at ×1.20 (post-training: 76.7 at ×1.32, breakdance −4.1) — README, "Reduced precision".
``readout`` always stays float32 (top-k + softmax; its 1e30 empty-slot mask and the usage
counts are exact in float32 only).

Calibration method (:data:`CALIBRATION_METHODS`, ``--calibration-method``): ``minmax`` (the
tensor's min and max over the samples), ``entropy`` (ORT's KL-divergence threshold, 128 bins),
``percentile`` (99.999 % of the values, 2048 bins). Default ``percentile``: its clipped
outliers gave the lowest output errors (value encoder 7.3 % vs 8.6 % relative L2 with
minmax, decoder 1.23 % vs 1.32 %) and the highest mask IoU (table above); entropy gave the
same ranges as minmax on these graphs.

Needs ``onnx`` (onnxruntime.quantization imports it); the sdk never imports either.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import ConversionError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATION_METHOD = "percentile"
SAMPLES_PER_GRAPH = 32
KEEP_FP32 = ("readout",)
DEFAULT_INT8_GRAPHS = ("decoder",)


@dataclass(frozen=True)
class Scheme:
    """How activations and weights are quantised (see the module docstring)."""

    name: str
    activations: str            # "uint8" | "int8"
    symmetric_activations: bool
    reduce_range: bool          # 7-bit weights
    quantize_bias: bool         # int32 bias DequantizeLinear
    target: str

    def record(self) -> dict:
        """The manifest's ``precision.scheme`` object."""
        return {"name": self.name, "format": "QDQ", "activations": self.activations,
                "activations_symmetric": self.symmetric_activations, "weights": "int8",
                "weights_symmetric": True, "per_channel_weights": True, "reduce_range": self.reduce_range,
                "bias": "int32" if self.quantize_bias else "float32", "target": self.target}


SCHEMES = {
    "ort": Scheme("ort", "uint8", False, True, True, "ONNX Runtime CPU provider (any x86/ARM CPU)"),
    "tensorrt": Scheme("tensorrt", "int8", True, False, False, "TensorRT explicit quantisation (e.g. Jetson)"),
}


class FeedReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over a list of feeds ({input name:
    float32 array}), with ``set_range`` for ORT's strided calibration (bounded memory: the
    calibrator keeps every intermediate tensor of the samples of one stride)."""

    def __init__(self, feeds: list[dict]):
        self.feeds = feeds
        self.set_range(0, len(feeds))

    def get_next(self):
        if self._next >= self._end:
            return None
        self._next += 1
        return self.feeds[self._next - 1]

    def __len__(self) -> int:
        return len(self.feeds)

    def __iter__(self):
        return iter(self.get_next, None)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, end_index


@contextlib.contextmanager
def _quiet():
    """onnxruntime.quantization prints progress ("Collecting tensor data …") and logs a
    pre-processing hint on the root logger: neither reaches the user."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def _inside(folder: Path):
    """Run the block with ``folder`` as the working directory: onnxruntime's symbolic shape
    inference saves ``sym_shape_infer_temp.onnx`` and its external data into the working
    directory when it cannot complete."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def pre_process(src: Path, dst: Path) -> str:
    """``quant_pre_process(src, dst)`` (run inside ``dst``'s folder); without symbolic shape
    inference when it cannot complete → "shape inference + optimisation" | "onnx shape
    inference + optimisation" | "none" (the graph is quantised as it is when both fail)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for skip_symbolic, what in ((False, "shape inference + optimisation"),
                                (True, "onnx shape inference + optimisation")):
        try:
            with _quiet(), _inside(dst.parent):
                quant_pre_process(str(src.resolve()), str(dst.resolve()), skip_symbolic_shape=skip_symbolic)
            return what
        except Exception:   # noqa: BLE001, S112 - "Incomplete symbolic shape inference" and kin: try without
            continue
    dst.write_bytes(src.read_bytes())
    return "none"


def _stride(n: int) -> int:
    """Samples per calibration stride: 4 or a divisor of ``n`` near it (ORT requires one)."""
    return next((d for d in (4, 3, 5, 2, 6) if n % d == 0), 1)


def quantize_graph(src: Path, dst: Path, feeds: list[dict], scheme: str, method: str, work: Path) -> str:
    """Quantise the float32 graph ``src`` into ``dst`` (QDQ, per-channel weights, ``scheme`` of
    :data:`SCHEMES`, activation ranges by ``method`` of :data:`CALIBRATION_METHODS` over
    ``feeds``); ``work`` holds the pre-processed copy → what pre-processing ran.

    Raises ValueError for an unknown scheme or method or no feeds,
    :class:`~export.errors.ConversionError` naming the graph when onnxruntime.quantization
    fails (its error's first line).
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if scheme not in SCHEMES:
        raise ValueError(f"unknown int8 scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(CALIBRATION_METHODS)}")
    if not feeds:
        raise ValueError(f"no calibration feeds for {src.name}")
    s = SCHEMES[scheme]
    pre = work / f"{src.stem}.pre.onnx"
    done = pre_process(src, pre)
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    extra = {"ActivationSymmetric": s.symmetric_activations, "WeightSymmetric": True,
             "QuantizeBias": s.quantize_bias, "CalibStridedMinMax": _stride(len(feeds))}
    try:
        with _quiet():
            quantize_static(str(pre), str(dst), FeedReader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=s.reduce_range,
                            activation_type=QuantType.QUInt8 if s.activations == "uint8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=calibrate, extra_options=extra)
    except Exception as exc:
        raise ConversionError(f"onnxruntime.quantization cannot quantise {src.name} ({scheme}, {method}): "
                              f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from exc
    finally:
        pre.unlink(missing_ok=True)
    _drop_unused_domains(dst)
    return done


def _drop_unused_domains(path: Path) -> None:
    """Remove the opset imports of domains no node uses (ORT's pre-processing declares all of
    its contrib domains; the graph keeps standard ONNX ops only, which a TensorRT parser wants)."""
    import onnx

    model = onnx.load(str(path))
    used = {node.domain for node in model.graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used]
    if len(kept) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(kept)
        onnx.save(model, str(path))
