"""vos-bench: speed, latency, memory and J&F of memory policies on synthetic long videos.

A video of length L plays a DAVIS sequence forward then backward L times (RDE-VOS §4.3:
every frame keeps its ground truth and neighbouring frames stay smooth); ``--frames N``
plays that same order for exactly N frames (a soak run). Each (method, length) run happens
in a fresh process by default, so its peak resident set is its own. The JSON it writes is
documented in docs/bench-json.md.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import multiprocessing
import os
import platform
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import islice
from pathlib import Path

import click
import cv2
import numpy as np
from tqdm import tqdm

import sdk
from benchmarks.common import machine_info, prompts, read_ground_truth
from benchmarks.metrics import evaluate_sequence, summarize
from benchmarks.report import markdown_table, measured, plot
from sdk import cli
from sdk.davis import davis_sequence_dirs
from sdk.errors import ManifestError, VosEdgeError
from sdk.io import iter_frames, list_frames
from sdk.manifest import DEFAULT_MODEL_DIR, MANIFEST_FILE, resolve_model, sha256_file

FORMAT, VERSION = "vosedge-bench", 1
WARMUP_FRAMES = 5
WINDOW = 0.1            # first/last fraction of the measured frames compared in "windows"
PROGRESS_EVERY_S = 0.25
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C

EXAMPLES = """\b
Examples:
  vos-bench --data ../shared/data/davis2016-480p --sequence blackswan \\
            --methods every_k,first_latest,lfu --lengths 1,10,20 --resolution 240p \\
            --json runs/bench.json --plots runs/plots --table runs/bench.md
  vos-bench --data ../shared/data/davis2016-240p --sequence cows --methods lfu \\
            --frames 10000 --json runs/soak.json                  # constant-memory soak
  vos-bench --data ../shared/data/davis2016-240p --sequence cows --lengths 1 \\
            --precision fp16 --providers cuda,cpu --json runs/fp16.json

