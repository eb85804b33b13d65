"""Pre- and post-processing around the graphs: resize and pad to the stride, normalisation,
sigmoid, soft aggregation (STM/STCN) and the way back to input size."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ODDS_CLAMP = 1e-7


class Workspace:
    """Arrays reused from frame to frame: one per name, made again only when its shape or
    dtype changes (a new video size, a new object).

    Why: without it every frame mallocs and frees several MiB of temporaries (at 480p input,
    3.3 MiB for the probabilities resized to input size alone). Whether glibc gives such
    blocks back to the kernel, so that the next frame page-faults them in again (~800 faults,
    1–2 ms), depends on the heap's history: a frame's cost then differed between processes
    and drifted along a long video. Arrays handed out are overwritten by the next frame; a
    caller keeps nothing from them past the frame (the Segmenter returns fresh label maps).
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype=np.float32, zeros: bool = False) -> np.ndarray:
        """The array called `name` of this shape and dtype: its contents are whatever the last
        frame left (all zero when it is new and `zeros`)."""
        shape = tuple(int(n) for n in shape)
        a = self._arrays.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = self._arrays[name] = (np.zeros if zeros else np.empty)(shape, dtype)
        return a

    def exchange(self, name: str, array: np.ndarray | None) -> np.ndarray | None:
        """Take the array called `name` out (None if there is none) and hold `array` under that
        name instead (nothing when None): a caller keeps this frame's array past the frame and
        gives back the one it kept before, for the next frame to reuse."""
        taken = self._arrays.pop(name, None)
        if array is not None:
            self._arrays[name] = array
        return taken

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(a.nbytes for a in self._arrays.values())

    def clear(self) -> None:
        """Let every array go (a new video)."""
        self._arrays.clear()


def _array(work: Workspace | None, name: str, shape, dtype=np.float32, zeros: bool = False) -> np.ndarray:
    """`work`'s array `name`, or a fresh one without a workspace."""
    return (work or Workspace()).array(name, shape, dtype, zeros)


PADDINGS = ("bottom_right", "centre")


