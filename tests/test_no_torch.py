"""The sdk runs in an app that ships no PyTorch and no onnx: import and segment with both blocked."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "onnx"):
                raise ImportError("blocked by test_no_torch: " + name)
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    import sdk
    frame = np.zeros((96, 128, 3), np.uint8)
    frame[30:60, 40:70] = 255
    mask = np.zeros((96, 128), np.uint8)
    mask[30:60, 40:70] = 1
    for method in sys.argv[2].split(","):                          # every policy the export allows
        seg = sdk.Segmenter(sys.argv[1] or None, method=method, providers="cpu")   # "" = bundled model
        outs = [seg.step(frame, mask)] + [seg.step(frame) for _ in range(5)]     # rde folds at t = 3
        assert all(o.shape == (96, 128) for o in outs), method
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx"))
    assert not leaked, leaked
    print("ok", seg.providers)
""")


@pytest.mark.parametrize("model", ["tiny", "bundled"])
def test_sdk_runs_without_torch_or_onnx(model, request):
    root = Path(__file__).resolve().parents[1]
    folder = str(request.getfixturevalue("tiny_export")) if model == "tiny" else ""
    methods = "every_k,first_latest,lfu" + (",qdmn,qpm,rde" if model == "bundled" else "")
    result = subprocess.run([sys.executable, "-c", SCRIPT, folder, methods], cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
