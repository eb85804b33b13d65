"""vos-bench's long videos played from a real clip: the frame orders a video of length L (or a stream of N
frames) plays, and the DAVIS sequence they play (frames, ground truth, prompts)."""
from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from pathlib import Path

import cv2

from benchmarks.common import prompts, read_ground_truth
from sdk.davis import davis_sequence_dirs
from sdk.io import iter_frames, list_frames


# --- video orders -------------------------------------------------------------------------------


def ping_pong(frames: int, length: int) -> list[int]:
    """Frame order of a synthetic long video: (0..T−1, T−2..1) repeated `length` times."""
    unit = list(range(frames)) + list(range(frames - 2, 0, -1))
    return unit * length


def stream_order(frames: int, count: int) -> list[int]:
    """The ping-pong order of `frames` frames cut or extended to exactly `count` frames."""
    unit = ping_pong(frames, 1)
    return (unit * -(-count // len(unit)))[:count]


def make_order(frames: int, order: tuple[str, int]) -> list[int]:
    """("length", L) → :func:`ping_pong`; ("frames", N) → :func:`stream_order`."""
    kind, value = order
    return ping_pong(frames, value) if kind == "length" else stream_order(frames, value)


def schedule(methods: Sequence[str], point_frames: Sequence[int], repeats: int,
             balance: bool) -> list[tuple[str, int]]:
    """The runs of a benchmark, in order: (method, point index) pairs, method-major (one
    method's lengths back to back, so lengths are compared under the same machine conditions).

    ``balance``: within a method, point p runs ``repeats × ⌈max(point_frames) / point_frames[p]⌉``
    times, so every length is timed over about as many frames as the longest, and the runs are
    ordered by their centres (i + ½) / count: each length's runs are spread symmetrically
    around the middle of the method's block, so the machine's drift (a 2-core VM's speed
    wanders by 5–10 % over tens of seconds) weighs on every length alike and a linear drift
    cancels. Without it each point runs ``repeats`` times, alternate repeats in reverse order.
    """
    if not balance:
        block = [(m, p) for m in methods for p in range(len(point_frames))]
        return [run for r in range(repeats) for run in (block if r % 2 == 0 else block[::-1])]
    counts = run_counts(point_frames, repeats, balance)
    centres = sorted(((i + 0.5) / c, -point_frames[p], p) for p, c in enumerate(counts) for i in range(c))
    return [(m, p) for m in methods for _, _, p in centres]


def run_counts(point_frames: Sequence[int], repeats: int, balance: bool) -> list[int]:
    """Videos played per point: ``repeats × ⌈max(point_frames) / point_frames[p]⌉`` with
    ``balance`` (every length timed over about as many frames as the longest), else ``repeats``."""
    longest = max(point_frames)
    return [repeats * (-(-longest // f) if balance else 1) for f in point_frames]


def unit_frames(frames: int) -> int:
    """Frames of one forward+backward unit of a T-frame sequence."""
    return len(ping_pong(frames, 1))


# --- the sequence --------------------------------------------------------------------------------


def load_sequence(data: Path, sequence: str, max_frames: int | None = None, size: tuple[int, int] | None = None):
    """→ (frames: RGB uint8 [H,W,3] list, ground truth: uint8 [H,W] list, prompt masks: one per
    frame, None where no object first appears) of a DAVIS-layout sequence, its first
    `max_frames` frames only if set, resized to `size` = (W, H) if set (frames: area/bilinear,
    masks: nearest). Raises VideoReadError / FileNotFoundError naming what is missing."""
    frames_dir, annotations = davis_sequence_dirs(data, sequence)
    names, frames = [], []
    for name, rgb in islice(iter_frames(frames_dir), max_frames):
        names.append(name)
        frames.append(rgb)
    gt = read_ground_truth(annotations, names)
    if size is not None:
        w, h = size
        shrink = w * h < frames[0].shape[0] * frames[0].shape[1]
        frames = [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
                  for f in frames]
        gt = [cv2.resize(g, (w, h), interpolation=cv2.INTER_NEAREST) for g in gt]
    return frames, gt, prompts(gt)


def check_sequence(data: Path, sequence: str, max_frames: int | None = None) -> tuple[int, tuple[int, int]]:
    """Cheap checks in the parent before any run: frames and annotations exist → (number of
    frames used, (W, H) of the first frame)."""
    frames_dir, annotations = davis_sequence_dirs(data, sequence)
    names = list_frames(frames_dir)[:max_frames]
    for name in names:
        if not (annotations / f"{name}.png").is_file():
            raise FileNotFoundError(f"no ground-truth mask {annotations / f'{name}.png'}")
    first = next(iter_frames(frames_dir))[1]
    return len(names), (first.shape[1], first.shape[0])


def played_prompts(sequence_prompts: Sequence, order: Sequence[int]) -> list:
    """Prompt of each played frame: a frame's mask where it is played for the first time
    (objects first appear during the first forward pass, as in the sequence), else None."""
    seen, out = set(), []
    for i in order:
        out.append(None if i in seen else sequence_prompts[i])
        seen.add(i)
    return out
