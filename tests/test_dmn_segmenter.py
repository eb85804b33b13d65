"""Segmenter(method="dmn_aoa") (sdk/dmn_aoa.py) on a tiny export with freshly initialised DMN-AOA
graphs: with RefineNet's zero-initialised coarse-mask injection its masks equal every_k's; the
object memory follows the pixel policy in constant bytes; proposals (plain arrays of the
canonical form) drive the AOA graph; objects added and removed mid-stream; bad options refused."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import sdk
from sdk.errors import InputError, ManifestError, ParameterError
from sdk.segmenter import STAGES

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def dmn_folder(tiny_export, tiny_net, tmp_path_factory):
    from export.dmn_export import export_dmn
    from training.dmn import DMNAOA

    folder = tmp_path_factory.mktemp("dmnseg") / "tiny"
    shutil.copytree(tiny_export, folder)
    torch.manual_seed(2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_dmn(DMNAOA(tiny_net).eval(), folder)
    finally:
        torch.set_num_threads(threads)
    return folder


def _clip(frames=8, size=(96, 128)):
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    rgb, masks = [], []
    for t in range(frames):
        frame = np.stack([xx * 2 % 256, yy * 2 % 256, np.full_like(xx, 90)], -1).astype(np.uint8)
        mask = np.zeros(size, np.uint8)
        x = 20 + 3 * t
        frame[30:60, x:x + 30] = (240, 30, 30)
        mask[30:60, x:x + 30] = 1
        frame[10:30, 90 - 2 * t:110 - 2 * t] = (30, 200, 40)
        mask[10:30, 90 - 2 * t:110 - 2 * t] = 2
        rgb.append(frame)
        masks.append(mask)
    return rgb, masks


def _proposals(image, features=None):
    """Three proposals of the canonical form: boxes on the padded frame, masks on its f4 grid."""
    _, _, h, w = image.shape
    masks = np.zeros((3, h // 4, w // 4), np.float32)
    masks[0, 7:15, 5:15] = 0.9
    masks[1, 2:8, 20:28] = 0.8
    masks[2, :, :4] = 0.3
    boxes = np.array([[20, 28, 60, 60], [80, 8, 112, 32], [0, 0, 16, h]], np.float32)
    return boxes, np.array([0.9, 0.8, 0.3], np.float32), masks


def _injecting_export(dmn_folder, tiny_net, folder):
    """A copy of ``dmn_folder`` whose RefineNet reads the coarse mask (injection weights 2, not 0)."""
    from export.dmn_export import export_dmn
    from training.dmn import DMNAOA

    shutil.copytree(dmn_folder, folder)
    torch.manual_seed(0)
    dmn = DMNAOA(tiny_net).eval()
    with torch.no_grad():
        for conv in dmn.refiner.inject:
            conv.weight.fill_(2.0)
    export_dmn(dmn, folder)
    return folder


@pytest.mark.parametrize("memory,params", [(None, {"k": 3}), ("first_latest", {})])
def test_zero_initialised_refine_gives_the_core_policy_masks(dmn_folder, memory, params):
    rgb, masks = _clip()
    core = sdk.Segmenter(dmn_folder, method=memory or "every_k", providers="cpu", resolution=None, **params)
    dmn = sdk.Segmenter(dmn_folder, method="dmn_aoa", memory=memory, proposals=_proposals, providers="cpu",
                        resolution=None, **params)
    for t, frame in enumerate(rgb):
        a = core.step(frame, masks[0] if t == 0 else None, return_probabilities=True)
        b = dmn.step(frame, masks[0] if t == 0 else None, return_probabilities=True)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
    assert set(dmn.timings) == {*STAGES, "total"}
    assert dmn.timings["refine"] > 0 and dmn.timings["dmn"] > 0 and dmn.timings["aoa"] > 0
    assert dmn.timings["decoder"] == 0 and core.timings["refine"] == 0
    assign = dmn._dmn.last_assignment
    assert assign.shape == (2, 3) and (assign >= 0).all() and (assign.sum(0) <= 1 + 1e-4).all()
    assert dmn.bank_bytes > core.bank_bytes


def test_injection_reads_the_coarse_mask_and_no_proposals_skip_aoa(dmn_folder, tiny_net, tmp_path):
    """A RefineNet whose injection weights are not zero reads the coarse mask: its masks differ
    from every_k's when proposals are matched, and equal them without proposals (coarse = 0,
    aoa_match skipped)."""
    folder = _injecting_export(dmn_folder, tiny_net, tmp_path / "inject")
    rgb, masks = _clip(4)
    runs = {"with": sdk.Segmenter(folder, method="dmn_aoa", proposals=_proposals, providers="cpu", resolution=None),
            "without": sdk.Segmenter(folder, method="dmn_aoa", providers="cpu", resolution=None),
            "every_k": sdk.Segmenter(folder, method="every_k", providers="cpu", resolution=None)}
    for t, frame in enumerate(rgb):
        out = {name: seg.step(frame, masks[0] if t == 0 else None, True) for name, seg in runs.items()}
    np.testing.assert_allclose(out["without"].probabilities, out["every_k"].probabilities, atol=1e-5)
    assert np.abs(out["with"].probabilities - out["every_k"].probabilities).max() > 1e-2
    assert runs["without"].timings["aoa"] == 0 and runs["with"].timings["aoa"] > 0


def test_the_exports_proposals_graph_is_the_default_source(dmn_folder, tiny_net, tmp_path):
    """An export with a proposals.onnx (vosedge format, reading f16) feeds DMN-AOA by default:
    the same masks as the same proposals given as a callable (after the sdk's threshold, NMS
    0.4 and top-30, which keep all three), with the proposals and aoa stages timed;
    proposals=False runs without them (every_k's masks)."""
    from export.proposals import add_proposals
    from tests.proposal_graphs import vosedge_graph

    folder = _injecting_export(dmn_folder, tiny_net, tmp_path / "with-proposals")
    rgb, masks = _clip(4)
    boxes, scores, grid_masks = _proposals(np.zeros((1, 3, 96, 128), np.float32))
    add_proposals(folder, vosedge_graph(tmp_path / "p.onnx", boxes, scores, grid_masks, inputs=("f16",)), "vosedge")
    runs = {"default": sdk.Segmenter(folder, method="dmn_aoa", providers="cpu", resolution=None),
            "callable": sdk.Segmenter(folder, method="dmn_aoa", proposals=_proposals, providers="cpu",
                                      resolution=None),
            "none": sdk.Segmenter(folder, method="dmn_aoa", proposals=False, providers="cpu", resolution=None),
            "every_k": sdk.Segmenter(folder, method="every_k", providers="cpu", resolution=None)}
    for t, frame in enumerate(rgb):
        out = {name: seg.step(frame, masks[0] if t == 0 else None, True) for name, seg in runs.items()}
    np.testing.assert_allclose(out["default"].probabilities, out["callable"].probabilities, atol=1e-6)
    np.testing.assert_allclose(out["none"].probabilities, out["every_k"].probabilities, atol=1e-5)
    assert np.abs(out["default"].probabilities - out["every_k"].probabilities).max() > 1e-2
    assert runs["default"].timings["proposals"] > 0 and runs["default"].timings["aoa"] > 0
    assert runs["none"].timings["aoa"] == 0
    with pytest.raises(ParameterError, match="proposals"):
        sdk.Segmenter(folder, method="every_k", proposals=False, providers="cpu")


def test_object_memory_constant_bytes_and_objects_mid_stream(dmn_folder):
    rgb, masks = _clip(12)
    only_first = np.where(masks[0] == 1, 1, 0).astype(np.uint8)
    seg = sdk.Segmenter(dmn_folder, method="dmn_aoa", memory="every_k", k=2, max_frames=3, proposals=_proposals,
                        providers="cpu", resolution=None)
    seg.step(rgb[0], only_first)
    sizes = []
    for t in range(1, 12):
        if t == 4:                                          # object 2 appears mid-stream
            seg.step(rgb[t], np.where(masks[t] == 2, 2, 0).astype(np.uint8))
            assert seg.objects == (1, 2)
            bank = seg._dmn.bank
            written_before = [s for s, f in enumerate(bank.origin) if 0 <= f < 4]
            assert written_before and all((bank.valid[1, s * 64:(s + 1) * 64] == 0).all() for s in written_before)
        else:
            seg.step(rgb[t])
        if t >= 4:
            sizes.append(seg.bank_bytes)
        if t == 8:
            seg.remove_object(1)
            assert seg._dmn.bank.num_objects == 1 and seg.objects == (2,)
    assert len(set(sizes)) == 1
    assert (seg._dmn.bank.origin[:3] == seg.bank.frames).all()


def test_options_refused(dmn_folder, tiny_export):
    with pytest.raises(ParameterError, match="memory"):
        sdk.Segmenter(dmn_folder, method="dmn_aoa", memory="lfu", providers="cpu")
    with pytest.raises(ParameterError, match="dmn_aoa"):
        sdk.Segmenter(dmn_folder, method="every_k", memory="first_latest", providers="cpu")
    with pytest.raises(ManifestError, match="dmn_memory"):
        sdk.Segmenter(tiny_export, method="dmn_aoa", providers="cpu")
    with pytest.raises(InputError, match="callable"):
        sdk.Segmenter(dmn_folder, method="dmn_aoa", proposals=3, providers="cpu")
    rgb, masks = _clip(2)
    seg = sdk.Segmenter(dmn_folder, method="dmn_aoa", proposals=lambda image, features: (np.zeros((2, 4), np.float32),
                                                                               None, np.zeros((2, 3, 3), np.float32)),
                        providers="cpu", resolution=None)
    seg.step(rgb[0], masks[0])
    with pytest.raises(InputError, match="proposal masks of shape"):
        seg.step(rgb[1])
    assert seg.frame_index == 1                              # the refused frame changed nothing


def test_vos_segment_and_bench_take_method_dmn_aoa(dmn_folder, tmp_path):
    """vos-segment --method dmn_aoa runs the DMN-AOA graphs (no proposals: coarse 0) and writes
    the same masks as --method every_k at initialisation; --param goes to its every_k memory;
    vos-bench and vos-grid accept the method name."""
    import click
    from click.testing import CliRunner
    from PIL import Image

    from benchmarks import bench, grid
    from sdk import cli

    rgb, masks = _clip(4)
    frames = tmp_path / "frames"
    frames.mkdir()
    for t, frame in enumerate(rgb):
        Image.fromarray(frame).save(frames / f"{t:05d}.jpg", quality=95)
    Image.fromarray(masks[0]).save(tmp_path / "first.png")
    outs = {}
    for method in ("dmn_aoa", "every_k"):
        out = tmp_path / method
        result = CliRunner().invoke(cli.main, ["--frames", str(frames), "--mask", str(tmp_path / "first.png"),
                                               "--out", str(out), "--model", str(dmn_folder), "--method", method,
                                               "--resolution", "native", "--param", "k=2", "--providers", "cpu"])
        assert result.exit_code == 0, result.output
        outs[method] = {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))}
    assert len(outs["dmn_aoa"]) == 4 and outs["dmn_aoa"].keys() == outs["every_k"].keys()
    for name in outs["every_k"]:
        np.testing.assert_array_equal(outs["dmn_aoa"][name], outs["every_k"][name])
    bad = CliRunner().invoke(cli.main, ["--frames", str(frames), "--mask", str(tmp_path / "first.png"), "--out",
                                        str(tmp_path / "bad"), "--model", str(dmn_folder), "--method", "dmn_aoa",
                                        "--param", "sigma=0.5"])
    assert bad.exit_code == 2 and "sigma" in bad.output
    assert bench._methods(None, None, "every_k,dmn_aoa") == ["every_k", "dmn_aoa"]
    assert grid._methods(None, None, "dmn_aoa") == ["dmn_aoa"]
    with pytest.raises(click.BadParameter, match="dmn_aoa"):
        grid._methods(None, None, "nope")
