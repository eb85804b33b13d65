"""vos-segment: segment the objects of a first-frame mask through a video or frame folder.

Also home of what every vosedge command shares: the segmenter options (`segmenter_options`),
the segmenter factory (`make_segmenter`, replaced by tests) and the translation of sdk errors
into one-line messages (`user_errors`).
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import itertools
import secrets
import shlex
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

import sdk
from sdk.batch_cli import batch_options, segment_batch
from sdk.demo import make_clip
from sdk.errors import BadFrameError, InputError, ParameterError, VosEdgeError
from sdk.io import (
    check_mask_size,
    frame_files,
    iter_frames,
    list_frames,
    read_mask,
    write_mask,
)
from sdk.manifest import resolve_model
from sdk.outputs import OutputFolder
from sdk.overlay import OverlayWriter, check_overlay_path
from sdk.params import (
    MIN_FEATURE_ROWS,
    SEGMENTER_OPTIONS,
    parameter_error,
    parse_assignments,
    segmenter_option,
)
from sdk import dmn_aoa
from sdk.policies import make_policy


def make_segmenter(model: Path | None, method: str | None, resolution, providers: list[str] | None,
                   params: dict | None = None):
    """Build the `sdk.Segmenter` every command runs (module-level so tests can replace it);
    `params` ({name: value}, from --param: policy parameters, top_k, threads, temporary_memory)
    go to it as keyword arguments.

    A value the Segmenter refuses (:class:`~sdk.errors.ParameterError`: a bad --param,
    --method or --resolution) is raised as a click usage error (exit code 2) naming the
    option, in the command line's terms (:func:`usage_error`); it is found before any graph is
    loaded. Other sdk errors propagate."""
    try:
        if params and any("." in name for name in params):
            params = params_for(method or resolve_model(model).method, params)
        return sdk.Segmenter(model=model, method=method, providers=providers, resolution=resolution,
                             **(params or {}))
    except ParameterError as error:
        raise usage_error(error, model) from error


def usage_error(error: ParameterError, model: Path | None = None) -> click.BadParameter:
    """The click usage error (exit code 2) for a :class:`~sdk.errors.ParameterError` of the
    Segmenter or a policy, naming the option it came from and worded with the command line's
    values: a too-small resolution says ``PX`` ≥ the model's minimum or ``native`` (not the
    API's ``'manifest'`` / None); a policy that does not take a --param says which policies
    take it."""
    name = getattr(error, "parameter", None)
    option = _OWN_OPTION.get(name, "--param")
    message = str(error)
    if name == "resolution":
        stride = resolve_model(model).stride
        message = (f"{error.value} px is too small for this model: the internal short side must be at least "
                   f"{MIN_FEATURE_ROWS * stride} px ({MIN_FEATURE_ROWS} × its stride {stride}: with fewer feature "
                   "rows the object is lost); give PX ≥ that, or 'native' for the input size "
                   "(without --resolution: the model's default)")
    elif option == "--param" and "takes no parameter" in message:
        takers = policy_parameters().get(name, [])
        if takers:
            message += f" ({name} is a parameter of {', '.join(takers)}: choose one with --method)"
    return click.BadParameter(message, param_hint=f"'{option}'")


def check_method_params(model: Path | None, method: str | None, params: dict) -> None:
    """Check the --param values against the method the run will use (``method``, else the
    model's), before any input is read or any model is loaded: whether the policy takes each
    parameter first, then its value's range (:func:`sdk.policies.make_policy`). Raises the
    click usage error of :func:`usage_error`; a model that cannot be read raises its
    :class:`~sdk.errors.ManifestError` (only read when --method is absent)."""
    if not any(name not in SEGMENTER_PARAMS for name in params):
        return
    try:
        method = method or resolve_model(model).method
        own = {name: value for name, value in params_for(method, params).items() if name not in SEGMENTER_PARAMS}
        make_policy(dmn_aoa.policy_of(method), **own)
    except ParameterError as error:
        raise usage_error(error, model) from error


# Segmenter arguments with an option of their own (not settable with --param), and those --param may set
_OWN_OPTION = {"model": "--model", "method": "--method", "resolution": "--resolution", "providers": "--providers"}
SEGMENTER_PARAMS = SEGMENTER_OPTIONS


def policy_parameters() -> dict[str, list[str]]:
    """{parameter name: the memory policies that take it}, ``quality_gate`` (every policy)
    included, in :data:`sdk.POLICIES` order."""
    takers: dict[str, list[str]] = {}
    for name, cls in sdk.POLICIES.items():
        for parameter in [*inspect.signature(cls).parameters, "quality_gate"]:
            takers.setdefault(parameter, []).append(name)
    return takers


def params_for(method: str, params: dict) -> dict:
    """The --param entries that apply to `method`: every unscoped ``NAME`` and each
    ``METHOD.NAME`` of this method (as ``NAME``); scoped entries of other methods are dropped.
    Raises :class:`~sdk.errors.ParameterError` when a name is given both ways."""
    out = {name: value for name, value in params.items() if "." not in name}
    for name, value in params.items():
        scope, _, sub = name.partition(".")
        if sub and scope == method:
            if sub in out:
                raise parameter_error(f"{sub} is given both as --param {sub}=... and --param {name}=...",
                                      "--param", name, value)
            out[sub] = value
    return out


def check_param(name: str, value, methods: Iterable[str] | None = None) -> None:
    """Refuse a --param that no method could take, before any model is loaded: a Segmenter
    option (--method ...), a name no policy takes, or a bad value of a Segmenter option
    (``threads=0``) or of ``quality_gate`` (every policy takes it: ``quality_gate=2``, NaN).
    With `methods`, each of them must take it, with a value in its range (vos-bench runs them
    all with the same parameters; :func:`sdk.policies.make_policy` checks whether a policy
    takes a parameter before its value). Without `methods` the value of a parameter only some
    policies take (``sigma=1.5``, ``k=2.5``) is left to :func:`check_method_params`, which
    knows the method: for every_k, ``sigma`` is refused as a parameter it does not take, not
    for qdmn's range. ``METHOD.NAME`` is checked against that method alone (which must be
    among `methods`). Raises :class:`~sdk.errors.ParameterError`."""
    scope, _, sub = name.partition(".")
    if sub:
        if scope not in sdk.POLICIES:
            raise parameter_error(f"--param {name}: {scope!r} is not a memory policy; known: "
                                  f"{', '.join(sdk.POLICIES)}", "--param", name, value)
        if methods is not None and scope not in methods:
            raise parameter_error(f"--param {name} is for {scope}, which is not among the methods run "
                                  f"({', '.join(methods)})", "--param", name, value)
        make_policy(scope, **{sub: value})
        return
    if name in _OWN_OPTION:
        raise parameter_error(f"{name} has its own option: use {_OWN_OPTION[name]}, not --param {name}=...",
                              "--param", name, value)
    if name in SEGMENTER_PARAMS:
        segmenter_option(name, value)
        return
    takers = policy_parameters()
    if name not in takers:
        known = "; ".join(f"{m}: {', '.join([*inspect.signature(cls).parameters, 'quality_gate'])}"
                          for m, cls in sdk.POLICIES.items())
        raise parameter_error(f"no memory policy takes a parameter {name!r}; the policies take: {known}; "
                              f"the Segmenter: {', '.join(SEGMENTER_PARAMS)}", "--param", name, value)
    if methods is not None:
        for method in methods:
            make_policy(dmn_aoa.policy_of(method), **{name: value})
    elif len(takers[name]) == len(sdk.POLICIES):      # every policy takes it: its range is the method's
        make_policy(takers[name][0], **{name: value})


def parse_params(ctx, param, values: tuple[str, ...]) -> dict:
    """Click callback of --param (repeatable): ('sigma=0.7', 'max_frames=20') -> {'sigma': 0.7,
    'max_frames': 20}. Values: int, float, true/false, none, else a string (quotes optional;
    :func:`sdk.params.parse_value`). Each is checked at once as far as it can be without the
    method (:func:`check_param`; the rest: :func:`check_method_params`); a bad one is a usage
    error (exit code 2) naming it."""
    try:
        params = parse_assignments(values)
        for name, value in params.items():
            check_param(name, value)
    except ParameterError as error:
        raise click.BadParameter(str(error)) from error
    return params


def param_option():
    """The --param NAME=VALUE option (repeatable) → ``params`` ({name: value})."""
    return click.option("--param", "params", multiple=True, callback=parse_params, metavar="NAME=VALUE",
                        help="Memory-policy parameter, repeatable: e.g. --param k=3 (every_k, lfu), --param "
                             "sigma=0.7 --param beta=10 (qdmn), --param max_frames=20, --param quality_gate=0.8 "
                             "(any policy); METHOD.NAME=VALUE for one policy only (--param every_k.max_frames=10); "
                             "also top_k, threads, temporary_memory. Values: int, float, "
                             "true/false, none, text. Default: the model's policy_defaults.")


def parse_resolution(ctx, param, value: str | None):
    """Click callback of every --resolution: 'native' -> None (input size), a positive integer
    -> that short side in px, absent -> 'manifest' (the model's default)."""
    if value is None:
        return "manifest"
    if value == "native":
        return None
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise click.BadParameter("expected a positive integer or 'native'")


def comma_list(ctx, param, value: str | None) -> list[str] | None:
    """Click callback: 'a, b,c' -> ['a', 'b', 'c']; absent -> None."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def segmenter_options(method: bool = True):
    """Decorator adding --model, --method (unless method=False), --resolution, --providers
    and --param (→ ``params``, a dict: :func:`param_option`) to a click command."""
    options = [
        click.option("--model", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
                     help="Export folder (manifest.json + ONNX graphs) from vos-export. "
                          "Default: the bundled model."),
        click.option("--method", help=f"Memory policy: {', '.join(sdk.POLICIES)}; or {dmn_aoa.METHOD} (DMN-AOA "
                                      "on every_k memory; needs a model with its graphs). Default: the model's."),
        click.option("--resolution", callback=parse_resolution, metavar="PX|native",
                     help="Internal short side in px, or 'native' for the input size. "
                          "Default: the model's."),
        click.option("--providers", callback=comma_list, metavar="LIST",
                     help="Comma-separated ONNX Runtime providers in order of preference, "
                          "e.g. 'cpu' or 'cuda,cpu'. Default: CUDA if available, else CPU."),
        param_option(),
    ]
    if not method:
        del options[1]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def run_settings(segmenter, model: Path | None = None) -> str:
    """What a run used, for the line a command prints: 'method every_k, 480 px internal,
    float32' (the internal short side, or 'native resolution' for the input size; the
    manifest's ``precision.dtype``: float32, float16 or int8)."""
    resolution = segmenter.resolution
    size = "native resolution (input size)" if resolution is None else f"{resolution} px internal"
    manifest = getattr(segmenter, "manifest", None)
    try:
        precision = (manifest or resolve_model(model)).precision["dtype"]
    except VosEdgeError:                    # a stand-in segmenter without a readable model
        precision = "precision unknown"
    return f"method {segmenter.method}, {size}, {precision}"


def upscale_warning(segmenter, height: int, width: int, what: str = "the input") -> str | None:
    """The one-line warning for input frames (height × width px) whose short side is below the
    segmenter's internal resolution, i.e. that are upscaled for the network (a 240p input at
    480 px internal); None when they are not (or the resolution is native)."""
    resolution, short = segmenter.resolution, min(height, width)
    if resolution is None or short >= resolution:
        return None
    return (f"warning: {what} is {width}x{height}, its short side {short} px below the internal resolution "
            f"{resolution} px: frames are upscaled ×{resolution / short:.2g} for the network "
            f"(--resolution {short} or native runs at the input size)")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn sdk errors and I/O errors into a one-line click error (exit code 1)."""
    try:
        yield
    except (VosEdgeError, OSError) as error:
        raise click.ClickException(str(error)) from error


def segment(
    segmenter,
    frames: Iterable[tuple[str, np.ndarray]],
    first_mask: np.ndarray,
    out: OutputFolder,
    overlay: Path | None = None,
    total: int | None = None,
    skipped: list | None = None,
    names: list[str] | None = None,
    progress: bool = True,
) -> int:
    """Step `segmenter` through (name, rgb uint8 [H,W,3]) frames, giving `first_mask` (label
    map [H,W]) with the first; write `<out>/<name>.png` (DAVIS palette) per frame, recorded in
    `out` as it is written, and, if `overlay` is set, an H.264 MP4 of the blended masks
    (:class:`~sdk.overlay.OverlayWriter`) -> number of masks written.

    With `skipped` (a list: the ``--on-bad-frame skip`` mode), a frame whose size differs from
    the first frame's is appended to it as a :class:`~sdk.errors.BadFrameError` and not
    segmented; without it that is an :class:`~sdk.errors.InputError` naming the frame. Errors of
    ``segmenter.step`` are re-raised with the frame's name and index; every mask written before
    stays on disk (and in the record). `names` (the source's frame names in order) gives each
    frame its index in the source, skipped frames counted; without it frames are counted as
    they come. ``progress=False``: no progress bar (a batch worker; the batch has one)."""
    count = 0
    size = None
    position = {name: i for i, name in enumerate(names or [])}
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(OverlayWriter(overlay)) if overlay else None
        for seen, (name, rgb) in enumerate(tqdm(frames, total=total, unit="frame", desc="vos-segment",
                                                     disable=not progress)):
            index = position.get(name, seen)
            if size is not None and rgb.shape != size:
                problem = (f"frame {index} ({name}) is {rgb.shape[1]}x{rgb.shape[0]}, the first frame "
                           f"{size[1]}x{size[0]}: every frame of a video must have one size")
                if skipped is None:
                    raise InputError(problem)
                skipped.append(BadFrameError(problem, index=index, name=name))
                continue
            if count == 0 and skipped and skipped[0].index == 0:
                raise BadFrameError(f"the first frame, which the mask annotates, is unreadable: {skipped[0]}",
                                    skipped[0].path, 0, skipped[0].name)
            size = size or rgb.shape
            try:
                labels = segmenter.step(rgb, first_mask if count == 0 else None)
            except VosEdgeError as error:
                raise _at_frame(error, index, name) from error
            write_mask(out.folder / f"{name}.png", labels)
            out.add(f"{name}.png")
            if writer:
                writer.write(rgb, labels)
            count += 1
    return count


def _peek(frames: Iterable[tuple[str, np.ndarray]]) -> tuple[Iterator[tuple[str, np.ndarray]], tuple | None]:
    """(the same frames, the first of them or None when there are none); reads one frame."""
    frames = iter(frames)
    first = next(frames, None)
    return (frames if first is None else itertools.chain([first], frames)), first


def _at_frame(error: VosEdgeError, index: int, name: str) -> VosEdgeError:
    """The same kind of error, its message prefixed with the frame it happened at."""
    message = f"frame {index} ({name}): {error}"
    try:
        return type(error)(message)
    except TypeError:       # a subclass with other required arguments
        return VosEdgeError(message)


EXAMPLES = """\b
Examples:
  vos-segment --demo
  vos-segment --frames clip.mp4 --mask first.png --out masks/ --overlay clip-masks.mp4
  vos-segment --frames DAVIS/JPEGImages/480p/blackswan \\
              --mask DAVIS/Annotations/480p/blackswan/00000.png --out out/blackswan \\
              --method first_latest --resolution 480 --providers cpu

\b
The mask is a DAVIS palette PNG (pixel value = object id, 0 = background, as written by
DAVIS tools) or an RGB PNG in the DAVIS colours, of the same size as the frames. Output
masks are named after the frames (file stems; 00000, 00001, ... for a video).
"""


def demo_folder() -> Path:
    """A new folder name for a --demo run without --out: ``vosedge-demo-<UTC time>-<random>``
    in the system's temporary folder (:func:`tempfile.gettempdir`, TMPDIR), not created (the
    run creates it): never the current directory, never an earlier demo's folder."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / f"vosedge-demo-{stamp}-{secrets.token_hex(3)}"


def _overlay_path(ctx, param, value: Path | None) -> Path | None:
    """Click callback of --overlay: refuse a name not ending in .mp4 (the video is always H.264
    MP4), before any frame is read or anything written."""
    try:
        return value and check_overlay_path(value)
    except InputError as error:
        raise click.BadParameter(str(error)) from error


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}     # every vosedge command takes -h


