"""Segmenter end to end on the tiny export (random weights: we check the machinery — shapes,
labels, memory contents, bank reuse, object bookkeeping, errors — not segmentation quality)."""
import logging
import tracemalloc

import numpy as np
import pytest

from sdk import Segmenter
from sdk.errors import InputError
from sdk.manifest import GRAPH_NAMES, OPTIONAL_GRAPHS
from sdk.ops import Geometry, Workspace, channel_argmax, one_hot, sigmoid, soft_aggregate
from sdk.segmenter import GRAPH_STAGES, STAGES


@pytest.fixture
def seg_factory(tiny_export):
    return lambda **kw: Segmenter(tiny_export, providers="cpu", **kw)


# -- ops ------------------------------------------------------------------------------------
def test_geometry_resize_and_pad():
    g = Geometry.for_frame(96, 128, 64, 16)
    assert (g.resized_h, g.resized_w, g.padded_h, g.padded_w) == (64, 85, 64, 96)
    assert g.feature_size == (4, 6)
    frame = np.full((96, 128, 3), 255, np.uint8)
    image = g.image(frame, np.full(3, 0.5, np.float32), np.full(3, 0.5, np.float32))
    assert image.shape == (1, 3, 64, 96) and image.dtype == np.float32
    assert np.allclose(image[..., :85], 1.0) and np.all(image[..., 85:] == 0)   # zero padding
    native = Geometry.for_frame(50, 70, None, 16)
    assert (native.padded_h, native.padded_w, native.resized) == (64, 80, False)
    probs = np.random.default_rng(0).random((3, 64, 96), dtype=np.float32)
    assert g.to_input(probs).shape == (3, 96, 128)
    assert g.label_map(np.ones((96, 128), np.uint8)).sum() == 64 * 85


def test_soft_aggregate():
    p = np.array([[[0.9, 0.1, 0.0]], [[0.8, 0.0, 1.0]]], np.float32)     # [N=2,1,3]
    agg = soft_aggregate(p)
    assert agg.shape == (3, 1, 3)
    np.testing.assert_allclose(agg.sum(0), 1, rtol=1e-6)
    assert agg[:, 0, 1].argmax() == 0 and agg[:, 0, 2].argmax() == 2
    assert agg[1, 0, 0] > agg[2, 0, 0] > agg[0, 0, 0]
    assert one_hot(np.array([[0, 3, 7]], np.uint8), [3, 7]).tolist() == [[[0, 1, 0]], [[0, 0, 1]]]


def postprocess(g: Geometry, logits: np.ndarray, work: Workspace | None) -> tuple[np.ndarray, np.ndarray]:
    """The Segmenter's way from decoder logits [N,Hp,Wp] to (soft aggregate, argmax at input size)."""
    prob = sigmoid(logits, out=logits if work is not None else None)
    agg = soft_aggregate(prob, work)
    return agg, channel_argmax(g.to_input(agg, work), work)


def test_workspace_gives_the_same_results_and_reuses_its_arrays():
    g = Geometry.for_frame(480, 854, 240, 16)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 854, 3), np.uint8)
    mean, std = np.full(3, 0.45, np.float32), np.full(3, 0.22, np.float32)
    logits = rng.normal(0, 4, (2, g.padded_h, g.padded_w)).astype(np.float32)
    plain_image, (plain_agg, plain_index) = g.image(frame, mean, std), postprocess(g, logits.copy(), None)
    assert np.array_equal(plain_index, np.argmax(g.to_input(plain_agg), 0))
    work = Workspace()
    for _ in range(2):                                   # the second frame reuses the first one's arrays
        image = g.image(frame, mean, std, work)
        agg, index = postprocess(g, logits.copy(), work)
        assert np.array_equal(image, plain_image) and np.array_equal(index, plain_index)
        np.testing.assert_array_equal(agg, plain_agg)
    held = work.nbytes
    assert held > 480 * 854 * 3 * 4                      # the input-size probabilities are among them
    tracemalloc.start()
    try:
        copy = logits.copy()
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        g.image(frame, mean, std, work)
        postprocess(g, copy, work)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # nothing large allocated in steady state (ufunc casting buffers are 64 KiB; without the
    # workspace a frame allocates several MiB)
    assert peak < 256 * 1024 and work.nbytes == held
    assert work.array("argmax", (480, 854), np.uint8) is index
    assert work.array("argmax", (240, 427), np.uint8).shape == (240, 427)   # a new size: a new array
    work.clear()
    assert work.nbytes == 0


