"""vos-segment: outputs, demo and one-line errors, with an injected segmenter; then the real sdk."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fake_segmenter import MAX_OBJECTS, CopyFirstSegmenter
from PIL import Image

import sdk
from sdk import cli
from sdk.demo import make_clip
from sdk.errors import ManifestError
from sdk.io import iter_frames, read_mask, write_mask
from sdk.overlay import OverlayWriter

BUNDLED = Path(sdk.__file__).parent / "models" / "default"


@pytest.fixture
def fake(monkeypatch):
    segmenter = CopyFirstSegmenter()
    monkeypatch.setattr(cli, "make_segmenter", lambda *options: segmenter)
    return segmenter


@pytest.fixture
def clip(tmp_path):
    """A 5-frame 48x64 frame folder (PNG) and its first-frame mask."""
    rgb, labels = make_clip(frames=5, height=48, width=64)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(rgb):
        Image.fromarray(frame).save(folder / f"img{i:03d}.png")
    write_mask(tmp_path / "first.png", labels[0])
    return folder, tmp_path / "first.png", labels


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_help_teaches_with_examples():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "Examples:" in result.output and "vos-segment --demo" in result.output


def test_segments_a_frame_folder_into_named_palette_pngs(fake, clip, tmp_path):
    frames, mask, labels = clip
    out, video = tmp_path / "out", tmp_path / "overlay.mp4"
    result = invoke("--frames", frames, "--mask", mask, "--out", out, "--overlay", video)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == [f"img{i:03d}.png" for i in range(5)]
    with Image.open(out / "img004.png") as image:
        assert image.mode == "P" and image.size == (64, 48)
    assert np.array_equal(read_mask(out / "img004.png"), labels[0])
    assert len(list(iter_frames(video))) == 5
    assert str(out) in result.output and str(video) in result.output
    assert fake.given[0] is not None and all(m is None for m in fake.given[1:])


def test_segments_a_video_with_davis_names(fake, clip, tmp_path):
    frames, mask, _ = clip
    video = tmp_path / "clip.mp4"
    with OverlayWriter(video, alpha=0.0) as writer:  # alpha 0: the plain frames
        for _, rgb in iter_frames(frames):
            writer.write(rgb, np.zeros(rgb.shape[:2], np.uint8))
    result = invoke("--frames", video, "--mask", mask, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.png")) == ["00000", "00001", "00002", "00003", "00004"]


def test_demo_writes_masks_and_overlay(fake, tmp_path):
    result = invoke("--demo", "--out", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "demo").glob("*.png"))) == 40
    assert (tmp_path / "demo" / "overlay.mp4").stat().st_size > 0
    assert str(tmp_path / "demo" / "overlay.mp4") in result.output


def test_demo_runs_again_into_a_fresh_folder_and_never_writes_the_current_directory(fake, tmp_path, monkeypatch):
    """Issue 31: without --out each --demo run writes a new vosedge-demo-* folder in TMPDIR and
    says where; the current directory stays empty."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    outputs = [invoke("--demo"), invoke("--demo")]
    assert all(result.exit_code == 0 for result in outputs), outputs[-1].output
    folders = sorted((tmp_path / "tmp").iterdir())
    assert len(folders) == 2 and all(f.name.startswith("vosedge-demo-") for f in folders)
    for folder in folders:
        assert len(list(folder.glob("*.png"))) == 40 and (folder / "overlay.mp4").stat().st_size > 0
        assert sum(f"masks written to {folder}/" in r.output for r in outputs) == 1
        assert sum(f"overlay video: {folder / 'overlay.mp4'}" in r.output for r in outputs) == 1
    assert list((tmp_path / "cwd").iterdir()) == []


def test_demo_honours_out_with_the_usual_rules(fake, tmp_path):
    out = tmp_path / "demo"
    assert invoke("--demo", "--out", out).exit_code == 0
    again = invoke("--demo", "--out", out)
    assert again.exit_code == 1 and "earlier vos-segment run" in again.output and "--overwrite" in again.output
    replaced = invoke("--demo", "--out", out, "--overwrite")
    assert replaced.exit_code == 0 and "removed 41 file(s)" in replaced.output    # 40 masks + the overlay
    assert len(list(out.glob("*.png"))) == 40


