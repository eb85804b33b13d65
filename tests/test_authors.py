"""The authors' checkpoints (STCN, RDE-VOS, QDMN) through vos-export and the sdk.

Synthetic checkpoints in each authors' layout (their exact names and shapes, random values,
:mod:`training.authors.synthetic`) are recognised, loaded strictly, exported, and the sdk's
masks on real DAVIS frames are compared with the authors' inference loops restated in torch
(:mod:`authors_loops`) frame by frame, memory schedule included.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from export.cli import main as vos_export  # noqa: E402
from sdk import Segmenter  # noqa: E402
from sdk.errors import InputError  # noqa: E402
from sdk.io import iter_frames, read_mask  # noqa: E402
from training.authors.checkpoints import (detect_arch, load_authors_checkpoint,  # noqa: E402
                                          read_state_dict)
from training.authors.synthetic import synthetic_state_dict, write_synthetic_checkpoint  # noqa: E402

from authors_loops import qdmn_loop, stcn_loop  # noqa: E402
from test_no_torch import SCRIPT as NO_TORCH_SCRIPT  # noqa: E402

ARCHS = ("stcn", "rde", "qdmn")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """arch → a synthetic checkpoint file in the authors' layout (torch.save of a plain state_dict)."""
    folder = tmp_path_factory.mktemp("authors")
    return {arch: write_synthetic_checkpoint(folder / f"{arch}.pth", arch, seed=i) for i, arch in enumerate(ARCHS)}


@pytest.fixture(scope="session")
def exports(checkpoints, tmp_path_factory) -> dict[str, Path]:
    """arch → its export folder, made by the vos-export command with its defaults."""
    folder = tmp_path_factory.mktemp("authors-exports")
    out = {}
    for arch, path in checkpoints.items():
        result = CliRunner().invoke(vos_export, ["--checkpoint", str(path), "--out", str(folder / arch)])
        assert result.exit_code == 0, result.output
        assert f"exported {arch}" in result.output
        out[arch] = folder / arch
    return out


@pytest.fixture(scope="session")
def stcn_sd(checkpoints):
    return torch.load(checkpoints["stcn"], weights_only=True)


# -- layouts and strict loading -----------------------------------------------------------------
def test_layouts_are_recognised_and_loaded_strictly(checkpoints):
    for arch, path in checkpoints.items():
        sd = read_state_dict(path)
        assert detect_arch(sd) == arch
        net = load_authors_checkpoint(path)
        assert net.arch == arch and not net.training
        own = net.state_dict()
        assert own.keys() == sd.keys()
        assert all(torch.equal(own[k], sd[k].float() if sd[k].is_floating_point() else sd[k]) for k in sd)
        assert net.source["arch"] == arch and len(net.source["sha256"]) == 64


def test_dataparallel_prefix_and_training_container_are_accepted(stcn_sd, tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"network": {f"module.{k}": v for k, v in stcn_sd.items()}}, path)
    net = load_authors_checkpoint(path)
    assert net.arch == "stcn"
    assert torch.equal(net.state_dict()["key_comp.weight"], stcn_sd["key_comp.weight"])


def test_stage0_value_conv1_is_zero_padded_to_five_channels(tmp_path):
    sd = synthetic_state_dict("stcn", seed=3, stage0=True)
    assert sd["value_encoder.conv1.weight"].shape[1] == 4
    torch.save(sd, tmp_path / "stcn_s0.pth")
    net = load_authors_checkpoint(tmp_path / "stcn_s0.pth", arch="stcn")
    w = net.state_dict()["value_encoder.conv1.weight"]
    assert w.shape == (64, 5, 7, 7)
    assert torch.equal(w[:, :4], sd["value_encoder.conv1.weight"]) and not w[:, 4].any()


class NotATensor:
    """Arbitrary object: weights_only=True must refuse to unpickle it."""


def _refusals(sd):
    key = "decoder.pred.weight"
    yield "missing", {k: v for k, v in sd.items() if k != key}, ["'stcn' layout", "1 missing", key]
    yield "unexpected", {**sd, "decoder.extra.weight": torch.zeros(1)}, ["1 unexpected", "decoder.extra.weight"]
    yield "shape", {**sd, key: torch.zeros(1, 256, 1, 1)}, ["shape mismatch", f"{key} [1, 256, 1, 1] (expected [1, 256, 3, 3])"]


