"""Export the bundled proposal network (:mod:`training.proposal_net`) as ``proposals.onnx``.

Graph ("vosedge" proposal format, issue 27 item 1): inputs the key encoder's outputs
``f16`` [1,112,h,w], ``f8`` [1,40,2h,2w], ``f4`` [1,24,4h,4w] float32 (the sdk reuses the key
encoder's run; no second backbone), outputs ``boxes`` [P,4] float32 (x1, y1, x2, y2 in px of
the padded internal input image, H = 16h, W = 16w), ``scores`` [P] float32 in [0,1], ``masks``
[P,4h,4w] float32 full-frame probabilities on the f4 grid, P = min(top_k, h·w) (dynamic): the
top cells by objectness before any threshold, NMS or top-P, which the sdk applies
(``postprocess_in_graph`` all false; DMN-AOA §4.1: NMS 0.4, top 30).

``python -m export.proposal_export --checkpoint training/weights/proposals-lite.safetensors
--export DIR`` adds the graph and the manifest's top-level ``"proposals"`` entry to an existing
export folder after a torch ↔ ONNX Runtime parity check; nothing is written when a check fails.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import click
import numpy as np

from sdk.manifest import FORMAT, MANIFEST_FILE
from sdk.proposals import DEFAULT_SCORE_THRESHOLD

from .errors import ParityError
from .proposals import manifest_entry

GRAPH_FILE = "proposals.onnx"
INPUTS = ("f16", "f8", "f4")
OUTPUTS = ("boxes", "scores", "masks")
#: default score threshold of the bundled net (objectness × maskness), below which the sdk drops a proposal
SCORE_THRESHOLD = DEFAULT_SCORE_THRESHOLD  # the sdk's (torchvision's box_score_thresh); recall is flat for 0-0.1
#: tolerances of the parity check: max-abs on scores and mask probabilities, box px
PARITY_TOL = {"scores": 1e-4, "masks": 1e-4, "boxes_px": 4.0, "min_box_agreement": 0.99}


class _Graph:
    """torch module wrapper: forward(f16, f8, f4) = ProposalNet.propose."""

    def __new__(cls, net):
        import torch

        class Graph(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, f16, f8, f4):
                return self.net.propose(f16, f8, f4)

        return Graph().eval()


def export_graph(net, path: str | Path, opset: int = 17) -> Path:
    """Trace ``net.propose`` (a :class:`training.proposal_net.ProposalNet`) on a 4×6 f16 grid and
    write the ONNX graph (dynamic h, w, P) to ``path``. Returns ``path``."""
    import torch

    c = net.config["skip_channels"]
    h, w = 4, 6
    ex = (torch.randn(1, c["f16"], h, w), torch.randn(1, c["f8"], 2 * h, 2 * w), torch.randn(1, c["f4"], 4 * h, 4 * w))
    axes = {"f16": {2: "h", 3: "w"}, "f8": {2: "h8", 3: "w8"}, "f4": {2: "h4", 3: "w4"},
            "boxes": {0: "P"}, "scores": {0: "P"}, "masks": {0: "P", 1: "h4", 2: "w4"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Graph(net), ex, str(path), input_names=list(INPUTS), output_names=list(OUTPUTS),
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    return Path(path)


def check_parity(net, path: str | Path, feature_sets) -> dict:
    """torch ``net.propose`` vs ONNX Runtime (CPU) on each (f16, f8, f4) float32 array triple.

    Same P and cell order required; scores and masks within :data:`PARITY_TOL` max-abs; boxes
    (edges of masks thresholded at 0.5, so a probability within 1e-4 of 0.5 may move an edge)
    within 4 px for ≥ 99 % of the proposals. Returns the worst numbers; raises
    :class:`export.errors.ParityError` naming the output that disagrees.
    """
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = {"scores_max_abs": 0.0, "masks_max_abs": 0.0, "boxes_agreement": 1.0, "sizes": []}
    with torch.no_grad():
        for f16, f8, f4 in feature_sets:
            ref = [t.numpy() for t in net.propose(torch.from_numpy(f16), torch.from_numpy(f8), torch.from_numpy(f4))]
            got = sess.run(list(OUTPUTS), {"f16": f16, "f8": f8, "f4": f4})
            if got[0].shape != ref[0].shape or got[2].shape != ref[2].shape:
                raise ParityError(f"proposals.onnx returns P = {got[1].shape[0]}, masks {got[2].shape}; "
                                  f"torch {ref[1].shape[0]}, {ref[2].shape}")
            ds = float(np.abs(got[1] - ref[1]).max(initial=0))
            dm = float(np.abs(got[2] - ref[2]).max(initial=0))
            agree = float(np.mean(np.abs(got[0] - ref[0]).max(1) <= PARITY_TOL["boxes_px"])) if len(ref[0]) else 1.0
            if ds > PARITY_TOL["scores"]:
                raise ParityError(f"proposals.onnx output 'scores' differs from torch by {ds:.2e} (> {PARITY_TOL['scores']})")
            if dm > PARITY_TOL["masks"]:
                raise ParityError(f"proposals.onnx output 'masks' differs from torch by {dm:.2e} (> {PARITY_TOL['masks']})")
            if agree < PARITY_TOL["min_box_agreement"]:
                raise ParityError(f"proposals.onnx output 'boxes': only {agree:.1%} within {PARITY_TOL['boxes_px']} px of torch")
            worst["scores_max_abs"] = max(worst["scores_max_abs"], ds)
            worst["masks_max_abs"] = max(worst["masks_max_abs"], dm)
            worst["boxes_agreement"] = min(worst["boxes_agreement"], agree)
            worst["sizes"].append(list(f16.shape[2:]))
    return worst


def random_features(rng: np.random.Generator, sizes=((4, 6), (7, 5)), channels=(112, 40, 24)):
    """Random (f16, f8, f4) float32 triples for f16 grids ``sizes`` (parity on odd shapes)."""
    out = []
    for h, w in sizes:
        out.append(tuple(rng.standard_normal((1, c, h * s, w * s)).astype(np.float32)
                         for c, s in zip(channels, (1, 2, 4))))
    return out


def export_features_of(folder: Path, images) -> list:
    """(f16, f8, f4) of RGB uint8 images [H,W,3] (H, W multiples of 16) through the export's own
    ``key_encoder.onnx`` and normalisation."""
    import onnxruntime as ort

    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    enc = manifest["graphs"]["key_encoder"]
    sess = ort.InferenceSession(str(folder / enc["file"]), providers=["CPUExecutionProvider"])
    mean = np.asarray(manifest["normalisation"]["mean"], np.float32)
    std = np.asarray(manifest["normalisation"]["std"], np.float32)
    feats = []
    for rgb in images:
        x = ((rgb.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)[None]
        out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x})))
        feats.append((out["f16"], out["f8"], out["f4"]))
    return feats


def add_to_export(net, folder: str | Path, score_threshold: float = SCORE_THRESHOLD, images=None,
                  opset: int = 17) -> dict:
    """Add ``proposals.onnx`` and the ``"proposals"`` manifest entry to the vosedge export in
    ``folder`` (replacing an earlier one).

    Parity (:func:`check_parity`) on random features of two odd grid sizes and, if ``images``
    (RGB uint8 [H,W,3], sides multiples of 16) are given, on their features through the export's
    key encoder. The graph is written next to the manifest only after parity passes, then the
    manifest is rewritten atomically. Returns the entry (with its ``parity`` numbers).
    Raises FileNotFoundError / ValueError naming what is wrong with ``folder`` (no manifest, not
    a vosedge export, skip channels that are not the net's), :class:`ParityError`.
    """
    folder = Path(folder)
    mpath = folder / MANIFEST_FILE
    if not mpath.is_file():
        raise FileNotFoundError(f"{folder} has no {MANIFEST_FILE}: not a vosedge export (make one with vos-export)")
    manifest = json.loads(mpath.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{mpath} is not a vosedge export manifest (format {manifest.get('format')!r}, expected {FORMAT!r})")
    want = net.config["skip_channels"]
    if manifest.get("skip_channels") != want:
        raise ValueError(f"the export's skip_channels {manifest.get('skip_channels')} are not the proposal net's {want}: "
                         "it was trained on the lite key encoder's features")
    was_training = net.training
    net.eval()
    tmp = Path(tempfile.mkdtemp(prefix=".proposals-", dir=folder))
    try:
        graph = export_graph(net, tmp / GRAPH_FILE, opset)
        sets = random_features(np.random.default_rng(0), channels=tuple(want[k] for k in INPUTS))
        if images is not None:
            sets += export_features_of(folder, images)
        parity = check_parity(net, graph, sets)
        entry = {**manifest_entry(graph, "vosedge", defaults={"score_threshold": score_threshold}, file=GRAPH_FILE),
                 "parity": {k: v for k, v in parity.items() if k != "sizes"} | {"f16_grids": parity["sizes"]}}
        shutil.move(str(graph), folder / GRAPH_FILE)
        manifest["proposals"] = entry
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / MANIFEST_FILE).replace(mpath)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        net.train(was_training)
    return entry


def _davis_images(root: Path, count: int = 2):
    """First frames of the first ``count`` val sequences, cropped to multiples of 16."""
    from sdk.davis import davis_sequence_dirs, read_split
    from sdk.io import iter_frames

    images = []
    for name in read_split(root, "val")[:count]:
        _, rgb = next(iter(iter_frames(davis_sequence_dirs(root, name)[0])))
        h, w = rgb.shape[0] // 16 * 16, rgb.shape[1] // 16 * 16
        images.append(np.ascontiguousarray(rgb[:h, :w]))
    return images


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", default="training/weights/proposals-lite.safetensors", show_default=True,
              type=click.Path(exists=True, dir_okay=False), help="Proposal-net checkpoint (X.safetensors + X.json).")
@click.option("--export", "folder", required=True, type=click.Path(exists=True, file_okay=False),
              help="Existing vosedge export folder (its manifest.json gains the \"proposals\" entry).")
@click.option("--score-threshold", default=SCORE_THRESHOLD, show_default=True, type=click.FloatRange(0, 1),
              help="Default score threshold recorded in the manifest.")
@click.option("--parity-data", type=click.Path(exists=True, file_okay=False),
              help="DAVIS-layout root: also check parity on the first frames of 2 val sequences.")
def main(checkpoint, folder, score_threshold, parity_data):
    """Add proposals.onnx (the bundled SOLOv2-style proposal head) to an export folder."""
    from training.proposal_train import load_proposal_checkpoint

    try:
        net, _ = load_proposal_checkpoint(checkpoint)
        images = _davis_images(Path(parity_data)) if parity_data else None
        entry = add_to_export(net, folder, score_threshold, images)
    except (FileNotFoundError, ValueError, ParityError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {Path(folder) / GRAPH_FILE}; parity {json.dumps(entry['parity'])}")


if __name__ == "__main__":
    main()
