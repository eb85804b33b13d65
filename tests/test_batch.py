"""vos-segment --batch and vos-eval --workers on the local pool (issue 29): the job list, masks
identical to serial runs, a worker killed mid-video and retried, bad rows reported while the
others finish, resume skipping finished videos, Ctrl-C, and the [batch] extra's message."""
from __future__ import annotations

import json
import sys
import time

import pytest
from batch_data import (
    DATA,
    RESOLUTION,
    SEQUENCES,
    good_rows,
    make_davis,
    needs_data,
    read_masks,
    record_masks,
    run_batch,
    serial_reference,
    without_speed,
    write_csv,
)
from click.testing import CliRunner
from ctrl_c import interrupt

from benchmarks import eval as vos_eval
from sdk import cli
from sdk.batch import KILL_ENV, davis_jobs, load_jobs, read_csv_jobs
from sdk.batch_ray import fingerprint, materialize_model, model_files
from sdk.errors import InputError
from sdk.manifest import resolve_model


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    """(DAVIS-layout root of 3 short sequences, {sequence: serial vos-segment masks})."""
    if not DATA.is_dir():
        pytest.skip("../shared/data/davis2016-240p is absent")
    base = tmp_path_factory.mktemp("batch")
    root = make_davis(base / "davis")
    return root, serial_reference(root, base / "serial")


# --- the job list (no model) ----------------------------------------------------------------------


