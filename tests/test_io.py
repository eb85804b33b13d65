"""sdk.io frames: strict frame decoding, frame folders and videos, overlay MP4 (masks:
test_io_masks.py). Every image and video is made by code in tmp_path; the real DAVIS files are
only read."""

import functools
import io
import re
import struct
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from io_files import (
    DATA,
    EXAMPLES,
    LABELS,
    consume,
    flip,
    fuzz,
    jpeg_bytes,
    moving,
    needs_data,
    noise,
    packet_spans,
    png_bytes,
    scan_start,
    write_video,
)
from PIL import Image

from sdk.errors import BadFrameError, InputError, VideoReadError, VosEdgeError
from sdk.io import (
    PALETTE,
    frame_files,
    iter_frames,
    list_frames,
    read_frame,
)
from sdk.overlay import OverlayWriter, overlay

# --- frames: strict decoding -----------------------------------------------------------------

@needs_data
def test_read_frame_decodes_a_real_davis_jpeg_as_opencv_does():
    path = DATA / "davis2016-480p" / "JPEGImages" / "blackswan" / "00000.jpg"
    rgb = read_frame(path)
    reference = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert rgb.dtype == np.uint8 and rgb.shape == (480, 854, 3)
    assert np.abs(rgb.astype(int) - reference).max() <= 2


@needs_data
@pytest.mark.parametrize("damage", ["truncated", "extraneous", "bit flip"])
def test_damage_opencv_decodes_silently_is_a_bad_frame(tmp_path, damage):
    data = (DATA / "davis2016-480p" / "JPEGImages" / "blackswan" / "00000.jpg").read_bytes()
    if damage == "truncated":
        data = data[:len(data) // 2]
    elif damage == "extraneous":            # garbage before EOI: libjpeg only warns
        data = data[:-2] + b"\x00" * 40 + data[-2:]
    else:   # the first bit flip of the entropy-coded data, from its start, that libjpeg notices
        start = scan_start(data)
        for pos in range(start + 1000, len(data), 97):
            flipped = flip(data, pos, 4)
            try:
                read_frame_bytes(tmp_path, flipped)
            except BadFrameError:
                data = flipped
                break
        else:
            pytest.fail("no detectable flip found")
    path = tmp_path / "00007.jpg"
    path.write_bytes(data)
    assert cv2.imread(str(path)) is not None          # what vosedge used before: garbage, no error
    with pytest.raises(BadFrameError) as caught:
        read_frame(path, index=7)
    error = caught.value
    assert (error.path, error.index, error.name) == (path, 7, "00007")
    assert str(path) in str(error) and "frame 7" in str(error)
    assert ("truncated JPEG" if damage == "truncated" else "corrupt JPEG") in str(error)


def read_frame_bytes(tmp_path, data, name="x.jpg"):
    (tmp_path / name).write_bytes(data)
    return read_frame(tmp_path / name)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_opencv_does(tmp_path, orientation):
    image = Image.fromarray(noise(16, 24))
    exif = image.getexif()
    exif[0x0112] = orientation
    data = jpeg_bytes(np.asarray(image), exif=exif.tobytes())
    reference = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    rgb = read_frame_bytes(tmp_path, data)
    assert rgb.shape == reference.shape == ((16, 24, 3) if orientation <= 4 else (24, 16, 3))
    assert np.abs(rgb.astype(int) - reference).max() <= 2


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_and_cmyk_jpegs_decode_to_rgb(tmp_path, mode):
    buffer = io.BytesIO()
    Image.fromarray(noise()).convert(mode).save(buffer, "JPEG", quality=95)
    rgb = read_frame_bytes(tmp_path, buffer.getvalue())
    reference = cv2.cvtColor(cv2.imdecode(np.frombuffer(buffer.getvalue(), np.uint8), 1), cv2.COLOR_BGR2RGB)
    assert rgb.shape == (24, 32, 3) and np.abs(rgb.astype(int) - reference).max() <= 2


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16"])
def test_png_frames_of_every_colour_type(tmp_path, mode):
    rgb = noise()
    if mode == "RGB":
        image, expected = Image.fromarray(rgb), rgb
    elif mode == "RGBA":
        image, expected = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)])), rgb
    elif mode == "L":
        image, expected = Image.fromarray(rgb[..., 0]), np.repeat(rgb[..., :1], 3, -1)
    elif mode == "P":
        image = Image.fromarray(LABELS, "P")
        image.putpalette(PALETTE.tobytes())
        expected = PALETTE[LABELS]
    else:
        image, expected = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), np.repeat(rgb[..., :1], 3, -1)
    decoded = read_frame_bytes(tmp_path, png_bytes(image), "f.png")
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, expected)


