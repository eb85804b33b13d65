"""Clip data of main training (issue 15): image and mask share the warp's border, and
multi-object clips by pasting (training/synthesis.py) keep labels disjoint, visible and apart."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from training.datasets import ClipDataset, Sequence
from training.synthesis import REST, Synthesis, paste

MEAN, STD = (0.5,) * 3, (128 / 255,) * 3
RED, BLUE = (230, 20, 20), (20, 20, 230)


def denormalise(frames):
    """[T,3,S,S] normalised with MEAN/STD → float [T,S,S,3] in 0..255."""
    return frames.transpose(0, 2, 3, 1) * (STD[0] * 255) + MEAN[0] * 255


def redness(rgb):
    return (rgb[..., 0] - rgb[..., 1:].max(-1)) > 90


def background(height, width):
    yy, xx = np.mgrid[:height, :width]
    return np.stack([np.full_like(xx, 40), 60 + xx * 120 // width, 60 + yy * 120 // height], -1).astype(np.uint8)


def moving_square_sequence(n=6, size=24, height=96, width=128):
    """A red square (object 1) moving right by 4 px per frame."""
    frames, masks = [], []
    for t in range(n):
        image, labels = background(height, width), np.zeros((height, width), np.uint8)
        image[30:30 + size, 20 + 4 * t:20 + 4 * t + size], labels[30:30 + size, 20 + 4 * t:20 + 4 * t + size] = RED, 1
        frames.append(image)
        masks.append(labels)
    return Sequence("square", frames, masks, [1])


def test_an_object_at_the_border_is_labelled_wherever_the_warp_shows_it():
    """A red band along the left edge: wherever a frame's warp exposes the outside of the image,
    the reflected border used to paint red pixels labelled background. Both image and mask now
    get a constant border, so red pixels ⇔ the object's mask in every frame."""
    image, labels = background(64, 80), np.zeros((64, 80), np.uint8)
    image[:, :14], labels[:, :14] = RED, 1
    ds = ClipDataset([Sequence("edge", [image] * 3, [labels] * 3, [1])], crop=64, mean=MEAN, std=STD, seed=0)
    kernel = np.ones((3, 3), np.uint8)
    checked = 0
    for i in range(12):
        item = ds[i]
        rgb = denormalise(item["frames"])
        if np.allclose(rgb[..., 0], rgb[..., 1], atol=1):        # a greyscale clip (p = 0.05): no colour
            continue
        for t in range(3):
            red, mask = redness(rgb[t]), item["masks"][t, 0] > 0
            if mask.sum() < 30:
                continue
            assert (red & mask).sum() >= 0.97 * red.sum(), (i, t, int(red.sum()), int((red & mask).sum()))
            inner = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
            assert red[inner].mean() >= 0.97, (i, t)
            checked += 1
    assert checked >= 20


def test_multi_object_items_shapes_dtypes_disjoint_and_visible():
    seqs = [moving_square_sequence(), Sequence("two", *_two_objects(), [1, 2])]
    ds = ClipDataset(seqs, crop=64, mean=MEAN, std=STD, seed=1,
                     synthesis={"objects": 3, "multi_prob": 1.0, "min_pixels": 60})
    counts = set()
    for i in range(10):
        item = ds[i]
        assert item["frames"].shape == (3, 3, 64, 64) and item["masks"].shape == (3, 3, 64, 64)
        assert item["others"].shape == (3, 1, 64, 64) and item["valid"].shape == (3,)
        assert all(v.dtype == np.float32 for v in item.values())
        assert set(np.unique(item["masks"])) <= {0.0, 1.0} and set(np.unique(item["others"])) <= {0.0, 1.0}
        assert item["masks"].sum(1).max() <= 1 and not (item["masks"] * item["others"]).any()   # disjoint
        n = int(item["valid"].sum())
        assert np.array_equal(item["valid"], [1.0] * n + [0.0] * (3 - n))
        assert (item["masks"][0, :n].sum((1, 2)) >= 60).all()          # every object visible in frame 0
        assert not item["masks"][:, n:].any()                           # unused slots are empty
        counts.add(n)
    assert counts >= {2, 3}


