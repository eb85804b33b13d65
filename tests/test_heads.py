"""Method heads (QAM, prior enhancement, SAM), their training objective and `vos-train --method`."""
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.checkpoint import load_weights_into, save_checkpoint  # noqa: E402
from training.heads import SAM, PriorEnhance, QAMHead  # noqa: E402
from training.networks import build_network  # noqa: E402
from training.objectives import clip_losses, feature_kl, perturb_masks  # noqa: E402

from conftest import TINY_CONFIG  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_fresh_sam_is_the_mean_of_previous_rde_and_new_frame():
    sam = SAM(8)
    prev, new = torch.randn(2, 8, 15, 27), torch.randn(2, 8, 15, 27)   # odd sizes: pooling floors
    with torch.no_grad():
        out = sam(prev, new)
    assert out.shape == prev.shape
    torch.testing.assert_close(out, (prev + new) / 2, rtol=1e-5, atol=1e-5)


def test_sam_extracting_is_the_normalised_non_local_product_of_eq5():
    """ω(x)ᵀ(φ gᵀ)/C(x) as evaluated equals the literal (ω(x)ᵀ φ(x↓)) g(x↓)ᵀ / C(x) of Eq. 5."""
    sam = SAM(6)
    randomise(sam)
    prev, new = torch.randn(1, 6, 4, 6), torch.randn(1, 6, 4, 6)
    x = torch.stack([prev, new], 2)
    down = torch.nn.functional.max_pool3d(x, (1, 2, 2))
    assert down.shape[2:] == (2, 2, 3)                          # no pooling in time
    omega, phi, g = sam.omega(x).flatten(2)[0], sam.phi(down).flatten(2)[0], sam.g(down).flatten(2)[0]
    affinity = omega.T @ phi                                    # [P, P↓]
    y = (affinity @ g.T).T / (2 * 4 * 6)                        # [C', P]
    x_agg = x + sam.w_z(y.reshape(1, -1, 2, 4, 6))
    frames = x_agg.transpose(1, 2).reshape(2, 6, 4, 6)
    frames = frames + sam.aspp(frames)
    expected = sam.squeeze(frames.reshape(1, 2, 6, 4, 6).transpose(1, 2))[:, :, 0]
    with torch.no_grad():
        torch.testing.assert_close(sam(prev, new), expected, rtol=1e-4, atol=1e-5)


def test_prior_enhancement_gates_the_feature_with_the_prior():
    pe = PriorEnhance(4)
    f16, prior = torch.randn(1, 4, 3, 5), torch.zeros(1, 1, 48, 80)
    with torch.no_grad():
        torch.testing.assert_close(pe(f16, prior), torch.sigmoid(torch.tensor(4.0)) * f16)   # fresh: ≈ identity
        randomise(pe)
        prior[..., :16, :16] = 1                                 # one stride-16 cell of foreground
        gate = pe(f16, prior) / f16
        empty = pe(f16, torch.zeros_like(prior)) / f16
    assert torch.all((gate > 0) & (gate < 1))
    assert not torch.allclose(gate, empty)
    assert torch.allclose(gate[..., 2:, 3:], empty[..., 2:, 3:])  # 3×3 conv: far cells don't see it


def test_qam_scores_each_object_in_0_1():
    qam = QAMHead(32)
    scores = qam(torch.randn(3, 32, 5, 7))
    assert scores.shape == (3,) and torch.all((scores > 0) & (scores < 1))


def test_feature_kl_and_perturbed_masks():
    a = torch.randn(2, 8, 3, 3)
    assert feature_kl(a, a).item() == pytest.approx(0, abs=1e-7) and feature_kl(a, -a).item() > 0
    masks = torch.zeros(6, 1, 64, 64)
    masks[:, :, 20:44, 16:48] = 1
    out = perturb_masks(masks, torch.Generator().manual_seed(0))
    grew = [bool(torch.all(o >= m)) for o, m in zip(out, masks)]
    shrank = [bool(torch.all(o <= m)) for o, m in zip(out, masks)]
    assert all(g or s for g, s in zip(grew, shrank)) and any(grew) and any(shrank)
    assert not any(torch.equal(o, m) for o, m in zip(out, masks))


