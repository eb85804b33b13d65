"""How vos-bench carries out one (method, length) run: :func:`measure` steps a Segmenter over
a synthetic video and records latency, stages, bank bytes, RSS and J&F; :func:`execute` builds
what a run needs; a run happens in this process (:func:`run_inprocess`), in a fresh one
(:func:`run_isolated`) or in lockstep with the method's other lengths (:func:`lockstep`)."""
from __future__ import annotations

import contextlib
import multiprocessing
import queue
import signal
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import click
import numpy as np

from benchmarks.machine import (
    gpu_memory_bytes,
    peak_rss_bytes,
    proc_status_bytes,
    reset_peak_rss,
)
from benchmarks.playback import load_sequence, make_order, played_prompts
from sdk import cli
from sdk.errors import ManifestError, VosEdgeError
from sdk.manifest import MANIFEST_FILE, resolve_model, sha256_file
from sdk.metrics import VOID, boundary_measure, region_similarity, summarize

WARMUP_FRAMES = 5
WINDOW = 0.1            # first/last fraction of the measured frames compared in "windows"
PROGRESS_EVERY_S = 0.25


# --- one run ---------------------------------------------------------------------------------------


def _throttled(progress: Callable[[int], None] | None) -> Callable[[int, bool], None]:
    last = [0.0]

    def report(done: int, final: bool = False) -> None:
        now = time.monotonic()
        if progress and (final or now - last[0] >= PROGRESS_EVERY_S):
            last[0] = now
            progress(done)
    return report


SAMPLE_EVERY = 1000     # frames between two samples of RSS, bank bytes and latency (soak curves)


class _Scores:
    """Per-object J and F of a played video, written into arrays allocated up front (a
    100 000-frame stream holds no growing lists). Objects and the frames they are scored on
    follow :func:`sdk.metrics.evaluate_sequence`: after the frame where an object first
    appears in the played order, up to, not including, the last frame."""

    def __init__(self, gt: Sequence[np.ndarray], order: Sequence[int]):
        self.gt, self.order, self.last = gt, np.asarray(order), len(order) - 1
        holders: dict[int, list[int]] = {}
        for i, g in enumerate(gt):
            for obj in np.unique(g).tolist():
                if obj not in (0, VOID):
                    holders.setdefault(obj, []).append(i)
        self.first = {}                                  # object → first played frame holding it
        for obj, frames in sorted(holders.items()):
            played = np.flatnonzero(np.isin(self.order, frames))
            if played.size and played[0] + 1 < self.last:
                self.first[obj] = int(played[0])
        self.values = {obj: np.full((2, len(order)), np.nan) for obj in self.first}

    def add(self, t: int, pred: np.ndarray) -> None:
        """Score the prediction (label map [H,W]) of played frame t."""
        gt = self.gt[self.order[t]]
        void = gt == VOID
        for obj, values in self.values.items():
            if self.first[obj] < t < self.last:
                values[0, t] = region_similarity(pred == obj, gt == obj, void)
                values[1, t] = boundary_measure(pred == obj, gt == obj, void)

    def summary(self) -> tuple[float | None, float | None, float | None]:
        """(J&F, J, F) ×100, or Nones when no frame was scored."""
        objects = [{"J": v[0, self.first[o] + 1:self.last], "F": v[1, self.first[o] + 1:self.last]}
                   for o, v in self.values.items()]
        try:
            scores = summarize(objects)
        except ValueError:   # too short a video for any scored frame
            return None, None, None
        return tuple(round(100 * scores[k], 2) for k in ("J&F", "J-Mean", "F-Mean"))


