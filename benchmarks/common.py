"""What vos-eval and vos-bench share: ground truth of a DAVIS-layout sequence (the layout
itself is `sdk.davis`), first-appearance prompts, timed playback through a segmenter, machine
description."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime

from sdk.io import read_mask
from sdk.metrics import prompts  # noqa: F401  (re-exported: vos-eval, vos-bench)


def read_ground_truth(annotations: Path, names: Iterable[str]) -> list[np.ndarray]:
    """Label maps uint8 [H,W] of `annotations/<name>.png` for each frame name.
    Raises FileNotFoundError for a frame without annotation."""
    masks = []
    for name in names:
        path = annotations / f"{name}.png"
        if not path.is_file():
            raise FileNotFoundError(f"no ground-truth mask {path}")
        masks.append(read_mask(path))
    return masks


def play(
    segmenter, frames: Iterable[np.ndarray], masks: Iterable[np.ndarray | None], latencies: list[float]
) -> Iterator[np.ndarray]:
    """Step the segmenter through rgb uint8 [H,W,3] frames with their prompt masks; yield each
    label map [H,W] and append the seconds spent in `step` to `latencies`."""
    for rgb, mask in zip(frames, masks, strict=True):
        start = time.perf_counter()
        labels = segmenter.step(rgb, mask)
        latencies.append(time.perf_counter() - start)
        yield labels


def machine_info(providers: Sequence[str]) -> dict:
    """CPU model (/proc/cpuinfo), logical cores, platform, ONNX Runtime version, providers."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")]
        cpu = models[0] if models else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "onnxruntime": onnxruntime.__version__,
        "providers": list(providers),
    }
