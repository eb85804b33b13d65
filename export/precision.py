"""A float16 or int8 export from a float32 one (``vos-export --precision fp16|int8``): copy,
convert, check parity against the float32 original, then move into place — nothing lands in
the output folder when any step fails.

No torch here: ``vos-export --from-export DIR`` converts an existing export with onnx,
onnxconverter-common (fp16) and onnxruntime.quantization (int8) only.

The converted graphs keep float32 inputs and outputs (int8: QuantizeLinear/DequantizeLinear
inside the graph; fp16: Casts at its edges), so the graph contract (docs/graph-contract.md)
is unchanged and the sdk runs them on any execution provider with no per-precision code. The
manifest gains a ``precision`` object (:func:`precision_record`).

Resolution: calibration and parity run at the export's default internal resolution (its
manifest's ``resolution``, 480 px for the bundled model; native frame size when null). The
quantisation ranges are one per activation tensor, and what a tensor holds depends on the
scale at which objects and textures appear in it — the resolution the sdk runs the graphs
at by default is the one they must be calibrated for (frames of a 240p data set are upsampled
by the Segmenter to it, as they would be in use). Other resolutions then run with the same
graphs; check them with ``vos-eval --resolution``.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from sdk.manifest import MANIFEST_FILE, load_manifest, sha256_file

from .calibration import (
    CALIBRATION_SPLIT,
    DEFAULT_CALIBRATION_ROOT,
    PARITY_SPLIT,
    Clip,
    load_clips,
    record_feeds,
)
from .errors import CalibrationError, ConversionError
from .precision_parity import (
    MIN_MEAN_IOU,
    PARITY_FRAMES,
    PARITY_SEQUENCES,
    check_precision_parity,
)

# --precision → manifest precision.dtype
PRECISIONS = {"fp32": "float32", "fp16": "float16", "int8": "int8"}
CALIBRATION_SEQUENCES, CALIBRATION_FRAMES = 8, 10


def convert_export(src, out, precision: str, *, scheme: str = "ort", calibration_method: str | None = None,
                   int8_graphs=None, calibration_data=None, parity_data=None,
                   calibration_sequences: int = CALIBRATION_SEQUENCES, calibration_frames: int = CALIBRATION_FRAMES,
                   samples_per_graph: int | None = None, min_mean_iou: float = MIN_MEAN_IOU,
                   parity_reference=None, source_note: dict | None = None, log=None) -> dict:
    """Write a ``precision`` ("fp16" | "int8") copy of the float32 export folder ``src`` into
    ``out`` (a new or empty folder, or an export, which is replaced); returns its manifest.

    fp16: every graph but ``readout`` in float16 (:mod:`export.fp16`). int8: the graphs of
    ``int8_graphs`` (default :data:`export.int8.DEFAULT_INT8_GRAPHS`, those the export has)
    quantised with ``scheme`` and ``calibration_method`` (:mod:`export.int8`), calibrated on the
    feeds ``src`` produces on ``calibration_data``: a DAVIS-layout root (its train split,
    ``calibration_sequences`` sequences spread over it × their first ``calibration_frames``
    frames; default :data:`~export.calibration.DEFAULT_CALIBRATION_ROOT`) or a list of
    :class:`~export.calibration.Clip`; at most ``samples_per_graph`` (default
    :data:`export.int8.SAMPLES_PER_GRAPH`) feeds per graph. Parity
    (:func:`export.precision_parity.check_precision_parity`) runs on ``parity_data``: a root
    (its val split, :data:`PARITY_SEQUENCES` × :data:`PARITY_FRAMES` frames; default: the
    calibration root), or a list of clips, and needs every policy's mean mask IoU vs float32 ≥
    ``min_mean_iou``. ``parity_reference``: the float32 export the masks are compared with
    instead of ``src`` — for a quantisation-aware fine-tuned checkpoint (:mod:`training.qat`)
    the float32 export of the network it was distilled from, whose masks its int8 graphs must
    reproduce (its own float32 weights compensate the int8 grid and are no reference); it must
    be a float32 export with the graphs, channels, stride and normalisation of ``src``
    (ValueError naming the difference). ``source_note`` (e.g. the checkpoint) goes into
    ``precision.source``; ``log(str)`` receives progress lines.

    Raises ValueError for an unknown precision, scheme, method or graph name, or ``out`` =
    ``src``; FileExistsError if ``out`` is neither empty nor an export;
    :class:`sdk.ManifestError` if ``src`` is not a valid float32 export;
    :class:`~export.errors.CalibrationError` when the data roots cannot be read (naming
    ``--calibration-data`` / ``--parity-data``); :class:`~export.errors.ConversionError` when
    a converter fails or changes a graph's inputs/outputs; :class:`~export.errors.ParityError`
    when parity fails. In every case ``out`` is left as it was.
    """
    from . import int8

    log = log or (lambda line: None)
    if precision not in ("fp16", "int8"):
        raise ValueError(f"unknown reduced precision {precision!r}; known: fp16, int8 (fp32 is the export itself)")
    source = load_manifest(src)
    if source.precision["dtype"] != "float32":
        raise ValueError(f"{source.root} holds {source.precision['dtype']} graphs (precision.dtype); convert its "
                         "float32 original")
    out = Path(out).expanduser().resolve()
    if out == source.root:
        raise ValueError(f"--out {out} is the float32 export itself; choose another folder")
    if precision == "int8":
        method = calibration_method or int8.DEFAULT_CALIBRATION_METHOD
        if scheme not in int8.SCHEMES:
            raise ValueError(f"unknown int8 scheme {scheme!r}; known: {', '.join(int8.SCHEMES)}")
        if method not in int8.CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(int8.CALIBRATION_METHODS)}")
        chosen = _int8_graphs(source, int8_graphs)
        samples = samples_per_graph or int8.SAMPLES_PER_GRAPH
    reference = source if parity_reference is None else _parity_reference(source, parity_reference)
    check_target(out, precision, calibration_data, parity_data)
    resolution = source.resolution
    started = time.perf_counter()
    calibration_clips = None
    if precision == "int8":
        calibration_clips, calibration_desc = _clips(calibration_data, CALIBRATION_SPLIT, calibration_sequences,
                                                     calibration_frames, "--calibration-data")
    parity_clips, parity_desc = _clips(parity_data if parity_data is not None else calibration_data, PARITY_SPLIT,
                                       PARITY_SEQUENCES, PARITY_FRAMES,
                                       "--parity-data" if parity_data is not None else "--calibration-data")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        graphs = {}
        for name, path in source.graphs.items():
            graphs[name] = tmp / path.name
            shutil.copyfile(path, graphs[name])
        if source.proposals is not None:    # the proposals graph stays float32 (its own contract)
            shutil.copyfile(source.proposals["path"], tmp / source.proposals["file"])
        if precision == "fp16":
            from .fp16 import convert_fp16

            log("converting to float16 …")
            dtypes, fallback = convert_fp16(graphs, tmp)
            record = {"scheme": {"name": "float16", "converter": "onnxconverter-common convert_float_to_float16",
                                 "keep_io_types": True}, "calibration": None}
        else:
            log(f"recording calibration feeds of {', '.join(chosen)} on {calibration_desc} at "
                f"{resolution or 'native'} px …")
            feeds, seen, methods = record_feeds(source.root, calibration_clips, chosen, resolution, samples)
            dtypes, fallback = dict.fromkeys(graphs, "float32"), {}
            work = Path(tempfile.mkdtemp(prefix="quant-", dir=tmp))
            try:
                for name in chosen:
                    if name not in feeds:
                        fallback[name] = "no calibration feeds (no memory policy runs it on this export)"
                        continue
                    log(f"quantising {name} ({len(feeds[name])} samples, {scheme}, {method}) …")
                    target = work / f"{name}.int8.onnx"
                    int8.quantize_graph(graphs[name], target, feeds[name], scheme, method, work)
                    error = _load_error(target)
                    if error is not None:
                        fallback[name] = error
                        continue
                    shutil.move(target, graphs[name])
                    dtypes[name] = "int8"
            finally:
                shutil.rmtree(work, ignore_errors=True)
            record = {"scheme": int8.SCHEMES[scheme].record(),
                      "calibration": {"data": calibration_desc, "split": CALIBRATION_SPLIT,
                                      "sequences": [c.name for c in calibration_clips],
                                      "frames": max(len(c.frames) for c in calibration_clips),
                                      "samples_per_graph": {g: len(feeds.get(g, [])) for g in chosen},
                                      "calls_seen": seen, "policies": methods,
                                      "resolution": resolution, "method": method}}
        reduced = [name for name, dtype in dtypes.items() if dtype != "float32"]
        if not reduced:
            raise ConversionError(f"no graph could be converted to {precision}: "
                                  + "; ".join(f"{n}: {e}" for n, e in fallback.items()))
        for name in reduced:
            _check_io(source.graphs[name], graphs[name], name)
        raw = json.loads(json.dumps(source.raw))
        for name, path in graphs.items():
            raw["graphs"][name]["sha256"] = sha256_file(path)
        raw["precision"] = precision_record(precision, dtypes, record, fallback, source, source_note)
        _write(tmp, raw)
        load_manifest(tmp)                      # the copy must pass the sdk's own checks
        log(f"parity vs float32{'' if reference is source else f' ({reference.root})'} on {parity_desc} …")
        raw["precision"]["parity"] = check_precision_parity(reference.root, tmp, parity_clips, resolution, reduced,
                                                            min_mean_iou, parity_desc)
        raw["precision"]["parity"]["reference"] = {
            "path": str(reference.root), "manifest_sha256": sha256_file(reference.root / MANIFEST_FILE),
            "is_source": reference is source}
        raw["precision"]["seconds"] = round(time.perf_counter() - started, 1)
        _write(tmp, raw)
        load_manifest(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return raw


def check_target(out, precision: str, calibration_data=None, parity_data=None) -> None:
    """The checks of :func:`convert_export` that need no conversion, for a caller to run before
    a long float32 export: ``out`` must be new, empty or an export (FileExistsError), and the
    data roots it would read must have their split files
    (:class:`~export.errors.CalibrationError` naming the option)."""
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise FileExistsError(f"{out} exists and is not a vosedge export; choose an empty or new folder")
    roots = [(parity_data if parity_data is not None else calibration_data, PARITY_SPLIT,
              "--parity-data" if parity_data is not None else "--calibration-data")]
    if precision == "int8":
        roots.append((calibration_data, CALIBRATION_SPLIT, "--calibration-data"))
    for data, split, option in roots:
        if data is None or isinstance(data, (str, Path)):
            root = Path(data) if data is not None else DEFAULT_CALIBRATION_ROOT
            if not (root / "ImageSets" / f"{split}.txt").is_file():
                raise CalibrationError(f"no DAVIS-layout data at {root} (no ImageSets/{split}.txt): give one with "
                                       f"{option} ROOT (e.g. ../shared/data/davis2016-240p)")


# manifest fields a parity reference must share with the export it judges
REFERENCE_FIELDS = ("key_channels", "value_channels", "skip_channels", "stride", "normalisation", "max_objects")


def _parity_reference(source, path):
    """The manifest of the float32 export ``path`` to judge ``source``'s reduced graphs by;
    ValueError unless it is float32 and has ``source``'s graphs and :data:`REFERENCE_FIELDS`."""
    reference = load_manifest(path)
    problems = []
    if reference.precision["dtype"] != "float32":
        problems.append(f"it holds {reference.precision['dtype']} graphs, not float32")
    if set(reference.graphs) != set(source.graphs):
        problems.append(f"its graphs {sorted(reference.graphs)} are not {sorted(source.graphs)}")
    problems += [f"its {f} {reference.raw.get(f)!r} is not {source.raw.get(f)!r}" for f in REFERENCE_FIELDS
                 if reference.raw.get(f) != source.raw.get(f)]
    if problems:
        raise ValueError(f"--parity-reference {reference.root} cannot judge {source.root}: " + "; ".join(problems))
    return reference


