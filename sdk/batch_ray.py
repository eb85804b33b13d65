"""The Ray backend of a batch (``vos-segment --batch LIST --ray local|auto|ADDRESS``,
``vos-eval --ray``): one actor per worker, each holding a :class:`sdk.batch.WorkerContext`
(its Segmenters, built once), fed one video at a time.

- Connection: ``local`` starts a one-machine Ray (``ray.init()``, no dashboard); ``auto``
  joins the cluster this machine is part of (``ray start --head`` / ``--address``);
  anything else is given to ``ray.init(address=...)`` (``HOST:6379``, ``ray://HOST:10001``).
  When this process is already connected (``ray.is_initialized()``, e.g. a test's
  ``ray.init(num_cpus=2)``) that connection is used and left open.
- Resources: each actor reserves 1 CPU and ``gpus_per_worker`` GPUs (fractions allowed); its
  ONNX Runtime uses 1 intra-op thread unless --param threads says otherwise.
- Retries: actors are restartable (``max_restarts=-1``) and their calls retried
  (``max_task_retries=retries``): a worker process that dies mid-video is restarted by Ray,
  rebuilds its Segmenters and redoes the video from its first frame (the earlier attempt's
  masks, listed in the video's record, are replaced). A video whose worker died more often
  than that is failed with an error saying so, and a fresh actor takes the next video.
- The model folder: the driver reads the export folder (the bundled model without --model)
  and puts its files' bytes in Ray's object store once (``ray.put``; ~12 MB for the bundled
  model). An actor uses the folder at the same path when it sees one there whose
  ``manifest.json`` has the same sha256 (a shared file system, or the same install); else it
  fetches the bytes from the object store and unpacks them into a temporary folder of its
  own (:func:`materialize_model`), on its first video (the reference comes with every call,
  so a restarted actor needs nothing of its first start). Every node must have vosedge installed (the same version:
  ``pip install 'vosedge[batch]'``); frames, masks and outputs are read and written by the
  workers, so on a cluster they must be on a shared path.

Ray is imported when a function here runs, never when sdk is imported.
"""
from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from .batch import WorkerConfig, WorkerContext
from .errors import VosEdgeError
from .extras import require_extra
from .manifest import resolve_model

FLUSH_S = 0.2           # an actor sends its frame counts to the driver at most this often


def import_ray(command: str = "vos-segment --ray"):
    """``import ray``, or :class:`~sdk.extras.MissingExtraError` (one line naming the
    ``[batch]`` extra: ``pip install 'vosedge[batch]'``) when it is not installed."""
    require_extra(command, "batch")
    import ray                              # noqa: PLC0415

    return ray