\b
L = 1 is the sequence forward then backward (2T-2 frames for T frames), L = 10 that ten
times. By default (--balance) shorter videos are repeated until every length is timed over
about as many frames as the longest (L = 1 twenty times next to L = 20 once), and
(--lockstep) a method's lengths run side by side, one process each, taking turns one frame
at a time, so the comparison across lengths does not hang on a noisy machine's drift. Each
video first steps --warmup frames and resets, then times every frame of the video: latency
= one Segmenter.step (time.perf_counter), fps = frames / their summed latency, stage times
= Segmenter.timings means. Bank bytes: the memory bank's arrays at the end (and after frame
0). Peak RSS: the process' high-water resident set over the timed frames (Linux VmHWM,
reset at their start); with the default --isolate each length has its own process. J&F:
DAVIS 2017 protocol over the whole synthetic video. The reference (--reference) runs the
same weights' every_k loop through PyTorch on the first length, frame by frame alternating
with the sdk: overhead_ratio = sdk ms/frame over torch ms/frame. Methods the model cannot
run (e.g. rde without SAM graphs) are recorded as skipped. Ctrl-C stops the benchmark and
leaves a valid JSON of the runs done ("interrupted": true, exit code 130); the JSON is also
rewritten after every run. Full schema: docs/bench-json.md.
"""


# --- video orders -------------------------------------------------------------------------------


def ping_pong(frames: int, length: int) -> list[int]:
    """Frame order of a synthetic long video: (0..T−1, T−2..1) repeated `length` times."""
    unit = list(range(frames)) + list(range(frames - 2, 0, -1))
    return unit * length


def stream_order(frames: int, count: int) -> list[int]:
    """The ping-pong order of `frames` frames cut or extended to exactly `count` frames."""
    unit = ping_pong(frames, 1)
    return (unit * -(-count // len(unit)))[:count]


def make_order(frames: int, order: tuple[str, int]) -> list[int]:
    """("length", L) → :func:`ping_pong`; ("frames", N) → :func:`stream_order`."""
    kind, value = order
    return ping_pong(frames, value) if kind == "length" else stream_order(frames, value)


def schedule(methods: Sequence[str], point_frames: Sequence[int], repeats: int,
             balance: bool) -> list[tuple[str, int]]:
    """The runs of a benchmark, in order: (method, point index) pairs, method-major (one
    method's lengths back to back, so lengths are compared under the same machine conditions).

    ``balance``: within a method, point p runs ``repeats × ⌈max(point_frames) / point_frames[p]⌉``
    times, so every length is timed over about as many frames as the longest, and the runs are
    ordered by their centres (i + ½) / count: each length's runs are spread symmetrically
    around the middle of the method's block, so the machine's drift (a 2-core VM's speed
    wanders by 5–10 % over tens of seconds) weighs on every length alike and a linear drift
    cancels. Without it each point runs ``repeats`` times, alternate repeats in reverse order.
    """
    if not balance:
        block = [(m, p) for m in methods for p in range(len(point_frames))]
        return [run for r in range(repeats) for run in (block if r % 2 == 0 else block[::-1])]
    counts = run_counts(point_frames, repeats, balance)
    centres = sorted(((i + 0.5) / c, -point_frames[p], p) for p, c in enumerate(counts) for i in range(c))
    return [(m, p) for m in methods for _, _, p in centres]


def run_counts(point_frames: Sequence[int], repeats: int, balance: bool) -> list[int]:
    """Videos played per point: ``repeats × ⌈max(point_frames) / point_frames[p]⌉`` with
    ``balance`` (every length timed over about as many frames as the longest), else ``repeats``."""
    longest = max(point_frames)
    return [repeats * (-(-longest // f) if balance else 1) for f in point_frames]


def unit_frames(frames: int) -> int:
    """Frames of one forward+backward unit of a T-frame sequence."""
    return len(ping_pong(frames, 1))


# --- the sequence --------------------------------------------------------------------------------


def load_sequence(data: Path, sequence: str, max_frames: int | None = None, size: tuple[int, int] | None = None):
    """→ (frames: RGB uint8 [H,W,3] list, ground truth: uint8 [H,W] list, prompt masks: one per
    frame, None where no object first appears) of a DAVIS-layout sequence, its first
    `max_frames` frames only if set, resized to `size` = (W, H) if set (frames: area/bilinear,
    masks: nearest). Raises VideoReadError / FileNotFoundError naming what is missing."""
    frames_dir, annotations = davis_sequence_dirs(data, sequence)
    names, frames = [], []
    for name, rgb in islice(iter_frames(frames_dir), max_frames):
        names.append(name)
        frames.append(rgb)
    gt = read_ground_truth(annotations, names)
    if size is not None:
        w, h = size
        shrink = w * h < frames[0].shape[0] * frames[0].shape[1]
        frames = [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
                  for f in frames]
        gt = [cv2.resize(g, (w, h), interpolation=cv2.INTER_NEAREST) for g in gt]
    return frames, gt, prompts(gt)


def check_sequence(data: Path, sequence: str, max_frames: int | None = None) -> tuple[int, tuple[int, int]]:
    """Cheap checks in the parent before any run: frames and annotations exist → (number of
    frames used, (W, H) of the first frame)."""
    frames_dir, annotations = davis_sequence_dirs(data, sequence)
    names = list_frames(frames_dir)[:max_frames]
    for name in names:
        if not (annotations / f"{name}.png").is_file():
            raise FileNotFoundError(f"no ground-truth mask {annotations / f'{name}.png'}")
    first = next(iter_frames(frames_dir))[1]
    return len(names), (first.shape[1], first.shape[0])


def played_prompts(sequence_prompts: Sequence, order: Sequence[int]) -> list:
    """Prompt of each played frame: a frame's mask where it is played for the first time
    (objects first appear during the first forward pass, as in the sequence), else None."""
    seen, out = set(), []
    for i in order:
        out.append(None if i in seen else sequence_prompts[i])
        seen.add(i)
    return out


# --- process measurements -----------------------------------------------------------------------


def _proc_status_bytes(field: str) -> int | None:
    """A kB field of /proc/self/status (VmRSS, VmHWM) in bytes; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process' peak resident set (VmHWM) to its current RSS (Linux ≥ 4.0:
    ``echo 5 > /proc/self/clear_refs``) → whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set of this process in bytes: VmHWM, else getrusage's ru_maxrss."""
    peak = _proc_status_bytes("VmHWM")
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak *= 1 if sys.platform == "darwin" else 1024    # Linux reports KiB, macOS bytes
    return peak


def _nvidia_smi(*query: str) -> list[list[str]]:
    """Rows of `nvidia-smi --query-...=... --format=csv,noheader,nounits`; [] without one."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


def gpu_memory_bytes(pid: int | None = None) -> int | None:
    """GPU memory the driver attributes to process `pid` (default: this one), in bytes, from
    nvidia-smi's compute-apps table; None without nvidia-smi or when the process has none."""
    pid = os.getpid() if pid is None else pid
    used = [int(row[1]) for row in _nvidia_smi("--query-compute-apps=pid,used_memory")
            if len(row) >= 2 and row[0] == str(pid) and row[1].isdigit()]
    return sum(used) * 2 ** 20 if used else None


def bench_machine(providers: Sequence[str]) -> dict:
    """:func:`benchmarks.common.machine_info` + Python, NumPy, memory, GPUs, load average."""
    info = machine_info(providers)
    try:
        with open("/proc/meminfo") as f:
            total = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:")), None)
    except OSError:
        total = None
    info.update({
        "python": platform.python_version(),
        "numpy": np.__version__,
        "vosedge": sdk.__version__,
        "memory_bytes": total,
        "gpus": [{"name": r[0], "memory_bytes": int(float(r[1])) * 2 ** 20, "driver": r[2]}
                 for r in _nvidia_smi("--query-gpu=name,memory.total,driver_version") if len(r) >= 3],
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    })
    return info


# --- one run ---------------------------------------------------------------------------------------


def _throttled(progress: Callable[[int], None] | None) -> Callable[[int, bool], None]:
    last = [0.0]

    def report(done: int, final: bool = False) -> None:
        now = time.monotonic()
        if progress and (final or now - last[0] >= PROGRESS_EVERY_S):
            last[0] = now
            progress(done)
    return report


