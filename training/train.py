"""STCN main-training loop (MiVOS/STCN recipe, scaled to small machines).

Per iteration: a batch of 3-frame clips; frame 0 with its ground-truth mask is memory, frames
1 and 2 are segmented (frame 1 is written to memory with its own prediction); loss =
bootstrapped BCE on frames 1 and 2 (:mod:`training.losses`). Adam, separate learning rate for
the trainable part of the ImageNet backbone, frozen BatchNorm, max-skip curriculum.
Checkpoints ``last.safetensors``/``last.json`` (+ ``last.optim.pt``) every
``checkpoint_every`` iterations; a run restarted on the same ``out`` folder resumes.
"""
from __future__ import annotations

import bisect
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .datasets import ClipDataset, load_sequences
from .losses import bootstrap_fraction, bootstrapped_bce
from .networks import build_network

log = logging.getLogger("vosedge.train")
CONFIG_DIR = Path(__file__).parent / "configs"


def load_config(config: str) -> dict:
    """A config name of ``training/configs`` (``lite``, ``tiny``) or a YAML/JSON file path."""
    path = Path(config)
    if not path.is_file():
        path = CONFIG_DIR / f"{config}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"training config {config!r} not found (known: {known}, or give a file)")
    return yaml.safe_load(path.read_text())


def max_skip_at(cfg: dict, it: int) -> int:
    """Max-skip curriculum (STCN): ``skip_values[i]`` while it/iterations < skip_fractions[i]."""
    return cfg["skip_values"][bisect.bisect_right(cfg["skip_fractions"], it / cfg["iterations"])]


def freeze(net, frozen_blocks: int):
    """Freeze every BatchNorm (statistics and affine) and the backbone stem + first blocks."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
    trunk = net.key_encoder.trunk
    if hasattr(trunk, "blocks"):
        for mod in [trunk.stem, *trunk.blocks[:frozen_blocks]]:
            for p in mod.parameters():
                p.requires_grad_(False)


def lr_factor(cfg: dict, it: int) -> float:
    """Step decay: ×0.1 from iteration lr_decay_at·iterations on (STCN)."""
    return 0.1 if it >= int(cfg["iterations"] * cfg["lr_decay_at"]) else 1.0


def make_optimizer(net, cfg):
    backbone = [p for p in net.key_encoder.parameters() if p.requires_grad]
    ids = {id(p) for p in net.key_encoder.parameters()}
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in ids]
    return torch.optim.Adam([{"params": rest, "lr": cfg["lr"]},
                             {"params": backbone, "lr": cfg["backbone_lr"]}])


def train(cfg: dict, data: list[tuple[str, str]], out: Path, threads: int | None = None,
          progress: bool = True) -> Path:
    """Train per ``cfg`` on the (root, split) pairs of ``data``; return the last checkpoint path."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg["seed"])
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.safetensors"
    start = 0
    if last.exists():
        net, meta = load_checkpoint(last)
        start = meta["state"]["iteration"]
        log.info("resuming %s at iteration %d", last, start)
    else:
        net = build_network(cfg["network"], pretrained=True)
    freeze(net, cfg["frozen_blocks"])
    opt = make_optimizer(net, cfg)
    optim_path = out / "last.optim.pt"
    if start and optim_path.exists():
        opt.load_state_dict(torch.load(optim_path, weights_only=True))

    seqs = [s for root, split in data for s in load_sequences(root, split)]
    ds = ClipDataset(seqs, crop=cfg["crop"], num_frames=cfg["num_frames"],
                     mean=net.config["mean"], std=net.config["std"],
                     length=cfg["iterations"] * cfg["batch_size"], seed=cfg["seed"])
    bs = cfg["batch_size"]
    boot = cfg["bootstrap"]
    history = []
    hist_path = out / "history.jsonl"
    net.train()
    freeze(net, cfg["frozen_blocks"])  # BN back to eval after .train()
    bar = tqdm(range(start, cfg["iterations"]), initial=start, total=cfg["iterations"],
               desc="vos-train", disable=not progress, dynamic_ncols=True)
    t0 = time.time()
    for it in bar:
        ds.max_skip = max_skip_at(cfg, it)
        batch = [ds[it * bs + j] for j in range(bs)]
        frames = torch.from_numpy(np.stack([b["frames"] for b in batch]))
        masks = torch.from_numpy(np.stack([b["masks"] for b in batch]))
        others = torch.from_numpy(np.stack([b["others"] for b in batch]))
        logits = net.segment_clip(frames, masks[:, 0], others[:, 0])
        frac = bootstrap_fraction(it, int(boot["warm_start"] * cfg["iterations"]),
                                  int(boot["warm_end"] * cfg["iterations"]), boot["top_p"])
        loss = bootstrapped_bce(logits.flatten(0, 1), masks[:, 1:].flatten(0, 1), frac)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group, base in zip(opt.param_groups, (cfg["lr"], cfg["backbone_lr"])):
            group["lr"] = base * lr_factor(cfg, it)
        opt.step()
        with torch.no_grad():
            pred = logits > 0
            gt = masks[:, 1:] > 0.5
            iou = ((pred & gt).sum((2, 3, 4)).float() / (pred | gt).sum((2, 3, 4)).clamp(min=1)).mean()
        history.append({"iteration": it + 1, "loss": loss.item(), "iou": float(iou),
                        "max_skip": ds.max_skip, "bootstrap": frac, "seconds": time.time() - t0})
        bar.set_postfix(loss=f"{loss.item():.3f}", iou=f"{float(iou):.2f}", skip=ds.max_skip)
        if (it + 1) % cfg["checkpoint_every"] == 0 or it + 1 == cfg["iterations"]:
            save_checkpoint(last, net, {"iteration": it + 1, "train_config": cfg})
            torch.save(opt.state_dict(), optim_path)
            with hist_path.open("a") as fh:
                fh.writelines(json.dumps(h) + "\n" for h in history)
            history.clear()
    return last
