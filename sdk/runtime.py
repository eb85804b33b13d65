"""ONNX Runtime sessions of the exported graphs, with execution-provider selection."""
from __future__ import annotations

import contextlib
import logging

import numpy as np
import onnxruntime as ort

from .errors import InputError, ManifestError
from .manifest import GRAPH_NAMES, Manifest

log = logging.getLogger("vosedge")

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
_SHORT_NAMES = {"cuda": CUDA, "cpu": CPU, "tensorrt": "TensorrtExecutionProvider"}
_ORT_DEFAULT_SEVERITY = 2  # onnxruntime's own default (warning)


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


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Options of every session: ``threads`` intra-op threads (None = onnxruntime's default,
    one per physical core) and **no spinning**. Each session owns a thread pool whose workers
    by default busy-wait after every run; a frame runs 4–8 graphs one after another, so the
    idle pools' spinning workers took the cores from the running one: on the project's 2-core
    VM (ORT 1.31, CPU EP) spinning off cut a frame from 221 to 118–138 ms (480 px, every_k) and
    from 70 to 24–34 ms (240 px, lfu). Raises :class:`~sdk.errors.InputError` for ``threads`` < 1."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
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
    without a GPU or CUDA libraries) are dropped with ONE ``logging`` warning on logger
    ``"vosedge"``; :attr:`providers` lists those used.
    Raises :class:`~sdk.errors.ManifestError` if onnxruntime cannot load a graph.
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
                    log.warning("%s execution provider unavailable (%s); running on %s",
                                "/".join(p.removesuffix("ExecutionProvider") for p in missing), why,
                                ", ".join(used))
                    requested = [p for p in requested if _name(p) in used]
            _check_signature(name, session, manifest.raw["graphs"][name])
            self.sessions[name] = session
        self.providers = self.sessions[names[0]].get_providers()
        self._inputs = {n: [i.name for i in s.get_inputs()] for n, s in self.sessions.items()}
        self._outputs = {n: [o.name for o in s.get_outputs()] for n, s in self.sessions.items()}

    def input_names(self, name: str) -> list[str]:
        """Input names of graph ``name``, in order."""
        return self._inputs[name]

    def run(self, name: str, feeds: dict) -> list[np.ndarray]:
        """Run graph ``name`` on ``feeds`` (input name → array); returns its outputs in order."""
        return self.sessions[name].run(None, feeds)

    def run_named(self, name: str, feeds: dict) -> dict[str, np.ndarray]:
        """Run graph ``name`` on the entries of ``feeds`` it takes (others are ignored: e.g. a
        value encoder that does not read the key encoder's f16); returns {output name: array}."""
        inputs = self._inputs[name]
        outputs = self.run(name, {k: feeds[k] for k in inputs})
        return dict(zip(self._outputs[name], outputs))
