"""vos-segment --batch and vos-eval on Ray (issue 29): a local Ray instance of the test
(``ray.init(num_cpus=2)``, one per session) over three short DAVIS val sequences. Masks equal
serial vos-segment's; an actor killed mid-video (os._exit) is restarted and the video redone
with a clean output; bad rows fail alone; a rerun skips finished videos; vos-eval --ray gives
the serial numbers. Skipped without ray (the [batch] extra)."""
from __future__ import annotations

import json

import pytest
from batch_data import (
    DATA,
    SEQUENCES,
    good_rows,
    make_davis,
    read_masks,
    record_masks,
    run_batch,
    serial_reference,
    without_speed,
    write_csv,
)
from click.testing import CliRunner

from benchmarks import eval as vos_eval
from sdk.batch import KILL_ENV

ray = pytest.importorskip("ray", reason="ray is not installed (the [batch] extra: pip install 'vosedge[batch]')")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent")]


@pytest.fixture(scope="session")
def local_ray():
    """A local Ray instance (2 CPUs) for the session, shut down after."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    base = tmp_path_factory.mktemp("batch-ray")
    root = make_davis(base / "davis")
    return root, serial_reference(root, base / "serial")


def test_ray_masks_equal_serial_and_a_bad_row_fails_alone(local_ray, davis, tmp_path):
    root, reference = davis
    rows = good_rows(root, tmp_path / "out") + [
        (tmp_path / "nowhere", root / "Annotations/cows/00000.png", tmp_path / "out/missing")]
    code, output, data = run_batch(["--batch", write_csv(tmp_path / "l.csv", rows), "--ray", "auto",
                                    "--workers", "2", "--summary", tmp_path / "s.json"])
    assert code == 1, output
    videos = {v["name"]: v for v in data["videos"]}
    for name in SEQUENCES:
        assert read_masks(tmp_path / "out" / name) == reference[name]
        v = videos[name]
        assert v["status"] == "ok" and v["worker"].startswith("ray actor") and v["model_from"] == "path"
        assert v["frames"] == 6 and v["bank_bytes"] > 0 and v["host"]
    assert videos["missing"]["status"] == "failed" and "nowhere" in videos["missing"]["error"]
    assert data["backend"] == "ray auto" and ray.is_initialized()     # the test's Ray is left running


def test_ray_restarts_a_killed_actor_and_redoes_its_video(local_ray, davis, tmp_path):
    root, reference = davis
    marker = tmp_path / "killed"
    args = ["--batch", root, "--out", tmp_path / "out", "--ray", "auto", "--workers", "2",
            "--summary", tmp_path / "s.json"]
    code, output, data = run_batch(args, env={KILL_ENV: f"cows:3:{marker}"})
    assert code == 0, output
    assert marker.read_text().startswith("killed cows at frame 3 in ray actor")
    for name in SEQUENCES:
        assert read_masks(tmp_path / "out" / name) == reference[name]
        assert record_masks(tmp_path / "out" / name) == [f"{i:05d}.png" for i in range(6)]
    # a rerun skips them all
    code, output, data = run_batch(args)
    assert code == 0 and [v["status"] for v in data["videos"]] == ["skipped"] * 3 and data["frames_segmented"] == 0


def test_eval_on_ray_gives_the_serial_numbers(local_ray, davis, tmp_path):
    root, _ = davis
    reports = []
    for extra in ([], ["--ray", "auto", "--workers", "2"]):
        path = tmp_path / f"r{len(reports)}.json"
        args = ["--data", root, "--out", tmp_path / f"o{len(reports)}", "--json", path,
                "--resolution", "64", "--providers", "cpu", *extra]
        result = CliRunner().invoke(vos_eval.main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        reports.append(json.loads(path.read_text()))
    assert without_speed(reports[0]) == without_speed(reports[1])


def test_a_video_whose_actor_always_dies_fails_after_its_retries(local_ray, davis, tmp_path):
    root, reference = davis
    code, output, data = run_batch(["--batch", root, "--out", tmp_path / "out", "--ray", "auto", "--retries", "1",
                                    "--summary", tmp_path / "s.json"], env={KILL_ENV: "camel:2:"})
    assert code == 1, output
    videos = {v["name"]: v for v in data["videos"]}
    assert videos["camel"]["status"] == "failed" and "retried 1 time(s)" in videos["camel"]["error"]
    assert [videos[n]["status"] for n in ("blackswan", "cows")] == ["ok", "ok"]
    assert read_masks(tmp_path / "out" / "cows") == reference["cows"]
