"""export/dmn_export.py: the four DMN-AOA graphs added to a tiny export, declared in its
manifest, matching the torch modules, and nothing written when something fails."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from export.dmn_export import DMN_GRAPHS, example_feeds, export_dmn  # noqa: E402
from export.errors import ParityError  # noqa: E402
from sdk.manifest import load_manifest, sha256_file  # noqa: E402
from training.dmn import DMNAOA  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dmn_export(tiny_export, tiny_net, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dmn") / "tiny"
    shutil.copytree(tiny_export, folder)
    torch.manual_seed(1)
    dmn = DMNAOA(tiny_net).eval()
    manifest = export_dmn(dmn, folder)
    return folder, dmn, manifest


def _session(folder, name):
    return ort.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])


def test_manifest_declares_the_graphs(dmn_export):
    folder, dmn, manifest = dmn_export
    raw = json.loads((folder / "manifest.json").read_text())
    assert raw == manifest
    for name in DMN_GRAPHS:
        entry = raw["graphs"][name]
        assert sha256_file(folder / entry["file"]) == entry["sha256"]
    sig = {name: raw["graphs"][name] for name in DMN_GRAPHS}
    assert sig["dmn_memory"]["inputs"] == {"f16": [1, 112, "h", "w"], "boxes": ["N", 4],
                                           "masks": ["N", 1, "h4", "w4"], "time": ["N"]}
    assert sig["dmn_memory"]["outputs"] == {"key": ["N", 32, 8, 8], "value": ["N", 128, 8, 8]}
    assert sig["dmn_template"]["inputs"]["valid"] == ["N", "M"]
    assert sig["dmn_template"]["outputs"] == {"template": ["N", 128, 8, 8]}
    assert sig["aoa_match"]["outputs"] == {"assignment": ["N", "P"], "similarity": ["N", "P"],
                                           "coarse": ["N", 1, "h4", "w4"]}
    assert sig["refine"]["inputs"]["readout"] == ["N", raw["value_channels"], "h", "w"]
    assert raw["dmn"]["roi_size"] == 8 and raw["dmn"]["channels"] == 128 and raw["dmn"]["key_channels"] == 32
    assert raw["dmn"]["sinkhorn_iters"] == 10 and raw["dmn"]["align"] is True
    assert set(raw["parity"]["dmn_max_rel_diff"]) == set(DMN_GRAPHS)
    assert max(raw["parity"]["dmn_max_rel_diff"].values()) <= 1e-3
    assert raw["parity"]["max_abs_logit_diff"] == json.loads((folder / "manifest.json").read_text())[
        "parity"]["max_abs_logit_diff"]                                    # the core parity stays
    load_manifest(folder)                                                   # the sdk still reads it
    ops = {n: {node.op_type for node in onnx.load(str(folder / f"{n}.onnx")).graph.node} for n in DMN_GRAPHS}
    assert "RoiAlign" in ops["dmn_memory"] and "RoiAlign" in ops["dmn_template"] and "RoiAlign" in ops["aoa_match"]


def test_graphs_match_torch_on_new_sizes(dmn_export):
    folder, dmn, _ = dmn_export
    manifest = load_manifest(folder)
    feeds = example_feeds(manifest, dmn.hparams, seed=7, h=5, w=3, n=4, p=6, slots=4)
    for name, (method, inputs, outputs, _) in DMN_GRAPHS.items():
        got = _session(folder, name).run(outputs, feeds[name])
        with torch.no_grad():
            ref = getattr(dmn, method)(*(torch.from_numpy(feeds[name][i]) for i in inputs))
        for g, r in zip(got, ref if isinstance(ref, tuple) else (ref,)):
            np.testing.assert_allclose(g, r.numpy(), atol=1e-4 * max(1.0, float(r.abs().max())))


def test_refine_graph_equals_decoder_graph_at_init(dmn_export):
    folder, dmn, _ = dmn_export
    feeds = example_feeds(load_manifest(folder), dmn.hparams, seed=3)["refine"]
    refine = _session(folder, "refine").run(None, feeds)[0]
    decoder = _session(folder, "decoder").run(None, {k: v for k, v in feeds.items() if k != "coarse"})[0]
    np.testing.assert_allclose(refine, decoder, atol=1e-5)
    assert ((refine > 0) == (decoder > 0)).mean() > 0.9999


def test_ablation_without_aoa_is_recorded(tiny_export, tiny_net, tmp_path):
    folder = tmp_path / "ablation"
    shutil.copytree(tiny_export, folder)
    torch.manual_seed(1)
    raw = export_dmn(DMNAOA(tiny_net, align=False), folder)
    assert raw["dmn"]["align"] is False


def test_nothing_written_on_failure(tiny_export, tiny_net, tmp_path, monkeypatch):
    folder = tmp_path / "fail"
    shutil.copytree(tiny_export, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    torch.manual_seed(1)
    other = DMNAOA(tiny_net)
    other.refiner.decoder.compress.conv1 = torch.nn.Conv2d(112 + 64, 32, 3, 1, 1)   # a C_v = 64 network's
    with pytest.raises(ValueError, match="channels"):
        export_dmn(other, folder)

    import export.dmn_export as module

    def failing(*args):
        raise ParityError("forced")

    monkeypatch.setattr(module, "check_dmn_parity", failing)
    with pytest.raises(ParityError, match="forced"):
        export_dmn(DMNAOA(tiny_net), folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not list(tmp_path.glob(".dmn-*"))
