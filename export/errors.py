"""Errors of ``vos-export`` that do not need torch (the reduced-precision path runs without it)."""
from __future__ import annotations


class ParityError(RuntimeError):
    """Exported graphs disagree with what they were made from beyond the tolerances: the ONNX
    graphs with the PyTorch network (:func:`export.onnx_export.check_parity`), or a float16 /
    int8 export with its float32 original (:func:`export.precision_parity.check_precision_parity`).
    Nothing is written to the output folder."""


class CalibrationError(ValueError):
    """The calibration (or parity) frames cannot be used: the data root is missing, not in the
    DAVIS layout, or holds too few usable sequences. The message names the folder and the
    option that sets it (``--calibration-data ROOT`` / ``--parity-data ROOT``)."""


class ConversionError(RuntimeError):
    """onnxconverter-common or onnxruntime.quantization failed on a graph, or a converted graph
    cannot be loaded; the message names the graph and the first line of the library's error."""


class ProposalModelError(ValueError):
    """A proposals model given to ``vos-export --proposals`` cannot be used: missing or not
    ONNX, ONNX Runtime cannot load it, or its inputs/outputs do not fit ``--proposal-format``
    (the message names the tensor, what it is and what was expected). Nothing is written."""
