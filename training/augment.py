"""Clip augmentation of STCN main training: one zoom/crop/flip per clip, a small affine per
frame, colour jitter; image and label map warped with the same matrix and the same border.

Border: what a warp exposes outside the source image is **constant** in both — the image gets
the normalisation mean colour (0 after normalisation, the value the network's zero padding
sees), the label map background (0). STCN does the same (``dataset/vos_dataset.py``: the
per-frame ``RandomAffine`` fills the image with ``im_mean`` and the mask with 0). A reflected
border would put mirror images of an object into pixels outside the frame: labelled as
background they teach the network to miss the object (the bug this module fixes: image
reflected, mask constant), labelled as the object (mask reflected too) they make one object
of two separate look-alikes, the opposite of what multi-object training
(:mod:`training.synthesis`) teaches.
"""
from __future__ import annotations

import cv2
import numpy as np

# recipe of training/README.md ("augmentation"): per frame rotation ±10°, scale ±5 %, shift ±4 %
ROTATION, FRAME_SCALE, SHIFT = 10.0, (0.95, 1.05), 0.04
# the clip zoom range of the bundled recipe (crop px per source px; config ``zoom``): on 240p
# frames, 0.9–1.8 × the object sizes an sdk at 240 px internal sees (480 px internal: 2.0 ×)
DEFAULT_ZOOM = (0.9, 1.8)


def zoom_range(value, name: str = "zoom") -> tuple[float, float]:
    """A config's zoom range [lo, hi] (crop px per source px) as floats; ValueError naming
    ``name`` unless it is two numbers with 0 < lo ≤ hi."""
    zoom = tuple(value) if isinstance(value, (list, tuple)) else ()
    if (len(zoom) != 2 or any(isinstance(z, bool) or not isinstance(z, (int, float)) for z in zoom)
            or not 0 < zoom[0] <= zoom[1]):
        raise ValueError(f"{name} must be [lo, hi] with 0 < lo ≤ hi (crop px per source px), got {value!r}")
    return float(zoom[0]), float(zoom[1])


def frame_matrices(rng: np.random.Generator, num_frames: int, crop: int, zoom: float,
                   offset: tuple[float, float], pivot: tuple[float, float]) -> list[np.ndarray]:
    """``num_frames`` affine matrices float64 [2,3] mapping source px (x, y) → crop px.

    Per frame a random rotation (±ROTATION°) and scale (FRAME_SCALE) about ``pivot`` (source
    px) and a shift of ±SHIFT·``crop`` px (before zoom), then the clip's ``zoom`` (crop px per
    source px) and minus ``offset`` (crop px): crop = zoom·(R(x − pivot) + pivot + shift) − offset.
    """
    mats = []
    for _ in range(num_frames):
        a = cv2.getRotationMatrix2D(tuple(map(float, pivot)), rng.uniform(-ROTATION, ROTATION),
                                    rng.uniform(*FRAME_SCALE))
        a[:, 2] += rng.uniform(-SHIFT, SHIFT, 2) * crop
        a = a * zoom
        a[:, 2] -= offset
        mats.append(a)
    return mats


def warp_pair(image: np.ndarray, labels: np.ndarray, matrix: np.ndarray, crop: int, fill,
              flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Warp RGB uint8 [H,W,3] (bilinear) and its label map uint8 [H,W] (nearest) with one
    matrix [2,3] to ``crop``² px, both with a constant border: ``fill`` (RGB in 0..255, the
    normalisation mean) in the image, 0 (background) in the labels; then the horizontal
    ``flip``. → (uint8 [S,S,3], uint8 [S,S]), C-contiguous."""
    im = cv2.warpAffine(image, matrix, (crop, crop), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=tuple(float(c) for c in fill))
    mk = cv2.warpAffine(labels, matrix, (crop, crop), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=0)
    if flip:
        im, mk = im[:, ::-1], mk[:, ::-1]
    return np.ascontiguousarray(im), np.ascontiguousarray(mk)


def warp_clip(rng: np.random.Generator, frames: list, labels: list, crop: int, zoom_range, fill):
    """The base clip's geometry (STCN/MiVOS main training): one zoom from ``zoom_range``
    (raised so that the ``crop``² window fits in the zoomed frame), one uniformly placed crop
    window and one flip (p = 0.5) per clip, :func:`frame_matrices` per frame about the frame
    centre. frames RGB uint8 [H,W,3], labels uint8 [H,W] → lists of uint8 [S,S,3], [S,S]."""
    h, w = frames[0].shape[:2]
    f = max(rng.uniform(*zoom_range), crop / h, crop / w)
    offset = (rng.uniform(0, w * f - crop), rng.uniform(0, h * f - crop))
    flip = bool(rng.random() < 0.5)
    mats = frame_matrices(rng, len(frames), crop, f, offset, (w / 2, h / 2))
    pairs = [warp_pair(im, lb, m, crop, fill, flip) for im, lb, m in zip(frames, labels, mats)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def jitter_colour(rng: np.random.Generator, frames: list) -> list[np.ndarray]:
    """Colour jitter of one clip (recipe): brightness, contrast, saturation ×(1 ± 10 %) per
    clip, greyscale with p = 0.05, a gain of ×(1 ± 2 %) per frame. RGB uint8/float [S,S,3] →
    float32 [S,S,3] in [0, 255]."""
    jitter = 1 + rng.uniform(-0.1, 0.1, 3)
    gray = rng.random() < 0.05
    out = []
    for im in frames:
        im = im.astype(np.float32)
        mean = im.mean()
        im = (im * jitter[0] - mean) * jitter[1] + mean
        g = im.mean(2, keepdims=True)
        im = g + (im - g) * (0 if gray else jitter[2])
        out.append(np.clip(im * rng.uniform(0.98, 1.02), 0, 255).astype(np.float32))
    return out
