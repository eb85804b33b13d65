"""training.qat: the simulated-int8 key encoder is the float32 one when quantisation is off,
lands on the int8 grid when it is on, and fine-tuning lowers its error against the float32
teacher while changing nothing but the key encoder. Tiny lite network, synthetic frames."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sdk.demo import make_clip  # noqa: E402
from training import qat  # noqa: E402
from training.networks import build_network  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BUNDLED = Path(__file__).resolve().parents[1] / "training" / "weights" / "lite.safetensors"


def frames(n: int = 6, height: int = 72, width: int = 96, seed: int = 0) -> list[np.ndarray]:
    """RGB uint8 [H,W,3] frames of the sdk's demo clip (textured moving objects)."""
    return list(make_clip(n, height, width, seed)[0])


@pytest.fixture
def net(tiny_net):
    return copy.deepcopy(tiny_net)


def images(net, n=2, crop=64, seed=3):
    data = qat.FrameCrops(frames(), crop, mean=net.config["mean"], std=net.config["std"])
    return data.batch(np.random.default_rng(seed), n)


def test_without_quantisation_it_is_the_float_key_encoder(net):
    q = qat.QuantisedKeyEncoder(net)
    q.set_mode(observing=False, enabled=False)
    x = images(net)
    with torch.no_grad():
        for a, b in zip(q(x), net.encode_key(x)):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scheme", ["ort", "tensorrt"])
def test_with_quantisation_every_output_is_on_its_grid(net, scheme):
    q = qat.QuantisedKeyEncoder(net, scheme)
    x = images(net)
    q.set_mode(observing=True, enabled=False)
    with torch.no_grad():
        q(x)
        q.set_mode(observing=False, enabled=True)
        outs = q(x)
        ref = net.encode_key(x)
    (qmin, qmax, symmetric), _ = qat.GRIDS[scheme]
    # f16, f8, f4 are the outputs of the residual blocks 10, 4 and 2 of EfficientNet-Lite0
    for name, out, r in zip(("key", "blocks/10/add", "blocks/4/add", "blocks/2/add"), outs, ref):
        scale, zero = q.quantisers[name].scale_zero_point()
        levels = out / scale + zero
        assert torch.allclose(levels, levels.round(), atol=1e-3)
        assert levels.min() >= qmin - 1e-3 and levels.max() <= qmax + 1e-3
        assert zero == 0 if symmetric else qmin <= zero <= qmax
        assert 0 < float((out - r).norm() / r.norm()) < 0.5        # quantised, and still the same features


def test_weights_are_quantised_per_output_channel():
    w = torch.randn(8, 4, 3, 3) * torch.arange(1, 9).reshape(-1, 1, 1, 1)
    q = qat.quantise_weight(w, -64, 64)
    steps = w.abs().amax((1, 2, 3)) / 64
    levels = q / steps.reshape(-1, 1, 1, 1)
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.abs().max() <= 64 + 1e-4
    assert torch.allclose(q.abs().amax((1, 2, 3)), w.abs().amax((1, 2, 3)))   # the largest weight is exact


def test_fine_tuning_lowers_the_int8_error_and_changes_only_the_key_encoder():
    """On the bundled weights (a random network's features are no test: their scales explode
    under any step) 30 steps at the real run's learning rate cut the simulated-int8 error."""
    from training.checkpoint import load_checkpoint

    net, _ = load_checkpoint(BUNDLED)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    history = qat.fine_tune(net, frames(8, 120, 160), iterations=30, batch_size=2, crop=96, lr=3e-5,
                            held_out=frames(4, 120, 160, seed=1), eval_every=15)
    assert [h["iteration"] for h in history] == [0, 15, 30]
    start, end = history[0]["held_out"], history[-1]["held_out"]
    assert sum(end.values()) < 0.8 * sum(start.values()), history
    changed = {k.split(".")[0] for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"key_encoder", "key_proj"}
    bn = dict(net.named_buffers())
    assert all(torch.equal(bn[k], before[k]) for k in bn if "running" in k)     # statistics stay frozen
    assert all(p.requires_grad for p in net.parameters())


def test_only_the_lite_key_encoder_is_supported():
    paper = build_network("paper", pretrained=False)
    with pytest.raises(ValueError, match="lite .*EfficientNet-Lite0.* key encoder only"):
        qat.QuantisedKeyEncoder(paper)
    with pytest.raises(ValueError, match="unknown int8 scheme"):
        qat.QuantisedKeyEncoder(build_network("lite", pretrained=False), "int4")


def test_cli_writes_a_checkpoint_that_records_the_fine_tuning(tiny_net, tmp_path):
    from PIL import Image

    from training.checkpoint import load_checkpoint, save_checkpoint

    root = tmp_path / "data"
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        for name in names:
            (root / "JPEGImages" / name).mkdir(parents=True)
            (root / "Annotations" / name).mkdir(parents=True)
            for i, f in enumerate(frames(3, seed=ord(name))):
                Image.fromarray(f).save(root / "JPEGImages" / name / f"{i:05d}.jpg", quality=95)
        (root / "ImageSets").mkdir(exist_ok=True)
        (root / "ImageSets" / f"{split}.txt").write_text("\n".join(names) + "\n")
    src = save_checkpoint(tmp_path / "src", tiny_net)
    assert qat.main([str(src), "--out", str(tmp_path / "qat"), "--data", str(root), "--iterations", "3",
                     "--batch-size", "1", "--crop", "64", "--fp32"]) == 0
    tuned, meta = load_checkpoint(tmp_path / "qat")
    record = meta["state"]["qat"]
    assert record["iterations"] == 3 and record["scheme"] == "ort" and record["history"][-1]["iteration"] == 3
    old = tiny_net.state_dict()
    changed = {k.split(".")[0] for k, v in tuned.state_dict().items() if not torch.equal(v, old[k])}
    assert changed == {"key_encoder", "key_proj"}
    with pytest.raises(SystemExit) as exit_info:
        qat.main([str(src), "--out", str(tmp_path / "x"), "--data", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
