"""Training side: ImageNet weights really load, the network's parts agree, vos-train runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.backbones import (EfficientNetLite0, lite0_state_dict_from_lukemelas,
                                lite0_weights_path, load_lite0_imagenet)
from training.checkpoint import load_checkpoint, save_checkpoint
from training.losses import bootstrap_fraction, bootstrapped_bce
from training.networks import affinity, build_network

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_lite0_imagenet_weights_are_loaded_tensor_for_tensor():
    model = load_lite0_imagenet(EfficientNetLite0(16, classifier=True))
    ref = lite0_state_dict_from_lukemelas(torch.load(lite0_weights_path(), weights_only=True))
    own = model.state_dict()
    assert set(own) <= set(ref)
    for name, tensor in own.items():
        assert torch.equal(tensor, ref[name]), name


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (DAVIS frames) not present")
def test_lite0_recognises_the_black_swan():
    """ImageNet class 100 is 'black swan': only genuinely loaded weights find it."""
    import cv2
    img = cv2.imread(str(DATA / "davis2016-480p/JPEGImages/blackswan/00000.jpg"))[:, :, ::-1]
    img = cv2.resize(img, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
    x = torch.from_numpy((img - 127.5) / 128).permute(2, 0, 1)[None]
    model = load_lite0_imagenet(EfficientNetLite0(16, classifier=True)).eval()
    with torch.no_grad():
        assert int(model.classify(x).argmax()) == 100


def test_affinity_is_negative_squared_distance_up_to_a_per_query_constant():
    g = torch.Generator().manual_seed(0)
    mk, qk = torch.randn(1, 8, 5, generator=g), torch.randn(1, 8, 3, generator=g)
    a = affinity(mk, qk)[0]
    d = -((mk[0][:, :, None] - qk[0][:, None, :]) ** 2).sum(0) / np.sqrt(8)   # [M,Q]
    diff = a - d
    assert torch.allclose(diff, diff[:1].expand_as(diff), atol=1e-5)


@pytest.mark.parametrize("config", ["lite", "paper"])
def test_network_shapes_and_readout_topk(config):
    net = build_network(config, pretrained=False).eval()
    cfg = net.config
    img = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        key, f16, f8, f4 = net.encode_key(img)
        assert key.shape == (1, cfg["key_channels"], 4, 6)
        assert f16.shape[1] == cfg["skip_channels"]["f16"] and f8.shape[-2:] == (8, 12)
        value = net.encode_value(img, f16, torch.rand(2, 2, 64, 96))
        assert value.shape == (2, cfg["value_channels"], 4, 6)
        m = 24
        valid = torch.ones(m)
        valid[20:] = 0
        mem_keys = torch.randn(1, cfg["key_channels"], m)   # distinct keys: no ties in the top-k
        readout, usage = net.readout(key, mem_keys, value.flatten(2), valid, torch.tensor(3))
        assert readout.shape == value.shape
        assert usage[20:].sum() == 0 and usage.sum() == 3 * 24
        assert net.decode(readout, f16, f8, f4).shape == (2, 1, 64, 96)


def test_bootstrapped_bce_keeps_the_hardest_pixels():
    logits = torch.tensor([[4.0, -4.0, 0.0, 4.0]])
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    full = bootstrapped_bce(logits, target, 1.0)
    hard = bootstrapped_bce(logits, target, 0.25)
    assert hard > full
    assert torch.isclose(hard, torch.nn.functional.softplus(torch.tensor(4.0)))
    assert bootstrap_fraction(0, 10, 20) == 1.0 and bootstrap_fraction(15, 10, 20) == pytest.approx(0.575)
    assert bootstrap_fraction(99, 10, 20) == 0.15


def test_checkpoint_roundtrip_fp16(tmp_path):
    net = build_network("lite", pretrained=False)
    save_checkpoint(tmp_path / "m", net, {"iteration": 7}, half=True)
    loaded, meta = load_checkpoint(tmp_path / "m.safetensors")
    assert meta["state"]["iteration"] == 7 and meta["dtype"] == "float16"
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-2, rtol=1e-3), k
    with pytest.raises(FileNotFoundError, match="missing.json|missing.safetensors"):
        load_checkpoint(tmp_path / "missing")


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (DAVIS frames) not present")
def test_vos_train_tiny_config_trains_and_resumes(tmp_path):
    from click.testing import CliRunner
    from training.cli import main

    args = ["--config", "tiny", "--data", str(DATA / "davis2017-240p"), "--out", str(tmp_path)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    first = json.loads((tmp_path / "last.json").read_text())["state"]["iteration"]
    assert first == 3
    res = CliRunner().invoke(main, args + ["--iterations", "4"])
    assert res.exit_code == 0, res.output
    hist = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in hist] == [1, 2, 3, 4]
    assert all(np.isfinite(h["loss"]) for h in hist)


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (DAVIS frames) not present")
@pytest.mark.parametrize("amp", [True, False])
def test_amp_runs_the_objective_under_bfloat16_autocast(tmp_path, monkeypatch, amp):
    """The mixed-precision path (on CUDA by default) checked on the CPU: every head's loss under
    bfloat16 autocast, finite, and autocast really on (or off) inside the objective."""
    import training.objectives as objectives
    import training.train as tt

    seen = []

    def spy(net, frames, *args, **kwargs):
        losses = clip_losses(net, frames, *args, **kwargs)
        seen.append((torch.is_autocast_enabled("cpu"), losses["loss"].dtype))
        return losses

    clip_losses = objectives.clip_losses
    monkeypatch.setattr(objectives, "clip_losses", spy)     # what the step's loss module calls
    cfg = tt.load_config("tiny")
    cfg.update(iterations=2, checkpoint_every=2, num_frames=5, device="cpu", amp=amp,
               network=tt.network_config(cfg, "all"))
    tt.train(cfg, [(str(DATA / "davis2017-240p"), "train")], tmp_path, progress=False)
    assert [on for on, _ in seen] == [amp, amp]
    assert all(dtype == torch.float32 for _, dtype in seen)    # losses reduce in float32
    hist = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 2 and all(np.isfinite(h[k]) for h in hist for k in ("loss", "loss_qam", "loss_ug", "loss_mc"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_vos_train_on_cuda_without_a_gpu_says_so(tmp_path):
    from click.testing import CliRunner
    from training.cli import main

    res = CliRunner().invoke(main, ["--config", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                                    "--device", "cuda"])
    assert res.exit_code == 1 and "sees no CUDA GPU" in res.output
    assert not (tmp_path / "run").exists()          # failed before anything was written


def test_vos_train_unknown_config_is_a_usage_error(tmp_path):
    from click.testing import CliRunner
    from training.cli import main

    res = CliRunner().invoke(main, ["--config", "nope", "--data", str(tmp_path), "--out", str(tmp_path)])
    assert res.exit_code != 0 and "training config 'nope' not found" in res.output


def test_readout_gather_equals_the_dense_topk_softmax_of_stcn():
    """The exported readout (top-k gather) = STCN's dense form: softmax over the top-k of
    −‖k_m − k_q‖²/√C_k among valid positions, scattered into [M,Q], values @ weights."""
    from training.networks import VOSNetwork

    g = torch.Generator().manual_seed(1)
    q, mk = torch.randn(1, 8, 3, 5, generator=g), torch.randn(1, 8, 40, generator=g)
    mv, valid = torch.randn(2, 6, 40, generator=g), torch.ones(40)
    valid[30:] = 0
    out, usage = VOSNetwork.readout(q, mk, mv, valid, torch.tensor(7))
    dist = -((mk[0][:, :, None] - q.flatten(2)[0][:, None, :]) ** 2).sum(0) / np.sqrt(8)   # [M,Q]
    dist[30:] = -float("inf")
    vals, idx = dist.topk(7, dim=0)
    dense = torch.zeros_like(dist).scatter(0, idx, vals.softmax(0))
    assert torch.allclose(out, (mv @ dense).view(2, 6, 3, 5), atol=1e-5)
    assert torch.equal(usage, (dense > 0).float().sum(1))
