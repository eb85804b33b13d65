"""The three kinds of ``proposals.onnx`` the sdk runs (``docs/graph-contract.md``, "Proposals"),
their signatures, the manifest's ``proposals`` entry, and the conversion of each kind's raw
outputs to :class:`~sdk.proposals.Proposals` on the stride-4 grid of the padded internal input.

* ``"vosedge"`` — vosedge's own contract: inputs a non-empty subset of ``image`` [1,3,H,W]
  (normalised as ``key_encoder``'s), ``f16``/``f8``/``f4`` (the key encoder's outputs); outputs
  ``boxes`` [P,4] (input pixels), ``scores`` [P], ``masks`` [P,H/4,W/4] full-frame probabilities.
* ``"maskrcnn"`` — torchvision's Mask R-CNN exported with ``torch.onnx.export(model, [image],
  input_names=["images_tensors"], output_names=["boxes", "labels", "scores", "masks"])`` (the
  signature of torchvision's own ONNX test, ``test/test_onnx.py::test_mask_rcnn``): one image
  float32 [3,H,W] RGB in [0, 1] (the model normalises and resizes inside); ``boxes`` [P,4]
  float32 in the input image's pixels, ``labels`` [P] int64 (ignored: proposals are
  class-agnostic), ``scores`` [P] float32, ``masks`` [P,1,H,W] float32 probabilities **pasted
  into the full input image** (``roi_heads.paste_masks_in_image`` runs inside the graph). The
  raw mask head's box-relative [P,1,28,28] (a graph cut before the paste) is also accepted.
* ``"yolo-seg"`` — Ultralytics YOLOv8/YOLO11-seg ``model.export(format="onnx")``
  (docs.ultralytics.com/modes/export, ``ultralytics/engine/exporter.py``: input ``images``
  [1,3,S_h,S_w] RGB in [0, 1], letterboxed; ``output_names = ["output0", "output1"]`` for the
  segment task): ``output0`` [1, 4 + nc + nm, A] (cx, cy, w, h in letterbox pixels, nc class
  scores after sigmoid, nm = 32 mask coefficients; A anchors, 8400 at 640) and ``output1``
  [1, nm, S_h/4, S_w/4] mask prototypes. No NMS in the graph (``nms=True`` exports, whose
  output0 is [1, max_det, 6 + nm], are refused).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import ManifestError, VosEdgeError
from .ops import sigmoid
from .proposals import DEFAULT_NMS_IOU, DEFAULT_SCORE_THRESHOLD, DEFAULT_TOP_P, Proposals, select

FORMATS = ("vosedge", "maskrcnn", "yolo-seg")
FILE = "proposals.onnx"
# what each format's masks are: vosedge's full frame on the f4 grid; Mask R-CNN's full input
# frame (torchvision's export) or its mask head's 28×28 box-relative masks; YOLO's prototypes
MASK_KINDS = {"vosedge": ("full-frame-f4",), "maskrcnn": ("full-frame", "box-28"), "yolo-seg": ("yolo-prototypes",)}
BOX_MASK_SIZE = 28              # torchvision's mask head: RoIAlign 14×14, one 2× transposed conv
VOSEDGE_INPUTS = ("image", "f16", "f8", "f4")
YOLO_FILL = 114                 # Ultralytics' LetterBox pad colour (uint8 level)
NORMALISATIONS = ("export", "unit")
SIZES = ("internal", "letterbox")
POSTPROCESS_STAGES = ("threshold", "nms", "top_p")
REQUIRED_KEYS = ("file", "sha256", "format", "inputs", "outputs", "preprocess", "postprocess_in_graph", "defaults",
                 "masks")


class SignatureMismatch(VosEdgeError, ValueError):
    """A graph's inputs or outputs do not fit the proposal format asked for; the message names
    the tensor, what it is and what the format expects."""


@dataclass(frozen=True)
class Signature:
    """What :func:`check_signature` learnt from a graph: ``inputs``/``outputs`` {name: shape}
    (ints for static axes, a str for dynamic ones), ``masks`` (one of :data:`MASK_KINDS`),
    ``letterbox`` (S_h, S_w) for yolo-seg (else None)."""

    fmt: str
    inputs: dict
    outputs: dict
    masks: str
    letterbox: tuple | None = None


def _static(d) -> bool:
    return isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0


def _shape_text(shape) -> str:
    return "[" + ",".join(str(d) if _static(d) else (d if isinstance(d, str) and d else "?") for d in shape) + "]"


def _normalise(tensors: dict) -> dict:
    """{name: (dtype, shape)} with dynamic axes as strings ("?" when unnamed)."""
    return {name: (dtype, [int(d) if _static(d) else (d if isinstance(d, str) and d else "?") for d in shape])
            for name, (dtype, shape) in tensors.items()}


def check_signature(fmt: str, inputs: dict, outputs: dict) -> Signature:
    """Check a graph's ``inputs`` and ``outputs`` ({name: (numpy dtype name, shape)}, shape items
    int for static axes, str/None for dynamic ones) against proposal format ``fmt`` (one of
    :data:`FORMATS`; the module docstring gives each signature). Extra outputs are allowed and
    ignored. Returns a :class:`Signature`; raises :class:`SignatureMismatch` naming the first
    tensor that does not fit and what was expected."""
    if fmt not in FORMATS:
        raise SignatureMismatch(f"unknown proposal format {fmt!r}; known: {', '.join(FORMATS)}")
    inputs, outputs = _normalise(inputs), _normalise(outputs)
    return {"vosedge": _check_vosedge, "maskrcnn": _check_maskrcnn, "yolo-seg": _check_yolo}[fmt](inputs, outputs)


def _need(fmt: str, tensors: dict, kind: str, name: str, dtype: str, rank: int, expected: str):
    if name not in tensors:
        raise SignatureMismatch(f"{fmt} proposals graph has no {kind} {name!r} (expected {name} {expected} {dtype}); "
                                f"its {kind}s are {', '.join(map(repr, tensors)) or 'none'}")
    got_dtype, shape = tensors[name]
    if got_dtype != dtype or len(shape) != rank:
        raise SignatureMismatch(f"{fmt} proposals graph {kind} {name!r} is {got_dtype} {_shape_text(shape)}, "
                                f"expected {dtype} {expected}")
    return shape


def _fixed(fmt: str, kind: str, name: str, shape: list, axis: int, value: int, expected: str) -> None:
    if _static(shape[axis]) and shape[axis] != value:
        raise SignatureMismatch(f"{fmt} proposals graph {kind} {name!r} is {_shape_text(shape)}, expected {expected} "
                                f"(axis {axis} = {value})")


def _check_vosedge(inputs: dict, outputs: dict) -> Signature:
    fmt = "vosedge"
    unknown = [n for n in inputs if n not in VOSEDGE_INPUTS]
    if unknown or not inputs:
        raise SignatureMismatch(f"vosedge proposals graph inputs {list(inputs)}: expected a non-empty subset of "
                                f"{', '.join(VOSEDGE_INPUTS)} (image [1,3,H,W] normalised as key_encoder's; the key "
                                "encoder's f16, f8, f4)")
    for name in inputs:
        shape = _need(fmt, inputs, "input", name, "float32", 4, "[1,C,h,w]")
        _fixed(fmt, "input", name, shape, 0, 1, "[1,C,h,w]")
    if "image" in inputs:
        _fixed(fmt, "input", "image", inputs["image"][1], 1, 3, "[1,3,H,W]")
    boxes = _need(fmt, outputs, "output", "boxes", "float32", 2, "[P,4]")
    _fixed(fmt, "output", "boxes", boxes, 1, 4, "[P,4]")
    _need(fmt, outputs, "output", "scores", "float32", 1, "[P]")
    masks = _need(fmt, outputs, "output", "masks", "float32", 3, "[P,H/4,W/4]")
    if "image" in inputs:
        image = inputs["image"][1]
        for axis in (2, 3):
            if _static(image[axis]) and _static(masks[axis - 1]) and masks[axis - 1] * 4 != image[axis]:
                raise SignatureMismatch(f"vosedge proposals graph output 'masks' is {_shape_text(masks)}, expected "
                                        f"[P,H/4,W/4] for image {_shape_text(image)}")
    return Signature(fmt, {n: s for n, (_, s) in inputs.items()},
                     {n: outputs[n][1] for n in ("boxes", "scores", "masks")}, "full-frame-f4")


def _check_maskrcnn(inputs: dict, outputs: dict) -> Signature:
    fmt = "maskrcnn"
    if len(inputs) != 1:
        raise SignatureMismatch(f"maskrcnn proposals graph has inputs {list(inputs)}, expected one image float32 "
                                "[3,H,W] (torchvision: torch.onnx.export(model, [image], ...))")
    (name, (dtype, shape)), = inputs.items()
    if dtype != "float32" or len(shape) not in (3, 4):
        raise SignatureMismatch(f"maskrcnn proposals graph input {name!r} is {dtype} {_shape_text(shape)}, expected "
                                "float32 [3,H,W] (RGB in [0,1])")
    if len(shape) == 4:
        _fixed(fmt, "input", name, shape, 0, 1, "[1,3,H,W]")
    _fixed(fmt, "input", name, shape, len(shape) - 3, 3, "[3,H,W]")
    hw = shape[-2:]
    boxes = _need(fmt, outputs, "output", "boxes", "float32", 2, "[P,4]")
    _fixed(fmt, "output", "boxes", boxes, 1, 4, "[P,4]")
    _need(fmt, outputs, "output", "labels", "int64", 1, "[P]")
    _need(fmt, outputs, "output", "scores", "float32", 1, "[P]")
    masks = _need(fmt, outputs, "output", "masks", "float32", 4, "[P,1,H,W] (or the mask head's [P,1,28,28])")
    _fixed(fmt, "output", "masks", masks, 1, 1, "[P,1,H,W]")
    mh, mw = masks[2:]
    if (mh, mw) == (BOX_MASK_SIZE, BOX_MASK_SIZE) and list(hw) != [BOX_MASK_SIZE, BOX_MASK_SIZE]:
        kind = "box-28"
    elif all(_static(d) for d in (mh, mw, *hw)) and [mh, mw] != list(hw):
        raise SignatureMismatch(f"maskrcnn proposals graph output 'masks' is {_shape_text(masks)}, expected "
                                f"[P,1,H,W] pasted at the input's size {_shape_text(hw)} or the mask head's "
                                f"box-relative [P,1,{BOX_MASK_SIZE},{BOX_MASK_SIZE}]")
    else:   # dynamic, or static where the input is dynamic: checked against the image at run time
        kind = "full-frame"
    return Signature(fmt, {name: shape}, {n: outputs[n][1] for n in ("boxes", "labels", "scores", "masks")}, kind)


def _check_yolo(inputs: dict, outputs: dict) -> Signature:
    fmt = "yolo-seg"
    if len(inputs) != 1:
        raise SignatureMismatch(f"yolo-seg proposals graph has inputs {list(inputs)}, expected one 'images' "
                                "float32 [1,3,S,S] (Ultralytics export)")
    (name, (dtype, shape)), = inputs.items()
    if dtype != "float32" or len(shape) != 4:
        raise SignatureMismatch(f"yolo-seg proposals graph input {name!r} is {dtype} {_shape_text(shape)}, expected "
                                "float32 [1,3,S,S]")
    _fixed(fmt, "input", name, shape, 0, 1, "[1,3,S,S]")
    _fixed(fmt, "input", name, shape, 1, 3, "[1,3,S,S]")
    if not (_static(shape[2]) and _static(shape[3])) or shape[2] % 4 or shape[3] % 4:
        raise SignatureMismatch(f"yolo-seg proposals graph input {name!r} is {_shape_text(shape)}, expected a fixed "
                                "letterbox size [1,3,S,S] with S a multiple of 4 (export with imgsz=S, "
                                "dynamic=False)")
    protos = _need(fmt, outputs, "output", "output1", "float32", 4, "[1,32,S/4,S/4] (mask prototypes)")
    _fixed(fmt, "output", "output1", protos, 0, 1, "[1,32,S/4,S/4]")
    if not _static(protos[1]):
        raise SignatureMismatch(f"yolo-seg proposals graph output 'output1' is {_shape_text(protos)}, expected a "
                                "fixed number of prototypes [1,32,S/4,S/4]")
    nm = protos[1]
    det = _need(fmt, outputs, "output", "output0", "float32", 3, f"[1,4+nc+{nm},A]")
    _fixed(fmt, "output", "output0", det, 0, 1, f"[1,4+nc+{nm},A]")
    if not _static(det[1]) or det[1] < 4 + 1 + nm:
        raise SignatureMismatch(f"yolo-seg proposals graph output 'output0' is {_shape_text(det)}, expected "
                                f"[1,4+nc+{nm},A] (cx, cy, w, h, nc >= 1 class scores, {nm} mask coefficients)")
    if _static(det[2]) and det[2] == 6 + nm and det[1] > det[2]:
        raise SignatureMismatch(f"yolo-seg proposals graph output 'output0' is {_shape_text(det)}, expected "
                                f"[1,4+nc+{nm},A] with A anchors; this looks like an nms=True export "
                                "([1,max_det,6+nm]): export without nms")
    return Signature(fmt, {name: shape}, {"output0": det, "output1": protos}, "yolo-prototypes",
                     (int(shape[2]), int(shape[3])))


def default_preprocess(signature: Signature) -> dict:
    """The manifest's ``proposals.preprocess`` a format implies: vosedge graphs take the
    export's normalised image at the internal size; Mask R-CNN the internal image as RGB in
    [0,1]; YOLO-seg that image letterboxed into its fixed [S_h,S_w] (pad level 114)."""
    if signature.fmt == "vosedge":
        return {"normalisation": "export", "size": "internal", "channel_order": "rgb"}
    if signature.fmt == "maskrcnn":
        return {"normalisation": "unit", "size": "internal", "channel_order": "rgb"}
    return {"normalisation": "unit", "size": "letterbox", "letterbox": list(signature.letterbox),
            "letterbox_fill": YOLO_FILL, "channel_order": "rgb"}


def default_postprocess_in_graph(fmt: str) -> dict:
    """What a format's graph does itself: Mask R-CNN's threshold (0.05), per-class NMS (0.5)
    and top-100 are not the paper's class-agnostic NMS 0.4 and top 30, and YOLO exports do none,
    so the sdk does all three for both; a vosedge graph declares its own (none by default)."""
    return dict.fromkeys(POSTPROCESS_STAGES, False)


DEFAULTS = {"score_threshold": DEFAULT_SCORE_THRESHOLD, "nms_iou": DEFAULT_NMS_IOU, "top_p": DEFAULT_TOP_P}


def parse_entry(manifest_path: Path, entry, root: Path, verify_sha256: bool = True) -> dict:
    """Validate the manifest's optional ``proposals`` object (``docs/graph-contract.md``) and
    return it with ``path`` (the graph file's absolute path) added. Raises
    :class:`~sdk.errors.ManifestError` naming the field, its value and what was expected: not an
    object, a missing key of :data:`REQUIRED_KEYS`, a missing file or one whose sha256 differs,
    a ``format`` outside :data:`FORMATS`, ``masks`` not one of that format's :data:`MASK_KINDS`,
    ``inputs``/``outputs`` not {name: shape list}, ``preprocess`` values outside
    :data:`NORMALISATIONS`/:data:`SIZES` (``letterbox`` then needs [S_h,S_w] positive ints) or
    ``channel_order`` ≠ "rgb", ``postprocess_in_graph`` values not booleans, ``defaults``
    ``score_threshold``/``nms_iou`` outside [0,1] or ``top_p`` not a positive int. Other keys are
    kept (informational, e.g. a training record)."""
    where = f"{manifest_path}: proposals"

    def fail(field: str, value, expected: str):
        raise ManifestError(f"{where}{field} is {value!r}, expected {expected}; re-export the model "
                            "(vos-export --proposals MODEL.onnx --proposal-format FORMAT)")

    if not isinstance(entry, dict):
        fail("", entry, "an object {file, sha256, format, inputs, outputs, preprocess, postprocess_in_graph, "
                        "defaults, masks}")
    missing = [k for k in REQUIRED_KEYS if k not in entry]
    if missing:
        raise ManifestError(f"{where} misses {', '.join(map(repr, missing))}; re-export the model")
    if not isinstance(entry["file"], str) or not isinstance(entry["sha256"], str):
        fail(".file/.sha256", (entry["file"], entry["sha256"]), "two strings")
    fmt = entry["format"]
    if fmt not in FORMATS:
        fail(".format", fmt, f"one of {list(FORMATS)}")
    if entry["masks"] not in MASK_KINDS[fmt]:
        fail(".masks", entry["masks"], f"one of {list(MASK_KINDS[fmt])} for format {fmt!r}")
    for key in ("inputs", "outputs"):
        value = entry[key]
        if not isinstance(value, dict) or not value or not all(
                isinstance(s, list) and all(isinstance(d, (int, str)) for d in s) for s in value.values()):
            fail(f".{key}", value, "an object {tensor name: shape list}")
    pre = entry["preprocess"]
    if not isinstance(pre, dict) or pre.get("normalisation") not in NORMALISATIONS \
            or pre.get("size") not in SIZES or pre.get("channel_order") != "rgb":
        fail(".preprocess", pre, f"an object {{normalisation: {' | '.join(NORMALISATIONS)}, size: "
                                 f"{' | '.join(SIZES)}, channel_order: 'rgb'}}")
    if pre["size"] == "letterbox":
        box = pre.get("letterbox")
        if not isinstance(box, list) or len(box) != 2 or not all(_static(d) and not d % 4 for d in box):
            fail(".preprocess.letterbox", box, "[S_h, S_w], positive multiples of 4")
        fill = pre.get("letterbox_fill", YOLO_FILL)
        if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not 0 <= fill <= 255:
            fail(".preprocess.letterbox_fill", fill, "a uint8 level 0..255")
    post = entry["postprocess_in_graph"]
    if not isinstance(post, dict) or set(post) != set(POSTPROCESS_STAGES) \
            or not all(isinstance(v, bool) for v in post.values()):
        fail(".postprocess_in_graph", post, "{threshold: bool, nms: bool, top_p: bool}")
    defaults = entry["defaults"]
    if not isinstance(defaults, dict):
        fail(".defaults", defaults, "{score_threshold, nms_iou, top_p}")
    for key in ("score_threshold", "nms_iou"):
        value = defaults.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 <= value <= 1:
            fail(f".defaults.{key}", value, "a number in [0, 1]")
    top_p = defaults.get("top_p")
    if isinstance(top_p, bool) or not isinstance(top_p, int) or top_p < 1:
        fail(".defaults.top_p", top_p, "a positive int (DMN-AOA §3.1: 30)")
    file = root / entry["file"]
    if not file.is_file():
        raise ManifestError(f"{where} graph file {file} is missing")
    if verify_sha256:
        from .manifest import sha256_file

        if sha256_file(file) != entry["sha256"]:
            raise ManifestError(f"{where} graph file {file} does not match its sha256 in the manifest (tampered or "
                                "truncated); re-export the model")
    return {**entry, "path": file}


# ---------------------------------------------------------------------------------------------
# conversions to the f4 grid of the padded internal input (H×W; grid = (H/4, W/4))

def full_frame_to_grid(masks: np.ndarray, grid: tuple[int, int], keep: np.ndarray | None = None) -> np.ndarray:
    """Full-frame masks [N,H,W] (or [N,1,H,W]) at input size → [P,H/4,W/4] for the ``keep``
    indices (default all): the mean of each 4×4 block (the area average of the f4 cell; OpenCV
    INTER_AREA, exact block means for a factor of 4), float32. Masks already at grid size pass
    unchanged. Raises SignatureMismatch for any other size."""
    h4, w4 = grid
    mh, mw = masks.shape[-2:]
    keep = np.arange(len(masks)) if keep is None else keep
    if (mh, mw) == (h4, w4):
        return masks[keep].reshape(len(keep), h4, w4).astype(np.float32)
    if (mh, mw) != (4 * h4, 4 * w4):
        raise SignatureMismatch(f"masks are {mh}x{mw}, expected the input's {4 * h4}x{4 * w4} or {h4}x{w4}")
    out = np.empty((len(keep), h4, w4), np.float32)
    for k, index in enumerate(keep):
        plane = masks[index].reshape(mh, mw)
        out[k] = cv2.resize(np.ascontiguousarray(plane, np.float32), (w4, h4), interpolation=cv2.INTER_AREA)
    return out


def paste_box_masks(masks: np.ndarray, boxes: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Box-relative masks [P,M,M] (Mask R-CNN's mask head: the box's M×M bins) → full-frame
    [P,H/4,W/4]: bin (i, j) of box (x1, y1, x2, y2) (input pixels) is centred at input point
    (x1 + (j + ½)·(x2 − x1)/M, y1 + (i + ½)·(y2 − y1)/M); each mask is warped (bilinear, zero
    outside the box's bins) onto the f4 grid, whose cell c is centred at 4c + 2."""
    h4, w4 = grid
    out = np.zeros((len(masks), h4, w4), np.float32)
    m = masks.shape[-1]
    for k, (mask, (x1, y1, x2, y2)) in enumerate(zip(masks, boxes)):
        ax, ay = (x2 - x1) / (4 * m), (y2 - y1) / (4 * m)
        if ax <= 0 or ay <= 0:
            continue
        matrix = np.array([[ax, 0, x1 / 4 + ax / 2 - 0.5], [0, ay, y1 / 4 + ay / 2 - 0.5]], np.float64)
        out[k] = cv2.warpAffine(np.ascontiguousarray(mask, np.float32), matrix, (w4, h4), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def crop_to_boxes(masks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Zero, in place, each mask [P,H/4,W/4] outside its box (input pixels): a cell is kept
    when its centre (4c + 2) lies in [x1, x2) × [y1, y2) (Ultralytics' ``crop_mask`` rule on
    the prototype grid, here on the f4 grid). Returns ``masks``."""
    _, h4, w4 = masks.shape
    cy, cx = 4 * np.arange(h4, dtype=np.float32) + 2, 4 * np.arange(w4, dtype=np.float32) + 2
    for mask, (x1, y1, x2, y2) in zip(masks, boxes):
        mask[~((cy >= y1) & (cy < y2))] = 0
        mask[:, ~((cx >= x1) & (cx < x2))] = 0
    return masks


@dataclass(frozen=True)
class Letterbox:
    """Where the padded internal image (H×W) goes in a YOLO input of (S_h, S_w): resized by
    (new_w/W, new_h/H) with new = round(side · min(S_h/H, S_w/W)) (aspect kept), centred with
    offsets (top, left), the rest filled with level :data:`YOLO_FILL` (Ultralytics' LetterBox)."""

    height: int
    width: int
    size: tuple
    new_h: int
    new_w: int
    top: int
    left: int

    @classmethod
    def for_image(cls, height: int, width: int, size) -> Letterbox:
        sh, sw = size
        r = min(sh / height, sw / width)
        nh, nw = min(sh, max(1, round(height * r))), min(sw, max(1, round(width * r)))
        return cls(height, width, (sh, sw), nh, nw, (sh - nh) // 2, (sw - nw) // 2)

    def image(self, rgb01: np.ndarray, fill: float = YOLO_FILL) -> np.ndarray:
        """RGB [3,H,W] float32 in [0,1] → letterboxed [1,3,S_h,S_w] (bilinear resize)."""
        hwc = np.ascontiguousarray(rgb01.transpose(1, 2, 0))
        if (self.new_h, self.new_w) != (self.height, self.width):
            hwc = cv2.resize(hwc, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)
        out = np.full((1, 3, *self.size), fill / 255, np.float32)
        out[0, :, self.top:self.top + self.new_h, self.left:self.left + self.new_w] = hwc.transpose(2, 0, 1)
        return out

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) scale from internal pixels to letterbox pixels."""
        return self.new_w / self.width, self.new_h / self.height

    def boxes_back(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes [P,4] in letterbox pixels → internal pixels, clipped to the image."""
        sx, sy = self.scale
        out = (boxes - np.array([self.left, self.top, self.left, self.top], np.float32)) \
            / np.array([sx, sy, sx, sy], np.float32)
        return clip_boxes(out, self.height, self.width)

    def prototypes_to_grid(self, masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        """Masks [P,m_h,m_w] on YOLO's prototype grid (stride S/m of the letterbox) → [P,H/4,W/4]:
        prototype cell j is centred at letterbox x = (j + ½)·S_w/m_w, i.e. internal x = (that −
        left)/s_x, i.e. f4 grid coordinate internal/4 − ½; bilinear warp, zero outside."""
        h4, w4 = grid
        _, mh, mw = masks.shape
        sx, sy = self.scale
        px, py = self.size[1] / mw, self.size[0] / mh
        ax, ay = px / (4 * sx), py / (4 * sy)
        matrix = np.array([[ax, 0, (px / 2 - self.left) / (4 * sx) - 0.5],
                           [0, ay, (py / 2 - self.top) / (4 * sy) - 0.5]], np.float64)
        out = np.empty((len(masks), h4, w4), np.float32)
        for k, mask in enumerate(masks):
            out[k] = cv2.warpAffine(np.ascontiguousarray(mask, np.float32), matrix, (w4, h4), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return out


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes [P,4] float32 clipped to [0, W] × [0, H], with x2 ≥ x1 and y2 ≥ y1."""
    out = np.empty_like(boxes, dtype=np.float32)
    np.clip(boxes[:, 0::2], 0, width, out=out[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=out[:, 1::2])
    out[:, 2] = np.maximum(out[:, 2], out[:, 0])
    out[:, 3] = np.maximum(out[:, 3], out[:, 1])
    return out


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[A,4] (cx, cy, w, h) → (x1, y1, x2, y2), float32."""
    half = boxes[:, 2:] / 2
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1).astype(np.float32)


def to_proposals(fmt: str, masks_kind: str, outputs: dict, size: tuple[int, int], stages: dict,
                 letterbox: Letterbox | None = None) -> Proposals:
    """A graph's raw ``outputs`` ({name: array}) for a padded internal input of ``size`` (H, W)
    → :class:`~sdk.proposals.Proposals` on the (H/4, W/4) grid. ``stages`` gives the
    post-processing the sdk does: {score_threshold, nms_iou, top_p}, each None where the graph
    does it itself. Boxes are clipped to the frame, scores and masks to [0, 1]; the masks are
    computed for the selected proposals only. Raises SignatureMismatch when an output's shape
    does not fit the format (e.g. P differs between outputs)."""
    height, width = size
    grid = (height // 4, width // 4)
    if fmt == "yolo-seg":
        det, protos = outputs["output0"], outputs["output1"]
        nm = protos.shape[1]
        if det.ndim != 3 or det.shape[0] != 1 or det.shape[1] < 5 + nm or protos.ndim != 4:
            raise SignatureMismatch(f"yolo-seg outputs output0 {list(det.shape)}, output1 {list(protos.shape)}: "
                                    f"expected [1,4+nc+{nm},A] and [1,{nm},S/4,S/4]")
        rows = det[0].T                                          # [A, 4 + nc + nm]
        scores = np.clip(rows[:, 4:-nm].max(axis=1), 0, 1).astype(np.float32)
        boxes = letterbox.boxes_back(cxcywh_to_xyxy(rows[:, :4]))
        keep = select(boxes, scores, **stages)
        boxes, scores = boxes[keep], scores[keep]
        coeffs = rows[keep, -nm:].astype(np.float32)
        _, _, mh, mw = protos.shape
        small = sigmoid((coeffs @ protos[0].reshape(nm, -1)).reshape(-1, mh, mw).astype(np.float32))
        masks = crop_to_boxes(letterbox.prototypes_to_grid(small, grid), boxes)
    else:
        boxes, scores, raw_masks = outputs["boxes"], outputs["scores"], outputs["masks"]
        p = len(scores)
        want = 3 if fmt == "vosedge" else 4
        if boxes.shape != (p, 4) or scores.ndim != 1 or raw_masks.ndim != want or len(raw_masks) != p:
            raise SignatureMismatch(f"{fmt} outputs boxes {list(boxes.shape)}, scores {list(scores.shape)}, masks "
                                    f"{list(raw_masks.shape)}: expected [P,4], [P], "
                                    f"{'[P,H/4,W/4]' if want == 3 else '[P,1,h,w]'} with one P")
        boxes = clip_boxes(boxes.astype(np.float32), height, width)
        scores = np.clip(scores.astype(np.float32), 0, 1)
        keep = select(boxes, scores, **stages)
        boxes, scores = boxes[keep], scores[keep]
        if masks_kind == "box-28":
            masks = paste_box_masks(raw_masks[keep].reshape(len(keep), *raw_masks.shape[-2:]), boxes, grid)
        else:
            masks = full_frame_to_grid(raw_masks, grid, keep)
    np.clip(masks, 0, 1, out=masks)
    return Proposals(np.ascontiguousarray(boxes, np.float32), np.ascontiguousarray(scores, np.float32),
                     np.ascontiguousarray(masks, np.float32))