def measure(segmenter, frames: Sequence[np.ndarray], gt: Sequence[np.ndarray], sequence_prompts: Sequence,
            order: Sequence[int], warmup: int = WARMUP_FRAMES, progress: Callable[[int], None] | None = None,
            turn: Callable[[], None] | None = None) -> dict:
    """Play frames[order] through `segmenter` and measure it.

    The first `warmup` frames of the video are stepped and the segmenter reset; then every
    frame of the video is timed (time.perf_counter around ``step``) with the peak-RSS mark
    reset at its start, and scored against gt[order]. → raw per-frame record: {"latency_s":
    [...], "started_s": [...] (perf_counter at each timed step's start), "stages_ms": {stage:
    [...]}, "bank_bytes": [...] (after each frame), "jf", "j", "f" (×100, None when no frame
    is scored), "peak_rss_bytes", "baseline_rss_bytes", "rss_scope" ("run" | "process"),
    "gpu_memory_bytes", "providers", "resolution", "wall_s" (not counting `turn`)}.
    `progress(frames done)` is called now and then; `turn()`, when given, before every step
    (warm-up ones too): it returns when this video may take its next step (:func:`lockstep`).
    """
    masks = played_prompts(sequence_prompts, order)
    waited = [0.0]

    def wait_turn() -> None:
        if turn is not None:
            start = time.perf_counter()
            turn()
            waited[0] += time.perf_counter() - start

    segmenter.reset()
    for t in range(min(warmup, len(order))):
        wait_turn()
        segmenter.step(frames[order[t]], masks[t])
    segmenter.reset()
    latencies: list[float] = []
    started: list[float] = []
    banks: list[int] = []
    stages: dict[str, list[float]] = {}
    report = _throttled(progress)
    scope = "run" if reset_peak_rss() else "process"
    baseline = _proc_status_bytes("VmRSS")
    waited[0] = 0.0
    wall = time.perf_counter()

    def stream():
        for t, i in enumerate(order):
            wait_turn()
            start = time.perf_counter()
            labels = segmenter.step(frames[i], masks[t])
            latencies.append(time.perf_counter() - start)
            started.append(start)
            banks.append(int(segmenter.bank_bytes))
            for name, ms in (getattr(segmenter, "timings", None) or {}).items():
                stages.setdefault(name, []).append(float(ms))
            report(t + 1)
            yield labels

    objects = evaluate_sequence(stream(), [gt[i] for i in order])
    wall = time.perf_counter() - wall - waited[0]
    report(len(order), True)
    try:
        scores = summarize(objects.values())
        jf, j, f = (round(100 * scores[k], 2) for k in ("J&F", "J-Mean", "F-Mean"))
    except ValueError:   # too short a video for any scored frame
        jf = j = f = None
    providers = list(getattr(segmenter, "providers", []))
    return {
        "latency_s": latencies, "started_s": started, "stages_ms": stages, "bank_bytes": banks, "jf": jf, "j": j, "f": f,
        "peak_rss_bytes": peak_rss_bytes(), "baseline_rss_bytes": baseline, "rss_scope": scope,
        "gpu_memory_bytes": gpu_memory_bytes() if "CUDAExecutionProvider" in providers else None,
        "providers": providers, "resolution": getattr(segmenter, "resolution", None), "wall_s": wall,
    }


def _r(x: float, digits: int = 2) -> float:
    return round(float(x), digits)


def _window(raws: Sequence[dict], last: bool) -> dict:
    n = len(raws[0]["latency_s"])
    size = max(1, round(WINDOW * n))
    span = slice(n - size, n) if last else slice(0, size)
    lat = np.concatenate([np.asarray(r["latency_s"][span]) for r in raws]) * 1e3
    return {"frames": size, "latency_p50_ms": _r(np.median(lat)), "bank_bytes": raws[0]["bank_bytes"][span][-1]}


def summarize_runs(method: str, length: float, raws: Sequence[dict]) -> dict:
    """One ``results`` entry (docs/bench-json.md) from the raw records of the repeats of one
    (method, length): latencies pooled over repeats, stage means, memory, J&F."""
    lat = np.concatenate([np.asarray(r["latency_s"]) for r in raws]) * 1e3
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    stage_names = list(raws[0]["stages_ms"])
    stages = {name: _r(np.mean(np.concatenate([r["stages_ms"][name] for r in raws])), 3) for name in stage_names}
    jfs = [r["jf"] for r in raws]
    gpu = [r["gpu_memory_bytes"] for r in raws if r["gpu_memory_bytes"] is not None]
    first = raws[0]
    return {
        "method": method,
        "length": length,
        "frames": len(first["latency_s"]),
        "repeats": len(raws),
        "fps": _r(len(lat) / (lat.sum() / 1e3)),
        "latency_ms": {"p50": _r(p50), "p90": _r(p90), "p99": _r(p99), "mean": _r(lat.mean()), "max": _r(lat.max())},
        "p50_per_repeat_ms": [_r(np.median(r["latency_s"]) * 1e3) for r in raws],
        "stages_ms": stages,
        "bank_bytes": first["bank_bytes"][-1],
        "bank_bytes_first": first["bank_bytes"][0],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in raws),
        "baseline_rss_bytes": first["baseline_rss_bytes"],
        "rss_scope": first["rss_scope"],
        "gpu_memory_bytes": max(gpu) if gpu else None,
        "jf": jfs[0], "j": first["j"], "f": first["f"],
        "jf_spread": None if None in jfs else _r(max(jfs) - min(jfs)),
        "windows": {"first": _window(raws, last=False), "last": _window(raws, last=True)},
        "providers": first["providers"],
        "seconds": _r(sum(r["wall_s"] for r in raws), 1),
    }


