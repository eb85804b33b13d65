"""Pack training splits into a small copy for a lent machine (``python3 -m training.pack_data``).

A device machine receives the working tree and the paths named in ``carry`` (64 MiB in all),
not ``../shared/data``. The 240p training data — ``davis2016-240p`` train (30 sequences, 2079
frames, 44 MB of JPEG) and ``davis2017-240p`` train (``schoolgirls``) — does not fit beside
the tree as it is. This writes the same DAVIS layout under ``--out`` (default ``.data/``,
ignored by git) with the frames re-encoded as JPEG at the highest quality of
:data:`QUALITIES` whose total fits ``--max-mb`` (default: what the tree leaves of the 64 MiB,
:func:`default_budget_mb`); the annotations (palette PNGs) and the split
file are copied byte for byte, so labels are exact and only the images carry JPEG loss. Then:

    training/gpu_run.sh 540 gpu-out runs/gpu -- --config lite --objects 3 \\
        --data .data/davis2016-240p --data .data/davis2017-240p

with ``carry: [".data", "runs/gpu"]``.

Raises (as one line from ``main``, exit status 2) :class:`PackError` naming the root, split or
frame that cannot be read, or the budget no quality meets.
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path

from PIL import Image

from sdk.davis import davis_sequence_dirs, read_split
from sdk.errors import VideoReadError, VosEdgeError
from sdk.io import frame_files, read_frame

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_ROOTS = (DATA / "davis2016-240p", DATA / "davis2017-240p")
CARRY_MIB = 64          # what a device command carries: the working tree + the carried paths
MARGIN_MIB = 2          # for files written between packing and the run (logs, a results JSON)
QUALITIES = (95, 90, 85, 80, 75, 70, 65, 60, 55, 50, 45, 40)


class PackError(RuntimeError):
    """A root, split or frame that cannot be packed, or a budget no JPEG quality meets."""


def tree_bytes(repo: Path) -> int:
    """Bytes of the files a device command carries as the working tree of ``repo``: tracked
    files and untracked ones git does not ignore (``git ls-files -co --exclude-standard``).

    Raises :class:`PackError` when git cannot list them (not a checkout, no git)."""
    import subprocess

    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo,
                                capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError) as exc:
        raise PackError(f"cannot list the working tree of {repo} with git ({exc}); give --max-mb") from None
    return sum((repo / name.decode()).stat().st_size for name in listed
               if name and (repo / name.decode()).is_file())


def default_budget_mb(repo: Path = Path(__file__).resolve().parents[1]) -> float:
    """MiB left for packed data: :data:`CARRY_MIB` − the tree (:func:`tree_bytes`) −
    :data:`MARGIN_MIB`. Raises :class:`PackError` when nothing is left or git fails."""
    left = CARRY_MIB - tree_bytes(repo) / 2**20 - MARGIN_MIB
    if left <= 0:
        raise PackError(f"the working tree of {repo} leaves no room in the {CARRY_MIB} MiB a device command carries")
    return round(left, 1)


def _sequences(root: Path, split: str) -> list[tuple[str, list[Path], list[Path]]]:
    """(name, frame files, annotation files) of every sequence of ``split`` under ``root``; the
    frames are the sdk's (:func:`sdk.io.frame_files`: natural order, hidden files and stem
    clashes refused), so each packed ``<stem>.jpg`` names one source frame."""
    try:
        out = []
        for name in read_split(root, split):
            fdir, adir = davis_sequence_dirs(root, name)
            notes = sorted(adir.glob("*.png")) if adir.is_dir() else []
            if not notes:
                raise PackError(f"{adir}: no annotation PNGs")
            out.append((name, frame_files(fdir)[0], notes))
        return out
    except VideoReadError as exc:
        raise PackError(f"{root}: {exc}") from None


def _encode(path: Path, quality: int) -> bytes:
    """JPEG bytes of frame ``path`` at ``quality``: decoded as training reads it
    (:func:`sdk.io.read_frame`, strict, EXIF orientation applied), encoded by Pillow (4:2:0,
    optimised tables)."""
    try:
        rgb = read_frame(path)
    except VosEdgeError as exc:
        raise PackError(f"cannot read frame {path}: {exc}") from None
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def pack(roots, out, split: str = "train", max_mb: float | None = None, log=print) -> dict:
    """Write ``split`` of each DAVIS-layout root of ``roots`` to ``out/<root name>/`` (frames as
    JPEG at the highest quality of :data:`QUALITIES` with the total of all roots' frames and
    annotations ≤ ``max_mb`` MiB, default :func:`default_budget_mb`; annotations and
    ``ImageSets/<split>.txt`` copied) → {"quality",
    "bytes", "frames", "sequences", "roots"}. ``out/<root name>`` is replaced; nothing is written
    when the budget cannot be met or a file cannot be read.

    Raises :class:`PackError` (see the module docstring); ValueError for ``max_mb`` ≤ 0.
    """
    if max_mb is None:
        max_mb = default_budget_mb()
    if max_mb <= 0:
        raise ValueError(f"max_mb must be > 0, got {max_mb}")
    roots = [Path(r) for r in roots]
    names = [r.name for r in roots]
    if len(set(names)) != len(names):
        raise PackError(f"two roots share a folder name: {', '.join(map(str, roots))}")
    listing = {r: _sequences(r, split) for r in roots}
    notes_bytes = sum(p.stat().st_size for seqs in listing.values() for _, _, notes in seqs for p in notes)
    frames = [f for seqs in listing.values() for _, fs, _ in seqs for f in fs]
    budget = int(max_mb * 2**20)

    def attempt(quality):
        """{frame: JPEG bytes} and the total at ``quality``, or None as soon as it is over budget."""
        encoded, total = {}, notes_bytes
        for f in frames:
            encoded[f] = _encode(f, quality)
            total += len(encoded[f])
            if total > budget:
                log(f"quality {quality}: over {max_mb} MiB")
                return None
        return encoded, total

    # binary search for the highest quality that fits (JPEG size falls with quality)
    found, lo, hi = None, 0, len(QUALITIES) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        result = attempt(QUALITIES[mid])
        if result is None:
            lo = mid + 1
        else:
            found, hi = (QUALITIES[mid], *result), mid - 1
    if found is None:
        raise PackError(f"{len(frames)} frames do not fit {max_mb} MiB even at JPEG quality {QUALITIES[-1]} "
                        f"(annotations alone: {notes_bytes / 2**20:.1f} MiB); raise --max-mb or pack fewer roots")
    quality, encoded, total = found
    out = Path(out)
    for root, seqs in listing.items():
        dst = out / root.name
        if dst.exists():
            shutil.rmtree(dst)
        (dst / "ImageSets").mkdir(parents=True)
        shutil.copyfile(root / "ImageSets" / f"{split}.txt", dst / "ImageSets" / f"{split}.txt")
        for name, fs, notes in seqs:
            (dst / "JPEGImages" / name).mkdir(parents=True)
            (dst / "Annotations" / name).mkdir(parents=True)
            for f in fs:
                (dst / "JPEGImages" / name / f"{f.stem}.jpg").write_bytes(encoded[f])
            for p in notes:
                shutil.copyfile(p, dst / "Annotations" / name / p.name)
    summary = {"quality": quality, "bytes": total, "frames": len(frames),
               "sequences": sum(len(s) for s in listing.values()), "roots": [str(out / n) for n in names]}
    log(f"packed {summary['sequences']} sequences, {len(frames)} frames at JPEG quality {quality}: "
        f"{total / 2**20:.1f} MiB in {', '.join(summary['roots'])}")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m training.pack_data",
                                     description=__doc__.split("\n\n")[0],
                                     epilog="Example: python3 -m training.pack_data --out .data")
    parser.add_argument("--data", action="append", type=Path, metavar="ROOT",
                        help="DAVIS-layout root (repeatable). Default: ../shared/data/davis2016-240p and davis2017-240p")
    parser.add_argument("--split", default="train", help="split file ImageSets/<split>.txt (default train)")
    parser.add_argument("--out", type=Path, default=Path(".data"), help="where the copies go (default .data)")
    parser.add_argument("--max-mb", type=float, default=None,
                        help=f"budget for all packed files in MiB (default: the {CARRY_MIB} MiB a device command "
                             f"carries minus this checkout's tree minus {MARGIN_MIB})")
    args = parser.parse_args(argv)
    try:
        pack(args.data or DEFAULT_ROOTS, args.out, args.split, args.max_mb)
    except (PackError, ValueError) as exc:
        print(f"pack_data: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