@dataclass(frozen=True)
class Geometry:
    """Where a frame of input size (height, width) goes inside the graphs.

    The frame is resized so its short side is ``resolution`` px (aspect kept; None = native
    size), then zero-padded (after normalisation, i.e. with the mean colour) to (padded_h,
    padded_w), multiples of ``stride``. ``padding`` ``"bottom_right"`` puts all the padding at
    the bottom/right (top = left = 0); ``"centre"`` splits it as STM/STCN's ``pad_divide_by``
    does: top = ⌊(padded_h − resized_h)/2⌋, the rest (the odd pixel) at the bottom, likewise
    left/right. The resized frame occupies rows [top, top + resized_h) and columns [left,
    left + resized_w) of the padded one.
    """

    height: int
    width: int
    resized_h: int
    resized_w: int
    padded_h: int
    padded_w: int
    stride: int
    top: int = 0
    left: int = 0

    @classmethod
    def for_frame(cls, height: int, width: int, resolution: int | None, stride: int,
                  padding: str = "bottom_right") -> Geometry:
        """Raises ValueError for a ``padding`` not in :data:`PADDINGS`."""
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        if resolution is None:
            rh, rw = height, width
        else:
            scale = resolution / min(height, width)
            rh, rw = max(1, round(height * scale)), max(1, round(width * scale))
        def up(n: int) -> int:
            return -(-n // stride) * stride

        ph, pw = up(rh), up(rw)
        top, left = ((ph - rh) // 2, (pw - rw) // 2) if padding == "centre" else (0, 0)
        return cls(height, width, rh, rw, ph, pw, stride, top, left)

    @property
    def feature_size(self) -> tuple[int, int]:
        """(h, w) of the stride-16 key/value maps; h·w memory positions per frame."""
        return self.padded_h // self.stride, self.padded_w // self.stride

    @property
    def resized(self) -> bool:
        return (self.resized_h, self.resized_w) != (self.height, self.width)

    @property
    def inside(self) -> tuple[slice, slice]:
        """(rows, columns) of the padded frame that hold the resized frame."""
        return slice(self.top, self.top + self.resized_h), slice(self.left, self.left + self.resized_w)

    def image(self, frame: np.ndarray, mean: np.ndarray, std: np.ndarray, work: Workspace | None = None) -> np.ndarray:
        """RGB uint8 [H,W,3] → normalised, padded float32 [1,3,Hp,Wp]: (rgb/255 − mean)/std
        (in `work`'s "image" array when given). The resized frame is split into its three
        uint8 planes and each plane goes through a 256-entry table (:func:`normalise_table`:
        the same float32 values as the formula, computed once per level) straight into the
        padded array: two cheap passes instead of a strided float conversion and a subtraction."""
        if self.resized:
            shrink = self.resized_h < self.height
            frame = cv2.resize(frame, (self.resized_w, self.resized_h),
                               _array(work, "image_resized", (self.resized_h, self.resized_w, 3), np.uint8),
                               interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out = _array(work, "image", (1, 3, self.padded_h, self.padded_w), zeros=True)   # the padding stays 0
        rows, cols = self.inside
        planes = [_array(work, f"image_plane{c}", (self.resized_h, self.resized_w), np.uint8) for c in range(3)]
        _into(cv2.split(np.ascontiguousarray(frame), planes), planes)
        table = normalise_table(mean, std)
        for c in range(3):
            view = out[0, c, rows, cols]
            _into(cv2.LUT(planes[c], table[c], view), view)
        return out

    def label_map(self, mask: np.ndarray) -> np.ndarray:
        """uint8 label map [H,W] → [Hp,Wp] uint8 (nearest-neighbour resize, zero padding)."""
        if self.resized:
            mask = cv2.resize(mask, (self.resized_w, self.resized_h), interpolation=cv2.INTER_NEAREST)
        out = np.zeros((self.padded_h, self.padded_w), np.uint8)
        out[self.inside] = mask
        return out

    def to_input(self, probs: np.ndarray, work: Workspace | None = None) -> np.ndarray:
        """[C,Hp,Wp] float32 → [C,H,W] float32: crop the padding, bilinear resize to input size
        (`work`'s C-contiguous "to_input_planes" array when given; without a resize, a view of
        ``probs``). The C maps are resized together as one C-channel image (cv2 resizes a
        C-channel image and C single planes with different SIMD paths, 1 ulp apart: this keeps
        the masks of before), then split back into planes."""
        rows, cols = self.inside
        probs = probs[:, rows, cols]
        if not self.resized:
            return probs
        c = len(probs)
        small = _array(work, "to_input_small", (self.resized_h, self.resized_w, c))
        _into(cv2.merge(list(probs), small), small)      # the interleaving copy (SIMD)
        hwc = cv2.resize(small, (self.width, self.height), _array(work, "to_input", (self.height, self.width, c)),
                         interpolation=cv2.INTER_LINEAR).reshape(self.height, self.width, c)
        planes = _array(work, "to_input_planes", (c, self.height, self.width))
        _into(cv2.split(hwc, list(planes)), list(planes))  # contiguous planes: the argmax reads them ~3× faster
        return planes


def _into(result, dst) -> None:
    """Make sure a cv2 call given ``dst`` wrote there: cv2 returns its own array instead when it
    could not use the one given (a dtype or layout it does not take); copy that back."""
    if isinstance(dst, list):
        for r, d in zip(result, dst):
            _into(r, d)
    elif result is not dst and not np.shares_memory(result, dst):
        np.copyto(dst, np.asarray(result).reshape(dst.shape))


def normalise_table(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Normalisation of every uint8 level: mean, std [3] (float32, or float64) → float32
    [3,256] with table[c, v] = v · (1/(255·std_c)) − mean_c/std_c, evaluated with the very
    NumPy operations (and dtypes) :meth:`Geometry.image` once applied to each pixel, so that a
    table look-up gives bit-identical images."""
    mean, std = np.asarray(mean), np.asarray(std)
    table = np.empty((3, 256), np.float32)
    np.multiply(np.arange(256, dtype=np.uint8)[None, :], (1 / (255 * std))[:, None], out=table)
    table -= (mean / std)[:, None]
    return table


def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Logistic function 1/(1+e^−x) in float32, in the order of PyTorch's ``torch.sigmoid``
    (e^−x, then 1 + ·, then the reciprocal), so that saturated probabilities round to the
    float32 steps below 1 that torch's do wherever the two e^x agree (the soft aggregation's
    1e-7 clamp turns one-ulp differences there into different odds). They do not always:
    NumPy's SIMD e^x and torch's differ by one ulp on ~16 % of float32 inputs (measured
    2026-12-06, README "Teacher-forced"), so a saturated probability can land one step away
    from torch's. Float32 array of any shape → float32 of the same shape, in `out` when given
    (`out` may be `x`); no overflow warning for very negative x (e^−x = inf → 0).

    ``np.exp`` is most of its cost (1.1 ms of ~1.3 for a 480p map on the project VM); OpenCV's
    ``cv2.exp`` takes 0.17 ms but differs by ≤ 4 ulp, which flipped one near-tied pixel in
    ~3,200 DAVIS frames: not taken (``docs/frame-480.md``)."""
    out = np.negative(x, out=out)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += 1
    np.reciprocal(out, out=out)
    return out


def soft_aggregate(prob: np.ndarray, work: Workspace | None = None) -> np.ndarray:
    """Soft aggregation of per-object probabilities (STM; STCN ``aggregate``).

    prob [N,H,W] float32 in [0,1] (N ≥ 1) → [N+1,H,W] float32 summing to 1 over axis 0,
    channel 0 the background: bg = Π(1 − p_i); each of [bg, p_1..p_N] is clamped to
    [1e-7, 1 − 1e-7] and the softmax of their logits log(p/(1−p)) is taken, i.e. odds
    normalised to sum 1. With `work`, the result is its "aggregate" array.

    Bit-identical to the plain NumPy formula (``np.prod``/``np.sum`` over axis 0 multiply and
    add the planes in order, as the loops here do) in fewer passes and less memory: the clamp
    writes the object planes (no copy first), the product and the sum skip their reduction
    machinery, and one scratch plane serves every step (12 % less time with cold caches, as
    after a graph run, than a scratch array of N+1 planes).
    """
    out = _array(work, "aggregate", (len(prob) + 1, *prob.shape[1:]))
    scratch = _array(work, "aggregate_scratch", prob.shape[1:])
    np.subtract(1, prob[0], out=out[0])
    for p in prob[1:]:
        out[0] *= np.subtract(1, p, out=scratch)
    np.clip(out[0], ODDS_CLAMP, 1 - ODDS_CLAMP, out=out[0])
    np.clip(prob, ODDS_CLAMP, 1 - ODDS_CLAMP, out=out[1:])
    for plane in out:
        plane /= np.subtract(1, plane, out=scratch)      # odds = exp(logit)
    total = np.add(out[0], out[1], out=scratch)
    for odds in out[2:]:
        total += odds
    out /= total
    return out


def channel_argmax(x: np.ndarray, work: Workspace | None = None) -> np.ndarray:
    """[C,H,W] (C ≥ 1, any strides; or a sequence of C [H,W] arrays) → uint8 [H,W] index of
    the largest channel, first on ties (as ``np.argmax(x, 0)`` on finite values, in cheap
    branch-free passes instead of a strided reduction: one comparison for C = 2). With `work`,
    the result is its "argmax" array."""
    shape = x[0].shape
    index = _array(work, "argmax", shape, np.uint8)
    if len(x) == 1:
        index.fill(0)
        return index
    np.greater(x[1], x[0], out=index.view(np.bool_))    # 0 or 1
    if len(x) == 2:
        return index
    best = np.maximum(x[0], x[1], out=_array(work, "argmax_best", shape, x[0].dtype))
    hit = _array(work, "argmax_above", shape, np.uint8)
    for c in range(2, len(x)):
        np.greater(x[c], best, out=hit.view(np.bool_))
        # index = c where hit: max(index, hit·c), as every index so far is < c (np.copyto with
        # where= takes ~2.4 ms at 480p on a ragged mask, these two passes ~0.05 ms)
        np.maximum(index, np.multiply(hit, np.uint8(c), out=hit), out=index)
        if c < len(x) - 1:
            np.maximum(best, x[c], out=best)
    return index


def label_values(lut: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``lut[index]`` as a fresh uint8 array: lut uint8 [K] (K ≤ 256), index uint8 [H,W] with
    values < K → uint8 [H,W]. NumPy's fancy indexing of a uint8 index costs ~1.2 ms at 480p
    (it widens the index to intp), a 256-entry cv2.LUT ~0.3 ms; the Segmenter's usual tables
    take ~0.02 ms: [0, a] (one object: index · a) and 0, 1, …, K−1 (a copy)."""
    lut = np.asarray(lut, np.uint8)
    if len(lut) == 2 and lut[0] == 0:
        return np.multiply(index, lut[1])
    if np.array_equal(lut, np.arange(len(lut))):
        return np.array(index, np.uint8)
    table = np.zeros(256, np.uint8)
    table[:len(lut)] = lut
    return cv2.LUT(np.ascontiguousarray(index), table)


def one_hot(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """uint8 label map [H,W], label values [N] → float32 [N,H,W] with 1 where labels == values[i]."""
    return (labels[None] == np.asarray(values, np.uint8)[:, None, None]).astype(np.float32)


def merge_given(prob: np.ndarray | None, given_map: np.ndarray, given_idx: list[int], given: list[int],
                num_objects: int, void: np.ndarray | None = None) -> np.ndarray:
    """Per-object probabilities of a frame with a user-given mask (XMem-style merge).

    prob float32 [N_mem,Hp,Wp] predicted for the N_mem objects memory holds (None: no
    prediction), given_map uint8 label map [Hp,Wp], given_idx the object indices of the given
    labels ``given``, void bool [Hp,Wp] or None: the pixels that carry no label → float32
    [num_objects,Hp,Wp]: the given objects are one-hot from the map, the others keep their
    prediction except where the map gives an object; at void pixels every object keeps its
    prediction (0 for an object without one)."""
    probs = np.zeros((num_objects, *given_map.shape), np.float32)
    if prob is not None:
        probs[:len(prob)] = prob
        probs[:, given_map > 0 if void is None else (given_map > 0) & ~void] = 0
    hot = one_hot(given_map, given)
    probs[given_idx] = hot if void is None else np.where(void, probs[given_idx], hot)
    return probs
