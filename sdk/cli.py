"""vos-segment: segment the objects of a first-frame mask through a video or frame folder.

Also home of what every vosedge command shares: the segmenter options (`segmenter_options`),
the segmenter factory (`make_segmenter`, replaced by tests) and the translation of sdk errors
into one-line messages (`user_errors`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

import sdk
from sdk.demo import make_clip
from sdk.errors import VosEdgeError
from sdk.io import OverlayWriter, iter_frames, list_frames, read_mask, write_mask


def make_segmenter(model: Path | None, method: str | None, resolution, providers: list[str] | None):
    """Build the `sdk.Segmenter` every command runs (module-level so tests can replace it)."""
    return sdk.Segmenter(model=model, method=method, providers=providers, resolution=resolution)


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
    """Decorator adding --model, --method (unless method=False), --resolution and --providers
    to a click command."""
    options = [
        click.option("--model", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
                     help="Export folder (manifest.json + ONNX graphs) from vos-export. "
                          "Default: the bundled model."),
        click.option("--method", help=f"Memory policy: {', '.join(sdk.POLICIES)}. Default: the model's."),
        click.option("--resolution", callback=parse_resolution, metavar="PX|native",
                     help="Internal short side in px, or 'native' for the input size. "
                          "Default: the model's."),
        click.option("--providers", callback=comma_list, metavar="LIST",
                     help="Comma-separated ONNX Runtime providers in order of preference, "
                          "e.g. 'cpu' or 'cuda,cpu'. Default: CUDA if available, else CPU."),
    ]
    if not method:
        del options[1]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


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
    out: Path,
    overlay: Path | None = None,
    total: int | None = None,
) -> int:
    """Step `segmenter` through (name, rgb uint8 [H,W,3]) frames, giving `first_mask` (label
    map [H,W]) with the first; write `out/<name>.png` (DAVIS palette) per frame and, if
    `overlay` is set, an MP4 of the blended masks -> number of frames segmented."""
    count = 0
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(OverlayWriter(overlay)) if overlay else None
        for name, rgb in tqdm(frames, total=total, unit="frame", desc="vos-segment"):
            labels = segmenter.step(rgb, first_mask if count == 0 else None)
            write_mask(out / f"{name}.png", labels)
            if writer:
                writer.write(rgb, labels)
            count += 1
    return count


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


@click.command(epilog=EXAMPLES)
@click.option("--frames", type=click.Path(path_type=Path), metavar="DIR|VIDEO",
              help="Folder of .jpg/.png frames (sorted by name) or a video file.")
@click.option("--mask", type=click.Path(path_type=Path), metavar="PNG",
              help="Mask of the objects in the first frame.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Output folder, one palette PNG per frame. With --demo: ./vosedge-demo.")
@click.option("--overlay", type=click.Path(dir_okay=False, path_type=Path), metavar="MP4",
              help="Also write the frames with the masks blended in as an MP4 video.")
@click.option("--demo", is_flag=True,
              help="Segment a synthetic clip made by code (two moving textured objects).")
@segmenter_options()
def main(frames, mask, out, overlay, demo, model, method, resolution, providers):
    """Segment the objects of a first-frame mask in every frame of a video (semi-supervised
    video object segmentation, STCN-family network with a bounded memory bank)."""
    if demo:
        if frames or mask:
            raise click.UsageError("--demo makes its own clip: drop --frames and --mask")
        out = out or Path("vosedge-demo")
        overlay = overlay or out / "overlay.mp4"
    elif not (frames and mask and out):
        raise click.UsageError("--frames, --mask and --out are required (or try --demo)")
    with user_errors():
        if demo:
            rgb, labels = make_clip()
            stream, first_mask, total = ((f"{i:05d}", f) for i, f in enumerate(rgb)), labels[0], len(rgb)
        else:   # inputs first: a bad path fails before any model is loaded
            stream, first_mask, total = iter_frames(frames), read_mask(mask), len(list_frames(frames))
        segmenter = make_segmenter(model, method, resolution, providers)
        count = segment(segmenter, stream, first_mask, out, overlay, total)
    click.echo(f"{count} masks written to {out}/")
    if overlay:
        click.echo(f"overlay video: {overlay}")
