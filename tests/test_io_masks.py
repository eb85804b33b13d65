"""sdk.io masks: the DAVIS palette, write_mask, every accepted mask format and every refused one
(with properties). Every file is made by code in tmp_path; the real DAVIS files are only read."""

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from io_files import (
    DATA,
    LABELS,
    flip,
    fuzz,
    jpeg_bytes,
    needs_data,
    png_bytes,
    raw_png,
)
from PIL import Image

from sdk.errors import InputError
from sdk.io import (
    PALETTE,
    VOID,
    read_mask,
    write_mask,
)

# --- palette and write_mask ------------------------------------------------------------------

def test_palette_is_the_davis_colour_map():
    assert PALETTE.shape == (256, 3) and PALETTE.dtype == np.uint8
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
                5: (128, 0, 128), 8: (64, 0, 0), 255: (224, 224, 192)}
    for label, colour in expected.items():
        assert tuple(PALETTE[label]) == colour
    assert len({tuple(c) for c in PALETTE}) == 256
    assert VOID == 255


@needs_data
def test_palette_matches_real_davis_annotations():
    with Image.open(DATA / "davis2017-240p" / "Annotations" / "schoolgirls" / "00000.png") as image:
        palette = np.asarray(image.getpalette(), np.uint8).reshape(-1, 3)
    assert np.array_equal(palette[:8], PALETTE[:8])


@needs_data
@pytest.mark.parametrize("folder, objects", [("davis2016-240p", 1), ("davis2016-480p", 1), ("davis2017-240p", 7)])
def test_real_davis_annotations_read_as_labels(folder, objects):
    path = min((DATA / folder / "Annotations").glob("*/00000.png"))
    with Image.open(path) as image:
        assert image.mode == "P"
    labels = read_mask(path)
    assert labels.dtype == np.uint8 and labels.ndim == 2
    assert set(np.unique(labels).tolist()) == set(range(objects + 1))


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


