"""Training curves of a run folder: ``history.jsonl`` (+ held-in validation J&F) → PNG.

Uses matplotlib's object-oriented API on the Agg canvas (no pyplot, no global backend
switch), so it is safe to call from the training process and from headless machines.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path

import numpy as np

log = logging.getLogger("vosedge.plots")


def read_jsonl(path) -> list[dict]:
    """Records of a JSON-lines file, sorted by ``iteration``; the last record of a repeated
    iteration wins (a resumed run); blank and unparsable lines (a line cut by a kill) are
    skipped with a warning."""
    records: dict[int, dict] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            records[int(rec["iteration"])] = rec
        except (ValueError, KeyError, TypeError):
            log.warning("%s:%d: skipped unparsable record", path, n)
    return [records[k] for k in sorted(records)]


def moving_average(values, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start); NaNs are skipped."""
    x = np.asarray(values, float)
    ok = np.isfinite(x)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(ok)])
    hi = np.arange(1, len(x) + 1)
    lo = np.maximum(hi - window, 0)
    count = ccount[hi] - ccount[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (csum[hi] - csum[lo]) / count, np.nan)


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, values) of the records holding a numeric ``key``."""
    pts = [(r["iteration"], float(r[key])) for r in records
           if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    if not pts:
        return np.zeros(0), np.zeros(0)
    it, val = zip(*pts)
    return np.asarray(it, float), np.asarray(val, float)


def loss_keys(records: list[dict]) -> list[str]:
    """``"loss"`` first, then every other numeric key starting with ``"loss"`` (per-term
    losses such as ``loss_seg``, ``loss_qam``), in order of first appearance."""
    keys: list[str] = []
    for r in records:
        for k, v in r.items():
            if k.startswith("loss") and k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    return sorted(keys, key=lambda k: k != "loss")


def plot_history(history_jsonl_path, out_png, val_jsonl=None, window: int | None = None,
                 title: str | None = None) -> Path:
    """Write the training curves of ``history_jsonl_path`` to ``out_png``; returns its path.

    Panels: losses (raw total light, moving averages of the total and of every other
    ``loss*`` key), training IoU (raw + moving average) with the held-in validation J&F of
    ``val_jsonl`` (records ``{"iteration", "jf", ...}``, right axis, 0–100; a file not written
    yet = no points) when given, and
    the schedule (``max_skip``, ``bootstrap``) when the records hold it. ``window``: moving
    average length in iterations (default len/25, 1..200). Raises ValueError for a history
    without records; ImportError (naming the package) without matplotlib.
    """
    records = read_jsonl(history_jsonl_path)
    if not records:
        raise ValueError(f"{history_jsonl_path}: no training records")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:   # not in the train extra yet
        raise ImportError("plot_history needs matplotlib: pip install matplotlib") from e
    val = read_jsonl(val_jsonl) if val_jsonl is not None and Path(val_jsonl).is_file() else []
    if window is None:
        window = min(200, max(1, len(records) // 25))
    schedule = [k for k in ("max_skip", "bootstrap") if _series(records, k)[0].size]

    rows = 2 + bool(schedule)
    fig = Figure(figsize=(10, 3.2 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle(title or str(Path(history_jsonl_path).parent.name or history_jsonl_path))

    ax = axes[0]
    tops = []
    colours = (f"C{i}" for i in itertools.count())
    for key in loss_keys(records):
        it, v = _series(records, key)
        colour = next(colours)
        if key == "loss":
            ax.plot(it, v, color=colour, alpha=0.25, lw=0.6, label="loss (raw)")
        ax.plot(it, moving_average(v, window), color=colour, lw=1.6 if key == "loss" else 1.2,
                label=f"{key} (mean of {window})")
        finite = v[np.isfinite(v)]
        if finite.size:
            tops.append(np.percentile(finite, 99.5))
    if tops and math.isfinite(max(tops)) and max(tops) > 0:
        ax.set_ylim(0, 1.05 * max(tops))
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)

    ax = axes[1]
    it, v = _series(records, "iou")
    if it.size:
        ax.plot(it, v, color="C0", alpha=0.25, lw=0.6, label="train IoU (raw)")
        ax.plot(it, moving_average(v, window), color="C0", lw=1.6, label=f"train IoU (mean of {window})")
    ax.set_ylim(0, 1)
    ax.set_ylabel("train IoU (frames 1..T−1)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    vit, jf = _series(val, "jf")
    if vit.size:
        ax2 = ax.twinx()
        ax2.plot(vit, jf, "o-", color="C3", ms=4, lw=1.2, label="held-in val J&F")
        best = int(np.nanargmax(jf))
        ax2.annotate(f"{jf[best]:.1f}", (vit[best], jf[best]), textcoords="offset points", xytext=(-4, 6),
                     ha="right", fontsize=8, color="C3")
        ax2.set_ylim(0, 100)
        ax2.set_ylabel("J&F (×100)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="lower right", fontsize=8)

    if schedule:
        ax = axes[2]
        if "max_skip" in schedule:
            ax.step(*_series(records, "max_skip"), where="post", color="C4", label="max skip")
            ax.set_ylabel("max skip")
        if "bootstrap" in schedule:
            ax3 = ax.twinx() if "max_skip" in schedule else ax
            ax3.plot(*_series(records, "bootstrap"), color="C5", label="bootstrap fraction")
            ax3.set_ylim(0, 1.05)
            ax3.set_ylabel("bootstrap fraction")
            if ax3 is not ax:
                h, lab = ax.get_legend_handles_labels()
                h3, l3 = ax3.get_legend_handles_labels()
                ax.legend(h + h3, lab + l3, loc="upper right", fontsize=8)
            else:
                ax.legend(loc="upper right", fontsize=8)
        else:
            ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("iteration")

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out

