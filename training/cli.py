"""``vos-train``: train an STCN-family network on DAVIS-layout data."""
from __future__ import annotations

import logging
from pathlib import Path

import click

from sdk.extras import MissingExtraError, extra_imports, require_extra


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", default="lite", show_default=True,
              help="Training config: a name in training/configs (lite, tiny) or a YAML file.")
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
@click.option("--init", type=click.Path(exists=True, dir_okay=False),
              help="Start from this checkpoint's weights (heads it lacks start fresh). Default: the config's "
                   "`init`, else ImageNet.")
@click.option("--publish", type=click.Path(dir_okay=False), metavar="FILE",
              help="When the run ends, also write its weights as fp16 FILE (.safetensors + .json), e.g. "
                   "training/weights/lite.safetensors for the bundled model.")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
              help="Where to train: auto = cuda when torch sees a GPU, else cpu.")
@click.option("--amp/--no-amp", default=None,
              help="bfloat16 autocast (mixed precision). Default: on for cuda, off for cpu.")
def main(config, data, split, out, iterations, threads, method, init, publish, device, amp):
    """Train the key/value encoders, decoder and method heads on T-frame clips (STCN main
    training; RDE-VOS's 5-frame STM + SAM pattern training when the network has SAM).

    \b
    Examples:
      vos-train --config lite --out runs/lite                       # main training from ImageNet
      vos-train --config heads --out runs/heads                     # + QAM, PE, SAM from runs' lite model
      vos-train --config lite --method rde --init runs/lite/last.safetensors --out runs/rde
      vos-train --config tiny --data ../shared/data/davis2016-240p --out /tmp/tiny
      vos-train --config lite --device cuda --out runs/lite        # GPU, bfloat16 autocast
    Interrupt at any time; the same command resumes from <out>/last.safetensors.
    Needs the [train] extra (PyTorch); without it, exits with one line naming it.
    """
    try:
        require_extra("vos-train", "train", ("torch", "safetensors", "yaml"), what="PyTorch")
        with extra_imports("vos-train", "train", what="PyTorch"):
            from .train import ConfigError, load_config, network_config, train
    except MissingExtraError as exc:
        raise click.ClickException(str(exc)) from None

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = load_config(config)
    except FileNotFoundError as e:
        raise click.UsageError(str(e)) from e
    if iterations:
        cfg["iterations"] = iterations
    if init:
        cfg["init"] = init
    if publish:
        cfg["publish"] = publish
    if device != "auto":
        cfg["device"] = device
    if amp is not None:
        cfg["amp"] = amp
    if method:
        cfg["network"] = network_config(cfg, method)
        if "sam" in cfg["network"]["heads"]:
            cfg["num_frames"] = max(cfg["num_frames"], 5)   # RDE-VOS trains on 5-frame clips (Eq. 9)
    pairs = [(d, split) for d in data] or [(d["root"], d["split"]) for d in cfg.get("data", [])]
    if not pairs:
        raise click.UsageError("no training data: give --data ROOT")
    try:
        with extra_imports("vos-train", "train", what="PyTorch"):   # e.g. matplotlib for the loss curves
            last = train(cfg, pairs, Path(out), threads=threads)
    except (FileNotFoundError, ConfigError, MissingExtraError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"checkpoint: {last}")