def _two_objects(n=4):
    frames, masks = [], []
    for t in range(n):
        image, labels = background(96, 128), np.zeros((96, 128), np.uint8)
        image[10:40, 10 + t:40 + t], labels[10:40, 10 + t:40 + t] = RED, 1
        image[50:80, 80 - t:110 - t], labels[50:80, 80 - t:110 - t] = BLUE, 2
        frames.append(image)
        masks.append(labels)
    return frames, masks


def test_items_are_deterministic_per_seed_and_item():
    def make(seed):
        return ClipDataset([moving_square_sequence()], crop=64, mean=MEAN, std=STD, seed=seed,
                           synthesis={"objects": 2, "multi_prob": 1.0})

    a, b = make(5)[3], make(5)[3]
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert not np.array_equal(a["frames"], make(6)[3]["frames"])
    assert not np.array_equal(a["frames"], make(5)[4]["frames"])


def test_a_pasted_duplicate_is_the_same_object_under_its_own_label():
    """One single-object sequence, every pasted object a copy: two red squares, two labels."""
    ds = ClipDataset([moving_square_sequence()], crop=64, mean=MEAN, std=STD, seed=2,
                     synthesis={"objects": 2, "multi_prob": 1.0, "duplicate_prob": 1.0, "min_pixels": 60})
    seen = 0
    for i in range(6):
        frames, _, sources = ds.sample(i)
        if len(sources) < 2:
            continue
        assert [s.kind for s in sources] == ["clip", "duplicate"]
        assert sources[0].sequence == sources[1].sequence and sources[0].object == sources[1].object == 1
        item = ds[i]
        first = item["masks"][0] > 0
        assert first[0].sum() >= 60 and first[1].sum() >= 60 and not (first[0] & first[1]).any()
        rgb = frames[0]
        if not np.allclose(rgb[..., 0], rgb[..., 1], atol=1):
            for slot in (0, 1):                         # both labels cover red square pixels
                assert redness(rgb)[first[slot]].mean() > 0.8, (i, slot)
        seen += 1
    assert seen >= 4


def test_a_distractor_is_pasted_as_background_and_is_nobody_s_target():
    """A single-object clip (objects: 1, the bundled recipe) with a distractor in every clip,
    always a copy of the target: two red squares in the frames, one labelled, the other
    background in every frame and outside the other-objects channel."""
    ds = ClipDataset([moving_square_sequence()], crop=64, mean=MEAN, std=STD, seed=3,
                     synthesis={"objects": 1, "distractor_prob": 1.0, "duplicate_prob": 1.0, "min_pixels": 60})
    seen = 0
    for i in range(8):
        frames, canvas, sources = ds.sample(i)
        assert sources[0].kind == "clip"
        if len(sources) < 2:
            continue
        assert [s.kind for s in sources] == ["clip", "distractor"] and sources[1].object == 1
        item = ds[i]
        assert np.array_equal(item["valid"], [1.0])
        assert set(np.unique(canvas)) <= {0, 1}
        if np.allclose(frames[0][..., 0], frames[0][..., 1], atol=1):
            continue
        red, target = redness(frames[0]), item["masks"][0, 0] > 0      # frame 0: both fully in view
        assert target.sum() >= 60 and red[target].mean() > 0.8, i
        assert (red & ~target).sum() >= 60, i                           # the copy: red and background
        for t in range(3):                                              # later frames may hide either
            assert not item["others"][t, 0][redness(frames[t]) & (item["masks"][t, 0] == 0)].any()
        seen += 1
    assert seen >= 4
    # without distractors the same clips have one red square
    plain = ClipDataset([moving_square_sequence()], crop=64, mean=MEAN, std=STD, seed=3,
                        synthesis={"objects": 1, "min_pixels": 60})
    frames, _, sources = plain.sample(0)
    assert len(sources) == 1 and (redness(frames[0]) & ~(plain[0]["masks"][0, 0] > 0)).sum() < 30