def test_format_is_told_by_content_not_suffix(tmp_path):
    rgb = noise()
    assert np.array_equal(read_frame_bytes(tmp_path, png_bytes(Image.fromarray(rgb)), "really_a_png.jpg"), rgb)


@pytest.mark.parametrize("data, message", [
    (b"", "empty file (0 bytes)"),
    (b"<html>not an image</html>", "neither a JPEG nor a PNG image (first bytes: 3c 68 74 6d"),
    (b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X", "neither a JPEG nor a PNG"),   # AppleDouble bytes
])
def test_non_images_are_bad_frames(tmp_path, data, message):
    with pytest.raises(BadFrameError, match=re.escape(message)):
        read_frame_bytes(tmp_path, data, "00000.jpg")


@pytest.mark.parametrize("damage, message", [("truncated", "truncated PNG"), ("flipped", "CRC mismatch in chunk 'IDAT'"),
                                             ("zlib", "compressed image data cannot be decoded")])
def test_damaged_png_frames_are_bad_frames(tmp_path, damage, message):
    data = png_bytes(Image.fromarray(noise()))
    idat = data.index(b"IDAT")
    if damage == "truncated":
        data = data[:idat + 30]
    elif damage == "flipped":
        data = flip(data, idat + 20, 2)
    else:   # corrupt compressed data under a recomputed (valid) CRC: zlib/libpng must notice
        length = int.from_bytes(data[idat - 4:idat], "big")
        body = bytearray(data[idat + 4:idat + 4 + length])
        body[len(body) // 2] ^= 0xFF
        crc = struct.pack(">I", zlib.crc32(b"IDAT" + bytes(body)))
        data = data[:idat + 4] + bytes(body) + crc + data[idat + 8 + length:]
    with pytest.raises(BadFrameError, match=re.escape(message)):
        read_frame_bytes(tmp_path, data, "f.png")


def test_unreadable_frame_file_is_a_bad_frame(tmp_path):
    (tmp_path / "00001.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(BadFrameError, match="cannot read it") as caught:
        read_frame(tmp_path / "00001.jpg", index=1)
    assert caught.value.name == "00001" and caught.value.index == 1


VALID_JPEG = jpeg_bytes(noise())
VALID_PNG = png_bytes(Image.fromarray(noise()))


@fuzz
@given(cut=st.integers(0, len(VALID_JPEG) - 1))
def test_every_truncated_jpeg_is_a_bad_frame(tmp_path, cut):
    with pytest.raises(BadFrameError):
        read_frame_bytes(tmp_path, VALID_JPEG[:cut])


@fuzz
@given(cut=st.integers(0, len(VALID_PNG) - 1), pos=st.integers(0, len(VALID_PNG) - 1), bit=st.integers(0, 7),
       truncate=st.booleans())
def test_every_truncated_or_bit_flipped_png_frame_is_a_bad_frame(tmp_path, cut, pos, bit, truncate):
    with pytest.raises(BadFrameError):
        read_frame_bytes(tmp_path, VALID_PNG[:cut] if truncate else flip(VALID_PNG, pos, bit), "f.png")


@fuzz
@given(data=st.one_of(
    st.binary(max_size=400),
    st.tuples(st.integers(0, len(VALID_JPEG) - 1), st.integers(0, 7)).map(lambda pb: flip(VALID_JPEG, *pb)),
    st.tuples(st.integers(2, len(VALID_JPEG) - 1), st.binary(min_size=1, max_size=16)).map(
        lambda pb: VALID_JPEG[:pb[0]] + pb[1] + VALID_JPEG[pb[0] + len(pb[1]):]),
    st.binary(max_size=300).map(lambda b: b"\xff\xd8\xff" + b),
))
def test_arbitrary_bytes_as_a_frame_give_rgb_or_bad_frame(tmp_path, data):
    """Bit flips libjpeg cannot notice decode to some image: the documented limit; never another error."""
    try:
        rgb = read_frame_bytes(tmp_path, data)
    except BadFrameError as error:
        assert error.path == tmp_path / "x.jpg"
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


# --- frame folders ---------------------------------------------------------------------------

def _write_frames(folder: Path, names, colours):
    folder.mkdir(exist_ok=True)
    for name, colour in zip(names, colours):
        Image.fromarray(np.full((4, 6, 3), colour, np.uint8)).save(folder / name)


def test_iter_frames_folder_in_natural_order_as_rgb(tmp_path):
    _write_frames(tmp_path / "f", ["f10.png", "f2.png", "f1.jpg"], [(0, 0, 255), (0, 255, 0), (255, 0, 0)])
    (tmp_path / "f" / "notes.txt").write_text("not a frame")
    assert list_frames(tmp_path / "f") == ["f1", "f2", "f10"]
    frames = list(iter_frames(tmp_path / "f"))
    assert [name for name, _ in frames] == ["f1", "f2", "f10"]
    assert all(rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8 for _, rgb in frames)
    assert np.abs(frames[0][1][0, 0].astype(int) - (255, 0, 0)).max() < 8  # jpg: near red
    assert tuple(frames[2][1][0, 0]) == (0, 0, 255)


def test_suffixes_match_in_any_case(tmp_path):
    _write_frames(tmp_path / "f", ["a.JPG", "b.Jpeg", "c.PNG", "d.png"], [(9, 9, 9)] * 4)
    files, ignored = frame_files(tmp_path / "f")
    assert [p.name for p in files] == ["a.JPG", "b.Jpeg", "c.PNG", "d.png"] and ignored == []
    assert [name for name, _ in iter_frames(tmp_path / "f")] == ["a", "b", "c", "d"]


def test_hidden_and_appledouble_files_are_ignored_and_reported(tmp_path):
    folder = tmp_path / "f"
    _write_frames(folder, ["00000.jpg", "00001.jpg", "00002.jpg"], [(1, 1, 1)] * 3)
    (folder / "._00001.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (folder / ".thumb.png").write_bytes(b"")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "sub.jpg").mkdir()                   # a folder is never a frame
    files, ignored = frame_files(folder)
    assert [p.name for p in files] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert [p.name for p in ignored] == ["._00001.jpg", ".thumb.png"]
    assert list_frames(folder) == ["00000", "00001", "00002"]
    assert [name for name, _ in iter_frames(folder)] == ["00000", "00001", "00002"]


def test_only_hidden_files_is_an_empty_folder_saying_so(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "._00000.jpg").write_bytes(b"\x00\x05\x16\x07")
    with pytest.raises(VideoReadError, match=r"no \.jpg/\.jpeg/\.png frames .*\(1 hidden file\(s\) such as \._00000\.jpg"):
        list_frames(tmp_path / "f")


@pytest.mark.parametrize("pair", [("00000.jpg", "00000.png"), ("00000.jpg", "00000.JPG"), ("a.jpeg", "A.png")])
def test_two_files_of_one_frame_are_refused_before_any_decoding(tmp_path, pair):
    folder = tmp_path / "f"
    _write_frames(folder, ["00001.jpg", *pair], [(1, 1, 1)] * 3)
    if not (folder / pair[1]).exists() or len(list(folder.iterdir())) < 3:
        pytest.skip("case-insensitive file system")
    for call in (list_frames, frame_files, iter_frames):     # iter_frames refuses when called, not iterated
        with pytest.raises(VideoReadError) as caught:
            call(folder)
        message = str(caught.value)
        assert pair[0] in message and pair[1] in message and "keep one file per frame" in message


def test_folder_listing_is_decided_when_iter_frames_is_called(tmp_path):
    _write_frames(tmp_path / "f", ["00000.png", "00001.png"], [(1, 1, 1)] * 2)
    frames = iter_frames(tmp_path / "f")
    _write_frames(tmp_path / "f", ["00002.png"], [(2, 2, 2)])
    assert [name for name, _ in frames] == ["00000", "00001"]


def bad_folder(tmp_path) -> Path:
    """00000 good, 00001 truncated JPEG, 00002 zero bytes, 00003 good, 00004 bit-flipped PNG, 00005 good."""
    folder = tmp_path / "f"
    folder.mkdir()
    jpeg = jpeg_bytes(noise(seed=1))
    (folder / "00000.jpg").write_bytes(jpeg)
    (folder / "00001.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (folder / "00002.jpg").write_bytes(b"")
    (folder / "00003.jpg").write_bytes(jpeg)
    png = png_bytes(Image.fromarray(noise(seed=2)))
    (folder / "00004.png").write_bytes(flip(png, len(png) // 2))
    (folder / "00005.png").write_bytes(png)
    return folder


def test_folder_default_raises_at_the_first_bad_frame_after_streaming_the_good_ones(tmp_path):
    folder = bad_folder(tmp_path)
    frames = iter_frames(folder)
    assert next(frames)[0] == "00000"
    with pytest.raises(BadFrameError, match=r"frame 1 \(.*00001\.jpg\): truncated JPEG") as caught:
        next(frames)
    assert (caught.value.index, caught.value.name, caught.value.path) == (1, "00001", folder / "00001.jpg")


def test_folder_skip_mode_lists_bad_frames_and_keeps_their_indices(tmp_path):
    skipped = []
    names, _ = consume(bad_folder(tmp_path), skipped)
    assert names == ["00000", "00003", "00005"]
    assert [(e.index, e.name) for e in skipped] == [(1, "00001"), (2, "00002"), (4, "00004")]
    assert all(isinstance(e, BadFrameError) for e in skipped)
    assert "empty file" in str(skipped[1]) and "CRC mismatch" in str(skipped[2])


def test_frames_of_mixed_sizes_are_yielded_as_they_are(tmp_path):
    """Size is checked by the consumer (vos-segment refuses it, naming the frame)."""
    folder = tmp_path / "f"
    folder.mkdir()
    Image.fromarray(noise(24, 32)).save(folder / "00000.png")
    Image.fromarray(noise(16, 32)).save(folder / "00001.png")
    assert [rgb.shape for _, rgb in iter_frames(folder)] == [(24, 32, 3), (16, 32, 3)]


# --- videos ----------------------------------------------------------------------------------

def test_iter_frames_video(tmp_path):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 16))
    for i in range(3):
        writer.write(np.full((16, 32, 3), 60 * i, np.uint8))
    writer.release()
    assert list_frames(path) == ["00000", "00001", "00002"]
    frames = list(iter_frames(path))
    assert [name for name, _ in frames] == ["00000", "00001", "00002"]
    assert frames[0][1].shape == (16, 32, 3)
    assert np.abs(frames[2][1].astype(int) - 120).max() <= 6     # mp4v is lossy


def test_video_with_b_frames_reads_every_frame_in_display_order_as_opencv(tmp_path):
    path = tmp_path / "b.mp4"
    frames = [noise(48, 64, seed=i) for i in range(16)]
    write_video(path, frames, bframes=2)
    assert any(pts != sorted(p for p, _, _ in packet_spans(path))[i] for i, (pts, _, _) in
               enumerate(packet_spans(path)))           # really reordered
    skipped = []
    names, got = consume(path, skipped)
    assert names == [f"{i:05d}" for i in range(16)] and skipped == []
    capture = cv2.VideoCapture(str(path))
    for name in names:
        ok, bgr = capture.read()
        assert ok and np.abs(got[name].astype(int) - cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).max() <= 3
    capture.release()


@pytest.mark.parametrize("make, message", [
    ("text", "is not a video file FFmpeg can read"),
    ("empty", "is an empty file (0 bytes)"),
    ("image", "is a single image, not a video"),
    ("moov_truncated", "is not a video file FFmpeg can read"),
])
def test_non_videos_are_refused_when_called_naming_the_file(tmp_path, make, message):
    path = tmp_path / "clip.mp4"
    if make == "text":
        path.write_text("this is a text file named .mp4\n" * 20)
    elif make == "empty":
        path.write_bytes(b"")
    elif make == "image":
        path = tmp_path / "clip.png"
        Image.fromarray(noise()).save(path)
    else:   # OpenCV writes the index (moov) last: a truncated file has none
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 24))
        for i in range(10):
            writer.write(noise(seed=i))
        writer.release()
        path.write_bytes(path.read_bytes()[:path.stat().st_size * 2 // 3])
    for call in (iter_frames, list_frames):
        with pytest.raises(VideoReadError, match=re.escape(message)) as caught:
            call(path)
        assert str(path) in str(caught.value) and not isinstance(caught.value, BadFrameError)


def corrupt_packet(path, k, out):
    """Copy `path` to `out` with garbage in the middle of the k-th frame's packet (display order)."""
    spans = sorted(packet_spans(path))
    _, pos, size = spans[k]
    data = bytearray(path.read_bytes())
    middle = pos + size // 2
    data[middle:middle + 24] = bytes(range(37, 37 + 24 * 7, 7))
    out.write_bytes(bytes(data))


def test_corrupt_video_frame_is_caught_where_opencv_decodes_garbage(tmp_path):
    path, bad = tmp_path / "clip.mp4", tmp_path / "bad.mp4"
    write_video(path, [moving(i) for i in range(18)], gop=6)
    _, reference = consume(path, [])
    corrupt_packet(path, 8, bad)
    with pytest.raises(BadFrameError, match=r"frame 8 \(00008\) of video .*bad\.mp4: corrupt video data") as caught:
        for name, _ in iter_frames(bad):
            assert int(name) < 8                     # frames before it are streamed first
    assert (caught.value.index, caught.value.name, caught.value.path) == (8, "00008", bad)
    skipped = []
    names, got = consume(bad, skipped)
    assert [e.index for e in skipped] == [8, 9, 10, 11]          # the frame and those predicted from it
    assert "predicted from it up to the next keyframe" in str(skipped[-1])
    assert names == [f"{i:05d}" for i in range(18) if not 8 <= i <= 11]
    assert all(np.array_equal(got[n], reference[n]) for n in names)   # nothing wrong is yielded


@pytest.mark.parametrize("seed", range(4))
def test_damaged_video_accounts_for_every_frame_once(tmp_path, seed):
    path, bad = tmp_path / "clip.mp4", tmp_path / "bad.mp4"
    write_video(path, [noise(48, 64, seed=i) for i in range(16)], bframes=2)
    spans = packet_spans(path)
    rng = np.random.default_rng(seed)
    data = bytearray(path.read_bytes())
    for _ in range(3):
        _, pos, size = spans[rng.integers(len(spans))]
        data[pos + rng.integers(size)] ^= 1 << int(rng.integers(8))
    bad.write_bytes(bytes(data))
    skipped = []
    names, _ = consume(bad, skipped)
    assert sorted(names + [e.name for e in skipped]) == [f"{i:05d}" for i in range(16)]
    assert [e.index for e in skipped] == sorted({e.index for e in skipped})


def test_truncated_video_raises_after_its_readable_frames_even_when_skipping(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, [noise(48, 64, seed=i) for i in range(20)])
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    skipped, names = [], []
    with pytest.raises(BadFrameError, match=r"container declares 20: frames \d+\.\.19 are missing") as caught:
        for name, _ in iter_frames(path, skipped):
            names.append(name)
    assert 3 < len(names) < 20 and caught.value.index == len(names) + len(skipped)


def test_video_frame_of_another_size_is_a_bad_frame(tmp_path):
    big, small = tmp_path / "a.m4v", tmp_path / "b.m4v"
    write_video(big, [noise(48, 64, seed=i) for i in range(3)], faststart=False, fmt="m4v")
    write_video(small, [noise(32, 48, seed=i) for i in range(2)], faststart=False, fmt="m4v")
    joined = tmp_path / "joined.m4v"        # a raw MPEG-4 stream may change size mid-way
    joined.write_bytes(big.read_bytes() + small.read_bytes())
    skipped = []
    names, _ = consume(joined, skipped)
    assert names == ["00000", "00001", "00002"] and [e.index for e in skipped] == [3, 4]
    assert "it is 48x32, the first frame 64x48" in str(skipped[0])
    with pytest.raises(BadFrameError, match="frame 3"):
        list(iter_frames(joined))


VIDEO_FRAMES = [noise(32, 48, seed=i) for i in range(8)]


@functools.cache
def valid_video() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        write_video(Path(folder) / "v.mp4", VIDEO_FRAMES, gop=4, bframes=1)
        return (Path(folder) / "v.mp4").read_bytes()


@settings(max_examples=max(10, EXAMPLES // 2), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_arbitrary_video_bytes_give_frames_or_a_video_read_error(tmp_path, data):
    video = valid_video()
    kind = data.draw(st.sampled_from(["random", "truncated", "flipped", "garbage"]))
    if kind == "random":
        blob = data.draw(st.binary(max_size=2000))
    elif kind == "truncated":
        blob = video[:data.draw(st.integers(0, len(video)))]
    elif kind == "flipped":
        positions = data.draw(st.lists(st.integers(0, len(video) - 1), min_size=1, max_size=4))
        blob = bytearray(video)
        for pos in positions:
            blob[pos] ^= 1 << data.draw(st.integers(0, 7))
    else:
        at = data.draw(st.integers(0, len(video) - 1))
        blob = video[:at] + data.draw(st.binary(min_size=1, max_size=64)) + video[at + 64:]
    path = tmp_path / "v.mp4"
    path.write_bytes(bytes(blob))
    skipped = []
    try:
        names, got = consume(path, skipped)
    except VideoReadError as error:          # BadFrameError included; never an av/numpy error
        assert str(path) in str(error)
        return
    assert all(rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 for rgb in got.values())
    assert all(isinstance(e, BadFrameError) for e in skipped)
    indices = sorted([int(n) for n in names] + [e.index for e in skipped])
    assert indices == list(range(len(indices)))


@pytest.mark.parametrize("make", ["missing", "empty_dir", "garbage_video", "corrupt_frame"])
def test_unreadable_sources_raise_video_read_error_naming_the_path(tmp_path, make):
    path = tmp_path / "src"
    if make == "empty_dir":
        path.mkdir()
    elif make == "garbage_video":
        path = tmp_path / "src.mp4"
        path.write_bytes(b"not a video" * 10)
    elif make == "corrupt_frame":
        path.mkdir()
        (path / "00000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoReadError, match=re.escape(str(path))):
        list(iter_frames(path))


def test_every_reader_error_is_a_vosedge_error():
    assert issubclass(BadFrameError, VideoReadError) and issubclass(VideoReadError, VosEdgeError)
    assert issubclass(InputError, VosEdgeError)


# --- overlay ---------------------------------------------------------------------------------

def test_overlay_blends_objects_only():
    frame = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [2, 0]])
    out = overlay(frame, labels, alpha=0.5)
    assert np.array_equal(out[0, 0], frame[0, 0]) and np.array_equal(out[1, 1], frame[1, 1])
    assert tuple(out[0, 1]) == (114, 50, 50)  # (100 + (128, 0, 0)) / 2
    assert tuple(out[1, 0]) == (50, 114, 50)


def test_overlay_writer_writes_a_readable_mp4(tmp_path):
    path = tmp_path / "o" / "overlay.mp4"
    with OverlayWriter(path, fps=5) as writer:
        for _ in range(4):
            writer.write(np.zeros((32, 48, 3), np.uint8), np.ones((32, 48), np.uint8))
        with pytest.raises(InputError):
            writer.write(np.zeros((16, 48, 3), np.uint8), np.ones((16, 48), np.uint8))
    frames = list(iter_frames(path))
    assert len(frames) == 4 and frames[0][1].shape == (32, 48, 3)


def _decoded(path):
    """(the stream's codec name, profile, pixel format, width, height, the frames rgb uint8) via PyAV."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return context.name, context.profile, context.pix_fmt, stream.width, stream.height, frames


@pytest.mark.parametrize("height, width", [(240, 320), (47, 63)])
def test_the_overlay_is_browser_playable_h264_whose_frames_decode_back(tmp_path, height, width):
    """Issue 31: H.264 (High profile, yuv420p) in MP4 with the index first, not MPEG-4 Part 2;
    decoded back with PyAV it has every frame, at the input size (odd sides made even), and
    the pixels of the blended frames."""
    from sdk.demo import make_clip

    rgb, labels = make_clip(frames=12, height=height, width=width)
    path = tmp_path / "overlay.mp4"
    with OverlayWriter(path, fps=10) as writer:
        for frame, label in zip(rgb, labels):
            writer.write(frame, label)
    name, profile, pix_fmt, w, h, frames = _decoded(path)
    assert (name, profile, pix_fmt) == ("h264", "High", "yuv420p")
    assert (w, h) == (width + width % 2, height + height % 2) and len(frames) == 12
    data = path.read_bytes()
    assert data[4:8] == b"ftyp" and 0 < data.index(b"moov") < data.index(b"mdat")       # faststart
    expected = [overlay(frame, label, 0.5).astype(np.float64) for frame, label in zip(rgb, labels)]
    for i, decoded in enumerate(frames):
        decoded = decoded[:height, :width].astype(np.float64)
        error = decoded - expected[i]       # lossy: CRF 20, 4:2:0 chroma of a noise texture (29 dB at 63x47, 33 at 320x240)
        psnr = 10 * np.log10(255 ** 2 / np.mean(error ** 2))
        assert psnr > 27 and np.mean(np.abs(error)) < 6, (psnr, np.mean(np.abs(error)))
        others = [np.mean(np.abs(decoded - e)) for j, e in enumerate(expected) if j != i]
        assert np.mean(np.abs(error)) < min(others)              # its own frame, in order
    for decoded in frames:
        if width % 2:                                    # the added column repeats the last one
            assert np.mean(np.abs(decoded[:height, -1].astype(int) - decoded[:height, -2])) < 6


@pytest.mark.parametrize("name", ["x.avi", "x.mkv", "x", "x.mp4.tmp"])
def test_the_overlay_must_be_named_mp4_before_anything_is_created(tmp_path, name):
    with pytest.raises(InputError, match=r"H\.264 in an MP4 file, so its name must end in \.mp4") as error:
        OverlayWriter(tmp_path / "sub" / name)
    assert str(tmp_path / "sub" / name) in str(error.value)
    assert not (tmp_path / "sub").exists()
    with OverlayWriter(tmp_path / "UPPER.MP4") as writer:      # the suffix in any case
        writer.write(np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16), np.uint8))
    assert _decoded(tmp_path / "UPPER.MP4")[0] == "h264"


def test_the_h264_encoder_is_in_the_wheel():
    from sdk.overlay import H264_ENCODERS, h264_encoder

    assert h264_encoder() in H264_ENCODERS


def test_the_overlay_names_still_resolve_in_sdk_io():
    """sdk.io.OverlayWriter (the README's name before sdk.overlay) is the same object."""
    import sdk.io
    import sdk.overlay

    for name in ("overlay", "H264_ENCODERS", "h264_encoder", "check_overlay_path", "OverlayWriter"):
        assert getattr(sdk.io, name) is getattr(sdk.overlay, name)
    with pytest.raises(AttributeError, match="no_such_name"):
        sdk.io.no_such_name
