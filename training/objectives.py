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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import bootstrapped_bce
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
    mem_keys [B,C_k,M], mem_values [B,C_v,M], query_key [B,C_k,h,w] → [B,C_v,h,w]."""
    b, _, h, w = query_key.shape
    weights = torch.softmax(affinity(mem_keys, query_key.flatten(2)), 1)
    return (mem_values @ weights).view(b, -1, h, w)


def clip_losses(net, frames, masks, others, bootstrap: float, use_prior: bool = False,
                generator: torch.Generator | None = None, norm_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Forward a batch of clips through the STM and (with SAM) SAM pattern banks → losses.

    frames [B,T,3,H,W] float32 normalised, masks/others [B,T,1,H,W] in {0,1} (target object,
    other objects), ``bootstrap`` the fraction of hardest pixels of the bootstrapped BCE,
    ``use_prior`` runs prior enhancement (needs the ``prior`` head). Returns ``loss`` (the
    total, Eq. 10) and its terms ``loss_seg``, ``loss_ug``, ``loss_mc``, ``loss_qam`` (0 when
    the network lacks the head) and ``iou`` (mean training IoU of the segmented frames,
    detached). Uses the heads the network carries (``net.heads``).
    """
    generator = generator or torch.Generator().manual_seed(0)
    heads = net.heads
    b, t = frames.shape[:2]
    f4, f8, f16 = net.key_encoder(frames.flatten(0, 1))
    f4, f8, f16 = (x.view(b, t, *x.shape[1:]) for x in (f4, f8, f16))
    zero = frames.new_zeros(())

    def key_of(i, prior):
        if use_prior:
            return net.enhance(f16[:, i], prior)
        return net.key_proj(f16[:, i]), f16[:, i]

    def encode(i, feat, own):
        return net.value_encoder(frames[:, i], feat, torch.cat([own, others[:, i]], 1))

    fg0 = torch.maximum(masks[:, 0], others[:, 0])
    k0, e0 = key_of(0, fg0)
    v0 = encode(0, e0, masks[:, 0])
    losses = {"loss_seg": zero, "loss_ug": zero, "loss_mc": zero, "loss_qam": zero, "loss_norm": zero}
    scored, targets = [], []

    # self-correction (Eq. 8) and QAM on perturbed first-frame masks
    if "sam" in heads or "qam" in heads:
        bad = perturb_masks(masks[:, 0], generator)
        kb, eb = key_of(0, torch.maximum(bad, others[:, 0]))
        vb = encode(0, eb, bad)
        if "sam" in heads:
            losses["loss_mc"] = feature_kl(k0, kb) + feature_kl(v0, vb)
        if "qam" in heads:
            scored += [net.score(vb), net.score(v0)]
            targets += [mask_iou(bad, masks[:, 0]), torch.ones(b, device=frames.device)]

    stm_k, stm_v = [k0.flatten(2)], [v0.flatten(2)]
    rde = (k0, v0)
    folded = 1                                  # memory frames folded into the RDE so far
    seg, ious, ug, norms = [], [], [], []
    prior = fg0
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
            ug.append(feature_kl(stm, readout))
        else:
            readout = stm
        logits = net.decoder(readout, ei, f8[:, i], f4[:, i])
        seg.append(bootstrapped_bce(logits, masks[:, i], bootstrap))
        prob = torch.sigmoid(logits)
        ious.append(mask_iou(prob.detach(), masks[:, i]))
        if i < t - 1 or "qam" in heads:
            vi = encode(i, ei, prob)
            stm_k.append(ki.flatten(2))
            stm_v.append(vi.flatten(2))
            if "qam" in heads:
                scored.append(net.score(vi))
                targets.append(mask_iou(prob.detach(), masks[:, i]))
        prior = torch.maximum(prob.detach(), others[:, i])
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
