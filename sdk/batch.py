"""Many videos in one run (``vos-segment --batch``, ``vos-eval --workers``): the job list (a
CSV or a DAVIS-layout split), the work done for one video in a worker, and the local worker
pool. The Ray backend is :mod:`sdk.batch_ray` (optional extra ``[batch]``); both run the same
task functions and report the same events, so the results do not depend on the backend.

Nothing lost, nothing done twice:

- each video is written through :class:`sdk.outputs.OutputFolder`, whose record
  (``<out>/.vosedge-segment``) holds the equivalent single-video ``vos-segment`` command as its
  ``command`` and one line per mask, appended as each mask is written;
- a video is *complete* when its record holds that same command and lists a mask for every
  frame, each present and decoding to the first frame's size (:func:`is_complete`); a rerun
  skips it. An incomplete one (a worker that died, Ctrl-C) is redone from its first frame,
  replacing exactly the files its record lists and the mask it was writing when it stopped
  (the first frame's mask the record lacks); a folder of another run (other settings) needs
  ``--overwrite``, one holding files vos-segment did not write is refused for that video;
- a worker process that dies mid-video is replaced and the video retried (``retries`` times);
  the output of the retry is that of a clean run, since a video is always segmented from its
  first frame by a reset Segmenter;
- a bad row (missing frames, unreadable or wrong-size mask) fails that video only, with the
  error in its result; the others go on.

A worker builds one :class:`sdk.Segmenter` per memory method it meets (ONNX Runtime sessions
created once per worker, not per video) and resets it between videos.

Nothing here imports torch; ray is imported only by :mod:`sdk.batch_ray`.
"""
from __future__ import annotations

import concurrent.futures as futures
import csv
import json
import multiprocessing
import os
import queue as queue_module
import shlex
import signal
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path

from .davis import davis_sequence_dirs, split_subset
from .errors import InputError, OutputError, VosEdgeError
from .io import check_mask_size, iter_frames, list_frames, read_mask
from .manifest import resolve_model
from .outputs import RECORD, OutputFolder, recorded_files

CSV_COLUMNS = ("frames", "mask", "out")     # required; "method" optional (empty = the batch's)
KILL_ENV = "VOSEDGE_TEST_KILL_AT"           # test hook: "VIDEO:FRAME:MARKER" (see WorkerConfig.kill_at)
DEFAULT_RETRIES = 2


@dataclass(frozen=True)
class Job:
    """One video of a batch: its frames (folder or video file), first-frame mask PNG, output
    folder, and memory method (None: the batch's). ``name`` identifies it in the summary (the
    DAVIS sequence, or the CSV row's output folder name)."""

    name: str
    frames: Path
    mask: Path | None
    out: Path
    method: str | None = None


# --- the job list ---------------------------------------------------------------------------------


def read_csv_jobs(path: str | Path) -> list[Job]:
    """The jobs of a CSV with a header row naming the columns ``frames``, ``mask``, ``out``
    and, optionally, ``method`` (any order; other columns ignored). Relative paths are taken
    from the CSV's folder. Nothing is read but the CSV: a row whose frames or mask are missing
    fails as that video's error when it runs.

    Raises :class:`~sdk.errors.InputError` naming the CSV and row for a missing column, an
    empty cell, no rows, or two rows writing the same output folder."""
    path = Path(path)
    base = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in CSV_COLUMNS if c not in columns]
            if missing:
                raise InputError(f"--batch {path}: the CSV's header lacks column(s) {', '.join(missing)} "
                                 f"(it has: {', '.join(columns) or 'nothing'}); expected frames,mask,out[,method]")
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"--batch {path} cannot be read as a CSV: {error}") from error
    jobs = []
    for number, row in enumerate(rows, start=2):       # line 1 is the header
        if not any(row.values()):
            continue
        empty = [c for c in CSV_COLUMNS if not row.get(c)]
        if empty:
            raise InputError(f"--batch {path}, line {number}: empty {', '.join(empty)}")
        out = base / row["out"]
        jobs.append(Job(out.name, base / row["frames"], base / row["mask"], out, row.get("method") or None))
    if not jobs:
        raise InputError(f"--batch {path}: the CSV lists no video")
    return _unique_outputs(jobs, str(path))


