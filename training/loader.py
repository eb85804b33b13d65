"""Batches of clips for the training loop, in the main process or in DataLoader workers.

Item ``it·B + j`` is clip j of iteration ``it`` (B = batch size), and every item is
deterministic per (seed, item) (:class:`training.datasets.ClipDataset`), so a run that
resumes at iteration ``it`` sees the same clips as one that never stopped, with or without
workers. The max-skip curriculum travels with the item index (:class:`SkipSchedule`), since a
worker holds its own copy of the dataset and would not see an attribute set per iteration.
"""
from __future__ import annotations

import bisect
from collections.abc import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader


class SkipSchedule:
    """Picklable item → max skip (STCN curriculum): ``skip_values[i]`` while
    (item // batch_size) / iterations < ``skip_fractions[i]``."""

    def __init__(self, cfg: dict, batch_size: int):
        self.fractions, self.values = list(cfg["skip_fractions"]), list(cfg["skip_values"])
        self.iterations, self.batch_size = cfg["iterations"], batch_size

    def at_iteration(self, it: int) -> int:
        """Max skip (frames) at iteration ``it`` (0-based)."""
        return self.values[bisect.bisect_right(self.fractions, it / self.iterations)]

    def __call__(self, item: int) -> int:
        return self.at_iteration(item // self.batch_size)


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Stack the items' float32 arrays key by key → tensors with a leading batch dimension."""
    return {key: torch.from_numpy(np.stack([it[key] for it in items])) for key in items[0]}


def _one_thread_worker(_worker_id: int) -> None:
    """Each worker warps with one OpenCV and one torch thread: the workers are the parallelism."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def iterate_batches(ds, batch_size: int, start: int, stop: int, workers: int = 0,
                    pin_memory: bool = False, rank: int = 0, world: int = 1) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of iterations ``start..stop−1`` (items ``it·B .. it·B + B − 1``), as
    :func:`collate` dicts; ``workers`` > 0 builds them in that many spawned DataLoader
    processes (prefetching 4 batches each, one thread each). With ``world`` > 1 rank ``rank`` gets
    items ``it·B + rank·B/world ..`` (B divisible by world). Raises ValueError for workers < 0."""
    if workers < 0:
        raise ValueError(f"workers must be ≥ 0, got {workers}")
    shard = batch_size // world           # rank r: its 1/world of each global batch (training.distributed)
    plan = [list(range(it * batch_size + rank * shard, it * batch_size + (rank + 1) * shard))
            for it in range(start, stop)]
    if not workers:
        for indices in plan:
            yield collate([ds[i] for i in indices])
        return
    # spawned, not forked: a fork taken while torch's, OpenCV's or ONNX Runtime's thread pools
    # hold a lock leaves the worker waiting on it for ever (seen in the test suite)
    yield from DataLoader(ds, batch_sampler=plan, num_workers=workers, collate_fn=collate,
                          pin_memory=pin_memory, prefetch_factor=4, worker_init_fn=_one_thread_worker,
                          multiprocessing_context="spawn")