def clip(t=5, s=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(2, t, 3, s, s, generator=g)
    masks = torch.zeros(2, t, 1, s, s)
    for i in range(t):
        masks[:, i, :, 16 + i:40 + i, 12:36] = 1
    return frames, masks, torch.zeros_like(masks)


def test_clip_losses_follow_rdes_schedule_and_reach_every_head(monkeypatch):
    torch.manual_seed(0)
    net = build_network({**TINY_CONFIG, "heads": ["qam", "prior", "sam"]}, pretrained=False)
    folds = []
    fold_key = net.fold_key
    monkeypatch.setattr(net, "fold_key", lambda prev, new: folds.append(new) or fold_key(prev, new))
    losses = clip_losses(net, *clip(), bootstrap=1.0, use_prior=True, norm_weight=0.5)
    # frames 2 and 4 (0-based) read the SAM pattern bank: RDE ← SAM(first, f1), then SAM(SAM(·, f2), f3)
    assert len(folds) == 3
    for name in ("loss_seg", "loss_ug", "loss_mc", "loss_qam", "loss_norm"):
        assert torch.isfinite(losses[name]) and losses[name].item() > 0, name
    total = (losses["loss_seg"] + 10 * losses["loss_ug"] + 10 * losses["loss_mc"] + losses["loss_qam"]
             + 0.5 * losses["loss_norm"])
    torch.testing.assert_close(losses["loss"], total)
    losses["loss"].backward()
    for head in ("prior_enhance", "qam", "sam_key", "sam_value"):
        grads = [p.grad for p in getattr(net, head).parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), head


def test_clip_losses_without_heads_is_stcn_main_training():
    torch.manual_seed(0)
    net = build_network(TINY_CONFIG, pretrained=False)
    losses = clip_losses(net, *clip(t=3), bootstrap=1.0)
    assert losses["loss_ug"].item() == losses["loss_mc"].item() == losses["loss_qam"].item() == 0
    assert losses["loss_norm"].item() == 0
    torch.testing.assert_close(losses["loss"], losses["loss_seg"])
    assert 0 <= losses["iou"].item() <= 1


def test_main_stage_weights_load_into_a_network_with_heads(tmp_path):
    torch.manual_seed(0)
    plain = build_network(TINY_CONFIG, pretrained=False)
    ckpt = save_checkpoint(tmp_path / "plain", plain)
    heads = build_network({**TINY_CONFIG, "heads": ["sam"]}, pretrained=False)
    load_weights_into(heads, ckpt)
    torch.testing.assert_close(heads.decoder.pred.weight, plain.decoder.pred.weight)
    other = build_network({**TINY_CONFIG, "value_channels": 16}, pretrained=False)
    with pytest.raises(RuntimeError):
        load_weights_into(other, ckpt)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_weights_into(heads, tmp_path / "none.safetensors")


def test_fresh_modules_and_trainable_subset(tmp_path):
    """init_fresh keeps a head at its initial state; trainable freezes everything else."""
    from training.train import freeze, make_optimizer

    torch.manual_seed(0)
    trained = build_network({**TINY_CONFIG, "heads": ["sam"]}, pretrained=False)
    randomise(trained.sam_key)
    ckpt = save_checkpoint(tmp_path / "trained", trained)
    net = build_network({**TINY_CONFIG, "heads": ["sam"]}, pretrained=False)
    load_weights_into(net, ckpt, fresh=["sam_key"])
    assert torch.count_nonzero(net.sam_key.w_z.weight) == 0                       # initial state
    torch.testing.assert_close(net.sam_value.squeeze.weight, trained.sam_value.squeeze.weight)
    freeze(net, 5, ["sam_key", "sam_value"])
    assert {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad} == {"sam_key", "sam_value"}
    opt = make_optimizer(net, {"lr": 0.0, "backbone_lr": 0.0, "heads_lr": 1e-4})
    assert [len(g["params"]) for g in opt.param_groups] == [0, 0, len(list(net.sam_key.parameters())) * 2]
    with pytest.raises(ValueError, match="lacks"):
        freeze(net, 5, ["qam"])


def test_compose_keeps_the_core_of_one_checkpoint_and_the_heads_of_another(tmp_path):
    from training.compose import compose

    torch.manual_seed(0)
    core = build_network(TINY_CONFIG, pretrained=False)
    heads = build_network({**TINY_CONFIG, "heads": ["qam", "sam"]}, pretrained=False)
    randomise(heads.decoder)
    randomise(heads.sam_key)
    net = compose(tmp_path / "out", save_checkpoint(tmp_path / "core", core), save_checkpoint(tmp_path / "heads", heads))
    torch.testing.assert_close(net.decoder.pred.weight, core.decoder.pred.weight)
    torch.testing.assert_close(net.sam_key.w_z.weight, heads.sam_key.w_z.weight)
    meta = json.loads((tmp_path / "out.json").read_text())
    assert meta["dtype"] == "float16" and meta["state"]["core"].endswith("core.safetensors")


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="unknown head"):
        build_network({**TINY_CONFIG, "heads": ["stm"]}, pretrained=False)


