"""vos-eval on a tiny synthetic DAVIS-layout data set with injected segmenters,
whose scores follow from the metric; then the real sdk on real DAVIS frames (vos-bench:
tests/test_bench.py)."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fake_segmenter import CopyFirstSegmenter, OracleSegmenter
from PIL import Image

from benchmarks import eval as vos_eval
from benchmarks.common import prompts
from sdk import cli
from sdk.demo import make_clip
from sdk.io import read_mask, write_mask
from sdk.metrics import evaluate_sequence, summarize

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_dataset(root: Path, layout: str = "") -> dict[str, list[np.ndarray]]:
    """Two 6-frame 48x64 sequences in DAVIS layout (`layout` = '' or '480p'): 'both' shows
    objects 1 and 2 from the first frame, 'late' shows object 2 from frame 2 on."""
    gts = {}
    for seed, name in enumerate(("both", "late")):
        rgb, labels = make_clip(frames=6, height=48, width=64, seed=seed)
        if name == "late":
            labels[:2][labels[:2] == 2] = 0
        for i, (frame, gt) in enumerate(zip(rgb, labels)):
            (root / "JPEGImages" / layout / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(root / "JPEGImages" / layout / name / f"{i:05d}.jpg")
            write_mask(root / "Annotations" / layout / name / f"{i:05d}.png", gt)
        gts[name] = list(labels)
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "val.txt").write_text("both\nlate\n")
    return gts


def run_eval(tmp_path, segmenter, monkeypatch, *extra):
    monkeypatch.setattr(cli, "make_segmenter", lambda *options: segmenter)
    args = ["--data", tmp_path / "data", "--split", "val", "--out", tmp_path / "out",
            "--json", tmp_path / "r.json", *extra]
    result = CliRunner().invoke(vos_eval.main, [str(a) for a in args])
    report = json.loads((tmp_path / "r.json").read_text()) if result.exit_code == 0 else None
    return result, report


@pytest.mark.parametrize("layout", ["", "480p"])
def test_oracle_scores_100_and_late_objects_are_prompted(tmp_path, monkeypatch, layout):
    gts = make_dataset(tmp_path / "data", layout)
    oracle = OracleSegmenter(gts["both"] + gts["late"])
    result, report = run_eval(tmp_path, oracle, monkeypatch)
    assert result.exit_code == 0, result.output
    assert report["J&F"] == report["J"] == report["F"] == 100.0
    assert report["per_sequence"]["late"]["J&F"] == 100.0 and report["frames"] == 12
    # 'late': object 2 is given on frame 2, alone; no other prompts
    late = oracle.given[6:]
    assert late[1] is None and late[3:] == [None] * 3
    assert set(np.unique(late[0])) == {0, 1} and set(np.unique(late[2])) == {0, 2}
    assert np.array_equal(read_mask(tmp_path / "out" / "late" / "00003.png"), gts["late"][3])


def test_copying_the_first_mask_scores_what_the_metric_gives(tmp_path, monkeypatch):
    gts = make_dataset(tmp_path / "data")
    result, report = run_eval(tmp_path, CopyFirstSegmenter(), monkeypatch, "--sequences", "both")
    assert result.exit_code == 0, result.output
    both = gts["both"]
    expected = summarize(evaluate_sequence([both[0]] * 6, both).values())
    assert report["J"] == round(100 * expected["J-Mean"], 2)
    assert report["F"] == round(100 * expected["F-Mean"], 2)
    assert report["J&F"] == round(100 * expected["J&F"], 2) < 100
    assert list(report["per_sequence"]) == ["both"]
    assert {"J&F", "J", "F", "fps", "per_sequence", "method", "model", "resolution", "machine"} <= set(report)
    assert {"cpu", "cores", "onnxruntime", "providers"} <= set(report["machine"])
    assert set(report["per_sequence"]["both"]) >= {"J", "F", "J&F", "frames", "fps"}
    assert "both" in result.output and "mean" in result.output


@pytest.mark.parametrize("problem", ["split", "sequence", "annotation", "unknown"])
def test_missing_data_is_a_clear_error(tmp_path, monkeypatch, problem):
    make_dataset(tmp_path / "data")
    extra = []
    if problem == "split":
        (tmp_path / "data" / "ImageSets" / "val.txt").unlink()
    elif problem == "sequence":
        (tmp_path / "data" / "ImageSets" / "val.txt").write_text("both\nghost\n")
    elif problem == "annotation":
        (tmp_path / "data" / "Annotations" / "both" / "00003.png").unlink()
    else:
        extra = ["--sequences", "ghost"]
    result, _ = run_eval(tmp_path, CopyFirstSegmenter(), monkeypatch, *extra)
    assert result.exit_code != 0 and "Traceback" not in result.output
    expected = {"split": "val.txt", "sequence": "ghost", "annotation": "00003.png", "unknown": "ghost"}
    assert expected[problem] in result.output


def test_prompts_give_each_object_once_without_void():
    gt = [np.array([[1, 255]]), np.array([[1, 2]]), np.array([[3, 2]])]
    masks = prompts(gt)
    assert masks[0].tolist() == [[1, 0]] and masks[1].tolist() == [[0, 2]] and masks[2].tolist() == [[3, 0]]


# --- the real sdk.Segmenter on real DAVIS frames -----------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent")
def test_real_eval_on_one_davis_sequence(tmp_path):
    args = ["--data", DATA / "davis2016-240p", "--split", "val", "--sequences", "blackswan",
            "--providers", "cpu", "--out", tmp_path / "out", "--json", tmp_path / "r.json"]
    result = CliRunner().invoke(vos_eval.main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["J&F"] > 50 and report["machine"]["providers"] == ["CPUExecutionProvider"]
    assert len(list((tmp_path / "out" / "blackswan").glob("*.png"))) == report["frames"]
    # every_k holds frames 0, 5, …, 45 at the end: at least 10 frames of keys + values
    # (480 px internal: 30×54 positions, C_k 64 + C_v 128 float32)
    assert report["bank_bytes"] == report["per_sequence"]["blackswan"]["bank_bytes"] >= 10 * 30 * 54 * 192 * 4


def test_ctrl_c_exits_130_keeping_the_sequences_done(tmp_path, monkeypatch):
    gts = make_dataset(tmp_path / "data", "")

    class Interrupted(OracleSegmenter):
        def step(self, frame, mask=None):
            if len(self.given) == len(gts["both"]) + 1:                    # the 2nd frame of 'late'
                raise KeyboardInterrupt
            return super().step(frame, mask)

    result, _ = run_eval(tmp_path, Interrupted(gts["both"] + gts["late"]), monkeypatch)
    assert result.exit_code == 130 and "interrupted after 1 of 2 sequence(s)" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["interrupted"] and list(report["per_sequence"]) == ["both"] and report["J&F"] == 100.0
    assert len(list((tmp_path / "out" / "both").glob("*.png"))) == len(gts["both"])


class _At(CopyFirstSegmenter):
    """A stand-in that says it runs qdmn at ``resolution`` px internal."""

    method = "qdmn"

    def __init__(self, resolution):
        super().__init__()
        self.resolution = resolution


@pytest.mark.parametrize("resolution, upscaled", [(480, True), (48, False), (None, False)])
def test_the_table_says_method_resolution_and_precision_and_warns_of_upscaling(tmp_path, monkeypatch, resolution,
                                                                              upscaled):
    """Issue 31: what the JSON says is printed with the table; 48x64 frames at 480 px
    internal are upscaled ×10, said once on stderr (not an error)."""
    make_dataset(tmp_path / "data")
    result, report = run_eval(tmp_path, _At(resolution), monkeypatch)
    assert result.exit_code == 0, result.output
    size = "native resolution (input size)" if resolution is None else f"{resolution} px internal"
    lines = result.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("sequence ")))
    assert lines[header - 1] == f"method qdmn, {size}, {report['precision']}" and report["precision"] == "float32"
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    if upscaled:
        assert warnings == ["warning: sequence both is 64x48, its short side 48 px below the internal resolution "
                            "480 px: frames are upscaled ×10 for the network (--resolution 48 or native runs at the "
                            "input size) (said for the first such sequence only)"]
    else:
        assert warnings == []
    assert "warning" not in result.stdout