# --- where a run happens: this process or a fresh one ---------------------------------------------


class Skip(Exception):
    """The model cannot run this method (sdk.ManifestError when the segmenter is built)."""


def execute(task: dict, progress=None, loaded=None, segmenters: dict | None = None, turn=None) -> dict:
    """Carry out one task (a plain dict, so it crosses to a spawned process): load the
    sequence (unless `loaded`), build the segmenter (unless cached in `segmenters`), then
    :func:`measure` (kind "bench", stepping on `turn`) or the PyTorch reference (kind
    "reference"). Raises :class:`Skip` when the segmenter cannot be built for this model
    (ManifestError)."""
    model_dir = resolve_model(task["model"]).root
    if sha256_file(model_dir / MANIFEST_FILE) != task["manifest_sha256"]:
        raise ValueError(f"the model {model_dir} changed while the benchmark ran (its manifest.json differs); "
                         "start again")
    frames, gt, seq_prompts = loaded or load_sequence(Path(task["data"]), task["sequence"], task["max_frames"],
                                                      task["size"])
    method = "every_k" if task["kind"] == "reference" else task["method"]
    segmenter = (segmenters or {}).get(method)
    if segmenter is None:
        try:
            segmenter = cli.make_segmenter(task["model"] and Path(task["model"]), method, task["resolution"],
                                           task["providers"])
        except ManifestError as exc:
            raise Skip(str(exc)) from exc
        if segmenters is not None:
            segmenters[method] = segmenter
    order = make_order(len(frames), tuple(task["order"]))
    if task["kind"] == "reference":
        from benchmarks.reference import reference_run

        return reference_run(segmenter, task["checkpoints"], frames, played_prompts(seq_prompts, order), gt, order,
                             task["warmup"], progress)
    return measure(segmenter, frames, gt, seq_prompts, order, task["warmup"], progress, turn)


def _outcome(work: Callable[[], object]) -> tuple[str, object]:
    """`work()` → ("result", value) | ("skipped", reason) | ("error", message)."""
    try:
        return "result", work()
    except Skip as exc:
        return "skipped", str(exc)
    except (VosEdgeError, OSError, ValueError) as exc:
        return "error", f"{type(exc).__name__}: {exc}"
    except BaseException:   # noqa: BLE001 - reported to the parent, which fails with it
        return "error", traceback.format_exc()


def _child_signals() -> None:
    """In a spawned run: Ctrl-C is the parent's to handle (it terminates us)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # also drops one pending since the start
    with contextlib.suppress(AttributeError, OSError, ValueError):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    warnings.simplefilter("ignore")


def _child(task: dict, messages) -> None:
    """Entry of a spawned run: its outcome (and progress on the way) go to `messages`."""
    _child_signals()
    messages.put(_outcome(lambda: execute(task, progress=lambda n: messages.put(("progress", n)))))


@contextlib.contextmanager
def _sigint_held():
    """Block SIGINT in this thread while a child process starts. The child inherits the
    blocked mask, so a Ctrl-C never raises KeyboardInterrupt in it, even while it imports
    (stopping it is our job); here the signal stays pending and arrives once unblocked."""
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    except (AttributeError, OSError, ValueError):   # no POSIX signal masks
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _died(proc) -> tuple[str, str]:
    """The outcome of a run whose process ended without answering."""
    return "error", f"the benchmark process died (exit code {proc.exitcode})"


def _stop(proc, now: bool = True) -> None:
    """Reap a run's process: terminate it first if `now` (a process that answered is exiting
    anyway), kill it if it is still there after 10 s."""
    if now and proc.is_alive():
        proc.terminate()
    proc.join(10)
    if proc.is_alive():
        proc.kill()
        proc.join()


def run_isolated(task: dict, progress=None) -> tuple[str, object]:
    """Run `task` in a fresh (spawned) Python process → ("result", record) | ("skipped",
    reason) | ("error", message). The process is terminated if we are interrupted."""
    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    proc = ctx.Process(target=_child, args=(task, messages), daemon=True, name="vos-bench-run")
    with _sigint_held():
        proc.start()
    answered = False
    try:
        while True:
            try:
                kind, payload = messages.get(timeout=0.2)
            except queue.Empty:
                if proc.is_alive():
                    continue
                try:
                    kind, payload = messages.get(timeout=2)
                except queue.Empty:
                    return _died(proc)
            if kind == "progress":
                if progress:
                    progress(payload)
                continue
            answered = True
            return kind, payload
    finally:   # interrupted (Ctrl-C) or failed: stop the run now; answered: it is exiting anyway
        _stop(proc, now=not answered)
        messages.close()


# --- lockstep: a method's lengths take turns frame by frame ----------------------------------------


def play_lane(task: dict, turn: Callable[[], None], progress: Callable[[int], None]) -> list[dict]:
    """Play task["videos"] videos of one (method, length) back to back on one segmenter,
    every step on `turn` → their :func:`measure` records. `progress(frames timed)` counts
    across the videos."""
    loaded = load_sequence(Path(task["data"]), task["sequence"], task["max_frames"], task["size"])
    segmenters: dict = {}
    records: list[dict] = []
    before = 0                                       # frames timed in the earlier videos
    for _ in range(task["videos"]):
        records.append(execute(task, lambda n, before=before: progress(before + n), loaded, segmenters, turn))
        before += len(records[-1]["latency_s"])
    return records


def _lane_child(task: dict, conn) -> None:
    """Entry of a lane's process: before every step it sends ("ready", frames timed) and waits
    for "go"; at the end it sends its outcome (records as "result")."""
    _child_signals()
    timed = [0]

    def turn() -> None:
        conn.send(("ready", timed[0]))
        conn.recv()                                  # "go"; a lane no longer wanted is terminated

    def progress(n: int) -> None:
        timed[0] = n

    conn.send(_outcome(lambda: play_lane(task, turn, progress)))


class Lane:
    """One (method, length) in its own spawned process, stepping only when told (:func:`lockstep`)."""

    def __init__(self, ctx, task: dict):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_lane_child, args=(task, child), daemon=True, name="vos-bench-lane")
        with _sigint_held():
            self.proc.start()
        child.close()

    def receive(self) -> tuple[str, object]:
        """The lane's next message: ("ready", frames timed) or its outcome; a dead process is an error."""
        while not self.conn.poll(0.2):
            if not self.proc.is_alive() and not self.conn.poll(2):
                return _died(self.proc)
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join(5)
            return _died(self.proc)

    def step(self) -> tuple[str, object]:
        """Let the lane take one step and wait until it has: → its next message."""
        self.conn.send("go")
        return self.receive()

    def close(self) -> None:
        """Stop the process (a lane that sent its outcome is exiting anyway)."""
        _stop(self.proc)
        self.conn.close()