def davis_jobs(root: str | Path, split: str, out: str | Path, sequences: Sequence[str] | None = None) -> list[Job]:
    """One job per sequence of ``<root>/ImageSets/<split>.txt`` (or the given subset):
    frames ``JPEGImages/<seq>/``, mask the annotation of its first frame, output
    ``<out>/<seq>/``. Raises :class:`~sdk.errors.VideoReadError` for a missing split file,
    :class:`~sdk.errors.InputError` for a sequence the split lacks."""
    names = split_subset(root, split, sequences)
    jobs = []
    for name in names:
        try:
            frames, annotations = davis_sequence_dirs(root, name)
        except VosEdgeError:                # reported as this video's error when it runs
            frames, annotations = Path(root) / "JPEGImages" / name, Path(root) / "Annotations" / name
        jobs.append(Job(name, frames, annotations, Path(out) / name))
    return jobs


def load_jobs(source: str | Path, split: str, out: str | Path | None,
              sequences: Sequence[str] | None = None) -> list[Job]:
    """The jobs of ``--batch SOURCE``: a DAVIS-layout root (a folder: :func:`davis_jobs`,
    ``out`` required) or a CSV file (:func:`read_csv_jobs`). Raises
    :class:`~sdk.errors.InputError` when SOURCE is missing or a folder is given without ``out``."""
    source = Path(source)
    if source.is_dir():
        if out is None:
            raise InputError(f"--batch {source} is a DAVIS-layout folder: give --out DIR for its sequences' masks")
        return davis_jobs(source, split, out, sequences)
    if not source.is_file():
        raise InputError(f"--batch {source} does not exist (expected a CSV file or a DAVIS-layout folder)")
    return read_csv_jobs(source)


def _unique_outputs(jobs: list[Job], where: str) -> list[Job]:
    seen: dict[Path, Job] = {}
    for job in jobs:
        key = job.out.resolve()
        if key in seen:
            raise InputError(f"--batch {where}: two videos write {job.out} ({seen[key].frames} and {job.frames})")
        seen[key] = job
    return jobs


