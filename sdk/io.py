"""Frame and mask I/O in the DAVIS conventions (no torch).

- Frames are RGB uint8 [H,W,3], read from a folder of images or from a video file, decoded
  strictly: a truncated or corrupt frame is a :class:`~sdk.errors.BadFrameError`, never a
  garbage image (what a decoder cannot notice is listed in ``docs/input-formats.md``).
- Masks are label maps uint8 [H,W] (0 = background, 1..254 = objects, 255 = ``VOID``), stored
  on disk as palette PNGs with the DAVIS (PASCAL VOC) colour map; `read_mask` also reads
  greyscale label PNGs (8/16-bit), binary masks and RGB(A) masks in the DAVIS colours.
- The overlay video (``OverlayWriter``) is written by :mod:`sdk.overlay`.
"""

from __future__ import annotations

import bisect
import io
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from sdk.errors import BadFrameError, InputError, VideoReadError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VOID = 255   # label of pixels to ignore (DAVIS convention); never an object

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"


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
_WHITE = 0xFFFFFF


# ---------------------------------------------------------------------------------------------
# PNG / JPEG structure (shared by frames and masks)

def _png_problem(data: bytes) -> str | None:
    """Walk the chunks of a PNG file: None if every chunk is complete, its CRC-32 matches and
    the file reaches IEND; else what is wrong, with the byte offset (bytes after IEND are
    ignored). PNG chunks carry a CRC, so any changed byte of a chunk is caught here."""
    view = memoryview(data)
    pos = len(_PNG_SIGNATURE)
    first = True
    while True:
        if pos + 12 > len(data):
            return f"truncated PNG: the file ends at byte {len(data)} before its IEND chunk"
        length = int.from_bytes(view[pos:pos + 4], "big")
        kind = bytes(view[pos + 4:pos + 8]).decode("latin-1")
        end = pos + 12 + length
        if end > len(data):
            return (f"truncated PNG: chunk {kind!r} at byte {pos} declares {length} bytes, "
                    f"the file ends at byte {len(data)}")
        if first and (kind != "IHDR" or length != 13):
            return f"corrupt PNG: the first chunk is {kind!r} of {length} bytes, not IHDR of 13"
        first = False
        if zlib.crc32(view[pos + 4:end - 4]) != int.from_bytes(view[end - 4:end], "big"):
            return f"corrupt PNG: CRC mismatch in chunk {kind!r} at byte {pos} (changed bytes)"
        if kind == "IEND":
            return None
        pos = end


def _first_bytes(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data[:8])


