"""Shared fixtures.

``one_torch_thread``: torch on one intra-op thread for the test (the training tests use it).

``tiny_export``: a randomly initialised small lite network exported once per test session
(a few seconds of torch + ONNX export); sdk tests run the Segmenter on it. ``heads_export``:
the same network with every method head (QAM, prior enhancement, SAM), exported likewise.
"""
from __future__ import annotations

import numpy as np
import pytest

# lite backbone (fixed skip channels) with small heads: fast to export and to run
TINY_CONFIG = {"name": "lite", "key_channels": 16, "value_channels": 32, "decoder_channels": [32, 16, 8],
               "value_encoder_channels": [8, 16, 32, 32], "max_objects": 8, "top_k": 20}
TINY_RESOLUTION = 64


@pytest.fixture
def one_torch_thread():
    """One torch intra-op thread for the test, restored after: on a shared 2-core machine two
    threads that wait on each other run these small graphs ~100× slower than one. A training
    test module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_net():
    """(network, config) of the tiny lite network, seed 0, no pretrained weights."""
    torch = pytest.importorskip("torch")
    from training.networks import build_network

    torch.manual_seed(0)
    return build_network(TINY_CONFIG, pretrained=False).eval()


@pytest.fixture(scope="session")
def tiny_export(tiny_net, tmp_path_factory):
    """Folder of the tiny network's export (method every_k, resolution 64)."""
    from export import export_model

    out = tmp_path_factory.mktemp("export") / "tiny"
    export_model(tiny_net, out, method="every_k", resolution=TINY_RESOLUTION)
    return out


@pytest.fixture(scope="session")
def heads_net():
    """The tiny lite network with the qam, prior and sam heads, seed 0, no pretrained weights."""
    torch = pytest.importorskip("torch")
    from training.networks import build_network

    torch.manual_seed(0)
    return build_network({**TINY_CONFIG, "heads": ["qam", "prior", "sam"]}, pretrained=False).eval()


@pytest.fixture(scope="session")
def heads_export(heads_net, tmp_path_factory):
    """Folder of :func:`heads_net`'s export (all 8 graphs, method every_k, resolution 64)."""
    from export import export_model

    out = tmp_path_factory.mktemp("export") / "heads"
    export_model(heads_net, out, method="every_k", resolution=TINY_RESOLUTION)
    return out


def square_clip(n: int = 6, height: int = 96, width: int = 128, label: int = 1, step: int = 6):
    """n RGB uint8 frames [H,W,3] of a red square moving right on a gradient, and their
    label maps uint8 [H,W] (the square = ``label``)."""
    yy, xx = np.mgrid[:height, :width]
    background = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], -1).astype(np.uint8)
    frames, masks = [], []
    side = height // 3
    for t in range(n):
        x = (8 + step * t) % (width - side)
        frame, mask = background.copy(), np.zeros((height, width), np.uint8)
        frame[side:2 * side, x:x + side] = (240, 30, 30)
        mask[side:2 * side, x:x + side] = label
        frames.append(frame)
        masks.append(mask)
    return frames, masks


@pytest.fixture(name="square_clip")
def square_clip_fixture():
    """The :func:`square_clip` generator."""
    return square_clip