def lockstep(tasks: Sequence[dict], progress: Callable[[int], None] | None = None,
             finished: Callable[[int, str, object], None] | None = None) -> list[tuple[str, object]]:
    """Run `tasks` (one per length of a method) in lockstep: each in its own spawned process
    (its own peak RSS) and one step at a time, round-robin (cycle c starts at lane c mod n),
    so every length is timed under the same machine conditions, frame by frame. A 2-core
    VM's speed wanders by ±15 % between 4-s windows; a run-by-run schedule leaves the
    longest video's single long run exposed to that, lockstep does not.

    Lanes load and build their segmenters in parallel, then no lane steps until all are ready.
    `progress(frames timed over all lanes)` is called after steps, `finished(i, kind, payload)`
    as lane i ends. → (kind, payload) per task: ("result", [record per video]) |
    ("skipped", reason) | ("error", message); after the first error or skip the other lanes
    are stopped and answer ("skipped" | "error", same message). Ctrl-C (KeyboardInterrupt)
    stops every lane and propagates.
    """
    ctx = multiprocessing.get_context("spawn")
    lanes: list[Lane] = []
    outcomes: list[tuple[str, object] | None] = [None] * len(tasks)
    timed = [0] * len(tasks)

    def settle(i: int, message: tuple[str, object]) -> bool:
        """Record lane i's message → whether it is still stepping."""
        kind, payload = message
        if kind == "ready":
            timed[i] = payload
            return True
        outcomes[i] = message
        if kind == "result":
            timed[i] = sum(len(record["latency_s"]) for record in payload)
        if finished:
            finished(i, kind, payload)
        return False

    try:
        for task in tasks:
            lanes.append(Lane(ctx, task))
        live = [i for i, lane in enumerate(lanes) if settle(i, lane.receive())]
        cycle = 0
        while live and all(o is None or o[0] == "result" for o in outcomes):
            k = cycle % len(live)
            for i in live[k:] + live[:k]:
                if not settle(i, lanes[i].step()):
                    live.remove(i)
                    if outcomes[i][0] != "result":
                        break
            cycle += 1
            if progress:
                progress(sum(timed))
    finally:
        for lane in lanes:
            lane.close()
    failed = next((o for o in outcomes if o is not None and o[0] != "result"), None)
    return [o if o is not None else failed for o in outcomes]


def run_inprocess(task: dict, cache: dict, progress=None) -> tuple[str, object]:
    """Run `task` in this process, reusing the loaded sequence and one segmenter per method."""
    if "sequence" not in cache:
        cache["sequence"] = load_sequence(Path(task["data"]), task["sequence"], task["max_frames"], task["size"])
    try:
        return "result", execute(task, progress, cache["sequence"], cache.setdefault("segmenters", {}))
    except Skip as exc:
        return "skipped", str(exc)


# --- the report -----------------------------------------------------------------------------------