def _jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation (1..8) of a JPEG, 1 if it has none or an unreadable one."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:          # fill byte
            pos += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no EXIF before it
            return 1
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\x00\x00":
            try:
                exif = Image.Exif()
                exif.load(data[pos + 4:pos + 2 + length])
                orientation = int(exif.get(0x0112, 1))
            except Exception:   # noqa: BLE001 - damaged EXIF (any Pillow error): the pixels are as stored
                return 1
            return orientation if 1 <= orientation <= 8 else 1
        pos += 2 + length
    return 1


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to [H,W,3] (as cv2.imread does)."""
    if orientation == 2:
        rgb = rgb[:, ::-1]
    elif orientation == 3:
        rgb = rgb[::-1, ::-1]
    elif orientation == 4:
        rgb = rgb[::-1]
    elif orientation == 5:
        rgb = rgb.transpose(1, 0, 2)
    elif orientation == 6:
        rgb = np.rot90(rgb, -1)
    elif orientation == 7:
        rgb = rgb[::-1, ::-1].transpose(1, 0, 2)
    elif orientation == 8:
        rgb = np.rot90(rgb, 1)
    return np.ascontiguousarray(rgb)


class _Undecodable(Exception):
    """Internal: why an image file cannot be decoded (becomes a BadFrameError)."""


def _decode_image(data: bytes) -> np.ndarray:
    """Strictly decode JPEG or PNG bytes -> rgb uint8 [H,W,3]; raises _Undecodable(reason)."""
    if not data:
        raise _Undecodable("empty file (0 bytes)")
    if data.startswith(_JPEG_SOI):
        try:    # strict: every libjpeg warning (corrupt data, premature end, bad Huffman code) raises
            rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
        except Exception as error:  # noqa: BLE001 - ValueError from libjpeg, MemoryError for a huge header
            ended = data.rstrip(b"\x00").endswith(b"\xff\xd9")    # a cut file has no end-of-image marker
            kind = "truncated" if "premature end" in str(error).lower() or not ended else "corrupt"
            raise _Undecodable(f"{kind} JPEG (libjpeg: {error})") from None
        return _orient(rgb, _jpeg_orientation(data))
    if data.startswith(_PNG_SIGNATURE):
        problem = _png_problem(data)
        if problem:
            raise _Undecodable(problem)
        try:
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except Exception as error:  # noqa: BLE001 - cv2.error (size limits), MemoryError
            raise _Undecodable(f"PNG cannot be decoded ({error})") from None
        if bgr is None:
            raise _Undecodable("corrupt PNG: its compressed image data cannot be decoded (libpng)")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    raise _Undecodable(f"neither a JPEG nor a PNG image (first bytes: {_first_bytes(data)})")


def read_frame(path: str | Path, index: int | None = None) -> np.ndarray:
    """Decode one JPEG or PNG image file strictly -> rgb uint8 [H,W,3].

    The format is told by the file's first bytes, not its suffix. JPEG is decoded by
    libjpeg-turbo (simplejpeg) with every libjpeg warning ("Corrupt JPEG data", "Premature end
    of JPEG file", bad Huffman code, …) turned into an error, then turned as its EXIF
    orientation says; PNG is checked chunk by chunk (length, CRC-32, IEND) and decoded by
    libpng (OpenCV; greyscale/palette expanded, alpha dropped, 16-bit scaled to 8). A changed
    bit in a JPEG's entropy-coded data that libjpeg cannot notice decodes to a wrong image:
    JPEG has no checksum, so that is undetectable.

    Raises BadFrameError (``path``, ``index``, ``name`` = file stem) for an empty, truncated,
    corrupt, unreadable or non-JPEG/PNG file; the message names the file and, if given, the
    frame index.
    """
    path = Path(path)
    where = f"frame {index} ({path})" if index is not None else f"frame {path}"
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BadFrameError(f"{where}: cannot read it ({error.strerror or error})",
                            path=path, index=index, name=path.stem) from error
    try:
        return _decode_image(data)
    except _Undecodable as error:
        raise BadFrameError(f"{where}: {error}", path=path, index=index, name=path.stem) from None


# ---------------------------------------------------------------------------------------------
# Masks

def _values(a: np.ndarray, limit: int = 8) -> str:
    found = np.unique(a)
    shown = ", ".join(str(int(v)) for v in found[:limit])
    return shown + (f", … ({len(found)} values)" if len(found) > limit else "")


def _colours(codes: np.ndarray, limit: int = 6) -> str:
    found = np.unique(codes)
    shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in found[:limit].tolist())
    return shown + (f", … ({len(found)} colours)" if len(found) > limit else "")


def _first(mask: np.ndarray) -> tuple[int, int]:
    y, x = np.argwhere(mask)[0]
    return int(x), int(y)


_WRITE_HINT = "then save the label map with sdk.io.write_mask(path, labels)"
_COLOUR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}


def _grey_labels(path, raw: np.ndarray, depth: int, kind: str) -> np.ndarray:
    """Greyscale samples (raw values of a `depth`-bit PNG) -> labels: binary if the only values
    are 0 and 2**depth − 1, else the values themselves (0..255, 255 = void)."""
    top = (1 << depth) - 1
    present = np.unique(raw)
    if not present.size:
        return raw.astype(np.uint8)
    if present[-1] == top and np.isin(present, (0, top)).all():
        return (raw == top).astype(np.uint8)        # binary mask: white = object 1
    if present[-1] > 255:
        x, y = _first(raw > 255)
        raise InputError(
            f"mask {path} ({kind}): value {int(raw[y, x])} at (x={x}, y={y}) is not a label "
            f"(labels are 0..254, {VOID} = void; values found: {_values(raw)}). If the values are object ids, "
            "renumber them: `ids, labels = np.unique(a, return_inverse=True); labels = labels.reshape(a.shape)` "
            f"(at most 254 objects), {_WRITE_HINT}")
    return raw.astype(np.uint8)


def _rgb_labels(path, rgb: np.ndarray, opaque: np.ndarray | None, kind: str) -> np.ndarray:
    """RGB uint8 [H,W,3] (+ mask of opaque pixels) -> labels through the DAVIS palette, or a
    binary mask if the only colours (of opaque pixels) are black and white."""
    codes = (rgb.astype(np.int64) << [16, 8, 0]).sum(-1)
    seen = codes if opaque is None else codes[opaque]
    if seen.size and np.isin(seen, (0, _WHITE)).all() and (seen == _WHITE).any():
        labels = (codes == _WHITE).astype(np.uint8)
    else:
        slot = np.searchsorted(_PALETTE_CODES, codes, sorter=_PALETTE_ORDER).clip(max=255)
        labels = _PALETTE_ORDER[slot].astype(np.uint8)
        unknown = _PALETTE_CODES[labels] != codes
        if opaque is not None:
            unknown &= opaque
        if unknown.any():
            x, y = _first(unknown)
            raise InputError(
                f"mask {path} ({kind}): colour RGB{tuple(int(c) for c in rgb[y, x])} at (x={x}, y={y}) is not in the "
                f"DAVIS palette (colours found: {_colours(seen)}). An RGB mask uses the DAVIS colours "
                "(1 = RGB(128, 0, 0), 2 = RGB(0, 128, 0), 3 = RGB(128, 128, 0), …) or only black and white "
                "(one object); a resized mask must be resized with nearest-neighbour, never blended. "
                "To map your colours: `labels = np.zeros(rgb.shape[:2], np.uint8); "
                f"labels[(rgb == (R, G, B)).all(-1)] = 1` for each colour, {_WRITE_HINT}")
    if opaque is not None:
        labels[~opaque] = 0
    return labels


def _alpha_opaque(path, alpha: np.ndarray, kind: str) -> np.ndarray:
    """Alpha uint8 [H,W] -> bool [H,W] of opaque pixels; refuses semi-transparent pixels."""
    partial = (alpha != 0) & (alpha != 255)
    if partial.any():
        x, y = _first(partial)
        raise InputError(
            f"mask {path} ({kind}): semi-transparent pixel (alpha {int(alpha[y, x])}) at (x={x}, y={y}); a mask's alpha "
            "must be 0 (background) or 255 (the pixel's colour/value counts). Flatten it: "
            "`a = np.asarray(Image.open(p).convert('RGBA')).copy(); a[a[..., 3] < 128] = 0; "
            "Image.fromarray(a[..., :3]).save('mask.png')`")
    return alpha == 255


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask PNG -> label map uint8 [H,W] (0 = background, 1..254 objects, 255 = VOID).

    By the PNG's colour type (see docs/input-formats.md):

    - palette ('P', any bit depth, e.g. DAVIS annotations): the pixel's index is its label,
      255 is void (the palette colours and transparency are ignored);
    - greyscale of bit depth d (1, 2, 4, 8, 16; modes '1', 'L', 'I;16'): if the only values
      are 0 and 2**d − 1 (black and white; e.g. a 0/255 8-bit or a mode-'1' mask) it is a
      binary mask: white = object 1. Otherwise the values are the labels (255 = void); a
      16-bit value above 255 is refused;
    - RGB: only black and white -> binary (white = object 1); else every colour must be a
      DAVIS palette colour, mapped to its label (RGB(224, 224, 192) = 255 = void);
    - RGBA / grey+alpha (8-bit): alpha 0 = background whatever the colour, alpha 255 = the
      colour/value counts as above; any other alpha is refused.

    Raises InputError naming the file for a missing, empty, truncated or corrupt file (CRC
    checked), a JPEG (lossy), a non-PNG file, a 16-bit RGB(A)/grey+alpha PNG, a colour outside
    the palette, a label above 255 or a semi-transparent pixel; the message says what was
    found (mode, values or colours, first offending pixel) and how to convert the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read mask {path}: {error.strerror or error}") from error
    if not data:
        raise InputError(f"mask {path} is an empty file (0 bytes)")
    if data.startswith(_JPEG_SOI):
        raise InputError(
            f"mask {path} is a JPEG: JPEG is lossy and changes labels at object edges; save masks as PNG. "
            "A binary JPEG mask can be thresholded: "
            "`Image.open(p).convert('L').point(lambda v: 255 if v >= 128 else 0).save('mask.png')`")
    if not data.startswith(_PNG_SIGNATURE):
        raise InputError(
            f"mask {path} is not a PNG file (first bytes: {_first_bytes(data)}); masks are PNG. A lossless "
            "image in another format converts with `Image.open(p).save('mask.png')`")
    problem = _png_problem(data)
    if problem:
        raise InputError(f"mask {path}: {problem}; the file is damaged, export it again")
    depth, colour_type = data[24], data[25]
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.load()
            mode = image.mode
            pixels = np.asarray(image)
    except Exception as error:  # noqa: BLE001 - Pillow raises many types (OSError, SyntaxError, …)
        raise InputError(f"mask {path}: the PNG cannot be decoded ({type(error).__name__}: {error})") from None
    kind = f"{depth}-bit {_COLOUR_TYPES.get(colour_type, f'colour type {colour_type}')} PNG, Pillow mode {mode}"
    channels = {0: 0, 3: 0, 2: 3, 4: 2, 6: 4}.get(colour_type)
    if channels is None or pixels.shape[2:] != ((channels,) if channels else ()) or pixels.ndim != 2 + bool(channels):
        raise InputError(f"mask {path} ({kind}, decoded as {pixels.dtype} {list(pixels.shape)}) is not a mask "
                         "format; save a palette or greyscale label PNG with sdk.io.write_mask")
    if colour_type == 3:
        return pixels.astype(np.uint8)
    if colour_type == 0:
        raw = pixels.astype(np.int64)
        if mode == "1":
            raw = raw.astype(bool).astype(np.int64)
        elif depth in (2, 4):       # Pillow scales 2/4-bit grey to 0..255: undo it
            raw //= 255 // ((1 << depth) - 1)
        return _grey_labels(path, raw, depth, kind)
    if depth == 16:
        raise InputError(
            f"mask {path} ({kind}): 16-bit colour or grey+alpha PNGs are not read as masks (Pillow truncates "
            "them). Save it with 8 bits, e.g. `cv2.imwrite('mask8.png', (cv2.imread(p, cv2.IMREAD_UNCHANGED) >> 8)"
            ".astype(np.uint8))`, or save a label map with sdk.io.write_mask")
    if colour_type == 4:            # 8-bit grey + alpha ('LA')
        opaque = _alpha_opaque(path, pixels[..., 1], kind)
        return _grey_labels(path, np.where(opaque, pixels[..., 0], 0).astype(np.int64), 8, kind)
    if colour_type == 6:
        return _rgb_labels(path, pixels[..., :3], _alpha_opaque(path, pixels[..., 3], kind), kind)
    return _rgb_labels(path, pixels, None, kind)


def check_mask_size(mask: np.ndarray, frame: np.ndarray, mask_path: str | Path, frame_name: str) -> None:
    """Refuse a first-frame mask (label map [H,W]) whose size differs from its frame's (RGB
    [H,W,3]), before anything is segmented: InputError naming both sizes (W×H px), the files,
    and the fixes (the mask of this video at the frames' resolution; or a nearest-neighbour
    resize, which keeps labels labels)."""
    (mh, mw), (fh, fw) = mask.shape[:2], frame.shape[:2]
    if (mh, mw) == (fh, fw):
        return
    raise InputError(
        f"mask {mask_path} is {mw}x{mh} px but the first frame ({frame_name}) is {fw}x{fh}: the mask must be "
        f"the first frame's size. Check that it is this video's first-frame mask at the frames' resolution "
        f"(DAVIS: Annotations/480p goes with JPEGImages/480p, Full-Resolution with Full-Resolution); a mask "
        f"drawn at another size can be resized to {fw}x{fh} with nearest-neighbour interpolation, which keeps "
        f"labels as labels (Pillow: Image.open(mask).resize(({fw}, {fh}), Image.NEAREST); never bilinear)")


def write_mask(path: str | Path, labels: np.ndarray) -> None:
    """Write a label map (integer [H,W], values 0..255) as a DAVIS palette PNG.

    Creates missing parent folders. The file appears whole or not at all (written to a
    temporary name beside it, then renamed), so an interrupted run never leaves a truncated
    mask. Raises InputError for a non-2-D, non-integer or out-of-range label map.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"label map must be an integer [H,W] array, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise InputError(f"labels must lie in 0..255, got {labels.min()}..{labels.max()}")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(PALETTE.tobytes())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Frame folders

