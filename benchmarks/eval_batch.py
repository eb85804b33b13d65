"""vos-eval --workers N / --ray ADDRESS: the sequences of a split segmented and scored in
parallel (the local pool or Ray actors of :mod:`sdk.batch`), with the numbers of a serial run.

Each worker scores whole sequences with its own Segmenter (built once, reset per sequence)
exactly as :func:`benchmarks.eval.evaluate` does serially; the driver then adds the per-object
J and F lists and the step latencies up in the split's order, so the means (J&F, J, F,
recalls, decays: :func:`sdk.metrics.summarize`) are the serial run's, bit for bit. Only fps
differs (it is timed on other processes, which share the machine).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdk import cli
from sdk.batch import Progress, WorkerConfig, run_tasks
from sdk.errors import VosEdgeError


@dataclass(frozen=True)
class Sequence:
    """One sequence of a vos-eval split: data root, name, output root."""

    data: Path
    name: str
    out: Path


def eval_task(context, job: Sequence) -> dict:
    """Score one sequence in a worker (:func:`benchmarks.eval.evaluate`) → {"name", "objects"
    ({object id: {"J": [...], "F": [...]}}), "latencies" (s per frame), "bank_bytes",
    "method", "resolution", "providers", "warning" (the upscale warning or None), "worker",
    "host"}. Errors propagate (vos-eval stops on them, as serially)."""
    from benchmarks import eval as vos_eval     # noqa: PLC0415
    from sdk.davis import davis_sequence_dirs   # noqa: PLC0415
    from sdk.io import iter_frames, list_frames  # noqa: PLC0415

    segmenter = context.segmenter(None)
    frames, _ = davis_sequence_dirs(job.data, job.name)
    context.report(("started", context.job, len(list_frames(frames))))
    warning = None
    if segmenter.resolution is not None:
        _, rgb = next(iter(iter_frames(frames)))
        warning = cli.upscale_warning(segmenter, *rgb.shape[:2], what=f"sequence {job.name}")
    objects, latencies = vos_eval.evaluate(segmenter, job.data, job.name, job.out, progress=False,
                                           on_frame=lambda: context.report(("frames", context.job, 1)))
    return {"name": job.name, "objects": objects, "latencies": latencies, "bank_bytes": int(segmenter.bank_bytes),
            "method": segmenter.method, "resolution": segmenter.resolution, "providers": segmenter.providers,
            "warning": warning, "worker": context.worker, "host": context.host}


def evaluate_parallel(data: Path, names: list[str], out: Path, model, method, resolution, providers, params,
                      workers: int, ray_address: str | None, gpus_per_worker: float, retries: int,
                      on_result) -> str:
    """Score ``names`` on ``workers`` workers; ``on_result(result)`` is called for each
    sequence in split order once it and every sequence before it are done (so an interrupted
    run keeps a prefix of the split, as a serial one does) → the backend description.
    A failed sequence raises :class:`~sdk.errors.VosEdgeError` with its error."""
    jobs = [Sequence(data, name, out) for name in names]
    config = WorkerConfig(model=str(model) if model else None, method=method, resolution=resolution,
                          providers=tuple(providers) if providers else None, params=dict(params or {}))
    bar = Progress(len(jobs))
    finished: dict[int, dict] = {}
    given = [0]

    def on_event(event: tuple) -> None:
        bar.event(event)
        if event[0] == "done":
            finished[event[1]] = event[2]
            while given[0] in finished:
                result = finished[given[0]]
                if result.get("status") == "failed":
                    raise VosEdgeError(result["error"])
                on_result(result)
                given[0] += 1

    try:
        _, backend = run_tasks(eval_task, jobs, config, workers, on_event, retries, ray_address, gpus_per_worker)
    finally:
        bar.close()
    return backend