@pytest.mark.parametrize("case", ["missing", "unexpected", "shape", "wrong-arch", "truncated", "not-a-checkpoint",
                                  "object", "no-tensors", "unknown-layout"])
def test_bad_checkpoints_are_refused_and_nothing_is_written(case, stcn_sd, checkpoints, tmp_path):
    path, args, expect = tmp_path / "bad.pth", [], []
    cases = {name: (sd, words) for name, sd, words in _refusals(stcn_sd)}
    if case in cases:
        torch.save(cases[case][0], path)
        expect = cases[case][1]
    elif case == "wrong-arch":
        path, args, expect = checkpoints["stcn"], ["--arch", "qdmn"], ["'qdmn' layout", "missing", "unexpected"]
    elif case == "truncated":
        data = checkpoints["rde"].read_bytes()
        path.write_bytes(data[:len(data) // 2])
        expect = ["not a readable torch checkpoint"]
    elif case == "not-a-checkpoint":
        path.write_bytes(b"\xff\xd8\xff\xe0 this is a JPEG, not weights" * 10)
        expect = ["bad.pth"]
    elif case == "object":
        torch.save({"weights": NotATensor()}, path)
        expect = ["weights_only=True"]
    elif case == "no-tensors":
        torch.save({"epoch": 3}, path)
        expect = ["holds no state_dict"]
    else:
        torch.save({"backbone.conv.weight": torch.zeros(1)}, path)
        expect = ["fit none of the known layouts", "backbone.conv.weight"]
    out = tmp_path / "export"
    result = CliRunner().invoke(vos_export, ["--checkpoint", str(path), "--out", str(out), *args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for word in expect:
        assert word in result.output
    assert not out.exists() and not any(p.name.startswith(".export-") for p in tmp_path.iterdir())


def test_qam_activation_is_chosen_at_export(checkpoints, tmp_path):
    """A checkpoint does not say whether its QAM ends in ReLU (released QDMN) or sigmoid (the
    README's pre-training variant): --qam-activation does, QDMN only."""
    net = load_authors_checkpoint(checkpoints["qdmn"], qam_activation="sigmoid")
    assert net.inference["qam_activation"] == "sigmoid"
    feature = torch.randn(2, 1024, 5, 7) * 3
    with torch.no_grad():
        squashed, released = net.score_from(feature), load_authors_checkpoint(checkpoints["qdmn"]).score_from(feature)
    assert ((squashed > 0) & (squashed < 1)).all() and (released >= 0).all()
    # the same pre-activation z: sigmoid(z) there, relu(z) in the released head
    assert torch.allclose(torch.relu(torch.logit(squashed.double())), released.double(), atol=1e-3)
    result = CliRunner().invoke(vos_export, ["--checkpoint", str(checkpoints["stcn"]), "--qam-activation", "sigmoid",
                                             "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "applies to QDMN checkpoints" in result.output and not (tmp_path / "x").exists()


def test_missing_checkpoint_file_is_named(tmp_path):
    result = CliRunner().invoke(vos_export, ["--checkpoint", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "nope.pth not found" in result.output


# -- the manifest: the authors' inference semantics ----------------------------------------------
EXPECTED = {
    "stcn": ("every_k", 64, 20, {"padding": "centre", "affinity": "l2", "memory_keys": "shared",
                                  "temporary_memory": False, "prior_enhance": "policy"}, set()),
    "rde": ("rde", 64, 40, {"padding": "centre", "affinity": "l2", "memory_keys": "shared",
                             "temporary_memory": False, "prior_enhance": "policy"}, {"sam_key", "sam_value"}),
    "qdmn": ("qdmn", 128, 50, {"padding": "centre", "affinity": "dot", "memory_keys": "per_object",
                                "temporary_memory": True, "prior_enhance": "always", "qam_activation": "relu"},
             {"qam", "prior_enhance"}),
}


@pytest.mark.parametrize("arch", ARCHS)
def test_manifest_records_the_authors_inference(arch, exports, checkpoints):
    m = json.loads((exports[arch] / "manifest.json").read_text())
    method, ck, top_k, inference, heads = EXPECTED[arch]
    assert (m["manifest_version"], m["config"], m["method"], m["resolution"]) == (2, arch, method, None)
    assert (m["key_channels"], m["value_channels"], m["top_k"]) == (ck, 512, top_k)
    assert m["normalisation"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert inference.items() <= m["inference"].items()
    assert set(m["graphs"]) == {"key_encoder", "value_encoder", "readout", "decoder", *heads}
    assert m["source"]["checkpoint"] == checkpoints[arch].name
    assert m["parity"]["max_abs_logit_diff"] <= 1e-3 and m["parity"]["min_mask_iou"] >= 0.999
    if arch == "qdmn":
        assert m["policy_defaults"]["qdmn"] == {"interval": 5, "sigma": 0.8, "beta": 20, "schedule": "authors"}
        assert m["graphs"]["value_encoder"]["outputs"].keys() == {"key", "value", "qam_feature"}
        assert list(m["graphs"]["qam"]["inputs"]) == ["qam_feature"]
    if arch == "rde":
        assert m["policy_defaults"]["rde"] == {"theta": 3, "top_k": 40}


# -- every policy the graphs allow ---------------------------------------------------------------
POLICIES = [(arch, m, {}) for arch in ARCHS for m in ("every_k", "first_latest", "lfu", "xmem", "sam2_window")]
POLICIES += [("rde", "rde", {}), ("qdmn", "qdmn", {}), ("qdmn", "qpm", {}), ("qdmn", "every_k", {"quality_gate": 0.5}),
             ("stcn", "every_k", {"temporary_memory": True})]
# XMem consolidating within the 8 frames (working memory of 2..3 frames, a write every frame)
POLICIES += [(arch, "xmem", {"k": 1, "min_frames": 2, "max_frames": 3, "num_prototypes": 16,
                             "long_term_elements": 64}) for arch in ARCHS]


@pytest.mark.parametrize("arch, method, params", POLICIES)
def test_every_policy_the_graphs_allow_runs(arch, method, params, exports, square_clip):
    frames, masks = square_clip(8, height=80, width=120)                     # pads 80×120 → 80×128
    seg = Segmenter(exports[arch], method=method, providers="cpu", **params)
    outs, sizes = [seg.step(frames[0], masks[0])], []
    for frame in frames[1:]:
        outs.append(seg.step(frame))
        sizes.append(seg.bank_bytes)
    assert all(o.shape == (80, 120) and o.dtype == np.uint8 and set(np.unique(o)) <= {0, 1} for o in outs)
    assert np.array_equal(outs[0], masks[0])
    assert seg.geometry.left == 4 and seg.geometry.padded_w == 128          # symmetric padding
    if method in ("first_latest", "lfu", "rde", "qdmn", "xmem", "sam2_window"):
        assert len(set(sizes)) == 1, sizes                                   # bounded: constant bank
    if method == "every_k" and "quality_gate" not in params:
        assert seg.bank.memory_frames == [0, 5, 7] if seg.temporary_memory else [0, 5]
    if method == "rde":
        assert seg.bank.memory_frames == [0, 6]                             # folds at 3, 6; latest = 6
    if method == "xmem" and params:             # consolidated: prototypes in the long-term memory
        long_term = seg.bank.positions[len(seg.bank.positions) - seg.bank.features:]
        assert len(long_term) == 64 and 16 <= np.count_nonzero(long_term >= 0) <= 64
    if seg.temporary_memory:                    # frame 7, written or not, is read by the next frame
        assert seg.bank.memory_frames[-1] == 7 and seg.bank.memory_frames[0] == 0


def test_lfu_refuses_a_temporary_memory_it_cannot_hold(exports):
    with pytest.raises(InputError, match="temporary_memory works with frame-slot policies"):
        Segmenter(exports["qdmn"], method="lfu", providers="cpu", temporary_memory=True)


# -- the sdk against the authors' loops on real frames -----------------------------------------------
def _clip(name: str, n: int, max_label: int | None = None):
    root = DATA / ("davis2017-240p" if name == "schoolgirls" else "davis2016-240p")
    folder = root / "JPEGImages" / name
    if not folder.is_dir():
        pytest.skip(f"needs {folder} (../shared/data)")
    frames = [rgb for _, (_, rgb) in zip(range(n), iter_frames(folder))]
    mask = read_mask(root / "Annotations" / name / "00000.png")
    if max_label is not None:
        mask = np.where(mask <= max_label, mask, 0).astype(np.uint8)
    return frames, mask


def _agree(ours, ref, max_mean_prob_diff=1e-4, max_label_fraction=0.03):
    """Frame by frame: the soft probabilities [K+1,H,W] agree on average within 1e-4 (a wrong
    padding, normalisation, schedule or aggregation moves them by 1e-2 and more); the label
    maps differ only where objects tie (random weights saturate every object's probability at
    the same pixels, and one-ulp logit differences between ONNX Runtime and torch then decide
    the argmax: at most 3 % of the pixels); the frames in memory are the same."""
    labels, probs, memory = ours
    assert len(labels) == len(ref.labels)
    for t in range(1, len(labels)):
        mean = float(np.abs(probs[t] - ref.probs[t]).mean())
        assert mean <= max_mean_prob_diff, f"frame {t}: mean |Δprob| {mean:.2e}"
        differ = float(np.mean(labels[t] != ref.labels[t]))
        assert differ <= max_label_fraction, f"frame {t}: {differ:.2%} of the pixels differ"
    assert np.array_equal(labels[0], ref.labels[0])
    assert memory == ref.memory


def _run_sdk(export, frames, mask, monkeypatch, **kwargs):
    """sdk labels, soft probabilities at input size (what the argmax reads) and memory frames."""
    import sdk.segmenter

    seen, argmax = [], sdk.segmenter.channel_argmax
    monkeypatch.setattr(sdk.segmenter, "channel_argmax", lambda x, work=None: (seen.append(np.array(x)),
                                                                                argmax(x, work))[1])
    seg = Segmenter(export, providers="cpu", **kwargs)
    labels, probs, memory = [], [], []
    for t, frame in enumerate(frames):
        labels.append(seg.step(frame, mask if t == 0 else None))
        probs.append(seen[-1])
        memory.append(seg.bank.memory_frames)
    return labels, probs, memory


@pytest.mark.parametrize("arch, clip, n, kwargs", [
    ("stcn", "blackswan", 7, {}),
    ("stcn", "schoolgirls", 4, {}),
    ("rde", "blackswan", 8, {}),
    ("qdmn", "blackswan", 7, {}),
    ("qdmn", "schoolgirls", 6, {"interval": 1, "sigma": 0.0, "beta": 1}),      # the authors' eviction, twice
])
def test_sdk_reproduces_the_authors_loop_on_real_frames(arch, clip, n, kwargs, exports, checkpoints, monkeypatch):
    frames, mask = _clip(clip, n, max_label=3)
    net = load_authors_checkpoint(checkpoints[arch])
    ours = _run_sdk(exports[arch], frames, mask, monkeypatch, **kwargs)
    if arch == "qdmn":
        ref = qdmn_loop(net, frames, mask, interval=kwargs.get("interval", 5), sigma=kwargs.get("sigma", 0.8),
                        limit=kwargs.get("beta", 20))
    else:
        ref = stcn_loop(net, frames, mask, top_k=40 if arch == "rde" else 20, rde_theta=3 if arch == "rde" else None)
    _agree(ours, ref)
    assert any(len(np.unique(lab)) > 1 for lab in ours[0][1:])              # not a degenerate clip


# -- deployment: no torch, no onnx ----------------------------------------------------------------------
def test_authors_exports_run_without_torch_or_onnx(exports):
    for arch, methods in (("qdmn", "qdmn,qpm,every_k,first_latest"), ("rde", "rde,lfu")):
        result = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT, str(exports[arch]), methods], cwd=ROOT,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("ok")


def test_vos_segment_runs_an_authors_export_without_torch(exports, square_clip, tmp_path):
    from PIL import Image

    frames, masks = square_clip(4)
    (tmp_path / "frames").mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / "frames" / f"{t:05d}.jpg", quality=95)
    Image.fromarray(masks[0]).save(tmp_path / "first.png")
    blocker = NO_TORCH_SCRIPT.split("import numpy as np")[0]
    script = blocker + "from sdk.cli import main\nmain(sys.argv[1:])\n"
    result = subprocess.run([sys.executable, "-c", script, "--model", str(exports["stcn"]), "--frames",
                             str(tmp_path / "frames"), "--mask", str(tmp_path / "first.png"), "--out",
                             str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"{t:05d}.png" for t in range(4)]
