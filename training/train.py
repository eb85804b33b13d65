"""STCN training loop (MiVOS/STCN recipe, scaled to small machines), with the method heads.

Per iteration: a batch of T-frame clips (3 for STCN main training, 5 with SAM as RDE-VOS
trains); frame 0 with its ground-truth mask is memory, every later frame is segmented and
written with its own prediction; loss = bootstrapped BCE (:mod:`training.losses`) plus the
heads' terms (:func:`training.objectives.clip_losses`: QAM MSE, L_UG, L_MC). Adam with three
learning rates (method heads, the rest, the trainable part of the ImageNet backbone), frozen
BatchNorm, max-skip curriculum. ``init`` starts from an earlier checkpoint (new heads start
fresh); prior enhancement runs on a ``prior_prob`` fraction of the batches so the network
keeps working with and without it. ``device`` (default: cuda when available, else cpu) picks
where it trains; ``amp`` runs the forward under bfloat16 autocast (mixed precision, no loss
scaling needed with bfloat16's float32 exponent range): default on for CUDA, off for the CPU
(where ``amp: true`` also works, slower than float32 on most CPUs, for checking the path).
Checkpoints ``last.safetensors``/``last.json`` (+ ``last.optim.pt``) every
``checkpoint_every`` iterations; a run restarted on the same ``out`` folder resumes
(:mod:`training.run_folder`: the recipe must be the saved one). ``time_limit`` (seconds of
wall time from the call) stops early with a checkpoint, so that fixed-time runs (a GPU lent
for N minutes) chain through one run folder. ``objects`` > 1 trains multi-object clips
(:mod:`training.synthesis`); ``workers`` > 0 builds batches in DataLoader processes.
``zoom`` ([lo, hi], crop px per source px; default :data:`training.augment.DEFAULT_ZOOM`) is
the clip zoom range: the object scale training sees (``lite480.yaml`` moves it to the scale an
sdk at 480 px internal resolution sees; training/README.md "Stage 1b" has what that gave).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from .augment import DEFAULT_ZOOM, zoom_range
from .checkpoint import load_checkpoint, load_weights_into, save_checkpoint
from .datasets import ClipDataset, load_sequences
from .distributed import barrier, clip_loss_module, mean_over_ranks, setup, teardown
from .heads import METHOD_HEADS
from .loader import SkipSchedule, iterate_batches
from .losses import bootstrap_fraction
from .networks import build_network
from .run_folder import ResumeError, recipe_differences, resolve_init, saved_config
from .static import StaticPseudoVideoDataset
from .synthesis import Synthesis

log = logging.getLogger("vosedge.train")
CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A training config (or command-line override) that cannot run here."""


def load_config(config: str) -> dict:
    """A config name of ``training/configs`` (``lite``, ``tiny``) or a YAML/JSON file path."""
    path = Path(config)
    if not path.is_file():
        path = CONFIG_DIR / f"{config}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"training config {config!r} not found (known: {known}, or give a file)")
    return yaml.safe_load(path.read_text())


def freeze(net, frozen_blocks: int, trainable: list[str] | None = None):
    """Freeze every BatchNorm (statistics and affine) and the backbone stem + first blocks;
    with ``trainable`` (top-level module names, e.g. ``["sam_key", "sam_value"]``) everything
    else too."""
    if trainable:
        unknown = [name for name in trainable if getattr(net, name, None) is None]
        if unknown:
            raise ValueError(f"config trainable names module(s) this network lacks: {unknown}")
        keep = {id(p) for name in trainable for p in getattr(net, name).parameters()}
        for p in net.parameters():
            p.requires_grad_(id(p) in keep)
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


HEAD_MODULES = ("prior_enhance", "qam", "sam_key", "sam_value")


def base_lrs(cfg: dict) -> tuple[float, float, float]:
    """(rest, backbone, heads) learning rates; ``heads_lr`` defaults to ``lr``."""
    return cfg["lr"], cfg["backbone_lr"], cfg.get("heads_lr", cfg["lr"])


def make_optimizer(net, cfg):
    """Adam over three groups: the rest, the trainable key-encoder backbone, the method heads."""
    backbone = [p for p in net.key_encoder.parameters() if p.requires_grad]
    heads = [p for name in HEAD_MODULES if getattr(net, name) is not None
             for p in getattr(net, name).parameters() if p.requires_grad]
    taken = {id(p) for p in net.key_encoder.parameters()} | {id(p) for p in heads}
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in taken]
    lr, backbone_lr, heads_lr = base_lrs(cfg)
    return torch.optim.Adam([{"params": rest, "lr": lr}, {"params": backbone, "lr": backbone_lr},
                             {"params": heads, "lr": heads_lr}])


def network_config(cfg: dict, method: str | None = None):
    """The config's ``network`` (a name or a dict) with the heads ``method`` needs
    (:data:`training.heads.METHOD_HEADS`; ``"all"`` = every head), if given."""
    net_cfg = cfg["network"]
    if method is None:
        return net_cfg
    if method not in METHOD_HEADS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHOD_HEADS)}")
    net_cfg = {"name": net_cfg} if isinstance(net_cfg, str) else dict(net_cfg)
    net_cfg["heads"] = list(METHOD_HEADS[method])
    return net_cfg


