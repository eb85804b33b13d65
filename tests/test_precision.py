"""vos-export --precision fp16|int8: converted graphs keep the contract, int8 graphs are QDQ with
per-channel weights (symmetric for TensorRT), the sdk runs every precision unchanged, parity
against float32 is enforced with nothing written on failure, and the manifest's precision is
validated. Tiny network and synthetic clips; the real-frame test skips without ../shared/data."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import square_clip
from onnx import numpy_helper
from PIL import Image

import sdk
from export import cli as export_cli
from export.calibration import Clip, load_clips
from export.errors import CalibrationError, ParityError
from export.precision import convert_export
from sdk.demo import make_clip
from sdk.errors import ManifestError
from sdk.io import write_mask
from sdk.manifest import DEFAULT_MODEL_DIR, load_manifest, sha256_file

pytest.importorskip("onnxruntime.quantization")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def clips(n_frames: int = 6) -> list[Clip]:
    """One synthetic clip: a red square moving on a gradient (conftest.square_clip). The tiny
    network's random weights segment it stably (the whole frame is the object), so parity vs
    float32 holds unless a graph is broken; on clips with two objects its random logits are so
    close that any rounding swaps the labels."""
    frames, masks = square_clip(n_frames)
    return [Clip("square", tuple(frames), masks[0])]


def davis_root(root: Path, frames: int = 4) -> Path:
    """A DAVIS-layout folder with two synthetic square sequences in train.txt and val.txt."""
    for step, name in ((6, "one"), (4, "two")):
        rgb, labels = square_clip(frames, 48, 64, step=step)
        for i, (frame, gt) in enumerate(zip(rgb, labels)):
            (root / "JPEGImages" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(root / "JPEGImages" / name / f"{i:05d}.jpg", quality=95)
            write_mask(root / "Annotations" / name / f"{i:05d}.png", gt)
    (root / "ImageSets").mkdir()
    for split in ("train", "val"):
        (root / "ImageSets" / f"{split}.txt").write_text("one\ntwo\n")
    return root


def segment(model, frames, mask, **kwargs) -> list[np.ndarray]:
    seg = sdk.Segmenter(model, providers="cpu", **kwargs)
    return [seg.step(frames[0], mask)] + [seg.step(f) for f in frames[1:]]


def weight_dequantizers(path: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """(int weights, scales, zero points, axis) of the DequantizeLinear feeding each Conv's weight."""
    model = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            dq = producer[node.input[1]]
            assert dq.op_type == "DequantizeLinear", node.name
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            out.append((init[dq.input[0]], init[dq.input[1]], init[dq.input[2]], axis))
    return out


