"""Static image + mask folders for stage 0 (STCN's static sets: ECSSD, DUTS, FSS-1000, HRSOD,
BIG), each image one still :class:`Sequence` for :class:`training.static.StaticPseudoVideoDataset`.

Layouts found under ``root`` (recursively):
- pairs: ``<stem>.jpg`` next to ``<stem>.png`` in one folder (FSS-1000's ``<class>/1.jpg`` +
  ``1.png``, HRSOD/BIG as STCN's prepared ``static`` folder has them);
- split folders: an image folder and a mask folder with the same stems — ECSSD ``images/`` +
  ``ground_truth_mask/``, DUTS ``DUTS-TR-Image/`` + ``DUTS-TR-Mask/``.
Masks are binary, thresholded at 128 (object id 1)."""
from __future__ import annotations

from pathlib import Path

from ..datasets import Sequence
from .errors import LayoutError
from .lazy import LazyFrames, stems

SPLIT_FOLDERS = (("images", "ground_truth_mask"), ("DUTS-TR-Image", "DUTS-TR-Mask"),
                 ("DUTS-TE-Image", "DUTS-TE-Mask"), ("imgs", "gt"))


def _pairs(folder: Path) -> list[tuple[Path, Path]]:
    for im_name, mask_name in SPLIT_FOLDERS:
        if (folder / im_name).is_dir() and (folder / mask_name).is_dir():
            ims, masks = stems(folder / im_name, ".jpg"), stems(folder / mask_name, ".png")
            missing = sorted(set(ims) - set(masks))
            if missing:
                raise LayoutError(f"static set {folder}: image {ims[missing[0]]} has no mask "
                                  f"{folder / mask_name / (missing[0] + '.png')}")
            return [(ims[s], masks[s]) for s in ims]
    ims, masks = stems(folder, ".jpg"), stems(folder, ".png")
    out = [(ims[s], masks[s]) for s in ims if s in masks]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        out += _pairs(sub)
    return out


def read_static_folder(root) -> list[Sequence]:
    """Every (image, binary mask) pair under ``root`` → one-frame :class:`Sequence` each (lazy;
    masks ∈ {0,1}). Raises LayoutError naming ``root`` when it is missing or holds no pair, or
    an image of a split layout that lacks its mask."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"static set: no folder {root}")
    pairs = _pairs(root)
    if not pairs:
        raise LayoutError(f"static set {root}: no <stem>.jpg + <stem>.png pair (same folder, or images/ + "
                          f"ground_truth_mask/, or DUTS-TR-Image/ + DUTS-TR-Mask/)")
    return [Sequence(str(im.relative_to(root).with_suffix("")), LazyFrames([im]), LazyFrames([mk], "binary"), [1])
            for im, mk in pairs]