def model_files(root: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file of the export folder ``root`` (what a worker
    that does not see the folder unpacks)."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fingerprint(root: Path) -> str | None:
    """sha256 (hex) of ``root/manifest.json`` (the manifest lists every graph's sha256), or
    None when it cannot be read."""
    try:
        return hashlib.sha256((Path(root) / "manifest.json").read_bytes()).hexdigest()
    except OSError:
        return None


def materialize_model(root: str, digest: str, fetch: Callable[[], dict[str, bytes]]) -> tuple[str, str]:
    """The model folder a worker uses → (path, "path" | "object store"): ``root`` itself when
    the worker sees it with the driver's manifest (sha256 ``digest``), else the files
    ``fetch()`` returns written into a new temporary folder."""
    if fingerprint(Path(root)) == digest:
        return root, "path"
    folder = Path(tempfile.mkdtemp(prefix="vosedge-model-"))
    for name, data in fetch().items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if fingerprint(folder) != digest:
        raise VosEdgeError(f"the model fetched from Ray's object store into {folder} does not match the driver's")
    return str(folder), "object store"


class _Worker:
    """The actor class (made remote in :func:`run_ray`): a WorkerContext whose events are
    buffered and sent to the driver's queue."""

    def __init__(self, config: WorkerConfig, events):
        self.config = config
        self.events = events
        self.pending: list[tuple] = []
        self.last = time.monotonic()
        self.context: WorkerContext | None = None

    def _context(self, model: list) -> WorkerContext:
        """The worker's context, made on its first video: the model folder found or unpacked
        (``model``: [driver's path, manifest sha256, [ObjectRef of the files]]). The model comes
        with each call, not the constructor, so a restarted actor depends on no argument of
        its first start."""
        if self.context is None:
            import os

            import ray                      # noqa: PLC0415

            root, digest, ref = model
            path, source = materialize_model(root, digest, lambda: ray.get(ref[0]))
            actor = ray.get_runtime_context().get_actor_id() or f"pid {os.getpid()}"
            self.context = WorkerContext(replace(self.config, model=path), self.report,
                                         worker=f"ray actor {actor[:12]}")
            self.context.model_from = source
        return self.context

    def report(self, event: tuple) -> None:
        self.pending.append(event)
        if event[0] == "started" or time.monotonic() - self.last > FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            try:
                self.events.put_nowait_batch(self.pending)
            except Exception:               # noqa: BLE001  (a full or gone queue only costs progress)
                pass
            self.pending = []
        self.last = time.monotonic()

    def run(self, task: Callable, index: int, job, model: list) -> dict:
        context = self._context(model)
        context.job = index
        try:
            result = task(context, job)
        finally:
            self.flush()
        result["model_from"] = context.model_from
        return result


def connect(ray, address: str, workers: int) -> bool:
    """Connect to Ray as ``address`` says (module docstring) → whether this call started the
    connection (then the caller shuts it down). Raises VosEdgeError when it cannot."""
    if ray.is_initialized():
        return False
    try:
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        hint = " (start one with `ray start --head`, or use --ray local)" if address == "auto" else ""
        raise VosEdgeError(f"cannot connect to Ray at {address!r}: {' '.join(str(error).split())}{hint}") from error
    return True


def run_ray(task: Callable, jobs: Sequence, config: WorkerConfig, workers: int,
            on_event: Callable[[tuple], None], retries: int, address: str,
            gpus_per_worker: float = 0.0) -> tuple[list[dict], str]:
    """Run ``task(context, job)`` for every job on ``workers`` Ray actors → (results in job
    order, "ray <address>"). Events as :func:`sdk.batch.run_local`. Ctrl-C kills the actors
    (and the Ray this call started) and re-raises."""
    ray = import_ray()
    from ray.exceptions import RayActorError, RayError  # noqa: PLC0415
    from ray.util.queue import Queue                    # noqa: PLC0415

    started = connect(ray, address, workers)
    root = resolve_model(config.model).root
    model = [str(root), fingerprint(root), [ray.put(model_files(root))]]   # nested: not fetched unless needed
    events = Queue()
    remote = ray.remote(max_restarts=-1, max_task_retries=retries)(_Worker)
    options = {"num_cpus": 1, "num_gpus": gpus_per_worker} if gpus_per_worker else {"num_cpus": 1}

    def new_actor():
        return remote.options(**options).remote(config, events)

    actors = [new_actor() for _ in range(min(workers, len(jobs)))]
    results: dict[int, dict] = {}
    todo = list(range(len(jobs)))[::-1]
    in_flight: dict = {}
    try:
        for actor in actors:
            if todo:
                i = todo.pop()
                in_flight[actor.run.remote(task, i, jobs[i], model)] = (actor, i)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.1)
            _drain(events, on_event)
            for ref in ready:
                actor, i = in_flight.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except RayActorError as error:
                    cause = [line.strip() for line in str(error).splitlines() if line.strip()]
                    results[i] = _failed(jobs[i], f"its Ray worker died and was retried {retries} time(s) "
                                                  f"({type(error).__name__}: {cause[-1][:300] if cause else ''}); "
                                                  "not retried again")
                    ray.kill(actor, no_restart=True)
                    actor = new_actor()
                    actors.append(actor)
                except RayError as error:
                    results[i] = _failed(jobs[i], " ".join(str(error).split())[-500:])
                _drain(events, on_event)
                on_event(("done", i, results[i]))
                if todo:
                    j = todo.pop()
                    in_flight[actor.run.remote(task, j, jobs[j], model)] = (actor, j)
    except BaseException:
        for actor, _ in in_flight.values():
            ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()
        raise
    for actor in actors:
        ray.kill(actor, no_restart=True)
    try:
        events.shutdown()
    except Exception:                       # noqa: BLE001
        pass
    if started:
        ray.shutdown()
    return [results[i] for i in range(len(jobs))], f"ray {address}"


def _drain(events, on_event: Callable[[tuple], None]) -> None:
    try:
        items = events.get_nowait_batch(events.qsize())
    except Exception:                       # noqa: BLE001  (empty, or the queue actor gone)
        return
    for event in items:
        on_event(tuple(event))


def _failed(job, error: str) -> dict:
    name = getattr(job, "name", str(job))
    return {"name": name, "status": "failed", "frames": 0, "fps": None, "bank_bytes": None,
            "error": f"{name}: {error}", "worker": None, "host": None}