@pytest.fixture(scope="module")
def bundled_240(tmp_path_factory):
    """A copy of the bundled export whose default resolution is 240 px (parity runs at the
    export's resolution: fast enough for a test)."""
    folder = shutil.copytree(DEFAULT_MODEL_DIR, tmp_path_factory.mktemp("bundled") / "lite240")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["resolution"] = 240
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def tiny_int8(tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "tiny-int8"
    convert_export(tiny_export, out, "int8", int8_graphs=["value_encoder", "decoder"], calibration_data=clips(),
                   parity_data=clips())
    return out


def test_fp16_export_keeps_the_contract(bundled_240, tmp_path):
    pytest.importorskip("onnxconverter_common")
    frames, masks = make_clip(frames=3, height=120, width=160)         # two textured objects
    data = [Clip("demo", tuple(frames), masks[0])]
    raw = convert_export(bundled_240, tmp_path / "fp16", "fp16", parity_data=data)
    manifest = load_manifest(tmp_path / "fp16")                        # sha256 of every graph matches
    original = load_manifest(bundled_240)
    p = manifest.precision
    assert p["dtype"] == "float16" and p["graphs"]["readout"] == "float32" and p["float32_fallback"] == {}
    assert {g for g, d in p["graphs"].items() if d == "float16"} == set(original.graphs) - {"readout"}
    assert manifest.raw["graphs"]["readout"]["sha256"] == original.raw["graphs"]["readout"]["sha256"]
    assert manifest.raw["graphs"]["decoder"]["sha256"] != original.raw["graphs"]["decoder"]["sha256"]
    assert p["source"]["manifest_sha256"] == sha256_file(bundled_240 / "manifest.json")
    # every policy that runs a float16 graph was parity-checked: the heads through qdmn and rde
    assert set(raw["precision"]["parity"]["methods"]) == {"every_k", "qdmn", "rde"}
    assert raw["precision"]["parity"]["mean_iou"] >= 0.99
    for name, graph in manifest.graphs.items():                       # float32 in, float32 out
        model = onnx.load(str(graph), load_external_data=False).graph
        assert {v.type.tensor_type.elem_type for v in [*model.input, *model.output]} <= {
            onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}, name
    for a, b in zip(segment(bundled_240, frames, masks[0]), segment(manifest.root, frames, masks[0])):
        assert a.dtype == b.dtype == np.uint8
        assert np.count_nonzero((a > 0) & (b > 0)) / max(1, np.count_nonzero((a > 0) | (b > 0))) > 0.95


def test_int8_graphs_are_qdq_with_per_channel_weights(tiny_int8, tiny_export):
    manifest = load_manifest(tiny_int8)
    p = manifest.precision
    assert p["dtype"] == "int8" and p["scheme"]["name"] == "ort"
    assert p["graphs"] == {"key_encoder": "float32", "value_encoder": "int8", "readout": "float32", "decoder": "int8"}
    assert p["calibration"]["policies"] == ["every_k"] and p["calibration"]["resolution"] == 64
    assert set(p["parity"]["graphs_rel_error"]) == {"value_encoder", "decoder"}
    assert sha256_file(manifest.graphs["readout"]) == sha256_file(tiny_export / "readout.onnx")
    for name in ("value_encoder", "decoder"):
        ops = {n.op_type for n in onnx.load(str(manifest.graphs[name])).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, name
        weights = weight_dequantizers(manifest.graphs[name])
        assert weights
        for q, scale, zero, axis in weights:
            assert q.dtype == np.int8 and axis == 0
            assert scale.shape == (q.shape[0],)                                   # one scale per output channel
            assert np.unique(scale).size > 1 or q.shape[0] == 1
            assert np.abs(q.astype(int)).max() <= 64                          # ort scheme: 7-bit weight range
    assert "QuantizeLinear" not in {n.op_type for n in onnx.load(str(manifest.graphs["key_encoder"])).graph.node}
    frames, masks = make_clip(frames=4, height=96, width=128)         # two objects
    outs = segment(tiny_int8, frames, masks[0])
    assert all(o.shape == (96, 128) and o.dtype == np.uint8 for o in outs)


def test_tensorrt_scheme_is_symmetric(tiny_export, tmp_path):
    out = tmp_path / "trt"
    convert_export(tiny_export, out, "int8", scheme="tensorrt", int8_graphs=["value_encoder", "decoder"],
                   calibration_data=clips(), parity_data=clips())
    manifest = load_manifest(out)
    assert manifest.precision["scheme"]["activations"] == "int8" and manifest.precision["scheme"]["bias"] == "float32"
    for name in ("value_encoder", "decoder"):
        model = onnx.load(str(manifest.graphs[name]))
        init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        assert {n.domain for n in model.graph.node} == {""} and [o.domain for o in model.opset_import] == [""]
        qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert qdq
        for node in qdq:
            zero = init[node.input[2]]
            assert zero.dtype == np.int8 and not zero.any(), node.name        # zero points 0: symmetric
        for q, scale, _, axis in weight_dequantizers(manifest.graphs[name]):
            assert axis == 0 and scale.shape == (q.shape[0],) and q.min() >= -127
        producer = {o: n for n in model.graph.node for o in n.output}
        biases = [n.input[2] for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2]
        assert biases and all(b in init and init[b].dtype == np.float32 and b not in producer for b in biases)
    frames, masks = make_clip(frames=3, height=64, width=96)
    assert all(o.shape == (64, 96) for o in segment(out, frames, masks[0]))


def test_broken_quantisation_is_refused_and_out_is_untouched(tiny_export, tiny_int8, tmp_path, monkeypatch):
    from export import int8

    quantize = int8.quantize_graph

    def broken(src, dst, *args):          # the decoder's logits negated: every mask flips
        done = quantize(src, dst, *args)
        if src.stem == "decoder":
            model = onnx.load(str(dst))
            out = model.graph.output[0].name
            for node in model.graph.node:
                node.output[:] = [f"{o}_pre" if o == out else o for o in node.output]
            model.graph.node.append(onnx.helper.make_node("Neg", [f"{out}_pre"], [out]))
            onnx.save(model, str(dst))
        return done

    monkeypatch.setattr(int8, "quantize_graph", broken)
    out = shutil.copytree(tiny_int8, tmp_path / "out")           # an earlier export, to be kept as it is
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ParityError, match=r"mean IoU every_k 0\.0+ < 0\.99.*decoder"):
        convert_export(tiny_export, out, "int8", calibration_data=clips(), parity_data=clips())
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]     # no temporary folder left


