"""Several processes (``torchrun --nproc-per-node N``): data-parallel training (issue 28 item 3).

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; :func:`setup` then joins the process group
(NCCL on CUDA, gloo on the CPU) and pins rank r to ``cuda:LOCAL_RANK``. Each iteration's global
batch of B clips (items ``it·B .. it·B+B−1``, deterministic per (seed, item)) is split into
W equal shards, rank r taking items ``it·B + r·B/W ..``: the per-rank sampling, seeded by the
item, so the clips of a run do not depend on W and a checkpoint resumes on any world size.
The training loss runs through :class:`torch.nn.parallel.DistributedDataParallel`
(:func:`clip_loss_module`): the loss calls the network's submodules rather than its
``forward``, so DDP wraps :class:`ClipLoss`, a module whose ``forward`` is the whole clip loss;
its hooks then average the gradients over ranks during ``backward``. The loss is a mean over
clips, so with equal shards the averaged gradient is the 1-process one of the same global
batch. Only rank 0 writes checkpoints, history, curves and the progress bar.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def setup(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group when WORLD_SIZE > 1 → (rank, world size, this rank's device)."""
    rank, size, local = world()
    if size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=size)
    return rank, size, device


class ClipLoss(torch.nn.Module):
    """``forward(*args, **kwargs)`` = :func:`training.objectives.clip_losses` of ``net`` (its
    arguments and its dict of losses), so that DDP sees one forward per step."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, *args, **kwargs) -> dict:
        from .objectives import clip_losses

        return clip_losses(self.net, *args, **kwargs)


def clip_loss_module(net: torch.nn.Module, size: int, device: torch.device) -> torch.nn.Module:
    """The step's loss module: :class:`ClipLoss` of ``net``, wrapped in DistributedDataParallel
    when ``size`` > 1 (after :func:`setup`, with the parameters that train already chosen:
    ``requires_grad`` is read here). ``find_unused_parameters``: a step may leave a head
    unused (prior enhancement on some steps only), the same on every rank (the choice is
    seeded by the iteration)."""
    module = ClipLoss(net)
    if size == 1:
        return module
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)


def mean_over_ranks(values: dict, size: int) -> dict:
    """Float values (the step's losses) averaged over ranks, for rank 0's history."""
    if size == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / size for k, v in zip(keys, t.tolist())}


def barrier(size: int) -> None:
    if size > 1:
        dist.barrier()


def teardown(size: int) -> None:
    if size > 1 and dist.is_initialized():
        dist.destroy_process_group()
