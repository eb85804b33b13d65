"""sdk side of the proposals contract (docs/graph-contract.md, "Proposals"; DMN-AOA §3.1, §4.1):
the Proposals record, box NMS / threshold / top-P, the mask conversions onto the f4 grid, and
ProposalGenerator on graphs with the exact signatures of the three formats."""
import json

import numpy as np
import pytest

pytest.importorskip("onnx")

from export.proposals import add_proposals  # noqa: E402
from sdk.errors import GraphRunError, InputError, ManifestError  # noqa: E402
from sdk.manifest import load_manifest  # noqa: E402
from sdk.proposal_formats import Letterbox, full_frame_to_grid, paste_box_masks  # noqa: E402
from sdk.proposal_graph import ProposalGenerator  # noqa: E402
from sdk.proposals import Proposals, box_iou, nms, select  # noqa: E402
from tests.proposal_graphs import fake_export, maskrcnn_graph, normalise, vosedge_graph, yolo_graph  # noqa: E402


def _reference_nms(boxes, scores, thr):
    """Greedy NMS written the slow obvious way."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(box_iou(boxes[i], boxes[j])[0, 0] <= thr for j in kept):
            kept.append(i)
    return kept


# ------------------------------------------------------------------ post-processing

def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10], [3, 3, 3, 3]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0, 1, 0]], rtol=1e-6)


def test_nms_is_greedy_and_suppresses_above_threshold():
    boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [8, 0, 18, 10], [30, 30, 40, 40]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.1], np.float32)
    # 1 overlaps 0 with IoU 8/12 > 0.4: suppressed; 2 overlaps 0 with 2/18 and would overlap the
    # suppressed 1 with 4/16: kept (a suppressed box suppresses nothing)
    assert nms(boxes, scores, 0.4).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2, 3]
    assert nms(boxes, scores, 0.4, limit=2).tolist() == [0, 2]


def test_nms_matches_the_obvious_reference_on_random_boxes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = rng.integers(0, 25)
        xy = rng.uniform(0, 50, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(1, 30, (n, 2))], 1).astype(np.float32)
        scores = rng.choice([0.2, 0.5, 0.9], n).astype(np.float32)   # ties: lower index first
        assert nms(boxes, scores, 0.4).tolist() == _reference_nms(boxes, scores, 0.4)


def test_select_threshold_nms_top_p_and_skipped_stages():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]], np.float32)
    scores = np.array([0.5, 0.9, 0.05, 0.3, 0.06], np.float32)
    assert select(boxes, scores, 0.05, 0.4, 30).tolist() == [1, 3, 4]        # 0.05 is not > 0.05; 0 under 1
    assert select(boxes, scores, 0.05, 0.4, 2).tolist() == [1, 3]
    assert select(boxes, scores, None, 0.4, None).tolist() == [1, 3, 4, 2]
    assert select(boxes, scores, 0.05, None, None).tolist() == [1, 0, 3, 4]
    assert select(boxes, scores, None, None, None).tolist() == [1, 0, 3, 4, 2]
    assert select(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)).tolist() == []
    with pytest.raises(InputError, match="top_p"):
        select(boxes, scores, top_p=0)
    with pytest.raises(InputError, match=r"\[N,4\]"):
        select(boxes[:, :3], scores)


def test_proposals_validation():
    grid = (4, 6)
    ok = dict(boxes=np.array([[0, 0, 24, 16], [1, 1, 2, 2]], np.float32), scores=np.array([0.9, 0.2], np.float32),
              masks=np.zeros((2, *grid), np.float32))
    p = Proposals(**ok)
    assert len(p) == 2 and p.grid == grid and not p.masks.flags.writeable
    assert len(Proposals.empty(grid)) == 0 and Proposals.empty(grid).masks.shape == (0, 4, 6)
    bad = [({"scores": np.array([0.2, 0.9], np.float32)}, "sorted descending"),
           ({"scores": np.array([1.5, 0.2], np.float32)}, r"scores must lie in \[0, 1\]"),
           ({"boxes": ok["boxes"].astype(np.float64)}, "boxes must be a float32"),
           ({"boxes": np.array([[0, 0, 25, 16], [1, 1, 2, 2]], np.float32)}, "0 <= x1 <= x2 <= 24"),
           ({"boxes": np.array([[5, 0, 4, 16], [1, 1, 2, 2]], np.float32)}, "x1 <= x2"),
           ({"masks": np.full((2, *grid), 1.2, np.float32)}, "probabilities"),
           ({"masks": np.zeros((3, *grid), np.float32)}, "one P"),
           ({"scores": np.array([np.nan, 0.2], np.float32)}, "NaN")]
    for change, message in bad:
        with pytest.raises(InputError, match=message):
            Proposals(**{**ok, **change})


# ------------------------------------------------------------------ conversions onto the f4 grid

def test_full_frame_masks_become_4x4_block_means():
    masks = np.zeros((1, 16, 24), np.float32)
    masks[0, 4:8, 8:12] = 1          # exactly f4 cell (1, 2)
    masks[0, 0:2, 0:4] = 1           # half of cell (0, 0)
    grid = full_frame_to_grid(masks, (4, 6))
    expected = np.zeros((4, 6), np.float32)
    expected[1, 2], expected[0, 0] = 1, 0.5
    np.testing.assert_array_equal(grid[0], expected)
    with pytest.raises(ValueError, match="expected the input's 16x24"):
        full_frame_to_grid(np.zeros((1, 10, 10), np.float32), (4, 6))


def test_box_relative_28x28_mask_is_pasted_into_its_box():
    grid = (16, 20)                                      # input 64 x 80
    box = np.array([[16, 8, 48, 40]], np.float32)        # f4 cells whose centres 4c+2 lie inside: x 4..11, y 2..9
    full = paste_box_masks(np.ones((1, 28, 28), np.float32), box, grid)[0]
    expected = np.zeros(grid, np.float32)
    expected[2:10, 4:12] = 1
    np.testing.assert_allclose(full, expected, atol=1e-6)
    left = np.zeros((1, 28, 28), np.float32)
    left[:, :, :14] = 1                                  # left half of the box: x 16..32, cells 4..7
    full = paste_box_masks(left, box, grid)[0]
    assert np.allclose(full[2:10, 4:7], 1) and np.allclose(full[2:10, 9:12], 0) and full[:, 12:].max() == 0


def test_letterbox_round_trip_of_boxes_and_prototype_grid():
    lb = Letterbox.for_image(64, 128, (64, 64))          # scale 0.5 → 32 x 64, rows 16..48
    assert (lb.new_h, lb.new_w, lb.top, lb.left) == (32, 64, 16, 0)
    back = lb.boxes_back(np.array([[10, 20, 30, 40], [0, 0, 64, 64]], np.float32))
    np.testing.assert_allclose(back, [[20, 8, 60, 48], [0, 0, 128, 64]])
    image = lb.image(np.full((3, 64, 128), 0.5, np.float32))
    assert image.shape == (1, 3, 64, 64) and np.allclose(image[0, :, :16], 114 / 255) \
        and np.allclose(image[0, :, 16:48], 0.5)
    # prototype cell (i, j) of a scale-1 letterbox with 16 rows on top lands on f4 cell (i − 4, j)
    lb1 = Letterbox.for_image(32, 64, (64, 64))
    protos = np.random.default_rng(1).uniform(0, 1, (1, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(lb1.prototypes_to_grid(protos, (8, 16))[0], protos[0, 4:12], atol=1e-5)


# ------------------------------------------------------------------ ProposalGenerator per format

def _export_with(tmp_path, graph, fmt):
    folder = fake_export(tmp_path / "export")
    add_proposals(folder, graph, fmt)
    return load_manifest(folder)


def test_maskrcnn_full_frame_masks_see_the_unit_rgb_image(tmp_path):
    """The graph's masks are its input's red plane: the f4 masks must be the frame's R/255
    block means, so the sdk fed RGB in [0, 1] at the internal size; boxes pass through."""
    graph = maskrcnn_graph(tmp_path / "m.onnx", [[8, 4, 40, 20]], [0.8], mask_from_image=True)
    gen = ProposalGenerator(_export_with(tmp_path, graph, "maskrcnn"), providers="cpu", threads=1)
    rgb = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    out = gen(normalise(rgb))
    np.testing.assert_allclose(out.boxes, [[8, 4, 40, 20]])
    expected = (rgb[:, :, 0] / 255).reshape(8, 4, 12, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(out.masks[0], expected, atol=1e-5)
    assert gen.stages == {"score_threshold": 0.05, "nms_iou": 0.4, "top_p": 30}


def test_maskrcnn_class_agnostic_nms_threshold_and_top_p(tmp_path):
    boxes = [[0, 0, 16, 16], [1, 0, 17, 16], [20, 0, 36, 16], [40, 0, 48, 8], [0, 20, 8, 28]]
    scores = [0.9, 0.85, 0.6, 0.04, 0.3]
    masks = np.zeros((5, 1, 32, 48), np.float32)
    masks[2, 0, 0:16, 20:36] = 1
    graph = maskrcnn_graph(tmp_path / "m.onnx", boxes, scores, masks, labels=np.array([1, 2, 3, 4, 5]))
    manifest = _export_with(tmp_path, graph, "maskrcnn")
    out = ProposalGenerator(manifest, providers="cpu", threads=1)(normalise(np.zeros((32, 48, 3), np.uint8)))
    # box 1 (another label, IoU 15/17 with box 0) goes: class-agnostic; 0.04 under the 0.05 threshold
    np.testing.assert_allclose(out.scores, [0.9, 0.6, 0.3])
    np.testing.assert_allclose(out.boxes[1], [20, 0, 36, 16])
    assert out.masks.shape == (3, 8, 12) and np.allclose(out.masks[1, 0:4, 5:9], 1) and out.masks[1].sum() == 16
    top = ProposalGenerator(manifest, providers="cpu", threads=1, top_p=2, score_threshold=0.5)
    assert top(normalise(np.zeros((32, 48, 3), np.uint8))).scores.tolist() == pytest.approx([0.9, 0.6])


def test_maskrcnn_box_28_masks_are_pasted(tmp_path):
    graph = maskrcnn_graph(tmp_path / "m.onnx", [[16, 8, 48, 40]], [0.7], np.ones((1, 1, 28, 28), np.float32))
    manifest = _export_with(tmp_path, graph, "maskrcnn")
    assert manifest.proposals["masks"] == "box-28"
    out = ProposalGenerator(manifest, providers="cpu", threads=1)(normalise(np.zeros((64, 80, 3), np.uint8)))
    expected = np.zeros((16, 20), np.float32)
    expected[2:10, 4:12] = 1
    np.testing.assert_allclose(out.masks[0], expected, atol=1e-6)


def _yolo_outputs(nc=2, nm=32, anchors=8):
    det = np.zeros((1, 4 + nc + nm, anchors), np.float32)
    # anchor 0: box centred (32, 32), 16 x 16 in letterbox px, score 0.9 (class 1), coefficient 10 on proto 0
    det[0, :4, 0], det[0, 4:4 + nc, 0], det[0, 4 + nc, 0] = [32, 32, 16, 16], [0.1, 0.9], 10
    det[0, :4, 1], det[0, 4, 1] = [33, 32, 16, 16], 0.8          # IoU 15/17 with anchor 0: suppressed
    det[0, :4, 2], det[0, 4, 2] = [10, 30, 8, 8], 0.01           # under the threshold
    det[0, :4, 3], det[0, 5, 3], det[0, 4 + nc + 1, 3] = [52, 40, 8, 8], 0.5, 10
    protos = np.full((1, nm, 16, 16), -1, np.float32)
    protos[0, 0, :, :8] = 1                                      # proto 0: +1 left of letterbox x = 32
    protos[0, 1] = 1
    return det, protos


def test_yolo_seg_letterbox_scores_boxes_and_prototype_masks(tmp_path):
    det, protos = _yolo_outputs()
    graph = yolo_graph(tmp_path / "y.onnx", det, protos, size=(64, 64))
    manifest = _export_with(tmp_path, graph, "yolo-seg")
    assert manifest.proposals["preprocess"]["letterbox"] == [64, 64]
    out = ProposalGenerator(manifest, providers="cpu", threads=1)(normalise(np.zeros((32, 64, 3), np.uint8)))
    # the 32 x 64 input sits in rows 16..48 of the 64 x 64 letterbox at scale 1
    np.testing.assert_allclose(out.scores, [0.9, 0.5])
    np.testing.assert_allclose(out.boxes, [[24, 8, 40, 24], [48, 20, 56, 28]])
    sig = 1 / (1 + np.exp(-10 * protos[0, 0]))                   # f4 cell (r, c) = prototype cell (r + 4, c)
    expected = np.zeros((8, 16), np.float32)
    expected[2:6, 6:10] = sig[6:10, 6:10]                        # cropped to the box: centres 4c+2 in [24, 40)
    np.testing.assert_allclose(out.masks[0], expected, atol=1e-5)
    assert out.masks[0, 3, 6] > 0.99 and out.masks[0, 3, 9] < 0.01


@pytest.mark.parametrize("fmt", ["maskrcnn", "yolo-seg", "vosedge"])
def test_no_proposals(tmp_path, fmt):
    if fmt == "maskrcnn":
        graph = maskrcnn_graph(tmp_path / "g.onnx", np.zeros((0, 4)), np.zeros(0), np.zeros((0, 1, 32, 48)))
    elif fmt == "yolo-seg":
        det, protos = _yolo_outputs()
        det[0, 4:6] = 0.0                                        # every score 0: none above the threshold
        graph = yolo_graph(tmp_path / "g.onnx", det, protos)
    else:
        graph = vosedge_graph(tmp_path / "g.onnx", np.zeros((0, 4)), np.zeros(0), np.zeros((0, 8, 12)),
                              inputs=("image",))
    out = ProposalGenerator(_export_with(tmp_path, graph, fmt), providers="cpu", threads=1)(
        normalise(np.zeros((32, 48, 3), np.uint8)))
    assert len(out) == 0 and out.boxes.shape == (0, 4) and out.masks.shape == (0, 8, 12)


def test_vosedge_graph_reads_features_and_keeps_what_the_graph_did(tmp_path):
    boxes = [[0, 0, 16, 16], [1, 0, 17, 16]]
    masks = np.zeros((2, 8, 12), np.float32)
    masks[0, :4, :4] = 0.75
    graph = vosedge_graph(tmp_path / "v.onnx", boxes, [0.9, 0.8], masks, inputs=("image", "f16"))
    folder = fake_export(tmp_path / "export")
    add_proposals(folder, graph, "vosedge", postprocess_in_graph={"nms": True})
    gen = ProposalGenerator(load_manifest(folder), providers="cpu", threads=1)
    assert gen.features == ["f16"] and gen.stages["nms_iou"] is None
    image = normalise(np.zeros((32, 48, 3), np.uint8))
    with pytest.raises(InputError, match="f16"):
        gen(image)
    out = gen(image, {"f16": np.zeros((1, 112, 2, 3), np.float32)})
    assert len(out) == 2                                         # the graph said it did NMS: both kept
    np.testing.assert_array_equal(out.masks[0], masks[0])


def test_outputs_that_break_the_format_at_run_time(tmp_path):
    # masks declared [P,1,H,W] but 10 x 10 for a 32 x 48 input
    graph = maskrcnn_graph(tmp_path / "m.onnx", [[0, 0, 8, 8]], [0.9], np.zeros((1, 1, 10, 10), np.float32))
    gen = ProposalGenerator(_export_with(tmp_path, graph, "maskrcnn"), providers="cpu", threads=1)
    with pytest.raises(GraphRunError, match="masks are 10x10, expected the input's 32x48"):
        gen(normalise(np.zeros((32, 48, 3), np.uint8)))
    with pytest.raises(InputError, match=r"float32 \[1,3,H,W\]"):
        gen(np.zeros((1, 3, 30, 48), np.float32))


# ------------------------------------------------------------------ manifest

def test_manifest_round_trip_and_old_manifests(tmp_path):
    folder = fake_export(tmp_path / "export")
    assert load_manifest(folder).proposals is None               # a manifest without proposals loads
    with pytest.raises(ManifestError, match="has no proposals graph"):
        ProposalGenerator(load_manifest(folder))
    det, protos = _yolo_outputs()
    raw = add_proposals(folder, yolo_graph(tmp_path / "y.onnx", det, protos), "yolo-seg")
    entry = load_manifest(folder).proposals
    assert entry == {**raw["proposals"], "path": folder / "proposals.onnx"}
    assert entry["format"] == "yolo-seg" and entry["masks"] == "yolo-prototypes"
    assert entry["postprocess_in_graph"] == {"threshold": False, "nms": False, "top_p": False}
    assert entry["defaults"] == {"score_threshold": 0.05, "nms_iou": 0.4, "top_p": 30}
    assert entry["inputs"] == {"images": [1, 3, 64, 64]} and entry["outputs"]["output0"] == [1, 38, 8]


@pytest.mark.parametrize("change, message", [
    ({"format": "detectron"}, r"proposals.format is 'detectron', expected one of"),
    ({"masks": "box-28"}, r"proposals.masks is 'box-28', expected one of \['yolo-prototypes'\]"),
    ({"defaults": {"score_threshold": 0.05, "nms_iou": 1.5, "top_p": 30}}, r"defaults.nms_iou is 1.5"),
    ({"defaults": {"score_threshold": 0.05, "nms_iou": 0.4, "top_p": 0}}, r"defaults.top_p is 0"),
    ({"postprocess_in_graph": {"nms": "yes"}}, r"postprocess_in_graph is"),
    ({"preprocess": {"normalisation": "imagenet", "size": "internal", "channel_order": "rgb"}}, r"preprocess is"),
    ({"sha256": "0" * 64}, "does not match its sha256"),
    ({"file": "missing.onnx"}, "is missing"),
])
def test_bad_proposals_entry_is_refused(tmp_path, change, message):
    folder = fake_export(tmp_path / "export")
    det, protos = _yolo_outputs()
    raw = add_proposals(folder, yolo_graph(tmp_path / "y.onnx", det, protos), "yolo-seg")
    raw["proposals"].update(change)
    (folder / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=message):
        load_manifest(folder)


def test_maskrcnn_with_a_fixed_batched_input(tmp_path):
    """A wrapper's [1,3,H,W] input of fixed size is fed at that size and refuses frames of another."""
    graph = maskrcnn_graph(tmp_path / "m.onnx", [[0, 0, 8, 8]], [0.9], np.ones((1, 1, 32, 48), np.float32),
                           image_shape=(1, 3, 32, 48))
    gen = ProposalGenerator(_export_with(tmp_path, graph, "maskrcnn"), providers="cpu", threads=1)
    assert np.allclose(gen(normalise(np.zeros((32, 48, 3), np.uint8))).masks, 1)
    with pytest.raises(InputError, match="fixed 32x48 image, but frames are processed at 64x48"):
        gen(normalise(np.zeros((64, 48, 3), np.uint8)))
