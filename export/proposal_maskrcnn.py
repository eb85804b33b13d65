"""Our proposal network re-packaged with torchvision Mask R-CNN's ONNX signature (issue 27,
"the user-adapter path on our own proposals exported in the Mask R-CNN format").

The graph is what a user's Mask R-CNN looks like to ``vos-export --proposals M.onnx
--proposal-format maskrcnn`` (sdk/proposal_formats.py): one input ``images_tensors`` [3,H,W]
float32 RGB in [0, 1] → ``boxes`` [K,4] float32 (x1, y1, x2, y2, input px), ``labels`` [K] int64
(all 1: class-agnostic), ``scores`` [K] float32, ``masks`` [K,1,28,28] float32 — the mask head's
box-relative masks, here each full-frame proposal mask ROI-aligned in its own box (28 × 28,
ONNX ``RoiAlign``, as torchvision's mask head pools 14 × 14 features and upsamples to 28). Inside:
the core key encoder (normalising the image as the export does), then
:meth:`training.proposal_net.ProposalNet.propose`. Like torchvision's export it leaves the
class-agnostic NMS 0.4 and top-30 of DMN-AOA to the sdk.

So the same proposals reach DMN-AOA through the adapter (image → graph → box-28 masks pasted
back on the stride-4 grid by the sdk) instead of the vosedge contract (features → full-frame
stride-4 masks); comparing the two measures what the adapter's conversion costs.

``python -m export.proposal_maskrcnn --out /tmp/ours-maskrcnn.onnx`` then
``vos-export --from-export sdk/models/default --proposals /tmp/ours-maskrcnn.onnx
--proposal-format maskrcnn --out exports/lite-dmn-maskrcnn``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import click
import torch
from torch import nn

from training.dmn import _roi_per_object
from training.roi_align import roi_align  # noqa: F401  (the RoiAlign symbolic _roi_per_object exports)

BOX_MASK = 28


class MaskRCNNFormat(nn.Module):
    """image [3,H,W] RGB in [0,1] (H, W multiples of 16) → boxes [K,4], labels [K] int64,
    scores [K], masks [K,1,28,28] (module docstring). ``core``: a
    :class:`training.networks.VOSNetwork` (its key encoder and normalisation), ``proposals``: a
    :class:`training.proposal_net.ProposalNet` on its features."""

    def __init__(self, core: nn.Module, proposals: nn.Module):
        super().__init__()
        self.key_encoder, self.proposals = core.key_encoder, proposals
        self.register_buffer("mean", torch.tensor(core.config["mean"]).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(core.config["std"]).view(3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor):
        f4, f8, f16 = self.key_encoder(((image - self.mean) / self.std)[None])
        boxes, scores, masks = self.proposals.propose(f16, f8, f4)
        labels = torch.ones_like(scores, dtype=torch.int64)
        # the proposal masks live on the stride-4 grid; their boxes are in input px (= 4 × grid)
        box_masks = _roi_per_object(masks[:, None], boxes, BOX_MASK)
        return boxes, labels, scores, box_masks


def export_maskrcnn_format(core: nn.Module, proposals: nn.Module, path: str | Path, opset: int = 17) -> Path:
    """Trace :class:`MaskRCNNFormat` on a 64 × 96 image (dynamic H, W, K) → ``path``."""
    graph = MaskRCNNFormat(core, proposals).eval()
    axes = {"images_tensors": {1: "H", 2: "W"}, "boxes": {0: "K"}, "labels": {0: "K"}, "scores": {0: "K"},
            "masks": {0: "K"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (torch.rand(3, 64, 96),), str(path), input_names=["images_tensors"],
                          output_names=["boxes", "labels", "scores", "masks"], dynamic_axes=axes,
                          opset_version=opset, dynamo=False)
    return Path(path)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--core", default="training/weights/lite.safetensors", show_default=True,
              help="Core checkpoint whose key encoder feeds the proposal head.")
@click.option("--proposals", "weights", default="training/weights/proposals-lite.safetensors", show_default=True,
              help="Proposal network weights (python -m training.proposal_train).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The .onnx to write.")
def main(core, weights, out):
    """Write our proposal network as a torchvision-Mask-R-CNN-signature ONNX graph (for the
    adapter path: vos-export --proposals OUT --proposal-format maskrcnn)."""
    from training.checkpoint import load_checkpoint
    from training.proposal_train import load_proposal_checkpoint

    try:
        net, _ = load_checkpoint(core)
        prop, _ = load_proposal_checkpoint(weights)
    except (FileNotFoundError, RuntimeError) as error:
        raise click.ClickException(str(error)) from None
    export_maskrcnn_format(net.eval(), prop.eval(), out)
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
