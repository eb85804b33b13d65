"""Pre- and post-processing around the graphs: resize and pad to the stride, normalisation,
sigmoid, soft aggregation (STM/STCN) and the way back to input size."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ODDS_CLAMP = 1e-7


@dataclass(frozen=True)
class Geometry:
    """Where a frame of input size (height, width) goes inside the graphs.

    The frame is resized so its short side is ``resolution`` px (aspect kept; None = native
    size), then zero-padded at the bottom/right (after normalisation, i.e. with the mean
    colour, as STCN's ``pad_divide_by``) to (padded_h, padded_w), multiples of ``stride``.
    """

    height: int
    width: int
    resized_h: int
    resized_w: int
    padded_h: int
    padded_w: int
    stride: int

    @classmethod
    def for_frame(cls, height: int, width: int, resolution: int | None, stride: int) -> "Geometry":
        if resolution is None:
            rh, rw = height, width
        else:
            scale = resolution / min(height, width)
            rh, rw = max(1, round(height * scale)), max(1, round(width * scale))
        up = lambda n: -(-n // stride) * stride  # noqa: E731
        return cls(height, width, rh, rw, up(rh), up(rw), stride)

    @property
    def feature_size(self) -> tuple[int, int]:
        """(h, w) of the stride-16 key/value maps; h·w memory positions per frame."""
        return self.padded_h // self.stride, self.padded_w // self.stride

    @property
    def resized(self) -> bool:
        return (self.resized_h, self.resized_w) != (self.height, self.width)

    def image(self, frame: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        """RGB uint8 [H,W,3] → normalised, padded float32 [1,3,Hp,Wp]: (rgb/255 − mean)/std."""
        if self.resized:
            shrink = self.resized_h < self.height
            frame = cv2.resize(frame, (self.resized_w, self.resized_h),
                               interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out = np.zeros((1, 3, self.padded_h, self.padded_w), np.float32)
        view = out[0, :, :self.resized_h, :self.resized_w]
        np.multiply(frame.transpose(2, 0, 1), (1 / (255 * std))[:, None, None], out=view)
        view -= (mean / std)[:, None, None]
        return out

    def label_map(self, mask: np.ndarray) -> np.ndarray:
        """uint8 label map [H,W] → [Hp,Wp] uint8 (nearest-neighbour resize, zero padding)."""
        if self.resized:
            mask = cv2.resize(mask, (self.resized_w, self.resized_h), interpolation=cv2.INTER_NEAREST)
        out = np.zeros((self.padded_h, self.padded_w), np.uint8)
        out[:self.resized_h, :self.resized_w] = mask
        return out

    def to_input(self, probs: np.ndarray) -> np.ndarray:
        """[C,Hp,Wp] float32 → [C,H,W] float32: crop the padding, bilinear resize to input size."""
        probs = probs[:, :self.resized_h, :self.resized_w]
        if not self.resized:
            return probs
        hwc = cv2.resize(np.ascontiguousarray(probs.transpose(1, 2, 0)), (self.width, self.height),
                         interpolation=cv2.INTER_LINEAR)
        return hwc.reshape(self.height, self.width, -1).transpose(2, 0, 1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings, float32 in → float32 out."""
    return 0.5 * (1 + np.tanh(0.5 * x))


def soft_aggregate(prob: np.ndarray) -> np.ndarray:
    """Soft aggregation of per-object probabilities (STM; STCN ``aggregate``).

    prob [N,H,W] float32 in [0,1] → [N+1,H,W] float32 summing to 1 over axis 0, channel 0 the
    background: bg = Π(1 − p_i); each of [bg, p_1..p_N] is clamped to [1e-7, 1 − 1e-7] and the
    softmax of their logits log(p/(1−p)) is taken, i.e. odds normalised to sum 1.
    """
    out = np.empty((len(prob) + 1, *prob.shape[1:]), np.float32)
    np.prod(1 - prob, axis=0, out=out[0])
    out[1:] = prob
    np.clip(out, ODDS_CLAMP, 1 - ODDS_CLAMP, out=out)
    out /= 1 - out                                       # odds = exp(logit)
    out /= out.sum(0, keepdims=True)
    return out


def channel_argmax(x: np.ndarray) -> np.ndarray:
    """[C,H,W] (any strides) → uint8 [H,W] index of the largest channel, first on ties (as
    ``np.argmax(x, 0)``, in C cheap passes instead of a strided reduction)."""
    best = x[0].copy()
    index = np.zeros(best.shape, np.uint8)
    for c in range(1, len(x)):
        index[x[c] > best] = c
        np.maximum(best, x[c], out=best)
    return index


def one_hot(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """uint8 label map [H,W], label values [N] → float32 [N,H,W] with 1 where labels == values[i]."""
    return (labels[None] == np.asarray(values, np.uint8)[:, None, None]).astype(np.float32)


def merge_given(prob: np.ndarray | None, given_map: np.ndarray, given_idx: list[int], given: list[int],
                num_objects: int) -> np.ndarray:
    """Per-object probabilities of a frame with a user-given mask (XMem-style merge).

    prob float32 [N_mem,Hp,Wp] predicted for the N_mem objects memory holds (None: no
    prediction), given_map uint8 label map [Hp,Wp], given_idx the object indices of the given
    labels ``given`` → float32 [num_objects,Hp,Wp]: the given objects are one-hot from the map,
    the others keep their prediction except where the map gives an object."""
    probs = np.zeros((num_objects, *given_map.shape), np.float32)
    if prob is not None:
        probs[:len(prob)] = prob
        probs[:, given_map > 0] = 0
    probs[given_idx] = one_hot(given_map, given)
    return probs