def test_write_mask_rejects_bad_label_maps(tmp_path):
    with pytest.raises(InputError):
        write_mask(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(InputError):
        write_mask(tmp_path / "a.png", np.full((2, 2), 300))


# --- masks: accepted formats -----------------------------------------------------------------



def save(tmp_path, image: Image.Image, name="m.png", **options) -> Path:
    image.save(tmp_path / name, **options)
    return tmp_path / name


def test_palette_mask_index_is_the_label_255_void_transparency_ignored(tmp_path):
    image = Image.fromarray(LABELS, "P")
    image.putpalette(PALETTE.tobytes())
    assert np.array_equal(read_mask(save(tmp_path, image, transparency=0)), LABELS)
    grey_palette = Image.fromarray(np.array([[0, 255]], np.uint8), "P")
    grey_palette.putpalette(bytes(v for i in range(256) for v in (i, i, i)))
    assert read_mask(save(tmp_path, grey_palette)).tolist() == [[0, VOID]]   # 'P': 255 stays void


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_low_bit_depth_palette_masks(tmp_path, bits):
    labels = np.array([[0, 1, 0, 1], [1, 1, 0, 0]], np.uint8) * ((1 << bits) - 1)
    image = Image.fromarray(labels, "P")
    image.putpalette(PALETTE.tobytes())
    path = save(tmp_path, image, bits=bits)
    assert Path(path).read_bytes()[24] == bits           # really written at that depth
    assert np.array_equal(read_mask(path), labels)


def test_greyscale_label_mask(tmp_path):
    assert np.array_equal(read_mask(save(tmp_path, Image.fromarray(LABELS, "L"))), LABELS)
    zeros = np.zeros((3, 4), np.uint8)
    assert np.array_equal(read_mask(save(tmp_path, Image.fromarray(zeros, "L"))), zeros)


def test_binary_0_255_greyscale_mask_is_one_object(tmp_path):
    binary = np.array([[0, 255, 255], [0, 0, 255]], np.uint8)
    assert read_mask(save(tmp_path, Image.fromarray(binary, "L"))).tolist() == [[0, 1, 1], [0, 0, 1]]
    everything = np.full((2, 2), 255, np.uint8)
    assert read_mask(save(tmp_path, Image.fromarray(everything, "L"))).tolist() == [[1, 1], [1, 1]]


def test_mode_1_mask_is_one_object(tmp_path):
    path = save(tmp_path, Image.fromarray(np.array([[False, True], [True, True]])))
    with Image.open(path) as image:
        assert image.mode == "1"
    labels = read_mask(path)
    assert labels.dtype == np.uint8 and labels.tolist() == [[0, 1], [1, 1]]


def test_2_and_4_bit_greyscale_values_are_not_scaled(tmp_path):
    (tmp_path / "2.png").write_bytes(raw_png(4, 1, 2, 0, [bytes([0b00_01_10_11])]))    # values 0 1 2 3
    assert read_mask(tmp_path / "2.png").tolist() == [[0, 1, 2, 3]]
    (tmp_path / "2b.png").write_bytes(raw_png(4, 1, 2, 0, [bytes([0b00_11_11_00])]))   # 0 3 3 0: binary
    assert read_mask(tmp_path / "2b.png").tolist() == [[0, 1, 1, 0]]
    (tmp_path / "4.png").write_bytes(raw_png(2, 1, 4, 0, [bytes([0x5A])]))              # values 5 10
    assert read_mask(tmp_path / "4.png").tolist() == [[5, 10]]


def test_16_bit_greyscale_labels(tmp_path):
    labels = np.array([[0, 1, 7], [255, 254, 0]], np.uint16)
    path = save(tmp_path, Image.fromarray(labels))
    with Image.open(path) as image:
        assert image.mode.startswith("I")
    read = read_mask(path)
    assert read.dtype == np.uint8 and np.array_equal(read, labels)
    binary = save(tmp_path, Image.fromarray(np.array([[0, 65535]], np.uint16)), "b.png")
    assert read_mask(binary).tolist() == [[0, 1]]


def test_16_bit_label_above_255_is_refused_with_a_recipe(tmp_path):
    path = save(tmp_path, Image.fromarray(np.array([[0, 1], [300, 2]], np.uint16)))
    with pytest.raises(InputError, match=r"value 300 at \(x=0, y=1\)") as caught:
        read_mask(path)
    assert "16-bit" in str(caught.value) and "0, 1, 2, 300" in str(caught.value)
    assert "np.unique" in str(caught.value) and str(path) in str(caught.value)


def test_read_rgb_mask_maps_palette_colours(tmp_path):
    Image.fromarray(PALETTE[LABELS]).save(tmp_path / "rgb.png")
    read = read_mask(tmp_path / "rgb.png")
    assert read.dtype == np.uint8 and np.array_equal(read, LABELS)


def test_black_and_white_rgb_mask_is_one_object(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 1] = rgb[1, 2] = 255
    assert read_mask(save(tmp_path, Image.fromarray(rgb))).tolist() == [[0, 1, 0], [0, 0, 1]]


def test_read_rgb_mask_with_unknown_colour_names_it(tmp_path):
    rgb = PALETTE[np.zeros((3, 3), np.uint8)]
    rgb[1, 2] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "bad.png")
    with pytest.raises(InputError, match=r"RGB\(1, 2, 3\) at \(x=2, y=1\)") as caught:
        read_mask(tmp_path / "bad.png")
    assert "colours found: (0, 0, 0), (1, 2, 3)" in str(caught.value)
    assert "nearest-neighbour" in str(caught.value) and "write_mask" in str(caught.value)


def test_rgba_mask_alpha_0_is_background(tmp_path):
    rgba = np.dstack([PALETTE[LABELS], np.full(LABELS.shape, 255, np.uint8)])
    rgba[0, 1] = (12, 34, 56, 0)          # transparent: background whatever its colour
    expected = LABELS.copy()
    expected[0, 1] = 0
    assert np.array_equal(read_mask(save(tmp_path, Image.fromarray(rgba, "RGBA"))), expected)


def test_semi_transparent_mask_pixel_is_refused(tmp_path):
    rgba = np.dstack([PALETTE[LABELS], np.full(LABELS.shape, 255, np.uint8)])
    rgba[1, 2, 3] = 128
    with pytest.raises(InputError, match=r"alpha 128\) at \(x=2, y=1\)"):
        read_mask(save(tmp_path, Image.fromarray(rgba, "RGBA")))


def test_grey_alpha_mask(tmp_path):
    la = np.dstack([np.array([[0, 255], [255, 255]], np.uint8), np.array([[255, 255], [0, 255]], np.uint8)])
    assert read_mask(save(tmp_path, Image.fromarray(la, "LA"))).tolist() == [[0, 1], [0, 1]]


# --- masks: refused files --------------------------------------------------------------------

def test_read_mask_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.png"):
        read_mask(tmp_path / "nope.png")


