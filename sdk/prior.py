"""The prior masks of prior enhancement (QDMN Eq. 5, QPM Eq. 4) along a video, per object so
that an object removed from tracking (:meth:`~sdk.segmenter.Segmenter.remove_object`) leaves
them too."""
from __future__ import annotations

import numpy as np

from .ops import Workspace


class Priors:
    """The two prior masks [1,1,Hp,Wp] float32 a frame may get (padded size): the foreground
    of the first frame's annotation (its label map > 0, void counting as background) and the
    foreground probability of the previous frame (max over objects of its soft aggregate).

    To take an object out of them later it keeps the first frame's label map (uint8 [Hp,Wp])
    and the previous frame's soft aggregate (float32 [N+1,Hp,Wp], taken out of the
    Segmenter's workspace at :meth:`commit`, which gets the one kept before for its next frame:
    no copy per frame). Empty (all None) before the first frame.
    """

    def __init__(self) -> None:
        self.first_map: np.ndarray | None = None
        self.first: np.ndarray | None = None
        self.previous: np.ndarray | None = None
        self.aggregate: np.ndarray | None = None

    def of_frame(self, t: int, source: int, given_map: np.ndarray | None) -> np.ndarray:
        """Prior mask [1,1,Hp,Wp] float32 of frame t: at t = 0 the foreground of its label map
        ``given_map`` uint8 [Hp,Wp]; later that of frame ``source`` (the policy's
        :meth:`~sdk.policies.MemoryPolicy.prior`: 0, the first frame, else the previous one).
        Changes nothing."""
        if t == 0:
            return (given_map > 0).astype(np.float32)[None, None]
        return self.first if source == 0 else self.previous

    def commit(self, t: int, given_map: np.ndarray | None, prior: np.ndarray, agg: np.ndarray,
               work: Workspace) -> None:
        """Frame t is done: its label map ``given_map`` and prior ``prior`` become the first
        frame's at t = 0; its soft aggregate ``agg`` [N+1,Hp,Wp] (the workspace's
        ``"aggregate"`` array) gives the next frame's previous prior."""
        if t == 0:
            self.first_map, self.first = given_map, prior
        self.previous = agg[1:].max(0)[None, None]
        if work.exchange("aggregate", self.aggregate) is agg:
            self.aggregate = agg
        else:                                        # agg was not the workspace's: keep a copy
            self.aggregate = agg.copy()

    def without(self, index: int, label: int) -> Priors:
        """These priors without object ``index`` (its channel in the soft aggregate) of label
        value ``label``: a new :class:`Priors` (this one unchanged). The first frame's prior
        loses its pixels of ``label``; the previous one is the max over the other objects (0
        everywhere when none is left)."""
        out = Priors()
        if self.first_map is not None:
            out.first_map = np.where(self.first_map == label, np.uint8(0), self.first_map)
            out.first = (out.first_map > 0).astype(np.float32)[None, None]
        if self.aggregate is not None:
            out.aggregate = np.delete(self.aggregate, index + 1, axis=0)
            out.previous = (out.aggregate[1:].max(0) if len(out.aggregate) > 1
                            else np.zeros(out.aggregate.shape[1:], np.float32))[None, None]
        return out