def test_later_pastes_occlude_earlier_objects():
    """Object 1 fills the crop's centre; a pasted red square lands on it: its pixels take the
    new label and the donor's colour in every frame, object 1 loses exactly those pixels."""
    crop = 64
    base = [np.full((crop, crop, 3), BLUE, np.uint8) for _ in range(3)]
    canvas = np.zeros((3, crop, crop), np.uint8)
    canvas[:, 4:60, 4:60] = 1
    canvas[:, :2, :] = REST
    donor = moving_square_sequence(n=3, size=12)
    rng = np.random.default_rng(0)
    frames = [f.copy() for f in base]
    new = canvas.copy()
    assert paste(rng, frames, new, 2, donor.frames, donor.masks, 1, (0.9, 1.1), (128, 128, 128), 20)
    for t in range(3):
        two = new[t] == 2
        assert 80 <= two.sum() <= 250                       # the 12² square, zoomed 0.9–1.1 and warped
        assert redness(frames[t].astype(float))[two].mean() > 0.9
        assert not redness(frames[t].astype(float))[~two].any()           # nothing else painted
        assert ((new[t] == 1) == ((canvas[t] == 1) & ~two)).all()         # object 1 lost what is covered
    # a paste that would hide an object of frame 0 below min_pixels changes nothing
    frames = [f.copy() for f in base]
    tiny = np.zeros((3, crop, crop), np.uint8)
    tiny[:, 30:34, 30:34] = 1
    before = tiny.copy()
    big = Sequence("big", [np.full((64, 64, 3), RED, np.uint8)] * 3, [np.ones((64, 64), np.uint8)] * 3, [1])
    assert not paste(rng, frames, tiny, 2, big.frames, big.masks, 1, (1.5, 1.5), (128, 128, 128), 10)
    assert np.array_equal(tiny, before) and all(np.array_equal(a, b) for a, b in zip(frames, base))


@pytest.mark.parametrize("options, message", [
    ({"objects": 0}, "objects must be an integer"),
    ({"objects": 2.5}, "objects must be an integer"),
    ({"multi_prob": 1.5}, "multi_prob must be a probability"),
    ({"duplicate_prob": -0.1}, "duplicate_prob must be a probability"),
    ({"distractor_prob": 2}, "distractor_prob must be a probability"),
    ({"zoom": [2.0, 1.0]}, "zoom must be"),
    ({"zoom": 1.0}, "zoom must be"),
])
def test_bad_synthesis_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        Synthesis(**options)


def test_synthesis_from_a_config():
    syn = Synthesis.from_config({"objects": 3, "synthesis": {"multi_prob": 0.25, "zoom": [0.4, 1.0]}})
    assert (syn.objects, syn.multi_prob, syn.zoom) == (3, 0.25, (0.4, 1.0))
    assert Synthesis.from_config({}).objects == 1
    with pytest.raises(ValueError, match="unknown synthesis option.*'paste'"):
        Synthesis.from_config({"synthesis": {"paste": 1}})
    rng = np.random.default_rng(0)
    assert {Synthesis(objects=3, multi_prob=1.0).count(rng) for _ in range(50)} == {2, 3}
    assert {Synthesis(objects=3, multi_prob=0.0).count(rng) for _ in range(20)} == {1}


def test_the_clip_zoom_scales_the_object_by_its_factor():
    """The 24-px square at zoom 1 spans ~24 crop px, at zoom 2 ~48 (± the 5 % per-frame scale)."""
    def widths(zoom):
        ds = ClipDataset([moving_square_sequence(size=24, height=160, width=200)], crop=96, mean=MEAN,
                         std=STD, seed=0, scale=(zoom, zoom))
        out = []
        for i in range(12):
            mask = ds[i]["masks"][0, 0]
            rows = np.flatnonzero(mask.any(1))
            if len(rows) and 0 < rows[0] and rows[-1] < mask.shape[0] - 1:   # not cut by the crop
                out.append(mask.sum() ** 0.5)
        return np.median(out)

    one, two = widths(1.0), widths(2.0)
    assert 20 <= one <= 28 and 1.8 <= two / one <= 2.2
