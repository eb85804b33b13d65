"""export: graphs + manifest per docs/graph-contract.md, torch ↔ onnxruntime parity."""
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from export import ParityError, check_parity, export_model  # noqa: E402
from export import cli as export_cli  # noqa: E402
from export.onnx_export import GRAPHS, HEAD_GRAPHS  # noqa: E402
from sdk.manifest import sha256_file  # noqa: E402


def test_manifest_written_per_contract(tiny_export, tiny_net):
    m = json.loads((tiny_export / "manifest.json").read_text())
    cfg = tiny_net.config
    assert (m["format"], m["manifest_version"], m["opset"], m["method"]) == ("vosedge-export", 2, 17, "every_k")
    assert "inference" not in m          # vosedge's own networks: the version-1 semantics
    assert (m["key_channels"], m["value_channels"], m["stride"]) == (16, 32, 16)
    assert m["skip_channels"] == cfg["skip_channels"] and m["max_objects"] == cfg["max_objects"]
    assert m["normalisation"] == {"mean": cfg["mean"], "std": cfg["std"]}
    assert m["resolution"] == 64 and m["top_k"] == cfg["top_k"]
    for name, entry in m["graphs"].items():
        assert sha256_file(tiny_export / entry["file"]) == entry["sha256"]
    assert set(m["graphs"]) == set(GRAPHS)
    assert m["parity"]["max_abs_logit_diff"] <= 1e-3 and m["parity"]["min_mask_iou"] >= 0.999
    assert "synthetic" in m["parity"]["frames"]


