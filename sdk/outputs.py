"""Output folders that never mix runs: what a vos-segment run writes, and only that, is
recorded so that a later run can refuse the folder or replace exactly those files.

The record is ``<folder>/.vosedge-segment``: a first line of JSON (``{"format":
"vosedge-segment-record", "version": 1, "started": ...}``), then one file name per line,
appended (and flushed) as each file is written, so an interrupted or failed run is recorded
up to its last mask.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

from .errors import OutputError

RECORD = ".vosedge-segment"
FORMAT = "vosedge-segment-record"


def recorded_files(folder: Path) -> list[str] | None:
    """Names of the files a previous run recorded in ``folder`` (None: no record there).

    Raises :class:`~sdk.errors.OutputError` if the record is unreadable or not ours."""
    path = folder / RECORD
    if not path.is_file():
        return None
    try:
        header, *names = path.read_text(encoding="utf-8").splitlines()
        if json.loads(header).get("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT!r}")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise OutputError(f"{path} is not a vos-segment record ({exc}); remove it or choose another --out") from exc
    return [n for n in names if n and "/" not in n and "\\" not in n and n not in (".", "..")]


class OutputFolder:
    """A folder a run writes its files into, opened with :meth:`prepare` and filled with
    :meth:`add` (call it after each file is written).

    ``prepare`` refuses (:class:`~sdk.errors.OutputError`) a folder that holds anything unless
    ``overwrite``; with ``overwrite`` it removes the files the previous run recorded (and its
    record), and refuses if a file it did not write is still there under a name in
    ``planned`` (the names this run will write), since replacing it would lose a file nobody
    asked us to touch. Files of ``keep`` (e.g. the overlay video the same run replaces) are
    never counted as foreign. A folder that holds nothing but a record (a run that failed
    before writing a file, e.g. on a refused mask, or whose files were deleted since) counts
    as empty: its record is replaced, with or without ``overwrite``, since nothing is lost.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.written = 0                    # files recorded (a count: a 100 000-frame run holds no list)
        self.masks = 0                      # of which .png masks
        self._record = None

    def prepare(self, overwrite: bool, planned: list[str] | None = None, command: str | None = None,
                check_only: bool = False) -> int:
        """Check and clear the folder, start the record → number of earlier files removed.
        ``check_only``: raise what would be raised, remove and create nothing (→ 0)."""
        folder = self.folder
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"--out {folder} exists and is not a folder")
        present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        removed = 0
        if present == [RECORD] and recorded_files(folder) is not None:
            present = []                    # only the record of a run that left no file: nothing to lose
        if present:
            previous = recorded_files(folder)
            if not overwrite:
                ours = sorted(set(present) & set(previous or []))
                others = [name for name in present if name not in ours and name != RECORD]
                what = " and ".join(
                    ([f"{len(ours)} file(s) of an earlier vos-segment run"] if ours else [])
                    + ([f"{len(others)} {'other ' if ours else ''}file(s) ({', '.join(others[:3])}"
                        f"{', …' if len(others) > 3 else ''})"] if others else [])) or f"{', '.join(present)}"
                raise OutputError(f"--out {folder} is not empty: it holds {what}; pass --overwrite to replace "
                                  "what vos-segment wrote there, or choose an empty folder")
            foreign = set(present) - set(previous or []) - {RECORD}
            clash = sorted(foreign & set(planned or []))
            if clash:
                raise OutputError(f"--out {folder} holds {', '.join(clash[:3])}{', …' if len(clash) > 3 else ''}, "
                                  "which vos-segment did not write and this run would replace; move it or "
                                  "choose another --out")
            if check_only:
                return 0
            for name in previous or []:
                path = folder / name
                if path.is_file():
                    path.unlink()
                    removed += 1
            (folder / RECORD).unlink(missing_ok=True)
        if check_only:
            return 0
        folder.mkdir(parents=True, exist_ok=True)
        self._record = open(folder / RECORD, "w", encoding="utf-8")
        header = {"format": FORMAT, "version": 1, "command": command,
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        self._record.write(json.dumps(header) + "\n")
        self._record.flush()
        return removed

    def add(self, name: str) -> None:
        """Record that ``name`` (a file directly in the folder) has been written."""
        self.written += 1
        self.masks += name.endswith(".png")
        self._record.write(name + "\n")
        self._record.flush()

    def close(self) -> None:
        """Close the record (idempotent)."""
        if self._record is not None:
            self._record.close()
            self._record = None

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
