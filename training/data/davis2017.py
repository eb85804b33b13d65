"""DAVIS 2017 official layout: ``JPEGImages/480p/<seq>/*.jpg``, ``Annotations/480p/<seq>/*.png``
(palette PNGs, value = object id, multi-object), ``ImageSets/2017/{train,val}.txt``. The flat
layout of ``../shared/data`` (``JPEGImages/<seq>``, ``ImageSets/<split>.txt``) is read too."""
from __future__ import annotations

from pathlib import Path

from ..datasets import Sequence
from .errors import LayoutError
from .lazy import LazyFrames, stems


def _split_file(root: Path, split: str) -> Path:
    for path in (root / "ImageSets" / "2017" / f"{split}.txt", root / "ImageSets" / f"{split}.txt"):
        if path.is_file():
            return path
    raise LayoutError(f"DAVIS 2017 split {split!r}: neither {root}/ImageSets/2017/{split}.txt nor "
                      f"{root}/ImageSets/{split}.txt exists")


def read_davis2017(root, split: str = "train", resolution: str = "480p") -> list[Sequence]:
    """Index (no decoding) of the DAVIS 2017 ``split`` → :class:`Sequence` list with lazy frames
    and masks over the annotated frames (all of them in DAVIS); ``objects`` are left empty
    (sampling finds the objects per clip). Raises LayoutError naming the missing split file,
    frames folder, or a sequence with fewer than 2 annotated frames."""
    root = Path(root)
    names = [line.strip() for line in _split_file(root, split).read_text().splitlines() if line.strip()]
    seqs = []
    for name in names:
        for sub in (resolution, ""):
            fdir, adir = root / "JPEGImages" / sub / name, root / "Annotations" / sub / name
            if fdir.is_dir():
                break
        else:
            raise LayoutError(f"DAVIS 2017 sequence {name!r}: no folder {root}/JPEGImages/{resolution}/{name}")
        if not adir.is_dir():
            raise LayoutError(f"DAVIS 2017 sequence {name!r}: no annotation folder {adir}")
        jpgs, pngs = stems(fdir, ".jpg"), stems(adir, ".png")
        both = [s for s in jpgs if s in pngs]
        if len(both) < 2:
            raise LayoutError(f"DAVIS 2017 sequence {name!r} ({fdir}) has {len(both)} annotated frame(s); needs ≥ 2")
        seqs.append(Sequence(name, LazyFrames([jpgs[s] for s in both]),
                             LazyFrames([pngs[s] for s in both], "masks"), []))
    return seqs
