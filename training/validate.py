"""Held-in validation J&F during training: the STCN every-k inference loop on the torch network.

The loop is the sdk's (:class:`sdk.segmenter.Segmenter` with the unbounded ``every_k`` policy)
with the torch parts in place of the ONNX graphs, and shares its pre- and post-processing
(:mod:`sdk.ops`): frames resized to a short side of ``resolution`` px, normalised with
``net.config`` mean/std and zero-padded bottom/right to multiples of the stride
(:class:`~sdk.ops.Geometry`); memory = the first frame (its ground truth) + every ``every``-th
frame + every frame where an object is first given; top-k readout; decoder; sigmoid; soft
aggregation; crop and bilinear resize back; argmax. Scores follow the DAVIS 2017
semi-supervised protocol of ``vos-eval`` (:mod:`sdk.metrics`): an object is given on
its first ground-truth frame and scored on the later frames but the last; means over objects.

"Held-in": the DAVIS 2016 val sequences in ``../shared/data`` are the ones used for model
selection; the held-out set lives elsewhere (``../shared/data/README.md``).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from time import perf_counter

import numpy as np
import torch

from sdk.davis import davis_sequence_dirs, split_subset
from sdk.io import iter_frames, list_frames, read_mask
from sdk.metrics import VOID, evaluate_sequence, prompts, summarize
from sdk.ops import Geometry, channel_argmax, merge_given, sigmoid, soft_aggregate


@torch.no_grad()
def segment_sequence(net, frames: Iterable[np.ndarray], masks: Iterable[np.ndarray | None],
                     resolution: int | None = 240, every: int = 5, top_k: int | None = 20) -> Iterator[np.ndarray]:
    """Segment a video with the torch network; yield one label map uint8 [H,W] per frame.

    frames: RGB uint8 [H,W,3]; masks: per frame a label map (objects given there; the first
    must hold at least one) or None. ``net`` is used as it is (call ``net.eval()`` first);
    ``top_k`` None = ``net.config["top_k"]``. Mirrors ``Segmenter.step`` with the ``every_k``
    policy (unbounded): objects first given mid-video get zero values in older memory frames,
    a given mask is the output for its objects and the other objects' predictions fill the
    rest. Raises ValueError when the first frame has no mask or an empty one.
    """
    cfg = net.config
    mean, std = np.asarray(cfg["mean"], np.float32), np.asarray(cfg["std"], np.float32)
    top_k = int(cfg["top_k"] if top_k is None else top_k)
    device = next(net.parameters()).device
    geo = None
    labels: list[int] = []
    lut = np.zeros(1, np.uint8)
    mem_k = mem_v = None        # [C_k, M], [N, C_v, M]
    for t, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
        given = []
        if mask is not None:
            mask = np.where(np.asarray(mask) == VOID, 0, mask).astype(np.uint8)
            given = [int(v) for v in np.unique(mask) if v != 0]
            if not given:
                mask = None
        if geo is None:
            if mask is None:
                raise ValueError("the first frame needs a non-empty mask")
            geo = Geometry.for_frame(frame.shape[0], frame.shape[1], resolution, cfg["stride"])
        image = torch.from_numpy(geo.image(frame, mean, std)).to(device)
        key, f16, f8, f4 = net.encode_key(image)

        prob = None
        if mem_k is not None and any(label not in given for label in labels):
            readout, _ = net.readout(key, mem_k[None], mem_v, torch.ones(mem_k.shape[1], device=device),
                                     min(top_k, mem_k.shape[1]))
            logits = net.decode(readout, f16, f8, f4)
            prob = sigmoid(logits[:, 0].float().cpu().numpy())

        new = [label for label in given if label not in labels]
        if new:
            labels += new
            lut = np.array([0, *labels], np.uint8)
            if mem_v is not None:   # no older frame holds the new objects: zero values
                mem_v = torch.cat([mem_v, mem_v.new_zeros(len(new), *mem_v.shape[1:])])
        given_idx = [labels.index(label) for label in given]

        if mask is not None:
            given_map = geo.label_map(mask)
        probs = prob if mask is None else merge_given(prob, given_map, given_idx, given, len(labels))
        agg = soft_aggregate(probs)
        full = geo.to_input(agg)
        if mask is None:
            out = lut[channel_argmax(full)]
        else:
            rest = [c for c in range(len(full)) if c - 1 not in given_idx]
            out = np.where(mask > 0, mask, lut[rest][channel_argmax(full[rest])])

        if mask is not None or t % every == 0:
            own = agg[1:]
            vmask = torch.from_numpy(np.stack([own, own.sum(0, keepdims=True) - own], 1)).to(device)
            value = net.encode_value(image, f16, vmask)
            k = key.reshape(key.shape[1], -1)
            v = value.reshape(*value.shape[:2], -1)
            mem_k = k if mem_k is None else torch.cat([mem_k, k], 1)
            mem_v = v if mem_v is None else torch.cat([mem_v, v], 2)
        yield out


def heldin_jf(net, root, split: str = "val", sequences=None, max_frames: int | None = None,
              resolution: int | None = 240, every: int = 5, top_k: int | None = 20) -> dict:
    """Held-in J&F of the torch network on a DAVIS-layout split (no ONNX).

    root/split: ``<root>/ImageSets/<split>.txt``; sequences: a subset of it (None = all);
    max_frames: only the first frames of each sequence (≥ 3: the protocol scores neither the
    first nor the last frame); resolution: short side in px (None = native); every: memory
    write period; top_k: readout top-k (None = ``net.config["top_k"]``).

    The network runs in eval mode under ``torch.no_grad``; every module's training flag is put
    back afterwards (the main loop keeps BatchNorm in eval inside a training network, which a
    plain ``net.train()`` would undo). Returns ``{"jf", "j", "f"}`` ×100 (means over objects,
    as vos-eval), ``"per_sequence": {name: {"jf", "j", "f", "objects", "frames"}}``, ``"frames"``
    (segmented), ``"seconds"`` (wall time). Raises ValueError for sequences not in the split, a
    bad max_frames/every, or nothing to score; FileNotFoundError for a frame without mask.
    """
    names = split_subset(root, split, sequences)          # InputError (a ValueError) for unknown ones
    if max_frames is not None and max_frames < 3:
        raise ValueError(f"max_frames must be ≥ 3 (first and last frames are not scored), got {max_frames}")
    if every < 1:
        raise ValueError(f"every must be ≥ 1, got {every}")
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    start = perf_counter()
    all_objects, per_sequence, total = [], {}, 0
    try:
        for name in names:
            fdir, adir = davis_sequence_dirs(root, name)
            stems = list_frames(fdir)[:max_frames]
            gt = []
            for stem in stems:
                path = Path(adir) / f"{stem}.png"
                if not path.is_file():
                    raise FileNotFoundError(f"no ground-truth mask {path}")
                gt.append(read_mask(path))
            rgb = (img for _, img in itertools.islice(iter_frames(fdir), len(stems)))
            objects = evaluate_sequence(segment_sequence(net, rgb, prompts(gt), resolution, every, top_k), gt)
            total += len(stems)
            entry = {"objects": len(objects), "frames": len(stems)}
            if objects:
                entry.update(_percent(summarize(objects.values())))
                all_objects += objects.values()
            per_sequence[name] = entry
    finally:
        for module, mode in modes:
            module.training = mode
    if not all_objects:
        raise ValueError(f"nothing to score in {root} {split} (sequences {names}, max_frames {max_frames})")
    return {**_percent(summarize(all_objects)), "per_sequence": per_sequence, "frames": total,
            "seconds": perf_counter() - start}


def _percent(summary: dict) -> dict:
    return {"jf": 100 * summary["J&F"], "j": 100 * summary["J-Mean"], "f": 100 * summary["F-Mean"]}
