"""Multi-object clips by pasting objects from other sequences and frames (STCN/XMem practice).

STCN main training segments two objects of a clip at once (``vos_dataset.py``: a target and
a second object, soft aggregation over both + background, each object's value encoded with
the other's mask); XMem raises this to up to three and, where a source has too few objects
(static images), makes multi-object samples by pasting objects of other samples, each with
its mask. DAVIS 2016 has one object per sequence, so without pasting the value encoder's
"other objects" channel would only ever be trained on ``schoolgirls``.

A clip gets ``count`` objects (1, or 2..``objects`` with probability ``multi_prob``): the base
clip's own objects first (those with ≥ ``min_pixels`` px in its first frame, in random order),
then pasted ones. A pasted object is, with probability ``duplicate_prob``, a copy of an object
already in the clip (same sequence and object id, its own frames, zoom, flip and place: a
look-alike the network must keep apart), otherwise an object of a random sequence. Its clip
(T frames of its own video, gaps drawn as for the base clip: its real motion) is warped with
its own zoom (``zoom``, crop px per source px), flip and per-frame affine
(:func:`training.augment.frame_matrices`, about the object's centroid) so that its first-frame
centroid lands in the central 70 % of the crop; the object's pixels (image and a new label)
then overwrite the clip in every frame: **later pastes occlude earlier objects**, whose masks
lose the covered pixels. A paste is kept only if afterwards every object of the clip, the new
one included, still has ≥ ``min_pixels`` px in frame 0 (up to ``tries`` draws per object;
after that the clip keeps fewer objects and the unused slots are marked invalid).

With probability ``distractor_prob`` a clip also gets one **distractor**: an object pasted
like the others (a copy of one of the clip's objects with probability ``duplicate_prob``,
else another sequence's) but labelled background in every frame and absent from the
other-objects channel — a salient thing that is nobody's target. Single-object clips get them
too (``objects: 1``), so the network learns to leave a look-alike or an unannotated object out
of the mask (issue 15, "distractors"): a core fine-tuned on multi-object clips without them
(``lite3-main``) takes a graffiti figure into ``bmx-trees``'s mask from frame ~36 on, 6800–9300
false-positive px a frame at 480p, where the single-object core has 600–2400.
It is pasted last, over the targets, and kept only if every target still has
≥ ``min_pixels`` px in frame 0 and the distractor has as many. (Our addition; STCN and XMem
paste targets only.) Measured 2026-12-02 (``training/README.md``): at 0.5, with copies of the
target among them, it cost ~6 J&F on DAVIS 2016 val (the dancers are given up), so it is off by
default.

Label canvas: uint8 [T,S,S], 0 background, 1..N the clip's objects in slot order, ``REST``
the base clip's objects that are not trained (they stay in the other-objects channel as
ground truth, as the single-object recipe does; void counts as background).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .augment import frame_matrices, warp_pair, zoom_range

REST = 254


@dataclass(frozen=True)
class Synthesis:
    """Options of multi-object clips (config keys ``objects`` and ``synthesis: {…}``).

    objects: N, objects trained jointly per clip (1 = the single-object recipe of the bundled
        model: no pasting, plain BCE); multi_prob: probability of a clip with 2..N objects;
        duplicate_prob: probability that a pasted object copies one already in the clip;
        distractor_prob: probability that a clip gets one pasted distractor (labelled
        background; 0 = none, and no random draw, so older runs reproduce);
        zoom: (lo, hi) scale of a pasted object's clip, crop px per source px; min_pixels:
        first-frame size (px) every object of a clip keeps; tries: draws per pasted object.
    Raises ValueError naming the bad option.
    """

    objects: int = 1
    multi_prob: float = 0.5
    duplicate_prob: float = 0.3
    distractor_prob: float = 0.0
    zoom: tuple[float, float] = (0.5, 1.2)
    min_pixels: int = 100
    tries: int = 5

    def __post_init__(self):
        for name in ("objects", "min_pixels", "tries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
        for name in ("multi_prob", "duplicate_prob", "distractor_prob"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        object.__setattr__(self, "zoom", zoom_range(self.zoom))

    @classmethod
    def from_config(cls, cfg: dict) -> Synthesis:
        """From a training config: ``objects`` (default 1) and the ``synthesis`` mapping."""
        extra = dict(cfg.get("synthesis") or {})
        known = {f.name for f in fields(cls)} - {"objects"}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ValueError(f"unknown synthesis option(s) {unknown}; known: {sorted(known)}")
        return cls(objects=cfg.get("objects", 1), **extra)

    def count(self, rng: np.random.Generator) -> int:
        """Objects of one clip: 1, or uniform in 2..objects with probability multi_prob (no
        draw at all when objects = 1)."""
        if self.objects == 1 or rng.random() >= self.multi_prob:
            return 1
        return int(rng.integers(2, self.objects + 1))

    def distractor(self, rng: np.random.Generator) -> bool:
        """Whether a clip gets a distractor (no draw at all when distractor_prob = 0)."""
        return self.distractor_prob > 0 and rng.random() < self.distractor_prob


@dataclass(frozen=True)
class Source:
    """Where an object of a clip comes from: ``kind`` "clip" (the base clip's own object),
    "pasted" (another sequence's), "duplicate" (a copy of an object already in the clip) or
    "distractor" (pasted and labelled background; not a slot);
    ``sequence`` index into the dataset's sequences, ``object`` its id there."""

    kind: str
    sequence: int
    object: int


def centroid(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) mean px of a non-empty bool [H,W] mask."""
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def paste(rng: np.random.Generator, frames: list, canvas: np.ndarray, slot: int, donor_frames: list,
          donor_labels: list, donor_object: int, zoom: tuple[float, float], fill, min_pixels: int,
          distractor: bool = False) -> bool:
    """Paste object ``donor_object`` of a donor clip onto a clip, in place, as label ``slot``
    (or, with ``distractor``, as background over the objects 1..slot).

    frames: the clip's T RGB uint8 [S,S,3] (modified), canvas uint8 [T,S,S] (modified; slots
    1..slot−1 hold the objects so far, 1..slot for a distractor); donor_frames RGB uint8
    [H,W,3] and donor_labels uint8 [H,W] (T each, the object present in the first); zoom: range
    of the donor's zoom; fill: the border colour (RGB 0..255). Geometry in the module
    docstring. Returns False — and changes nothing — when afterwards an object 1..slot (or the
    distractor) would have < ``min_pixels`` px in frame 0.
    """
    crop = canvas.shape[-1]
    pivot = centroid(donor_labels[0] == donor_object)
    f = rng.uniform(*zoom)
    target = rng.uniform(0.15, 0.85, 2) * crop
    flip = bool(rng.random() < 0.5)
    mats = frame_matrices(rng, len(frames), crop, f, (f * pivot[0] - target[0], f * pivot[1] - target[1]), pivot)
    warped = [warp_pair(im, (lb == donor_object).astype(np.uint8), m, crop, fill, flip)
              for im, lb, m in zip(donor_frames, donor_labels, mats)]
    if distractor and np.count_nonzero(warped[0][1]) < min_pixels:
        return False
    label = 0 if distractor else slot
    first = canvas[0].copy()
    first[warped[0][1] > 0] = label
    if np.bincount(first.ravel(), minlength=slot + 1)[1:slot + 1].min() < min_pixels:
        return False
    for t, (im, mk) in enumerate(warped):
        on = mk > 0
        frames[t][on] = im[on]
        canvas[t][on] = label
    return True