def test_manifest_precision_is_validated(tiny_int8, tiny_export, tmp_path):
    assert load_manifest(tiny_export).precision == {"dtype": "float32", "graphs": dict.fromkeys(
        ("key_encoder", "value_encoder", "readout", "decoder"), "float32")}
    copy = shutil.copytree(tiny_int8, tmp_path / "copy")
    raw = json.loads((copy / "manifest.json").read_text())

    def with_precision(**changes):
        (copy / "manifest.json").write_text(json.dumps({**raw, "precision": {**raw["precision"], **changes}}))

    with_precision(dtype="int4")
    with pytest.raises(ManifestError, match=r"precision\.dtype is 'int4'.*known: float32, float16, int8"):
        sdk.Segmenter(copy, providers="cpu")
    with_precision(graphs={**raw["precision"]["graphs"], "decoder": "bfloat16"})
    with pytest.raises(ManifestError, match=r"precision\.graphs\.decoder is 'bfloat16'.*known: float32, float16, int8"):
        load_manifest(copy)
    with_precision(graphs={"sam_key": "int8"})
    with pytest.raises(ManifestError, match="precision.graphs names graph 'sam_key'"):
        load_manifest(copy)
    (copy / "manifest.json").write_text(json.dumps({**raw, "precision": "int8"}))
    with pytest.raises(ManifestError, match="precision is 'int8', expected an object"):
        load_manifest(copy)


