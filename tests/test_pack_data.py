"""training.pack_data: a budgeted copy of DAVIS training splits for a lent machine."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdk.davis import davis_sequence_dirs, read_split
from sdk.io import read_mask
from training.pack_data import QUALITIES, PackError, main, pack


def make_root(path: Path, sequences=("a", "b"), frames=4, size=(48, 64), seed=0) -> Path:
    """A DAVIS-layout folder: noisy RGB JPEG frames (they compress badly, so budgets bite) and
    palette PNG annotations with one square object."""
    rng = np.random.default_rng(seed)
    (path / "ImageSets").mkdir(parents=True)
    (path / "ImageSets" / "train.txt").write_text("\n".join(sequences) + "\n")
    for s in sequences:
        (path / "JPEGImages" / s).mkdir(parents=True)
        (path / "Annotations" / s).mkdir(parents=True)
        for i in range(frames):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                path / "JPEGImages" / s / f"{i:05d}.jpg", quality=98)
            label = np.zeros(size, np.uint8)
            label[8 + i:24 + i, 10:30] = 1
            note = Image.fromarray(label, "P")
            note.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
            note.save(path / "Annotations" / s / f"{i:05d}.png")
    return path


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and "ImageSets" not in p.parts)


def test_pack_keeps_layout_and_labels_exact(tmp_path):
    src = make_root(tmp_path / "src" / "davis-x")
    summary = pack([src], tmp_path / "out", max_mb=50, log=lambda s: None)
    dst = tmp_path / "out" / "davis-x"
    assert summary["quality"] == QUALITIES[0] and summary["frames"] == 8 and summary["sequences"] == 2
    assert read_split(dst, "train") == ["a", "b"]
    for s in ("a", "b"):
        fdir, adir = davis_sequence_dirs(dst, s)
        assert sorted(p.name for p in fdir.iterdir()) == [f"{i:05d}.jpg" for i in range(4)]
        for i in range(4):
            assert (adir / f"{i:05d}.png").read_bytes() == (src / "Annotations" / s / f"{i:05d}.png").read_bytes()
            assert read_mask(adir / f"{i:05d}.png").max() == 1
            frame = np.asarray(Image.open(fdir / f"{i:05d}.jpg"))
            assert frame.shape == (48, 64, 3)
    assert summary["bytes"] == size_of(dst)


def test_pack_lowers_quality_to_fit_the_budget(tmp_path):
    src = make_root(tmp_path / "src" / "davis-x", frames=6, size=(96, 128))
    full = pack([src], tmp_path / "full", max_mb=50, log=lambda s: None)["bytes"]
    lines = []
    budget = 0.6 * full / 2**20
    summary = pack([src], tmp_path / "out", max_mb=budget, log=lines.append)
    assert summary["quality"] < QUALITIES[0]
    assert summary["bytes"] <= budget * 2**20
    assert size_of(tmp_path / "out" / "davis-x") == summary["bytes"]
    assert any("over" in line for line in lines)


def test_pack_refuses_an_impossible_budget_and_writes_nothing(tmp_path):
    src = make_root(tmp_path / "src" / "davis-x")
    with pytest.raises(PackError, match="do not fit"):
        pack([src], tmp_path / "out", max_mb=0.001, log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_pack_names_a_missing_split_and_an_unreadable_frame(tmp_path):
    src = make_root(tmp_path / "src" / "davis-x")
    with pytest.raises(PackError, match="davis-x.*val.txt"):
        pack([src], tmp_path / "out", split="val", log=lambda s: None)
    bad = src / "JPEGImages" / "b" / "00002.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(PackError, match="00002.jpg"):
        pack([src], tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_main_reports_one_line_and_exit_status_2(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pack_data:") and "nowhere" in err[0]
    src = make_root(tmp_path / "src" / "davis-x")
    assert main(["--data", str(src), "--out", str(tmp_path / "out"), "--max-mb", "10"]) == 0
    assert (tmp_path / "out" / "davis-x" / "ImageSets" / "train.txt").is_file()


def test_default_budget_is_what_the_tree_leaves_of_the_carry(tmp_path):
    import subprocess

    from training.pack_data import CARRY_MIB, MARGIN_MIB, default_budget_mb, tree_bytes

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("/.data/\n")
    (repo / "model.bin").write_bytes(b"\0" * 3 * 2**20)
    (repo / ".data").mkdir()
    (repo / ".data" / "big.jpg").write_bytes(b"\0" * 2**20)          # ignored: not part of the tree
    assert tree_bytes(repo) == 3 * 2**20 + len("/.data/\n")
    assert default_budget_mb(repo) == round(CARRY_MIB - tree_bytes(repo) / 2**20 - MARGIN_MIB, 1)
    with pytest.raises(PackError, match="git"):
        tree_bytes(tmp_path / "not-a-repo-" / "x")
