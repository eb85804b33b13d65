"""Training data of the proposal network: multi-object frames and their cached key features.

Frames come from :class:`training.datasets.ClipDataset` with the multi-object synthesis of
:mod:`training.synthesis` (objects of other sequences pasted, copies of the clip's own object
pasted as look-alikes, later pastes occluding earlier ones), so that single-object DAVIS 2016
frames carry several instances. Each clip is sampled with 2 frames (ClipDataset's minimum) and
its first frame is the sample (``frames_per_clip`` = 1: the two frames of a clip are
near-duplicates, a new clip is a new scene). The key encoder is frozen (the bundled one), so its features are computed once here and
cached (float16) with the instance labels on the f4 grid and the SOLO targets of the f16 grid
(:func:`training.proposal_net.assign_targets`); training then runs only the small head.

Cache layout (one ``.pt`` file per shard of ``shard_size`` samples, read with
``torch.load(weights_only=True)``): f16 [n,112,S/16,S/16], f8 [n,40,S/8,S/8], f4 [n,24,S/4,S/4]
float16; labels [n,S/4,S/4] uint8 (0 background, k = object k; an f4 cell belongs to an object
when ≥ half its 4×4 pixels do); cate [n,S/16,S/16] uint8; owner [n,S/16,S/16] int8 (label − 1 of
the owning object, −1 none).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .datasets import ClipDataset, load_sequences
from .proposal_net import assign_targets
from .synthesis import Synthesis

#: synthesis of the bundled proposal net: 1..5 objects a frame, look-alike copies, and pasted
#: objects zoomed up to 2× (the sdk at 480 px internal sees DAVIS objects 2× their 240p size)
SYNTHESIS = {"objects": 6, "multi_prob": 0.85, "duplicate_prob": 0.3, "zoom": (0.5, 2.0), "min_pixels": 100}
BASE_ZOOM = (0.8, 2.4)


def instance_labels(masks: np.ndarray, valid: np.ndarray, factor: int = 4) -> np.ndarray:
    """masks [N,S,S] float32 ∈ {0,1} (disjoint), valid [N] → uint8 [S/f,S/f] label map on the
    stride-``factor`` grid: cell = k+1 where object k covers ≥ half of its f×f pixels, else 0."""
    n, s, _ = masks.shape
    cover = masks.reshape(n, s // factor, factor, s // factor, factor).mean((2, 4))
    cover = cover * valid[:, None, None]
    lab = np.where(cover.max(0) >= 0.5, cover.argmax(0) + 1, 0)
    return lab.astype(np.uint8)


def targets_of(labels: torch.Tensor, grid: tuple[int, int]):
    """labels [H4,W4] uint8 → (instances [N,H4,W4] float32 of the labels present, cate, owner as
    :func:`assign_targets`, owner remapped to label − 1)."""
    ids = [int(i) for i in torch.unique(labels).tolist() if i != 0]
    if not ids:
        return torch.zeros((0,) + tuple(labels.shape)), torch.zeros(grid), torch.full(grid, -1, dtype=torch.long)
    inst = torch.stack([(labels == i).float() for i in ids])
    cate, owner = assign_targets(inst, grid)
    remap = torch.tensor([i - 1 for i in ids] + [-1])
    return inst, cate, remap[owner]


@torch.no_grad()
def build_cache(encoder, out: str | Path, roots: list[tuple[str, str]], clips: int, crop: int = 384,
                seed: int = 0, shard_size: int = 200, mean=(0.5,) * 3, std=(128 / 255,) * 3,
                frames_per_clip: int = 1, exclude=(), sequences=None) -> Path:
    """Write the cache (module docstring) of ``clips`` synthetic clips to ``out``
    (``frames_per_clip`` ∈ {1, 2} samples each).

    encoder: the frozen key encoder, image [B,3,S,S] normalised → (f4, f8, f16);
    roots: (DAVIS root, split) pairs (or ``sequences`` already loaded from them); ``exclude``:
    sequence names left out (held out for validation); crop S (a multiple of 16). Existing complete shards are
    kept (a rerun resumes). Returns ``out``. Raises ValueError for a crop not a multiple of 16.
    """
    if frames_per_clip not in (1, 2):
        raise ValueError(f"frames_per_clip must be 1 or 2, got {frames_per_clip}")
    if crop % 16:
        raise ValueError(f"crop must be a multiple of 16, got {crop}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if sequences is None:
        sequences = [s for root, split in roots for s in load_sequences(root, split)]
    seqs = [s for s in sequences if s.name not in set(exclude)]
    if not seqs:
        raise ValueError("no training sequence left after the held-out ones")
    ds = ClipDataset(seqs, crop=crop, num_frames=2, max_skip=5, mean=mean, std=std, scale=BASE_ZOOM,
                     seed=seed, synthesis=Synthesis(**SYNTHESIS), length=clips)
    per_shard = shard_size // frames_per_clip
    shards = (clips + per_shard - 1) // per_shard
    grid = (crop // 16, crop // 16)
    for sh in tqdm(range(shards), desc="cache shards"):
        path = out / f"shard-{sh:04d}.pt"
        if path.is_file():
            continue
        buf = {k: [] for k in ("f16", "f8", "f4", "labels", "cate", "owner")}
        for item in range(sh * per_shard, min(clips, (sh + 1) * per_shard)):
            d = ds[item]
            f4, f8, f16 = encoder(torch.from_numpy(d["frames"][:frames_per_clip]))
            for t in range(frames_per_clip):
                lab = torch.from_numpy(instance_labels(d["masks"][t], d["valid"]))
                _, cate, owner = targets_of(lab, grid)
                for k, v in (("f16", f16[t]), ("f8", f8[t]), ("f4", f4[t])):
                    buf[k].append(v.half())
                buf["labels"].append(lab)
                buf["cate"].append(cate.to(torch.uint8))
                buf["owner"].append(owner.to(torch.int8))
        torch.save({k: torch.stack(v) for k, v in buf.items()}, str(path) + ".tmp")
        Path(str(path) + ".tmp").replace(path)
    (out / "cache.json").write_text(json.dumps({"roots": roots, "clips": clips, "crop": crop, "seed": seed,
                                                "sequences": [q.name for q in seqs], "frames_per_clip": frames_per_clip, "synthesis": SYNTHESIS, "base_zoom": BASE_ZOOM}, indent=2))
    return out


def load_cache(folder: str | Path) -> dict[str, torch.Tensor]:
    """All shards of a cache folder concatenated (tensors as stored). Raises FileNotFoundError
    when the folder holds no shard."""
    files = sorted(Path(folder).glob("shard-*.pt"))
    if not files:
        raise FileNotFoundError(f"no cache shards (shard-*.pt) in {folder}; build them with --cache-clips")
    out, at = None, 0
    for f in files:                     # preallocate from the first shard: no 2× peak of a cat
        part = torch.load(f, weights_only=True)
        n = part["f16"].shape[0]
        if out is None:
            total = n * len(files)      # every shard but maybe the last is full
            out = {k: torch.empty((total,) + tuple(v.shape[1:]), dtype=v.dtype) for k, v in part.items()}
        for k, v in part.items():
            out[k][at:at + n] = v
        at += n
        del part
    return {k: v[:at] for k, v in out.items()}


def batch_from_cache(cache: dict, index: torch.Tensor):
    """Samples ``index`` of a loaded cache → (f16, f8, f4 float32, instances: list of
    [N,H4,W4] float32 ∈ {0,1}, cate [B,h,w] float32, owner [B,h,w] int64 into each instances)."""
    f16, f8, f4 = (cache[k][index].float() for k in ("f16", "f8", "f4"))
    instances, owners = [], []
    for i in index.tolist():
        lab = cache["labels"][i]
        ids = [int(v) for v in torch.unique(lab).tolist() if v != 0]
        inst = torch.stack([(lab == v).float() for v in ids]) if ids else torch.zeros((0,) + tuple(lab.shape))
        remap = torch.full((256,), -1, dtype=torch.long)
        for j, v in enumerate(ids):
            remap[v - 1] = j
        own = cache["owner"][i].long()
        owners.append(torch.where(own >= 0, remap[own.clamp(min=0)], own))
        instances.append(inst)
    return f16, f8, f4, instances, cache["cate"][index].float(), torch.stack(owners)


@torch.no_grad()
def real_frames(encoder, sequences, every: int = 4, resolution: int = 480, stride: int = 16,
                mean=(0.5,) * 3, std=(128 / 255,) * 3) -> list[dict]:
    """Validation frames as the sdk sees them: every ``every``-th frame of ``sequences`` (no
    pasting), resized to ``resolution`` px short side and padded (:class:`sdk.ops.Geometry`),
    through the frozen encoder → dicts of f16/f8/f4 float16 [1,…] and ``gt`` bool [N,Hp,Wp] (the
    frame's objects on the padded frame, nearest-neighbour)."""
    from sdk.ops import Geometry

    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    out = []
    for seq in sequences:
        for i in range(0, len(seq.frames), every):
            rgb, lab = seq.frames[i], seq.masks[i]
            geo = Geometry.for_frame(rgb.shape[0], rgb.shape[1], resolution, stride)
            ids = [v for v in np.unique(lab) if v not in (0, 255)]
            if not ids:
                continue
            f4, f8, f16 = encoder(torch.from_numpy(geo.image(rgb, m, s)))
            big = geo.label_map(lab)
            out.append({"f16": f16.half(), "f8": f8.half(), "f4": f4.half(),
                        "gt": np.stack([big == v for v in ids]), "sequence": seq.name})
    return out