def test_cli_converts_an_export_and_eval_reports_its_precision(tiny_export, tmp_path):
    from benchmarks import eval as vos_eval

    data = davis_root(tmp_path / "data")
    out = tmp_path / "int8"
    result = CliRunner().invoke(export_cli.main, ["--from-export", str(tiny_export), "--precision", "int8",
                                                  "--calibration-data", str(data), "--calibration-frames", "4",
                                                  "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote int8 export" in result.output and "decoder int8" in result.output and "mean mask IoU" in result.output
    precision = load_manifest(out).precision                        # the default choice: the decoder only
    assert {g for g, d in precision["graphs"].items() if d == "int8"} == {"decoder"}
    calibration = precision["calibration"]
    assert calibration["method"] == "percentile" and calibration["samples_per_graph"]["decoder"] == min(32, calibration["calls_seen"]["decoder"]) > 0
    assert calibration["sequences"] == ["one", "two"] and calibration["split"] == "train" and calibration["frames"] == 4
    args = ["--data", data, "--split", "val", "--model", out, "--providers", "cpu", "--out", tmp_path / "masks",
            "--json", tmp_path / "r.json"]
    result = CliRunner().invoke(vos_eval.main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["precision"] == "int8" and report["precision_graphs"]["decoder"] == "int8"


@pytest.mark.parametrize("args, message", [
    (["--precision", "int8", "--calibration-data", "{tmp}/nowhere"], "--calibration-data ROOT"),
    (["--precision", "fp16", "--parity-data", "{tmp}"], "--parity-data ROOT"),
    (["--precision", "fp32"], "give --precision fp16 or int8"),
    (["--precision", "fp32", "--parity-reference", "{tmp}"], "--parity-reference judges a reduced-precision export"),
    (["--precision", "fp16", "--calibration-method", "entropy"], "--calibration-method only apply to --precision int8"),
    (["--precision", "int8", "--calibration-data", "{data}", "--int8-graphs", "readout"], "readout stays float32"),
    (["--precision", "int8", "--method", "lfu"], "--method apply to --checkpoint exports"),
])
def test_cli_refusals_are_one_line_and_write_nothing(tiny_export, tmp_path, args, message):
    out = tmp_path / "out"
    data = davis_root(tmp_path / "data")
    argv = ["--from-export", str(tiny_export), "--out", str(out),
            *(a.format(tmp=tmp_path, data=data) for a in args)]
    result = CliRunner().invoke(export_cli.main, argv)
    assert result.exit_code in (1, 2) and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and not out.exists()


def test_cli_checkpoint_to_fp16(tiny_net, tmp_path):
    pytest.importorskip("onnxconverter_common")
    from training.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "ckpt" / "tiny", tiny_net)
    data = davis_root(tmp_path / "data")
    out = tmp_path / "exports" / "fp16"
    result = CliRunner().invoke(export_cli.main, ["--checkpoint", str(ckpt), "--resolution", "64", "--precision",
                                                  "fp16", "--parity-data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out)
    assert manifest.precision["dtype"] == "float16" and manifest.resolution == 64
    assert manifest.precision["source"]["checkpoint"] == str(ckpt) and manifest.precision["source"]["path"] is None
    assert manifest.parity["max_abs_logit_diff"] <= 1e-3          # the float32 export's torch parity, kept
    assert sorted(p.name for p in out.parent.iterdir()) == ["fp16"]   # the temporary float32 export is gone


def test_missing_calibration_data_is_a_calibration_error(tiny_export, tmp_path):
    with pytest.raises(CalibrationError, match="--calibration-data ROOT"):
        convert_export(tiny_export, tmp_path / "out", "int8", calibration_data=tmp_path / "absent")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "davis2016-240p").is_dir(), reason="../shared/data is absent")
def test_default_int8_choice_passes_parity_on_real_frames(bundled_240, tmp_path):
    root = DATA / "davis2016-240p"
    # a reduced calibration (the default is 8 sequences x 10 frames) for speed; with 2 sequences
    # the 2026-12-02 bundle lands at mean IoU 0.9898, with 3 at 0.9906 (the full export: 0.9933)
    raw = convert_export(bundled_240, tmp_path / "int8", "int8", calibration_data=root,
                         calibration_sequences=3, calibration_frames=6, samples_per_graph=12,
                         parity_data=load_clips(root, "val", 2, 10, "--parity-data"))
    parity = raw["precision"]["parity"]
    assert parity["mean_iou"] >= 0.99 and set(parity["graphs_rel_error"]) == {"decoder"}
    assert all(err < 0.2 for errors in parity["graphs_rel_error"].values() for err in errors.values())


def test_parity_reference_is_the_export_the_masks_are_judged_by(tiny_export, tmp_path):
    """--parity-reference: another float32 export replaces the source as the parity reference
    (training.qat's case); one with the decoder's logits negated makes the same conversion fail,
    one that cannot be compared is refused before anything runs."""
    reference = shutil.copytree(tiny_export, tmp_path / "reference")
    out = tmp_path / "int8"
    manifest = convert_export(tiny_export, out, "int8", calibration_data=clips(), parity_data=clips(),
                              parity_reference=reference)
    assert manifest["precision"]["parity"]["reference"] == {
        "path": str(reference.resolve()), "manifest_sha256": sha256_file(reference / "manifest.json"),
        "is_source": False}
    assert load_manifest(out).precision["dtype"] == "int8"

    model = onnx.load(str(reference / "decoder.onnx"))
    logits = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_pre" if o == logits else o for o in node.output]
    model.graph.node.append(onnx.helper.make_node("Neg", [f"{logits}_pre"], [logits]))
    onnx.save(model, str(reference / "decoder.onnx"))
    raw = json.loads((reference / "manifest.json").read_text())
    raw["graphs"]["decoder"]["sha256"] = sha256_file(reference / "decoder.onnx")
    (reference / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ParityError, match=r"mean IoU every_k 0\.0+ < 0\.99"):
        convert_export(tiny_export, tmp_path / "refused", "int8", calibration_data=clips(), parity_data=clips(),
                       parity_reference=reference)

    raw["key_channels"] = raw["key_channels"] * 2
    (reference / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"cannot judge .*key_channels 32 is not 16"):
        convert_export(tiny_export, tmp_path / "refused", "int8", calibration_data=clips(), parity_data=clips(),
                       parity_reference=reference)
    assert not (tmp_path / "refused").exists()
