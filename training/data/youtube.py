"""YouTube-VOS 2019 train: ``JPEGImages/<vid>/*.jpg``, ``Annotations/<vid>/*.png`` on every 5th
frame, ``meta.json`` = ``{"videos": {vid: {"objects": {id: {"category", "frames": [stems]}}}}}``.

Clips are sampled over the annotated frames only, as STCN does (its VOSDataset lists a video's
frames and reads the mask of each; the YouTube-VOS train_480p JPEGImages hold every 5th frame),
so one step between listed frames is 5 video frames: STCN's train.py gives YouTube-VOS
``max_skip // 5`` (see :class:`training.data.mixture.MixtureDataset`'s ``skip_divisor``)."""
from __future__ import annotations

import json
from pathlib import Path

from ..datasets import Sequence
from .errors import LayoutError
from .lazy import LazyFrames, stems


def read_youtube_vos(root, min_frames: int = 2) -> list[Sequence]:
    """Index of a YouTube-VOS 2019 train folder → :class:`Sequence` list (lazy frames/masks over
    the frames that have both a JPEG and a PNG; ``objects`` from meta.json). Videos with fewer
    than ``min_frames`` such frames are skipped (STCN drops short videos too).
    Raises LayoutError naming meta.json (missing, not JSON, no ``videos``), or a video folder
    that meta.json lists and the disk lacks."""
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise LayoutError(f"YouTube-VOS: no {meta_path}")
    try:
        videos = json.loads(meta_path.read_text())["videos"]
        if not isinstance(videos, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise LayoutError(f"YouTube-VOS: {meta_path} is not JSON with a 'videos' object") from None
    seqs = []
    for vid in sorted(videos):
        fdir, adir = root / "JPEGImages" / vid, root / "Annotations" / vid
        for d in (fdir, adir):
            if not d.is_dir():
                raise LayoutError(f"YouTube-VOS: {meta_path} lists video {vid!r} but {d} does not exist")
        try:
            objects = sorted(int(k) for k in videos[vid].get("objects", {}))
        except (ValueError, AttributeError):
            raise LayoutError(f"YouTube-VOS: {meta_path}: video {vid!r} has malformed 'objects'") from None
        jpgs, pngs = stems(fdir, ".jpg"), stems(adir, ".png")
        both = [s for s in jpgs if s in pngs]
        if len(both) < min_frames:
            continue
        seqs.append(Sequence(vid, LazyFrames([jpgs[s] for s in both]), LazyFrames([pngs[s] for s in both], "masks"),
                             objects))
    if not seqs:
        raise LayoutError(f"YouTube-VOS: no video under {root}/JPEGImages has ≥ {min_frames} annotated frames")
    return seqs
