"""The command-line side of a batch: the options ``vos-segment --batch`` and ``vos-eval``
share (:func:`batch_options`), and ``vos-segment --batch LIST`` itself (:func:`segment_batch`):
usage errors, the one-line messages, the summary table and the exit code (0: every video ok
or already complete; 1: some failed; 130: Ctrl-C)."""
from __future__ import annotations

from pathlib import Path

import click

from .batch import DEFAULT_RETRIES, WorkerConfig, default_summary, load_jobs, run_batch
from .errors import VosEdgeError
from .extras import require_extra

EXIT_SOME_FAILED = 1


def _positive(ctx, param, value):
    if value is not None and value < 1:
        raise click.BadParameter("must be at least 1")
    return value


def batch_options(ray_what: str = "the videos"):
    """Decorator adding --workers, --ray, --gpus-per-worker and --retries to a click command."""
    options = [
        click.option("--workers", type=int, default=1, show_default=True, callback=_positive, metavar="N",
                     help=f"Worker processes (or Ray actors) sharing {ray_what}; each builds its ONNX Runtime "
                          "sessions once. Without --param threads each gets the machine's cores shared out "
                          "(on Ray: 1 thread)."),
        click.option("--ray", "ray_address", metavar="local|auto|ADDRESS",
                     help="Run the workers as Ray actors: 'local' starts a one-machine Ray, 'auto' joins the "
                          "running cluster (ray start), else ray.init(address=ADDRESS). Needs the [batch] "
                          "extra: pip install 'vosedge[batch]'."),
        click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     metavar="F", help="GPUs each Ray actor reserves (fractions share one; with --ray)."),
        click.option("--retries", type=click.IntRange(min=0), default=DEFAULT_RETRIES, show_default=True,
                     metavar="N", help="Times a video is retried when its worker process dies."),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def check_batch_options(workers: int, ray_address: str | None, gpus_per_worker: float,
                        command: str = "vos-segment --ray") -> None:
    """Refuse --gpus-per-worker without --ray (usage error) and --ray without ray installed
    (one line naming the [batch] extra, exit code 1), before anything is read or written."""
    if gpus_per_worker and not ray_address:
        raise click.UsageError("--gpus-per-worker is for Ray actors: add --ray local|auto|ADDRESS")
    if ray_address:
        try:
            require_extra(command, "batch")
        except VosEdgeError as error:
            raise click.ClickException(str(error)) from error


def segment_batch(source: Path, out: Path | None, split: str, summary: Path | None, overwrite: bool,
                  workers: int, ray_address: str | None, gpus_per_worker: float, retries: int,
                  model, method, resolution, providers, params, single: dict) -> None:
    """``vos-segment --batch SOURCE``: every video of the CSV or DAVIS split, then one line per
    failed video and a last line of counts; exits 1 when a video failed, 130 on Ctrl-C.
    ``single``: the single-video options given (--frames, --mask, --overlay, --demo,
    --on-bad-frame skip), refused with --batch."""
    from . import cli                       # noqa: PLC0415

    given = [name for name, value in single.items() if value]
    if given:
        raise click.UsageError(f"--batch takes its videos from {source}: drop {', '.join(given)}")
    check_batch_options(workers, ray_address, gpus_per_worker)
    with cli.user_errors():
        for scope in {method} | _row_methods(source):
            cli.check_method_params(model, scope, params or {})
        jobs = load_jobs(source, split, out)
        summary_path = summary or default_summary(source, out if Path(source).is_dir() else None)
        config = WorkerConfig(model=str(model) if model else None, method=method, resolution=resolution,
                              providers=tuple(providers) if providers else None, params=dict(params or {}),
                              overwrite=overwrite, kill_at=WorkerConfig.kill_from_environment())
        try:
            result = run_batch(jobs, config, summary_path, workers, ray_address, gpus_per_worker, retries)
        except KeyboardInterrupt:
            click.echo(f"\ninterrupted: the videos finished are in {summary_path}; a rerun skips them "
                       "and redoes the others", err=True)
            raise SystemExit(cli.EXIT_INTERRUPTED) from None
    for video in result["videos"]:
        if video["status"] == "failed":
            click.echo(f"failed: {video['name']}: {video['error']}", err=True)
    click.echo(f"{result['videos_ok']} video(s) segmented, {result['videos_skipped']} already complete (skipped), "
               f"{result['videos_failed']} failed; {result['frames_segmented']} frames in "
               f"{result['wall_seconds']:.1f} s on {result['backend']} with {workers} worker(s); "
               f"summary: {summary_path}")
    if result["videos_failed"]:
        raise SystemExit(EXIT_SOME_FAILED)


def _row_methods(source: Path) -> set:
    """The methods named in a CSV's method column (for the --param checks); empty otherwise."""
    from .batch import read_csv_jobs        # noqa: PLC0415

    if not Path(source).is_file():
        return set()
    try:
        return {job.method for job in read_csv_jobs(source) if job.method}
    except VosEdgeError:
        return set()                        # the CSV's own error is raised by load_jobs