def train(cfg: dict, data: list[tuple[str, str]], out: Path, threads: int | None = None,
          progress: bool = True, started: float | None = None) -> Path:
    """Train per ``cfg`` on the (root, split) pairs of ``data``; return the last checkpoint path.

    ``cfg["time_limit"]`` counts seconds of wall time from ``started`` (a ``time.time()``;
    default: this call), e.g. the start of the vos-train process.

    Raises ConfigError (before anything is written) for options that cannot run here — no
    CUDA for ``device: cuda``, a bad ``dataset``/``objects``/``synthesis``/``zoom``/``time_limit``/
    ``workers``, or an ``out`` folder whose run was started with another recipe.
    """
    began = time.time() if started is None else started
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
                           "use device cpu (vos-train --device cpu)")
    kind = cfg.get("dataset", "clips")
    if kind not in ("clips", "static"):
        raise ConfigError(f"config dataset must be 'clips' or 'static', got {kind!r}")
    try:
        synthesis = Synthesis.from_config(cfg)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config objects/synthesis: {e}") from None
    if kind == "static":                     # still images: nothing is pasted
        if synthesis.objects > 1:
            raise ConfigError("objects > 1 (multi-object synthesis) needs dataset: clips, not static")
        if synthesis.distractor_prob > 0:
            raise ConfigError("synthesis.distractor_prob > 0 (pasted distractors) needs dataset: clips, not static")
    time_limit = cfg.get("time_limit")
    if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, (int, float))
                                   or time_limit <= 0):
        raise ConfigError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    try:
        zoom = zoom_range(cfg.get("zoom", DEFAULT_ZOOM))
    except ValueError as e:
        raise ConfigError(f"config {e}") from None
    if kind == "static" and "zoom" in cfg:
        raise ConfigError("zoom is the clip zoom of dataset: clips; static pseudo-videos take theirs from "
                          "the config's static: {zoom: [lo, hi]}")
    rank, world_size, device = setup(device)      # torchrun: one process per device (training/distributed.py)
    if cfg["batch_size"] % world_size:
        raise ConfigError(f"batch_size {cfg['batch_size']} must be divisible by the {world_size} processes")
    workers = cfg.get("workers", 0)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers must be an integer ≥ 0, got {workers!r}")
    cfg = {**cfg, "data": [{"root": str(root), "split": split} for root, split in data]}
    last = out / "last.safetensors"
    if last.exists():
        try:
            differ = recipe_differences(cfg, saved_config(out))
        except ResumeError as e:
            raise ConfigError(str(e)) from None
        if differ:
            raise ConfigError(f"{out} holds a run started with another recipe ({', '.join(differ)} differ); "
                              f"resume it with vos-train --resume {out}, or train into a new --out")
    torch.manual_seed(cfg["seed"])
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    start = 0
    if last.exists():
        net, meta = load_checkpoint(last)
        start = meta["state"]["iteration"]
        log.info("resuming %s at iteration %d", last, start)
    else:
        net = build_network(cfg["network"], pretrained=True)
        if cfg.get("init"):
            load_weights_into(net, resolve_init(cfg["init"]), fresh=cfg.get("init_fresh", ()))
            log.info("initialised from %s (new heads: %s)", cfg["init"], ", ".join(net.heads) or "none")
    net.to(device)
    amp = bool(cfg.get("amp", device.type == "cuda"))
    log.info("training on %s%s", device, " with bfloat16 autocast" if amp else "")
    freeze(net, cfg["frozen_blocks"], cfg.get("trainable"))
    opt = make_optimizer(net, cfg)
    optim_path = out / "last.optim.pt"
    if start and optim_path.exists():
        opt.load_state_dict(torch.load(optim_path, weights_only=True, map_location=device))

    seqs = [] if cfg.get("datasets") else [s for root, split in data for s in load_sequences(root, split)]
    common = dict(crop=cfg["crop"], num_frames=cfg["num_frames"], mean=net.config["mean"], std=net.config["std"],
                  length=cfg["iterations"] * cfg["batch_size"], seed=cfg["seed"])
    schedule = SkipSchedule(cfg, cfg["batch_size"])
    if cfg.get("datasets"):       # issue 28: readers streamed from disk, mixed by weight (training/data)
        from .data.config import build_datasets

        try:
            ds = build_datasets(cfg["datasets"], kind, common, zoom, synthesis, schedule, cfg.get("static", {}))
        except ValueError as e:
            raise ConfigError(f"config {e}") from None
    else:
        ds = (StaticPseudoVideoDataset(seqs, **common, **cfg.get("static", {})) if kind == "static"
              else ClipDataset(seqs, **common, scale=zoom, synthesis=synthesis, skip_schedule=schedule))
    bs = cfg["batch_size"]
    boot = cfg["bootstrap"]
    history = []
    hist_path = out / "history.jsonl"
    net.train()
    freeze(net, cfg["frozen_blocks"], cfg.get("trainable"))  # BN back to eval after .train()
    loss_module = clip_loss_module(net, world_size, device)  # DistributedDataParallel under torchrun
    bar = tqdm(range(start, cfg["iterations"]), initial=start, total=cfg["iterations"],
               desc="vos-train", disable=not progress or rank != 0, dynamic_ncols=True)
    batches = iterate_batches(ds, bs, start, cfg["iterations"], workers, pin_memory=device.type == "cuda",
                              rank=rank, world=world_size)
    t0 = time.time()
    prior_prob = cfg.get("prior_prob", 0.5) if "prior" in net.heads else 0.0
    step_began = time.time()
    for it, batch in zip(bar, batches):
        data_wait = time.time() - step_began       # seconds this step waited for its batch
        frames, masks, others = (batch[k].to(device, non_blocking=True) for k in ("frames", "masks", "others"))
        valid = batch["valid"].to(device) if "valid" in batch else None
        frac = bootstrap_fraction(it, int(boot["warm_start"] * cfg["iterations"]),
                                  int(boot["warm_end"] * cfg["iterations"]), boot["top_p"])
        gen = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + it)
        use_prior = bool(torch.rand(1, generator=gen) < prior_prob)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            losses = loss_module(frames, masks, others, frac, use_prior=use_prior, generator=gen,
                                 norm_weight=cfg.get("rde_norm_weight", 0.0), valid=valid)
        loss = losses["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group, base in zip(opt.param_groups, base_lrs(cfg)):
            group["lr"] = base * lr_factor(cfg, it)
        opt.step()
        skip = schedule.at_iteration(it)
        objects = float(valid.sum(1).mean()) if valid is not None else float(masks.shape[2])
        record = {"iteration": it + 1, **mean_over_ranks({k: float(v.detach()) for k, v in losses.items()},
                                                         world_size),
                  "max_skip": skip, "objects": objects, "bootstrap": frac, "prior": use_prior,
                  "seconds": time.time() - t0}
        step = time.time() - step_began
        record.update(samples_per_s_rank=len(frames) / step, data_wait_share=data_wait / step, world=world_size)
        if device.type == "cuda":
            record["gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", iou=f"{record['iou']:.2f}", skip=skip,
                        sps=f"{record['samples_per_s_rank']:.1f}", wait=f"{record['data_wait_share']:.0%}")
        stop = time_limit is not None and time.time() - began >= time_limit
        if world_size > 1:             # every rank stops at the same iteration
            stop = bool(mean_over_ranks({"stop": float(stop)}, world_size)["stop"] > 0)
        if rank == 0 and ((it + 1) % cfg["checkpoint_every"] == 0 or it + 1 == cfg["iterations"] or stop):
            save_checkpoint(last, net, {"iteration": it + 1, "train_config": cfg})
            torch.save(opt.state_dict(), optim_path)
            with hist_path.open("a") as fh:
                fh.writelines(json.dumps(h) + "\n" for h in history)
            history.clear()
            if cfg.get("val_every") and ((it + 1) % cfg["val_every"] == 0 or it + 1 == cfg["iterations"]):
                validate(net, cfg, out, it + 1)
            report_curves(out)
        if stop:
            log.info("time limit %.0f s reached at iteration %d of %d: checkpoint written, the same command "
                     "(or vos-train --resume %s) continues", time_limit, it + 1, cfg["iterations"], out)
            break
        step_began = time.time()
    batches.close()                 # DataLoader workers end here, also after a time-limit stop
    bar.close()
    barrier(world_size)
    teardown(world_size)
    if cfg.get("publish") and rank == 0:      # the stage's result as fp16 weights (e.g. the bundled model)
        _, meta = load_checkpoint(last)
        save_checkpoint(cfg["publish"], net, meta["state"], half=True)
        log.info("published fp16 weights to %s", cfg["publish"])
    return last


def validate(net, cfg: dict, out: Path, iteration: int) -> dict:
    """Held-in J&F of ``net`` per ``cfg["val"]`` (:func:`training.validate.heldin_jf`),
    appended to ``<out>/val.jsonl``."""
    from .validate import heldin_jf

    result = heldin_jf(net, **cfg.get("val", {}))
    record = {"iteration": iteration, **{k: result[k] for k in ("jf", "j", "f", "frames", "seconds")}}
    with (out / "val.jsonl").open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    log.info("iteration %d: held-in J&F %.1f (%d frames, %.0f s)", iteration, result["jf"], result["frames"],
             result["seconds"])
    return record


def report_curves(out: Path) -> None:
    """Redraw ``<out>/loss.png`` from history.jsonl (+ val.jsonl); skipped without matplotlib."""
    try:
        from .plots import plot_history

        plot_history(out / "history.jsonl", out / "loss.png", out / "val.jsonl")
    except ImportError as exc:
        log.warning("loss curves not drawn (%s)", exc)