@click.command(context_settings=CONTEXT_SETTINGS, epilog=EXAMPLES)
@click.option("--frames", type=click.Path(path_type=Path), metavar="DIR|VIDEO",
              help="Folder of .jpg/.png frames (sorted by name; hidden files ignored) or a video file.")
@click.option("--mask", type=click.Path(path_type=Path), metavar="PNG",
              help="Mask of the objects in the first frame (formats: see below).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Output folder, one palette PNG per frame; must be empty or hold an earlier "
                   "vos-segment run (then --overwrite). With --demo, default: a new folder "
                   "vosedge-demo-<time>-<id> in the system's temporary folder (TMPDIR), printed at the end.")
@click.option("--overlay", type=click.Path(dir_okay=False, path_type=Path), metavar="MP4", callback=_overlay_path,
              help="Also write the frames with the masks blended in as a video: H.264 in MP4 (browsers play "
                   "it); the name must end in .mp4.")
@click.option("--overwrite", is_flag=True,
              help="Replace what an earlier vos-segment run wrote in --out (and the --overlay file); "
                   "other files are left alone.")
@click.option("--on-bad-frame", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="A truncated or corrupt frame (or one of another size): stop with an error naming it "
                   "(masks written so far are kept), or skip it (no mask for it, nothing from it enters "
                   "memory; listed at the end).")
