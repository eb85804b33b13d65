"""Several processes (``torchrun --nproc-per-node N``): data-parallel training (issue 28 item 3).

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; :func:`setup` then joins the process group
(NCCL on CUDA, gloo on the CPU) and pins rank r to ``cuda:LOCAL_RANK``. Each iteration's global
batch of B clips (items ``it·B .. it·B+B−1``, deterministic per (seed, item)) is split into
W equal shards, rank r taking items ``it·B + r·B/W ..``: the per-rank sampling, seeded by the
item, so the clips of a run do not depend on W and a checkpoint resumes on any world size.
After ``backward`` the gradients are averaged over ranks (:func:`average_gradients`, the
all-reduce DistributedDataParallel does; done explicitly because the training loss calls the
network's submodules, not its ``forward``, which DDP's hooks need). The loss is a mean over
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


def average_gradients(params, size: int) -> None:
    """All-reduce (mean over ``size`` ranks) the gradient of every parameter that trains; a
    parameter without a gradient on this rank takes part with zeros, so all ranks agree."""
    if size == 1:
        return
    for p in params:
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= size


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