def test_step_results_are_the_callers(seg_factory, square_clip):
    frames, masks = square_clip(4, label=2)
    seg = seg_factory(method="every_k")
    first = [seg.step(frames[0], masks[0]), seg.step(frames[1])]
    kept = [out.copy() for out in first]
    later = [seg.step(frame) for frame in frames[2:]]
    assert all(np.array_equal(a, b) for a, b in zip(first, kept))   # later frames overwrite nothing of theirs
    assert not any(np.shares_memory(a, b) for a in first for b in later)


# -- policies through the Segmenter ------------------------------------------------------------
def run(seg, frames, masks, given=(0,)):
    outs, memory = [], []
    for t, frame in enumerate(frames):
        outs.append(seg.step(frame, masks[t] if t in given else None))
        memory.append(seg.bank.memory_frames)
    return outs, memory


def test_every_k_clip(seg_factory, square_clip):
    frames, masks = square_clip(11, label=3)
    seg = seg_factory(method="every_k")
    outs, memory = run(seg, frames, masks)
    for out in outs:
        assert out.shape == (96, 128) and out.dtype == np.uint8 and set(np.unique(out)) <= {0, 3}
    assert np.array_equal(outs[0], masks[0])            # the given mask is the output
    assert memory[:6] == [[0]] * 5 + [[0, 5]] and memory[10] == [0, 5, 10]
    assert seg.objects == (3,) and seg.frame_index == 11
    assert set(seg.timings) == {*STAGES, "total"} and seg.timings["readout"] > 0


def test_every_k_cap_and_growth(seg_factory, square_clip):
    frames, masks = square_clip(16)
    capped = seg_factory(method="every_k", max_frames=3)
    _, memory = run(capped, frames, masks)
    assert memory[10] == [0, 5, 10] and memory[15] == [0, 10, 15] and capped.bank.capacity == 3
    grown = seg_factory(method="every_k", k=1, initial_slots=2)
    _, memory = run(grown, frames[:5], masks)
    assert memory[-1] == [0, 1, 2, 3, 4] and grown.bank.capacity == 8


def test_first_latest_reuses_the_same_arrays(seg_factory, square_clip):
    frames, masks = square_clip(20)
    seg = seg_factory(method="first_latest")
    seg.step(frames[0], masks[0])
    arrays = (seg.bank.keys, seg.bank.values, seg.bank.valid)
    ids, nbytes = [id(a) for a in arrays], seg.bank_bytes
    for t in range(1, 20):
        seg.step(frames[t])
        assert seg.bank.memory_frames == [0, t]
        assert [id(a) for a in (seg.bank.keys, seg.bank.values, seg.bank.valid)] == ids
        assert all(np.shares_memory(a, b) for a, b in zip(arrays, (seg.bank.keys, seg.bank.values, seg.bank.valid)))
        assert seg.bank_bytes == nbytes
    hw = 4 * 6                                          # 64x96 padded input at stride 16
    assert nbytes == 4 * (16 * 2 * hw + 1 * 32 * 2 * hw + 2 * hw) + 8 * 2 * hw   # keys, values, valid; origin


