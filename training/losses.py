"""Losses of STCN/MiVOS main training."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bootstrap_fraction(it: int, warm_start: int, warm_end: int, top_p: float = 0.15) -> float:
    """Fraction of hardest pixels kept by the bootstrapped CE at iteration ``it`` (MiVOS/STCN
    schedule): 1.0 before ``warm_start``, then linearly down to ``top_p`` at ``warm_end``."""
    if it < warm_start:
        return 1.0
    if it >= warm_end:
        return top_p
    return 1.0 - (1.0 - top_p) * (it - warm_start) / (warm_end - warm_start)


def bootstrapped_bce(logits: torch.Tensor, target: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bootstrapped binary cross-entropy: mean over the ``fraction`` of pixels with the highest
    loss, per sample (MiVOS / STCN ``BootstrappedCE`` for one object vs background).

    logits, target [B,…] float32 (target ∈ {0,1}) → scalar.
    """
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1)
    if fraction >= 1.0:
        return loss.mean()
    k = max(1, int(loss.shape[1] * fraction))
    return loss.topk(k, dim=1, sorted=False).values.mean()


def bootstrapped_ce(logits: torch.Tensor, labels: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bootstrapped cross-entropy over classes: mean over the ``fraction`` of pixels with the
    highest loss, per sample (MiVOS / STCN ``BootstrappedCE`` on the soft-aggregated logits of
    N objects + background, STCN's multi-object main training).

    logits float32 [B,C,H,W], labels int64 [B,H,W] in 0..C−1 → scalar.
    """
    loss = F.cross_entropy(logits, labels, reduction="none").flatten(1)
    if fraction >= 1.0:
        return loss.mean()
    k = max(1, int(loss.shape[1] * fraction))
    return loss.topk(k, dim=1, sorted=False).values.mean()