@click.option("--demo", is_flag=True,
              help="Segment a synthetic clip made by code (two moving textured objects), with an "
                   "overlay video; each run writes a fresh folder unless --out is given.")
@click.option("--batch", type=click.Path(path_type=Path), metavar="CSV|ROOT",
              help="Many videos in one run: a CSV with columns frames,mask,out[,method] (paths relative to "
                   "it), or a DAVIS-layout root (every sequence of --split, masks into --out/<sequence>/). "
                   "A rerun skips the videos already complete; see README 'Batch use'.")
@click.option("--split", default="val", show_default=True, help="With --batch ROOT: ImageSets/<split>.txt.")
@click.option("--summary", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="With --batch: the per-video summary JSON. Default: --out/vosedge-batch.json (a DAVIS "
                   "root), else <CSV stem>.summary.json beside the CSV.")
@batch_options()
@segmenter_options()
def main(frames, mask, out, overlay, overwrite, on_bad_frame, demo, model, method, resolution, providers,
         params=None, batch=None, split="val", summary=None, workers=1, ray_address=None, gpus_per_worker=0.0,
         retries=2):
    """Segment the objects of a first-frame mask in every frame of a video (semi-supervised
    video object segmentation, STCN-family network with a bounded memory bank), or of many
    videos (--batch)."""
    if batch is not None:
        segment_batch(batch, out, split, summary, overwrite, workers, ray_address, gpus_per_worker, retries,
                      model, method, resolution, providers, params,
                      {"--frames": frames, "--mask": mask, "--overlay": overlay, "--demo": demo,
                       "--on-bad-frame skip": on_bad_frame == "skip"})
        return
    if workers != 1 or ray_address or gpus_per_worker:
        raise click.UsageError("--workers, --ray and --gpus-per-worker go with --batch")
    if demo:
        if frames or mask:
            raise click.UsageError("--demo makes its own clip: drop --frames and --mask")
        out = out or demo_folder()
        overlay = overlay or out / "overlay.mp4"
    elif not (frames and mask and out):
        raise click.UsageError("--frames, --mask and --out are required (or try --demo)")
    skipped = [] if on_bad_frame == "skip" else None
    folder = OutputFolder(out)
    count = 0
    with user_errors(), folder:
        check_method_params(model, method, params or {})     # usage errors first, then the inputs
        if demo:
            rgb, labels = make_clip()
            names = [f"{i:05d}" for i in range(len(rgb))]
            stream, first_mask = zip(names, rgb), labels[0]
        else:   # inputs first: a bad path fails before any model is loaded or any file removed
            names = list_frames(frames)
            stream, first_mask = iter_frames(frames, skipped), read_mask(mask)
            ignored = frame_files(frames)[1] if frames.is_dir() else []
            if ignored:
                click.echo(f"ignored {len(ignored)} hidden file(s) in {frames}/: "
                           f"{', '.join(p.name for p in ignored[:5])}{', …' if len(ignored) > 5 else ''}", err=True)
        inside = overlay is not None and overlay.resolve().parent == out.resolve()
        planned = [f"{n}.png" for n in names] + ([overlay.name] if inside else [])
        if overlay is not None and not inside and overlay.exists() and not overwrite:
            raise click.UsageError(f"--overlay {overlay} exists: pass --overwrite to replace it")
        folder.prepare(overwrite, planned, check_only=True)    # refused before the model loads
        try:
            stream, first = _peek(stream)     # the mask against the first frame, before the model loads
            if first is not None and not (skipped and skipped[0].index == 0):
                check_mask_size(first_mask, first[1], "(--demo)" if demo else mask, first[0])
            segmenter = make_segmenter(model, method, resolution, providers, params)
            warning = first and upscale_warning(segmenter, *first[1].shape[:2])
            if warning:
                click.echo(warning, err=True)
            removed = folder.prepare(overwrite, planned, command=shlex.join(["vos-segment", *sys.argv[1:]]))
            if removed:
                click.echo(f"removed {removed} file(s) of the earlier run in {out}/", err=True)
            if inside:
                folder.add(overlay.name)
            count = segment(segmenter, stream, first_mask, folder, overlay, len(names), skipped, names)
        except KeyboardInterrupt:
            folder.close()
            click.echo(f"\ninterrupted: {folder.written} file(s) written to {out}/ are kept", err=True)
            raise SystemExit(EXIT_INTERRUPTED) from None
        except (VosEdgeError, OSError) as error:
            kept = folder.masks
            hint = " (--on-bad-frame skip segments past bad frames)" if isinstance(error, BadFrameError) else ""
            raise click.ClickException(f"{error}; the {kept} mask(s) already written to {out}/ are kept{hint}"
                                       if kept else f"{error}{hint}") from error
    if overlay:
        click.echo(f"overlay video: {overlay}")
    click.echo(f"{count} masks written to {out}/ ({run_settings(segmenter, model)})")
    if skipped:                             # listed at the end (--on-bad-frame skip)
        click.echo(f"{len(skipped)} frame(s) skipped (no mask written): "
                   + "; ".join(f"{e.name or e.index}: {e}" for e in skipped))
