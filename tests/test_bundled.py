"""The bundled default model: present, intact, faithful to its checkpoint, and useful."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import sdk
from sdk.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "sdk" / "models" / "default"
CHECKPOINT = ROOT / "training" / "weights" / "lite.safetensors"
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (DAVIS frames) not present")


def test_bundled_export_is_complete_and_matches_its_checkpoint_config():
    manifest = load_manifest(BUNDLED)          # verifies every graph's sha256
    cfg = json.loads(CHECKPOINT.with_suffix(".json").read_text())["config"]
    assert manifest.config == cfg["name"] == "lite"
    assert (manifest.key_channels, manifest.value_channels) == (cfg["key_channels"], cfg["value_channels"])
    assert manifest.method == "every_k"
    assert set(manifest.graphs) == {"key_encoder", "value_encoder", "readout", "decoder", "prior_enhance", "qam",
                                    "sam_key", "sam_value",                   # every policy runs on it
                                    "dmn_memory", "dmn_template", "aoa_match", "refine"}   # and dmn_aoa
    assert sorted(cfg["heads"]) == ["prior", "qam", "sam"]
    raw = json.loads((BUNDLED / "manifest.json").read_text())
    assert raw["proposals"]["file"] == "proposals.onnx" and raw["proposals"]["format"] == "vosedge"
    assert raw["dmn"]["align"] is True


def test_bundled_dmn_graphs_are_the_committed_dmn_weights():
    """The bundle's DMN-AOA graphs are training/weights/dmn-lite (fp16) on the bundled core:
    each graph agrees with the torch modules on random inputs (export.dmn_export's check)."""
    pytest.importorskip("torch")
    from export.dmn_export import check_dmn_parity
    from training.checkpoint import load_checkpoint
    from training.dmn_train import load_dmn

    net, _ = load_checkpoint(CHECKPOINT)
    dmn, _ = load_dmn(ROOT / "training" / "weights" / "dmn-lite", net)
    diffs = check_dmn_parity(dmn.eval(), BUNDLED, load_manifest(BUNDLED))
    assert set(diffs) == {"dmn_memory", "dmn_template", "aoa_match", "refine"}
    assert max(diffs.values()) <= 1e-3


@needs_data
def test_bundled_graphs_match_the_checkpoint_on_real_frames():
    pytest.importorskip("torch")
    from export.onnx_export import check_parity, load_davis_parity_frames
    from training.checkpoint import load_checkpoint

    net, _ = load_checkpoint(CHECKPOINT)
    frames, _ = load_davis_parity_frames(DATA / "davis2016-480p", max_sequences=2)
    parity = check_parity(net.eval(), BUNDLED, frames, resolution=load_manifest(BUNDLED).resolution)
    assert parity["max_abs_logit_diff"] <= 1e-3 and parity["min_mask_iou"] >= 0.999


@needs_data
# first_latest and qpm keep the previous frame; on blackswan its errors compound
# (first_latest: 61.6 J&F in vos-bench); the other policies hold IoU > 0.8
@pytest.mark.parametrize("method, min_iou", [("every_k", 0.8), ("first_latest", 0.4), ("lfu", 0.8), ("qdmn", 0.8),
                                             ("qpm", 0.4), ("rde", 0.8), ("dmn_aoa", 0.8)])
def test_bundled_model_tracks_a_real_object(method, min_iou):
    """blackswan, 240p, 20 frames from the first mask: the swan is still found by every memory
    policy on the bundled model (QAM, prior enhancement and SAM included), and by dmn_aoa with
    the bundled proposals graph."""
    from benchmarks.common import read_ground_truth
    from sdk.davis import davis_sequence_dirs
    from sdk.io import iter_frames, list_frames

    frames_dir, masks_dir = davis_sequence_dirs(DATA / "davis2016-240p", "blackswan")
    gt = read_ground_truth(masks_dir, list_frames(frames_dir)[:20])
    seg = sdk.Segmenter(method=method, providers="cpu", resolution=240)
    for t, ((_, rgb), mask) in enumerate(zip(iter_frames(frames_dir), gt)):
        out = seg.step(rgb, mask if t == 0 else None)
    inter, union = np.logical_and(out == 1, gt[-1] == 1).sum(), np.logical_or(out == 1, gt[-1] == 1).sum()
    assert inter / union > min_iou
