"""vos-bench's human-readable outputs: a markdown table for the README and matplotlib PNG
plots (fps, memory and J&F against video length, one line per method)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

PLOTS = ("fps_vs_length.png", "memory_vs_length.png", "jf_vs_length.png")
MIB = 2 ** 20


def _mib(n) -> str:
    return "–" if n is None else f"{n / MIB:.1f} MiB"


def _num(x, fmt: str, unit: str = "") -> str:
    return "–" if x is None else format(x, fmt) + unit


def _length(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:.2f}"


def measured(results: Sequence[dict]) -> list[dict]:
    """The results that hold measurements (not ``skipped``)."""
    return [r for r in results if "skipped" not in r]


def p50_change(results: Sequence[dict]) -> dict[int, float | None]:
    """Per result (by its index in ``results``): its p50 latency relative to the p50 of the
    same method's shortest video, in percent (0 for that one; None when that p50 is 0). The
    constant-cost check of a bounded policy: this stays near 0 however long the video."""
    longest_first = sorted(measured(results), key=lambda r: -r["length"])
    base = {r["method"]: r["latency_ms"]["p50"] for r in longest_first}      # the shortest is written last
    return {i: 100 * (r["latency_ms"]["p50"] / base[r["method"]] - 1) if base[r["method"]] > 0 else None
            for i, r in enumerate(results) if "skipped" not in r}


def markdown_table(results: Sequence[dict]) -> str:
    """GitHub markdown table of vos-bench results (the JSON's ``results``), one row per
    method and length in the given order; a skipped method gets one row saying why. "vs
    shortest" is :func:`p50_change`."""
    rows = ["| method | L | frames | fps | p50 latency | vs shortest | p90 | p99 | bank | peak RSS | J&F |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    change = p50_change(results)
    for i, r in enumerate(results):
        if "skipped" in r:
            reason = " ".join(str(r["skipped"]).split()).replace("|", "\\|")
            rows.append(f"| `{r['method']}` | – | – | skipped: {reason} | | | | | | | |")
            continue
        lat = r["latency_ms"]
        rows.append(f"| `{r['method']}` | {_length(r['length'])} | {r['frames']} | {r['fps']:.1f} | "
                    f"{lat['p50']:.1f} ms | {_num(change[i], '+.1f', ' %')} | {lat['p90']:.1f} ms | "
                    f"{lat['p99']:.1f} ms | "
                    f"{_mib(r['bank_bytes'])} | {_mib(r['peak_rss_bytes'])} | {_num(r['jf'], '.1f')} |")
    return "\n".join(rows) + "\n"


def plot(results: Sequence[dict], out: str | Path, title: str = "") -> list[Path]:
    """Write fps_vs_length.png, memory_vs_length.png (memory bank and peak RSS, MiB) and
    jf_vs_length.png into folder `out`: x = video length in forward+backward units, one line
    per method. Log x when the lengths span 10× or more; log y for the bank. → the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = measured(results)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lengths = [r["length"] for r in rows]
    log_x = bool(lengths) and min(lengths) > 0 and max(lengths) / min(lengths) >= 10

    def series(method, key):
        pts = sorted((r["length"], key(r)) for r in rows if r["method"] == method and key(r) is not None)
        return [p[0] for p in pts], [p[1] for p in pts]

    ticks = sorted(set(lengths))

    def finish(fig, ax, ylabel, name):
        for a in ax if isinstance(ax, (list, tuple)) else [ax]:
            a.set_xlabel("video length L (forward+backward units)")
            if log_x:
                a.set_xscale("log")
            if 0 < len(ticks) <= 12:
                a.set_xticks(ticks, [f"{t:g}" for t in ticks])
                a.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            a.grid(True, alpha=0.3)
            a.legend(fontsize=8)
        if not isinstance(ax, (list, tuple)):
            ax.set_ylabel(ylabel)
        return save_figure(fig, out / name, title)

    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        ax.plot(*series(m, lambda r: r["fps"]), marker="o", label=m)
    ax.set_ylim(bottom=0)
    paths.append(finish(fig, ax, "frames per second", PLOTS[0]))

    fig, (bank, rss) = plt.subplots(1, 2, figsize=(10, 4))
    for m in methods:
        bank.plot(*series(m, lambda r: r["bank_bytes"] / MIB), marker="o", label=m)
        rss.plot(*series(m, lambda r: None if r["peak_rss_bytes"] is None else r["peak_rss_bytes"] / MIB),
                 marker="o", label=m)
    if all(r["bank_bytes"] > 0 for r in rows):
        bank.set_yscale("log")
        bank.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    bank.set_ylabel("memory bank (MiB" + (", log)" if bank.get_yscale() == "log" else ")"))
    rss.set_ylabel("peak resident set of the run (MiB)")
    paths.append(finish(fig, [bank, rss], "", PLOTS[1]))

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        ax.plot(*series(m, lambda r: r["jf"]), marker="o", label=m)
    paths.append(finish(fig, ax, "J&F (DAVIS 2017 protocol, ×100)", PLOTS[2]))
    return paths


SOAK_PLOT = "soak.png"


def soak_table(results: Sequence[dict]) -> str:
    """Markdown table of a stream (``--stream-frames N``) benchmark: per method the frames, fps, p50
    latency over the first and last 10 % of the frames, the bank's bytes over every frame
    (min = max for constant memory), RSS growth after warm-up (``rss_growth_bytes``) and J&F."""
    header = ("| method | frames | fps | p50 first 10 % | p50 last 10 % | bank (every frame) | RSS at end | "
              "RSS growth after warm-up | J&F |")
    rows = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "skipped" in r:
            rows.append(f"| `{r['method']}` | – | skipped: {' '.join(str(r['skipped']).split())} | | | | | | |")
            continue
        lo, hi = r["bank_bytes_range"]
        bank = f"{lo:,} B" if lo == hi else f"{lo:,} – {hi:,} B"
        growth = r["rss_growth_bytes"]
        rss_end = r["samples"]["rss_bytes"][-1] if r["samples"]["rss_bytes"] else None
        rows.append(f"| `{r['method']}` | {r['frames']} | {r['fps']:.1f} | "
                    f"{r['windows']['first']['latency_p50_ms']:.2f} ms | {r['windows']['last']['latency_p50_ms']:.2f} ms | "
                    f"{bank} | {_mib(rss_end)} | {'–' if growth is None else f'{growth / 1024:+,.0f} KiB'} | "
                    f"{_num(r['jf'], '.1f')} |")
    return "\n".join(rows) + "\n"


def plot_soak(results: Sequence[dict], out: str | Path, title: str = "") -> Path:
    """Write soak.png into folder `out`: resident set, memory bank (MiB) and the p50 latency
    of each sampling block against the frame index, one line per method (the ``samples`` of
    each result). → its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig, (rss, bank, latency) = plt.subplots(1, 3, figsize=(14, 4))
    for r in measured(results):
        s = r["samples"]
        rss.plot(s["frame"], [None if v is None else v / MIB for v in s["rss_bytes"]], label=r["method"])
        bank.plot(s["frame"], [v / MIB for v in s["bank_bytes"]], label=r["method"])
        latency.plot(s["frame"], s["latency_p50_ms"], label=r["method"])
    for ax, label in ((rss, "resident set (MiB)"), (bank, "memory bank (MiB)"),
                      (latency, "p50 latency per sample block (ms)")):
        ax.set_xlabel("frame")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    latency.set_ylim(bottom=0)
    return save_figure(fig, out / SOAK_PLOT, title)


def save_figure(fig, path: Path, title: str) -> Path:
    """Give `fig` its `title`, lay it out, write it to `path` (PNG, 120 dpi) and close it → path."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
