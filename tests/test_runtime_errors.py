"""ONNX Runtime failures while running become one GraphRunError; provider choice is logged at the
level the caller's request deserves."""
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import Fail

from sdk import Segmenter
from sdk.errors import GraphRunError
from sdk.manifest import load_manifest
from sdk.runtime import CUDA, Graphs

ROOT = Path(__file__).resolve().parents[1]
resource = pytest.importorskip("resource")   # RLIMIT_AS: Linux/macOS

# Under an address-space limit of what the process holds + HEADROOM, numpy's preprocessing of a
# 4000x3000 frame (a 144 MB float32 image) fits, the key encoder's first activation (367 MiB) at
# native size does not (tried: 300 to 1500 MB all end in onnxruntime's allocation failure).
HEADROOM_MB = 600
LIMIT = textwrap.dedent("""
    import re, resource

    def limit_memory(headroom_mb):
        vm = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + headroom_mb * 2**20, resource.RLIM_INFINITY))
""")

SEGMENTER = LIMIT + textwrap.dedent("""
    import json, sys
    import numpy as np
    from sdk import Segmenter
    from sdk.errors import GraphRunError

    seg = Segmenter(sys.argv[1], providers="cpu", resolution=None, threads=1)   # native size
    frame = np.zeros((3000, 4000, 3), np.uint8)
    mask = np.zeros((3000, 4000), np.uint8)
    mask[1000:2000, 1500:2500] = 1
    limit_memory(int(sys.argv[2]))
    try:
        seg.step(frame, mask)
        print(json.dumps({"raised": None}))
    except GraphRunError as exc:
        print(json.dumps({"raised": "GraphRunError", "message": str(exc), "cause": type(exc.__cause__).__name__}))
""")

