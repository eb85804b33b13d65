"""Stage 0 of the STM/STCN/MiVOS recipe: static-image pretraining on synthetic pseudo-videos.

Every annotated training frame is also a still image. One image + its label map becomes a
``num_frames`` clip by deforming it independently per frame (STM's synthetic deformation;
STCN ``static_dataset.py``): a random affine per frame — rotation ±``rotation``°, scale in
``affine_scale``, x-shear ±``shear``°, translation ±``translate``·crop — on top of one random
zoom (``zoom``) and crop window per clip, a horizontal flip per clip (a per-frame flip would be
a motion no video has), colour jitter per clip (brightness/contrast/saturation ±10 %,
greyscale with probability ``grayscale``) and per frame (brightness ±10 %, contrast and
saturation ±5 %). Image and label map go through the same 2×3 matrix (bilinear / nearest);
what the warp exposes outside the image is filled with the normalisation mean colour (0 after
normalisation) in the image and background (0) in the mask, so a pixel of the object is never
left unlabelled.

Items have the format of a single-object :class:`training.datasets.ClipDataset` (without its
``valid``: one target per clip) and are deterministic per (seed, item), so the dataset drops
into the main training loop unchanged (``max_skip`` is accepted and ignored: every frame
comes from the same image).
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from torch.utils.data import Dataset

from .datasets import Sequence, load_sequences  # noqa: F401  (re-exported for callers)

VOID = 255


class StaticPseudoVideoDataset(Dataset):
    """Pseudo-video clips from single annotated frames (STM/STCN static pretraining).

    Args:
        sequences: :class:`training.datasets.Sequence` list (``load_sequences``); every frame
            with an object of at least ``min_pixels`` px is one still image. A still-image data
            set (ECSSD, DUTS, …) fits as one-frame Sequences.
        crop: output side S in px.
        num_frames: T frames per clip.
        mean, std: normalisation (as ``net.config``), in [0,1] units.
        length: ``len(dataset)`` (any item index works; items are seeded by (seed, item)).
        seed: base seed.
        zoom: per-clip zoom range (raised so the crop fits in the image, as ClipDataset).
        rotation, shear: per-frame ranges in degrees (±).
        affine_scale: per-frame scale range.
        translate: per-frame shift range as a fraction of ``crop`` (±).
        grayscale: probability of a greyscale clip.
        min_pixels: the target object must cover this many px of frame 0 after augmentation
            (up to 20 draws, as ClipDataset).

    ``__getitem__`` → ``{"frames": float32 [T,3,S,S] normalised, "masks": float32 [T,1,S,S]
    target ∈ {0,1}, "others": float32 [T,1,S,S] union of the other objects}``.
    Raises ValueError when no frame of ``sequences`` holds an object of ``min_pixels`` px.
    """

    def __init__(self, sequences, crop=224, num_frames=3, mean=(0.5,) * 3, std=(0.5,) * 3,
                 length=100_000, seed=0, zoom=(0.9, 1.8), rotation=20.0, affine_scale=(0.9, 1.1),
                 shear=10.0, translate=0.1, grayscale=0.05, min_pixels=100):
        self.seqs = sequences
        self.crop, self.num_frames = crop, num_frames
        self.mean = np.asarray(mean, np.float32) * 255
        self.std = np.asarray(std, np.float32) * 255
        self.length, self.seed = length, seed
        self.zoom, self.rotation, self.affine_scale = zoom, rotation, affine_scale
        self.shear, self.translate, self.grayscale = shear, translate, grayscale
        self.min_pixels = min_pixels
        self.max_skip = 0      # ClipDataset interface; unused here
        self.images = [(s, f) for s, seq in enumerate(sequences) for f, m in enumerate(seq.masks)
                       if _largest_object(m) >= min_pixels]
        if not self.images:
            raise ValueError(f"no annotated frame holds an object of ≥ {min_pixels} px")

    def __len__(self):
        return self.length

    def __getitem__(self, item):
        rng = np.random.default_rng((self.seed, item))
        present = []
        for _ in range(20):
            s, f = self.images[int(rng.integers(len(self.images)))]
            frames, labels = self._augment(rng, self.seqs[s].frames[f], self.seqs[s].masks[f])
            ids, counts = np.unique(labels[0], return_counts=True)
            present = [int(o) for o, c in zip(ids, counts) if o not in (0, VOID) and c >= self.min_pixels]
            if present:
                break
        target = present[int(rng.integers(len(present)))] if present else 1
        labels = np.stack(labels)
        masks = (labels == target).astype(np.float32)[:, None]
        others = ((labels != target) & (labels != 0) & (labels != VOID)).astype(np.float32)[:, None]
        x = (np.stack(frames) - self.mean) / self.std
        return {"frames": x.transpose(0, 3, 1, 2).astype(np.float32), "masks": masks, "others": others}

    def frame_matrices(self, rng, height, width) -> tuple[list[np.ndarray], bool]:
        """The clip's geometry: T affine matrices [2,3] (input px → crop px) and the flip."""
        s = self.crop
        f = max(rng.uniform(*self.zoom), s / height, s / width)
        half = s / (2 * f)                       # crop window half-side in input px
        centre = np.array([rng.uniform(half, width - half), rng.uniform(half, height - half)])
        flip = bool(rng.random() < 0.5)
        mats = []
        for _ in range(self.num_frames):
            a = math.radians(rng.uniform(-self.rotation, self.rotation))
            k = rng.uniform(*self.affine_scale)
            sh = math.tan(math.radians(rng.uniform(-self.shear, self.shear)))
            shift = rng.uniform(-self.translate, self.translate, 2) * s
            rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            lin = f * k * rot @ np.array([[1.0, sh], [0.0, 1.0]])
            offset = np.array([s / 2, s / 2]) + shift - lin @ centre
            mats.append(np.hstack([lin, offset[:, None]]))
        return mats, flip

    def _augment(self, rng, image, labels):
        s = self.crop
        mats, flip = self.frame_matrices(rng, *image.shape[:2])
        clip_jitter = 1 + rng.uniform(-0.1, 0.1, 3)           # brightness, contrast, saturation
        gray = rng.random() < self.grayscale
        fill = tuple(float(c) for c in self.mean)
        out_f, out_m = [], []
        for m in mats:
            im = cv2.warpAffine(image, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=fill)
            mk = cv2.warpAffine(labels, m, (s, s), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=0)
            if flip:
                im, mk = im[:, ::-1], mk[:, ::-1]
            frame_jitter = 1 + rng.uniform(-1, 1, 3) * (0.1, 0.05, 0.05)
            b, c, sat = clip_jitter * frame_jitter
            out_f.append(_colour(im.astype(np.float32), b, c, 0.0 if gray else sat))
            out_m.append(np.ascontiguousarray(mk))
        return out_f, out_m


def _colour(im: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """Brightness (gain), contrast (about the mean) and saturation (about the grey value) of a
    float32 RGB image in [0,255]; ClipDataset's jitter."""
    mean = im.mean()
    im = (im * brightness - mean) * contrast + mean
    g = im.mean(2, keepdims=True)
    return np.clip(g + (im - g) * saturation, 0, 255)


def _largest_object(labels: np.ndarray) -> int:
    """Pixel count of the largest object (ids 1..254) of a label map."""
    counts = np.bincount(labels.ravel(), minlength=256)
    counts[0] = counts[VOID] = 0
    return int(counts.max())
