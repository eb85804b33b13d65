"""Properties of ``Segmenter.step`` on arbitrary input (hypothesis), on the tiny exports.

Every call either returns a fresh uint8 [H,W] label map whose labels are ones given so far (or
0) or raises the documented :class:`~sdk.errors.VosEdgeError` subclass, never an exception from
inside NumPy, OpenCV or ONNX Runtime; a refused call leaves the Segmenter as it was, checked
against a twin Segmenter that never saw the call (same outputs, bank arrays, frame index,
objects). Random weights: the machinery is tested, not segmentation quality.
"""
from __future__ import annotations

import numpy as np
import onnxruntime.capi.onnxruntime_pybind11_state as ort_state
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sdk import POLICIES, Segmenter
from sdk.errors import GraphRunError, InputError, VosEdgeError
from sdk.segmenter import VOID

MAX_OBJECTS = 8                                    # conftest.TINY_CONFIG
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- twins and state ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def twins(tiny_export, heads_export):
    """twins(export name, method) → two Segmenters of the same export and policy, reset."""
    made = {}

    def make(name: str = "tiny", method: str = "every_k", **kw):
        key = (name, method, tuple(sorted(kw.items())))
        if key not in made:
            export = {"tiny": tiny_export, "heads": heads_export}[name]
            made[key] = tuple(Segmenter(export, method=method, providers="cpu", threads=1, **kw) for _ in range(2))
        for seg in made[key]:
            seg.reset()
        return made[key]
    return make


def assert_same_state(a: Segmenter, b: Segmenter) -> None:
    assert (a.frame_index, a.objects, a.bank_bytes, a.geometry) == (b.frame_index, b.objects, b.bank_bytes, b.geometry)
    for name in ("keys", "values", "valid", "origin"):
        assert np.array_equal(getattr(a.bank, name), getattr(b.bank, name)), name
    assert a.bank.memory_frames == b.bank.memory_frames


def step_both(a: Segmenter, b: Segmenter, frame, mask=None) -> np.ndarray:
    """Step both twins on the same input (b on copies); their outputs and states agree."""
    out = a.step(frame, mask)
    twin = b.step(np.array(frame), None if mask is None else np.array(mask))
    assert np.array_equal(out, twin)
    assert_same_state(a, b)
    return out


def check_output(out, size, known: set[int], mask=None) -> None:
    """A label map of the frame's size whose labels are known ones or 0; the given objects are
    the output where the mask gives them."""
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == tuple(size)
    assert set(np.unique(out).tolist()) <= known | {0}
    if mask is not None:
        mask = np.asarray(mask).astype(np.int64)
        labelled = (mask > 0) & (mask != VOID)
        assert np.array_equal(out[labelled], mask[labelled])


