"""The /proc readings under the benchmark's server figures."""

from __future__ import annotations

import os
import sys
import time

import pytest

from fasthub.benchmark.sysinfo import proc_cpu_s, proc_status_kb

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_process_cpu_is_finer_than_a_clock_tick() -> None:
    """A 3 ms busy stretch reads as about 3 ms (``stat``'s ticks would say 0 or 10 ms)."""
    pid = os.getpid()
    before, t0 = proc_cpu_s(pid), time.thread_time()
    end = time.perf_counter() + 0.003
    while time.perf_counter() < end:
        pass
    after, spent = proc_cpu_s(pid), time.thread_time() - t0
    assert before is not None and after is not None
    assert after - before == pytest.approx(spent, abs=0.002)
    assert 0.002 < after - before < 0.008


def test_missing_process_reads_none() -> None:
    assert proc_cpu_s(None) is None and proc_cpu_s(2**22 + 12345) is None
    assert proc_status_kb(os.getpid(), "VmRSS") and proc_status_kb(2**22 + 12345, "VmRSS") is None
