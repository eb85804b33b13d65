"""The ``datasets:`` list of a training config → one (mixture) dataset, streamed from disk.

Each entry: ``{reader: youtube_vos | davis2017 | static_folder, root: PATH, split: train
(davis2017), repeat: 1, skip_divisor: 1}``; ``repeat`` weighs the part as STCN's
ConcatDataset copies do, ``skip_divisor`` divides the max-skip schedule (5 for YouTube-VOS,
STCN train.py). A config without ``datasets`` keeps the in-RAM DAVIS path of vos-train."""
from __future__ import annotations

from ..datasets import ClipDataset
from ..static import StaticPseudoVideoDataset
from .davis2017 import read_davis2017
from .mixture import DividedSchedule, MixtureDataset
from .static_folders import read_static_folder
from .youtube import read_youtube_vos

READERS = {"youtube_vos": lambda e: read_youtube_vos(e["root"]),
           "davis2017": lambda e: read_davis2017(e["root"], e.get("split", "train")),
           "static_folder": lambda e: read_static_folder(e["root"])}


def build_datasets(entries, kind: str, common: dict, zoom, synthesis, schedule, static_options=None):
    """A :class:`MixtureDataset` over ``entries`` (the ``datasets`` list), every part a
    ClipDataset (``kind`` clips) or StaticPseudoVideoDataset (``static``) with ``common``'s
    crop/num_frames/mean/std/length/seed. Raises ValueError naming a bad entry (unknown reader,
    no root, repeat/skip_divisor not a positive number); readers raise LayoutError."""
    parts = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("reader") not in READERS or "root" not in entry:
            raise ValueError(f"datasets[{i}] must be {{reader: {' | '.join(READERS)}, root: PATH, ...}}, got {entry!r}")
        repeat, divisor = entry.get("repeat", 1), entry.get("skip_divisor", 1)
        if not (isinstance(repeat, (int, float)) and repeat > 0 and isinstance(divisor, int) and divisor >= 1):
            raise ValueError(f"datasets[{i}]: repeat must be > 0 and skip_divisor an integer ≥ 1, got "
                             f"{repeat!r}, {divisor!r}")
        seqs = READERS[entry["reader"]](entry)
        if kind == "static":
            part = StaticPseudoVideoDataset(seqs, **common, **(static_options or {}))
        else:
            part = ClipDataset(seqs, **common, scale=zoom, synthesis=synthesis,
                               skip_schedule=DividedSchedule(schedule, divisor) if divisor > 1 else schedule)
        parts.append((part, repeat))
    return MixtureDataset(parts, length=common["length"], seed=common["seed"])
