"""What the machine and the server process did during a run, read from /proc like the C loadgen.

Why: a throughput figure means little without knowing whether the server or the client ran out
of CPU first, and memory per connection is one of the figures users plan capacity with.
Everything returns ``None`` (or an empty dict) where /proc is missing, e.g. on macOS.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from importlib import metadata

__all__ = ["cpu_busy", "cpu_times", "proc_cpu_s", "proc_status_kb", "versions"]


def proc_status_kb(pid: int | None, key: str) -> int | None:
    """One ``kB`` field of /proc/PID/status (VmRSS, VmHWM), or None."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name == key:
                    return int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return None


def proc_cpu_s(pid: int | None) -> float | None:
    """CPU time of a process (all its threads) in seconds, or None.

    Read from the process's CPU-time clock (Linux: ``clock_gettime`` on the clock id
    ``clock_getcpuclockid(pid)`` would give), which is exact to the nanosecond, including a
    thread running right now; ``stat``'s utime + stime count clock ticks (10 ms), too coarse for
    the short runs ``fasthub plan`` solves its costs from, and are the fallback.
    """
    if not pid:
        return None
    if sys.platform.startswith("linux"):
        try:
            return time.clock_gettime(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
        except OSError:  # no such process, or not allowed
            pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cpu_times() -> dict[int, list[int]]:
    """Per-CPU jiffies from /proc/stat: user, nice, system, idle, iowait, irq, softirq, steal."""
    out: dict[int, list[int]] = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    parts = line.split()
                    out[int(parts[0][3:])] = [int(v) for v in parts[1:9]]
    except (OSError, ValueError):
        return {}
    return out


def cpu_busy(before: dict[int, list[int]], after: dict[int, list[int]]) -> dict[str, float]:
    """``cpuN_busy_pct`` / ``cpuN_softirq_pct`` between two samples (loadgen's names)."""
    out: dict[str, float] = {}
    for cpu in sorted(after):
        if cpu not in before:
            continue
        d = [a - b for a, b in zip(after[cpu], before[cpu], strict=False)]
        total = sum(d)
        if total <= 0:  # shorter than one clock tick: nothing to say
            continue
        idle = d[3] + d[4] + (d[7] if len(d) > 7 else 0)
        out[f"cpu{cpu}_busy_pct"] = round(100.0 * (total - idle) / total, 1)
        out[f"cpu{cpu}_softirq_pct"] = round(100.0 * d[6] / total, 1)
    return out


def versions() -> dict[str, str]:
    """Versions of everything that shapes a figure (stored with the JSON results)."""
    out = {"python": sys.version.split()[0], "implementation": platform.python_implementation()}
    for dist in ("fasthub", "uvloop", "orjson", "rich", "websockets", "uvicorn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "-"
    out["platform"] = platform.platform()
    out["cpus"] = str(os.cpu_count() or 1)
    return out
