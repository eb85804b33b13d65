"""The bundled proposal network (issue 27 item 2): SOLOv2-style head, targets, loss, export."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from benchmarks.proposal_recall import ProposalRunner  # noqa: E402
from training.proposal_metrics import best_ious, nms  # noqa: E402
from export.errors import ParityError  # noqa: E402
from export.proposals import manifest_entry  # noqa: E402
from export.proposal_export import (add_to_export, check_parity, export_graph,  # noqa: E402
                                    random_features)
from training.proposal_data import instance_labels, targets_of  # noqa: E402
from training.proposal_net import (ProposalNet, assign_targets, boxes_from_masks, dice_loss,  # noqa: E402
                                   proposal_loss)
from training.proposal_train import load_proposal_checkpoint, save_proposal_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"tower_channels": 16, "tower_dilations": [1, 2], "mask_channels": 8, "top_k": 10}


def features(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 112, h, w, generator=g), torch.randn(b, 40, 2 * h, 2 * w, generator=g),
            torch.randn(b, 24, 4 * h, 4 * w, generator=g))


def randomised(net, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return net.eval()


def square(h, w, y0, y1, x0, x1):
    m = torch.zeros(h, w)
    m[y0:y1, x0:x1] = 1
    return m


# -- network ----------------------------------------------------------------------------------

def test_forward_and_propose_shapes():
    torch.manual_seed(0)
    net = randomised(ProposalNet(SMALL))
    cate, kernels, feat = net(*features(2, 3, 5))
    assert cate.shape == (2, 3, 5) and kernels.shape == (2, 8, 3, 5) and feat.shape == (2, 8, 12, 20)
    with torch.no_grad():
        boxes, scores, masks = net.propose(*features(1, 3, 5))
    assert boxes.shape == (10, 4) and scores.shape == (10,) and masks.shape == (10, 12, 20)
    assert ((scores >= 0) & (scores <= 1)).all() and ((masks >= 0) & (masks <= 1)).all()
    with torch.no_grad():        # fewer cells than top_k: every cell
        assert net.propose(*features(1, 2, 2))[1].shape == (4,)
    # boxes are the masks' tight boxes × 4 (px of the padded input)
    on = masks > 0.5
    for b, m in zip(boxes, on):
        if m.any():
            ys, xs = torch.nonzero(m, as_tuple=True)
            assert b.tolist() == [4 * xs.min(), 4 * ys.min(), 4 * (xs.max() + 1), 4 * (ys.max() + 1)]
        else:
            assert b.tolist() == [0, 0, 0, 0]


def test_boxes_from_masks():
    on = torch.stack([square(6, 8, 1, 3, 2, 7), torch.zeros(6, 8), square(6, 8, 5, 6, 0, 1)])
    assert boxes_from_masks(on).tolist() == [[2, 1, 7, 3], [0, 0, 0, 0], [0, 5, 1, 6]]


def test_unknown_option_refused():
    with pytest.raises(ValueError, match="tower_chanels"):
        ProposalNet({"tower_chanels": 8})


# -- targets (SOLO centre sampling) ----------------------------------------------------------

def test_assign_targets_centre_region():
    # 64×96 px on a 4×6 grid: cell = 16 px. Object 40×40 px with mass centre (x, y) = (40, 24)
    obj = square(64, 96, 4, 44, 20, 60)
    cate, owner = assign_targets(obj[None], (4, 6))
    # centre → cell (1, 2); σ/2·40 = 4 px half-size stays in that cell
    assert cate.nonzero().tolist() == [[1, 2]]
    assert owner[1, 2] == 0 and (owner >= 0).sum() == 1
    # centre on a cell edge, (48, 32): the 8 px centre region spans the 2×2 cells around it
    cate, _ = assign_targets(square(64, 96, 12, 52, 28, 68)[None], (4, 6))
    assert cate.nonzero().tolist() == [[1, 2], [1, 3], [2, 2], [2, 3]]
    # a huge object: at most 3×3 cells around its centre cell
    big = square(64, 96, 0, 64, 0, 96)
    cate, _ = assign_targets(big[None], (4, 6), sigma=1.0)
    assert cate.sum() == 9 and cate[1:4, 2:5].sum() == 9


def test_assign_targets_small_object_wins_and_tiny_ignored():
    big = square(64, 96, 0, 64, 0, 96)          # centre (48, 32) → cell (2, 3)
    small = square(64, 96, 33, 40, 49, 60)      # centre (54.5, 36.5) → cell (2, 3)
    tiny = square(64, 96, 2, 4, 2, 4)           # 4 px < min_pixels
    cate, owner = assign_targets(torch.stack([small, big, tiny]), (4, 6), sigma=1.0)
    assert owner[2, 3] == 0                     # the small object owns the shared cell
    assert (owner == 1).any() and not (owner == 2).any()
    assert cate[0, 0] == 0


def test_instance_labels_and_targets_of():
    masks = np.zeros((3, 32, 32), np.float32)
    masks[0, :16, :16] = 1
    masks[1, 16:, 16:] = 1
    masks[2, 0:2, 30:32] = 1                    # ¼ of one 4×4 cell: not kept
    lab = instance_labels(masks, np.array([1, 1, 0], np.float32))
    assert lab.shape == (8, 8) and set(np.unique(lab)) == {0, 1, 2}
    assert (lab[:4, :4] == 1).all() and (lab[4:, 4:] == 2).all()
    inst, cate, owner = targets_of(torch.from_numpy(lab), (2, 2))
    assert inst.shape == (2, 8, 8)
    assert owner[0, 0] == 0 and owner[1, 1] == 1 and cate.sum() == 2


# -- loss -------------------------------------------------------------------------------------

def test_dice_loss_perfect_and_wrong():
    t = square(8, 8, 2, 6, 2, 6)[None]
    assert dice_loss(t * 40 - 20, t).item() < 1e-3
    assert dice_loss(20 - t * 40, t).item() > 0.99


def test_loss_decreases_on_tiny_batch():
    torch.manual_seed(0)
    net = ProposalNet(SMALL)
    f16, f8, f4 = features(2, 4, 4, seed=1)
    inst = [torch.stack([square(16, 16, 1, 7, 1, 7), square(16, 16, 9, 15, 8, 16)]),
            square(16, 16, 4, 12, 4, 12)[None]]
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = proposal_loss(net, f16, f8, f4, inst)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert out["positives"] == sum(float(assign_targets(i, (4, 4))[0].sum()) for i in inst) > 0
    assert losses[-1] < 0.7 * losses[0], losses


def test_loss_with_precomputed_targets_equals_assigned():
    torch.manual_seed(0)
    net = ProposalNet(SMALL)
    f16, f8, f4 = features(1, 4, 4)
    inst = [square(16, 16, 2, 10, 3, 12)[None]]
    cate, owner = assign_targets(inst[0], (4, 4))
    a = proposal_loss(net, f16, f8, f4, inst)["loss"]
    b = proposal_loss(net, f16, f8, f4, inst, targets=(cate[None], owner[None]))["loss"]
    assert torch.allclose(a, b)


# -- checkpoint, export ------------------------------------------------------------------------

def test_checkpoint_roundtrip_fp16(tmp_path):
    torch.manual_seed(0)
    net = randomised(ProposalNet(SMALL))
    save_proposal_checkpoint(tmp_path / "p", net, {"iteration": 3}, half=True)
    back, meta = load_proposal_checkpoint(tmp_path / "p.safetensors")
    assert meta["state"]["iteration"] == 3 and meta["dtype"] == "float16" and back.config == net.config
    for (k, a), (_, b) in zip(net.state_dict().items(), back.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), k
    (tmp_path / "q.json").write_text(json.dumps({"config": {}}))
    (tmp_path / "q.safetensors").write_bytes((tmp_path / "p.safetensors").read_bytes())
    with pytest.raises(ValueError, match="not a proposal-network checkpoint"):
        load_proposal_checkpoint(tmp_path / "q")
    with pytest.raises(FileNotFoundError, match="r.json"):
        (tmp_path / "r.safetensors").write_bytes(b"")
        load_proposal_checkpoint(tmp_path / "r")


def test_export_parity_random_head(tmp_path):
    torch.manual_seed(0)
    net = randomised(ProposalNet(SMALL), scale=0.2)
    path = export_graph(net, tmp_path / "proposals.onnx")
    worst = check_parity(net, path, random_features(np.random.default_rng(0), sizes=((4, 6), (7, 5), (2, 1))))
    assert worst["scores_max_abs"] < 1e-4 and worst["masks_max_abs"] < 1e-4
    # a different network is caught
    other = randomised(ProposalNet(SMALL), seed=5, scale=0.2)
    with pytest.raises(ParityError):
        check_parity(other, path, random_features(np.random.default_rng(0), sizes=((4, 6),)))


def test_add_to_export_and_recall_runner(tiny_export, tmp_path):
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(tiny_export, folder)
    torch.manual_seed(0)
    net = randomised(ProposalNet(SMALL), scale=0.2)
    rgb = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    entry = add_to_export(net, folder, score_threshold=0.0, images=[rgb])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["proposals"] == entry and (folder / "proposals.onnx").is_file()
    want = manifest_entry(folder / "proposals.onnx", "vosedge", defaults={"score_threshold": 0.0})
    assert {k: v for k, v in entry.items() if k != "parity"} == want
    assert entry["postprocess_in_graph"] == {"threshold": False, "nms": False, "top_p": False}
    assert entry["inputs"]["f16"] == [1, 112, "h", "w"] and entry["outputs"]["masks"] == ["P", "h4", "w4"]
    assert entry["defaults"] == {"score_threshold": 0.0, "nms_iou": 0.4, "top_p": 30}
    # the sdk-side runner: masks at frame size, at most top_p, ≤ the graph's P
    runner = ProposalRunner(folder, resolution=None)
    masks, scores = runner(rgb)
    assert masks.shape[1:] == (64, 96) and 1 <= len(masks) <= 10 and masks.dtype == bool
    assert np.all(np.diff(scores) <= 0)


def test_add_to_export_refuses_bad_folders(tmp_path):
    net = ProposalNet(SMALL)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        add_to_export(net, tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "vosedge-export", "skip_channels": {"f16": 1024}}))
    with pytest.raises(ValueError, match="skip_channels"):
        add_to_export(net, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


# -- recall benchmark helpers -----------------------------------------------------------------

def test_nms_and_best_ious():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 3]], np.float32)   # IoU(0, 3) = 0.3
    scores = np.array([0.9, 0.8, 0.7, 0.01], np.float32)
    assert nms(boxes, scores, 0.4, 30).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.4, 30, threshold=0.05).tolist() == [0, 2]
    assert nms(boxes, scores, 0.4, 1).tolist() == [0]
    gt = np.zeros((1, 4, 4), bool)
    gt[0, :2, :2] = True
    props = np.stack([gt[0], ~gt[0], np.pad(np.ones((2, 1), bool), ((0, 2), (0, 3)))])
    assert best_ious(props, gt).tolist() == [1.0]
    assert best_ious(props[2:], gt).tolist() == [0.5]


# -- training CLI: cache, checkpoints, resume, fp16 weights ----------------------------------

def test_train_cli_caches_resumes_and_writes_fp16(tiny_net, square_clip, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from training.checkpoint import save_checkpoint
    from training.proposal_train import main

    root = tmp_path / "davis"
    (root / "ImageSets").mkdir(parents=True)
    (root / "ImageSets" / "train.txt").write_text("a\nb\n")
    for s in ("a", "b"):
        (root / "JPEGImages" / s).mkdir(parents=True)
        (root / "Annotations" / s).mkdir(parents=True)
        for i, (rgb, lab) in enumerate(zip(*square_clip(4, 64, 96))):
            Image.fromarray(rgb).save(root / "JPEGImages" / s / f"{i:05d}.jpg", quality=95)
            note = Image.fromarray(lab, "P")
            note.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
            note.save(root / "Annotations" / s / f"{i:05d}.png")
    enc = save_checkpoint(tmp_path / "enc", tiny_net)
    args = ["--data", f"{root}:train", "--encoder", str(enc), "--cache", str(tmp_path / "cache"), "--cache-clips", "6",
            "--crop", "64", "--held-out", "2", "--out", str(tmp_path / "run"), "--batch", "2",
            "--checkpoint-every", "2", "--threads", "1", "--val-sequences", "b"]
    r = CliRunner().invoke(main, args + ["--iterations", "2"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "cache").glob("shard-*.pt"))) >= 1
    r = CliRunner().invoke(main, args + ["--iterations", "4", "--final", str(tmp_path / "w" / "p")])
    assert r.exit_code == 0, r.output
    assert "resuming at iteration 2" in r.output
    lines = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [2, 4] and "held_out" in lines[0]
    assert lines[0]["val"]["objects"] == 1 and 0 <= lines[0]["val"]["recall@0.5"] <= 1   # b's frames 0 (every 4th of 4)
    cache_meta = json.loads((tmp_path / "cache" / "cache.json").read_text())
    assert cache_meta["sequences"] == ["a"]                          # the validation sequence is left out
    net, meta = load_proposal_checkpoint(tmp_path / "w" / "p")
    best = min(lines, key=lambda x: -x["val"]["mean_best_iou"])      # --final takes the best real-frame IoU
    assert meta["dtype"] == "float16" and meta["state"]["picked"] == "best"
    assert meta["state"]["iteration"] == best["iteration"]
    r = CliRunner().invoke(main, args + ["--held-out", "99", "--iterations", "5"])
    assert r.exit_code != 0 and "--held-out" in r.output
    r = CliRunner().invoke(main, args + ["--val-sequences", "ghost"])
    assert r.exit_code != 0 and "ghost" in r.output


def test_bundled_weights_load_and_run():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "training" / "weights" / "proposals-lite.safetensors"
    net, meta = load_proposal_checkpoint(path)
    assert meta["dtype"] == "float16" and meta["state"]["picked"] == "best"
    assert path.stat().st_size < 4 * 2**20
    with torch.no_grad():
        boxes, scores, masks = net.eval().propose(*features(1, 5, 7))
    assert boxes.shape == (35, 4) and masks.shape == (35, 20, 28) and torch.isfinite(scores).all()
