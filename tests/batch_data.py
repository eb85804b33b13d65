"""What the batch tests (local pool and Ray) share: a small DAVIS-layout copy of three val
sequences of ``../shared/data/davis2016-240p`` (their first 6 frames), the reference masks of
serial ``vos-segment`` runs on them, a CSV listing them, and helpers to compare outputs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdk import cli

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis2016-240p"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/davis2016-240p is absent")
SEQUENCES = ("blackswan", "cows", "camel")
FRAMES = 6
RESOLUTION = "64"                       # the bundled model's smallest internal resolution: fast


def make_davis(root: Path) -> Path:
    """``root`` as a DAVIS layout (JPEGImages/, Annotations/, ImageSets/val.txt) of the first
    FRAMES frames of SEQUENCES (copies, in the test's temporary folder)."""
    for name in SEQUENCES:
        for kind, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
            (root / kind / name).mkdir(parents=True)
            for i in range(FRAMES):
                shutil.copy(DATA / kind / name / f"{i:05d}.{ext}", root / kind / name / f"{i:05d}.{ext}")
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "val.txt").write_text("\n".join(SEQUENCES) + "\n")
    return root


def serial_reference(root: Path, out: Path) -> dict[str, dict[str, bytes]]:
    """Serial ``vos-segment`` on each sequence of ``root`` → {sequence: {file: bytes}}."""
    masks = {}
    for name in SEQUENCES:
        args = ["--frames", root / "JPEGImages" / name, "--mask", root / "Annotations" / name / "00000.png",
                "--out", out / name, "--resolution", RESOLUTION, "--providers", "cpu"]
        result = CliRunner().invoke(cli.main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        masks[name] = read_masks(out / name)
    return masks


def read_masks(folder: Path) -> dict[str, bytes]:
    """{mask file name: its bytes} of an output folder."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.png"))}


def write_csv(path: Path, rows: list[tuple]) -> Path:
    """A batch CSV (header frames,mask,out[,method]) of ``rows``."""
    header = "frames,mask,out" + (",method" if any(len(r) > 3 for r in rows) else "")
    path.write_text(header + "\n" + "".join(",".join(str(c) for c in r) + "\n" for r in rows))
    return path


def good_rows(root: Path, out: Path, names=SEQUENCES) -> list[tuple]:
    return [(root / "JPEGImages" / n, root / "Annotations" / n / "00000.png", out / n) for n in names]


def run_batch(args: list, env: dict | None = None):
    """``vos-segment --batch ...`` in this process → (exit code, output, summary or None)."""
    args = [str(a) for a in args]
    result = CliRunner().invoke(cli.main, ["--resolution", RESOLUTION, "--providers", "cpu", *args], env=env)
    summary = Path(args[args.index("--summary") + 1]) if "--summary" in args else None
    data = json.loads(summary.read_text()) if summary and summary.is_file() else None
    return result.exit_code, result.output, data


def record_masks(folder: Path) -> list[str]:
    """The mask names the folder's record lists (each line after the header)."""
    return [line for line in (Path(folder) / ".vosedge-segment").read_text().splitlines()[1:] if line]


def without_speed(report: dict) -> dict:
    """A vos-eval report without what depends on timing or on the processes (fps, machine)."""
    out = {k: v for k, v in report.items() if k not in ("fps", "machine")}
    out["per_sequence"] = {s: {k: v for k, v in r.items() if k != "fps"} for s, r in report["per_sequence"].items()}
    return out


def race_task(context, job):
    """A run_local task whose video "a" completes its output (its marker written) and then
    loses its worker before the result is returned, which breaks the pool, as when a worker
    dies just after finishing; on the retry "a" finds its output complete ("skipped").
    Video "b" is an ordinary one."""
    import os
    import time

    folder, name = Path(job[0]), job[1]
    done = folder / "a-done"
    if name == "a":
        if done.exists():
            return {"name": name, "status": "skipped", "frames": 3}
        done.write_text("done")
        time.sleep(0.5)                 # the worker's "running" event reaches the driver first
        os._exit(1)
    return {"name": name, "status": "ok", "frames": 3}
