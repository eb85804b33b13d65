"""ONNX Runtime sessions of the exported graphs, with execution-provider selection, the
checks of a manifest against its graphs' shapes, and ONNX Runtime's run-time failures turned
into :class:`~sdk.errors.GraphRunError`."""
from __future__ import annotations

import contextlib
import logging
import re
from time import perf_counter

import numpy as np
import onnxruntime as ort

from .errors import GraphRunError, InputError, ManifestError
from .manifest import GRAPH_NAMES, MANIFEST_FILE, MAX_STRIDE, Manifest

log = logging.getLogger("vosedge")

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
_SHORT_NAMES = {"cuda": CUDA, "cpu": CPU, "tensorrt": "TensorrtExecutionProvider"}
_ORT_DEFAULT_SEVERITY = 2  # onnxruntime's own default (warning)

# manifest field → the graph tensors (graph, "inputs"/"outputs", tensor name) whose axis 1 (the
# channels; static in every export, while H, W, N, M are symbolic) must equal it. Tensors a graph
# does not have (e.g. the per-object exports' key encoder has no "key") are skipped.
CHANNEL_TENSORS = {
    "key_channels": (("key_encoder", "outputs", "key"), ("value_encoder", "outputs", "key"),
                     ("readout", "inputs", "query_key"), ("readout", "inputs", "memory_keys"),
                     ("prior_enhance", "outputs", "key"), ("sam_key", "inputs", "previous"),
                     ("sam_key", "inputs", "new"), ("sam_key", "outputs", "rde")),
    "value_channels": (("value_encoder", "outputs", "value"), ("readout", "inputs", "memory_values"),
                       ("readout", "outputs", "readout"), ("decoder", "inputs", "readout"),
                       ("qam", "inputs", "value"), ("sam_value", "inputs", "previous"),
                       ("sam_value", "inputs", "new"), ("sam_value", "outputs", "rde")),
    "skip_channels.f16": (("key_encoder", "outputs", "f16"), ("value_encoder", "inputs", "f16"),
                          ("decoder", "inputs", "f16"), ("prior_enhance", "inputs", "f16"),
                          ("prior_enhance", "outputs", "enhanced_f16")),
    "skip_channels.f8": (("key_encoder", "outputs", "f8"), ("decoder", "inputs", "f8")),
    "skip_channels.f4": (("key_encoder", "outputs", "f4"), ("decoder", "inputs", "f4")),
    "normalisation": (("key_encoder", "inputs", "image"), ("value_encoder", "inputs", "image")),   # 3: RGB
}
# what ONNX Runtime (CPU arena, CUDA, cuDNN, cuBLAS) says when it cannot allocate memory
_ALLOCATION_FAILURE = re.compile(r"Failed to allocate|bad_alloc|BFCArena|out of memory|cudaErrorMemoryAllocation|"
                                 r"ALLOC_FAILED", re.IGNORECASE)
# feeds whose last two axes are the frame's internal (padded) size, and those at 1/stride of it
_FULL_SIZE_INPUTS = ("image", "masks", "prior")
_STRIDE_INPUTS = ("f16", "query_key", "readout", "value", "previous", "new", "qam_feature")


def resolve_providers(providers=None) -> list:
    """Execution providers to request, in preference order.

    ``None`` → CUDA then CPU; otherwise a name or a sequence whose items are names, full
    (``"CUDAExecutionProvider"``) or short (``"cuda"``, ``"cpu"``, ``"tensorrt"``), or
    ``(name, options dict)`` tuples as onnxruntime accepts. CPU is always appended as the last
    fallback. Raises :class:`~sdk.errors.InputError` for a name onnxruntime does not know.
    """
    if providers is None:
        providers = [CUDA]
    elif isinstance(providers, str):
        providers = [providers]
    known = set(ort.get_all_providers())
    out = []
    for p in providers:
        name, opts = (p if isinstance(p, tuple) else (p, None))
        name = _SHORT_NAMES.get(str(name).lower(), name)
        if name not in known:
            raise InputError(f"unknown execution provider {name!r}; use 'cuda', 'cpu' or one of {sorted(known)}")
        out.append(name if opts is None else (name, opts))
    if CPU not in map(_name, out):
        out.append(CPU)
    return out


def _name(provider) -> str:
    """Provider name of ``"Name"`` or ``("Name", options)``."""
    return provider[0] if isinstance(provider, tuple) else provider


