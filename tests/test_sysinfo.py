"""The /proc readings under the benchmark's server figures."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fasthub.benchmark.sysinfo import proc_cpu_s, proc_status_kb

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_process_cpu_is_finer_than_a_clock_tick() -> None:
    """3 ms of a child's CPU, read from outside, as about 3 ms (``stat``'s ticks would say 0 or
    10 ms)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nt = time.process_time()\n"
         "while time.process_time() - t < 0.003: pass\nprint(time.process_time(), flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        spent = float(child.stdout.readline())  # its CPU so far, from the inside; now it blocks
        measured = proc_cpu_s(child.pid)
    finally:
        child.kill()
        child.wait()
    assert measured is not None
    assert measured == pytest.approx(spent, abs=0.0005)
    assert measured % 0.01 > 1e-6  # not whole clock ticks


def test_missing_process_reads_none() -> None:
    assert proc_cpu_s(None) is None and proc_cpu_s(2**22 + 12345) is None
    assert proc_status_kb(os.getpid(), "VmRSS") and proc_status_kb(2**22 + 12345, "VmRSS") is None
