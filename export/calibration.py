"""Real frames for int8 calibration and the parity check, and the graph feeds the float32
export itself produces on them (no torch: numpy, onnxruntime and the sdk).

Calibration data of a static quantisation must be what the graphs see in use (ONNX Runtime,
"Quantize ONNX models", https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html:
the activation ranges come from running the float model on a representative data set). For
the image graphs that is real video frames at the sdk's internal resolution; for every other
graph it is what the float32 export computes from them while it segments a video — the masks
it predicts (value encoder), its memory bank (readout), its readouts (decoder), its QAM
inputs and RDE folds (heads). :func:`record_feeds` therefore runs the float32 export through
:class:`sdk.Segmenter` on the clips and records the inputs of every graph call by wrapping
that Segmenter instance's ``Graphs.run`` (nothing of the sdk is changed).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdk.davis import davis_sequence_dirs, read_split
from sdk.errors import VosEdgeError
from sdk.io import iter_frames, list_frames, read_mask
from sdk.policies import POLICIES
from sdk.runtime import Graphs

from .errors import CalibrationError

# <repo>/../shared/data/davis2016-240p: the project's data folder next to the checkout
DEFAULT_CALIBRATION_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016-240p"
CALIBRATION_SPLIT, PARITY_SPLIT = "train", "val"
# policies tried in this order to cover every graph of an export: every_k runs the four core
# graphs, qdmn adds prior_enhance + qam, rde the SAM folds (sam_key, sam_value)
COVER_ORDER = ("every_k", "qdmn", "rde", "qpm", "first_latest", "lfu")


@dataclass(frozen=True)
class Clip:
    """A video to play through a Segmenter: ``frames`` RGB uint8 [H,W,3], the label map uint8
    [H,W] of ``frames[0]`` (``mask``, at least one object) and the sequence ``name``."""

    name: str
    frames: tuple
    mask: np.ndarray


def load_clips(root: str | Path, split: str, sequences: int, frames: int, option: str) -> list[Clip]:
    """Up to ``sequences`` clips of ``frames`` consecutive frames each from the DAVIS-layout
    folder ``root`` (:mod:`sdk.davis`), the sequences spread evenly over
    ``ImageSets/<split>.txt`` (not just its first, alphabetical ones: more kinds of scene),
    each clip starting at the sequence's first frame whose annotation holds an object.

    Raises :class:`~export.errors.CalibrationError` naming ``root`` and ``option`` (the CLI
    option that sets it) when the folder, its split file or its frames are missing or
    unreadable, or no sequence has an annotated frame with an object.
    """
    root = Path(root)
    if not root.is_dir():
        raise CalibrationError(f"no data folder {root}: give a DAVIS-layout folder with {option} ROOT "
                               "(e.g. ../shared/data/davis2016-240p)")
    try:
        names = read_split(root, split)
    except VosEdgeError as exc:
        raise CalibrationError(f"{exc}; give a DAVIS-layout folder with {option} ROOT") from exc
    count = min(sequences, len(names))
    picked = [names[round(i * (len(names) - 1) / max(1, count - 1))] for i in range(count)]
    clips = []
    for name in dict.fromkeys(picked):
        try:
            frames_dir, masks_dir = davis_sequence_dirs(root, name)
            stems = list_frames(frames_dir)
            start = next((i for i, stem in enumerate(stems) if (masks_dir / f"{stem}.png").is_file()
                          and read_mask(masks_dir / f"{stem}.png").any()), None)
            if start is None:
                continue
            mask = read_mask(masks_dir / f"{stems[start]}.png")
            rgb = tuple(f for _, f in itertools.islice(iter_frames(frames_dir), start, start + frames))
        except (VosEdgeError, OSError) as exc:
            raise CalibrationError(f"{root}: sequence {name!r} cannot be read ({exc}); fix it or give another "
                                   f"folder with {option} ROOT") from exc
        clips.append(Clip(name, rgb, mask))
    if not clips:
        raise CalibrationError(f"{root}: no sequence of {split}.txt has an annotated frame with an object; give "
                               f"another folder with {option} ROOT")
    return clips


def covering_methods(manifest, graphs) -> list[str]:
    """Memory policies whose runs together call every graph of ``graphs`` that the export can
    run: the export's default ``method`` first (what the graphs see in use), then those of
    :data:`COVER_ORDER` that run a graph not covered yet (every policy runs the four core
    graphs). A graph no policy runs on this export (e.g. SAM with per-object keys) is left out."""
    core = {"key_encoder", "value_encoder", "readout", "decoder"}
    always = {"prior_enhance"} if manifest.inference["prior_enhance"] == "always" else set()
    wanted, covered, methods = set(graphs), set(), []
    for method in dict.fromkeys((manifest.method, *COVER_ORDER)):
        requires = set(POLICIES[method].requires)
        if not requires <= set(manifest.graphs) or (
                method == "rde" and manifest.inference["memory_keys"] == "per_object"):   # refused by the sdk
            continue
        runs = core | always | requires
        if not methods or wanted & runs - covered:
            methods.append(method)
            covered |= runs
    return methods


class FeedRecorder:
    """Wraps ``Graphs.run`` of one Segmenter instance and keeps, per graph, a uniform random
    sample of at most ``samples`` of the feeds it was called with ({input name: array copy},
    reservoir sampling, Vitter's algorithm R, ``seed``): memory stays bounded however long the
    clips are. ``seen[graph]`` counts the calls."""

    def __init__(self, samples: int, seed: int = 0):
        self.samples, self.rng = samples, np.random.default_rng(seed)
        self.feeds: dict[str, list[dict]] = {}
        self.seen: dict[str, int] = {}

    def attach(self, segmenter) -> None:
        """Record every graph call of ``segmenter`` from now on (its :class:`sdk.runtime.Graphs`
        instance's ``run``, through which ``run_named`` goes too). Raises TypeError when the
        Segmenter holds no Graphs instance."""
        graphs = next((v for v in vars(segmenter).values() if isinstance(v, Graphs)), None)
        if graphs is None:
            raise TypeError("this sdk.Segmenter holds no sdk.runtime.Graphs instance to record the feeds of")
        run = graphs.run

        def recording_run(name, feeds):
            self.add(name, feeds)
            return run(name, feeds)

        graphs.run = recording_run

    def add(self, name: str, feeds: dict) -> None:
        """Count one call of graph ``name`` and keep a copy of ``feeds`` ({input: array}) if
        reservoir sampling selects it (the k-th call replaces a random kept one with
        probability ``samples``/k)."""
        n = self.seen.get(name, 0)
        self.seen[name] = n + 1
        kept = self.feeds.setdefault(name, [])
        slot = n if n < self.samples else int(self.rng.integers(0, n + 1))
        if slot < self.samples:
            copy = {k: np.array(v, copy=True) for k, v in feeds.items()}   # the sdk reuses its buffers
            if slot < len(kept):
                kept[slot] = copy
            else:
                kept.append(copy)


def play(export, clips: list[Clip], method: str, resolution, recorder: FeedRecorder | None = None,
         providers="cpu") -> list[list[np.ndarray]]:
    """Segment each clip with ``sdk.Segmenter(export, method, resolution=resolution)`` →
    per clip the label maps uint8 [H,W] of its frames (the first is the given mask's
    objects); feeds are recorded into ``recorder`` if given."""
    from sdk import Segmenter

    segmenter = Segmenter(export, method=method, providers=providers, resolution=resolution)
    if recorder is not None:
        recorder.attach(segmenter)
    out = []
    for clip in clips:
        segmenter.reset()
        out.append([segmenter.step(clip.frames[0], clip.mask)] + [segmenter.step(f) for f in clip.frames[1:]])
    return out


def record_feeds(export, clips: list[Clip], graphs, resolution, samples: int, seed: int = 0) -> tuple[dict, dict, list]:
    """Feeds of each graph in ``graphs`` while the float32 ``export`` segments ``clips`` at
    internal short side ``resolution`` (px; None = native) with the policies that run them
    (:func:`covering_methods`) → ({graph: [feeds, …] ≤ ``samples``}, {graph: calls seen},
    methods played). Feeds are the Segmenter's own: float32 images [1,3,H,W] normalised as the
    manifest says, masks [N,2,H,W] of its predictions, its memory bank and readouts."""
    from sdk.manifest import load_manifest

    manifest = load_manifest(export)
    recorder = FeedRecorder(samples, seed)
    methods = covering_methods(manifest, graphs)
    for method in methods:
        play(manifest.root, clips, method, resolution, recorder)
    return ({g: recorder.feeds[g] for g in graphs if g in recorder.feeds},
            {g: recorder.seen[g] for g in graphs if g in recorder.seen}, methods)
