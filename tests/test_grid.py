"""vos-grid: every (model, resolution, method) cell evaluated in its own process, one JSON /
table / Pareto plot, resumable; on the tiny export and a tiny synthetic DAVIS-layout set."""

import json

import pytest
from click.testing import CliRunner
from test_eval import make_dataset

from benchmarks import grid


def test_pareto_front_keeps_the_points_nothing_beats():
    # (fps, J&F): (10, 70) and (15, 70) are beaten by (15, 75), (20, 55) by (20, 60)
    points = [(10, 70), (20, 60), (15, 75), (5, 80), (15, 70), (20, 55), (25, 40)]
    assert grid.pareto(points) == [3, 2, 1, 6]
    assert grid.pareto([(1, 1), (1, 1)]) == [0, 1]             # equal points do not beat each other


def _run(tmp_path, *extra):
    args = ["--data", tmp_path / "data", "--split", "val", "--json", tmp_path / "grid.json",
            "--table", tmp_path / "grid.md", "--plot", tmp_path / "plots" / "pareto.png", *extra]
    result = CliRunner().invoke(grid.main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / "grid.json").read_text())


def test_grid_runs_every_cell_and_resumes(tmp_path, tiny_export):
    pytest.importorskip("matplotlib")
    make_dataset(tmp_path / "data")
    models = f"a={tiny_export},b={tiny_export}"
    report = _run(tmp_path, "--models", models, "--methods", "first_latest", "--resolutions", "64,96")
    cells = report["cells"]
    # models take turns inside each (method, resolution)
    assert [(c["resolution"], c["model"]) for c in cells] == [(64, "a"), (64, "b"), (96, "a"), (96, "b")]
    for c in cells:
        assert c["precision"] == "float32" and c["frames"] == 12 and c["bank_bytes"] > 0
        assert 0 < c["latency_ms"]["p50"] <= c["latency_ms"]["p90"] and c["peak_rss_bytes"] > 50 * 2**20
        assert set(c["per_sequence"]) == {"both", "late"}
    assert cells[0]["J&F"] == cells[1]["J&F"] and cells[2]["J&F"] == cells[3]["J&F"]   # the same export
    table = (tmp_path / "grid.md").read_text().splitlines()
    assert len(table) == 2 + 4 and "| `first_latest` | 96 | b | float32 |" in table[-1]
    assert (tmp_path / "plots" / "pareto.png").stat().st_size > 0

    again = _run(tmp_path, "--models", models, "--methods", "first_latest,every_k", "--resolutions", "64")
    assert again["cells"][:4] == cells                              # kept, not run again
    assert [(c["method"], c["resolution"], c["model"]) for c in again["cells"][4:]] == [
        ("every_k", 64, "a"), ("every_k", 64, "b")]
    assert len((tmp_path / "grid.md").read_text().splitlines()) == 2 + 6


def test_grid_refuses_bad_options_before_running(tmp_path, tiny_export):
    make_dataset(tmp_path / "data")
    runner = CliRunner()
    base = ["--data", str(tmp_path / "data"), "--json", str(tmp_path / "g.json")]
    result = runner.invoke(grid.main, [*base, "--models", f"a={tiny_export},a={tiny_export}"])
    assert result.exit_code == 2 and "model name 'a' given twice" in result.output
    result = runner.invoke(grid.main, [*base, "--models", str(tiny_export), "--methods", "every_k,nope"])
    assert result.exit_code == 2 and "unknown method(s) nope" in result.output
    result = runner.invoke(grid.main, [*base, "--models", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "manifest.json" in result.output
    assert not (tmp_path / "g.json").exists()


def test_grid_runs_again_the_cells_of_a_re_exported_model(tmp_path, tiny_export):
    """Resuming keys on the export itself (its manifest's sha256), not on its name: a model
    re-exported into the same folder is measured again, the unchanged one is kept, a model left out
    of --models keeps its cells in the file; another --param value keeps nothing."""
    import shutil

    make_dataset(tmp_path / "data")
    changed = tmp_path / "changed"
    shutil.copytree(tiny_export, changed)
    models = ["--models", f"a={tiny_export},b={changed}", "--methods", "first_latest", "--resolutions", "64"]
    first = _run(tmp_path, *models)["cells"]
    assert set(_run(tmp_path, *models)["model_manifests_sha256"]) == {"a", "b"}
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest["top_k"] = manifest["top_k"] // 2                      # a different, valid export
    (changed / "manifest.json").write_text(json.dumps(manifest))
    args = ["--data", tmp_path / "data", "--split", "val", "--json", tmp_path / "grid.json", *models]
    result = CliRunner().invoke(grid.main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "running again the cells of b: the export differs" in result.output
    again = json.loads((tmp_path / "grid.json").read_text())["cells"]
    assert again[0] == first[0] and again[1] != first[1] and [c["model"] for c in again] == ["a", "b"]
    only_a = _run(tmp_path, "--models", f"a={tiny_export}", "--methods", "first_latest", "--resolutions", "64")
    assert only_a["cells"] == again and set(only_a["model_manifests_sha256"]) == {"a", "b"}   # b's cell kept

    result = CliRunner().invoke(grid.main, [str(a) for a in [*args, "--param", "threads=1"]])
    assert result.exit_code == 0 and "not resuming 2 cell(s)" in result.output
    assert json.loads((tmp_path / "grid.json").read_text())["params"]


@pytest.mark.parametrize("params, words", [
    (["sigma=0.5"], ["policy 'every_k' takes no parameter sigma", "sigma is a parameter of qdmn"]),
    (["sigma=2"], ["policy 'every_k' takes no parameter sigma"]),      # not qdmn's range first (issue 31)
    (["qdmn.sigma=2"], ["qdmn: sigma", "got 2 (int)"]),
])
def test_grid_checks_every_param_against_every_method_before_any_cell(tmp_path, params, words):
    make_dataset(tmp_path / "data")
    args = ["--data", tmp_path / "data", "--split", "val", "--json", tmp_path / "grid.json", "--models", "x=bundled",
            "--methods", "every_k,qdmn", *[a for p in params for a in ("--param", p)]]
    result = CliRunner().invoke(grid.main, [str(a) for a in args])
    assert result.exit_code == 2 and "Invalid value for '--param'" in result.output, result.output
    flat = " ".join(result.output.split())
    assert all(word in flat for word in words), result.output
    assert not (tmp_path / "grid.json").exists()
