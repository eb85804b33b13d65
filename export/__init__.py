"""PyTorch → ONNX export of the STCN-family network (``vos-export``; needs the ``[train]``
extra), and float16 / int8 conversion of an export folder (``vos-export --precision``;
onnx, onnxconverter-common and onnxruntime.quantization only, no torch).

The names below are imported on first use — :mod:`export.onnx_export` (and so torch) only for
the PyTorch ones — so that ``export.cli`` (``vos-export --help``, its one-line error naming the
missing extra, and ``--from-export``) works in an install without torch.
"""
from __future__ import annotations

import importlib

_HOMES = {"ParityError": ".errors", "CalibrationError": ".errors", "ConversionError": ".errors",
          "convert_export": ".precision", "check_parity": ".onnx_export", "export_model": ".onnx_export",
          "load_davis_parity_frames": ".onnx_export"}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
