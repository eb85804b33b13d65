"""A run folder that each later run resumes: what it holds and what a resume may change.

``<out>/last.safetensors`` + ``last.json`` (network config; ``state``: ``iteration`` and the
``train_config`` the run was started with, including its ``data`` list) + ``last.optim.pt``
(Adam state). ``vos-train --out RUN …`` with the same options resumes it, ``vos-train
--resume RUN`` resumes it with nothing but its own config; either way only the keys of
:data:`RESUMABLE` may differ from the saved config (e.g. a longer ``iterations``, a wall-time
budget, another device) — anything else would silently mix two recipes in one run.
"""
from __future__ import annotations

import json
from pathlib import Path

from .augment import DEFAULT_ZOOM

# may change between the runs of one folder (the rest is the recipe)
RESUMABLE = frozenset({"iterations", "time_limit", "device", "amp", "publish", "init", "init_fresh",
                       "checkpoint_every", "val_every", "val", "workers"})
# of the machine and session, not of the run: a resume gives them anew (else its defaults)
SESSION = frozenset({"device", "amp", "workers", "time_limit", "publish"})
DEFAULTS = {"objects": 1, "synthesis": {}, "dataset": "clips", "zoom": list(DEFAULT_ZOOM)}   # keys older run folders lack


class ResumeError(ValueError):
    """A run folder that cannot be resumed as asked."""


def saved_config(run) -> dict:
    """The training config a run folder was started with (``last.json`` → state.train_config),
    without the :data:`SESSION` keys (device, amp, workers, time limit, publish path: a
    resume on another machine picks its own). Raises ResumeError when the folder holds no
    checkpoint or it has no training config."""
    js = Path(run) / "last.json"
    if not js.is_file():
        raise ResumeError(f"{run} holds no run to resume (no last.json); start it with --config … --out {run}")
    cfg = json.loads(js.read_text()).get("state", {}).get("train_config")
    if not cfg:
        raise ResumeError(f"{js} has no training config (state.train_config)")
    return {k: v for k, v in cfg.items() if k not in SESSION}


def recipe_differences(cfg: dict, saved: dict) -> list[str]:
    """Keys outside :data:`RESUMABLE` whose values differ between ``cfg`` and ``saved`` (data
    roots compared as resolved paths; ``data`` is skipped when ``saved`` predates it)."""
    def recipe(c):
        c = json.loads(json.dumps(c))                          # as saved: tuples → lists
        r = {**DEFAULTS, **{k: v for k, v in c.items() if k not in RESUMABLE}}
        r["data"] = sorted((str(Path(d["root"]).resolve()), d["split"]) for d in r.get("data") or [])
        return r

    a, b = recipe(cfg), recipe(saved)
    if "data" not in saved:
        a.pop("data"), b.pop("data")
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def resolve_init(path) -> Path:
    """``init`` may name a checkpoint or a run folder (→ its ``last.safetensors``)."""
    p = Path(path)
    return p / "last.safetensors" if p.is_dir() else p