@contextlib.contextmanager
def _quiet_ort():
    """Silence onnxruntime's default logger while a session is created: a CUDA EP that cannot
    load its libraries prints an error and a warning there; we log one line instead."""
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)


def _check_signature(name: str, session, entry: dict) -> None:
    """Raise ManifestError when the graph's input/output names differ from those the manifest
    declares (``inputs``/``outputs``, written by vos-export; entries without them are not checked)."""
    for kind, actual in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        declared = entry.get(kind)
        if declared is not None and list(declared) != [v.name for v in actual]:
            raise ManifestError(f"graph {name!r} has {kind} {[v.name for v in actual]} but the manifest "
                                f"declares {list(declared)}: graph and manifest come from different exports")


def _quiet_run() -> ort.RunOptions:
    """Run options whose failures onnxruntime does not also print to stderr (they are raised)."""
    options = ort.RunOptions()
    options.log_severity_level = 4
    return options


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Options of every session: ``threads`` intra-op threads (None = onnxruntime's default,
    one per physical core), **no spinning**, and every graph optimisation (``ORT_ENABLE_ALL``,
    onnxruntime's default, stated here because it matters).

    Spinning: each session owns a thread pool whose workers by default busy-wait after every
    run; a frame runs 4–8 graphs one after another, so the idle pools' spinning workers took
    the cores from the running one: on the project's 2-core VM (ORT 1.31, CPU EP) spinning off
    cut a frame from 221 to 118–138 ms (480 px, every_k) and from 70 to 24–34 ms (240 px, lfu).
    Optimisation level: ``ORT_ENABLE_EXTENDED`` (no NCHWc layout transform of the convolutions)
    made the key encoder 2.2×, the decoder 1.3× and the value encoder 1.4× slower at 480 px on
    that VM; ``ORT_ENABLE_LAYOUT`` gives the same graphs as ``ALL`` on the CPU EP
    (``docs/frame-480.md``). Raises :class:`~sdk.errors.InputError` for ``threads`` < 1."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InputError(f"threads must be a positive int or None, got {threads!r}")
        options.intra_op_num_threads = threads
    return options


class Graphs:
    """One ``onnxruntime.InferenceSession`` per graph in ``names`` (default: the four core
    graphs; optional heads such as ``"qam"`` must be in ``manifest.graphs``).

    ``providers`` as :func:`resolve_providers`, ``threads`` as :func:`session_options`.
    Requested providers that cannot start (e.g. CUDA listed by onnxruntime-gpu on a machine
    without a GPU or CUDA libraries) are dropped with ONE record on logger ``"vosedge"``: INFO
    for the default (``providers=None``: CUDA if it starts, nothing was asked for), WARNING when
    the caller asked for that provider; :attr:`providers` lists those used. :attr:`run_ms`
    sums, per graph name, the wall time (ms) spent inside ``InferenceSession.run`` by
    :meth:`run` / :meth:`run_named` since the caller last cleared it (the Segmenter clears it
    at every frame: its graph stages).

    The manifest is checked against the graphs (:func:`check_graph_shapes`): its channel fields
    against the static channel axes the graphs declare, and its ``stride`` by running the key
    encoder once on a zero image of s × s·(s+1) px, whose f16 must be 1 × (s+1)
    (:func:`probe_stride`: a few ms; :attr:`probe_ms` says how many).

    Raises :class:`~sdk.errors.ManifestError` if onnxruntime cannot load a graph, a graph's
    input/output names differ from the manifest's, or a manifest field disagrees with the
    graphs (``key_channels``, ``value_channels``, ``skip_channels``, 3 normalisation channels,
    ``stride``).
    """

    def __init__(self, manifest: Manifest, providers=None, names: tuple[str, ...] = GRAPH_NAMES,
                 threads: int | None = None):
        requested = resolve_providers(providers)
        options = session_options(threads)
        self.sessions = {}
        for name in names:
            try:
                with _quiet_ort():
                    session = ort.InferenceSession(str(manifest.graphs[name]), options, providers=requested)
            except Exception as exc:  # onnxruntime's Fail/InvalidGraph/… derive from Exception only
                raise ManifestError(f"onnxruntime {ort.__version__} cannot load graph {name!r} "
                                    f"({manifest.graphs[name]}): {exc}") from exc
            if not self.sessions:   # first graph: keep only the providers that actually started
                used = session.get_providers()
                missing = [_name(p) for p in requested if _name(p) not in used]
                if missing:
                    why = ("not in this onnxruntime build" if missing[0] not in ort.get_available_providers()
                           else "its libraries or a GPU could not be loaded")
                    # the default asked for nothing: CPU is a normal outcome, not a warning
                    log.log(logging.INFO if providers is None else logging.WARNING,
                            "%s execution provider unavailable (%s); running on %s",
                            "/".join(p.removesuffix("ExecutionProvider") for p in missing), why, ", ".join(used))
                    requested = [p for p in requested if _name(p) in used]
            _check_signature(name, session, manifest.raw["graphs"][name])
            self.sessions[name] = session
        self.providers = self.sessions[names[0]].get_providers()
        self._inputs = {n: [i.name for i in s.get_inputs()] for n, s in self.sessions.items()}
        self._outputs = {n: [o.name for o in s.get_outputs()] for n, s in self.sessions.items()}
        self._stride = manifest.stride
        self._run_options = _quiet_run()
        self.run_ms: dict[str, float] = {}
        check_graph_shapes(manifest, self.sessions)
        t0 = perf_counter()
        if "key_encoder" in self.sessions:
            probe_stride(manifest, self.sessions["key_encoder"])
        self.probe_ms = (perf_counter() - t0) * 1e3

    def input_names(self, name: str) -> list[str]:
        """Input names of graph ``name``, in order."""
        return self._inputs[name]

    def run(self, name: str, feeds: dict) -> list[np.ndarray]:
        """Run graph ``name`` on ``feeds`` (input name → array); returns its outputs in order.

        Raises :class:`~sdk.errors.GraphRunError` (the onnxruntime exception as ``__cause__``)
        when onnxruntime fails, naming the graph and the input shapes; when it could not
        allocate memory, the message also gives the internal frame size and suggests a lower
        internal resolution (``Segmenter(resolution=480)``, ``--resolution 480``)."""
        t0 = perf_counter()
        try:
            return self.sessions[name].run(None, feeds, self._run_options)
        except Exception as exc:  # onnxruntime's Fail/RuntimeException/… derive from Exception only
            raise GraphRunError(_run_failure(name, feeds, exc, self._stride)) from exc
        finally:
            self.run_ms[name] = self.run_ms.get(name, 0.0) + (perf_counter() - t0) * 1e3

    def run_named(self, name: str, feeds: dict) -> dict[str, np.ndarray]:
        """Run graph ``name`` on the entries of ``feeds`` it takes (others are ignored: e.g. a
        value encoder that does not read the key encoder's f16); returns {output name: array}.
        Raises :class:`~sdk.errors.GraphRunError` as :meth:`run`."""
        inputs = self._inputs[name]
        outputs = self.run(name, {k: feeds[k] for k in inputs})
        return dict(zip(self._outputs[name], outputs))


def _run_failure(name: str, feeds: dict, exc: Exception, stride: int) -> str:
    """One-line message of onnxruntime's failure ``exc`` while running graph ``name`` on ``feeds``."""
    shapes = ", ".join(f"{k} {list(np.shape(v))}" for k, v in feeds.items())
    text = str(exc)
    if not (isinstance(exc, MemoryError) or _ALLOCATION_FAILURE.search(text)):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return (f"onnxruntime {ort.__version__} failed running graph {name!r} on {shapes}: "
                f"{lines[0] if lines else type(exc).__name__}")
    buffer = re.search(r"size (\d+)", text)
    buffer = f" (a buffer of {int(buffer.group(1)) / 2**20:.0f} MiB)" if buffer else ""
    size = None
    for key, value in feeds.items():
        shape = np.shape(value)
        if len(shape) == 4 and key in _FULL_SIZE_INPUTS:
            size = shape[2:]
            break
        if len(shape) == 4 and key in _STRIDE_INPUTS and size is None:
            size = (shape[2] * stride, shape[3] * stride)
    at = f"; frames are processed at {size[0]}x{size[1]} px internally" if size else ""
    memory = ", or a memory policy that keeps fewer frames" if name == "readout" else ""
    return (f"onnxruntime {ort.__version__} could not allocate memory running graph {name!r} on {shapes}{buffer}"
            f"{at}: lower the internal resolution, e.g. Segmenter(resolution=480) or vos-segment --resolution 480"
            f"{memory}")


def _shape(session, kind: str, tensor: str) -> list | None:
    """Declared shape of the graph's input (``kind = "inputs"``) or output ``tensor``: ints for
    static axes, str (symbolic) or None for dynamic ones; None when the graph has no such tensor."""
    values = session.get_inputs() if kind == "inputs" else session.get_outputs()
    return next((list(v.shape or []) for v in values if v.name == tensor), None)


def _static(d) -> bool:
    return isinstance(d, int) and not isinstance(d, bool)


def check_graph_shapes(manifest: Manifest, sessions: dict) -> None:
    """Raise :class:`~sdk.errors.ManifestError` when a manifest field disagrees with the static
    channel axis the graphs declare (:data:`CHANNEL_TENSORS`: ``key_channels``,
    ``value_channels``, ``skip_channels``, 3 normalisation channels); dynamic axes and tensors a
    graph lacks are not checked."""
    wanted = {"key_channels": manifest.key_channels, "value_channels": manifest.value_channels,
              "normalisation": len(manifest.mean),
              **{f"skip_channels.{k}": v for k, v in manifest.skip_channels.items()}}
    for field, tensors in CHANNEL_TENSORS.items():
        for graph, kind, tensor in tensors:
            shape = _shape(sessions[graph], kind, tensor) if graph in sessions else None
            if field not in wanted or not shape or len(shape) < 2 or not _static(shape[1]):
                continue
            if shape[1] != wanted[field]:
                what = "normalisation has 3 channels (mean, std: R, G, B)" if field == "normalisation" \
                    else f"{field} is {wanted[field]}"
                raise ManifestError(f"{manifest.root / MANIFEST_FILE}: {what} but graph {graph!r} {kind[:-1]} "
                                    f"{tensor!r} has {shape[1]} channels {shape}: manifest and graphs disagree; "
                                    "re-export the model")


def probe_stride(manifest: Manifest, session) -> None:
    """Check the manifest's ``stride`` s against the key encoder, whose f16 is 1/s of the image:
    a zero image [1,3,s,s·(s+1)] must give f16 of 1 × (s+1). The width tells s from every other
    stride t whether the graph rounds sizes up or down (t > s gives at most s columns, t < s at
    least s+2), which a square image of a few strides does not (t = 16 turns 2·15 px into 2, as
    s = 15 would); it costs ~2–7 ms for vosedge's lite network, ~20–50 ms for the authors'
    ResNet-50 ones on 2 CPU cores (s = 16: 16 × 272 px). A graph that declares its spatial axes
    static is compared without running it. On a mismatch the graph's own stride is measured on
    a 2·:data:`~sdk.manifest.MAX_STRIDE` square. Raises :class:`~sdk.errors.ManifestError`
    naming the stride the graph has, or the graph's error when it cannot run on the probe."""
    s = manifest.stride
    where = manifest.root / MANIFEST_FILE
    image, f16 = _shape(session, "inputs", "image"), _shape(session, "outputs", "f16")
    if image is None or f16 is None or len(image) != 4 or len(f16) != 4:
        return   # not a graph of the contract's shape: _check_signature names what differs
    channels = image[1] if _static(image[1]) else len(manifest.mean)
    static = all(_static(d) for d in (*image[2:], *f16[2:]))
    if static:
        size, got = tuple(image[2:]), tuple(f16[2:])
    else:
        size = (s, s * (s + 1))
        try:
            got = _f16_size(session, channels, size)
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ManifestError(f"{where}: stride is {s} but graph 'key_encoder' cannot run on a {size[0]}x{size[1]} "
                                f"image (s × s·(s+1)): {first}; manifest and graphs disagree? re-export the model"
                                ) from exc
    expected = (size[0] // s, size[1] // s)
    if got == expected:
        return
    has = "another stride"
    with contextlib.suppress(Exception):   # only to name it in the message
        side, measured = size[1], got[1]
        if not static:
            side = 2 * MAX_STRIDE
            measured = _f16_size(session, channels, (side, side))[1]
        has = f"stride {side // measured}" if side % measured == 0 else f"a stride of about {side / measured:.3g}"
    raise ManifestError(f"{where}: stride is {s} but graph 'key_encoder' turns a {size[0]}x{size[1]} image into "
                        f"f16 of {got[0]}x{got[1]} (expected {expected[0]}x{expected[1]}; the graph has {has}): "
                        "manifest and graphs disagree; re-export the model")


def _f16_size(session, channels: int, size: tuple[int, int]) -> tuple[int, int]:
    """Spatial size of the key encoder's f16 for a zero image [1,channels,*size]."""
    (out,) = session.run(["f16"], {"image": np.zeros((1, channels, *size), np.float32)}, _quiet_run())
    return tuple(out.shape[2:])