def _natural_key(path: Path) -> list:
    """Sort key that orders 'f2' before 'f10' (and '00002' before '00010' as usual)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def frame_files(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """The frames of a folder, decided before any is decoded -> (files, ignored).

    `files`: every entry (not a sub-folder) whose suffix is .jpg, .jpeg or .png in any case
    and whose name does not start with '.', in natural order ('f2' before 'f10'); frame names
    are their stems. `ignored`: the hidden entries with such a suffix (macOS AppleDouble
    '._00003.jpg', '.thumb.png'), natural order. Other files (notes.txt, .DS_Store) are
    neither. Raises VideoReadError if `folder` is not a folder, holds no frame, or two files
    have the same stem (ignoring case: '00000.jpg' + '00000.png' would write one mask
    '00000.png'); the message names the files and how to fix it.
    """
    folder = Path(folder)
    try:
        with os.scandir(folder) as entries:
            candidates = [Path(e.path) for e in entries
                          if not e.is_dir() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES]
    except OSError as error:
        raise VideoReadError(f"cannot list frame folder {folder}: {error.strerror or error}") from error
    files = sorted((p for p in candidates if not p.name.startswith(".")), key=_natural_key)
    ignored = sorted((p for p in candidates if p.name.startswith(".")), key=_natural_key)
    if not files:
        hidden = f" ({len(ignored)} hidden file(s) such as {ignored[0].name} are ignored)" if ignored else ""
        raise VideoReadError(f"no .jpg/.jpeg/.png frames in folder {folder}{hidden}")
    by_stem: dict[str, list[Path]] = {}
    for p in files:
        by_stem.setdefault(p.stem.casefold(), []).append(p)
    clashes = [group for group in by_stem.values() if len(group) > 1]
    if clashes:
        shown = "; ".join(" + ".join(p.name for p in group) for group in clashes[:3])
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        suffixes = sorted({p.suffix for group in clashes for p in group})
        raise VideoReadError(
            f"frame folder {folder} has {len(clashes)} frame name(s) with two files: {shown}{more}. Each frame's "
            f"mask is named after its stem, so they would overwrite each other: keep one file per frame "
            f"(e.g. move the {' or '.join(suffixes)} copies out of the folder)")
    return files, ignored


# ---------------------------------------------------------------------------------------------
# Video files (PyAV / FFmpeg)

def _check_exists(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(f"no such video file or frame folder: {path}")


def _open_video(path: Path):
    """Open a video container with PyAV -> (container, its first video stream); VideoReadError
    naming the file if it is empty, not a video FFmpeg can read, or has no video stream."""
    import av  # imported here: a frame-folder user does not pay for loading FFmpeg

    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise VideoReadError(f"{path} is a single image, not a video: put the frames in a folder and give the folder")
    try:
        if path.stat().st_size == 0:
            raise VideoReadError(f"{path} is an empty file (0 bytes), not a video")
        container = av.open(str(path), container_options={"protocol_whitelist": "file"},
                            metadata_errors="replace")
    except VideoReadError:
        raise
    except Exception as error:  # noqa: BLE001 - av.error.* (InvalidDataError, …), OSError
        raise VideoReadError(f"{path} is not a video file FFmpeg can read ({error})") from None
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        container.close()
        raise VideoReadError(f"{path} has no video stream (streams: {kinds})")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        container.close()
        raise VideoReadError(f"{path}: FFmpeg has no decoder for its video stream (damaged header, or an unknown codec)")
    return container, stream


def _declared_frames(stream) -> int:
    """Frame count the container declares (0 if it declares none: then an estimate from the
    duration and frame rate)."""
    if stream.frames > 0:
        return int(stream.frames)
    try:
        return max(0, round(float(stream.duration * stream.time_base) * float(stream.average_rate)))
    except (TypeError, ValueError, ZeroDivisionError):
        return 0


def _video_frames(path: Path, skipped: list | None) -> Iterator[tuple[str, np.ndarray]]:
    """Decode a video strictly, frame by frame (see iter_frames)."""
    container, stream = _open_video(path)
    context = stream.codec_context
    # Single-threaded: FFmpeg's slice threads hide decode errors, frame threads misattribute them.
    context.thread_type, context.thread_count = "SLICE", 1
    context.options = {"err_detect": "explode"}     # report bitstream errors instead of concealing them
    declared = stream.frames
    index, size, discarded = 0, None, 0
    # One slot per demuxed packet, by pts (display order): [pts, reason it failed or None]. A
    # picture that comes out closes its slot; earlier slots still open got no picture: bad.
    slots: list[list] = []
    tainted = None      # a hidden (edit-list, discarded) reference packet failed: taints the next picture
    damaged = False     # corrupt data was met: every picture decoded after it up to a keyframe is bad too

    def bad(reason: str) -> BadFrameError:
        name = f"{index:05d}"
        return BadFrameError(f"frame {index} ({name}) of video {path}: {reason}", path=path, index=index, name=name)

    def report(error: BadFrameError) -> None:
        if skipped is None:
            raise error
        skipped.append(error)

    no_picture = "the decoder gave no picture for it (corrupt data, or a reference frame is missing)"
    try:
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except Exception as error:  # noqa: BLE001 - av.error.*: the demuxer gave up
                raise bad(f"the container is damaged here, FFmpeg cannot read on ({error}); "
                          f"{index} frame(s) were read") from None
            slot = None
            if packet.is_discard:
                discarded += 1
            elif packet.pts is not None:
                slot = [packet.pts, None]
                bisect.insort(slots, slot, key=lambda s: s[0])
            try:
                frames = packet.decode()
            except Exception as error:  # noqa: BLE001 - av.error.InvalidDataError & co: a corrupt packet
                reason = f"corrupt video data ({error})"
                damaged = True
                if packet.is_discard:
                    tainted = reason
                elif slot is not None:
                    slot[1] = reason
                elif packet.size:           # no pts to place it by: reported where it happened
                    report(bad(reason))
                    index += 1
                continue
            for frame in frames:
                problem = None
                if frame.pts is not None:
                    while slots and slots[0][0] < frame.pts:
                        report(bad(slots.pop(0)[1] or no_picture))
                        damaged, index = True, index + 1
                    if slots and slots[0][0] == frame.pts:
                        problem = slots.pop(0)[1]   # a picture out of a packet that failed is damaged
                if problem is None and (frame.is_corrupt or tainted):
                    problem = tainted or "corrupt video data (the decoder concealed errors in it)"
                if problem is None and size is not None and (frame.width, frame.height) != size:
                    problem = (f"it is {frame.width}x{frame.height}, the first frame {size[0]}x{size[1]} "
                               "(the stream changes resolution)")
                tainted = None
                if problem:
                    damaged = True
                elif damaged and not frame.key_frame:
                    problem = "it is decoded after corrupt data, and so predicted from it up to the next keyframe"
                else:
                    damaged = False
                if problem is None:
                    try:
                        rgb = frame.to_ndarray(format="rgb24")
                    except Exception as error:  # noqa: BLE001 - av/swscale errors
                        problem = f"cannot convert it to RGB ({error})"
                if problem:
                    report(bad(problem))
                else:
                    size = size or (frame.width, frame.height)
                    yield f"{index:05d}", rgb
                index += 1
        while slots:
            report(bad(slots.pop(0)[1] or no_picture))
            index += 1
    finally:
        container.close()
    if declared and index < declared - discarded:
        raise bad(f"the video ends after {index} frame(s) but its container declares {declared - discarded}: "
                  f"frames {index}..{declared - discarded - 1} are missing (is the file truncated?)")
    if index == 0:
        raise VideoReadError(f"no frame could be decoded from video {path}")


def list_frames(path: str | Path) -> list[str]:
    """Frame names of a frame folder (the stems of `frame_files`, natural order) or of a video
    file ('00000', '00001', … up to the frame count its container declares, or an estimate
    from its duration where it declares none: `iter_frames` is authoritative). Decodes no
    frame. Raises VideoReadError if missing, empty, refused by `frame_files` or unopenable."""
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        return [p.stem for p in frame_files(path)[0]]
    container, stream = _open_video(path)
    count = _declared_frames(stream)
    container.close()
    return [f"{i:05d}" for i in range(count)]


def iter_frames(path: str | Path, skipped: list | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Stream (name, rgb uint8 [H,W,3]) for each frame of a frame folder or a video file,
    decoding one frame at a time.

    Folder: the files of `frame_files` (hidden files ignored; listed and checked when this is
    called, before any frame is decoded), names = file stems, each decoded by `read_frame`
    (frames of different sizes are yielded as they are: the caller decides).
    Video: names '00000', '00001', … as in DAVIS, decoded by FFmpeg (PyAV) single-threaded
    with ``err_detect=explode``. A bad frame is one whose packet the decoder finds corrupt,
    that it had to conceal errors in or gave no picture for, that is decoded after corrupt
    data up to the next keyframe (predicted from it), or whose size differs from the first.

    A frame's index counts every frame of the source, bad ones included. With ``skipped=None``
    the first bad frame raises BadFrameError (``path``, ``index``, ``name``); with a list, each
    bad frame is appended to it as a BadFrameError, is not yielded, and reading goes on.

    Raises VideoReadError (when called, before any frame) if `path` is missing, an empty
    folder, refused by `frame_files`, not a video FFmpeg can open, or has no video stream.
    While iterating a video, raises BadFrameError even with a list when FFmpeg cannot go on:
    the container is damaged, or it ends before the frame count it declares (truncated file).
    Corruption that the codec cannot notice (JPEG and most video codecs carry no checksum)
    yields a wrong image: that is not detectable.
    """
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        files, _ = frame_files(path)
        return _folder_frames(files, skipped)
    _open_video(path)[0].close()    # refuse a non-video now, not at the first next()
    return _video_frames(path, skipped)


def _folder_frames(files: list[Path], skipped: list | None) -> Iterator[tuple[str, np.ndarray]]:
    for index, file in enumerate(files):
        try:
            rgb = read_frame(file, index)
        except BadFrameError as error:
            if skipped is None:
                raise
            skipped.append(error)
            continue
        yield file.stem, rgb


_MOVED_TO_OVERLAY = ("overlay", "H264_ENCODERS", "h264_encoder", "check_overlay_path", "OverlayWriter")


def __getattr__(name: str):
    """``sdk.io.OverlayWriter`` and its helpers live in :mod:`sdk.overlay` now (PEP 562 lookup,
    so importing sdk.io does not load the overlay writer)."""
    if name in _MOVED_TO_OVERLAY:
        from sdk import overlay as _overlay
        return getattr(_overlay, name)
    raise AttributeError(f"module 'sdk.io' has no attribute {name!r}")
