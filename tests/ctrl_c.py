"""What the Ctrl-C tests share: run a command in its own session, wait until it is well into
its work, send SIGINT to its process group as a terminal's Ctrl-C does, collect its output."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def interrupt(cmd: list, ready: Callable[[], bool], settle_s: float = 0.0, timeout_s: float = 120) -> tuple[int, str]:
    """Start `cmd` (run from the repository root), poll `ready()` until it holds (at most
    `timeout_s`), wait `settle_s` more, then Ctrl-C it → (exit code, stdout + stderr).

    The child gets SIGINT's default action: a test run started in the background (`nohup … &`)
    ignores SIGINT, and a Python started with SIGINT ignored keeps ignoring it. Raises
    AssertionError (with its output) if the command ended before it could be interrupted."""
    proc = subprocess.Popen([str(c) for c in cmd], start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.1)
        time.sleep(settle_s)
        assert proc.poll() is None, proc.communicate()[0].decode()     # still running: stop it
        os.killpg(proc.pid, signal.SIGINT)
        output = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, output
