"""vos-bench's process and machine measurements: peak resident set (Linux VmHWM), GPU memory
(nvidia-smi) and the description of the machine a result was measured on."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence

import numpy as np

import sdk
from benchmarks.common import machine_info


# --- process measurements -----------------------------------------------------------------------


def proc_status_bytes(field: str, pid: int | str = "self") -> int | None:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM) in bytes, of this process by default;
    None off Linux or once that process has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process' peak resident set (VmHWM) to its current RSS (Linux ≥ 4.0:
    ``echo 5 > /proc/self/clear_refs``) → whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set of this process in bytes: VmHWM, else getrusage's ru_maxrss."""
    peak = proc_status_bytes("VmHWM")
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak *= 1 if sys.platform == "darwin" else 1024    # Linux reports KiB, macOS bytes
    return peak


def _nvidia_smi(*query: str) -> list[list[str]]:
    """Rows of `nvidia-smi --query-...=... --format=csv,noheader,nounits`; [] without one."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


def gpu_memory_bytes(pid: int | None = None) -> int | None:
    """GPU memory the driver attributes to process `pid` (default: this one), in bytes, from
    nvidia-smi's compute-apps table; None without nvidia-smi or when the process has none."""
    pid = os.getpid() if pid is None else pid
    used = [int(row[1]) for row in _nvidia_smi("--query-compute-apps=pid,used_memory")
            if len(row) >= 2 and row[0] == str(pid) and row[1].isdigit()]
    return sum(used) * 2 ** 20 if used else None


def bench_machine(providers: Sequence[str]) -> dict:
    """:func:`benchmarks.common.machine_info` + Python, NumPy, memory, GPUs, load average."""
    info = machine_info(providers)
    try:
        with open("/proc/meminfo") as f:
            total = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:")), None)
    except OSError:
        total = None
    info.update({
        "python": platform.python_version(),
        "numpy": np.__version__,
        "vosedge": sdk.__version__,
        "memory_bytes": total,
        "gpus": [{"name": r[0], "memory_bytes": int(float(r[1])) * 2 ** 20, "driver": r[2]}
                 for r in _nvidia_smi("--query-gpu=name,memory.total,driver_version") if len(r) >= 3],
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    })
    return info