@pytest.mark.skipif(not (DATA / "davis2017-240p").is_dir(), reason="needs ../shared/data/davis2017-240p")
def test_vos_train_method_rde_trains_sam_on_5_frame_clips(tmp_path):
    from click.testing import CliRunner

    from training.cli import main

    args = ["--config", "tiny", "--data", str(DATA / "davis2017-240p"), "--out", str(tmp_path),
            "--method", "rde", "--iterations", "2", "--publish", str(tmp_path / "pub" / "w.safetensors")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "last.json").read_text())
    assert meta["config"]["heads"] == ["sam"] and meta["state"]["train_config"]["num_frames"] == 5
    hist = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 2 and all(h["loss_ug"] > 0 and h["loss_mc"] > 0 and h["loss_qam"] == 0 for h in hist)
    assert all(np.isfinite(h["loss"]) for h in hist)
    from safetensors.torch import load_file
    published = load_file(str(tmp_path / "pub" / "w.safetensors"))
    assert all(v.dtype == torch.float16 for v in published.values() if v.is_floating_point())
    assert any(k.startswith("sam_value.") for k in published)


def test_average_is_the_weight_space_mix_of_two_checkpoints(tmp_path):
    from training.compose import average, main

    torch.manual_seed(0)
    a = build_network(TINY_CONFIG, pretrained=False)
    b = build_network(TINY_CONFIG, pretrained=False)
    randomise(b.decoder, seed=3)
    pa, pb = save_checkpoint(tmp_path / "a", a), save_checkpoint(tmp_path / "b", b)
    mixed = average(tmp_path / "out", pa, pb, weight=0.25)
    w_a, w_b = a.decoder.pred.weight.detach(), b.decoder.pred.weight.detach()
    torch.testing.assert_close(mixed["decoder.pred.weight"], 0.75 * w_a + 0.25 * w_b)
    assert not torch.equal(mixed["decoder.pred.weight"], w_a)
    net = build_network(TINY_CONFIG, pretrained=False)
    load_weights_into(net, tmp_path / "out.safetensors")       # fp16 on disk, a loadable checkpoint
    torch.testing.assert_close(net.decoder.pred.weight, mixed["decoder.pred.weight"], atol=2e-3, rtol=1e-3)
    meta = json.loads((tmp_path / "out.json").read_text())
    assert meta["state"]["average"]["weight"] == 0.25 and meta["dtype"] == "float16"
    other = save_checkpoint(tmp_path / "c", build_network({**TINY_CONFIG, "heads": ["qam"]}, pretrained=False))
    with pytest.raises(ValueError, match="different networks"):
        average(tmp_path / "bad", pa, other)
    with pytest.raises(ValueError, match="weight"):
        average(tmp_path / "bad", pa, pb, weight=1.5)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "bad"), "--average", str(pa), str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and not (tmp_path / "bad.safetensors").exists()
