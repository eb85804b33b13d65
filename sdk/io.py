"""Frame and mask I/O in the DAVIS conventions (no torch).

- Frames are RGB uint8 [H,W,3], read from a folder of images or from a video file.
- Masks are label maps uint8 [H,W] (0 = background, 1..N = objects, 255 = void), stored on
  disk as palette PNGs with the DAVIS (PASCAL VOC) colour map.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from sdk.errors import InputError, VideoReadError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map -> uint8 [256,3] RGB.

    Bit j of label i goes to bit 7−⌊j/3⌋ of channel j mod 3 (R, G, B): 1 = (128,0,0),
    2 = (0,128,0), 3 = (128,128,0), …; every label has a distinct colour.
    """
    labels = np.arange(256)
    palette = np.zeros((256, 3), np.uint8)
    for j in range(8):
        channel, bit = j % 3, 7 - j // 3
        palette[:, channel] |= (((labels >> j) & 1) << bit).astype(np.uint8)
    return palette


PALETTE = davis_palette()
_PALETTE_CODES = (PALETTE.astype(np.int64) << [16, 8, 0]).sum(1)  # 0xRRGGBB per label
_PALETTE_ORDER = np.argsort(_PALETTE_CODES)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a DAVIS mask PNG -> label map uint8 [H,W].

    A palette ('P') or greyscale ('L') PNG gives its pixel values as labels; an RGB(A) PNG
    is mapped colour -> label through the DAVIS palette. Raises InputError if the file cannot
    be read or an RGB pixel has a colour outside the palette (the message names the colour).
    """
    try:
        with Image.open(path) as image:
            image.load()
    except OSError as error:
        raise InputError(f"cannot read mask {path}: {error}") from error
    if image.mode in ("P", "L"):
        return np.asarray(image, np.uint8).copy()
    rgb = np.asarray(image.convert("RGB"), np.int64)
    codes = (rgb << [16, 8, 0]).sum(-1)
    slot = np.searchsorted(_PALETTE_CODES, codes, sorter=_PALETTE_ORDER).clip(max=255)
    labels = _PALETTE_ORDER[slot]
    unknown = _PALETTE_CODES[labels] != codes
    if unknown.any():
        y, x = np.argwhere(unknown)[0]
        raise InputError(
            f"mask {path}: colour RGB{tuple(int(c) for c in rgb[y, x])} at (x={x}, y={y}) "
            "is not in the DAVIS palette"
        )
    return labels.astype(np.uint8)


def write_mask(path: str | Path, labels: np.ndarray) -> None:
    """Write a label map (integer [H,W], values 0..255) as a DAVIS palette PNG.

    Creates missing parent folders. Raises InputError for a non-2-D, non-integer or
    out-of-range label map.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"label map must be an integer [H,W] array, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise InputError(f"labels must lie in 0..255, got {labels.min()}..{labels.max()}")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(PALETTE.tobytes())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _natural_key(path: Path) -> list:
    """Sort key that orders 'f2' before 'f10' (and '00002' before '00010' as usual)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _image_files(folder: Path) -> list[Path]:
    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key
    )
    if not files:
        raise VideoReadError(f"no .jpg/.png frames in folder {folder}")
    return files


def _open_video(path: Path) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoReadError(f"cannot open video {path}")
    return capture


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(f"no such video file or frame folder: {path}")


def list_frames(path: str | Path) -> list[str]:
    """Frame names of a frame folder (image file stems, natural order) or a video file
    ('00000', '00001', … up to the container's frame count, which some codecs only estimate:
    `iter_frames` is authoritative). Raises VideoReadError if missing, empty or unopenable."""
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        return [p.stem for p in _image_files(path)]
    capture = _open_video(path)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    return [f"{i:05d}" for i in range(count)]


def iter_frames(path: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, rgb uint8 [H,W,3]) for each frame of a folder of .jpg/.png images (sorted
    by name, names = file stems) or of a video file (names '00000', '00001', … as in DAVIS).

    Raises VideoReadError naming the path if it is missing, holds no frames, or a frame cannot
    be decoded.
    """
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        for file in _image_files(path):
            bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if bgr is None:
                raise VideoReadError(f"cannot decode frame {file}")
            yield file.stem, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return
    capture = _open_video(path)
    try:
        index = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            yield f"{index:05d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise VideoReadError(f"no frame could be decoded from video {path}")


def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend palette colours into a frame: rgb uint8 [H,W,3] + labels [H,W] -> rgb uint8
    [H,W,3]; background (0) pixels are left as they are, object pixels become
    (1−alpha)·frame + alpha·colour."""
    labels = np.asarray(labels)
    blended = frame.astype(np.float32)
    objects = labels != 0
    blended[objects] = (1 - alpha) * blended[objects] + alpha * PALETTE[labels[objects]]
    return blended.round().astype(np.uint8)


class OverlayWriter:
    """Write frames with their masks blended in (`overlay`) to an MP4 file (mp4v codec).

    Use as a context manager: `with OverlayWriter("out.mp4", fps=24) as w: w.write(rgb, labels)`.
    The frame size is taken from the first frame; every frame must have it. Raises OSError if
    the file cannot be created, InputError for a frame of another size.
    """

    def __init__(self, path: str | Path, fps: float = 24.0, alpha: float = 0.5):
        self.path, self.fps, self.alpha = Path(path), fps, alpha
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, frame: np.ndarray, labels: np.ndarray) -> None:
        """Append one frame: rgb uint8 [H,W,3] and its label map [H,W]."""
        size = (frame.shape[1], frame.shape[0])
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
            if not self._writer.isOpened():
                raise OSError(f"cannot create video {self.path}")
            self._size = size
        elif size != self._size:
            raise InputError(f"overlay frame size {size} differs from the first frame's {self._size}")
        self._writer.write(cv2.cvtColor(overlay(frame, labels, self.alpha), cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        """Finish the file (idempotent)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> OverlayWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
