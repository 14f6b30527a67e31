"""The chaos test, short (``bench/chaos.py`` runs it long): clients, publishers with acks, and
faults; afterwards every acknowledged message was received once, in order, or the client was
told that gap could not be filled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from redisproc import redis_binary

#: the compiled pass of ci/test runs these; their subject is not the twins (see ci/test)
pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parent.parent


def chaos(*args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), *args],
        capture_output=True, timeout=240, cwd=ROOT,
    )
    report = json.loads(out.stdout)
    print(json.dumps(report))
    assert out.returncode == 0, (report, out.stderr.decode()[-2000:])
    return report  # type: ignore[no-any-return]


def test_chaos_on_the_embedded_default() -> None:
    """One process (history in memory): client-side aborts and server-side closes."""
    r = chaos("--mode", "local", "--duration", "6", "--clients", "20", "--rooms", "5", "--settle", "3")
    assert r["acked"] > 100 and r["faults"]  # something was published and something broke
    assert r["lost"] == r["duplicated"] == r["out_of_order"] == 0
    assert r["delivered"] + r["not_recoverable_told"] == r["expected_deliveries"]
    assert r["reconnects"] > 0


def test_chaos_on_a_two_worker_cluster() -> None:
    """``--workers 2 --redis``: aborts, server closes, SIGKILLed workers, Redis restarts and a flush."""
    redis_binary()  # skips (or fails under FASTHUB_REQUIRE_REDIS) without redis-server
    r = chaos("--mode", "cluster", "--duration", "10", "--clients", "30", "--rooms", "6", "--settle", "5")
    assert r["acked"] > 100
    assert r["faults"].get("redis-flush") == 1  # type: ignore[union-attr]
    assert r["lost"] == r["duplicated"] == r["out_of_order"] == 0
    assert r["delivered"] + r["not_recoverable_told"] == r["expected_deliveries"]


def test_rolling_restarts_lose_nothing() -> None:
    """SIGHUP to the supervisor under load: each worker is replaced by a new one and drained
    (1012); its clients resume on the other. Nothing lost, nothing even told unrecoverable."""
    redis_binary()
    r = chaos("--mode", "cluster", "--duration", "9", "--clients", "20", "--rooms", "4", "--settle", "4",
              "--faults", "rolling-restart", "--fault-every", "3")
    assert r["faults"] == {"rolling-restart": 3}
    assert r["acked"] > 100 and r["publish_failed"] == 0
    assert r["lost"] == r["duplicated"] == r["out_of_order"] == 0
    assert r["not_recoverable_told"] == 0 and r["delivered"] == r["expected_deliveries"]
    assert r["reconnects"] >= 20  # every client was moved at least once
