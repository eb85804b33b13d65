"""Multi-object training objective (issue 15): N objects per clip, soft aggregation over them +
background as at inference, each object's value encoded with the others in its second channel."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training.networks import build_network
from training.objectives import aggregate_logits, clip_losses

TINY = {"name": "lite", "key_channels": 16, "value_channels": 32, "decoder_channels": [32, 16, 8],
        "value_encoder_channels": [8, 16, 32, 32]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def network(heads=()):
    """Random tiny network as the main loop keeps it: train mode, every BatchNorm in eval."""
    torch.manual_seed(0)
    net = build_network({**TINY, "heads": list(heads)}, pretrained=False).train()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    return net


def clips(b=2, t=3, n=2, size=48, seed=0):
    """frames [B,T,3,S,S]; masks [B,T,N,S,S] of N disjoint boxes drifting right; no untrained objects."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(b, t, 3, size, size, generator=g)
    masks = torch.zeros(b, t, n, size, size)
    for i in range(t):
        for k in range(n):
            top = 4 + 14 * k
            masks[:, i, k, top:top + 12, 6 + 3 * i + 8 * k:20 + 3 * i + 8 * k] = 1
    return frames, masks, torch.zeros(b, t, 1, size, size)


def test_aggregated_logits_are_the_sdks_soft_aggregation():
    from sdk.ops import soft_aggregate

    prob = torch.rand(3, 8, 9, generator=torch.Generator().manual_seed(0))
    prob[0, :2] = 0.0
    prob[1, 3:] = 1.0
    ours = torch.softmax(aggregate_logits(prob[None]), 1)[0].numpy()
    assert np.allclose(ours, soft_aggregate(prob.numpy()), atol=1e-6)
    half = aggregate_logits(prob[None].bfloat16())                 # float32 inside autocast's bf16 too
    assert half.dtype == torch.float32 and torch.isfinite(half).all()


def test_each_objects_value_sees_the_other_objects():
    """Frame 0: the other object's ground truth; the memory frame written after frame 1: the other
    object's soft-aggregated prediction — the two own-masks sum to ≤ 1 and swap as 'other'."""
    net = network()
    seen = []
    encoder = net.value_encoder.forward

    def spy(image, f16, masks):
        seen.append(masks.detach().clone())
        return encoder(image, f16, masks)

    net.value_encoder.forward = spy
    frames, masks, others = clips(b=1, t=3, n=2)
    clip_losses(net, frames, masks, others, 1.0)
    assert len(seen) == 2 and seen[0].shape == (2, 2, 48, 48)         # frames 0 and 1, [N,2,H,W] each
    gt = masks[0, 0]
    assert torch.equal(seen[0][0, 0], gt[0]) and torch.equal(seen[0][0, 1], gt[1])
    assert torch.equal(seen[0][1, 0], gt[1]) and torch.equal(seen[0][1, 1], gt[0])
    own, rest = seen[1][:, 0], seen[1][:, 1]
    assert torch.allclose(rest[0], own[1]) and torch.allclose(rest[1], own[0])
    assert (own.sum(0) <= 1 + 1e-5).all() and 0 < own.min() and own.max() < 1


def test_object_slots_are_interchangeable():
    net = network()
    frames, masks, others = clips(n=2)
    a = clip_losses(net, frames, masks, others, 0.5)
    b = clip_losses(net, frames, masks.flip(2), others, 0.5)
    for key in ("loss", "iou"):
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_an_invalid_slot_changes_nothing():
    """Padding a clip with empty, invalid object slots (STCN's selector) leaves every loss term."""
    net = network(("qam", "prior", "sam"))
    frames, masks, others = clips(t=5, n=2)
    masks[1, :, 1] = 0                                    # clip 1 holds one object
    valid = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    pad = torch.zeros_like(masks[:, :, :1])
    a = clip_losses(net, frames, masks, others, 0.5, use_prior=True, valid=valid)
    b = clip_losses(net, frames, torch.cat([masks, pad], 2), others, 0.5, use_prior=True,
                    valid=torch.cat([valid, torch.zeros(2, 1)], 1))
    for key in ("loss_seg", "loss_ug", "loss_mc", "loss_qam", "iou"):
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key


def test_every_head_trains_on_three_object_clips():
    net = network(("qam", "prior", "sam"))
    frames, masks, others = clips(t=5, n=3)
    others[:, :, :, 40:, :10] = 1                          # an untrained object in the corner
    losses = clip_losses(net, frames, masks, others, 0.3, use_prior=True, norm_weight=1.0,
                         valid=torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]))
    losses["loss"].backward()
    losses = {k: v.detach() for k, v in losses.items()}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_ug"].item() > 0 and losses["loss_qam"].item() > 0
    assert next(net.value_encoder.parameters()).grad.abs().sum() > 0
    with pytest.raises(ValueError, match="masks"):
        clip_losses(net, frames, masks[:, :, 0], others, 0.3)
