"""Soft output of :meth:`Segmenter.step <sdk.segmenter.Segmenter.step>`: per-object
probabilities at input size, the ones the label map is the argmax of (STM/STCN soft
aggregation), for a caller's own thresholds or to blend with other cues."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .io import VOID


@dataclass(frozen=True, eq=False)
class SoftOutput:
    """What ``Segmenter.step(frame, mask, return_probabilities=True)`` returns.

    * ``labels`` uint8 [H,W]: the label map ``step`` returns without the flag (the same array
      values, bit for bit).
    * ``probabilities`` float32 [N,H,W] in [0, 1], input size: channel i is object
      ``objects[i]``'s probability after soft aggregation (STM/STCN: the background and the N
      objects' odds normalised to sum 1), cropped and bilinearly resized as the label map's
      argmax reads it. The background is not among them.
    * ``objects`` tuple of N ints: the label value of each channel, in the order the objects
      were introduced (:attr:`Segmenter.objects <sdk.segmenter.Segmenter.objects>` at that
      frame).
    * ``background`` float32 [H,W]: the background's probability, the channel the argmax
      reads beside them (≈ 1 − probabilities.sum(0), exactly that up to float32 rounding on
      a frame without a mask).

    ``labels`` = ``[0, *objects]`` at ``argmax([background, *probabilities], axis=0)``
    (first channel on ties) at every pixel. On a frame with a mask, what the mask gives is
    imposed at input size, as on the label map: where it gives an object, that object's
    probability is 1 and every other channel (the background included) 0; where it gives
    background (0), the objects it gives are 0 and the others keep their prediction, the
    background its own (so there the channels sum to 1 minus what the given objects had);
    void pixels (255) keep the prediction of every object. The arrays are fresh (the
    caller's).
    """

    labels: np.ndarray
    probabilities: np.ndarray
    objects: tuple[int, ...]
    background: np.ndarray


def soft_output(labels: np.ndarray, full: np.ndarray, objects: tuple[int, ...], mask: np.ndarray | None = None,
                given: list[int] = (), void: bool = False) -> SoftOutput:
    """labels uint8 [H,W] (the step's output), full float32 [N+1,H,W] (the soft aggregate at
    input size, channel 0 the background), objects the N label values, mask the frame's
    checked label map uint8 [H,W] or None, given the labels it gives (void not among them),
    void whether it has void pixels (:data:`~sdk.io.VOID`) → a :class:`SoftOutput` of fresh
    arrays, the mask imposed as :class:`SoftOutput` says."""
    probabilities, background = np.array(full[1:], np.float32), np.array(full[0], np.float32)
    if mask is not None:
        labelled = (mask > 0) & (mask != VOID) if void else mask > 0
        probabilities[:, labelled] = 0
        background[labelled] = 0
        given_background = mask == 0
        for label in given:
            plane = probabilities[objects.index(label)]
            plane[given_background] = 0
            plane[mask == label] = 1
    return SoftOutput(labels, probabilities, tuple(objects), background)