CLI = LIMIT + textwrap.dedent("""
    import sys
    from sdk import cli

    make = cli.make_segmenter

    def limited(*args, **kwargs):   # the sessions are open; then the address space is capped
        segmenter = make(*args, **kwargs)
        limit_memory(int(sys.argv[1]))
        return segmenter

    cli.make_segmenter = limited
    cli.main(sys.argv[2:], prog_name="vos-segment")
""")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmSize from /proc")
def test_allocation_failure_at_native_resolution_is_one_graph_run_error(tiny_export):
    """A 4000x3000 frame at native resolution under a memory limit: ONNX Runtime's allocation
    failure reaches the caller as one GraphRunError naming the graph, the input shape, the
    internal size and the remedy, with onnxruntime's own exception as __cause__."""
    result = subprocess.run([sys.executable, "-c", SEGMENTER, str(tiny_export), str(HEADROOM_MB)], check=False,
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["raised"] == "GraphRunError" and got["cause"] == "Fail", got
    message = got["message"]
    assert "could not allocate memory running graph 'key_encoder' on image [1, 3, 3008, 4000]" in message
    assert "frames are processed at 3008x4000 px internally" in message
    assert "Segmenter(resolution=480) or vos-segment --resolution 480" in message
    assert "\n" not in message
    assert "onnxruntime" not in result.stderr.lower()     # no second copy of the error from ORT's logger


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmSize from /proc")
def test_vos_segment_at_native_resolution_out_of_memory_ends_in_one_line(tiny_export, tmp_path):
    from PIL import Image

    from sdk.io import write_mask

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        Image.fromarray(np.full((3000, 4000, 3), 90 + i, np.uint8)).save(frames / f"{i:05d}.jpg")
    mask = np.zeros((3000, 4000), np.uint8)
    mask[1000:2000, 1500:2500] = 1
    write_mask(tmp_path / "mask.png", mask)
    args = ["--frames", frames, "--mask", tmp_path / "mask.png", "--out", tmp_path / "out", "--model", tiny_export,
            "--resolution", "native", "--providers", "cpu"]
    result = subprocess.run([sys.executable, "-c", CLI, str(HEADROOM_MB), *map(str, args)], check=False, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "could not allocate memory running graph 'key_encoder'" in lines[0]
    assert "--resolution 480" in lines[0]


class _FailingSession:
    """An InferenceSession whose run raises onnxruntime's own exception type."""

    def __init__(self, session, message):
        self.session, self.message = session, message

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, *args, **kwargs):
        raise Fail(self.message)


def test_onnxruntime_exception_in_step_is_a_graph_run_error(tiny_export, square_clip):
    frames, masks = square_clip(3)
    seg = Segmenter(tiny_export, providers="cpu")
    seg.step(frames[0], masks[0])
    sessions = seg._graphs.sessions
    sessions["decoder"] = _FailingSession(sessions["decoder"], "[ONNXRuntimeError] : 1 : FAIL : Non-zero status "
                                          "code returned while running Conv node.\nStatus Message: bfc_arena.cc:360 "
                                          "Failed to allocate memory for requested buffer of size 1073741824\n")
    with pytest.raises(GraphRunError) as info:
        seg.step(frames[1])
    message = str(info.value)
    assert isinstance(info.value.__cause__, Fail) and isinstance(info.value, RuntimeError)
    assert message.startswith(f"onnxruntime {ort.__version__} could not allocate memory running graph 'decoder' on "
                              "readout [1, 32, 4, 6], f16 [1, 112, 4, 6], f8 [1, 40, 8, 12], f4 [1, 24, 16, 24] "
                              "(a buffer of 1024 MiB); frames are processed at 64x96 px internally")
    assert message.endswith("Segmenter(resolution=480) or vos-segment --resolution 480")


def test_other_onnxruntime_failures_name_graph_and_shapes(tiny_export):
    """A failure that is not about memory (here a float64 image and a top_k above the memory
    size, both refused by ONNX Runtime itself) names the graph, the shapes and ORT's reason."""
    graphs = Graphs(load_manifest(tiny_export), "cpu")
    with pytest.raises(GraphRunError, match=r"failed running graph 'key_encoder' on image \[1, 3, 32, 48\]: "
                                            r".*INVALID_ARGUMENT.*double") as info:
        graphs.run("key_encoder", {"image": np.zeros((1, 3, 32, 48))})
    assert "lower the internal resolution" not in str(info.value)
    assert type(info.value.__cause__).__module__.startswith("onnxruntime")
    feeds = {"query_key": np.zeros((1, 16, 2, 3), np.float32), "memory_keys": np.zeros((1, 16, 6), np.float32),
             "memory_values": np.zeros((1, 32, 6), np.float32), "valid": np.ones(6, np.float32),
             "top_k": np.array(20, np.int64)}
    with pytest.raises(GraphRunError, match=r"failed running graph 'readout' on query_key \[1, 16, 2, 3\], "
                                            r"memory_keys \[1, 16, 6\], .* top_k \[\]: "):
        graphs.run_named("readout", feeds)


def _cuda_starts(tiny_export) -> bool:
    return CUDA in Graphs(load_manifest(tiny_export), "cuda", names=("decoder",)).providers


def test_default_providers_without_cuda_log_at_info(tiny_export, caplog):
    """The default asks for nothing: CPU instead of CUDA is an INFO record, not a warning."""
    if _cuda_starts(tiny_export):
        pytest.skip("CUDA starts on this machine")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vosedge"):
        Segmenter(tiny_export)
    records = [r for r in caplog.records if r.name == "vosedge"]
    assert [(r.levelno, r.getMessage().split(" (")[0]) for r in records] == [
        (logging.INFO, "CUDA execution provider unavailable")]
    assert records[0].getMessage().endswith("running on CPUExecutionProvider")


@pytest.mark.parametrize("providers", ["cuda", ["cuda", "cpu"], "CUDAExecutionProvider"])
def test_cuda_asked_for_and_unavailable_is_one_warning(tiny_export, caplog, providers):
    if _cuda_starts(tiny_export):
        pytest.skip("CUDA starts on this machine")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vosedge"):
        seg = Segmenter(tiny_export, providers=providers)
    records = [r for r in caplog.records if r.name == "vosedge"]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert records[0].getMessage().startswith("CUDA execution provider unavailable")
    assert seg.providers == ["CPUExecutionProvider"]


def test_cpu_asked_for_logs_nothing(tiny_export, caplog):
    with caplog.at_level(logging.DEBUG, logger="vosedge"):
        Segmenter(tiny_export, providers="cpu")
    assert not [r for r in caplog.records if r.name == "vosedge"]
