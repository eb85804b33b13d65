"""DAVIS-layout video datasets and clip sampling for STCN-style training.

Layout (both accepted): ``<root>/JPEGImages/<seq>/*.jpg`` + ``<root>/Annotations/<seq>/*.png``
(as in ``../shared/data``) or the official ``<root>/JPEGImages/480p/<seq>/``. Sequences are
listed in ``<root>/ImageSets/<split>.txt``; annotations are palette PNGs whose pixel value is
the object id (0 = background, 255 = void).

Clip sampling follows STCN/MiVOS main training: ``num_frames`` ordered frames, consecutive
gaps of at most ``max_skip`` frames (a schedule grows it during training), time randomly
reversed, the trained objects present in the first frame (one, or up to ``objects`` with
multi-object synthesis, :mod:`training.synthesis`); augmentation (:mod:`training.augment`) =
one random scale/crop/flip and colour jitter per clip plus a small per-frame affine, image and
mask with the same constant border.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from sdk.davis import davis_sequence_dirs, read_split
from sdk.io import iter_frames, read_mask

from .augment import DEFAULT_ZOOM, jitter_colour, warp_clip
from .synthesis import REST, Source, Synthesis, paste


@dataclass
class Sequence:
    name: str
    frames: list        # RGB uint8 [H,W,3] each
    masks: list         # uint8 [H,W] label maps
    objects: list       # object ids present somewhere in the sequence


def load_sequences(root, split: str) -> list[Sequence]:
    """Decode every frame and mask of ``split`` into memory (the DAVIS train splits here are
    ~50 MB of JPEG, ~0.7 GB decoded at 240p). Raises FileNotFoundError naming what is missing."""
    seqs = []
    for name in read_split(root, split):
        fdir, adir = davis_sequence_dirs(root, name)
        frames, masks = [], []
        for stem, rgb in iter_frames(fdir):
            if (adir / f"{stem}.png").is_file():
                frames.append(rgb)
                masks.append(read_mask(adir / f"{stem}.png"))
        if len(frames) < 2:
            raise FileNotFoundError(f"sequence {name!r} in {root} has fewer than 2 annotated frames")
        objects = sorted(set(np.unique(np.stack(masks)).tolist()) - {0, 255})
        seqs.append(Sequence(name, frames, masks, objects))
    return seqs


class ClipDataset(Dataset):
    """Random T-frame clips (STCN recipe) from in-memory sequences, 1..N objects each.

    Args:
        sequences: :class:`Sequence` list (:func:`load_sequences`).
        crop: output side S in px; num_frames: T; max_skip: largest gap between consecutive
            frames (may be changed between items: the curriculum), unless ``skip_schedule``
            (a picklable callable item → max_skip, for DataLoader workers) is given.
        mean, std: normalisation (as ``net.config``), in [0,1] units.
        scale: the base clip's zoom range; length: ``len(dataset)``; seed: items are
            deterministic per (seed, item).
        synthesis: :class:`training.synthesis.Synthesis` (or its fields as a dict); default
            one object per clip.

    ``__getitem__`` → dict of float32 arrays: ``frames`` [T,3,S,S] normalised, ``masks``
    [T,N,S,S] ∈ {0,1} the N = ``synthesis.objects`` trained objects (disjoint; an unused slot
    is all 0), ``others`` [T,1,S,S] ∈ {0,1} the union of the clip's other (untrained) objects,
    ``valid`` [N] 1 for the slots that hold an object (STCN's ``selector``).
    Raises ValueError for bad synthesis options.
    """

    def __init__(self, sequences, crop=224, num_frames=3, max_skip=5, mean=(0.5,) * 3,
                 std=(0.5,) * 3, scale=DEFAULT_ZOOM, length=100_000, seed=0, synthesis=None, skip_schedule=None):
        self.seqs = sequences
        self.crop, self.num_frames, self.max_skip = crop, num_frames, max_skip
        self.mean = np.asarray(mean, np.float32) * 255
        self.std = np.asarray(std, np.float32) * 255
        self.scale, self.length, self.seed = scale, length, seed
        self.synthesis = synthesis if isinstance(synthesis, Synthesis) else Synthesis(**(synthesis or {}))
        self.skip_schedule = skip_schedule

    def __len__(self):
        return self.length

    def _frame_indices(self, rng, n, max_skip):
        skip = min(max_skip, max(1, (n - 1) // (self.num_frames - 1)))
        idx = [int(rng.integers(0, n))]
        for _ in range(self.num_frames - 1):
            idx.append(idx[-1] + int(rng.integers(1, skip + 1)))
        shift = max(0, idx[-1] - (n - 1))
        idx = [i - shift for i in idx]
        return idx[::-1] if rng.random() < 0.5 else idx

    def _present(self, labels0) -> list[int]:
        counts = np.bincount(labels0.ravel(), minlength=256)
        counts[[0, 255]] = 0
        return np.flatnonzero(counts >= self.synthesis.min_pixels).tolist()

    def sample(self, item) -> tuple[list[np.ndarray], np.ndarray, list[Source]]:
        """The clip of ``item`` before normalisation → (frames: T float32 [S,S,3] RGB in
        0..255, canvas: uint8 [T,S,S] label slots as :mod:`training.synthesis`, sources: one
        :class:`~training.synthesis.Source` per used slot, then the distractor's if one was
        pasted)."""
        syn = self.synthesis
        rng = np.random.default_rng((self.seed, item))
        max_skip = self.skip_schedule(item) if self.skip_schedule else self.max_skip
        fill = self.mean
        present = []
        for _ in range(20):
            s = int(rng.integers(len(self.seqs)))
            seq = self.seqs[s]
            idx = self._frame_indices(rng, len(seq.frames), max_skip)
            frames, labels = warp_clip(rng, [seq.frames[i] for i in idx], [seq.masks[i] for i in idx],
                                       self.crop, self.scale, fill)
            present = self._present(labels[0])
            if present:
                break
        count = syn.count(rng)
        chosen = [present[i] for i in rng.permutation(len(present))[:count]]
        labels = np.stack(labels)
        canvas = np.where((labels != 0) & (labels != 255), REST, 0).astype(np.uint8)
        for slot, obj in enumerate(chosen, 1):
            canvas[labels == obj] = slot
        sources = [Source("clip", s, obj) for obj in chosen]
        while len(sources) < count:
            pasted = self._paste_one(rng, frames, canvas, sources, max_skip, fill)
            if not pasted:
                break           # no paste fitted: the clip keeps fewer objects
            sources.append(pasted)
        if sources and syn.distractor(rng):
            distractor = self._paste_one(rng, frames, canvas, sources, max_skip, fill, distractor=True)
            if distractor:
                sources.append(distractor)
        return jitter_colour(rng, frames), canvas, sources

    def _paste_one(self, rng, frames, canvas, sources, max_skip, fill, distractor=False) -> Source | None:
        """Paste one object onto the clip (in place; :func:`training.synthesis.paste`): a copy
        of one of ``sources`` (the clip's slots) with probability ``duplicate_prob``, else an
        object of a random sequence; as the next slot, or as background with ``distractor``.
        Up to ``tries`` draws → its :class:`~training.synthesis.Source`, or None if none fitted."""
        syn = self.synthesis
        for _ in range(syn.tries):
            if sources and rng.random() < syn.duplicate_prob:
                copied = sources[int(rng.integers(len(sources)))]
                d, obj = copied.sequence, copied.object
                donor = self.seqs[d]
                idx = self._frame_indices(rng, len(donor.frames), max_skip)
                if not (donor.masks[idx[0]] == obj).any():
                    continue
            else:
                d = int(rng.integers(len(self.seqs)))
                donor = self.seqs[d]
                idx = self._frame_indices(rng, len(donor.frames), max_skip)
                candidates = self._present(donor.masks[idx[0]])
                if not candidates:
                    continue
                obj = candidates[int(rng.integers(len(candidates)))]
            if paste(rng, frames, canvas, len(sources) + (0 if distractor else 1), [donor.frames[i] for i in idx],
                     [donor.masks[i] for i in idx], obj, syn.zoom, fill, syn.min_pixels, distractor=distractor):
                if distractor:
                    return Source("distractor", d, obj)
                return Source("duplicate" if any((x.sequence, x.object) == (d, obj) for x in sources) else "pasted",
                              d, obj)
        return None

    def __getitem__(self, item):
        frames, canvas, sources = self.sample(item)
        n = self.synthesis.objects
        masks = (canvas[:, None] == np.arange(1, n + 1, dtype=np.uint8)[None, :, None, None]).astype(np.float32)
        others = (canvas == REST).astype(np.float32)[:, None]
        slots = sum(source.kind != "distractor" for source in sources)
        valid = (np.arange(n) < slots).astype(np.float32)
        x = (np.stack(frames) - self.mean) / self.std
        return {"frames": x.transpose(0, 3, 1, 2).astype(np.float32), "masks": masks, "others": others,
                "valid": valid}