def test_graph_io_names_and_dynamic_axes(tiny_export, tiny_net):
    """Every graph at sizes/object counts/memory sizes other than the traced ones agrees with torch."""
    sessions = {n: ort.InferenceSession(str(tiny_export / f"{n}.onnx"), providers=["CPUExecutionProvider"])
                for n in GRAPHS}
    for name, (_, inputs, outputs, _) in GRAPHS.items():
        assert [i.name for i in sessions[name].get_inputs()] == inputs
        assert [o.name for o in sessions[name].get_outputs()] == outputs
    rng = np.random.default_rng(0)

    def both(name, *x):
        got = sessions[name].run(None, dict(zip(GRAPHS[name][1], x)))
        with torch.no_grad():
            ref = getattr(tiny_net, GRAPHS[name][0])(*map(torch.from_numpy, x))
        ref = ref if isinstance(ref, tuple) else (ref,)
        for g, r in zip(got, ref):
            assert g.shape == tuple(r.shape)
            np.testing.assert_allclose(g, r.numpy(), atol=1e-4, rtol=1e-4)
        return got

    for (H, W), n, slots in [((48, 80), 3, 3), ((96, 64), 1, 1)]:
        image = rng.standard_normal((1, 3, H, W), dtype=np.float32)
        key, f16, f8, f4 = both("key_encoder", image)
        assert key.shape == (1, 16, H // 16, W // 16) and f4.shape[2:] == (H // 4, W // 4)
        (value,) = both("value_encoder", image, f16, rng.random((n, 2, H, W), dtype=np.float32))
        hw = key.shape[2] * key.shape[3]
        # well-separated memory keys so that top-k has no near-ties between torch and ORT
        mem_k = rng.standard_normal((1, 16, slots * hw), dtype=np.float32) * 3
        mem_v = rng.standard_normal((n, 32, slots * hw), dtype=np.float32)
        valid = np.ones(slots * hw, np.float32)
        valid[-hw // 2:] = 0
        query = rng.standard_normal(key.shape, dtype=np.float32) * 3
        readout, usage = both("readout", query, mem_k, mem_v, valid, np.array(4, np.int64))
        assert usage.shape == (slots * hw,) and usage[valid == 0].sum() == 0
        assert usage.sum() == 4 * hw                        # each query position keeps top_k positions
        (logits,) = both("decoder", readout, f16, f8, f4)
        assert logits.shape == (n, 1, H, W)


def test_parity_on_multi_object_frames(tiny_export, tiny_net, square_clip):
    frames, masks = square_clip(2, 96, 128, label=2)
    masks[0][5:20, 5:30] = 5
    result = check_parity(tiny_net, tiny_export, [(frames[0], masks[0], frames[1])], resolution=None)
    assert result["max_abs_logit_diff"] <= 1e-3 and result["min_mask_iou"] >= 0.999


def test_parity_failure_raises(tiny_export, square_clip):
    from training.networks import build_network

    from conftest import TINY_CONFIG

    torch.manual_seed(1)
    other = build_network(TINY_CONFIG, pretrained=False).eval()    # different weights
    with torch.no_grad():
        other.decoder.pred.bias += 1.0
    frames, masks = square_clip(2)
    with pytest.raises(ParityError, match="disagree"):
        check_parity(other, tiny_export, [(frames[0], masks[0], frames[1])], resolution=None)


def test_failed_export_leaves_nothing(tiny_net, tmp_path, monkeypatch):
    import export.onnx_export as onnx_export

    def fail(*args, **kwargs):
        raise ParityError("forced")

    monkeypatch.setattr(onnx_export, "check_parity", fail)
    with pytest.raises(ParityError):
        export_model(tiny_net, tmp_path / "out", resolution=None)
    assert list(tmp_path.iterdir()) == []
    assert tiny_net.training is False


def test_export_refuses_unknown_method_and_foreign_folder(tiny_net, tmp_path):
    with pytest.raises(ValueError, match="unknown method 'stm'; known: every_k, first_latest"):
        export_model(tiny_net, tmp_path / "out", method="stm")
    with pytest.raises(ValueError, match="'rde' needs graph\\(s\\) sam_key, sam_value.*no sam head.*--method rde"):
        export_model(tiny_net, tmp_path / "out", method="rde")
    with pytest.raises(ValueError, match="'qdmn' needs graph\\(s\\) qam, prior_enhance.*no prior/qam head"):
        export_model(tiny_net, tmp_path / "out", method="qdmn")
    assert not (tmp_path / "out").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a vosedge export"):
        export_model(tiny_net, tmp_path / "mine")


def test_cli_exports_a_checkpoint(tiny_net, tmp_path):
    from training.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "ckpt" / "tiny", tiny_net)
    out = tmp_path / "exported"
    result = CliRunner().invoke(export_cli.main, ["--checkpoint", str(ckpt), "--method", "first_latest",
                                                  "--out", str(out), "--resolution", "native"])
    assert result.exit_code == 0, result.output
    assert "parity" in result.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["method"] == "first_latest" and m["resolution"] is None


def test_head_graphs_exported_with_parity_and_dynamic_axes(heads_export, heads_net):
    """All 8 graphs, each head graph equal to its torch module at another size / object count."""
    m = json.loads((heads_export / "manifest.json").read_text())
    assert list(m["graphs"]) == [*GRAPHS, *HEAD_GRAPHS]
    assert set(m["parity"]["heads_max_rel_diff"]) == set(HEAD_GRAPHS)
    assert all(d <= 1e-3 for d in m["parity"]["heads_max_rel_diff"].values())
    assert m["policy_defaults"]["rde"] == {"theta": 3, "top_k": 40}
    assert m["policy_defaults"]["qdmn"] == {"interval": 5, "sigma": 0.8, "beta": 20}
    assert m["graphs"]["qam"]["outputs"] == {"score": ["N"]}
    torch.manual_seed(1)
    h, w, n = 3, 5, 3
    ck, cv, c16 = 16, 32, heads_net.config["skip_channels"]["f16"]
    inputs = {"prior_enhance": (torch.randn(1, c16, h, w), torch.rand(1, 1, 16 * h, 16 * w)),
              "qam": (torch.randn(n, cv, h, w),),
              "sam_key": (torch.randn(1, ck, h, w), torch.randn(1, ck, h, w)),
              "sam_value": (torch.randn(n, cv, h, w), torch.randn(n, cv, h, w))}
    for name, (method, names, outputs, _) in HEAD_GRAPHS.items():
        sess = ort.InferenceSession(str(heads_export / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        assert [o.name for o in sess.get_outputs()] == outputs
        got = sess.run(None, {k: v.numpy() for k, v in zip(names, inputs[name])})
        with torch.no_grad():
            ref = getattr(heads_net, method)(*inputs[name])
        for g, r in zip(got, ref if isinstance(ref, tuple) else (ref,)):
            assert g.shape == tuple(r.shape)
            np.testing.assert_allclose(g, r.numpy(), rtol=1e-4, atol=1e-4)


def test_head_parity_failure_raises(heads_export, heads_net, square_clip):
    frames, masks = square_clip(2)
    with torch.no_grad():
        heads_net.sam_value.squeeze.bias += 0.5            # torch side no longer matches sam_value.onnx
        try:
            with pytest.raises(ParityError, match="sam_value"):
                check_parity(heads_net, heads_export, [(frames[0], masks[0], frames[1])], 64)
        finally:
            heads_net.sam_value.squeeze.bias -= 0.5


def test_cli_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(export_cli.main, ["--checkpoint", "x", "--method", "stm", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "every_k, first_latest" in result.output
    result = runner.invoke(export_cli.main, ["--checkpoint", str(tmp_path / "none.safetensors"),
                                             "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "not found" in result.output
    assert "--parity-data" in runner.invoke(export_cli.main, ["--help"]).output


DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016-240p"


@pytest.mark.skipif(not DAVIS.is_dir(), reason="no ../shared/data/davis2016-240p")
def test_parity_on_davis_frames(tiny_export, tiny_net):
    from export import load_davis_parity_frames

    frames, names = load_davis_parity_frames(DAVIS, max_sequences=1)
    frame0, mask0, frame1 = frames[0]
    assert names == ["blackswan"] and frame0.shape == (240, 427, 3) and mask0.shape == (240, 427)
    result = check_parity(tiny_net, tiny_export, frames, resolution=None)
    assert result["max_abs_logit_diff"] <= 1e-3 and result["min_mask_iou"] >= 0.999