# --- what a worker holds --------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs to build its Segmenters (picklable; sent once per worker).

    ``model``: export folder (None: bundled); ``resolution``: as :class:`sdk.Segmenter`
    (``"manifest"``, px, None = native); ``params``: Segmenter and policy keyword arguments
    (--param, already scoped per method by :func:`sdk.cli.params_for` at use); ``overwrite``:
    replace a folder holding another run; ``kill_at``: test hook ``(video, frame, marker)``:
    the worker segmenting ``video`` calls ``os._exit`` before frame ``frame`` unless the file
    ``marker`` exists (it creates it first), so the first attempt dies and the retry lives;
    an empty ``marker`` dies on every attempt.
    It is set only from the environment variable ``VOSEDGE_TEST_KILL_AT``."""

    model: str | None = None
    method: str | None = None
    resolution: int | str | None = "manifest"
    providers: tuple[str, ...] | None = None
    params: dict = field(default_factory=dict)
    overwrite: bool = False
    kill_at: tuple[str, int, str] | None = None

    @staticmethod
    def kill_from_environment() -> tuple[str, int, str] | None:
        """The ``VOSEDGE_TEST_KILL_AT=VIDEO:FRAME:MARKER`` test hook, or None."""
        spec = os.environ.get(KILL_ENV)
        if not spec:
            return None
        video, frame, marker = spec.split(":", 2)
        return video, int(frame), marker


class WorkerContext:
    """What one worker (a pool process, a Ray actor) keeps between videos: its Segmenters (one
    per method, created on first use) and the channel its events go to.

    ``report(event)`` receives tuples: ``("started", job, frames)`` when a video starts (its
    frame count), ``("frames", job, n)`` after n more frames are done. ``worker`` names the
    worker (``pid N`` or a Ray actor id) and ``host`` its machine, for the summary."""

    def __init__(self, config: WorkerConfig, report: Callable[[tuple], None], worker: str | None = None):
        self.config = config
        self.report = report
        self.worker = worker or f"pid {os.getpid()}"
        self.host = socket.gethostname()
        self.job = -1                       # index of the job being run (set by the backend)
        self._segmenters: dict[str | None, object] = {}

    def segmenter(self, method: str | None):
        """The worker's :class:`sdk.Segmenter` for ``method`` (None: the batch's), built once,
        reset before it is returned. Raises what the Segmenter raises (ParameterError...)."""
        from . import Segmenter             # noqa: PLC0415  (a worker imports it, the parent need not)
        from .cli import params_for         # noqa: PLC0415

        method = method or self.config.method
        if method not in self._segmenters:
            params = dict(self.config.params)
            if any("." in name for name in params):     # METHOD.NAME entries: those of this method
                params = params_for(method or resolve_model(self.config.model).method, params)
            self._segmenters[method] = Segmenter(model=self.config.model, method=method,
                                                 providers=list(self.config.providers or []) or None,
                                                 resolution=self.config.resolution, **params)
        segmenter = self._segmenters[method]
        segmenter.reset()
        return segmenter

    def watch(self, frames, name: str):
        """The same (name, rgb) frames, reporting each one done (and applying the test hook)."""
        kill = self.config.kill_at
        for index, item in enumerate(frames):
            if kill and kill[0] == name and kill[1] == index and not (kill[2] and Path(kill[2]).exists()):
                if kill[2]:
                    Path(kill[2]).write_text(f"killed {name} at frame {index} in {self.worker}\n")
                os._exit(70)                # the test's worker death: no cleanup, no flush
            yield item
            self.report(("frames", self.job, 1))


# --- the per-video work ---------------------------------------------------------------------------


def record_command(job: Job, config: WorkerConfig, method: str | None = None) -> str:
    """The single-video ``vos-segment`` command equivalent to ``job`` under ``config`` (absolute
    paths): written into the video's record, compared by a rerun to tell a finished video of
    the same settings from one of other settings."""
    args = ["vos-segment", "--frames", str(job.frames.resolve()), "--mask", str(job.mask.resolve()),
            "--out", str(job.out.resolve())]
    if config.model:
        args += ["--model", str(Path(config.model).resolve())]
    method = method or job.method or config.method
    if method:
        args += ["--method", method]
    if config.resolution != "manifest":
        args += ["--resolution", "native" if config.resolution is None else str(config.resolution)]
    if config.providers:
        args += ["--providers", ",".join(config.providers)]
    for name, value in sorted(config.params.items()):
        if name != "threads":               # threads change speed, not masks
            args += ["--param", f"{name}={value}"]
    return shlex.join(args)


def recorded_command(folder: Path) -> str | None:
    """The ``command`` in the header of ``folder``'s record (None: no record, or none there)."""
    try:
        with open(Path(folder) / RECORD, encoding="utf-8") as f:
            header = json.loads(f.readline())
        return header.get("command") if isinstance(header, dict) else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def is_complete(job: Job, names: Sequence[str], command: str, size: tuple[int, int]) -> bool:
    """Whether ``job.out`` holds a finished run of ``command``: its record has that command
    and lists ``<name>.png`` for every frame name, each file present and decoding to a label
    map of ``size`` (H, W). Reads every mask (a half-written file fails to decode)."""
    try:
        recorded = recorded_files(job.out)
    except OutputError:
        return False
    if recorded is None or recorded_command(job.out) != command:
        return False
    recorded = set(recorded)
    for name in names:
        path = job.out / f"{name}.png"
        if f"{name}.png" not in recorded or not path.is_file():
            return False
        try:
            if read_mask(path).shape != tuple(size):
                return False
        except VosEdgeError:
            return False
    return True


def _remove_in_flight(folder: Path, names: Sequence[str]) -> None:
    """Remove the mask an interrupted run was writing when it died: the first frame's mask its
    record does not list, if that file is there (written, or half-written, not yet recorded).
    Every other file the record does not list stays foreign (OutputFolder refuses to replace it)."""
    recorded = set(recorded_files(folder) or [])
    pending = next((f"{n}.png" for n in names if f"{n}.png" not in recorded), None)
    if pending and (folder / pending).is_file():
        (folder / pending).unlink()


def first_annotation(job: Job, first_frame: str) -> Job:
    """A DAVIS job's mask is its annotations folder: → the job with the first frame's PNG."""
    if job.mask is not None and job.mask.is_dir():
        return replace(job, mask=job.mask / f"{first_frame}.png")
    return job