@pytest.mark.parametrize("case, message", [
    ("empty", "empty file"),
    ("jpeg", "is a JPEG: JPEG is lossy"),
    ("gif", "is not a PNG file"),
    ("truncated", "truncated PNG"),
    ("flipped", "CRC mismatch"),
    ("rgb16", "16-bit RGB"),
])
def test_refused_mask_files_say_what_and_how(tmp_path, case, message):
    path = tmp_path / "mask.png"
    valid = png_bytes(Image.fromarray(LABELS, "L"))
    if case == "empty":
        path.write_bytes(b"")
    elif case == "jpeg":
        path.write_bytes(jpeg_bytes(np.zeros((8, 8, 3), np.uint8)))
    elif case == "gif":
        Image.fromarray(LABELS, "L").save(path, "GIF")
    elif case == "truncated":
        path.write_bytes(valid[:-20])
    elif case == "flipped":
        path.write_bytes(flip(valid, 45, 3))
    elif case == "rgb16":
        path.write_bytes(raw_png(1, 1, 16, 2, [struct.pack(">HHH", 32896, 0, 0)]))
    with pytest.raises(InputError, match=re.escape(message)) as caught:
        read_mask(path)
    assert str(path) in str(caught.value)
    if case in ("jpeg", "gif", "rgb16"):
        assert "save" in str(caught.value)       # says how to convert


# --- masks: properties -----------------------------------------------------------------------

label_maps = st.integers(1, 9).flatmap(lambda h: st.integers(1, 9).flatmap(lambda w: st.lists(
    st.sampled_from([0, 1, 2, 3, 7, 16, 128, 254, 255]), min_size=h * w, max_size=h * w).map(
    lambda v: np.array(v, np.uint8).reshape(h, w))))


def expected_grey(labels: np.ndarray, top: int) -> np.ndarray:
    """The documented greyscale rule: only 0 and the depth's maximum -> binary, else labels."""
    values = set(np.unique(labels).tolist())
    return (labels == top).astype(np.uint8) if top in values and values <= {0, top} else labels


@fuzz
@given(labels=label_maps, fmt=st.sampled_from(["P", "L", "I;16", "RGB", "RGBA"]), seed=st.integers(0, 2**16))
def test_every_accepted_format_reads_back_its_labels(tmp_path, labels, fmt, seed):
    path = tmp_path / "m.png"
    expected = labels
    if fmt == "P":
        write_mask(path, labels)
    elif fmt == "L":
        Image.fromarray(labels, "L").save(path)
        expected = expected_grey(labels, 255)
    elif fmt == "I;16":
        Image.fromarray(labels.astype(np.uint16)).save(path)
    elif fmt == "RGB":
        Image.fromarray(PALETTE[labels]).save(path)
    else:
        opaque = np.random.default_rng(seed).random(labels.shape) < 0.7
        rgba = np.dstack([PALETTE[labels], np.where(opaque, 255, 0).astype(np.uint8)])
        Image.fromarray(rgba, "RGBA").save(path)
        expected = np.where(opaque, labels, 0)
    read = read_mask(path)
    assert read.dtype == np.uint8 and read.shape == labels.shape
    assert np.array_equal(read, expected)


@fuzz
@given(binary=st.integers(1, 9).flatmap(lambda n: st.lists(st.booleans(), min_size=n * 3, max_size=n * 3)
                                         .map(lambda v: np.array(v).reshape(n, 3))), fmt=st.sampled_from(["1", "L"]))
def test_binary_masks_read_as_one_object(tmp_path, binary, fmt):
    image = Image.fromarray(binary) if fmt == "1" else Image.fromarray(binary.astype(np.uint8) * 255, "L")
    image.save(tmp_path / "b.png")
    assert np.array_equal(read_mask(tmp_path / "b.png"), binary.astype(np.uint8))


VALID_MASK = png_bytes(Image.fromarray(np.array([[0, 1, 2], [3, 255, 0]], np.uint8), "L"))


@fuzz
@given(cut=st.integers(0, len(VALID_MASK) - 1))
def test_every_truncated_mask_is_refused(tmp_path, cut):
    (tmp_path / "m.png").write_bytes(VALID_MASK[:cut])
    with pytest.raises(InputError):
        read_mask(tmp_path / "m.png")


@fuzz
@given(pos=st.integers(0, len(VALID_MASK) - 1), bit=st.integers(0, 7))
def test_every_single_bit_flip_of_a_mask_is_refused(tmp_path, pos, bit):
    (tmp_path / "m.png").write_bytes(flip(VALID_MASK, pos, bit))     # PNG chunks carry a CRC-32
    with pytest.raises(InputError):
        read_mask(tmp_path / "m.png")


@fuzz
@given(data=st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
                      st.binary(max_size=200).map(lambda b: VALID_MASK[:33] + b)))
def test_arbitrary_bytes_as_a_mask_give_labels_or_input_error(tmp_path, data):
    (tmp_path / "m.png").write_bytes(data)
    try:
        labels = read_mask(tmp_path / "m.png")
    except InputError:
        return
    assert labels.dtype == np.uint8 and labels.ndim == 2

