"""Stand-ins for sdk.Segmenter in CLI/eval tests: the same contract (step/reset/providers/
bank_bytes/timings and the sdk's InputError checks) without a model."""

from __future__ import annotations

import numpy as np

from sdk.errors import InputError

MAX_OBJECTS = 16


class CopyFirstSegmenter:
    """Answers every frame with the masks given so far (first-frame mask, later objects added
    where their masks were given). Records the masks it receives in `given`."""

    providers = ["CPUExecutionProvider"]
    method = "every_k"
    resolution = None
    bank_bytes = 0
    timings: dict = {}

    def __init__(self):
        self.given: list[np.ndarray | None] = []
        self.reset()

    def reset(self) -> None:
        self.labels: np.ndarray | None = None

    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise InputError(f"frame must be RGB uint8 [H,W,3], got {frame.dtype} {list(frame.shape)}")
        self.given.append(None if mask is None else mask.copy())
        if mask is not None:
            if mask.shape != frame.shape[:2]:
                raise InputError(f"mask size {list(mask.shape)} differs from the frame's {list(frame.shape[:2])}")
            if mask.max() > MAX_OBJECTS:
                raise InputError(f"mask label {mask.max()} exceeds this model's limit of max_objects = {MAX_OBJECTS}")
            if self.labels is None and not mask.any():
                raise InputError("the first frame's mask is empty (all background)")
            self.labels = mask.astype(np.uint8) if self.labels is None else np.where(mask > 0, mask, self.labels)
        if self.labels is None:
            raise InputError("the first frame needs a mask")
        return self.labels.astype(np.uint8)


class OracleSegmenter(CopyFirstSegmenter):
    """Answers frame i (counted over all sequences) with answers[i]."""

    def __init__(self, answers: list[np.ndarray]):
        super().__init__()
        self.answers = list(answers)

    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        super().step(frame, mask)
        return self.answers.pop(0)
