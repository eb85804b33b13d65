"""The fast pre/post-processing of sdk.ops against the straightforward NumPy formulas they
replace: bit-identical float32 results (and identical label maps), on random inputs with
saturated probabilities, exact ties, several objects and odd sizes."""
import numpy as np
import pytest

from sdk.ops import (ODDS_CLAMP, Geometry, Workspace, channel_argmax, label_values, normalise_table, sigmoid,
                     soft_aggregate)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


# -- the formulas as they were written before they were made fast ---------------------------------
def plain_image(g: Geometry, frame, mean, std) -> np.ndarray:
    import cv2
    if g.resized:
        frame = cv2.resize(frame, (g.resized_w, g.resized_h),
                           interpolation=cv2.INTER_AREA if g.resized_h < g.height else cv2.INTER_LINEAR)
    out = np.zeros((1, 3, g.padded_h, g.padded_w), np.float32)
    view = out[0, :, g.inside[0], g.inside[1]]
    np.multiply(frame.transpose(2, 0, 1), (1 / (255 * std))[:, None, None], out=view)
    view -= (mean / std)[:, None, None]
    return out


def plain_aggregate(prob: np.ndarray) -> np.ndarray:
    out = np.empty((len(prob) + 1, *prob.shape[1:]), np.float32)
    out[0] = np.prod(1 - prob, axis=0)
    out[1:] = prob
    out = np.clip(out, ODDS_CLAMP, 1 - ODDS_CLAMP)
    out = out / (1 - out)
    return out / np.sum(out, axis=0)