def test_objects_introduced_mid_video(seg_factory, square_clip):
    frames, masks = square_clip(6, label=3)
    seg = seg_factory(method="every_k")
    seg.step(frames[0], masks[0])
    seg.step(frames[1])
    new = np.zeros((96, 128), np.uint8)
    new[70:90, 100:120] = 7                             # a second object, non-contiguous label
    out = seg.step(frames[2], new)
    assert seg.objects == (3, 7)
    assert np.all(out[new == 7] == 7) and set(np.unique(out)) <= {0, 3, 7}
    assert seg.bank.memory_frames == [0, 2]             # a frame with a given mask is written
    hw = seg.bank.hw
    assert seg.bank.values.shape[0] == 2
    assert np.all(seg.bank.values[1, :, :hw] == 0)      # object 7 has no value in frame 0
    assert np.any(seg.bank.values[1, :, hw:2 * hw] != 0)
    for t in range(3, 6):
        assert set(np.unique(seg.step(frames[t]))) <= {0, 3, 7}
    # re-stating a known object replaces its prediction on that frame
    restate = np.zeros((96, 128), np.uint8)
    restate[:10, :10] = 3
    out = seg.step(frames[5], restate)
    assert np.all(out[:10, :10] == 3) and seg.objects == (3, 7)


def test_resolution_options(seg_factory, square_clip):
    frames, masks = square_clip(2)
    for resolution, padded in [("manifest", (64, 96)), (None, (96, 128)), (80, (80, 112))]:
        seg = seg_factory(resolution=resolution)
        outs, _ = run(seg, frames, masks)
        assert outs[1].shape == (96, 128)
        assert (seg.geometry.padded_h, seg.geometry.padded_w) == padded
    seg = seg_factory(top_k=10_000)                     # clipped to the number of valid positions
    run(seg, frames, masks)


def test_reset_starts_a_new_video(seg_factory, square_clip):
    frames, masks = square_clip(2)
    seg = seg_factory()
    run(seg, frames, masks)
    seg.reset()
    assert seg.objects == () and seg.bank_bytes == 0
    with pytest.raises(InputError, match="first frame needs a mask"):
        seg.step(frames[0])
    small, small_masks = square_clip(2, 64, 80, label=2)
    outs, _ = run(seg, small, small_masks)
    assert outs[1].shape == (64, 80) and seg.objects == (2,)


# -- errors and providers ---------------------------------------------------------------------
def test_input_errors(seg_factory, square_clip):
    frames, masks = square_clip(2)
    seg = seg_factory()
    with pytest.raises(InputError, match="first frame needs a mask"):
        seg.step(frames[0])
    with pytest.raises(InputError, match="empty"):
        seg.step(frames[0], np.zeros((96, 128), np.uint8))
    with pytest.raises(InputError, match="uint8"):
        seg.step(frames[0].astype(np.float32), masks[0])
    with pytest.raises(InputError, match=r"\[H,W,3\]"):
        seg.step(frames[0][..., 0], masks[0])
    with pytest.raises(InputError, match=r"frame's size \[96, 128\], got uint8 \[50, 128\]: .*INTER_NEAREST"):
        seg.step(frames[0], masks[0][:50])                              # the fix is named (issue 31)
    with pytest.raises(InputError, match="integer label map"):
        seg.step(frames[0], masks[0].astype(np.float32))
    bad = masks[0].astype(np.int32)
    bad[0, 0] = 9
    with pytest.raises(InputError, match="label 9 exceeds .*max_objects = 8"):
        seg.step(frames[0], bad)
    bad[0, 0] = -1
    with pytest.raises(InputError, match="negative label -1"):
        seg.step(frames[0], bad)
    seg.step(frames[0], masks[0].astype(np.int64))
    with pytest.raises(InputError, match="size changed from 96x128 to 64x128"):
        seg.step(frames[1][:64])
    assert seg.step(frames[1], np.zeros((96, 128), np.uint8)).shape == (96, 128)   # empty later mask = none


