"""Package layers: ``benchmarks`` may use ``training`` (vos-bench's torch reference), never the
other way round, and the DAVIS metric both score with (:mod:`sdk.metrics`) needs no torch."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IMPORT_ALL_TRAINING = textwrap.dedent("""
    import importlib, pkgutil, sys
    import training
    names = [m.name for m in pkgutil.walk_packages(training.__path__, "training.")]
    for name in names:
        importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks."))
    print(len(names), leaked)
""")


def test_importing_every_training_module_imports_no_benchmarks_module():
    result = subprocess.run([sys.executable, "-c", IMPORT_ALL_TRAINING], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    count, leaked = result.stdout.split(" ", 1)
    assert int(count) >= 10                       # really walked the package (train, validate, static, …)
    assert leaked.strip() == "[]", leaked


def test_no_training_source_imports_benchmarks_even_lazily():
    """Imports inside functions (e.g. train.validate's) run only when called: read the source."""
    offenders = []
    for path in sorted((ROOT / "training").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                          if n == "benchmarks" or n.startswith("benchmarks.")]
    assert not offenders, offenders


def test_the_metric_module_imports_without_torch():
    script = textwrap.dedent("""
        import sys
        import sdk.metrics
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "training", "benchmarks")))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