def measure(segmenter, frames: Sequence[np.ndarray], gt: Sequence[np.ndarray], sequence_prompts: Sequence,
            order: Sequence[int], warmup: int = WARMUP_FRAMES, progress: Callable[[int], None] | None = None,
            turn: Callable[[], None] | None = None, sample_every: int = SAMPLE_EVERY) -> dict:
    """Play frames[order] through `segmenter` and measure it.

    The first `warmup` frames of the video are stepped and the segmenter reset; then every
    frame of the video is timed (time.perf_counter around ``step``) with the peak-RSS mark
    reset at its start, and scored against gt[order]. → raw per-frame record: {"latency_s",
    "started_s" (perf_counter at each timed step's start), "bank_bytes" (after each frame):
    float64/int64 arrays [frames]; "stages_ms": {stage: array [frames]}; "samples": every
    `sample_every` frames and after the last, {"frame", "rss_bytes" (VmRSS), "bank_bytes",
    "latency_p50_ms" (of the frames since the previous sample)} lists; "jf", "j", "f" (×100,
    None when no frame is scored), "peak_rss_bytes", "baseline_rss_bytes", "rss_scope" ("run" |
    "process"), "gpu_memory_bytes", "providers", "resolution", "wall_s" (not counting `turn`)}.
    Every per-frame array is allocated (and its pages touched) before the timed frames, so the
    record itself does not grow the resident set during a long stream.
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
    n = len(order)
    latencies, started = np.full(n, np.nan), np.full(n, np.nan)
    banks = np.full(n, -1, np.int64)
    stage_names: list[str] | None = None
    stage_ms = np.full((0, n), np.nan)
    samples = {"frame": [], "rss_bytes": [], "bank_bytes": [], "latency_p50_ms": []}
    scores = _Scores(gt, order)
    report = _throttled(progress)
    scope = "run" if reset_peak_rss() else "process"
    baseline = proc_status_bytes("VmRSS")
    waited[0] = 0.0
    wall = time.perf_counter()

    def sample(t: int) -> None:
        samples["frame"].append(t + 1)
        samples["rss_bytes"].append(proc_status_bytes("VmRSS"))
        samples["bank_bytes"].append(int(banks[t]))
        since = samples["frame"][-2] if len(samples["frame"]) > 1 else 0
        samples["latency_p50_ms"].append(_r(np.median(latencies[since:t + 1]) * 1e3, 3))

    for t, i in enumerate(order):
        wait_turn()
        start = time.perf_counter()
        labels = segmenter.step(frames[i], masks[t])
        latencies[t] = time.perf_counter() - start
        started[t] = start
        banks[t] = segmenter.bank_bytes
        timings = getattr(segmenter, "timings", None) or {}
        if stage_names is None:
            stage_names = list(timings)
            stage_ms = np.full((len(stage_names), n), np.nan)
        for row, name in enumerate(stage_names):
            stage_ms[row, t] = timings.get(name, 0.0)
        scores.add(t, labels)
        if (t + 1) % sample_every == 0 or t + 1 == n:
            sample(t)
        report(t + 1)
    wall = time.perf_counter() - wall - waited[0]
    report(n, True)
    jf, j, f = scores.summary()
    providers = list(getattr(segmenter, "providers", []))
    return {
        "latency_s": latencies, "started_s": started,
        "stages_ms": {name: stage_ms[row] for row, name in enumerate(stage_names or [])},
        "bank_bytes": banks, "samples": samples, "jf": jf, "j": j, "f": f,
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
    return {"frames": size, "latency_p50_ms": _r(np.median(lat)), "bank_bytes": int(raws[0]["bank_bytes"][span][-1])}


def _rss_growth(raw: dict) -> int | None:
    """Resident-set growth after warm-up: max VmRSS over the samples taken after the first
    ``WINDOW`` (10 %) of the frames minus the first of those samples; None with < 2 such
    samples (or off Linux)."""
    n = len(raw["latency_s"])
    after = [rss for frame, rss in zip(raw["samples"]["frame"], raw["samples"]["rss_bytes"])
             if frame >= WINDOW * n and rss is not None]
    return int(max(after) - after[0]) if len(after) >= 2 else None


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
        "bank_bytes": int(first["bank_bytes"][-1]),
        "bank_bytes_first": int(first["bank_bytes"][0]),
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in raws),
        "baseline_rss_bytes": first["baseline_rss_bytes"],
        "rss_scope": first["rss_scope"],
        "gpu_memory_bytes": max(gpu) if gpu else None,
        "jf": jfs[0], "j": first["j"], "f": first["f"],
        "jf_spread": None if None in jfs else _r(max(jfs) - min(jfs)),
        "windows": {"first": _window(raws, last=False), "last": _window(raws, last=True)},
        "bank_bytes_range": [int(np.min(first["bank_bytes"])), int(np.max(first["bank_bytes"]))],
        "rss_growth_bytes": _rss_growth(first),
        "samples": first["samples"],
        "providers": first["providers"],
        "seconds": _r(sum(r["wall_s"] for r in raws), 1),
    }


# --- where a run happens: this process or a fresh one ---------------------------------------------


class Skip(Exception):
    """The model cannot run this method (sdk.ManifestError when the segmenter is built)."""


def execute(task: dict, progress=None, loaded=None, segmenters: dict | None = None, turn=None) -> dict:
    """Carry out one task (a plain dict, so it crosses to a spawned process): load the
    sequence (unless `loaded`), build the segmenter with the task's ``params`` (--param; none for
    the reference) unless cached in `segmenters`, then
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
    # --param overrides (checked by vos-bench before any run); the reference runs the model's every_k defaults
    params = {} if task["kind"] == "reference" else task.get("params") or {}
    key = f"{method} {params!r}" if params else method
    segmenter = (segmenters or {}).get(key)
    if segmenter is None:
        try:
            segmenter = cli.make_segmenter(task["model"] and Path(task["model"]), method, task["resolution"],
                                           task["providers"], params)
        except ManifestError as exc:
            raise Skip(str(exc)) from exc
        except click.BadParameter as exc:                  # make_segmenter's usage error: the sdk's own
            raise (exc.__cause__ if isinstance(exc.__cause__, VosEdgeError) else exc) from None
        if segmenters is not None:
            segmenters[key] = segmenter
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