def _bad_mask(kind, labels):
    if kind == "size":
        return labels[:, :32]
    if kind == "labels":
        return np.where(labels > 0, MAX_OBJECTS + 1, 0).astype(np.uint8)
    return np.zeros_like(labels)


@pytest.mark.parametrize("kind, message", [("size", "size"), ("labels", "max_objects"), ("empty", "empty")])
def test_bad_first_mask_is_a_one_line_error(fake, clip, tmp_path, kind, message):
    frames, _, labels = clip
    write_mask(tmp_path / "bad.png", _bad_mask(kind, labels[0]))
    result = invoke("--frames", frames, "--mask", tmp_path / "bad.png", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = result.output.strip().splitlines()[-1]  # after the progress bar
    assert error.startswith("Error: ") and message in error


def test_unreadable_frames_are_a_one_line_error(fake, clip, tmp_path):
    _, mask, _ = clip
    (tmp_path / "broken.mp4").write_bytes(b"garbage")
    for source in (tmp_path / "broken.mp4", tmp_path / "missing"):
        result = invoke("--frames", source, "--mask", mask, "--out", tmp_path / "out")
        assert result.exit_code == 1 and str(source) in result.output


def test_model_errors_are_one_line(monkeypatch, clip, tmp_path):
    def broken(*options):
        raise ManifestError("graph key_encoder.onnx: sha256 differs from the manifest")

    monkeypatch.setattr(cli, "make_segmenter", broken)
    frames, mask, _ = clip
    result = invoke("--frames", frames, "--mask", mask, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert result.output == "Error: graph key_encoder.onnx: sha256 differs from the manifest\n"


@pytest.mark.parametrize("args", [[], ["--demo", "--frames", "x"], ["--resolution", "big", "--demo"]])
def test_usage_errors(fake, args):
    assert invoke(*args).exit_code == 2


def test_options_reach_the_factory(monkeypatch, clip, tmp_path):
    seen = []
    monkeypatch.setattr(cli, "make_segmenter", lambda *options: seen.append(options) or CopyFirstSegmenter())
    frames, mask, _ = clip
    invoke("--frames", frames, "--mask", mask, "--out", tmp_path / "o", "--model", tmp_path / "m",
           "--method", "first_latest", "--resolution", "native", "--providers", "cuda, cpu",
           "--param", "quality_gate=0.5", "--param", "threads=2")
    invoke("--frames", frames, "--mask", mask, "--out", tmp_path / "o2", "--resolution", "240")
    assert seen == [(tmp_path / "m", "first_latest", None, ["cuda", "cpu"], {"quality_gate": 0.5, "threads": 2}),
                    (None, None, 240, None, {})]


# --- the real sdk.Segmenter on the bundled model ---------------------------------------------


@pytest.mark.slow
def test_real_demo_tracks_both_objects(tmp_path):
    result = invoke("--demo", "--out", tmp_path / "demo", "--providers", "cpu")   # as a user runs it
    assert result.exit_code == 0, result.output
    _, labels = make_clip()
    last = read_mask(tmp_path / "demo" / "00039.png")
    assert set(np.unique(last)) <= {0, 1, 2}
    for obj in (1, 2):
        overlap = np.count_nonzero((last == obj) & (labels[39] == obj))
        assert overlap > 0.5 * np.count_nonzero(labels[39] == obj)


def test_real_errors_are_one_line(clip, tmp_path):
    frames, _, labels = clip
    write_mask(tmp_path / "small.png", labels[0][:, :32])
    result = invoke("--frames", frames, "--mask", tmp_path / "small.png", "--out", tmp_path / "o", "--providers", "cpu")
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1].startswith("Error: ")

    tampered = tmp_path / "model"
    shutil.copytree(BUNDLED, tampered)
    graph = next(tampered.glob("*.onnx"))
    graph.write_bytes(graph.read_bytes()[:-1])
    result = invoke("--demo", "--out", tmp_path / "d", "--model", tampered)
    assert result.exit_code == 1 and graph.name in result.output

    result = invoke("--demo", "--out", tmp_path / "d", "--model", tmp_path / "nowhere")
    assert result.exit_code == 1 and "nowhere" in result.output
