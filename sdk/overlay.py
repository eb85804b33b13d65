"""The overlay video: frames with their masks blended in the DAVIS palette, written as H.264 in
MP4 that browsers play (``vos-segment --overlay X.mp4``; no torch).

Moved out of :mod:`sdk.io` (which reads frames and masks); ``sdk.io.OverlayWriter`` and the
other names still resolve there.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sdk.errors import InputError
from sdk.io import PALETTE

if TYPE_CHECKING:
    from typing_extensions import Self

def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend palette colours into a frame: rgb uint8 [H,W,3] + labels [H,W] -> rgb uint8
    [H,W,3]; background (0) pixels are left as they are, object pixels become
    (1−alpha)·frame + alpha·colour."""
    labels = np.asarray(labels)
    blended = frame.astype(np.float32)
    objects = labels != 0
    blended[objects] = (1 - alpha) * blended[objects] + alpha * PALETTE[labels[objects]]
    return blended.round().astype(np.uint8)


H264_ENCODERS = ("libx264", "libopenh264")   # FFmpeg's H.264 encoders, in order of preference


def h264_encoder() -> str:
    """The first H.264 encoder of :data:`H264_ENCODERS` this PyAV build has (its wheels bundle
    libx264; see the README's licence note); OSError when it has none."""
    import av  # imported here: a frame-folder user does not pay for loading FFmpeg

    for name in H264_ENCODERS:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:   # noqa: BLE001 - av.codec.codec.UnknownCodecError: not in this build
            continue
    raise OSError(f"this PyAV/FFmpeg build has no H.264 encoder ({', '.join(H264_ENCODERS)}): install the PyAV "
                  "wheel from PyPI (pip install av), which bundles libx264")


def check_overlay_path(path: str | Path) -> Path:
    """``path`` as a Path if it names an ``.mp4`` file (any case); else InputError naming it:
    the overlay is always H.264 in MP4, and another suffix would promise another format."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise InputError(f"overlay {path}: the overlay video is H.264 in an MP4 file, so its name must end in .mp4 "
                         f"(got {path.suffix or 'no suffix'!r}); e.g. {path.with_suffix('.mp4')}")
    return path


class OverlayWriter:
    """Write frames with their masks blended in (:func:`overlay`) to an H.264 MP4 that browsers
    play: PyAV (FFmpeg) with libx264 (:func:`h264_encoder`), High profile, yuv420p, the
    ``moov`` index first (``movflags=+faststart``: playback starts before the download ends).

    Use as a context manager: ``with OverlayWriter("out.mp4", fps=24) as w: w.write(rgb, labels)``.
    The frame size is taken from the first frame; every frame must have it. yuv420p needs even
    sides, so an odd width or height gets one more column or row, a copy of the last (a 321×241
    input makes a 322×242 video). ``close`` (or leaving the ``with``) finishes the file, also
    after an error: the frames written so far stay playable.

    Raises InputError for a path not ending in ``.mp4`` (before anything is created;
    :func:`check_overlay_path`) and for a frame of another size; OSError if the file cannot be
    created or PyAV has no H.264 encoder.
    """

    def __init__(self, path: str | Path, fps: float = 24.0, alpha: float = 0.5, crf: int = 20):
        self.path, self.fps, self.alpha, self.crf = check_overlay_path(path), fps, alpha, crf
        self._container = self._stream = None
        self._size: tuple[int, int] | None = None
        self._count = 0

    def _open(self, width: int, height: int) -> None:
        import av
        from fractions import Fraction

        encoder = h264_encoder()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            container = av.open(str(self.path), mode="w", format="mp4",
                                container_options={"movflags": "+faststart"})
        except Exception as error:  # noqa: BLE001 - av.error.* (FileNotFoundError, PermissionError, …)
            raise OSError(f"cannot create video {self.path}: {error}") from error
        self._rate = Fraction(self.fps).limit_denominator(1001)
        stream = container.add_stream(encoder, rate=self._rate)
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.options = ({"crf": str(self.crf), "preset": "veryfast", "profile": "high"} if encoder == "libx264"
                          else {"profile": "high"})
        self._container, self._stream = container, stream

    def write(self, frame: np.ndarray, labels: np.ndarray) -> None:
        """Append one frame: rgb uint8 [H,W,3] and its label map [H,W]."""
        import av

        size = (frame.shape[1], frame.shape[0])
        if self._container is None:
            self._open(*size)
            self._size = size
        elif size != self._size:
            raise InputError(f"overlay frame size {size} differs from the first frame's {self._size}")
        rgb = overlay(frame, labels, self.alpha)
        if size[0] % 2 or size[1] % 2:                       # yuv420p: even sides (the last column/row repeated)
            rgb = np.pad(rgb, ((0, size[1] % 2), (0, size[0] % 2), (0, 0)), mode="edge")
        video = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        video.pts = self._count
        video.time_base = 1 / self._rate
        self._count += 1
        for packet in self._stream.encode(video):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and finish the file (idempotent)."""
        if self._container is not None:
            container, self._container = self._container, None
            try:
                for packet in self._stream.encode(None):
                    container.mux(packet)
            finally:
                container.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
