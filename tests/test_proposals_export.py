"""Export side of the proposals contract: a user's ONNX model checked against the format asked
for (torchvision Mask R-CNN, Ultralytics YOLO-seg, vosedge), refused with a message naming the
output and nothing written; manifest_entry; vos-export --proposals."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from export.cli import main  # noqa: E402
from export.errors import ProposalModelError  # noqa: E402
from export.proposals import add_proposals, check_proposal_model, manifest_entry  # noqa: E402
from sdk.manifest import load_manifest, sha256_file  # noqa: E402
from tests.proposal_graphs import (  # noqa: E402
    F,
    fake_export,
    maskrcnn_graph,
    save_graph,
    snapshot,
    vosedge_graph,
    yolo_graph,
)


def _maskrcnn(tmp_path, **kw):
    kw.setdefault("masks", np.zeros((1, 1, 32, 48), np.float32))
    return maskrcnn_graph(tmp_path / "user.onnx", [[0, 0, 8, 8]], [0.9], **kw)


def _yolo(tmp_path, nc=2, anchors=84, size=(64, 64), **kw):
    return yolo_graph(tmp_path / "user.onnx", np.zeros((1, 4 + nc + 32, anchors)),
                      np.zeros((1, 32, size[0] // 4, size[1] // 4)), size=size, **kw)


def test_torchvision_and_ultralytics_signatures_are_accepted(tmp_path):
    sig = check_proposal_model(_maskrcnn(tmp_path), "maskrcnn")
    assert sig.masks == "full-frame" and sig.inputs == {"images_tensors": [3, "H", "W"]}
    assert set(sig.outputs) == {"boxes", "labels", "scores", "masks"}
    box = maskrcnn_graph(tmp_path / "box.onnx", [[0, 0, 8, 8]], [0.9], np.zeros((1, 1, 28, 28), np.float32))
    assert check_proposal_model(box, "maskrcnn").masks == "box-28"
    sig = check_proposal_model(_yolo(tmp_path, nc=80, anchors=8400, size=(640, 640)), "yolo-seg")
    assert sig.letterbox == (640, 640) and sig.outputs["output0"] == [1, 116, 8400]
    v = vosedge_graph(tmp_path / "v.onnx", [[0, 0, 4, 4]], [0.5], np.zeros((1, 8, 12)), inputs=("f16", "f8", "f4"))
    assert check_proposal_model(v, "vosedge", {"f16": 112, "f8": 40, "f4": 24}).masks == "full-frame-f4"


@pytest.mark.parametrize("fmt, build, message", [
    ("maskrcnn", lambda t: _maskrcnn(t, names=("boxes", "classes", "scores", "masks")),
     r"no output 'labels' \(expected labels \[P\] int64\)"),
    ("maskrcnn", lambda t: _maskrcnn(t, names=("dets", "labels", "scores", "masks")), r"no output 'boxes'"),
    ("maskrcnn", lambda t: _maskrcnn(t, mask_dtype=np.int32), r"output 'masks' is int32 \[P,1,H,W\], expected float32"),
    ("maskrcnn", lambda t: _maskrcnn(t, masks=np.zeros((1, 2, 28, 28), np.float32)),
     r"output 'masks' is \[P,2,28,28\], expected \[P,1,H,W\] \(axis 1 = 1\)"),
    ("maskrcnn", lambda t: _maskrcnn(t, image_shape=(1, 4, "H", "W")), r"input 'images_tensors' is \[1,4,H,W\]"),
    ("yolo-seg", lambda t: _yolo(t, dynamic_input=True), r"expected a fixed letterbox size"),
    ("yolo-seg", lambda t: yolo_graph(t / "user.onnx", np.zeros((1, 300, 38)), np.zeros((1, 32, 16, 16))),
     r"nms=True export"),
    ("yolo-seg", lambda t: yolo_graph(t / "user.onnx", np.zeros((1, 20, 84)), np.zeros((1, 32, 16, 16))),
     r"output 'output0' is \[1,20,84\], expected \[1,4\+nc\+32,A\]"),
    ("yolo-seg", lambda t: _maskrcnn(t), r"input 'images_tensors' is float32 \[3,H,W\], expected float32 \[1,3,S,S\]"),
    ("vosedge", lambda t: _maskrcnn(t), r"expected a non-empty subset of image, f16, f8, f4"),
    ("vosedge", lambda t: vosedge_graph(t / "user.onnx", [[0, 0, 4, 4]], [0.5], np.zeros((1, 1, 8, 12)),
                                        inputs=("image",)), r"output 'masks' is float32 \[P,H4,W4,\?\], expected float32 \[P,H/4,W/4\]"),
])
def test_models_that_do_not_fit_are_refused_naming_the_tensor(tmp_path, fmt, build, message):
    with pytest.raises(ProposalModelError, match=message):
        check_proposal_model(build(tmp_path), fmt)


def test_vosedge_features_must_match_the_export_channels(tmp_path):
    v = vosedge_graph(tmp_path / "v.onnx", [[0, 0, 4, 4]], [0.5], np.zeros((1, 8, 12)), inputs=("f16",))
    with pytest.raises(ProposalModelError, match="input 'f16' is \\[1,112,h,w\\], but the export's key encoder gives "
                                                 "f16 with 96 channels"):
        check_proposal_model(v, "vosedge", {"f16": 96})


def test_not_onnx_or_not_loadable(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ProposalModelError, match="is not an ONNX model"):
        check_proposal_model(junk, "maskrcnn")
    with pytest.raises(ProposalModelError, match="does not exist"):
        check_proposal_model(tmp_path / "none.onnx", "maskrcnn")
    import onnx
    from onnx import TensorProto, helper

    # the right signature, but a custom operator onnxruntime does not know (as torchvision's own
    # compiled ops would be): refused at export, not at the user's first frame
    info = helper.make_tensor_value_info
    node = helper.make_node("MaskHead", ["images_tensors"], ["boxes", "labels", "scores", "masks"],
                            domain="custom.ops")
    graph = helper.make_graph([node], "g", [info("images_tensors", F, [3, "H", "W"])],
                              [info("boxes", F, ["P", 4]), info("labels", TensorProto.INT64, ["P"]),
                               info("scores", F, ["P"]), info("masks", F, ["P", 1, "H", "W"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.ops", 1)])
    onnx.save(model, str(tmp_path / "custom.onnx"))
    assert check_proposal_model(tmp_path / "custom.onnx", "maskrcnn", load=False).masks == "full-frame"
    with pytest.raises(ProposalModelError, match="onnxruntime .* cannot load"):
        check_proposal_model(tmp_path / "custom.onnx", "maskrcnn")


def test_manifest_entry_for_each_format(tmp_path):
    e = manifest_entry(_maskrcnn(tmp_path), "maskrcnn")
    assert e["file"] == "user.onnx" and e["sha256"] == sha256_file(tmp_path / "user.onnx")
    assert e["preprocess"] == {"normalisation": "unit", "size": "internal", "channel_order": "rgb"}
    assert e["masks"] == "full-frame" and e["defaults"] == {"score_threshold": 0.05, "nms_iou": 0.4, "top_p": 30}
    y = manifest_entry(_yolo(tmp_path), "yolo-seg", file="proposals.onnx")
    assert y["preprocess"]["size"] == "letterbox" and y["preprocess"]["letterbox"] == [64, 64]
    assert y["file"] == "proposals.onnx" and y["masks"] == "yolo-prototypes"
    v = manifest_entry(vosedge_graph(tmp_path / "v.onnx", [[0, 0, 4, 4]], [0.5], np.zeros((1, 8, 12))), "vosedge",
                       postprocess_in_graph={"threshold": True, "nms": True}, defaults={"score_threshold": 0.2})
    assert v["postprocess_in_graph"] == {"threshold": True, "nms": True, "top_p": False}
    assert v["defaults"] == {"score_threshold": 0.2, "nms_iou": 0.4, "top_p": 30}
    assert v["preprocess"]["normalisation"] == "export" and v["inputs"] == {"image": [1, 3, "H1", "W1"],
                                                                            "f16": [1, 112, "H16", "W16"]}
    with pytest.raises(ProposalModelError, match="postprocess_in_graph"):
        manifest_entry(tmp_path / "v.onnx", "vosedge", postprocess_in_graph={"sorting": True})


def test_add_proposals_to_a_copy_leaves_the_source_alone(tmp_path):
    src = fake_export(tmp_path / "src")
    before = snapshot(src)
    add_proposals(src, _maskrcnn(tmp_path), "maskrcnn", out=tmp_path / "out")
    assert snapshot(src) == before
    m = load_manifest(tmp_path / "out")
    assert m.proposals["format"] == "maskrcnn" and (tmp_path / "out" / "proposals.onnx").is_file()
    assert not [p for p in (tmp_path).iterdir() if p.name.startswith(".")]       # no temporary folder left


def test_refused_model_writes_nothing(tmp_path):
    src = fake_export(tmp_path / "src")
    before = snapshot(src)
    bad = _maskrcnn(tmp_path, names=("boxes", "classes", "scores", "masks"))
    for out in (None, tmp_path / "out"):
        with pytest.raises(ProposalModelError, match="'labels'"):
            add_proposals(src, bad, "maskrcnn", out=out)
    assert snapshot(src) == before and not (tmp_path / "out").exists()


# ------------------------------------------------------------------ vos-export

def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_from_export_adds_proposals(tmp_path):
    src = fake_export(tmp_path / "src")
    before = snapshot(src)
    out = tmp_path / "out"
    result = _run("--from-export", src, "--proposals", _yolo(tmp_path), "--proposal-format", "yolo-seg", "--out", out)
    assert result.exit_code == 0, result.output
    assert "added yolo-seg proposals graph" in result.output and "box NMS IoU 0.4" in result.output
    assert snapshot(src) == before and load_manifest(out).proposals["format"] == "yolo-seg"
    # in place (OUT = DIR), replacing the graph it had
    result = _run("--from-export", src, "--proposals", _maskrcnn(tmp_path), "--proposal-format", "maskrcnn",
                  "--out", src)
    assert result.exit_code == 0, result.output
    raw = json.loads((src / "manifest.json").read_text())
    assert raw["proposals"]["format"] == "maskrcnn" and load_manifest(src).proposals["masks"] == "full-frame"


def test_cli_refuses_a_model_that_does_not_fit_and_writes_nothing(tmp_path):
    src = fake_export(tmp_path / "src")
    before = snapshot(src)
    bad = _maskrcnn(tmp_path, mask_dtype=np.int32)
    for extra in ((), ("--precision", "fp16")):
        result = _run("--from-export", src, "--proposals", bad, "--proposal-format", "maskrcnn", "--out",
                      tmp_path / "out", *extra)
        assert result.exit_code != 0
        assert "output 'masks' is int32" in result.output and "expected float32" in result.output
    assert snapshot(src) == before and not (tmp_path / "out").exists()
    # with --checkpoint the model is checked before the network is even loaded
    result = _run("--checkpoint", tmp_path / "absent.safetensors", "--proposals", bad, "--proposal-format",
                  "maskrcnn", "--out", tmp_path / "out")
    assert result.exit_code != 0 and "output 'masks' is int32" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_needs_both_options(tmp_path):
    src = fake_export(tmp_path / "src")
    result = _run("--from-export", src, "--proposals", _maskrcnn(tmp_path), "--out", tmp_path / "out")
    assert result.exit_code == 2 and "together with --proposal-format" in result.output
    result = _run("--from-export", src, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "--proposals MODEL.onnx to add" in result.output


def test_int8_conversion_keeps_the_proposals_graph(tiny_export, tmp_path):
    """convert_export copies proposals.onnx unchanged (it stays float32) into the converted export."""
    pytest.importorskip("onnxruntime.quantization")
    import shutil

    from export.calibration import Clip
    from export.precision import convert_export
    from tests.conftest import square_clip

    src = shutil.copytree(tiny_export, tmp_path / "src")
    add_proposals(src, _maskrcnn(tmp_path), "maskrcnn")
    frames, masks = square_clip(6)
    clip = [Clip("square", tuple(frames), masks[0])]
    convert_export(src, tmp_path / "int8", "int8", int8_graphs=["decoder"], calibration_data=clip, parity_data=clip)
    m = load_manifest(tmp_path / "int8")
    assert m.proposals["format"] == "maskrcnn" and m.proposals["path"] == tmp_path / "int8" / "proposals.onnx"
    assert sha256_file(m.proposals["path"]) == sha256_file(src / "proposals.onnx")
    assert m.precision["graphs"]["decoder"] == "int8" and "proposals" not in m.precision["graphs"]
