"""ROI Align in plain torch with exactly the semantics of ONNX ``RoiAlign`` (opset 16+), and
its export as that ONNX op.

DMN-AOA extracts object features "by performing ROI pooling on the base features using the
corresponding bounding boxes" (§3.1; §3.2 for the query's box of the previous frame). vosedge
uses ROI Align (He et al., Mask R-CNN, ICCV 2017) as ONNX defines it, with the attributes the
sdk's graphs are exported with (docs/dmn-aoa.md):

* ``coordinate_transformation_mode = "half_pixel"``: a box corner x maps to x·scale − 0.5 on
  the feature grid (no minimum box size of 1 cell, unlike ``output_half_pixel``);
* ``mode = "avg"``, ``sampling_ratio = 2``: each of the S×S output bins averages 2×2 bilinear
  samples at the centres of its 2×2 sub-bins;
* a sample outside [−1, size] on an axis contributes 0 (it still counts in the average); inside,
  a coordinate ≤ 0 is clamped to 0 and a coordinate whose floor is ≥ size − 1 reads the last
  row/column (onnxruntime's ``RoiAlign`` CPU kernel, which is what the sdk runs).

The bilinear weights separate into a y factor and an x factor (and so does the outside test),
so the torch version builds per-box interpolation matrices W_y [R,S,H] and W_x [R,S,W]
(each already averaged over its 2 samples) and computes out[r] = W_y[r] · F · W_x[r]ᵀ; it is
differentiable in the features and in the boxes. torchvision is not used (its compiled ops do
not load here).
"""
from __future__ import annotations

import torch

SAMPLING_RATIO = 2


def _axis_weights(start: torch.Tensor, end: torch.Tensor, size: int, bins: int,
                  sampling_ratio: int) -> torch.Tensor:
    """start, end [R] (feature-grid coordinates) → [R, bins, size] float32 interpolation weights
    along one axis, averaged over the ``sampling_ratio`` samples of each bin."""
    length = end - start                                                   # [R]
    bin_size = length / bins
    steps = (torch.arange(bins, dtype=start.dtype, device=start.device)[:, None]
             + (torch.arange(sampling_ratio, dtype=start.dtype, device=start.device)[None, :] + 0.5)
             / sampling_ratio).reshape(-1)                                 # [bins·g]
    coord = start[:, None] + steps[None, :] * bin_size[:, None]            # [R, bins·g]
    inside = ((coord >= -1.0) & (coord <= size)).to(start.dtype)
    coord = coord.clamp(min=0.0)
    low = coord.floor()
    last = low >= size - 1
    low = torch.where(last, torch.full_like(low, size - 1), low)
    coord = torch.where(last, low, coord)
    high = torch.where(last, low, low + 1)
    frac = coord - low
    grid = torch.arange(size, dtype=start.dtype, device=start.device)
    w = ((grid == low[..., None]).to(start.dtype) * (1 - frac)[..., None]
         + (grid == high[..., None]).to(start.dtype) * frac[..., None]) * inside[..., None]
    return w.reshape(start.shape[0], bins, sampling_ratio, size).sum(2) / sampling_ratio


def roi_align_reference(features: torch.Tensor, boxes: torch.Tensor, output_size: int,
                        spatial_scale: float, sampling_ratio: int = SAMPLING_RATIO) -> torch.Tensor:
    """ONNX RoiAlign (avg, half_pixel) in torch: features [1,C,H,W] float32, boxes [R,4] float32
    (x1, y1, x2, y2 in input pixels; ``spatial_scale`` maps them to the feature grid) →
    [R,C,S,S] float32 with S = ``output_size``. R may be 0."""
    _, _, height, width = features.shape
    scaled = boxes * spatial_scale - 0.5                                   # half_pixel
    wy = _axis_weights(scaled[:, 1], scaled[:, 3], height, output_size, sampling_ratio)
    wx = _axis_weights(scaled[:, 0], scaled[:, 2], width, output_size, sampling_ratio)
    return torch.einsum("rph,chw,rqw->rcpq", wy, features[0], wx)


class _RoiAlign(torch.autograd.Function):
    """The torch computation, exported (TorchScript exporter) as one ONNX ``RoiAlign`` node
    with batch_indices = zeros [R] (every box reads image 0)."""

    @staticmethod
    def forward(ctx, features, boxes, output_size, spatial_scale, sampling_ratio):
        return roi_align_reference(features, boxes, output_size, spatial_scale, sampling_ratio)

    @staticmethod
    def symbolic(g, features, boxes, output_size, spatial_scale, sampling_ratio):
        shape = g.op("Shape", boxes)
        count = g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([0])),
                     g.op("Constant", value_t=torch.tensor([1])))
        batch = g.op("ConstantOfShape", count, value_t=torch.tensor([0], dtype=torch.int64))
        return g.op("RoiAlign", features, boxes, batch, output_height_i=output_size, output_width_i=output_size,
                    sampling_ratio_i=sampling_ratio, spatial_scale_f=spatial_scale, mode_s="avg",
                    coordinate_transformation_mode_s="half_pixel")


def roi_align(features: torch.Tensor, boxes: torch.Tensor, output_size: int, spatial_scale: float,
              sampling_ratio: int = SAMPLING_RATIO) -> torch.Tensor:
    """ROI Align of ``boxes`` [R,4] (x1, y1, x2, y2 float32, input pixels) on ``features``
    [1,C,H,W] → [R,C,S,S] (S = ``output_size``), ONNX ``RoiAlign`` semantics (avg, half_pixel,
    ``sampling_ratio``; module docstring). In a traced export it becomes that ONNX node; in
    training it is :func:`roi_align_reference` (autograd through the features and the boxes)."""
    if torch.onnx.is_in_onnx_export():
        return _RoiAlign.apply(features, boxes, output_size, float(spatial_scale), sampling_ratio)
    return roi_align_reference(features, boxes, output_size, spatial_scale, sampling_ratio)