def segment_job(context: WorkerContext, job: Job) -> dict:
    """Segment one video in a worker → its summary entry: ``name``, ``out``, ``status`` ("ok",
    "skipped": complete from an earlier run, "failed"), ``frames`` (masks of the video),
    ``fps`` (frames / seconds of segmentation, reading and writing included; None unless ok,
    and for a video :func:`run_local` found complete after its pool broke, reported ok with a
    ``note``),
    ``bank_bytes`` (memory bank at the video's end), ``error`` (one line, or None),
    ``worker``, ``host``. An sdk or I/O error fails this video only."""
    from .cli import _peek, segment         # noqa: PLC0415  (the loop vos-segment runs)

    result = {"name": job.name, "frames_path": str(job.frames), "mask": str(job.mask), "out": str(job.out),
              "status": "failed", "frames": 0, "fps": None, "bank_bytes": None, "error": None,
              "worker": context.worker, "host": context.host}
    try:
        names = list_frames(job.frames)
        context.report(("started", context.job, len(names)))
        stream, first = _peek(iter_frames(job.frames))
        if first is None:
            raise InputError(f"{job.frames} holds no frame")
        job = first_annotation(job, first[0])
        result["mask"] = str(job.mask)
        command = record_command(job, context.config)
        if is_complete(job, names, command, first[1].shape[:2]):
            result.update(status="skipped", frames=len(names))
            context.report(("frames", context.job, len(names)))
            return result
        mask = read_mask(job.mask)
        check_mask_size(mask, first[1], job.mask, first[0])
        segmenter = context.segmenter(job.method)
        folder = OutputFolder(job.out)
        previous = recorded_command(job.out)
        if previous not in (None, command) and not context.config.overwrite and recorded_files(job.out):
            raise OutputError(f"{job.out} holds an earlier run of other settings ({previous}); pass --overwrite "
                              "to redo it with this batch's, or choose another out")
        if previous == command:             # our own unfinished run: redo it (its recorded files replaced)
            _remove_in_flight(job.out, names)
        overwrite = context.config.overwrite or previous == command
        with folder:
            folder.prepare(overwrite, [f"{n}.png" for n in names], command=command)
            start = time.perf_counter()
            count = segment(segmenter, context.watch(stream, job.name), mask, folder, total=len(names),
                            names=names, progress=False)
            seconds = time.perf_counter() - start
        result.update(status="ok", frames=count, fps=round(count / seconds, 3) if seconds > 0 else None,
                      bank_bytes=int(segmenter.bank_bytes))
    except (VosEdgeError, OSError) as error:
        result["error"] = " ".join(str(error).split()) or type(error).__name__
    return result


# --- running tasks: the common driver and the local pool ------------------------------------------


