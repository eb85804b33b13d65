"""vosedge sdk: semi-supervised video object segmentation on exported ONNX graphs.

Imports only numpy, onnxruntime, OpenCV and Pillow — never torch or onnx.

    from sdk import Segmenter
    seg = Segmenter("exports/lite-every_k")          # or Segmenter() for the bundled model
    labels = seg.step(first_rgb, first_label_map)    # uint8 [H,W]
    labels = seg.step(next_rgb)
    soft = seg.step(next_rgb, return_probabilities=True)   # + probabilities [N,H,W], object ids
    seg.remove_object(2)                             # stop tracking object 2 (frees its memory rows)
"""
from .errors import (BadFrameError, GraphRunError, InputError, ManifestError, OutputError, ParameterError,
                     VideoReadError, VosEdgeError)
from .manifest import Manifest, load_manifest
from .policies import (LFU, POLICIES, QDMN, QPM, RDE, EveryK, FirstLatest, MemoryPolicy, QualityGate, SAM2Window, XMem,
                       make_policy)
from .segmenter import Segmenter
from .soft_output import SoftOutput

__version__ = "0.1.0"

__all__ = [
    "Segmenter", "SoftOutput", "Manifest", "load_manifest", "MemoryPolicy", "EveryK", "FirstLatest", "QDMN", "LFU",
    "QPM", "RDE", "XMem", "SAM2Window", "QualityGate", "POLICIES", "make_policy", "VosEdgeError", "ManifestError", "InputError",
    "VideoReadError", "BadFrameError", "ParameterError", "OutputError", "GraphRunError", "__version__",
]
