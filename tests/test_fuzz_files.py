"""A corpus of damaged inputs, made by code, run through vos-segment with a fake segmenter.

Contract: ``vos-segment --frames F --mask M --out O [--on-bad-frame error|skip]``. With the
default (error) a bad frame ends the run with exit code 1 and one line ``Error: ...`` naming
the file and the frame index, and the masks already written are kept; with skip the run exits
0, writes no mask for a bad frame and lists the skipped frames at the end. Inputs that are
refused as a whole (not a video, two files for one frame, a bad mask) fail before any mask is
written. Every case ends in one of these ways: never a traceback, never exit 0 with a wrong mask.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner
from fake_segmenter import CopyFirstSegmenter
from PIL import Image

from sdk import cli
from sdk.io import read_mask, write_mask

H, W, FRAMES, BAD = 24, 32, 5, 2     # every folder: 5 frames 00000..00004, frame 2 is the damaged one


@pytest.fixture
def fake(monkeypatch):
    segmenter = CopyFirstSegmenter()
    monkeypatch.setattr(cli, "make_segmenter", lambda *options: segmenter)
    return segmenter


def frame(i: int, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(i)
    small = rng.integers(0, 256, (h // 4, w // 4, 3)).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(small, 4, 0), 4, 1))


def encoded(rgb: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def first_mask(path: Path) -> Path:
    labels = np.zeros((H, W), np.uint8)
    labels[4:12, 8:20] = 1
    write_mask(path, labels)
    return path


def detectable_jpeg_flip(data: bytes) -> bytes:
    """The first single-bit flip in the entropy-coded data that libjpeg notices."""
    from sdk.io import _decode_image, _Undecodable  # the decoder under test, on bytes

    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
    for pos in range(start, len(data) - 2):
        for bit in range(8):
            changed = bytearray(data)
            changed[pos] ^= 1 << bit
            try:
                _decode_image(bytes(changed))
            except _Undecodable:
                return bytes(changed)
    raise AssertionError("no detectable flip")


def damaged(kind: str) -> tuple[str, bytes]:
    """(file name, bytes) of frame 00002 damaged in one way."""
    jpeg, png = encoded(frame(BAD), "JPEG"), encoded(frame(BAD), "PNG")
    idat = png.index(b"IDAT")
    return {
        "truncated_jpeg": ("00002.jpg", jpeg[:len(jpeg) * 2 // 3]),
        "bitflip_jpeg": ("00002.jpg", detectable_jpeg_flip(jpeg)),
        "truncated_png": ("00002.png", png[:idat + 40]),
        "bitflip_png": ("00002.png", png[:idat + 30] + bytes([png[idat + 30] ^ 0x08]) + png[idat + 31:]),
        "zero_bytes": ("00002.jpg", b""),
        "text_as_jpeg": ("00002.jpg", b"this is not an image\n"),
    }[kind]


def folder_with(tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(FRAMES):
        if i == BAD:
            name, data = damaged(kind)
            (folder / name).write_bytes(data)
        else:
            (folder / f"{i:05d}.jpg").write_bytes(encoded(frame(i), "JPEG"))
    return folder


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def masks(out: Path) -> list[str]:
    return sorted(p.stem for p in out.glob("*.png")) if out.is_dir() else []


def assert_no_traceback(result):
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


BAD_FRAMES = ["truncated_jpeg", "bitflip_jpeg", "truncated_png", "bitflip_png", "zero_bytes", "text_as_jpeg"]


@pytest.mark.parametrize("kind", BAD_FRAMES)
def test_bad_frame_stops_the_run_naming_file_and_index_and_keeps_masks(fake, tmp_path, kind):
    folder, out = folder_with(tmp_path, kind), tmp_path / "out"
    result = invoke("--frames", folder, "--mask", first_mask(tmp_path / "m.png"), "--out", out)
    assert_no_traceback(result)
    assert result.exit_code == 1, result.output
    line = error_line(result)
    assert str(folder / damaged(kind)[0]) in line and re.search(r"\bframe 2\b", line), line
    assert masks(out) == ["00000", "00001"]            # written before the bad frame: kept
    assert len(fake.given) == 2                        # nothing of the bad frame reached the segmenter


@pytest.mark.parametrize("kind", BAD_FRAMES)
def test_bad_frame_is_skipped_and_reported_with_skip(fake, tmp_path, kind):
    folder, out = folder_with(tmp_path, kind), tmp_path / "out"
    result = invoke("--frames", folder, "--mask", first_mask(tmp_path / "m.png"), "--out", out,
                    "--on-bad-frame", "skip")
    assert_no_traceback(result)
    assert result.exit_code == 0, result.output
    assert masks(out) == ["00000", "00001", "00003", "00004"]
    assert len(fake.given) == FRAMES - 1
    report = [line for line in result.output.splitlines() if "skipped" in line]
    assert report and "00002" in report[-1], result.output     # listed at the end


def test_frame_of_another_size_is_an_error_naming_it(fake, tmp_path):
    folder, out = tmp_path / "frames", tmp_path / "out"
    folder.mkdir()
    for i in range(FRAMES):
        rgb = frame(i, H + 8, W) if i == 3 else frame(i)
        (folder / f"{i:05d}.png").write_bytes(encoded(rgb, "PNG"))
    result = invoke("--frames", folder, "--mask", first_mask(tmp_path / "m.png"), "--out", out)
    assert_no_traceback(result)
    assert result.exit_code == 1
    line = error_line(result)
    assert "frame 3" in line and "00003" in line and f"{W}x{H + 8}" in line, line
    assert masks(out) == ["00000", "00001", "00002"]


def test_skipped_frames_keep_their_index_in_later_messages(fake, tmp_path):
    """Frame 2 is corrupt (skipped), frame 3 has another size: it is named frame 3, not 2."""
    folder, out = tmp_path / "frames", tmp_path / "out"
    folder.mkdir()
    for i in range(FRAMES):
        rgb = frame(i, H + 8, W) if i == 3 else frame(i)
        (folder / f"{i:05d}.png").write_bytes(b"" if i == BAD else encoded(rgb, "PNG"))
    result = invoke("--frames", folder, "--mask", first_mask(tmp_path / "m.png"), "--out", out,
                    "--on-bad-frame", "skip")
    assert_no_traceback(result)
    assert masks(out) == ["00000", "00001", "00004"]
    assert re.search(r"frame 3 \(00003\)", result.output), result.output


def test_appledouble_and_hidden_files_are_ignored(fake, tmp_path):
    folder, out = folder_with(tmp_path, "zero_bytes"), tmp_path / "out"
    (folder / "00002.jpg").write_bytes(encoded(frame(BAD), "JPEG"))
    (folder / "._00002.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    result = invoke("--frames", folder, "--mask", first_mask(tmp_path / "m.png"), "--out", out)
    assert_no_traceback(result)
    assert result.exit_code == 0, result.output
    assert masks(out) == [f"{i:05d}" for i in range(FRAMES)]


def test_two_files_for_one_frame_are_refused_before_anything_is_written(fake, tmp_path):
    folder, out = folder_with(tmp_path, "zero_bytes"), tmp_path / "out"
    (folder / "00002.jpg").write_bytes(encoded(frame(BAD), "JPEG"))
    (folder / "00002.png").write_bytes(encoded(frame(BAD), "PNG"))
    result = invoke("--frames", folder, "--mask", first_mask(tmp_path / "m.png"), "--out", out)
    assert_no_traceback(result)
    assert result.exit_code == 1
    line = error_line(result)
    assert "00002.jpg" in line and "00002.png" in line and "keep one file per frame" in line
    assert masks(out) == [] and fake.given == []


def write_video(path: Path, frames: list[np.ndarray], gop: int = 4) -> None:
    container = av.open(str(path), "w", options={"movflags": "faststart"})
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    stream.codec_context.gop_size = gop
    for rgb in frames:
        container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
    container.mux(stream.encode())
    container.close()


def panning(n: int) -> list[np.ndarray]:
    base = frame(0)
    return [np.ascontiguousarray(np.roll(base, 2 * i, axis=1)) for i in range(n)]


def corrupt_video(tmp_path: Path, n: int = 12, bad: int = 5) -> Path:
    """A 12-frame MPEG-4 video (keyframes 0, 4, 8) with garbage in frame 5's data."""
    path = tmp_path / "clip.mp4"
    write_video(path, panning(n))
    with av.open(str(path)) as container:
        spans = sorted((p.pts, p.pos, p.size) for p in container.demux(video=0) if p.size)
    _, pos, size = spans[bad]
    data = bytearray(path.read_bytes())
    data[pos + size // 2:pos + size // 2 + 16] = bytes(range(200, 216))
    path.write_bytes(bytes(data))
    return path


def test_corrupt_video_frame_stops_the_run_naming_video_and_index(fake, tmp_path):
    video, out = corrupt_video(tmp_path), tmp_path / "out"
    result = invoke("--frames", video, "--mask", first_mask(tmp_path / "m.png"), "--out", out)
    assert_no_traceback(result)
    assert result.exit_code == 1
    line = error_line(result)
    assert str(video) in line and "frame 5" in line, line
    assert masks(out) == [f"{i:05d}" for i in range(5)]


def test_corrupt_video_frames_are_skipped_up_to_the_next_keyframe(fake, tmp_path):
    video, out = corrupt_video(tmp_path), tmp_path / "out"
    result = invoke("--frames", video, "--mask", first_mask(tmp_path / "m.png"), "--out", out,
                    "--on-bad-frame", "skip")
    assert_no_traceback(result)
    assert result.exit_code == 0, result.output
    assert masks(out) == [f"{i:05d}" for i in (0, 1, 2, 3, 4, 8, 9, 10, 11)]
    assert "00005" in result.output and "00007" in result.output


def test_truncated_video_ends_in_an_error_even_when_skipping(fake, tmp_path):
    video, out = tmp_path / "clip.mp4", tmp_path / "out"
    write_video(video, panning(12))
    with av.open(str(video)) as container:
        _, pos, size = sorted((p.pts, p.pos, p.size) for p in container.demux(video=0) if p.size)[6]
    video.write_bytes(video.read_bytes()[:pos + size // 2])      # cut in frame 6's data
    result = invoke("--frames", video, "--mask", first_mask(tmp_path / "m.png"), "--out", out,
                    "--on-bad-frame", "skip")
    assert_no_traceback(result)
    assert result.exit_code == 1
    line = error_line(result)
    assert str(video) in line and "container declares 12" in line, line
    assert masks(out) == [f"{i:05d}" for i in range(6)]      # what could be read was segmented and kept


@pytest.mark.parametrize("content, message", [
    (b"this is a text file, not a video\n" * 10, "is not a video file FFmpeg can read"),
    (b"", "empty file (0 bytes)"),
])
def test_non_video_is_refused_before_any_frame(fake, tmp_path, content, message):
    video, out = tmp_path / "clip.mp4", tmp_path / "out"
    video.write_bytes(content)
    result = invoke("--frames", video, "--mask", first_mask(tmp_path / "m.png"), "--out", out)
    assert_no_traceback(result)
    assert result.exit_code == 1
    line = error_line(result)
    assert str(video) in line and message in line
    assert masks(out) == [] and fake.given == []


def bad_mask(path: Path, kind: str) -> None:
    labels = np.zeros((H, W), np.uint8)
    labels[4:12, 8:20] = 1
    good = encoded(np.repeat(labels[..., None] * 128, 3, -1), "PNG")
    if kind == "jpeg":
        path.write_bytes(encoded(np.repeat(labels[..., None] * 255, 3, -1), "JPEG"))
    elif kind == "truncated":
        path.write_bytes(good[:len(good) // 2])
    elif kind == "bitflip":
        path.write_bytes(good[:60] + bytes([good[60] ^ 1]) + good[61:])
    elif kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a mask")
    elif kind == "label_300":
        Image.fromarray(labels.astype(np.uint16) * 300).save(path)
    elif kind == "unknown_colour":
        Image.fromarray(np.repeat(labels[..., None] * 77, 3, -1)).save(path)
    elif kind == "semi_transparent":
        Image.fromarray(np.dstack([np.repeat(labels[..., None] * 128, 3, -1),
                                   np.where(labels, 255, 100).astype(np.uint8)]), "RGBA").save(path)
    elif kind == "no_iend":
        path.write_bytes(good[:-12])


BAD_MASKS = {"jpeg": "JPEG is lossy", "truncated": "truncated PNG", "bitflip": "CRC mismatch",
             "zero_bytes": "empty file", "text": "is not a PNG", "label_300": "value 300",
             "unknown_colour": "not in the DAVIS palette", "semi_transparent": "semi-transparent",
             "no_iend": "truncated PNG"}


@pytest.mark.parametrize("kind", sorted(BAD_MASKS))
def test_bad_mask_is_refused_before_any_frame(fake, tmp_path, kind):
    folder, out, mask = folder_with(tmp_path, "zero_bytes"), tmp_path / "out", tmp_path / "m.png"
    bad_mask(mask, kind)
    result = invoke("--frames", folder, "--mask", mask, "--out", out)
    assert_no_traceback(result)
    assert result.exit_code == 1
    line = error_line(result)
    assert str(mask) in line and BAD_MASKS[kind] in line, line
    assert masks(out) == [] and fake.given == []


@pytest.mark.parametrize("kind", ["binary_L", "mode_1", "labels_16bit", "rgb_davis", "rgba"])
def test_common_mask_formats_are_accepted(fake, tmp_path, kind):
    folder, out, mask = folder_with(tmp_path, "zero_bytes"), tmp_path / "out", tmp_path / "m.png"
    (folder / "00002.jpg").write_bytes(encoded(frame(BAD), "JPEG"))
    labels = np.zeros((H, W), np.uint8)
    labels[4:12, 8:20] = 1
    if kind == "binary_L":
        Image.fromarray(labels * 255, "L").save(mask)
    elif kind == "mode_1":
        Image.fromarray(labels.astype(bool)).save(mask)
    elif kind == "labels_16bit":
        Image.fromarray(labels.astype(np.uint16)).save(mask)
    elif kind == "rgb_davis":
        Image.fromarray(np.repeat(labels[..., None], 3, -1) * np.array([128, 0, 0], np.uint8)).save(mask)
    else:
        Image.fromarray(np.dstack([labels * 128, labels * 0, labels * 0, np.full_like(labels, 255)]), "RGBA").save(mask)
    result = invoke("--frames", folder, "--mask", mask, "--out", out)
    assert result.exit_code == 0, result.output
    assert np.array_equal(fake.given[0], labels)
    assert np.array_equal(read_mask(out / "00004.png"), labels)
