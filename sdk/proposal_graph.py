"""The proposals graph of an export at run time: one ONNX Runtime session for the manifest's
``proposals`` entry, fed the padded internal input image the key encoder sees (and its f16 / f8
/ f4 when the graph declares them), its raw outputs turned into
:class:`~sdk.proposals.Proposals` (DMN-AOA §3.1, "Object Proposal Generator";
``docs/graph-contract.md``, "Proposals")."""
from __future__ import annotations

from time import perf_counter

import numpy as np
import onnxruntime as ort

from .errors import GraphRunError, InputError, ManifestError, ParameterError
from .manifest import Manifest
from .proposal_formats import Letterbox, SignatureMismatch, check_signature, to_proposals
from .proposals import Proposals
from .runtime import _quiet_ort, _quiet_run, _run_failure, resolve_providers, session_options

# ONNX Runtime's type strings → NumPy dtype names (those check_signature compares)
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def session_signature(session) -> tuple[dict, dict]:
    """({input name: (dtype, shape)}, {output name: (dtype, shape)}) of an ORT session."""
    def table(values):
        return {v.name: (_ORT_TYPES.get(v.type, v.type), list(v.shape or [])) for v in values}
    return table(session.get_inputs()), table(session.get_outputs())


class ProposalGenerator:
    """Runs an export's ``proposals.onnx`` and returns each frame's :class:`Proposals`.

    ``manifest``: a :class:`~sdk.manifest.Manifest` with a ``proposals`` entry. ``providers`` as
    :func:`sdk.runtime.resolve_providers`, ``threads`` as :func:`sdk.runtime.session_options`.
    ``score_threshold``, ``nms_iou``, ``top_p`` override the manifest's ``proposals.defaults``
    (DMN-AOA: NMS 0.4 §4.1, top 30 §3.1); each stage runs in the sdk only when the manifest's
    ``postprocess_in_graph`` says the graph does not do it.

    Attributes: ``format`` ("vosedge" | "maskrcnn" | "yolo-seg"), ``inputs`` (the graph's input
    names; for vosedge a subset of image, f16, f8, f4), ``stages`` ({score_threshold, nms_iou,
    top_p} the sdk applies, None = done in the graph), ``run_ms`` (wall ms inside
    ``InferenceSession.run`` + conversion, summed since the caller last cleared it),
    ``providers`` (those used).

    Raises :class:`~sdk.errors.ManifestError` when the export has no proposals graph,
    onnxruntime cannot load it, or its signature differs from the manifest's or its format's;
    :class:`~sdk.errors.ParameterError` (an InputError) for an override out of range.
    """

    def __init__(self, manifest: Manifest, providers=None, threads: int | None = None,
                 score_threshold: float | None = None, nms_iou: float | None = None, top_p: int | None = None):
        entry = manifest.proposals
        if entry is None:
            raise ManifestError(f"export {manifest.root} has no proposals graph; add one with `vos-export "
                                f"--from-export {manifest.root} --proposals MODEL.onnx --proposal-format "
                                "maskrcnn|yolo-seg|vosedge --out DIR`")
        self.format, self.masks_kind = entry["format"], entry["masks"]
        self.preprocess = dict(entry["preprocess"])
        self.mean = np.asarray(manifest.mean, np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(manifest.std, np.float32).reshape(1, 3, 1, 1)
        requested = resolve_providers(providers)
        try:
            with _quiet_ort():
                self.session = ort.InferenceSession(str(entry["path"]), session_options(threads), providers=requested)
        except Exception as exc:  # onnxruntime's Fail/InvalidGraph/… derive from Exception only
            raise ManifestError(f"onnxruntime {ort.__version__} cannot load the proposals graph ({entry['path']}): "
                                f"{exc}") from exc
        self.providers = self.session.get_providers()
        inputs, outputs = session_signature(self.session)
        if list(inputs) != list(entry["inputs"]) or not set(entry["outputs"]) <= set(outputs):
            raise ManifestError(f"proposals graph has inputs {list(inputs)} and outputs {list(outputs)} but the "
                                f"manifest declares {list(entry['inputs'])} and {list(entry['outputs'])}: graph and "
                                "manifest come from different exports")
        try:
            signature = check_signature(self.format, inputs, outputs)
        except SignatureMismatch as exc:
            raise ManifestError(f"{entry['path']}: {exc}") from exc
        self.inputs = list(inputs)
        self.input_shapes = signature.inputs
        self._outputs = list(signature.outputs)
        defaults = entry["defaults"]
        post = entry["postprocess_in_graph"]
        given = {"score_threshold": score_threshold, "nms_iou": nms_iou, "top_p": top_p}
        for key in ("score_threshold", "nms_iou"):
            value = given[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value <= 1):
                raise ParameterError(f"{key} must be a number in [0, 1], got {value!r}")
        if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, int) or top_p < 1):
            raise ParameterError(f"top_p must be a positive int, got {top_p!r}")
        self.stages = {key: None if post[stage] else (given[key] if given[key] is not None else defaults[key])
                       for key, stage in (("score_threshold", "threshold"), ("nms_iou", "nms"), ("top_p", "top_p"))}
        self._run_options = _quiet_run()
        self._stride = manifest.stride
        self.run_ms = 0.0

    @property
    def features(self) -> list[str]:
        """The key-encoder features (f16, f8, f4) the graph reads (vosedge graphs only)."""
        return [n for n in self.inputs if n in ("f16", "f8", "f4")]

    def __call__(self, image: np.ndarray, features: dict | None = None) -> Proposals:
        """Proposals of one frame.

        ``image``: float32 [1,3,H,W], the padded internal input exactly as fed to
        ``key_encoder.onnx`` (normalised (rgb/255 − mean)/std with the manifest's normalisation,
        H and W multiples of the export's stride). ``features``: {"f16", "f8", "f4": the key
        encoder's outputs for that image}, required for the ones the graph declares
        (:attr:`features`), ignored otherwise. Mask R-CNN and YOLO graphs get the image back in
        RGB [0, 1] (image·std + mean, clipped); YOLO's letterboxed into its fixed size.

        Returns :class:`Proposals` (boxes in pixels of the H×W input, masks [P,H/4,W/4]).
        Raises :class:`~sdk.errors.InputError` for an image of the wrong dtype/shape, a missing
        feature, or an image size a graph with a fixed input size cannot take;
        :class:`~sdk.errors.GraphRunError` when onnxruntime fails or the outputs do not fit the
        format (naming the output)."""
        if not isinstance(image, np.ndarray) or image.dtype != np.float32 or image.ndim != 4 \
                or image.shape[:2] != (1, 3) or image.shape[2] % 4 or image.shape[3] % 4:
            got = f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
            raise InputError(f"proposals image must be float32 [1,3,H,W] with H, W multiples of 4 (the key "
                             f"encoder's input), got {got}")
        t0 = perf_counter()
        height, width = image.shape[2:]
        letterbox = None
        feeds = {}
        if self.format == "vosedge":
            missing = [n for n in self.features if not features or n not in features]
            if missing:
                raise InputError(f"the proposals graph reads the key encoder's {', '.join(missing)}: pass "
                                 "features={'f16': ..., 'f8': ..., 'f4': ...}")
            for name in self.inputs:
                feeds[name] = image if name == "image" else np.ascontiguousarray(features[name], np.float32)
        else:
            rgb = image * self.std + self.mean
            np.clip(rgb, 0, 1, out=rgb)
            (name,) = self.inputs
            shape = self.input_shapes[name]
            if self.format == "yolo-seg":
                letterbox = Letterbox.for_image(height, width, tuple(self.preprocess["letterbox"]))
                feeds[name] = letterbox.image(rgb[0], self.preprocess.get("letterbox_fill", 114))
            else:
                fixed = [d for d in shape[-2:] if isinstance(d, int)]
                if len(fixed) == 2 and tuple(fixed) != (height, width):
                    raise InputError(f"the proposals graph takes a fixed {fixed[0]}x{fixed[1]} image, but frames are "
                                     f"processed at {height}x{width} px internally: export the detector with dynamic "
                                     "height and width, or choose a resolution that gives that size")
                feeds[name] = rgb if len(shape) == 4 else rgb[0]
        try:
            raw = self.session.run(self._outputs, feeds, self._run_options)
        except Exception as exc:  # onnxruntime's Fail/RuntimeException/… derive from Exception only
            raise GraphRunError(_run_failure("proposals", feeds, exc, self._stride)) from exc
        try:
            out = to_proposals(self.format, self.masks_kind, dict(zip(self._outputs, raw)), (height, width),
                               self.stages, letterbox)
        except (SignatureMismatch, InputError) as exc:
            raise GraphRunError(f"proposals graph ({self.format}) gave outputs that do not fit its format: "
                                f"{exc}") from exc
        finally:
            self.run_ms += (perf_counter() - t0) * 1e3
        return out

