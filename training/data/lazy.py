"""A list of image paths that decodes on access: the streaming index of issue 28."""
from __future__ import annotations

from collections.abc import Sequence as _Seq
from pathlib import Path

import numpy as np

from sdk.io import read_frame, read_mask


class LazyFrames(_Seq):
    """``len``/indexing like the lists of decoded frames :class:`training.datasets.Sequence`
    holds, but only the paths are kept; ``[i]`` decodes file i (RGB uint8 [H,W,3] for
    ``kind="frames"``, uint8 [H,W] label map for ``"masks"``, ``"binary"``: grey mask
    thresholded at 128 → {0,1}). Picklable (paths only), so DataLoader workers decode."""

    def __init__(self, paths, kind: str = "frames"):
        if kind not in ("frames", "masks", "binary"):
            raise ValueError(f"kind must be frames, masks or binary, got {kind!r}")
        self.paths = [str(p) for p in paths]
        self.kind = kind

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return LazyFrames(self.paths[i], self.kind)
        path = self.paths[i]
        if self.kind == "frames":
            return read_frame(path)
        if self.kind == "masks":
            return read_mask(path)
        return binary_mask(path)


def binary_mask(path) -> np.ndarray:
    """A saliency/few-shot mask (grey or RGB, 0..255) → uint8 [H,W] ∈ {0,1}, 1 where ≥ 128
    (the STCN static sets' binarisation). Raises sdk.errors' read error naming the file."""
    import cv2

    raw = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if raw is None:
        from .errors import LayoutError

        raise LayoutError(f"mask {path} cannot be read as an image")
    return (raw >= 128).astype(np.uint8)


def stems(folder: Path, suffix: str) -> dict[str, Path]:
    """{file stem: path} of the ``suffix`` files directly in ``folder``."""
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() == suffix}