def write_json(path: Path, report: dict) -> None:
    """Atomically replace `path` with `report` as JSON (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


def _summary_line(r: dict) -> str:
    if "skipped" in r:
        return f"{r['method']:<13} skipped: {r['skipped']}"
    length = r["length"] if isinstance(r["length"], int) else f"{r['length']:.2f}"
    jf = "–" if r["jf"] is None else f"{r['jf']:.1f}"
    return (f"{r['method']:<13} L={length:<5} {r['frames']:6d} frames {r['fps']:7.2f} fps  "
            f"p50 {r['latency_ms']['p50']:.1f} ms  bank {r['bank_bytes'] / 2**20:.1f} MiB  "
            f"RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB  J&F {jf}")


# --- options ---------------------------------------------------------------------------------------


def _lengths(ctx, param, value: str | None) -> list[int] | None:
    """Click callback: '1,5,10' -> [1, 5, 10], each ≥ 1; absent -> None."""
    if value is None:
        return None
    try:
        lengths = [int(v) for v in cli.comma_list(ctx, param, value) or []]
    except ValueError:
        raise click.BadParameter("expected comma-separated integers") from None
    if not lengths or min(lengths) < 1:
        raise click.BadParameter("lengths must be ≥ 1")
    return list(dict.fromkeys(lengths))


def parse_resolution(ctx, param, value: str | None):
    """Click callback → (Segmenter resolution, input size): absent → ('manifest', None);
    'native' → (None, None); '240' or '240p' → (240, None): internal short side 240 px;
    'WxH' → (None, (W, H)): frames and ground truth resized to W×H, run at that native size."""
    if value is None:
        return "manifest", None
    text = value.strip().lower()
    if text == "native":
        return None, None
    if (m := re.fullmatch(r"(\d+)p?", text)) and int(m[1]) > 0:
        return int(m[1]), None
    if (m := re.fullmatch(r"(\d+)x(\d+)", text)) and int(m[1]) > 0 and int(m[2]) > 0:
        return None, (int(m[1]), int(m[2]))
    raise click.BadParameter("expected a short side in px ('240', '480p'), 'WxH' (e.g. '854x480') or 'native'")


def _methods(ctx, param, value: str | None) -> list[str]:
    methods = list(dict.fromkeys(cli.comma_list(ctx, param, value) or []))
    if not methods:
        raise click.BadParameter("name at least one memory policy")
    unknown = [m for m in methods if m not in sdk.POLICIES]
    if unknown:
        raise click.BadParameter(f"unknown {', '.join(unknown)}; known: {', '.join(sdk.POLICIES)}")
    return methods


@click.command(epilog=EXAMPLES)
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path), metavar="ROOT",
              help="DAVIS-layout root: JPEGImages/, Annotations/.")
@click.option("--sequence", required=True, help="Sequence to play, e.g. blackswan.")
@click.option("--methods", default=",".join(sdk.POLICIES), show_default=True, metavar="A,B", callback=_methods,
              help="Memory policies to compare; those the model lacks graphs for are recorded as skipped.")
@click.option("--lengths", metavar="L1,L2", callback=_lengths,
              help="Video lengths in forward+backward units.  [default: 1,10,20]")
@click.option("--frames", "stream_frames", type=click.IntRange(min=1), metavar="N",
              help="Instead of --lengths: one stream of exactly N frames of the same order (soak run).")
@click.option("--resolution", callback=parse_resolution, metavar="PX|Np|WxH|native",
              help="Internal short side ('240', '240p'), input resized to W×H ('854x480'), or 'native'. "
                   "Default: the model's.")
@click.option("--providers", callback=cli.comma_list, metavar="LIST",
              help="ONNX Runtime providers in order of preference, e.g. 'cpu' or 'cuda,cpu'. "
                   "Default: CUDA if available, else CPU.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16: run a float16 copy of the model (readout kept float32; needs onnxconverter-common).")
@click.option("--model", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Export folder (manifest.json + ONNX graphs). Default: the bundled model.")
@click.option("--json", "json_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Where the results go (JSON, rewritten after every run).")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write fps/memory/J&F-vs-length PNG plots here.")
@click.option("--table", "table_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the results as a markdown table here.")
@click.option("--reference/--no-reference", default=None,
              help="Also run the same weights through PyTorch (every_k, first length) for the sdk's overhead "
                   "ratio. Default: on when torch is installed and the checkpoint is known.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Checkpoint (.safetensors + .json) the model was exported from, for --reference. Default "
                   "for the bundled model: training/weights/<config>[-main].safetensors, whichever reproduces "
                   "the export's keys.")
@click.option("--warmup", type=click.IntRange(min=0), default=WARMUP_FRAMES, show_default=True,
              help="Frames stepped (then reset) before each timed video.")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run every (method, length) this many times (× the balance factor); latencies are "
                   "pooled.")
@click.option("--balance/--no-balance", default=True, show_default=True,
              help="Repeat shorter videos until each length is timed over about as many frames as the longest, "
                   "their runs spread evenly around the longest one's (machine drift then weighs on every "
                   "length alike). --no-balance: each length --repeats times, alternate repeats reversed.")
@click.option("--max-frames", type=click.IntRange(min=2), metavar="N",
              help="Use only the first N frames of the sequence (quick runs, tests).")
@click.option("--isolate/--no-isolate", default=True, show_default=True,
              help="Each run in a fresh process (its own peak RSS), or all in this one.")
@click.option("--lockstep/--no-lockstep", "lockstep_runs", default=None,
              help="Run a method's lengths at once, one process each, taking turns frame by frame, so "
                   "machine drift weighs on every length alike. Default: on with --isolate. "
                   "--no-lockstep: one run after another.")
def main(data, sequence, methods, lengths, stream_frames, resolution, providers, precision, model, json_path,
         plots_dir, table_path, reference, checkpoint, warmup, repeats, balance, max_frames, isolate,
         lockstep_runs):
    """Benchmark memory policies on synthetic long videos: fps, latency p50/p90/p99, stage
    times, memory-bank bytes, peak RSS, GPU memory and J&F against video length."""
    if stream_frames is not None and lengths is not None:
        raise click.UsageError("--frames (one stream of N frames) and --lengths exclude each other")
    if lockstep_runs and not isolate:
        raise click.UsageError("--lockstep runs every length in its own process; it cannot go with --no-isolate")
    lockstep_runs = isolate if lockstep_runs is None else lockstep_runs
    resolution, size = resolution
    with cli.user_errors():
        count, native_size = check_sequence(data, sequence, max_frames)
        if count < 2:
            raise click.UsageError(f"sequence {sequence!r} needs at least 2 frames, has {count}")
        manifest = resolve_model(model)            # a broken model fails here, before any run
        unit = unit_frames(count)
        if stream_frames is not None:
            points = [(stream_frames, ("frames", stream_frames), round(stream_frames / unit, 3))]
        else:
            points = [(length * unit, ("length", length), length) for length in lengths or [1, 10, 20]]
        reference, checkpoints, why_not = _reference_plan(reference, checkpoint, manifest)
        with tempfile.TemporaryDirectory(prefix="vosedge-bench-") as tmp:
            run_model = model
            if precision == "fp16":
                from benchmarks.fp16 import convert_model

                click.echo("converting the model to float16 …", err=True)
                run_model = convert_model(manifest.root, Path(tmp) / "fp16")
            manifest_sha256 = sha256_file(resolve_model(run_model).root / MANIFEST_FILE)
            base = {"data": str(data), "sequence": sequence, "max_frames": max_frames, "size": size,
                    "model": run_model and str(run_model), "resolution": resolution, "providers": providers,
                    "warmup": warmup, "manifest_sha256": manifest_sha256}
            report = {
                "format": FORMAT, "version": VERSION,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": shlex.join(["vos-bench", *sys.argv[1:]]) if Path(sys.argv[0]).name == "vos-bench" else None,
                "machine": bench_machine([]),
                "data": str(data), "sequence": sequence, "sequence_frames": count, "unit_frames": unit,
                "input_size": list(size or native_size),
                "model": str(model) if model else "bundled", "model_config": manifest.config,
                "model_manifest_sha256": sha256_file(manifest.root / MANIFEST_FILE),
                "precision": precision,
                "resolution": manifest.resolution if resolution == "manifest" else resolution or "native",
                "mode": "stream" if stream_frames is not None else "lengths",
                "warmup_frames": warmup, "repeats": repeats, "balance": balance,
                "isolation": "process" if isolate else "none", "lockstep": lockstep_runs,
                "complete": False, "interrupted": False,
                "results": [], "reference": None if reference else {"skipped": why_not},
            }
            _bench(report, base, methods, points, reference, checkpoints, repeats, balance, isolate, lockstep_runs,
                   json_path, plots_dir, table_path)


def _reference_plan(reference: bool | None, checkpoint: Path | None, manifest) -> tuple[bool, list[Path], str]:
    """→ (run it?, candidate checkpoints, why not). Explicit --reference without torch or a
    checkpoint is a usage error; the default quietly goes without."""
    have_torch = importlib.util.find_spec("torch") is not None
    if checkpoint is not None:
        checkpoints = [checkpoint]
    elif manifest.root == DEFAULT_MODEL_DIR.resolve():
        from benchmarks.reference import default_checkpoints

        checkpoints = default_checkpoints(manifest)
    else:
        checkpoints = []
    why = ("--no-reference" if reference is False else "torch is not installed" if not have_torch
           else "no checkpoint known for this model (give --checkpoint)" if not checkpoints else "")
    if reference and why:
        raise click.UsageError(f"--reference: {why}")
    return (not why), checkpoints, why


def _bench(report, base, methods, points, reference, checkpoints, repeats, balance, isolate, lockstep_runs,
           json_path, plots_dir, table_path) -> None:
    """Run the schedule (method by method in :func:`lockstep`, or run by run), rewriting the
    JSON after every run; Ctrl-C → partial JSON, exit 130."""
    cache: dict = {}
    run = (lambda task, progress: run_isolated(task, progress)) if isolate else (
        lambda task, progress: run_inprocess(task, cache, progress))
    raws: dict[tuple[str, int], list[dict]] = {}
    skipped: dict[str, str] = {}
    providers: list[str] = []

    def results() -> list[dict]:
        out = []
        for method in methods:
            if method in skipped:
                out.append({"method": method, "skipped": skipped[method]})
            for p, (_, _, length) in enumerate(points):
                if (method, p) in raws:
                    out.append(summarize_runs(method, length, raws[(method, p)]))
        return out

    def save(**status) -> None:
        report.update(status)
        report["results"] = results()
        report["machine"]["providers"] = providers
        write_json(json_path, report)

    def bar(total: int, desc: str):
        b = tqdm(total=total, desc=desc, unit="frame", leave=False, dynamic_ncols=True)
        return b, (lambda n: b.update(n - b.n))

    def gave_up(method: str, p: int, kind: str, why: str) -> None:
        """A run of (method, point p) was skipped (the method is, from now on) or failed (raise)."""
        if kind == "error":
            save()
            raise click.ClickException(f"{method} L={points[p][2]}: {why}")
        skipped[method] = why
        tqdm.write(f"warning: {method} skipped: {why}", file=sys.stderr)

    def measured_runs(method: str, p: int, records: list[dict], last: bool) -> None:
        """Keep records of (method, point p); print its summary after its `last` run."""
        raws.setdefault((method, p), []).extend(records)
        providers[:] = providers or records[0]["providers"]
        if last:
            tqdm.write(_summary_line(summarize_runs(method, points[p][2], raws[(method, p)])))

    point_frames = [frames for frames, _, _ in points]

    def run_lockstep(method: str) -> None:
        """All of `method`'s lengths at once, in lockstep; each saved as its lane ends."""
        counts = run_counts(point_frames, repeats, balance)
        tasks = [{**base, "kind": "bench", "method": method, "order": order, "videos": counts[p]}
                 for p, (_, order, _) in enumerate(points)]
        failure: list[tuple[int, str, str]] = []          # the lane that failed first: (point, kind, why)

        def finished(p: int, kind: str, payload) -> None:
            if kind == "result":
                measured_runs(method, p, payload, last=True)
                save()
            elif not failure:
                failure.append((p, kind, payload))

        lengths = ",".join(str(length) for _, _, length in points)
        b, progress = bar(sum(c * f for c, f in zip(counts, point_frames)),
                          f"{method} L={lengths} in lockstep" if len(points) > 1 else f"{method} L={lengths}")
        with b:
            lockstep(tasks, progress, finished)
        if failure:
            gave_up(method, *failure[0])
            save()

    runs = [] if lockstep_runs else schedule(methods, point_frames, repeats, balance)
    total, done = Counter(runs), Counter()
    try:
        save()
        if reference:   # the first length (a stream: one forward+backward unit)
            order = points[0][1] if points[0][1][0] == "length" else ("length", 1)
            b, progress = bar(report["unit_frames"] * order[1] if order[0] == "length" else 0,
                              "reference (torch vs sdk)")
            with b:
                kind, payload = run({**base, "kind": "reference", "order": order,
                                     "checkpoints": [str(c) for c in checkpoints]}, progress)
            if kind == "result":
                report["reference"] = payload
                tqdm.write(f"reference: sdk {payload['sdk_ms_per_frame']:.1f} ms/frame, torch "
                           f"{payload['torch_ms_per_frame']:.1f} ms/frame → overhead ratio "
                           f"{payload['overhead_ratio']:.2f}")
            else:
                report["reference"] = {"skipped": payload}
                tqdm.write(f"warning: PyTorch reference skipped: {payload}", file=sys.stderr)
            save()
        for method in methods if lockstep_runs else []:
            run_lockstep(method)
        for method, p in runs:
            if method in skipped:
                continue
            frames, order, length = points[p]
            done[(method, p)] += 1
            n = done[(method, p)]
            b, progress = bar(frames, f"{method} L={length}" + (f" #{n}/{total[(method, p)]}"
                                                                if total[(method, p)] > 1 else ""))
            with b:
                kind, payload = run({**base, "kind": "bench", "method": method, "order": order}, progress)
            if kind == "result":
                measured_runs(method, p, [payload], last=n == total[(method, p)])
            else:
                gave_up(method, p, kind, payload)
            save()
    except KeyboardInterrupt:
        save(interrupted=True, complete=False)
        _outputs(report, plots_dir, table_path)
        click.echo(f"\ninterrupted: {len(measured(report['results']))} result(s) written to {json_path}", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    report["machine"].update({"load_average_end": bench_machine([])["load_average"]})
    save(complete=True)
    _outputs(report, plots_dir, table_path)
    click.echo(markdown_table(report["results"]), nl=False)
    click.echo(f"results: {json_path}" + (f"; plots: {plots_dir}/" if plots_dir else "")
               + (f"; table: {table_path}" if table_path else ""))


def _outputs(report: dict, plots_dir: Path | None, table_path: Path | None) -> None:
    """The markdown table and the plots of whatever is in `report`."""
    if table_path:
        table_path.parent.mkdir(parents=True, exist_ok=True)
        table_path.write_text(markdown_table(report["results"]))
    if plots_dir and measured(report["results"]):
        resolution = report["resolution"]
        plot(report["results"], plots_dir,
             title=f"{report['sequence']} ({report['unit_frames']} frames per unit), internal "
                   f"{resolution}{' px' if isinstance(resolution, int) else ''}, {report['precision']}, "
                   f"{report['machine']['cpu']} ×{report['machine']['cores']}, "
                   f"{', '.join(p.removesuffix('ExecutionProvider') for p in report['machine']['providers'])}")
