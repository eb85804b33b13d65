"""A weighted mixture of clip datasets in one run (STCN main training: DAVIS 2017 repeated 5×
against YouTube-VOS — STCN train.py, ``train_dataset = ConcatDataset([davis_dataset]*5 +
[yv_dataset])``, with YouTube-VOS at ``max_skip//5`` since its frames are every 5th)."""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset


class DividedSchedule:
    """Picklable item → max(1, schedule(item) // divisor): YouTube-VOS's max skip in listed
    (every-5th) frames from the schedule's video frames (STCN train.py ``max_skip//5``)."""

    def __init__(self, schedule, divisor: int):
        self.schedule, self.divisor = schedule, divisor

    def __call__(self, item: int) -> int:
        return max(1, self.schedule(item) // self.divisor)


class MixtureDataset(Dataset):
    """Item ``i`` comes from part k with probability ∝ ``repeat_k · len(part_k.seqs)`` (what a
    ConcatDataset of ``repeat_k`` copies of per-video datasets gives), chosen by a generator
    seeded (seed, i), then is ``part_k[i]``: deterministic per (seed, item), as ClipDataset.

    Args: parts: list of (dataset with ``seqs`` and ``__getitem__``, repeat > 0); length, seed.
    Raises ValueError for no parts or a repeat ≤ 0."""

    def __init__(self, parts, length: int, seed: int = 0):
        if not parts:
            raise ValueError("a mixture needs at least one dataset")
        if any(r <= 0 for _, r in parts):
            raise ValueError(f"mixture repeats must be > 0, got {[r for _, r in parts]}")
        self.parts = [p for p, _ in parts]
        w = np.array([r * len(p.seqs) for p, r in parts], np.float64)
        self.weights = w / w.sum()
        self.length, self.seed = length, seed

    def __len__(self):
        return self.length

    def part_of(self, item: int) -> int:
        """Index of the part item ``item`` is drawn from."""
        rng = np.random.default_rng((self.seed, item, 7))
        return int(rng.choice(len(self.parts), p=self.weights))

    def __getitem__(self, item):
        return self.parts[self.part_of(item)][item]