def test_constructor_errors(tiny_export):
    with pytest.raises(InputError, match="every_k, first_latest, qdmn, lfu, qpm, rde"):
        Segmenter(tiny_export, method="cutie", providers="cpu")
    with pytest.raises(InputError, match="takes: k, max_frames"):
        Segmenter(tiny_export, providers="cpu", sigma=0.8)
    with pytest.raises(InputError, match="resolution"):
        Segmenter(tiny_export, providers="cpu", resolution="480p")
    with pytest.raises(InputError, match="execution provider"):
        Segmenter(tiny_export, providers="tpu")
    with pytest.raises(InputError, match="threads must be a positive int"):
        Segmenter(tiny_export, providers="cpu", threads=0)


@pytest.mark.parametrize("threads", [None, 1])
def test_sessions_never_spin_and_take_the_thread_count(tiny_export, square_clip, threads):
    seg = Segmenter(tiny_export, providers="cpu", threads=threads)
    for session in seg._graphs.sessions.values():
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert options.intra_op_num_threads == (threads or 0)        # 0 = onnxruntime's default
    frames, masks = square_clip()
    assert seg.step(frames[0], masks[0]).shape == masks[0].shape


def test_sessions_optimise_fully(tiny_export):
    import onnxruntime as ort
    seg = Segmenter(tiny_export, providers="cpu")
    for session in seg._graphs.sessions.values():
        assert session.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


@pytest.mark.parametrize("export, method", [("tiny", "every_k"), ("heads", "qdmn"), ("heads", "rde"),
                                            ("heads", "xmem")])
def test_graph_stages_are_session_time_and_the_stages_add_up(tiny_export, heads_export, square_clip, export,
                                                             method):
    """Graph stages = time inside InferenceSession.run of their graphs (Graphs.run_ms); the
    sdk's stages hold the rest; all of them add up to the step's wall time."""
    seg = Segmenter({"tiny": tiny_export, "heads": heads_export}[export], method=method, providers="cpu",
                    **({"theta": 1} if method == "rde" else {}))
    frames, masks = square_clip(12)
    seen = set()
    for t, frame in enumerate(frames):
        seg.step(frame, masks[0] if t == 0 else None)
        ms, run = seg.timings, seg._graphs.run_ms
        assert set(ms) == {*STAGES, "total"} and all(v >= 0 for v in ms.values())
        for stage in ("key_encoder", "readout", "decoder", "value_encoder", "qam", "sam"):
            graphs = [g for g, s in GRAPH_STAGES.items() if s == stage]
            assert ms[stage] == pytest.approx(sum(run.get(g, 0.0) for g in graphs), abs=1e-9)
        assert sum(ms[s] for s in STAGES) == pytest.approx(ms["total"], rel=1e-9)
        assert ms["preprocess"] > 0 and ms["postprocess"] > 0
        seen |= {g for g, v in run.items() if v > 0}
    assert set(GRAPH_STAGES) == set(GRAPH_NAMES + OPTIONAL_GRAPHS) and set(GRAPH_STAGES.values()) <= set(STAGES)
    expected = {"key_encoder", "readout", "decoder", "value_encoder"} | {
        "qdmn": {"prior_enhance", "qam"}, "rde": {"sam_key", "sam_value"}, "every_k": set(), "xmem": set()}[method]
    assert expected <= seen


def test_providers(tiny_export, caplog):
    assert Segmenter(tiny_export, providers="cpu").providers == ["CPUExecutionProvider"]
    with caplog.at_level(logging.WARNING, logger="vosedge"):
        seg = Segmenter(tiny_export, providers=["cuda", "cpu"])
    if "CUDAExecutionProvider" in seg.providers:
        pytest.skip("CUDA works here: nothing to fall back from")
    assert seg.providers == ["CPUExecutionProvider"]
    lines = [r.getMessage() for r in caplog.records if r.name == "vosedge"]
    assert len(lines) == 1 and "CUDA execution provider unavailable" in lines[0] and "CPUExecutionProvider" in lines[0]
