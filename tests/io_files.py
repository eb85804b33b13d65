"""What the sdk.io tests share: the data path, the fuzzing budget and files made by code
(frames, PNGs chunk by chunk, videos with PyAV, bit flips)."""

import io
import os
import struct
import zlib
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from PIL import Image

from sdk.io import iter_frames

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent")
# VOSEDGE_FUZZ_EXAMPLES=2000 for a longer hunt; the default keeps this file at seconds
EXAMPLES = int(os.environ.get("VOSEDGE_FUZZ_EXAMPLES", "60"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])



# --- helpers: files made by code -------------------------------------------------------------

def noise(h=24, w=32, seed=0) -> np.ndarray:
    """A smooth-ish RGB test image (JPEG-friendly, every frame different with the seed)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3)).astype(np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def moving(i, h=48, w=64) -> np.ndarray:
    """Frame i of a pattern panning right (inter-coded by video encoders, unlike unrelated frames)."""
    return np.ascontiguousarray(np.roll(noise(h, w), 2 * i, axis=1))


def jpeg_bytes(rgb, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def raw_png(width, height, depth, colour_type, rows: list[bytes]) -> bytes:
    """A PNG written chunk by chunk (for bit depths Pillow does not write)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\x00" + row for row in rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    changed = bytearray(data)
    changed[pos] ^= 1 << bit
    return bytes(changed)


def scan_start(jpeg: bytes) -> int:
    """Offset of the first byte of entropy-coded data (after the SOS segment)."""
    sos = jpeg.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(jpeg[sos + 2:sos + 4], "big")


def write_video(path, frames, codec="mpeg4", gop=6, bframes=0, faststart=True, fmt=None):
    """Encode RGB frames with PyAV (moov atom first with faststart, as streaming tools write)."""
    container = av.open(str(path), "w", format=fmt, options={"movflags": "faststart"} if faststart else {})
    stream = container.add_stream(codec, rate=10)
    stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
    stream.codec_context.gop_size = gop
    if bframes:
        stream.codec_context.max_b_frames = bframes
    for frame in frames:
        container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
    container.close()


def packet_spans(path) -> list[tuple[int, int, int]]:
    """(pts, byte position, size) of every video packet, in file order."""
    with av.open(str(path)) as container:
        return [(p.pts, p.pos, p.size) for p in container.demux(video=0) if p.size]


def consume(path, skipped):
    """All (name, rgb) of iter_frames(path, skipped) -> (names, frames by name)."""
    got = list(iter_frames(path, skipped))
    return [n for n, _ in got], dict(got)


LABELS = np.array([[0, 1, 2], [255, 3, 0]], np.uint8)   # a small label map with void
