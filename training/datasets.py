"""DAVIS-layout video datasets and clip sampling for STCN-style training.

Layout (both accepted): ``<root>/JPEGImages/<seq>/*.jpg`` + ``<root>/Annotations/<seq>/*.png``
(as in ``../shared/data``) or the official ``<root>/JPEGImages/480p/<seq>/``. Sequences are
listed in ``<root>/ImageSets/<split>.txt``; annotations are palette PNGs whose pixel value is
the object id (0 = background, 255 = void).

Clip sampling follows STCN/MiVOS main training: ``num_frames`` ordered frames, consecutive
gaps of at most ``max_skip`` frames (a schedule grows it during training), time randomly
reversed, one target object present in the first frame; augmentation = one random scale/crop/
flip and colour jitter per clip plus a small per-frame affine.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from torch.utils.data import Dataset

from sdk.davis import davis_sequence_dirs, read_split
from sdk.io import iter_frames, read_mask


@dataclass
class Sequence:
    name: str
    frames: list        # RGB uint8 [H,W,3] each
    masks: list         # uint8 [H,W] label maps
    objects: list       # object ids present somewhere in the sequence


def load_sequences(root, split: str) -> list[Sequence]:
    """Decode every frame and mask of ``split`` into memory (the DAVIS train splits here are
    ~50 MB of JPEG, ~0.7 GB decoded at 240p). Raises FileNotFoundError naming what is missing."""
    seqs = []
    for name in read_split(root, split):
        fdir, adir = davis_sequence_dirs(root, name)
        frames, masks = [], []
        for stem, rgb in iter_frames(fdir):
            if (adir / f"{stem}.png").is_file():
                frames.append(rgb)
                masks.append(read_mask(adir / f"{stem}.png"))
        if len(frames) < 2:
            raise FileNotFoundError(f"sequence {name!r} in {root} has fewer than 2 annotated frames")
        objects = sorted(set(np.unique(np.stack(masks)).tolist()) - {0, 255})
        seqs.append(Sequence(name, frames, masks, objects))
    return seqs


class ClipDataset(Dataset):
    """Random 3-frame clips (STCN recipe) from in-memory sequences.

    ``__getitem__`` → dict of float32 arrays: ``frames`` [T,3,S,S] normalised with
    ``mean``/``std``, ``masks`` [T,1,S,S] target object ∈ {0,1}, ``others`` [T,1,S,S] union of
    the other objects. ``max_skip`` may be changed between epochs (curriculum).
    """

    def __init__(self, sequences, crop=224, num_frames=3, max_skip=5, mean=(0.5,) * 3,
                 std=(0.5,) * 3, scale=(0.9, 1.8), length=100_000, seed=0):
        self.seqs = sequences
        self.crop, self.num_frames, self.max_skip = crop, num_frames, max_skip
        self.mean = np.asarray(mean, np.float32) * 255
        self.std = np.asarray(std, np.float32) * 255
        self.scale, self.length, self.seed = scale, length, seed

    def __len__(self):
        return self.length

    def _frame_indices(self, rng, n):
        skip = min(self.max_skip, max(1, (n - 1) // (self.num_frames - 1)))
        idx = [int(rng.integers(0, n))]
        for _ in range(self.num_frames - 1):
            idx.append(idx[-1] + int(rng.integers(1, skip + 1)))
        shift = max(0, idx[-1] - (n - 1))
        idx = [i - shift for i in idx]
        return idx[::-1] if rng.random() < 0.5 else idx

    def __getitem__(self, item):
        rng = np.random.default_rng((self.seed, item))
        for _ in range(20):
            seq = self.seqs[int(rng.integers(len(self.seqs)))]
            idx = self._frame_indices(rng, len(seq.frames))
            frames, labels = self._augment(rng, [seq.frames[i] for i in idx], [seq.masks[i] for i in idx])
            present = [o for o in np.unique(labels[0]) if o not in (0, 255)
                       and (labels[0] == o).sum() >= 100]
            if present:
                break
        target = present[int(rng.integers(len(present)))] if present else 1
        labels = np.stack(labels)
        masks = (labels == target).astype(np.float32)[:, None]
        others = ((labels != target) & (labels != 0) & (labels != 255)).astype(np.float32)[:, None]
        x = (np.stack(frames).astype(np.float32) - self.mean) / self.std
        return {"frames": x.transpose(0, 3, 1, 2).copy(), "masks": masks, "others": others}

    def _augment(self, rng, frames, masks):
        s = self.crop
        h, w = frames[0].shape[:2]
        f = max(rng.uniform(*self.scale), s / h, s / w)    # clip-level zoom, crop must fit
        x0, y0 = rng.uniform(0, w * f - s), rng.uniform(0, h * f - s)
        flip = rng.random() < 0.5
        jitter = 1 + rng.uniform(-0.1, 0.1, 3)            # brightness, contrast, saturation
        gray = rng.random() < 0.05
        out_f, out_m = [], []
        for img, m in zip(frames, masks):
            # per-frame small affine about the image centre, then the clip's zoom and crop
            a = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-10, 10), rng.uniform(0.95, 1.05))
            a[:, 2] += rng.uniform(-0.04, 0.04, 2) * s
            a = a * f
            a[:, 2] -= (x0, y0)
            im = cv2.warpAffine(img, a, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            mk = cv2.warpAffine(m, a, (s, s), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
            if flip:
                im, mk = im[:, ::-1], mk[:, ::-1]
            im = im.astype(np.float32)
            mean = im.mean()
            im = (im * jitter[0] - mean) * jitter[1] + mean
            g = im.mean(2, keepdims=True)
            im = g + (im - g) * (0 if gray else jitter[2])
            out_f.append(np.clip(im * rng.uniform(0.98, 1.02), 0, 255))
            out_m.append(np.ascontiguousarray(mk))
        return out_f, out_m
