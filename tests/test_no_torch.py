"""The sdk runs in an app that ships no PyTorch and no onnx: import and segment with both blocked;
the commands that need an extra (vos-export, vos-train: [train]; vos-export --from-export
--precision fp16|int8: [bench]) show --help and then say in one line which extra to install."""
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
    result = subprocess.run([sys.executable, "-c", SCRIPT, folder, methods], check=False, cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


# a runtime-only install: the modules of the extras are not found (as Python says when they are absent)
MISSING = textwrap.dedent("""
    import sys

    ABSENT = ("torch", "onnx", "onnxscript", "onnxconverter_common", "safetensors")

    class Hide:   # every finder finds nothing of them: find_spec → None, import → ModuleNotFoundError
        def __init__(self, finder):
            self.finder = finder

        def __getattr__(self, name):
            return getattr(self.finder, name)

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ABSENT or not hasattr(self.finder, "find_spec"):
                return None
            return self.finder.find_spec(name, path, target)

    sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
    module, prog, *args = sys.argv[1:]
    sys.argv = [prog, *args]
    main = getattr(__import__(module, fromlist=["main"]), "main")
    try:
        main(args, prog_name=prog)
    finally:
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxconverter_common"))
        assert not leaked, leaked
""")
TRAIN_LINE = ("Error: {prog} needs {what}, which {verb} in the [train] extra: pip install 'vosedge[train]' (CPU-only "
              "machines: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu first); "
              "not installed here: {missing}")


def without_extras(module: str, prog: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", MISSING, module, prog, *map(str, args)], check=False,
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module, prog", [("export.cli", "vos-export"), ("training.cli", "vos-train")])
def test_help_works_without_torch(module, prog):
    result = without_extras(module, prog, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: {prog} [OPTIONS]") and "[train] extra" in " ".join(result.stdout.split())


@pytest.mark.parametrize("module, prog, args, what, missing", [
    ("export.cli", "vos-export", ["--checkpoint", "runs/lite/last.safetensors", "--out", "{tmp}/export"],
     "PyTorch and ONNX", "torch, onnx, safetensors"),
    ("export.cli", "vos-export", ["--checkpoint", "stcn.pth", "--out", "{tmp}/export", "--method", "rde"],
     "PyTorch and ONNX", "torch, onnx, safetensors"),
    ("training.cli", "vos-train", ["--config", "tiny", "--out", "{tmp}/run"], "PyTorch", "torch, safetensors"),
])
def test_commands_without_the_train_extra_name_it_in_one_line(module, prog, args, what, missing, tmp_path):
    """Before: ModuleNotFoundError: torch, with a traceback. Now: exit 1, one line, nothing written."""
    result = without_extras(module, prog, *(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == 1, (result.stdout, result.stderr)
    verb = "are" if " and " in what else "is"
    assert result.stderr == TRAIN_LINE.format(prog=prog, what=what, verb=verb, missing=missing) + "\n"
    assert not list(tmp_path.iterdir())


def test_unknown_method_is_still_a_usage_error_without_torch(tmp_path):
    result = without_extras("export.cli", "vos-export", "--checkpoint", "x.pth", "--out", tmp_path, "--method", "nope")
    assert result.returncode == 2 and "unknown method 'nope'" in result.stderr, result.stderr


@pytest.mark.parametrize("precision, line", [
    ("fp16", ("Error: vos-export --precision fp16 needs onnx and onnxconverter-common, which are in the [bench] "
              "extra: pip install 'vosedge[bench]'; not installed here: onnx, onnxconverter-common")),
    ("int8", ("Error: vos-export --precision int8 needs onnx, which is in the [bench] extra: pip install "
              "'vosedge[bench]'; not installed here: onnx")),
])
def test_reduced_precision_without_the_bench_extra_names_it_in_one_line(precision, line, tmp_path):
    """vos-export --from-export DIR --precision fp16|int8 needs no torch, only onnx (and
    onnxconverter-common for fp16): without them, one line naming [bench], exit 1, nothing
    written, and neither torch nor onnx imported."""
    from sdk.manifest import DEFAULT_MODEL_DIR

    result = without_extras("export.cli", "vos-export", "--from-export", DEFAULT_MODEL_DIR, "--precision", precision,
                            "--out", tmp_path / "out")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines()[-1] == line
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
