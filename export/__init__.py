"""PyTorch → ONNX export of the STCN-family network (``vos-export``); needs the ``[train]`` extra.

The names below are imported from :mod:`export.onnx_export` (and so torch) on first use, so
that ``export.cli`` — ``vos-export --help``, and its one-line error naming the missing extra —
works in a runtime-only install.
"""
from __future__ import annotations

import importlib

__all__ = ["ParityError", "check_parity", "export_model", "load_davis_parity_frames"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(".onnx_export", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