class Progress:
    """The parent's one progress bar (tqdm) over the frames of every video, with the videos
    done / total as its description; fed the workers' events. A video that is restarted
    (a retried worker) has its frames counted once; a failed one's frames left undone leave
    the total. A worker's events travel through a queue and may come after its video's result:
    the result settles the video's count, and later events for it are dropped."""

    def __init__(self, videos: int, enabled: bool = True):
        from tqdm import tqdm               # noqa: PLC0415

        self.videos, self.finished = videos, 0
        self._total: dict[int, int] = {}
        self._done: dict[int, int] = {}
        self._finished: set[int] = set()
        self.bar = tqdm(total=0, unit="frame", disable=not enabled, dynamic_ncols=True)
        self._describe()

    def _describe(self) -> None:
        self.bar.set_description(f"videos {self.finished}/{self.videos}", refresh=False)

    def event(self, event: tuple) -> None:
        kind, job, n = event[:3]
        if kind != "done" and job in self._finished:
            return                          # a worker's event that came through its queue after the result
        if kind == "started":
            self._total[job] = n
            self._done[job] = 0
            self.bar.total = sum(self._total.values())
            self.bar.n = sum(self._done.values())
        elif kind == "frames":
            self._done[job] = self._done.get(job, 0) + n
            self.bar.n += n
        elif kind == "done":
            self.finished += 1
            self._finished.add(job)
            if isinstance(event[2], dict) and event[2].get("status") == "failed":    # its frames left undone
                self._total[job] = self._done.get(job, 0)
            elif job in self._total:        # all its frames, whichever of their events are still queued
                self._done[job] = self._total[job]
            self.bar.total = sum(self._total.values())
            self.bar.n = sum(self._done.values())
            self._describe()
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def run_local(task: Callable, jobs: Sequence, config: WorkerConfig, workers: int,
              on_event: Callable[[tuple], None], retries: int = DEFAULT_RETRIES) -> list[dict]:
    """Run ``task(context, job)`` for every job on ``workers`` spawned processes (one
    :class:`WorkerContext` each: Segmenters built once per process) → the results in job order.

    ``on_event`` gets the workers' ``started``/``frames`` events and ``("done", index,
    result)``. A worker that dies (the pool breaks: :class:`BrokenProcessPool`) is replaced by
    a new pool; the videos that were running then are retried (each at most ``retries``
    times, then failed with an error saying so), the others are resubmitted as they were.
    Ctrl-C (KeyboardInterrupt in this process; workers ignore SIGINT) terminates the workers
    and re-raises; videos left half-done are redone by a rerun."""
    context = multiprocessing.get_context("spawn")
    results: dict[int, dict] = {}
    attempts = {i: 0 for i in range(len(jobs))}
    interrupted: set[int] = set()           # running when a pool broke: their outputs may be complete
    while len(results) < len(jobs):
        todo = [i for i in range(len(jobs)) if i not in results]
        running: set[int] = set()
        events = context.Queue()            # a new one per pool: a dead worker may hold the old one's lock
        pool = futures.ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context,
                                           initializer=_start_worker, initargs=(config, events))
        broken = False
        try:
            submitted = {pool.submit(_run_task, task, i, jobs[i]): i for i in todo}
            while submitted:
                done, _ = futures.wait(submitted, timeout=0.1, return_when=futures.FIRST_COMPLETED)
                _drain(events, on_event, running)
                for future in done:
                    i = submitted.pop(future)
                    try:
                        results[i] = future.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    if i in interrupted and results[i]["status"] == "skipped":
                        # it finished in this run just before its pool broke: done, not skipped
                        results[i] = {**results[i], "status": "ok",
                                      "note": "finished as its pool broke; verified complete, not redone"}
                    running.discard(i)
                    on_event(("done", i, results[i]))
            _drain(events, on_event, running)
        except BaseException:
            _terminate(pool)
            raise
        finally:
            pool.shutdown(wait=not broken, cancel_futures=True)
            events.close()
            events.join_thread()
        if broken:      # the videos that were running (all unfinished ones if no event got through)
            for i in (running or set(todo)) - set(results):
                interrupted.add(i)
                attempts[i] += 1
                if attempts[i] > retries:
                    results[i] = _died(jobs[i], attempts[i])
                    on_event(("done", i, results[i]))
    return [results[i] for i in range(len(jobs))]


def _died(job, attempts: int) -> dict:
    name = getattr(job, "name", str(job))
    return {"name": name, "status": "failed", "frames": 0, "fps": None, "bank_bytes": None,
            "error": f"the worker segmenting {name} died {attempts} time(s); not retried again",
            "worker": None, "host": None}


_CONTEXT: WorkerContext | None = None


def _start_worker(config: WorkerConfig, events) -> None:
    """Pool initializer: ignore Ctrl-C (the parent stops the workers), build the context."""
    global _CONTEXT
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _CONTEXT = WorkerContext(config, events.put)


def _run_task(task: Callable, index: int, job):
    _CONTEXT.job = index
    _CONTEXT.report(("running", index, 0))
    return task(_CONTEXT, job)


def _drain(events, on_event: Callable[[tuple], None], running: set[int]) -> None:
    while True:
        try:
            event = events.get_nowait()
        except (queue_module.Empty, OSError, EOFError):
            return
        if event[0] == "running":
            running.add(event[1])
        else:
            on_event(event)


def _terminate(pool: futures.ProcessPoolExecutor) -> None:
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()


# --- the whole batch ------------------------------------------------------------------------------


def summarize_batch(results: Sequence[dict], seconds: float, backend: str, workers: int, settings: dict) -> dict:
    """The summary JSON of a batch: per video (``videos``: the task results) and totals
    (videos ok / skipped / failed, frames segmented, wall seconds, videos/hour and frames/s of
    the whole run: skipped videos not counted)."""
    ok = [r for r in results if r["status"] == "ok"]
    frames = sum(r["frames"] for r in ok)
    return {
        "format": "vosedge-batch-summary", "version": 1,
        "backend": backend, "workers": workers, **settings,
        "videos_total": len(results), "videos_ok": len(ok),
        "videos_skipped": sum(r["status"] == "skipped" for r in results),
        "videos_failed": sum(r["status"] == "failed" for r in results),
        "frames_segmented": frames, "wall_seconds": round(seconds, 3),
        "videos_per_hour": round(3600 * len(ok) / seconds, 2) if seconds > 0 else None,
        "frames_per_second": round(frames / seconds, 3) if seconds > 0 else None,
        "videos": list(results),
    }


