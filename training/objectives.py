"""Training objective of the method heads (QAM, prior enhancement, SAM) on T-frame clips.

One forward pass keeps two memory banks side by side (RDE-VOS Fig. 2a):

* the **STM pattern** bank M holds every earlier frame of the clip (frame 0 with its ground
  truth, later frames with their own predictions) and is read with a full softmax, as STCN
  trains;
* the **SAM pattern** bank m (when the network has SAM) holds [RDE, latest memory frame, first
  frame, first frame] (RDE-VOS Table 5 "2F & L & RDE"); the RDE starts as the first frame and
  RDE ← SAM(RDE, frame) for each memory frame written after it (RDE-VOS Eq. 4–6; in a clip
  every sampled frame is a memory frame, as every θ-th frame is at inference).

With RDE's 5-frame schedule (Eq. 9) frames 2 and 4 (1-based) are segmented from M and
frames 3 and 5 from m; generally, with SAM, 0-based frames i ≥ 2 with i even use m.

Losses (Eq. 10): L_seg (bootstrapped BCE, mean over the segmented frames) + μ·L_UG on the
SAM-pattern frames + γ·L_MC + λ_QAM·L_QAM, with μ = γ = 10 (RDE-VOS §4.2).

* L_UG (Eq. 7): KL(v^{M→Q} ‖ v^{m→Q}) between the two readouts of the same query frame.
* L_MC (Eq. 8): KL(k_1 ‖ ǩ_1) + KL(v_1 ‖ v̌_1) between the first frame's embedding with its
  ground-truth mask and with a randomly dilated or eroded mask (the key term is non-zero only
  through prior enhancement, the one path from a mask to a key here).
* L_norm (ours, weight ``norm_weight``, 0 = off): (log(‖k^RDE‖² / ‖k^L‖²))², mean over the
  key folds — the RDE key's mean squared norm against the new memory frame's. The readout's
  affinity −‖k_m‖² lets a SAM that inflates the RDE key switch the RDE off (it gets no
  attention, hence no gradient), and the recurrence then grows it without bound (4 → 22 →
  650 → … → inf within 15 folds on DAVIS); this keeps the RDE on the keys' scale.
* L_QAM (QDMN Eq. 2): MSE between QAM's score of each encoded mask (the network's own soft
  predictions and the perturbed first-frame masks, so that targets spread over [0, 1]) and
  its IoU with the ground truth (binarised at 0.5).

KL of two feature maps: softmax over channels at each position, the pointwise KL terms
averaged over every element (batch, channels, positions — ``torch.nn.KLDivLoss``'s default
``"mean"`` reduction, which keeps μ·L_UG and γ·L_MC at the scale of L_seg for C = 64–128
channels; a sum over channels would make them ~100× the segmentation loss); the target side
(STM readout, GT-mask embedding) is detached — the teacher is not pulled toward the student.

With prior enhancement active (QDMN Eq. 5), the prior of frame 0 is its ground truth, that of
frame i its predecessor's (detached) soft prediction united with the other objects' ground
truth (the sdk feeds the max over all objects' probabilities).

**Objects.** A clip trains N objects at once (STCN main training: two; XMem: up to three;
clips from :class:`training.datasets.ClipDataset` with multi-object synthesis). Keys are per
clip, values, readouts and decoder outputs per object (the object batch is clip-major,
[B·N, …]). Each object's value is encoded with the "other objects" channel the sdk feeds at
inference (``segment_sequence``: the sum of the other objects' probabilities), here: the
other trained objects' ground truth in frame 0 and their soft-aggregated predictions in later
frames, plus the ground truth of the clip's untrained objects (``others``), clamped to [0, 1].
With N ≥ 2 the per-object sigmoids are soft-aggregated with the background as at inference
(:func:`aggregate_logits` = :func:`sdk.ops.soft_aggregate` in logit form) and L_seg is the
bootstrapped cross-entropy over the N + 1 classes (STCN); memory is written with the
aggregated probabilities, as the sdk does. With N = 1 it stays the single-object recipe of
the bundled model: bootstrapped BCE on the logit and the sigmoid as the written mask (the
same decision: for one object the aggregated foreground σ(2z) is monotone in the logit z).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import bootstrapped_bce, bootstrapped_ce
from .networks import affinity

MU_UG = 10.0       # μ, RDE-VOS Eq. 10
GAMMA_MC = 10.0    # γ, RDE-VOS Eq. 10


def feature_kl(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """KL(softmax_c(target) ‖ softmax_c(pred)): pointwise terms p·(log p − log q) averaged over
    all elements. target, pred [B,C,…] float32 → scalar ≥ 0; ``target`` is detached."""
    log_p = F.log_softmax(target.detach(), 1)
    log_q = F.log_softmax(pred, 1)
    return (log_p.exp() * (log_p - log_q)).mean()


def mask_iou(prob: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of (prob > 0.5) with gt > 0.5 per sample: [B,1,H,W] × 2 → [B] (1 when both empty)."""
    a, b = prob > 0.5, gt > 0.5
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def perturb_masks(masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random dilation or erosion of binary masks [B,1,H,W] (RDE-VOS self-correction, Eq. 8):
    per sample a square structuring element of 3–31 px, dilate or erode with p = 0.5."""
    out = []
    for m in masks:
        k = 2 * int(torch.randint(1, 16, (1,), generator=generator)) + 1
        pooled = F.max_pool2d(m[None], k, 1, k // 2)
        if torch.rand(1, generator=generator) < 0.5:          # erode = not dilate(not m)
            pooled = 1 - F.max_pool2d(1 - m[None], k, 1, k // 2)
        out.append(pooled[0])
    return torch.stack(out)


def full_readout(mem_keys: torch.Tensor, mem_values: torch.Tensor, query_key: torch.Tensor) -> torch.Tensor:
    """STCN readout with a full softmax over memory (training form of RDE-VOS Eq. 2–3).
    mem_keys [B,C_k,M], mem_values [B·N,C_v,M] (N objects per clip, clip-major; N = 1: one),
    query_key [B,C_k,h,w] → [B·N,C_v,h,w]: one affinity per clip, shared by its objects."""
    b, _, h, w = query_key.shape
    weights = torch.softmax(affinity(mem_keys, query_key.flatten(2)), 1)          # [B,M,hw]
    bn, c, m = mem_values.shape
    return (mem_values.reshape(b, (bn // b) * c, m) @ weights).view(bn, c, h, w)


ODDS_CLAMP = 1e-7    # as sdk.ops.soft_aggregate


def aggregate_logits(prob: torch.Tensor) -> torch.Tensor:
    """Soft aggregation (STM; STCN ``aggregate``) in logit form: per-object probabilities
    [B,N,H,W] → logits [B,N+1,H,W] (channel 0 the background Π(1 − p_i)), each of [bg, p_1..p_N]
    clamped to [1e-7, 1 − 1e-7] then log(p/(1 − p)); their softmax over channels is
    :func:`sdk.ops.soft_aggregate`'s distribution. Computed in float32 (also under bfloat16
    autocast, where 1 − 1e-7 would round to 1 and the logit overflow)."""
    prob = prob.float()
    full = torch.cat([torch.prod(1 - prob, 1, keepdim=True), prob], 1).clamp(ODDS_CLAMP, 1 - ODDS_CLAMP)
    return torch.log(full / (1 - full))


def clip_losses(net, frames, masks, others, bootstrap: float, use_prior: bool = False,
                generator: torch.Generator | None = None, norm_weight: float = 0.0,
                valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Forward a batch of clips through the STM and (with SAM) SAM pattern banks → losses.

    frames [B,T,3,H,W] float32 normalised; masks [B,T,N,H,W] in {0,1}, the N objects trained
    jointly (disjoint; N = 1: the single target); others [B,T,1,H,W] in {0,1}, the clip's
    untrained objects (always in the other-objects channel, background for the loss); valid
    [B,N] in {0,1} (None: all), the slots that hold an object — an invalid slot claims no
    pixel in the aggregation and enters no loss term (with N = 1 it is not used). ``bootstrap``
    the fraction of hardest pixels of the bootstrapped BCE/CE, ``use_prior`` runs prior
    enhancement (needs the ``prior`` head). Returns ``loss`` (the total, Eq. 10) and its terms
    ``loss_seg``, ``loss_ug``, ``loss_mc``, ``loss_qam`` (0 when the network lacks the head),
    ``loss_norm`` and ``iou`` (mean training IoU of the valid objects in the segmented frames,
    detached). Uses the heads the network carries (``net.heads``). Raises ValueError for
    inconsistent shapes.
    """
    generator = generator or torch.Generator().manual_seed(0)
    heads = net.heads
    b, t = frames.shape[:2]
    n, size = masks.shape[2], masks.shape[-2:]
    if masks.dim() != 5 or others.shape != (b, t, 1, *size) or masks.shape[:2] != (b, t):
        raise ValueError(f"masks [B,T,N,H,W] and others [B,T,1,H,W] for frames {tuple(frames.shape)}, got "
                         f"{tuple(masks.shape)} and {tuple(others.shape)}")
    binary = n == 1
    valid = masks.new_ones(b, n) if valid is None or binary else valid.to(masks.dtype).reshape(b, n)
    keep = valid.reshape(-1) > 0.5                                    # [B·N] objects in the loss terms
    if not keep.any():                # no object in the whole batch: average over the empty slots
        keep = torch.ones_like(keep)
    f4, f8, f16 = net.key_encoder(frames.flatten(0, 1))
    f4, f8, f16 = (x.view(b, t, *x.shape[1:]) for x in (f4, f8, f16))
    zero = frames.new_zeros(())

    def per_object(x):                                                 # [B,…] → [B·N,…]
        return x if n == 1 else x.repeat_interleave(n, 0)

    def flat(own):                                                     # [B,N,H,W] → [B·N,1,H,W]
        return own.reshape(b * n, 1, *own.shape[-2:])

    def key_of(i, prior):
        if use_prior:
            return net.enhance(f16[:, i], prior)
        return net.key_proj(f16[:, i]), f16[:, i]

    def encode(i, feat, own):
        """Values of the N objects [B·N,C_v,h,w]; own [B,N,H,W] their masks in frame i."""
        rest = (own.sum(1, keepdim=True) - own + others[:, i]).clamp(0, 1)
        return net.value_encoder(per_object(frames[:, i]), per_object(feat), torch.cat([flat(own), flat(rest)], 1))

    def union(own, i):                                                 # prior: every object of frame i
        return torch.maximum(own.amax(1, keepdim=True), others[:, i])

    k0, e0 = key_of(0, union(masks[:, 0], 0))
    v0 = encode(0, e0, masks[:, 0])
    losses = {"loss_seg": zero, "loss_ug": zero, "loss_mc": zero, "loss_qam": zero, "loss_norm": zero}
    scored, targets = [], []

    # self-correction (Eq. 8) and QAM on perturbed first-frame masks
    if "sam" in heads or "qam" in heads:
        bad = torch.zeros_like(flat(masks[:, 0]))          # perturbed masks of the valid objects only
        bad[keep] = perturb_masks(flat(masks[:, 0])[keep], generator)
        bad = bad.view(b, n, *size)
        kb, eb = key_of(0, union(bad, 0))
        vb = encode(0, eb, bad)
        if "sam" in heads:
            losses["loss_mc"] = feature_kl(k0, kb) + feature_kl(v0[keep], vb[keep])
        if "qam" in heads:
            scored += [net.score(vb)[keep], net.score(v0)[keep]]
            targets += [mask_iou(flat(bad), flat(masks[:, 0]))[keep], torch.ones(b * n, device=frames.device)[keep]]

    stm_k, stm_v = [k0.flatten(2)], [v0.flatten(2)]
    rde = (k0, v0)
    folded = 1                                  # memory frames folded into the RDE so far
    seg, ious, ug, norms = [], [], [], []
    prior = union(masks[:, 0], 0)
    classes = torch.arange(1, n + 1, device=masks.device, dtype=masks.dtype).view(1, n, 1, 1)
    for i in range(1, t):
        ki, ei = key_of(i, prior)
        stm = full_readout(torch.cat(stm_k, 2), torch.cat(stm_v, 2), ki)
        if "sam" in heads and i >= 2 and i % 2 == 0:
            rk, rv = rde
            for j in range(folded, i):
                rk = net.fold_key(rk, stm_k[j].view_as(k0))
                rv = net.fold_value(rv, stm_v[j].view_as(v0))
                norms.append(torch.log(rk.pow(2).sum(1).mean() / stm_k[j].detach().pow(2).sum(1).mean()) ** 2)
            rde, folded = (rk, rv), i
            latest = (stm_k[i - 1], stm_v[i - 1])
            mk = torch.cat([rk.flatten(2), latest[0], stm_k[0], stm_k[0]], 2)
            mv = torch.cat([rv.flatten(2), latest[1], stm_v[0], stm_v[0]], 2)
            readout = full_readout(mk, mv, ki)
            ug.append(feature_kl(stm[keep], readout[keep]))
        else:
            readout = stm
        logits = net.decoder(readout, per_object(ei), per_object(f8[:, i]), per_object(f4[:, i]))   # [B·N,1,H,W]
        if binary:
            seg.append(bootstrapped_bce(logits, masks[:, i], bootstrap))
            prob = torch.sigmoid(logits)                                              # [B,1,H,W]
        else:
            agg = aggregate_logits(torch.sigmoid(logits).view(b, n, *size) * valid[:, :, None, None])
            labels = (masks[:, i] * classes).sum(1).long()                            # 0 bg, 1..N
            seg.append(bootstrapped_ce(agg, labels, bootstrap))
            prob = torch.softmax(agg, 1)[:, 1:] * valid[:, :, None, None]             # [B,N,H,W]
        ious.append(mask_iou(flat(prob).detach(), flat(masks[:, i]))[keep])
        if i < t - 1 or "qam" in heads:
            vi = encode(i, ei, prob)
            stm_k.append(ki.flatten(2))
            stm_v.append(vi.flatten(2))
            if "qam" in heads:
                scored.append(net.score(vi)[keep])
                targets.append(mask_iou(flat(prob).detach(), flat(masks[:, i]))[keep])
        prior = union(prob.detach(), i)
    losses["loss_seg"] = torch.stack(seg).mean()
    if ug:
        losses["loss_ug"] = torch.stack(ug).mean()
        losses["loss_norm"] = torch.stack(norms).mean()
    if scored:
        losses["loss_qam"] = F.mse_loss(torch.cat(scored), torch.cat(targets))
    losses["loss"] = (losses["loss_seg"] + MU_UG * losses["loss_ug"] + GAMMA_MC * losses["loss_mc"]
                      + losses["loss_qam"] + norm_weight * losses["loss_norm"])
    losses["iou"] = torch.cat(ious).mean()
    return losses
