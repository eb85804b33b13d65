"""vos-segment's output folder, bad frames, Ctrl-C and counts (issue 13): runs never mix,
bad frames stop with what was written kept or are skipped and listed, counts are files written."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from ctrl_c import interrupt
from fake_segmenter import CopyFirstSegmenter
from PIL import Image

from sdk import cli
from sdk.demo import make_clip
from sdk.io import read_mask, write_mask
from sdk.manifest import DEFAULT_MODEL_DIR
from sdk.outputs import RECORD, recorded_files



@pytest.fixture
def fake(monkeypatch):
    segmenter = CopyFirstSegmenter()
    monkeypatch.setattr(cli, "make_segmenter", lambda *options: segmenter)
    return segmenter


def make_folder(folder: Path, frames: int = 5, height: int = 48, width: int = 64, suffix: str = ".png"):
    """A frame folder of the demo clip → (folder, first-mask path, label maps)."""
    rgb, labels = make_clip(frames=frames, height=height, width=width)
    folder.mkdir(parents=True)
    for i, frame in enumerate(rgb):
        Image.fromarray(frame).save(folder / f"{i:05d}{suffix}")
    write_mask(folder.parent / "first.png", labels[0])
    return folder, folder.parent / "first.png", labels


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def last_line(result) -> str:
    return result.output.strip().splitlines()[-1]


def test_a_run_records_exactly_the_files_it_wrote(fake, tmp_path):
    frames, mask, _ = make_folder(tmp_path / "frames")
    out = tmp_path / "out"
    result = invoke("--frames", frames, "--mask", mask, "--out", out)
    assert result.exit_code == 0, result.output
    assert recorded_files(out) == [f"{i:05d}.png" for i in range(5)]
    assert sorted(p.name for p in out.iterdir()) == sorted([RECORD] + recorded_files(out))
    header = json.loads((out / RECORD).read_text().splitlines()[0])
    assert header["format"] == "vosedge-segment-record" and header["version"] == 1
    assert "5 masks written" in result.output


def test_a_non_empty_out_is_refused_before_anything_changes(fake, tmp_path):
    frames, mask, _ = make_folder(tmp_path / "frames")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = invoke("--frames", frames, "--mask", mask, "--out", out)
    assert result.exit_code == 1 and "not empty" in last_line(result) and "--overwrite" in last_line(result)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and fake.given == []     # no frame was stepped


def test_a_second_run_is_refused_then_overwrite_replaces_only_what_vos_segment_wrote(fake, tmp_path):
    first, mask, _ = make_folder(tmp_path / "a", frames=5)
    out = tmp_path / "out"
    assert invoke("--frames", first, "--mask", mask, "--out", out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    second, _, _ = make_folder(tmp_path / "b" / "frames", frames=3)
    result = invoke("--frames", second, "--mask", mask, "--out", out)
    assert result.exit_code == 1 and "earlier vos-segment run" in last_line(result)
    assert len(recorded_files(out)) == 5                                 # the refusal touched nothing

    result = invoke("--frames", second, "--mask", mask, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([RECORD, "notes.txt", "00000.png", "00001.png", "00002.png"])   # no mix of runs
    assert "3 masks written" in result.output and "removed 5 file(s)" in result.output


def test_a_mask_of_another_size_is_refused_with_the_fix_before_anything_is_written(fake, tmp_path):
    """Issue 31: the refusal says how to fix it and, found before the run, leaves no --out."""
    frames, _, labels = make_folder(tmp_path / "frames", frames=3)
    write_mask(tmp_path / "small.png", labels[0][:24, :32])
    out = tmp_path / "out"
    result = invoke("--frames", frames, "--mask", tmp_path / "small.png", "--out", out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = last_line(result)
    assert error.startswith("Error: mask ") and "small.png is 32x24 px" in error and "first frame (00000) is 64x48" in error
    assert "nearest-neighbour" in error and "Annotations/480p goes with JPEGImages/480p" in error
    assert not out.exists() and fake.given == []                    # no folder, no frame stepped


def test_a_run_that_failed_before_writing_a_file_does_not_block_its_folder(fake, tmp_path):
    """Issue 31: a folder holding only the record of a run that wrote nothing takes a rerun, with
    or without --overwrite; a record beside real outputs (or anyone's file) still needs --overwrite."""
    frames, mask, labels = make_folder(tmp_path / "frames", frames=3)
    write_mask(tmp_path / "empty.png", np.zeros_like(labels[0]))
    out = tmp_path / "out"
    result = invoke("--frames", frames, "--mask", tmp_path / "empty.png", "--out", out)   # the segmenter refuses it
    assert result.exit_code == 1 and "empty" in last_line(result)
    assert [p.name for p in out.iterdir()] == [RECORD] and recorded_files(out) == []
    for extra in ([], ["--overwrite"]):
        result = invoke("--frames", frames, "--mask", mask, "--out", out, *extra)
        assert result.exit_code == 0, result.output
        assert "3 masks written" in result.output and "removed" not in result.output
        assert recorded_files(out) == ["00000.png", "00001.png", "00002.png"]
        if not extra:                       # a real run's outputs are refused, then replaced with --overwrite
            result = invoke("--frames", frames, "--mask", mask, "--out", out)
            assert result.exit_code == 1 and "holds 3 file(s) of an earlier vos-segment run" in last_line(result)
            for name in recorded_files(out):
                (out / name).unlink()        # the user deleted the masks: only the record is left

    (out / "notes.txt").write_text("mine")                             # a record beside someone's file
    for name in recorded_files(out):
        (out / name).unlink()
    result = invoke("--frames", frames, "--mask", mask, "--out", out)
    assert result.exit_code == 1 and "holds 1 file(s) (notes.txt)" in last_line(result)
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("resolution, size", [(None, "native resolution (input size)"), (480, "480 px internal"),
                                              (48, "48 px internal")])
def test_the_last_line_says_method_resolution_and_precision_and_upscaling_is_warned(fake, tmp_path, resolution,
                                                                                     size):
    """Issue 31: a 48x64 input at 480 px internal is upscaled ×10: one warning on stderr, the run goes on."""
    fake.resolution = resolution
    frames, mask, _ = make_folder(tmp_path / "frames", frames=3)
    result = invoke("--frames", frames, "--mask", mask, "--out", tmp_path / "out", "--overlay", tmp_path / "o.mp4")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"3 masks written to {tmp_path / 'out'}/ (method every_k, {size}, float32)"
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == (["warning: the input is 64x48, its short side 48 px below the internal resolution 480 px: "
                         "frames are upscaled ×10 for the network (--resolution 48 or native runs at the input size)"]
                        if resolution == 480 else [])


@pytest.mark.parametrize("name", ["o.avi", "o.mov", "o"])
def test_an_overlay_not_named_mp4_is_refused_before_anything_is_written(fake, tmp_path, name):
    """Issue 31: --overlay x.avi silently wrote AVI; the overlay is always H.264 MP4."""
    frames, mask, _ = make_folder(tmp_path / "frames", frames=3)
    result = invoke("--frames", frames, "--mask", mask, "--out", tmp_path / "out", "--overlay", tmp_path / name)
    assert result.exit_code == 2 and "Invalid value for '--overlay'" in result.output
    flat = " ".join(result.output.split())
    assert f"{tmp_path / name}" in flat and "must end in .mp4" in flat
    assert not (tmp_path / "out").exists() and not (tmp_path / name).exists() and fake.given == []


def test_the_overlay_of_a_run_is_h264_with_every_frame(fake, tmp_path):
    import av

    frames, mask, labels = make_folder(tmp_path / "frames", frames=3)
    result = invoke("--frames", frames, "--mask", mask, "--out", tmp_path / "out", "--overlay", tmp_path / "o.mp4")
    assert result.exit_code == 0, result.output
    with av.open(str(tmp_path / "o.mp4")) as container:
        stream = container.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.codec_context.name == "h264" and (stream.width, stream.height) == (64, 48)
    assert len(decoded) == 3


def test_overwrite_refuses_to_replace_a_file_it_did_not_write(fake, tmp_path):
    frames, mask, _ = make_folder(tmp_path / "frames", frames=3)
    out = tmp_path / "out"
    out.mkdir()
    write_mask(out / "00001.png", np.zeros((48, 64), np.uint8))        # someone's own mask
    result = invoke("--frames", frames, "--mask", mask, "--out", out, "--overwrite")
    assert result.exit_code == 1 and "00001.png" in last_line(result) and "did not write" in last_line(result)
    assert [p.name for p in out.iterdir()] == ["00001.png"]


def test_an_existing_overlay_needs_overwrite(fake, tmp_path):
    frames, mask, _ = make_folder(tmp_path / "frames", frames=3)
    video = tmp_path / "o.mp4"
    video.write_bytes(b"an older video")
    result = invoke("--frames", frames, "--mask", mask, "--out", tmp_path / "out", "--overlay", video)
    assert result.exit_code == 2 and "--overwrite" in result.output and video.read_bytes() == b"an older video"
    result = invoke("--frames", frames, "--mask", mask, "--out", tmp_path / "out", "--overlay", video, "--overwrite")
    assert result.exit_code == 0 and video.stat().st_size > 1000


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_bad_frame_stops_the_run_naming_it_and_keeps_what_was_written(fake, tmp_path):
    frames, mask, _ = make_folder(tmp_path / "frames", frames=6)
    _truncate(frames / "00003.png")
    out = tmp_path / "out"
    result = invoke("--frames", frames, "--mask", mask, "--out", out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = last_line(result)
    assert error.startswith("Error: ") and "00003.png" in error and "3 mask(s) already written" in error
    assert "--on-bad-frame skip" in error
    assert recorded_files(out) == ["00000.png", "00001.png", "00002.png"]
    assert all(read_mask(out / n).shape == (48, 64) for n in recorded_files(out))


def test_skip_leaves_bad_frames_out_of_the_output_and_the_memory(fake, tmp_path):
    frames, mask, _ = make_folder(tmp_path / "frames", frames=6)
    _truncate(frames / "00002.png")
    (frames / "00004.png").write_bytes(b"")
    out = tmp_path / "out"
    result = invoke("--frames", frames, "--mask", mask, "--out", out, "--on-bad-frame", "skip")
    assert result.exit_code == 0, result.output
    assert recorded_files(out) == ["00000.png", "00001.png", "00003.png", "00005.png"]
    assert "4 masks written" in result.output
    assert "2 frame(s) skipped" in result.output and "00002" in result.output and "00004" in result.output
    assert len(fake.given) == 4                                            # the segmenter never saw them


def test_a_frame_of_another_size_is_named_or_skipped(fake, tmp_path):
    frames, mask, _ = make_folder(tmp_path / "frames", frames=4)
    Image.fromarray(np.zeros((40, 64, 3), np.uint8)).save(frames / "00002.png")
    result = invoke("--frames", frames, "--mask", mask, "--out", tmp_path / "a")
    assert result.exit_code == 1 and "frame 2 (00002)" in last_line(result) and "64x40" in last_line(result)
    result = invoke("--frames", frames, "--mask", mask, "--out", tmp_path / "b", "--on-bad-frame", "skip")
    assert result.exit_code == 0 and recorded_files(tmp_path / "b") == ["00000.png", "00001.png", "00003.png"]


def test_an_unreadable_first_frame_is_an_error_even_when_skipping(fake, tmp_path):
    frames, mask, _ = make_folder(tmp_path / "frames", frames=3)
    _truncate(frames / "00000.png")
    result = invoke("--frames", frames, "--mask", mask, "--out", tmp_path / "out", "--on-bad-frame", "skip")
    assert result.exit_code == 1 and "first frame" in last_line(result)


@pytest.mark.slow
@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "manifest.json").is_file(), reason="no bundled model")
def test_ctrl_c_exits_130_with_every_written_mask_intact(tmp_path):
    frames, mask, _ = make_folder(tmp_path / "frames", frames=400, height=120, width=160, suffix=".jpg")
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from sdk.cli import main; main()", "--frames", frames, "--mask", mask,
           "--out", out, "--providers", "cpu", "--resolution", "120"]
    returncode, output = interrupt(cmd, lambda: len(recorded_files(out) or []) >= 5)
    assert returncode == 130, output
    assert "Traceback" not in output and "interrupted" in output
    written = recorded_files(out)
    assert 5 <= len(written) < 400
    assert all(read_mask(out / name).shape == (120, 160) for name in written)      # every one complete


def test_hidden_files_are_ignored_and_said_so(fake, tmp_path):
    frames, mask, _ = make_folder(tmp_path / "frames", frames=3)
    (frames / "._00001.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")        # macOS resource fork
    result = invoke("--frames", frames, "--mask", mask, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "ignored 1 hidden file(s)" in result.output and "._00001.png" in result.output
    assert recorded_files(tmp_path / "out") == ["00000.png", "00001.png", "00002.png"]
