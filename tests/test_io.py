"""sdk.io: DAVIS palette, mask PNGs, frame folders and videos, overlay MP4."""

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sdk.errors import InputError, VideoReadError
from sdk.io import PALETTE, OverlayWriter, iter_frames, list_frames, overlay, read_mask, write_mask

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_palette_is_the_davis_colour_map():
    assert PALETTE.shape == (256, 3) and PALETTE.dtype == np.uint8
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
                5: (128, 0, 128), 8: (64, 0, 0), 255: (224, 224, 192)}
    for label, colour in expected.items():
        assert tuple(PALETTE[label]) == colour
    assert len({tuple(c) for c in PALETTE}) == 256


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent")
def test_palette_matches_real_davis_annotations():
    with Image.open(DATA / "davis2017-240p" / "Annotations" / "schoolgirls" / "00000.png") as image:
        palette = np.asarray(image.getpalette(), np.uint8).reshape(-1, 3)
    assert np.array_equal(palette[:8], PALETTE[:8])


def test_write_then_read_round_trip(tmp_path):
    labels = np.zeros((5, 7), np.uint8)
    labels[1:3, 2:5] = 1
    labels[4, :] = 7
    labels[0, 0] = 255
    path = tmp_path / "sub" / "00000.png"
    write_mask(path, labels)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert np.array_equal(np.asarray(image.getpalette(), np.uint8).reshape(-1, 3)[:256], PALETTE)
    assert np.array_equal(read_mask(path), labels)


def test_read_rgb_mask_maps_palette_colours(tmp_path):
    labels = np.array([[0, 1, 2], [3, 255, 1]], np.uint8)
    Image.fromarray(PALETTE[labels]).save(tmp_path / "rgb.png")
    read = read_mask(tmp_path / "rgb.png")
    assert read.dtype == np.uint8 and np.array_equal(read, labels)


def test_read_rgb_mask_with_unknown_colour_names_it(tmp_path):
    rgb = PALETTE[np.zeros((3, 3), np.uint8)]
    rgb[1, 2] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "bad.png")
    with pytest.raises(InputError, match=r"RGB\(1, 2, 3\) at \(x=2, y=1\)"):
        read_mask(tmp_path / "bad.png")


def test_read_mask_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.png"):
        read_mask(tmp_path / "nope.png")


def test_write_mask_rejects_bad_label_maps(tmp_path):
    with pytest.raises(InputError):
        write_mask(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(InputError):
        write_mask(tmp_path / "a.png", np.full((2, 2), 300))


def _write_frames(folder: Path, names, colours):
    folder.mkdir()
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
