"""A synthetic demo clip made by code (no third-party images): a textured ellipse (object 1)
and a textured rectangle (object 2) crossing a textured background."""

from __future__ import annotations

import cv2
import numpy as np


def _texture(rng: np.random.Generator, height: int, width: int, tint: tuple[int, int, int]) -> np.ndarray:
    """Smooth random texture tinted towards a colour -> rgb uint8 [H,W,3]."""
    noise = rng.random((height // 8 + 1, width // 8 + 1, 3), np.float32)
    noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(0.5 * np.asarray(tint, np.float32) + 127 * noise, 0, 255).astype(np.uint8)


def make_clip(
    frames: int = 40, height: int = 240, width: int = 320, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Generate the demo clip -> (rgb uint8 [T,H,W,3], ground-truth labels uint8 [T,H,W]).

    Object 1, a textured red ellipse, moves left to right along a sine path; object 2, a
    textured blue rectangle, moves right to left in front of it. labels[0] is the first-frame
    mask a user would give.
    """
    rng = np.random.default_rng(seed)
    background = _texture(rng, height, width, (90, 160, 90))
    ellipse_texture = _texture(rng, height, width, (255, 60, 40))
    rect_texture = _texture(rng, height, width, (40, 80, 255))
    rgb = np.empty((frames, height, width, 3), np.uint8)
    labels = np.zeros((frames, height, width), np.uint8)
    axes = (width // 7, height // 8)
    half = (width // 12, height // 8)
    for t in range(frames):
        s = t / max(frames - 1, 1)
        centre = (int(width * (0.2 + 0.6 * s)), int(height * (0.45 + 0.15 * np.sin(2 * np.pi * s))))
        cv2.ellipse(labels[t], centre, axes, 30 + 90 * s, 0, 360, 1, -1)
        cx, cy = int(width * (0.8 - 0.6 * s)), int(height * 0.65)
        labels[t, cy - half[1] : cy + half[1], cx - half[0] : cx + half[0]] = 2
        # the object textures travel with the objects (image centre -> object centre)
        ellipse = np.roll(ellipse_texture, (centre[1] - height // 2, centre[0] - width // 2), (0, 1))
        rect = np.roll(rect_texture, (cy - height // 2, cx - width // 2), (0, 1))
        rgb[t] = np.where((labels[t] == 1)[..., None], ellipse, background)
        rgb[t] = np.where((labels[t] == 2)[..., None], rect, rgb[t])
    return rgb, labels
