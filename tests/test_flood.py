"""A short run of bench/flood.py: a reconnecting flooder beside room traffic loses nobody anything.

The full 10 s, 100-client run with its latency comparison is ``python bench/flood.py`` (latency
is measured there, not asserted in a timed unit test).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("flood", Path(__file__).parent.parent / "bench" / "flood.py")
assert spec is not None and spec.loader is not None
flood = importlib.util.module_from_spec(spec)
spec.loader.exec_module(flood)

RSS_BOUND_KB = 256 * 1024


@pytest.mark.timeout(120)
def test_flooder_is_cut_off_and_room_traffic_loses_nothing() -> None:
    args = argparse.Namespace(seconds=3.0, clients=20, extra=[])
    result = flood.run_once(args, flood=True)
    assert result["server_alive"]
    assert result["lost"] == 0 and result["out_of_order"] == 0
    assert result["received"] == result["expected_deliveries"] > 0
    endings = result["flood_endings"]
    assert endings.get("closed 1008 rate limit exceeded", 0) >= 1, endings
    assert result["server_rss_peak_kb"] < RSS_BOUND_KB
