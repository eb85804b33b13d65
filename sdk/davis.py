"""The DAVIS folder layout (no torch): split files and per-sequence frame/annotation folders.

Both layouts are accepted: ``<root>/JPEGImages/<seq>/`` (as in ``../shared/data``) and the
official ``<root>/JPEGImages/480p/<seq>/`` (same for ``Annotations``).
"""
from __future__ import annotations

from pathlib import Path

from .errors import InputError, VideoReadError


def read_split(root, split: str) -> list[str]:
    """Sequence names listed in ``<root>/ImageSets/<split>.txt`` (blank lines skipped).

    Raises VideoReadError naming the file when it is missing or lists nothing.
    """
    path = Path(root) / "ImageSets" / f"{split}.txt"
    if not path.is_file():
        raise VideoReadError(f"split file {path} not found (expected DAVIS layout: "
                             f"<root>/ImageSets/<split>.txt)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise VideoReadError(f"split file {path} lists no sequence")
    return names


def split_subset(root, split: str, sequences=None) -> list[str]:
    """The sequences of ``<root>/ImageSets/<split>.txt`` (:func:`read_split`), or the given
    subset of them, in the order given. Raises :class:`~sdk.errors.InputError` naming the
    ones the split lacks (and VideoReadError as :func:`read_split`)."""
    names = read_split(root, split)
    if not sequences:
        return names
    unknown = sorted(set(sequences) - set(names))
    if unknown:
        raise InputError(f"not in split {split!r} of {root}: {', '.join(unknown)}")
    return list(sequences)


def davis_sequence_dirs(root, sequence: str) -> tuple[Path, Path]:
    """(frames folder, annotations folder) of ``sequence`` under ``root``.

    Raises VideoReadError naming the folders tried when the frames folder does not exist.
    """
    root = Path(root)
    tried = []
    for sub in ("", "480p"):
        fdir = root / "JPEGImages" / sub / sequence
        tried.append(str(fdir))
        if fdir.is_dir():
            return fdir, root / "Annotations" / sub / sequence
    raise VideoReadError(f"no frames folder for sequence {sequence!r}: tried {', '.join(tried)}")
