"""``vos-train``: train an STCN-family network on DAVIS-layout data."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from sdk.extras import MissingExtraError, extra_imports, require_extra

# the named configs (training/configs/*.yaml), listed by --help
CONFIGS = ", ".join(sorted(p.stem for p in (Path(__file__).parent / "configs").glob("*.yaml")))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", default="lite", show_default=True,
              help=f"Training config: a name in training/configs ({CONFIGS}) or a YAML file.")
@click.option("--data", "data", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="DAVIS-layout root (repeatable). Default: the config's `data` list.")
@click.option("--split", default="train", show_default=True, help="Split file name in <root>/ImageSets/.")
@click.option("--out", type=click.Path(file_okay=False), default="runs/lite", show_default=True,
              help="Run folder: last.safetensors/.json checkpoints, history.jsonl. Re-running resumes.")
@click.option("--iterations", type=int, help="Override the config's iteration count.")
@click.option("--threads", type=int, help="torch CPU threads (default: torch's choice).")
@click.option("--method", type=click.Choice(["every_k", "first_latest", "lfu", "qdmn", "qpm", "rde", "all"]),
              help="Train the heads this memory method needs (qdmn/qpm: QAM + prior enhancement; rde: SAM "
                   "with L_UG and L_MC on 5-frame clips; all: every head). Default: the config's network.")
@click.option("--init", type=click.Path(exists=True),
              help="Start from this checkpoint's weights, or a run folder's last.safetensors (e.g. stage 0's "
                   "runs/static); heads it lacks start fresh. Default: the config's `init`, else ImageNet.")
@click.option("--objects", type=click.IntRange(1, 3),
              help="Objects trained jointly per clip (soft aggregation over them + background, STCN/XMem); "
                   "clips short of objects get objects pasted from other sequences and copies of their own "
                   "(training/synthesis.py). Default: the config's `objects` (1 = the bundled recipe).")
@click.option("--multi-prob", type=click.FloatRange(0, 1),
              help="With --objects ≥ 2: probability of a clip with 2..N objects (the rest keep one). "
                   "Default: the config's synthesis.multi_prob, else 0.5.")
@click.option("--duplicate-prob", type=click.FloatRange(0, 1),
              help="Probability that a pasted object is a copy of one already in the clip (a look-alike to "
                   "keep apart). Default: the config's synthesis.duplicate_prob, else 0.3.")
@click.option("--distractor-prob", type=click.FloatRange(0, 1),
              help="Probability that a clip also gets a pasted distractor: an object (a copy of a target "
                   "with --duplicate-prob) labelled background, so that look-alikes and unannotated objects "
                   "stay out of the mask; works with --objects 1 too. Experimental: at 0.5 it cost ~6 J&F "
                   "on DAVIS 2016 val (training/README.md). Default: the config's synthesis.distractor_prob, "
                   "else 0.")
@click.option("--batch-size", type=click.IntRange(1), help="Override the config's clips per batch.")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop after this much wall time (from the start, data loading included) with a "
                   "checkpoint; the same command, or --resume, continues.")
@click.option("--workers", type=click.IntRange(0),
              help="DataLoader worker processes building the clips (default 0: in the training process; "
                   "a GPU run wants several).")
@click.option("--resume", "resume", type=click.Path(exists=True, file_okay=False), metavar="RUN",
              help="Continue run folder RUN with its own saved config and data; only --iterations, "
                   "--time-limit, --threads, --device, --amp, --workers and --publish may be given with it.")
@click.option("--publish", type=click.Path(dir_okay=False), metavar="FILE",
              help="When the run ends, also write its weights as fp16 FILE (.safetensors + .json), e.g. "
                   "training/weights/lite.safetensors for the bundled model.")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
              help="Where to train: auto = cuda when torch sees a GPU, else cpu.")
@click.option("--amp/--no-amp", default=None,
              help="bfloat16 autocast (mixed precision). Default: on for cuda, off for cpu.")
def main(config, data, split, out, iterations, threads, method, init, objects, multi_prob, duplicate_prob,
         distractor_prob, batch_size, time_limit, workers, resume, publish, device, amp):
    """Train the key/value encoders, decoder and method heads on T-frame clips (STCN main
    training; RDE-VOS's 5-frame STM + SAM pattern training when the network has SAM).

    \b
    Examples:
      vos-train --config lite --out runs/lite                       # main training from ImageNet
      vos-train --config heads --out runs/heads                     # + QAM, PE, SAM from runs' lite model
      vos-train --config lite --method rde --init runs/lite/last.safetensors --out runs/rde
      vos-train --config tiny --data ../shared/data/davis2016-240p --out /tmp/tiny
      vos-train --config lite --device cuda --out runs/lite        # GPU, bfloat16 autocast
      vos-train --config static --out runs/static                   # stage 0: static pseudo-videos
      vos-train --config lite --objects 3 --init runs/static --out runs/lite3   # stage 1, multi-object
      vos-train --resume runs/lite3 --time-limit 3000               # 50 more minutes of that run
    Interrupt at any time; the same command resumes from <out>/last.safetensors.
    Needs the [train] extra (PyTorch); without it, exits with one line naming it.
    """
    started = time.time()           # --time-limit counts from here (torch's import included)
    try:
        require_extra("vos-train", "train", ("torch", "safetensors", "yaml"), what="PyTorch")
        with extra_imports("vos-train", "train", what="PyTorch"):
            from .train import ConfigError, load_config, network_config, train
    except MissingExtraError as exc:
        raise click.ClickException(str(exc)) from None

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ctx = click.get_current_context()
    if resume:
        from .run_folder import ResumeError, saved_config

        given = [name for name in ("config", "data", "split", "out", "method", "init", "objects", "multi_prob",
                                   "duplicate_prob", "distractor_prob", "batch_size")
                 if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"--resume takes the run's own config: drop "
                                   f"{', '.join('--' + g.replace('_', '-') for g in given)}")
        try:
            cfg = saved_config(resume)
        except ResumeError as e:
            raise click.UsageError(str(e)) from e
        out = resume
    else:
        try:
            cfg = load_config(config)
        except FileNotFoundError as e:
            raise click.UsageError(str(e)) from e
    overrides = {"iterations": iterations, "init": init, "publish": publish, "objects": objects,
                 "batch_size": batch_size, "time_limit": time_limit, "workers": workers,
                 "device": None if device == "auto" else device, "amp": amp}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    synthesis = {"multi_prob": multi_prob, "duplicate_prob": duplicate_prob, "distractor_prob": distractor_prob}
    if any(v is not None for v in synthesis.values()):
        cfg["synthesis"] = {**(cfg.get("synthesis") or {}), **{k: v for k, v in synthesis.items() if v is not None}}
    if method:
        cfg["network"] = network_config(cfg, method)
        if "sam" in cfg["network"]["heads"]:
            cfg["num_frames"] = max(cfg["num_frames"], 5)   # RDE-VOS trains on 5-frame clips (Eq. 9)
    pairs = [(d, split) for d in data] or [(d["root"], d["split"]) for d in cfg.get("data", [])]
    if not pairs and not cfg.get("datasets"):
        raise click.UsageError("no training data: give --data ROOT")
    try:
        with extra_imports("vos-train", "train", what="PyTorch"):   # e.g. matplotlib for the loss curves
            last = train(cfg, pairs, Path(out), threads=threads, started=started)
    except (FileNotFoundError, ConfigError, MissingExtraError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"checkpoint: {last}")


if __name__ == "__main__":      # torchrun --nproc-per-node N -m training.cli ...
    main()