def noise(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


# -- strategies -------------------------------------------------------------------------------
sizes = st.tuples(st.integers(6, 40), st.integers(6, 40)).filter(lambda s: max(s) <= 3 * min(s))


@st.composite
def label_maps(draw, size, first: bool, top: int = MAX_OBJECTS):
    """uint8 [H,W] label maps of rectangles (objects, then void on top); a first frame's holds an
    object outside the void; labels 1..top."""
    h, w = size
    labels = st.integers(1, top)
    mask = np.zeros(size, np.uint8)
    rect = st.tuples(st.integers(0, h - 1), st.integers(0, w - 1), st.integers(1, h), st.integers(1, w))
    for y, x, dy, dx in draw(st.lists(rect, min_size=int(first), max_size=3)):
        mask[y:y + dy, x:x + dx] = draw(labels)
    for y, x, dy, dx in draw(st.lists(rect, max_size=2)):
        mask[y:y + dy, x:x + dx] = VOID
    if first and not ((mask > 0) & (mask != VOID)).any():
        mask[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = draw(labels)
    return mask


@st.composite
def as_any_layout(draw, mask):
    """The same label map as another integer dtype or as a non-contiguous view."""
    kind = draw(st.sampled_from(["uint8", "int64", "uint16", "int16", "fortran", "flipped", "strided"]))
    if kind == "fortran":
        return np.asfortranarray(mask)
    if kind == "flipped":
        return np.ascontiguousarray(mask[::-1, ::-1])[::-1, ::-1]
    if kind == "strided":
        wide = np.zeros((mask.shape[0], 2 * mask.shape[1]), mask.dtype)
        wide[:, ::2] = mask
        return wide[:, ::2]
    return mask.astype(kind)


@st.composite
def refused_calls(draw, size, first: bool):
    """(frame, mask, what) of a call step must refuse with InputError, for a video of ``size``."""
    h, w = size
    frame = noise(draw(st.integers(0, 2**16)), h, w)
    mask = draw(label_maps(size, first=True))
    kind = draw(st.sampled_from(["label", "negative", "uint16", "float", "mask_shape", "rgb_mask", "frame_dtype",
                                 "grey", "rgba", "none", "list", "empty_frame"]
                                + (["no_mask", "empty_mask", "all_void"] if first else ["frame_size"])))
    y, x = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
    if kind == "label":
        mask[y, x] = draw(st.integers(MAX_OBJECTS + 1, 254))
    elif kind == "negative":
        mask = mask.astype(np.int16)
        mask[y, x] = draw(st.integers(-300, -1))
    elif kind == "uint16":
        mask = mask.astype(np.uint16)
        mask[y, x] = draw(st.integers(256, 65535))
    elif kind == "float":
        mask = mask.astype(draw(st.sampled_from([np.float32, np.float64])))
    elif kind == "mask_shape":
        mask = mask[:-1] if h > 1 and draw(st.booleans()) else mask[..., None]
    elif kind == "rgb_mask":
        mask = np.repeat(mask[..., None], 3, axis=2)
    elif kind == "frame_dtype":
        frame = frame.astype(draw(st.sampled_from([np.float32, np.float64, np.int64, np.uint16, np.bool_])))
    elif kind == "grey":
        frame = frame[..., 0] if draw(st.booleans()) else frame[..., :1]
    elif kind == "rgba":
        frame = np.concatenate([frame, np.full((h, w, 1), 255, np.uint8)], axis=2)
    elif kind == "none":
        frame = None
    elif kind == "list":
        frame = frame.tolist()
    elif kind == "empty_frame":
        frame = frame[:0]
    elif kind == "no_mask":
        mask = None
    elif kind == "empty_mask":
        mask = np.zeros(size, np.uint8)
    elif kind == "all_void":
        mask = np.where(mask > 0, VOID, 0).astype(np.uint8)
    elif kind == "frame_size":
        frame = noise(0, h + 1, w)
        mask = None
    return frame, mask, kind


# -- one arbitrary call ---------------------------------------------------------------------------
def accepted(frame, mask, size, first: bool) -> bool:
    """The documented rules (Segmenter.step's docstring)."""
    try:
        f = np.asarray(frame)
    except (TypeError, ValueError):                    # ragged lists
        return False
    if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3 or 0 in f.shape:
        return False
    if not first and f.shape[:2] != tuple(size):
        return False
    if mask is None:
        return not first
    try:
        m = np.asarray(mask)
    except (TypeError, ValueError):
        return False
    if m.dtype.kind not in "biu" or m.shape != f.shape[:2]:
        return False
    values = set(np.unique(m).astype(np.int64).tolist())
    if not values <= set(range(MAX_OBJECTS + 1)) | {VOID}:
        return False
    return not first or bool(values - {0, VOID})


array_dtypes = st.sampled_from([np.uint8, np.bool_, np.int8, np.int64, np.uint16, np.float32, np.float64])
small_arrays = hnp.arrays(array_dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
not_arrays = st.sampled_from([None, object(), "frame", 3.5, [[1, 2], [3]], {"a": 1}, [], ()])


@st.composite
def any_frames(draw, size):
    """Frames of the video's size in any layout, of other sizes and dtypes, and non-arrays."""
    h, w = size
    frame = noise(draw(st.integers(0, 2**16)), h, w)
    return draw(st.one_of(
        st.just(frame), st.just(np.asfortranarray(frame)), st.just(frame[::-1, ::-1, ::-1]),
        st.just(np.repeat(frame, 2, axis=1)[:, ::2]), st.just(frame.astype(np.float32)),
        st.just(frame.astype(np.int64)), st.just(frame[..., :2]), st.just(frame.tolist()),
        small_arrays, not_arrays))


@st.composite
def any_masks(draw, size):
    """Label maps in any layout, with labels in and beyond range, void, negative values, other
    shapes and dtypes, bool maps, non-arrays."""
    base = draw(label_maps(size, first=False, top=MAX_OBJECTS + 3))
    return draw(st.one_of(
        st.none(), as_any_layout(base), st.just(base > 0), st.just(base.astype(np.float32)),
        st.just(base.astype(np.int16) - draw(st.integers(0, 2))), st.just(base.astype(np.uint16) * 300),
        st.just(base[:, :-1]), small_arrays, not_arrays))


@settings(SETTINGS, max_examples=150)
@given(size=sizes, first=st.booleans(), data=st.data())
def test_any_single_call_is_segmented_or_refused(twins, size, first, data):
    a, b = twins("tiny")
    known: set[int] = set()
    if not first:
        start = np.zeros(size, np.uint8)
        start[: size[0] // 2, : size[1] // 2] = 2
        step_both(a, b, noise(1, *size), start)
        known = {2}
    frame, mask = data.draw(any_frames(size)), data.draw(any_masks(size))
    if accepted(frame, mask, size, first):
        out = a.step(frame, mask)
        f = np.asarray(frame)
        check_output(out, f.shape[:2], known | set(np.unique(np.asarray(mask)).tolist()) - {VOID}
                     if mask is not None else known, mask)
        twin = b.step(np.ascontiguousarray(f), None if mask is None else np.ascontiguousarray(mask).astype(np.uint8))
        assert np.array_equal(out, twin)                # any layout or integer dtype = the C-contiguous uint8 one
    else:
        with pytest.raises(InputError):
            a.step(frame, mask)
    assert_same_state(a, b)
    if a.frame_index:                                   # the next frame: what it would have been
        follow = noise(2, a.geometry.height, a.geometry.width)
        assert np.array_equal(a.step(follow), b.step(follow))


# -- videos under every policy ------------------------------------------------------------------
@settings(SETTINGS, max_examples=25)
@pytest.mark.parametrize("method", list(POLICIES))
@given(size=sizes, data=st.data())
def test_videos_with_refused_calls_under_every_policy(twins, method, size, data):
    """Objects appear (masks on later frames), vanish (masks without them) and return, with void
    regions and refused calls in between; a sees the refused calls, b does not."""
    a, b = twins("heads", method)
    known: set[int] = set()
    for t in range(data.draw(st.integers(2, 6), label="frames")):
        if data.draw(st.booleans(), label="refused call first"):
            frame, mask, _ = data.draw(refused_calls(size, first=t == 0), label="refused")
            with pytest.raises(InputError):
                a.step(frame, mask)
            assert_same_state(a, b)
        mask = data.draw(label_maps(size, first=True) if t == 0 else st.none() | label_maps(size, first=False),
                         label="mask")
        if mask is not None:
            mask = data.draw(as_any_layout(mask), label="layout")
            known |= set(np.unique(mask).tolist()) - {0, VOID}
        out = step_both(a, b, noise(t, *size), mask)
        check_output(out, size, known, mask)
        assert a.frame_index == t + 1


# -- void ---------------------------------------------------------------------------------------
def test_void_on_the_first_frame_is_background(twins, square_clip):
    frames, masks = square_clip(4)
    a, b = twins("tiny")
    void = masks[0].copy()
    void[:10] = VOID
    void[40:60, :20] = VOID                                # inside the object too
    plain = np.where(void == VOID, 0, void).astype(np.uint8)
    outs = [a.step(frames[0], void), *(a.step(f) for f in frames[1:])]
    assert np.array_equal(outs, [b.step(frames[0], plain), *(b.step(f) for f in frames[1:])])
    assert outs[0][void == VOID].max() == 0 and a.objects == (1,)
    assert_same_state(a, b)


def test_void_on_a_later_frame_is_filled_by_the_prediction(twins, square_clip):
    """At native size (no resize, so the soft aggregation is per pixel) the void pixels of a
    given mask get exactly the prediction the frame has without a mask."""
    frames, masks = square_clip(4, height=64, width=96)
    a, b = twins("tiny", resolution=None)
    masks[0][40:50, 60:80] = 2                             # a second object
    for f, m in ((frames[0], masks[0]), (frames[1], None)):
        step_both(a, b, f, m)
    mask = np.full((64, 96), VOID, np.uint8)
    mask[20:44, 30:56] = 1                                 # object 1 given, the rest void
    mask[:, :8] = 0                                        # and some given background
    out, free = a.step(frames[2], mask), b.step(frames[2])
    void = mask == VOID
    assert np.array_equal(out[void], free[void]) and VOID not in out
    assert (out[mask == 1] == 1).all() and set(np.unique(out[void]).tolist()) <= {0, 1, 2}
    assert (out[:, :8] != 1).all()                         # object 1 is absent where 0 is given
    assert {1, 2} <= set(np.unique(free).tolist())         # the prediction had both objects to give


def test_all_void_later_mask_counts_as_no_mask(twins, square_clip):
    frames, masks = square_clip(3)
    a, b = twins("tiny")
    step_both(a, b, frames[0], masks[0])
    assert np.array_equal(a.step(frames[1], np.where(masks[1] > 0, VOID, 0).astype(np.uint8)), b.step(frames[1]))
    assert_same_state(a, b)


def test_label_messages(twins, square_clip):
    frames, masks = square_clip(1)
    a, _ = twins("tiny")
    binary = (masks[0] > 0).astype(np.uint8) * 255
    with pytest.raises(InputError, match=r"empty \(only background and void \(255\)\).*sdk.io.read_mask.*label 1"):
        a.step(frames[0], binary)
    bad = masks[0].copy()
    bad[0, 0] = 200
    with pytest.raises(InputError, match=r"label 200 exceeds .*max_objects = 8 .*255 \(void\).*sdk.io.read_mask"):
        a.step(frames[0], bad)
    with pytest.raises(InputError, match="label 300 exceeds .*16-bit"):
        a.step(frames[0], masks[0].astype(np.uint16) * 300)
    with pytest.raises(InputError, match="float masks are refused.*astype"):
        a.step(frames[0], masks[0].astype(np.float32))
    with pytest.raises(InputError, match="RGBA frame.*frame\\[..., :3\\]"):
        a.step(np.concatenate([frames[0], frames[0][..., :1]], 2), masks[0])
    with pytest.raises(InputError, match="None"):
        a.step(None, masks[0])
    with pytest.raises(InputError, match="cannot convert"):
        a.step([[1, 2], [3]], masks[0])
    assert a.frame_index == 0 and a.objects == () and a.bank_bytes == 0


def test_bool_masks_and_frame_layouts(twins, square_clip):
    """A bool mask is object 1; views, Fortran order and negative strides of uint8 frames (and
    a PIL image) give what the C-contiguous copies give."""
    from PIL import Image

    frames, masks = square_clip(4)
    a, b = twins("tiny")
    step_both(a, b, np.asfortranarray(frames[0]), masks[0] > 0)
    assert a.objects == (1,)
    flipped = np.ascontiguousarray(frames[1][::-1, ::-1])[::-1, ::-1]     # negative strides
    assert not flipped.flags.c_contiguous
    assert np.array_equal(a.step(flipped), b.step(frames[1]))
    wide = np.repeat(frames[2], 2, axis=1)[:, ::2]
    assert np.array_equal(a.step(wide), b.step(frames[2]))
    assert np.array_equal(a.step(Image.fromarray(frames[3])), b.step(frames[3]))
    assert_same_state(a, b)


# -- graph failures and non-finite outputs --------------------------------------------------------
class FailingSession:
    """An InferenceSession whose next run raises onnxruntime's own allocation failure, once."""

    def __init__(self, sessions: dict, name: str):
        self.sessions, self.name, self.session = sessions, name, sessions[name]

    def __getattr__(self, attribute):
        return getattr(self.session, attribute)

    def run(self, *args, **kwargs):
        self.sessions[self.name] = self.session
        raise ort_state.RuntimeException("Failed to allocate memory for requested buffer of size 1073741824")


def inject(monkeypatch, seg: Segmenter, graph: str, what: str = "nan") -> list[str]:
    """Make the next run of ``graph`` return NaN in its first output, or make onnxruntime fail
    in it (allocation failure), for this test; returns the list of graphs run from now on."""
    run, runs, done = seg._graphs.run, [], []
    if what == "raise":
        monkeypatch.setitem(seg._graphs.sessions, graph, FailingSession(seg._graphs.sessions, graph))

    def patched(name, feeds):
        runs.append(name)
        outputs = run(name, feeds)
        if name == graph and what == "nan" and not done:
            done.append(name)
            outputs[0] = np.full_like(outputs[0], np.nan)
        return outputs
    monkeypatch.setattr(seg._graphs, "run", patched)
    return runs


@pytest.mark.parametrize("method, graph, frame", [
    ("every_k", "readout", 1), ("every_k", "decoder", 2), ("every_k", "value_encoder", 0),
    ("every_k", "key_encoder", 0), ("every_k", "value_encoder", 3), ("rde", "sam_value", 3), ("rde", "sam_key", 3),
    ("qdmn", "qam", 3), ("qdmn", "prior_enhance", 0), ("lfu", "decoder", 1), ("qpm", "value_encoder", 3)])
@pytest.mark.parametrize("what", ["nan", "raise"])
def test_graph_failures_refuse_the_frame_and_change_nothing(twins, square_clip, monkeypatch, method, graph, frame,
                                                            what):
    """NaN from a graph (or onnxruntime failing in it) at a frame → GraphRunError naming the
    graph and the frame; the Segmenter is as before, and carries on as its twin. Frame 3 brings
    a new object (its value encoding fails after the bank took a row for it)."""
    frames, masks = square_clip(6, label=2)
    new = masks[3].copy()
    new[:8, :8] = 5
    given = {0: masks[0], 3: new}
    a, b = twins("heads", method)
    for t in range(frame):
        step_both(a, b, frames[t], given.get(t))
    runs = inject(monkeypatch, a, graph, what)
    with pytest.raises(GraphRunError, match=rf"graph {graph!r} returned .* at frame {frame};" if what == "nan"
                       else rf"could not allocate memory running graph {graph!r}.*resolution") as error:
        a.step(frames[frame], given.get(frame))
    assert graph in runs
    assert isinstance(error.value, VosEdgeError)
    assert_same_state(a, b)
    for t in range(frame, 6):                          # the same frame again, then on: as the twin
        out = step_both(a, b, frames[t], given.get(t))
        check_output(out, frames[t].shape[:2], {2, 5} if t >= 3 else {2}, given.get(t))


def test_a_failed_first_frame_leaves_a_fresh_segmenter(twins, monkeypatch):
    """After a first frame refused inside a graph, a first frame of another size runs as on a
    fresh Segmenter (no geometry, memory or workspace kept from the refused one)."""
    a, b = twins("tiny")
    mask = np.zeros((40, 50), np.uint8)
    mask[10:20, 10:30] = 1
    inject(monkeypatch, a, "value_encoder", "raise")
    with pytest.raises(GraphRunError):
        a.step(noise(0, 40, 50), mask)
    assert a.geometry is None and a.frame_index == 0 and a.objects == () and a.bank_bytes == 0
    mask = np.zeros((36, 60), np.uint8)
    mask[5:30, 30:50] = 3
    for t in range(3):
        step_both(a, b, noise(t, 36, 60), mask if t == 0 else None)
