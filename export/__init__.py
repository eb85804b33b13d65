"""PyTorch → ONNX export of the STCN-family network (``vos-export``); may import torch."""
from .onnx_export import ParityError, check_parity, export_model, load_davis_parity_frames

__all__ = ["export_model", "check_parity", "load_davis_parity_frames", "ParityError"]
