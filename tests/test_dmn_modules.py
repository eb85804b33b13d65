"""DMN-AOA's torch modules (training/dmn.py, training/roi_align.py) against onnxruntime's RoiAlign
and against direct NumPy formulas of the paper's equations (§3.2 Eq. 1, §3.3 Eq. 2–3), the
Sinkhorn matching layer's marginals, and RefineNet == the core decoder at initialisation."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from training.dmn import DMNAOA, TimeEmbedding, aoa_similarity, sinkhorn, template_decoder  # noqa: E402
from training.roi_align import roi_align, roi_align_reference  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ort_roi_align(features, boxes, size, scale):
    from onnx import TensorProto, helper

    node = helper.make_node("RoiAlign", ["X", "rois", "bi"], ["Y"], output_height=size, output_width=size,
                            sampling_ratio=2, spatial_scale=scale, mode="avg",
                            coordinate_transformation_mode="half_pixel")
    graph = helper.make_graph([node], "roi", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None),
                                              helper.make_tensor_value_info("rois", TensorProto.FLOAT, None),
                                              helper.make_tensor_value_info("bi", TensorProto.INT64, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": features, "rois": boxes, "bi": np.zeros(len(boxes), np.int64)})[0]


@pytest.mark.parametrize("scale,shape", [(1 / 16, (1, 7, 5, 9)), (1 / 4, (1, 3, 24, 20))])
def test_roi_align_matches_onnxruntime(scale, shape):
    rng = np.random.default_rng(3)
    features = rng.standard_normal(shape).astype(np.float32)
    height, width = shape[2] / scale, shape[3] / scale
    random = rng.uniform([-0.3 * width, -0.3 * height, 0, 0], [width, height, 0.7 * width, 0.7 * height], (40, 4))
    random[:, 2:] += random[:, :2]
    special = [[0, 0, width, height],                       # whole frame
               [-0.5 * width, -0.4 * height, 0.3 * width, 0.2 * height],   # partly outside, top left
               [0.8 * width, 0.7 * height, 1.6 * width, 1.5 * height],     # partly outside, bottom right
               [-3 * width, -3 * height, -2 * width, -2 * height],         # entirely outside: zeros
               [10.2, 11.7, 10.3, 11.75],                                  # tiny box
               [5.0, 6.0, 5.0, 6.0]]                                       # empty box
    boxes = np.concatenate([random, special]).astype(np.float32)
    want = _ort_roi_align(features, boxes, 8, scale)
    got = roi_align(torch.from_numpy(features), torch.from_numpy(boxes), 8, scale).numpy()
    assert got.shape == want.shape == (len(boxes), shape[1], 8, 8)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.abs(want[-3]).max() == 0                       # outside the frame reads nothing
    assert np.abs(want[:-3]).max() > 0


def test_roi_align_is_differentiable_and_exports_as_the_onnx_op(tmp_path):
    features = torch.randn(1, 4, 6, 6, requires_grad=True)
    boxes = torch.tensor([[8.0, 9.0, 60.0, 70.0]], requires_grad=True)
    roi_align(features, boxes, 8, 1 / 16).sum().backward()
    assert features.grad.abs().sum() > 0 and boxes.grad.abs().sum() > 0
    path = tmp_path / "roi.onnx"

    class Part(torch.nn.Module):
        def forward(self, f, b):
            return roi_align(f, b, 8, 1 / 16)

    torch.onnx.export(Part(), (features.detach(), boxes.detach()), str(path), input_names=["f", "b"],
                      output_names=["y"], dynamic_axes={"b": {0: "R"}, "y": {0: "R"}}, opset_version=17, dynamo=False)
    nodes = [n for n in onnx.load(str(path)).graph.node if n.op_type == "RoiAlign"]
    assert len(nodes) == 1
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["mode"] == b"avg" and attrs["coordinate_transformation_mode"] == b"half_pixel"
    assert attrs["sampling_ratio"] == 2 and attrs["output_height"] == attrs["output_width"] == 8
    f = np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)
    b = np.array([[1, 2, 90, 80], [-20, 30, 40, 200], [50, 50, 51, 52]], np.float32)   # other R than traced
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"f": f, "b": b})[0]
    np.testing.assert_allclose(got, roi_align_reference(torch.from_numpy(f), torch.from_numpy(b), 8, 1 / 16).numpy(),
                               atol=1e-5)


def test_template_decoder_is_eq1():
    rng = np.random.default_rng(1)
    n, ck, c, s, m = 2, 8, 12, 3, 20
    q = rng.standard_normal((n, ck, s, s)).astype(np.float32)
    k = rng.standard_normal((n, ck, m)).astype(np.float32)
    v = rng.standard_normal((n, c, m)).astype(np.float32)
    valid = np.ones((n, m), np.float32)
    valid[1, 5:] = 0
    got = template_decoder(*map(torch.from_numpy, (q, k, v, valid))).numpy()
    for i in range(n):
        keep = valid[i] > 0
        logits = q[i].reshape(ck, -1).T @ k[i][:, keep] / math.sqrt(ck)          # [SS, M_valid]
        weights = np.exp(logits - logits.max(1, keepdims=True))
        weights /= weights.sum(1, keepdims=True)
        want = (v[i][:, keep] @ weights.T).reshape(c, s, s)                       # T = softmax(QK/√(C/4)) V
        np.testing.assert_allclose(got[i], want, atol=1e-5)
    # an invalid position does not change the template, whatever it holds
    v2 = v.copy()
    v2[1, :, 5:] = 1e6
    again = template_decoder(*map(torch.from_numpy, (q, k, v2, valid))).numpy()
    np.testing.assert_array_equal(again[1], got[1])


@pytest.mark.parametrize("align", [True, False])
def test_aoa_similarity_is_eq2_eq3(align):
    rng = np.random.default_rng(2)
    n, p, d, s, alpha = 2, 3, 5, 3, 7.0
    t = rng.standard_normal((n, d, s, s)).astype(np.float32)
    pr = rng.standard_normal((p, d, s, s)).astype(np.float32)
    got = aoa_similarity(torch.from_numpy(t), torch.from_numpy(pr), alpha, align).numpy()
    unit = lambda x: x / np.linalg.norm(x, axis=0, keepdims=True)  # noqa: E731
    for i in range(n):
        ti = t[i].reshape(d, -1)
        for j in range(p):
            pj = pr[j].reshape(d, -1)
            if align:
                cos = unit(ti).T @ unit(pj)                                # cos(i, j), i template, j proposal
                e = np.exp(alpha * cos)
                weights = e / e.sum(1, keepdims=True)                      # Eq. 2
                aligned = pj @ weights.T                                   # Eq. 3: P″_i = Σ_j S_ij P′_j
            else:
                aligned = pj
            want = (ti * aligned).sum() / np.linalg.norm(ti) / np.linalg.norm(aligned)
            assert got[i, j] == pytest.approx(want, abs=1e-5)
    if align:    # the aligned proposal of a template position-permuted copy matches it perfectly
        shuffled = t[:1].reshape(1, d, -1)[:, :, rng.permutation(s * s)].reshape(1, d, s, s)
        same = aoa_similarity(torch.from_numpy(t[:1]), torch.from_numpy(shuffled), 100.0).numpy()
        raw = aoa_similarity(torch.from_numpy(t[:1]), torch.from_numpy(shuffled), 100.0, align=False).numpy()
        assert same[0, 0] > 0.999 and raw[0, 0] < same[0, 0]


def test_sinkhorn_marginals_with_dustbin():
    rng = np.random.default_rng(4)
    n, p = 3, 5
    scores = torch.from_numpy(rng.standard_normal((n, p)).astype(np.float32) * 3)
    dustbin = torch.tensor(0.5)

    def full(iterations):
        a = sinkhorn(scores, dustbin, iterations)
        return a, 1 - a.sum(1), 1 - a.sum(0)          # object rows' and proposal columns' dustbin mass

    a, row_bin, col_bin = full(10)
    assert a.shape == (n, p) and (a >= 0).all() and (a <= 1).all()
    # the iteration ends on the columns: every proposal column sums to 1 with the dustbin row
    z = torch.cat([torch.cat([scores, dustbin.expand(n, 1)], 1), dustbin.expand(1, p + 1)], 0)
    u = torch.zeros(n + 1)
    v = torch.zeros(p + 1)
    log_rows = torch.cat([torch.zeros(n), torch.tensor([math.log(p)])])
    log_cols = torch.cat([torch.zeros(p), torch.tensor([math.log(n)])])
    for _ in range(10):
        u = log_rows - torch.logsumexp(z + v, 1)
        v = log_cols - torch.logsumexp(z + u[:, None], 0)
    plan = (z + u[:, None] + v).exp()
    np.testing.assert_allclose(plan[:-1, :-1].numpy(), a.numpy(), atol=1e-6)
    np.testing.assert_allclose(plan.sum(0).numpy(), np.r_[np.ones(p), n], rtol=1e-5)
    assert (row_bin >= -1e-5).all() and (col_bin >= -1e-5).all()
    # converged: object rows sum to 1 with their dustbin column too
    plan_rows = sinkhorn(scores, dustbin, 200).sum(1)
    assert (plan_rows <= 1 + 1e-4).all()
    # a dominant pair gets (almost) all of its row
    peaked = torch.full((2, 3), -10.0)
    peaked[0, 2] = peaked[1, 0] = 10.0
    hard = sinkhorn(peaked, torch.tensor(0.0), 100).numpy()
    assert hard[0, 2] > 0.98 and hard[1, 0] > 0.98 and hard[0, :2].max() < 0.01   # entropic: not exactly 1
    assert sinkhorn(peaked, torch.tensor(0.0), 10).numpy()[0, 2] > 0.9


def test_time_embedding_is_vaswani_at_initialisation():
    emb = TimeEmbedding(8)
    t = torch.tensor([0.0, 3.0, 40.0])
    got = emb(t).detach().numpy()
    i = np.arange(4)
    want = np.stack([np.sin(t.numpy()[:, None] / 10000 ** (2 * i / 8)),
                     np.cos(t.numpy()[:, None] / 10000 ** (2 * i / 8))], 2).reshape(3, 8)
    np.testing.assert_allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="even"):
        TimeEmbedding(7)


def test_modules_shapes_and_refine_equals_decoder_at_init(tiny_net):
    torch.manual_seed(0)
    dmn = DMNAOA(tiny_net).eval()
    h, w, n, p = 3, 4, 2, 4
    image = torch.randn(1, 3, 16 * h, 16 * w)
    with torch.no_grad():
        key, f16, f8, f4 = tiny_net.encode_key(image)
        boxes = torch.tensor([[0.0, 0.0, 30.0, 40.0], [20.0, 5.0, 64.0, 48.0]])
        masks = torch.rand(n, 1, 4 * h, 4 * w)
        time = torch.tensor([0.0, 5.0])
        mk, mv = dmn.encode_memory(f16, boxes, masks, time)
        assert mk.shape == (n, 32, 8, 8) and mv.shape == (n, 128, 8, 8)
        # each object's mask ROI is its own: swapping object 1's mask changes object 1 only
        masks2 = masks.clone()
        masks2[1] = 1 - masks2[1]
        mk2, _ = dmn.encode_memory(f16, boxes, masks2, time)
        assert torch.equal(mk2[0], mk[0]) and not torch.allclose(mk2[1], mk[1])
        # time matters (relative-time embedding)
        assert not torch.allclose(dmn.encode_memory(f16, boxes, masks, time + 10)[0], mk)
        valid = torch.ones(n, 2 * 64)
        template = dmn.template(f16, boxes, time, torch.cat([mk, mk], 2).flatten(2)[:, :, :128],
                                torch.cat([mv, mv], 2).flatten(2)[:, :, :128], valid)
        assert template.shape == (n, 128, 8, 8)
        pboxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 10.0, 60.0, 40.0], [30, 0, 64, 48], [5, 5, 6, 6]])
        pmasks = torch.rand(p, 4 * h, 4 * w)
        assignment, similarity, coarse = dmn.match(template, f16, pboxes, pmasks)
        assert assignment.shape == similarity.shape == (n, p) and coarse.shape == (n, 1, 4 * h, 4 * w)
        np.testing.assert_allclose(coarse.numpy(), (assignment @ pmasks.flatten(1)).reshape(n, 1, 4 * h, 4 * w),
                                   atol=1e-6)
        assert (similarity.abs() <= 1 + 1e-6).all() and (assignment.sum(0) <= 1 + 1e-5).all()
        readout = torch.randn(n, tiny_net.config["value_channels"], h, w)
        ref = tiny_net.decode(readout, f16, f8, f4)
        assert torch.equal(dmn.refine(readout, coarse, f16, f8, f4), ref)
        # with non-zero injections the coarse mask changes the logits
        for conv in dmn.refiner.inject:
            torch.nn.init.normal_(conv.weight)
        assert not torch.allclose(dmn.refine(readout, coarse, f16, f8, f4), ref)
    # the decoder is copied, not shared: training RefineNet leaves the core decoder alone
    assert dmn.refiner.decoder.pred.weight.data_ptr() != tiny_net.decoder.pred.weight.data_ptr()
    with pytest.raises(ValueError, match="multiple of 8"):
        DMNAOA(tiny_net, channels=20)