def probabilities(rng, n: int, h: int, w: int) -> np.ndarray:
    """[n,h,w] float32 sigmoid outputs with saturated bands (exactly 0, 1 and clamp ties)."""
    logits = rng.normal(0, 8, (n, h, w)).astype(np.float32)
    logits[:, : h // 4] = 40                       # every object at 1: odds tie at the clamp
    logits[:, h // 4: h // 3] = -40                # every object at 0
    prob = (1 / (1 + np.exp(-logits))).astype(np.float32)
    prob[:, -1, :3] = [0.0, 1.0, 0.5]
    return prob


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_soft_aggregate_is_bit_identical_to_the_formula(n):
    rng = np.random.default_rng(n)
    prob = probabilities(rng, n, 37, 53)
    work = Workspace()
    for _ in range(2):                             # fresh and reused workspace arrays
        assert np.array_equal(bits(soft_aggregate(prob, work)), bits(plain_aggregate(prob)))
    assert np.array_equal(bits(soft_aggregate(prob)), bits(plain_aggregate(prob)))
    assert prob.shape == (n, 37, 53)               # the input is not modified in place … nor its values
    assert np.array_equal(prob, probabilities(np.random.default_rng(n), n, 37, 53))


@pytest.mark.parametrize("c", [1, 2, 3, 4, 7])
def test_channel_argmax_is_numpys_first_on_ties(c):
    rng = np.random.default_rng(c)
    x = rng.integers(0, 3, (c, 31, 45)).astype(np.float32)    # many exact ties
    x[:, 0] = 1.0                                              # every channel tied
    padded = np.zeros((c, 31, 50), np.float32)
    padded[..., :45] = x
    expected = np.argmax(x, 0).astype(np.uint8)
    work = Workspace()
    for given in (x, padded[..., :45], list(x), x.transpose(0, 2, 1).copy().transpose(0, 2, 1)):
        got = channel_argmax(given, work)
        assert got.dtype == np.uint8 and np.array_equal(got, expected)
    assert channel_argmax(x, work) is work.array("argmax", (31, 45), np.uint8)
    assert np.array_equal(channel_argmax(x), expected)          # without a workspace


def test_to_input_resizes_all_maps_as_one_image_into_planes():
    import cv2
    g = Geometry.for_frame(120, 214, 60, 16)
    agg = soft_aggregate(probabilities(np.random.default_rng(0), 3, g.padded_h, g.padded_w))
    small = np.ascontiguousarray(agg[:, g.inside[0], g.inside[1]].transpose(1, 2, 0))
    expected = cv2.resize(small, (214, 120), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    work = Workspace()
    for _ in range(2):
        full = g.to_input(agg, work)
        assert full.shape == (4, 120, 214) and full.flags.c_contiguous
        assert np.array_equal(bits(full), bits(expected))
        assert np.array_equal(channel_argmax(full, work), np.argmax(expected, 0).astype(np.uint8))
    same = Geometry.for_frame(g.padded_h, g.padded_w, None, 16)          # no resize: a view
    assert np.shares_memory(same.to_input(agg), agg)


def test_label_values_is_a_fresh_lut_lookup():
    rng = np.random.default_rng(0)
    tables = [rng.integers(0, 256, k).astype(np.uint8) for k in (1, 2, 9, 256)]
    tables += [np.array(t, np.uint8) for t in ([0, 7], [0, 1], [0, 1, 2, 3], [0, 2, 1], list(range(256)))]
    for lut in tables:
        k = len(lut)
        index = rng.integers(0, k, (17, 29)).astype(np.uint8)
        out = label_values(lut, index)
        assert out.dtype == np.uint8 and np.array_equal(out, lut[index])
        assert not np.shares_memory(out, index)
    view = np.zeros((10, 12), np.uint8)[:, :7]                  # a strided index
    assert np.array_equal(label_values(np.array([5], np.uint8), view), np.full((10, 7), 5))


@pytest.mark.parametrize("size, resolution", [((480, 854), 480), ((480, 854), 240), ((50, 70), None),
                                              ((31, 17), 64), ((1, 40), None)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_image_is_bit_identical_to_the_formula(size, resolution, dtype):
    rng = np.random.default_rng(size[0])
    frame = rng.integers(0, 256, (*size, 3), np.uint8)
    frame[0, :3] = [[0, 0, 0], [255, 255, 255], [1, 128, 254]]
    mean, std = np.array([0.485, 0.456, 0.406], dtype), np.array([0.229, 0.224, 0.225], dtype)
    g = Geometry.for_frame(*size, resolution, 16)
    work = Workspace()
    expected = plain_image(g, frame, mean, std)
    for _ in range(2):
        assert np.array_equal(bits(g.image(frame, mean, std, work)), bits(expected))
    assert np.array_equal(bits(g.image(frame[:, ::-1][:, ::-1], mean, std)), bits(expected))   # a view


def test_normalise_table_is_the_formula_on_every_level():
    mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.5019607843137255, np.float32)
    table = normalise_table(mean, std)
    levels = np.arange(256, dtype=np.uint8)
    direct = levels[None, :] * (1 / (255 * std))[:, None] - (mean / std)[:, None]
    assert table.shape == (3, 256) and table.dtype == np.float32
    assert np.array_equal(bits(table), bits(direct.astype(np.float32)))
    assert table[0, 0] == pytest.approx(-0.5 / 0.50196, rel=1e-4) and table[0, 255] == pytest.approx(0.99609, rel=1e-4)



def test_sigmoid_is_torchs_order_in_float32_bit_for_bit():
    rng = np.random.default_rng(0)
    x = rng.uniform(-100, 100, (3, 67, 129)).astype(np.float32)
    x[0, 0, :4] = [np.inf, -np.inf, 17, 0]
    with np.errstate(over="ignore"):
        plain = np.reciprocal(1 + np.exp(-x))
    got = sigmoid(x)
    assert got.dtype == np.float32 and np.array_equal(bits(got), bits(plain))
    assert got[0, 0, :4].tolist() == [1, 0, 1, 0.5]
    inplace = x.copy()
    assert sigmoid(inplace, out=inplace) is inplace and np.array_equal(bits(inplace), bits(plain))