def precision_record(precision, dtypes, record, fallback, source, source_note) -> dict:
    """The manifest's ``precision`` object (docs/graph-contract.md) without ``parity``."""
    return {"dtype": PRECISIONS[precision], "graphs": dtypes, **record, "float32_fallback": fallback,
            "source": {"path": str(source.root), "config": source.config,
                       "manifest_sha256": sha256_file(source.root / MANIFEST_FILE),
                       "graphs_sha256": {n: e["sha256"] for n, e in source.raw["graphs"].items()},
                       **(source_note or {})}}


def _int8_graphs(source, names) -> list[str]:
    """The graphs to quantise: ``names`` (default :data:`export.int8.DEFAULT_INT8_GRAPHS`),
    those of them the export has; ValueError for an unknown one or the readout."""
    from . import int8

    if names is None:
        return [g for g in int8.DEFAULT_INT8_GRAPHS if g in source.graphs]
    names = list(dict.fromkeys(names))
    unknown = [g for g in names if g not in source.graphs]
    if unknown:
        raise ValueError(f"--int8-graphs: {', '.join(unknown)} not in this export (it has {', '.join(source.graphs)})")
    kept = [g for g in names if g in int8.KEEP_FP32]
    if kept:
        raise ValueError(f"--int8-graphs: {', '.join(kept)} stays float32 (top-k + softmax over a 1e30 empty-slot "
                         "mask: int8 would break the mask and the usage counts)")
    if not names:
        raise ValueError("--int8-graphs: name at least one graph")
    return names


