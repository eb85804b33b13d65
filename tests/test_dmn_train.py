"""DMN-AOA training (training/dmn_proposals.py, training/dmn_train.py, issue 27 item 7), its
weights → export path (export/dmn_export.py's command) and our proposals in the Mask R-CNN format
(export/proposal_maskrcnn.py) through the sdk's adapter."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from sdk.io import write_mask

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

from training.dmn import DMNAOA  # noqa: E402
from training.dmn_proposals import ProposalNoise, boxes_of, match_targets, synthetic_proposals  # noqa: E402
from training.dmn_train import clip_step, load_dmn, save_dmn, trainable  # noqa: E402


def _objects(h=24, w=32):
    a = torch.zeros(h, w)
    a[2:10, 3:12] = 1
    b = torch.zeros(h, w)
    b[12:22, 18:30] = 1
    return torch.stack([a, b])


def test_clean_proposals_are_the_objects_and_match_their_own():
    rng = np.random.default_rng(0)
    objects = _objects()
    exact = ProposalNoise(keep=1.0, shift=0, morph=0.0, fragment=0.0, merge=0.0, blobs=0, confidence=(1.0, 1.0))
    for _ in range(5):
        props = synthetic_proposals(rng, objects, exact)
        assert props.shape == (2, 24, 32)
        target = match_targets(objects, props)
        assert sorted(target.tolist()) == [0, 1]
        for n in range(2):     # each object's own copy, softened at the edge only (corners drop)
            p, g = props[target[n]] > 0.5, objects[n] > 0
            assert (p & g).sum() / (p | g).sum() > 0.9 and not (p & ~g).any()


def test_missing_objects_go_to_the_dustbin_and_boxes_are_in_input_px():
    objects = _objects()
    assert match_targets(objects, torch.zeros(0, 24, 32)).tolist() == [-1, -1]
    only_a = objects[:1].clone()
    assert match_targets(objects, only_a).tolist() == [0, -1]
    assert boxes_of(objects).tolist() == [[12.0, 8.0, 48.0, 40.0], [72.0, 48.0, 120.0, 88.0]]
    rng = np.random.default_rng(1)
    noisy = [synthetic_proposals(rng, objects, ProposalNoise(keep=0.0, fragment=0.0, merge=0.0, blobs=3))
             for _ in range(20)]
    assert all(((p > 0.5).flatten(1).any(1)).all() for p in noisy)      # empty proposals are dropped
    assert any(len(p) for p in noisy) and all(len(p) <= 3 for p in noisy)


def _clip(t=3, n=2, size=64, seed=0, box=(20, 18), step=26):
    """A T-frame clip of N moving rectangles of distinct brightness on noise."""
    rng = np.random.default_rng(seed)
    frames = torch.from_numpy(rng.standard_normal((t, 3, size, size)).astype(np.float32))
    masks = torch.zeros(t, n, size, size)
    for i in range(t):
        for o in range(n):
            y, x = 4 + 3 * i + step * o, 6 + 2 * i + step * o
            masks[i, o, y:y + box[0], x:x + box[1]] = 1
            frames[i, :, y:y + box[0], x:x + box[1]] += 1.5 * (o + 1)
    return {"frames": frames, "masks": masks, "others": torch.zeros(t, 1, size, size), "valid": torch.ones(n)}


def test_clip_step_trains_the_dmn_and_leaves_the_decoder_copy_frozen(tiny_net):
    torch.manual_seed(0)
    dmn = DMNAOA(tiny_net)
    own, copy = trainable(dmn, 0.0)
    out = clip_step(tiny_net, dmn, _clip(), np.random.default_rng(0), ProposalNoise())
    assert set(out) >= {"loss", "match", "mask", "accuracy", "iou_refine", "iou_core"}
    assert torch.isfinite(out["loss"]) and 0 <= float(out["accuracy"]) <= 1
    # at initialisation RefineNet is the core decoder: the same masks
    assert float(out["iou_refine"]) == pytest.approx(float(out["iou_core"]), abs=1e-6)
    out["loss"].backward()
    assert all(p.grad is None for p in copy)
    assert dmn.matcher.project_proposal[0].weight.grad.abs().sum() > 0
    assert dmn.memory_encoder.key.weight.grad.abs().sum() > 0             # through the template (Eq. 1)
    assert dmn.refiner.inject[2].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_net.parameters())            # the core stays frozen


class _PoolEncoder(torch.nn.Module):
    """A key encoder whose f4/f8/f16 are fixed random 1×1 projections of the average-pooled
    image: features that see the objects (the tiny random network's f16 is constant, ~1e-5)."""

    def __init__(self, skips):
        super().__init__()
        self.proj = torch.nn.ModuleList([torch.nn.Conv2d(3, skips[k], 1, bias=False) for k in ("f4", "f8", "f16")])
        with torch.no_grad():
            for p in self.proj:
                p.weight.copy_(torch.randn_like(p.weight).sign())

    def forward(self, image):
        return tuple(p(torch.nn.functional.avg_pool2d(image, s)) for p, s in zip(self.proj, (4, 8, 16)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_few_steps_on_one_clip_lower_the_matching_loss(tiny_net, seed):
    import copy

    torch.manual_seed(seed)
    core = copy.deepcopy(tiny_net)
    core.key_encoder = _PoolEncoder(core.config["skip_channels"])
    core.requires_grad_(False)
    dmn = DMNAOA(core)
    own, _ = trainable(dmn, 0.0)
    opt = torch.optim.Adam(own, lr=3e-3)
    noise = ProposalNoise(keep=1.0, shift=0, morph=0.0, fragment=0.0, merge=0.0, blobs=2)
    clip = _clip(size=96, box=(40, 36), step=44)

    def run(seed):
        return clip_step(core, dmn, clip, np.random.default_rng(seed), noise)

    with torch.no_grad():
        before = [run(s) for s in range(4)]
    for step in range(80):
        opt.zero_grad()
        run(step % 4)["match"].backward()
        opt.step()
    with torch.no_grad():
        after = [run(s) for s in range(4)]
    assert sum(float(o["match"]) for o in after) < 0.7 * sum(float(o["match"]) for o in before)
    assert np.mean([float(o["accuracy"]) for o in after]) > np.mean([float(o["accuracy"]) for o in before])


def test_weights_round_trip_and_refuse_other_files(tiny_net, tmp_path):
    torch.manual_seed(3)
    dmn = DMNAOA(tiny_net)
    with torch.no_grad():
        dmn.refiner.inject[0].weight.normal_()
    save_dmn(tmp_path / "w", dmn, {"recipe": {"core": "x"}})
    back, meta = load_dmn(tmp_path / "w", tiny_net)
    assert meta["kind"] == "dmn" and meta["hparams"] == dmn.hparams
    for (k, a), (_, b) in zip(dmn.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    save_dmn(tmp_path / "h", dmn, {}, half=True)
    half, _ = load_dmn(tmp_path / "h", tiny_net)
    assert torch.allclose(half.refiner.inject[0].weight, dmn.refiner.inject[0].weight, atol=1e-2)
    (tmp_path / "other.json").write_text(json.dumps({"kind": "proposals"}))
    (tmp_path / "other.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a DMN-AOA weights file"):
        load_dmn(tmp_path / "other", tiny_net)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_dmn(tmp_path / "missing", tiny_net)


def _davis2016(root, sequences=2, frames=5, size=(64, 80)):
    rng = np.random.default_rng(0)
    (root / "ImageSets").mkdir(parents=True)
    names = [f"s{i}" for i in range(sequences)]
    (root / "ImageSets" / "train.txt").write_text("\n".join(names) + "\n")
    for s in names:
        (root / "JPEGImages" / s).mkdir(parents=True)
        (root / "Annotations" / s).mkdir(parents=True)
        for t in range(frames):
            img = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            lab = np.zeros(size, np.uint8)
            lab[10 + 2 * t:40 + 2 * t, 12 + t:50 + t] = 1
            img[lab == 1] = 200
            cv2.imwrite(str(root / "JPEGImages" / s / f"{t:05d}.jpg"), img[:, :, ::-1])
            write_mask(root / "Annotations" / s / f"{t:05d}.png", lab)
    return root


def test_training_command_resumes_and_its_weights_export(tiny_net, tiny_export, tmp_path):
    from export.dmn_export import _main as export_main  # noqa: F401  (the command's module)
    from training.checkpoint import save_checkpoint
    from training.dmn_train import main

    core = save_checkpoint(tmp_path / "core", tiny_net)
    data = _davis2016(tmp_path / "davis")
    args = ["--core", str(core), "--data", str(data), "--out", str(tmp_path / "run"), "--batch", "2",
            "--crop", "64", "--checkpoint-every", "2", "--proposals", "", "--threads", "1"]
    first = CliRunner().invoke(main, args + ["--iterations", "2"])
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(main, args + ["--iterations", "4", "--final", str(tmp_path / "w")])
    assert second.exit_code != 0 and "another recipe (iterations differ)" in second.output
    resumed = CliRunner().invoke(main, args + ["--iterations", "2", "--final", str(tmp_path / "w")])
    assert resumed.exit_code == 0, resumed.output
    lines = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [2]                 # the resumed run had nothing left to do
    meta = json.loads((tmp_path / "w.json").read_text())
    assert meta["state"]["iteration"] == 2 and meta["history"][0]["iteration"] == 2

    import subprocess
    import sys
    folder = tmp_path / "export"
    shutil.copytree(tiny_export, folder)
    done = subprocess.run([sys.executable, "-m", "export.dmn_export", "--weights", str(tmp_path / "w"),
                           "--export", str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {"dmn_memory", "dmn_template", "aoa_match", "refine"} <= set(manifest["graphs"])
    bad = subprocess.run([sys.executable, "-m", "export.dmn_export", "--weights", str(tmp_path / "nothing"),
                          "--export", str(folder)], capture_output=True, text=True)
    assert bad.returncode == 1 and "not found" in bad.stderr and "Traceback" not in bad.stderr


def test_our_proposals_in_the_maskrcnn_format_reach_the_sdk_as_the_vosedge_graph_does(tiny_net, tmp_path):
    """The adapter path: the same proposal network as a Mask R-CNN-signature graph (box-28 masks)
    gives, after the sdk's conversion, the vosedge graph's boxes and nearly its masks."""
    import onnxruntime as ort

    from export.proposal_maskrcnn import export_maskrcnn_format
    from sdk.proposal_formats import check_signature, crop_to_boxes, paste_box_masks
    from sdk.proposal_graph import session_signature
    from training.proposal_net import ProposalNet

    torch.manual_seed(0)
    prop = ProposalNet({"skip_channels": tiny_net.config["skip_channels"], "top_k": 12}).eval()
    with torch.no_grad():                       # a confident object channel: some non-empty masks
        prop.cate.bias.fill_(2.0)
    path = export_maskrcnn_format(tiny_net, prop, tmp_path / "ours-maskrcnn.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    signature = check_signature("maskrcnn", *session_signature(session))
    assert signature.masks == "box-28"
    rgb = np.random.default_rng(0).random((3, 64, 96), dtype=np.float32)
    boxes, labels, scores, masks = session.run(None, {"images_tensors": rgb})
    assert masks.shape == (len(boxes), 1, 28, 28) and labels.dtype == np.int64 and (labels == 1).all()
    with torch.no_grad():
        image = torch.from_numpy(rgb)
        mean = torch.tensor(tiny_net.config["mean"]).view(3, 1, 1)
        std = torch.tensor(tiny_net.config["std"]).view(3, 1, 1)
        f4, f8, f16 = tiny_net.key_encoder(((image - mean) / std)[None])
        ref_boxes, ref_scores, ref_masks = prop.propose(f16, f8, f4)
    np.testing.assert_allclose(boxes, ref_boxes.numpy(), atol=1e-3)
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-4)
    pasted = paste_box_masks(masks[:, 0], boxes, (16, 24))             # what the sdk does with box-28 masks
    full = ref_masks.numpy()
    inside = crop_to_boxes(full, ref_boxes.numpy()) > 0.5               # the proposal's mask is within its box
    agree = [((pasted[k] > 0.5) == inside[k]).mean() for k in range(len(boxes)) if inside[k].any()]
    assert agree and min(agree) > 0.8 and np.mean(agree) > 0.93     # 28×28 bins resampled on a 16×24 grid
