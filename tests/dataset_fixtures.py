"""Tiny datasets generated on the fly in each layout issue 28's readers take (never committed
images): YouTube-VOS 2019 train, DAVIS 2017 official, static image + mask folders."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from sdk.io import write_mask


def _frame(rng, h, w, t, objects):
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    lab = np.zeros((h, w), np.uint8)
    for o in range(1, objects + 1):
        y, x = (t * 2 + o * 7) % (h // 2), (t * 3 + o * 11) % (w // 2)
        lab[y:y + h // 3, x:x + w // 3] = o
        img[lab == o] = (60 * o) % 255
    return img, lab


def make_youtube_vos(root, videos=3, frames=15, size=(48, 64), objects=2, seed=0) -> Path:
    """``root``/JPEGImages, Annotations (every 5th frame), meta.json; JPEGs on every 5th frame
    as in the 2019 train set (plus one unannotated JPEG per video to check it is skipped)."""
    root, rng = Path(root), np.random.default_rng(seed)
    meta = {"videos": {}}
    for v in range(videos):
        vid = f"v{v:04d}"
        (root / "JPEGImages" / vid).mkdir(parents=True)
        (root / "Annotations" / vid).mkdir(parents=True)
        for t in range(0, frames * 5, 5):
            img, lab = _frame(rng, *size, t, objects)
            cv2.imwrite(str(root / "JPEGImages" / vid / f"{t:05d}.jpg"), img[:, :, ::-1])
            write_mask(root / "Annotations" / vid / f"{t:05d}.png", lab)
        cv2.imwrite(str(root / "JPEGImages" / vid / f"{frames * 5:05d}.jpg"), img[:, :, ::-1])
        meta["videos"][vid] = {"objects": {str(o): {"category": "x", "frames": [f"{t:05d}" for t in
                                                    range(0, frames * 5, 5)]} for o in range(1, objects + 1)}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def make_davis2017(root, train=2, val=1, frames=6, size=(48, 64), objects=2, seed=0) -> Path:
    """Official DAVIS 2017 layout: JPEGImages/480p, Annotations/480p, ImageSets/2017."""
    root, rng = Path(root), np.random.default_rng(seed)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    names = {"train": [f"tr{i}" for i in range(train)], "val": [f"va{i}" for i in range(val)]}
    for split, seqs in names.items():
        (root / "ImageSets" / "2017" / f"{split}.txt").write_text("".join(s + "\n" for s in seqs))
        for s in seqs:
            (root / "JPEGImages" / "480p" / s).mkdir(parents=True)
            (root / "Annotations" / "480p" / s).mkdir(parents=True)
            for t in range(frames):
                img, lab = _frame(rng, *size, t, objects)
                cv2.imwrite(str(root / "JPEGImages" / "480p" / s / f"{t:05d}.jpg"), img[:, :, ::-1])
                write_mask(root / "Annotations" / "480p" / s / f"{t:05d}.png", lab)
    return root


def make_static(root, layout="pairs", images=3, size=(48, 64), seed=0) -> Path:
    """A static set: ``pairs`` (FSS-1000/HRSOD/BIG: <class>/<n>.jpg + <n>.png), ``ecssd``
    (images/ + ground_truth_mask/) or ``duts`` (DUTS-TR-Image/ + DUTS-TR-Mask/); grey 0/255 masks
    with some mid-grey edge (below and above 128)."""
    root, rng = Path(root), np.random.default_rng(seed)
    dirs = {"pairs": ("cls", "cls"), "ecssd": ("images", "ground_truth_mask"),
            "duts": ("DUTS-TR-Image", "DUTS-TR-Mask")}[layout]
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(images):
        img, lab = _frame(rng, *size, i, 1)
        grey = (lab * 255).astype(np.uint8)
        grey[0, :] = 127
        grey[1, :] = 128
        cv2.imwrite(str(root / dirs[0] / f"{i}.jpg"), img[:, :, ::-1])
        cv2.imwrite(str(root / dirs[1] / f"{i}.png"), grey)
    return root