def _clips(data, split, sequences, frames, option) -> tuple[list[Clip], str]:
    """(clips, description) of a DAVIS root (default :data:`DEFAULT_CALIBRATION_ROOT`) or a
    list of clips."""
    if data is None or isinstance(data, (str, Path)):
        root = Path(data) if data is not None else DEFAULT_CALIBRATION_ROOT
        clips = load_clips(root, split, sequences, frames, option)
        return clips, f"{root} {split}: {len(clips)} sequences x {max(len(c.frames) for c in clips)} frames"
    clips = list(data)
    return clips, f"{len(clips)} given clips"


def _load_error(path: Path) -> str | None:
    from .fp16 import load_error

    return load_error(path)


def _check_io(original: Path, converted: Path, name: str) -> None:
    """ConversionError unless ``converted`` has the input and output names of ``original``."""
    import onnx

    def io(path):
        graph = onnx.load(str(path), load_external_data=False).graph
        return [v.name for v in graph.input], [v.name for v in graph.output]

    if io(original) != io(converted):
        raise ConversionError(f"converting {name} changed its inputs/outputs from {io(original)} to {io(converted)}")


def _write(folder: Path, raw: dict) -> None:
    (folder / MANIFEST_FILE).write_text(json.dumps(raw, indent=2) + "\n")
