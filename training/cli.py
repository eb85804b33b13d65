"""``vos-train``: train an STCN-family network on DAVIS-layout data."""
from __future__ import annotations

import logging
from pathlib import Path

import click


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
def main(config, data, split, out, iterations, threads):
    """Train the key/value encoders and decoder on 3-frame clips (STCN main training).

    \b
    Examples:
      vos-train --config lite --data ../shared/data/davis2016-240p --split train
      vos-train --config tiny --data ../shared/data/davis2016-240p --out /tmp/tiny
    Interrupt at any time; the same command resumes from <out>/last.safetensors.
    """
    from .train import load_config, train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = load_config(config)
    except FileNotFoundError as e:
        raise click.UsageError(str(e)) from e
    if iterations:
        cfg["iterations"] = iterations
    pairs = [(d, split) for d in data] or [(d["root"], d["split"]) for d in cfg.get("data", [])]
    if not pairs:
        raise click.UsageError("no training data: give --data ROOT")
    try:
        last = train(cfg, pairs, Path(out), threads=threads)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"checkpoint: {last}")