def test_csv_rows_resolve_against_the_csv_and_bad_csvs_are_named(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("mask,frames,out,method\nm/a.png,f/a,o/a,\nm/b.png,clip.mp4,o/b,qdmn\n")
    jobs = read_csv_jobs(path)
    assert [(j.name, j.frames, j.mask, j.out, j.method) for j in jobs] == [
        ("a", tmp_path / "f/a", tmp_path / "m/a.png", tmp_path / "o/a", None),
        ("b", tmp_path / "clip.mp4", tmp_path / "m/b.png", tmp_path / "o/b", "qdmn")]
    for text, problem in [("frames,out\nf,o\n", r"lacks column\(s\) mask"), ("frames,mask,out\n", "lists no video"),
                          ("frames,mask,out\nf,,o\n", "line 2: empty mask"),
                          ("frames,mask,out\nf,m,o\ng,n,o\n", "two videos write")]:
        path.write_text(text)
        with pytest.raises(InputError, match=problem):
            read_csv_jobs(path)


def test_a_davis_root_lists_its_split_and_needs_out(tmp_path):
    (tmp_path / "ImageSets").mkdir()
    (tmp_path / "ImageSets" / "val.txt").write_text("a\nb\n")
    (tmp_path / "JPEGImages" / "a").mkdir(parents=True)
    jobs = davis_jobs(tmp_path, "val", tmp_path / "out")
    assert [(j.name, j.frames, j.mask, j.out) for j in jobs] == [
        ("a", tmp_path / "JPEGImages/a", tmp_path / "Annotations/a", tmp_path / "out/a"),
        ("b", tmp_path / "JPEGImages/b", tmp_path / "Annotations/b", tmp_path / "out/b")]
    with pytest.raises(InputError, match="give --out"):
        load_jobs(tmp_path, "val", None)
    result = CliRunner().invoke(cli.main, ["--batch", str(tmp_path), "--split", "train", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "train.txt" in result.output


def test_batch_options_are_refused_where_they_do_not_apply(tmp_path):
    path = write_csv(tmp_path / "l.csv", [("f", "m.png", "o")])
    for args, problem in [(["--batch", path, "--frames", tmp_path], "drop --frames"),
                          (["--workers", "2", "--demo"], "go with --batch"),
                          (["--batch", path, "--gpus-per-worker", "1"], "add --ray"),
                          (["--batch", path, "--workers", "0"], "at least 1")]:
        result = CliRunner().invoke(cli.main, [str(a) for a in args])
        assert result.exit_code == 2 and problem in result.output, result.output


def test_ray_without_the_extra_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)           # find_spec("ray") → None: not installed
    path = write_csv(tmp_path / "l.csv", [("f", "m.png", "o")])
    for command, args in [(cli.main, ["--batch", path, "--ray", "local"]),
                          (vos_eval.main, ["--data", tmp_path, "--out", tmp_path / "o", "--json", tmp_path / "j",
                                           "--ray", "auto"])]:
        result = CliRunner().invoke(command, [str(a) for a in args])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert "pip install 'vosedge[batch]'" in lines[0] and "ray" in lines[0]
    assert not (tmp_path / "o").exists()


def test_a_worker_that_does_not_see_the_model_folder_unpacks_it_from_the_store(tmp_path):
    root = resolve_model(None).root
    digest = fingerprint(root)
    fetched = []

    def fetch():
        fetched.append(1)
        return model_files(root)

    assert materialize_model(str(root), digest, fetch) == (str(root), "path") and not fetched
    path, source = materialize_model(str(tmp_path / "elsewhere"), digest, fetch)
    assert source == "object store" and fetched == [1]
    assert resolve_model(path).graphs.keys() == resolve_model(root).graphs.keys()


# --- the local pool on real frames ----------------------------------------------------------------


@needs_data
def test_pool_masks_equal_serial_and_bad_rows_fail_alone(davis, tmp_path):
    root, reference = davis
    wrong = tmp_path / "wrong.png"                          # a mask of another size
    wrong.write_bytes((root / "Annotations" / "cows" / "00000.png").read_bytes())
    from PIL import Image

    Image.open(wrong).resize((100, 60)).save(wrong)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png")
    rows = good_rows(root, tmp_path / "out") + [
        (tmp_path / "nowhere", root / "Annotations/cows/00000.png", tmp_path / "out/missing"),
        (root / "JPEGImages/cows", garbage, tmp_path / "out/garbage"),
        (root / "JPEGImages/cows", wrong, tmp_path / "out/wrong")]
    summary = tmp_path / "s.json"
    code, output, data = run_batch(["--batch", write_csv(tmp_path / "l.csv", rows), "--workers", "2",
                                    "--summary", summary])
    assert code == 1, output
    videos = {v["name"]: v for v in data["videos"]}
    for name in SEQUENCES:
        assert read_masks(tmp_path / "out" / name) == reference[name]
        v = videos[name]
        assert v["status"] == "ok" and v["frames"] == 6 and v["fps"] > 0 and v["bank_bytes"] > 0
        assert v["worker"].startswith("pid ") and v["host"] and v["error"] is None
    assert "nowhere" in videos["missing"]["error"] and "garbage.png" in videos["garbage"]["error"]
    assert "100x60" in videos["wrong"]["error"]
    assert not any((tmp_path / "out" / n).exists() and read_masks(tmp_path / "out" / n)
                   for n in ("missing", "garbage", "wrong"))
    assert (data["videos_ok"], data["videos_failed"], data["frames_segmented"]) == (3, 3, 18)
    assert "failed: wrong:" in output and "3 video(s) segmented" in output
    assert "videos 6/6" in output and "18/18" in output      # the one bar: videos and frames of every worker


@needs_data
def test_pool_retries_a_killed_worker_and_its_output_is_a_clean_runs(davis, tmp_path):
    root, reference = davis
    marker = tmp_path / "killed"
    code, output, data = run_batch(["--batch", root, "--out", tmp_path / "out", "--workers", "2",
                                    "--summary", tmp_path / "s.json"], env={KILL_ENV: f"cows:3:{marker}"})
    assert code == 0, output
    assert marker.read_text().startswith("killed cows at frame 3")
    for name in SEQUENCES:
        assert read_masks(tmp_path / "out" / name) == reference[name]
        assert record_masks(tmp_path / "out" / name) == [f"{i:05d}.png" for i in range(6)]   # each once
    assert all(v["status"] == "ok" for v in data["videos"])


@needs_data
def test_a_video_whose_worker_always_dies_fails_after_its_retries(davis, tmp_path):
    root, reference = davis
    code, output, data = run_batch(["--batch", root, "--out", tmp_path / "out", "--retries", "1",
                                    "--summary", tmp_path / "s.json"], env={KILL_ENV: "camel:2:"})
    assert code == 1
    videos = {v["name"]: v for v in data["videos"]}
    assert videos["camel"]["status"] == "failed" and "died 2 time(s)" in videos["camel"]["error"]
    assert [videos[n]["status"] for n in ("blackswan", "cows")] == ["ok", "ok"]
    assert read_masks(tmp_path / "out" / "cows") == reference["cows"]


@needs_data
def test_a_rerun_skips_finished_videos_and_redoes_an_unfinished_one(davis, tmp_path):
    root, reference = davis
    args = ["--batch", root, "--out", tmp_path / "out", "--workers", "2", "--summary", tmp_path / "s.json"]
    assert run_batch(args)[0] == 0
    cows = tmp_path / "out" / "cows"                        # as if killed while writing its 4th mask
    record = (cows / ".vosedge-segment").read_text().splitlines()
    (cows / ".vosedge-segment").write_text("\n".join(record[:4]) + "\n")
    (cows / "00003.png").write_bytes(b"half a png")
    (cows / "00004.png").unlink()
    (cows / "00005.png").unlink()
    stamp = {n: (tmp_path / "out" / n / "00000.png").stat().st_mtime_ns for n in SEQUENCES}
    time.sleep(0.01)
    code, output, data = run_batch(args)
    assert code == 0, output
    assert {v["name"]: v["status"] for v in data["videos"]} == {"blackswan": "skipped", "cows": "ok",
                                                                "camel": "skipped"}
    assert data["frames_segmented"] == 6 and "2 already complete" in output
    for name in SEQUENCES:
        assert read_masks(tmp_path / "out" / name) == reference[name]
    assert [(tmp_path / "out" / n / "00000.png").stat().st_mtime_ns == stamp[n] for n in SEQUENCES] == \
        [True, False, True]
    # other settings are not "finished": that folder needs --overwrite
    code, output, data = run_batch([*args, "--method", "first_latest"])
    assert code == 1 and all("--overwrite" in v["error"] for v in data["videos"])


@needs_data
def test_ctrl_c_stops_the_batch_and_a_rerun_finishes_it(davis, tmp_path):
    root, reference = davis
    out, summary = tmp_path / "out", tmp_path / "s.json"
    cmd = [sys.executable, "-c", "from sdk.cli import main; main()", "--batch", root, "--out", out, "--resolution", RESOLUTION, "--providers", "cpu",
           "--summary", summary]
    code, output = interrupt(cmd, ready=lambda: any(out.glob("*/00002.png")))
    assert code == cli.EXIT_INTERRUPTED, output
    assert "interrupted" in output and "Traceback" not in output
    assert json.loads(summary.read_text())["interrupted"] is True
    code, output, data = run_batch(["--batch", root, "--out", out, "--summary", summary])
    assert code == 0 and data["interrupted"] is False
    for name in SEQUENCES:
        assert read_masks(out / name) == reference[name]


# --- vos-eval --workers ---------------------------------------------------------------------------


@needs_data
def test_eval_with_workers_gives_the_serial_numbers(davis, tmp_path):
    root, _ = davis
    reports = []
    for extra in ([], ["--workers", "2"]):
        json_path = tmp_path / f"r{len(reports)}.json"
        args = ["--data", root, "--out", tmp_path / f"o{len(reports)}", "--json", json_path,
                "--resolution", RESOLUTION, "--providers", "cpu", *extra]
        result = CliRunner().invoke(vos_eval.main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        reports.append(json.loads(json_path.read_text()))
    assert list(reports[1]["per_sequence"]) == list(SEQUENCES)
    assert without_speed(reports[0]) == without_speed(reports[1])
    assert read_masks(tmp_path / "o0" / "cows") == read_masks(tmp_path / "o1" / "cows")



@needs_data
def test_a_csv_rows_method_is_used_for_that_video(davis, tmp_path):
    root, reference = davis
    serial = CliRunner().invoke(cli.main, [str(a) for a in [
        "--frames", root / "JPEGImages/cows", "--mask", root / "Annotations/cows/00000.png", "--out",
        tmp_path / "serial", "--method", "first_latest", "--resolution", RESOLUTION, "--providers", "cpu"]])
    assert serial.exit_code == 0, serial.output
    rows = [(*good_rows(root, tmp_path / "out", ["cows"])[0], "first_latest"),
            (*good_rows(root, tmp_path / "out", ["camel"])[0], "")]
    code, output, data = run_batch(["--batch", write_csv(tmp_path / "l.csv", rows), "--summary", tmp_path / "s.json"])
    assert code == 0, output
    assert read_masks(tmp_path / "out" / "cows") == read_masks(tmp_path / "serial") != reference["cows"]
    assert read_masks(tmp_path / "out" / "camel") == reference["camel"]          # the batch's method
    assert "--method first_latest" in (tmp_path / "out/cows/.vosedge-segment").read_text().splitlines()[0]


def test_a_video_finished_as_its_pool_broke_counts_as_done_not_skipped(tmp_path):
    """The local pool loses the result of a video whose output was complete when its worker
    died (the whole pool breaks): the retry finds it complete and it is reported ok, with a
    note, not as skipped from an earlier run; the other video is done once, as usual."""
    from sdk.batch import WorkerConfig, run_local

    from tests.batch_data import race_task

    events = []
    results = run_local(race_task, [(str(tmp_path), "a"), (str(tmp_path), "b")], WorkerConfig(), 2,
                        events.append, retries=1)
    assert [r["status"] for r in results] == ["ok", "ok"]
    assert "verified complete" in results[0]["note"] and "note" not in results[1]


def test_progress_settles_a_video_on_its_result_whatever_events_come_late():
    """Worker events may reach the parent after the video's result (they travel through a
    queue): the bar still ends at every frame of the ok videos and none of a failed one's."""
    from sdk.batch import Progress

    bar = Progress(3, enabled=False)
    bar.event(("started", 0, 6))
    bar.event(("frames", 0, 2))
    bar.event(("done", 0, {"status": "ok"}))          # its last frames events still queued
    bar.event(("frames", 0, 4))
    bar.event(("done", 1, {"status": "failed"}))       # failed before its start event arrived
    bar.event(("started", 1, 6))
    bar.event(("started", 2, 5))
    bar.event(("frames", 2, 5))
    bar.event(("done", 2, {"status": "ok"}))
    assert (bar.bar.n, bar.bar.total, bar.finished) == (11, 11, 3)