def default_threads(workers: int, cpus: int | None = None) -> int:
    """ONNX Runtime intra-op threads per worker when --param threads is not given: the
    machine's logical cores shared out (at least 1), so N workers do not oversubscribe it."""
    return max(1, (cpus or os.cpu_count() or 1) // max(1, workers))



def run_tasks(task: Callable, jobs: Sequence, config: WorkerConfig, workers: int,
              on_event: Callable[[tuple], None], retries: int = DEFAULT_RETRIES, ray: str | None = None,
              gpus_per_worker: float = 0.0) -> tuple[list[dict], str]:
    """Run ``task`` over ``jobs`` on the local pool (``ray`` None) or on Ray (``ray``: "local"
    to start a one-machine instance, "auto" or an address to join a cluster;
    :func:`sdk.batch_ray.run_ray`) → (results in job order, backend description). Without
    --param threads, each worker's ONNX Runtime gets :func:`default_threads` (locally: the
    cores shared out; on Ray: the CPUs each actor reserves, 1)."""
    if ray is None:
        if "threads" not in config.params:
            config = replace(config, params={**config.params, "threads": default_threads(workers)})
        return run_local(task, jobs, config, workers, on_event, retries), "local"
    from .batch_ray import run_ray          # noqa: PLC0415  (needs the [batch] extra)

    if "threads" not in config.params:
        config = replace(config, params={**config.params, "threads": 1})
    return run_ray(task, jobs, config, workers, on_event, retries, ray, gpus_per_worker)


def run_batch(jobs: Sequence[Job], config: WorkerConfig, summary_path: Path, workers: int = 1,
              ray: str | None = None, gpus_per_worker: float = 0.0, retries: int = DEFAULT_RETRIES,
              progress: bool = True) -> dict:
    """Segment every job (``vos-segment --batch``) → the summary (:func:`summarize_batch`),
    also written to ``summary_path`` (JSON). One progress bar over the videos' frames.

    On Ctrl-C the workers are stopped, the summary of the videos finished so far is written
    with ``"interrupted": true`` and KeyboardInterrupt is re-raised; a rerun skips the videos
    done (:func:`is_complete`) and redoes the others. Raises what :mod:`sdk.batch_ray` raises
    (MissingExtraError without ray)."""
    bar = Progress(len(jobs), enabled=progress)
    finished: dict[int, dict] = {}

    def on_event(event: tuple) -> None:
        if event[0] == "done":
            finished[event[1]] = event[2]
        bar.event(event)

    settings = {"model": config.model or "bundled", "method": config.method,
                "resolution": "native" if config.resolution is None else config.resolution,
                "params": {k: v for k, v in config.params.items()}, "retries": retries}
    start = time.perf_counter()
    backend = "ray" if ray else "local"
    try:
        results, backend = run_tasks(segment_job, jobs, config, workers, on_event, retries, ray, gpus_per_worker)
    except KeyboardInterrupt:
        bar.close()
        done = [finished[i] for i in sorted(finished)]
        write_summary(summary_path, {**summarize_batch(done, time.perf_counter() - start, backend, workers, settings),
                                     "videos_total": len(jobs), "interrupted": True})
        raise
    bar.close()
    summary = {**summarize_batch(results, time.perf_counter() - start, backend, workers, settings),
               "interrupted": False}
    write_summary(summary_path, summary)
    return summary


def write_summary(path: Path, summary: dict) -> None:
    """Write the summary JSON (its folder created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def default_summary(source: Path, out: Path | None) -> Path:
    """Where the summary goes without --summary: ``<--out>/vosedge-batch.json`` when --out is
    given (a DAVIS root), else ``<LIST stem>.summary.json`` beside the CSV."""
    if out is not None:
        return Path(out) / "vosedge-batch.json"
    source = Path(source)
    return source.with_name(f"{source.stem}.summary.json")
