"""``fasthub plan`` and the unit costs under it: the fit, the arithmetic, and a calibration
against a real ``fasthub serve`` measured with ``fasthub bench``."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fasthub.costs import TERMS, CostMeter, fit, solve
from fasthub.plan import Costs, Workload, _nodes_holding, calibrate, costs_from_bench, costs_from_url, plan
from tests.conftest import connect, run, serve

#: the compiled pass of ci/test runs these; their subject is not the twins (see ci/test)
pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parent.parent
TRUE = {"cpu_per_connect_s": 80e-6, "cpu_per_message_in_s": 8e-6, "cpu_per_delivery_s": 0.5e-6}


def synthetic(n: int, noise: float = 0.0, seed: int = 1) -> list[dict[str, float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        i = {"seconds": 1.0, "connects": rng.randint(0, 2000), "messages_in": rng.randint(0, 50_000),
             "deliveries": rng.randint(0, 500_000), "broker_published": 0}
        cpu = sum(TRUE[k] * i[c] for k, c in TERMS if k in TRUE)
        i["cpu_s"] = cpu * (1 + rng.uniform(-noise, noise))
        out.append(i)
    return out


def test_fit_recovers_the_costs() -> None:
    got = fit(synthetic(30, noise=0.02), [t for t in TERMS if t[0] != "cpu_idle_per_s"])
    for name, value in TRUE.items():
        assert got[name] == pytest.approx(value, rel=0.1), name
    assert got["cpu_per_broker_publish_s"] is None  # its counter never moved


def test_fit_refuses_what_the_data_cannot_separate() -> None:
    # every interval with the same mix: messages and deliveries move together
    same = [{"seconds": 1.0, "connects": 0, "messages_in": 100 * k, "deliveries": 4000 * k, "cpu_s": 0.01 * k}
            for k in range(1, 10)]
    got = fit(same)
    assert got["cpu_per_message_in_s"] is None and got["cpu_per_delivery_s"] is None
    assert solve([[1.0, 2.0]], [1.0]) is None  # fewer rows than unknowns


def test_cost_meter_fits_a_varied_window() -> None:
    meter = CostMeter()
    totals = {"cpu_s": 0.0, "connects": 0, "messages_in": 0, "deliveries": 0, "broker_published": 0}
    now = 0.0
    for i in synthetic(20, noise=0.01):
        now += i["seconds"]
        for k in ("connects", "messages_in", "deliveries"):
            totals[k] += i[k]
        totals["cpu_s"] += i["cpu_s"] + 0.05  # plus a steady 50 ms/s of timers
        meter.sample(now, dict(totals))
    costs = meter.costs()
    assert costs["intervals"] == 19 and costs["window_s"] == 19.0
    assert costs["cpu_per_delivery_s"] == pytest.approx(TRUE["cpu_per_delivery_s"], rel=0.1)
    assert costs["cpu_idle_per_s"] == pytest.approx(0.05, rel=0.3)


def test_plan_arithmetic() -> None:
    costs = Costs(100e-6, 10e-6, 1e-6, bytes_per_connection=2000, base_rss_bytes=50e6, frame_overhead_bytes=100)
    # 1,000 messages/s to rooms of 100: 100,000 deliveries/s = 0.1 + 0.01 core-s/s
    p = plan(costs, Workload(10_000, 100, 100, 1000, 300, headroom=0.5), files_per_worker=100_000)
    assert p["workers"] == 1 and p["cpu_core_seconds_per_s"] == pytest.approx(0.11)
    assert p["deliveries_per_s"] == 100_000 and p["bandwidth_out_bytes_per_s"] == 100_000 * 400
    assert p["memory_used_bytes"] == 50e6 + 10_000 * 2000 and p["memory_bytes"] == 2 * p["memory_used_bytes"]
    assert p["redis_publishes_per_s"] == 0
    # ten times the traffic at 50% per core: three workers, with Redis between them
    p = plan(costs, Workload(10_000, 100, 100, 10_000, 300, headroom=0.5), files_per_worker=100_000)
    assert p["workers"] == 3 and p["bound_by"] == "cpu"
    assert p["redis_publishes_per_s"] == 10_000 and p["redis_deliveries_per_s"] == pytest.approx(30_000, rel=0.01)
    assert any("broker" in n for n in p["notes"])  # its cost was not measured: said, not guessed
    # the open-file limit: 200,000 connections at 20,000 files each
    p = plan(costs, Workload(200_000, 5000, 40, 10, 300), files_per_worker=20_000)
    assert p["workers"] == 11 and p["bound_by"] == "files"
    assert _nodes_holding(4, 1) == pytest.approx(1.0) and _nodes_holding(4, 1000) == pytest.approx(4.0)


def test_costs_from_bench_needs_the_three_scenarios() -> None:
    with pytest.raises(ValueError, match="ingress"):
        costs_from_bench({"runs": [{"scenario": "idle", "server_stats": {"before": {}, "after": {}}}]})


def test_calibration_against_a_real_server_and_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small calibration (a tenth of the real one, without the room of 10,000): costs in a sane
    range, saved, planned from."""
    import fasthub.plan

    monkeypatch.setattr(fasthub.plan, "CALIBRATION", fasthub.plan.CALIBRATION[:4])
    doc = calibrate(quiet=True, scale=0.1)
    costs = costs_from_bench(doc, "test")
    assert 1e-6 < costs.cpu_per_connect_s < 5e-3
    assert 0.5e-6 < costs.cpu_per_message_in_s < 500e-6
    assert 0 <= costs.cpu_per_delivery_s < 50e-6
    assert costs.bytes_per_connection is not None and 200 < costs.bytes_per_connection < 50_000
    assert costs.base_rss_bytes is not None and costs.base_rss_bytes > 10e6
    saved = tmp_path / "costs.json"
    saved.write_text(json.dumps(doc))
    out = subprocess.run(
        [sys.executable, "-m", "fasthub", "plan", "--connections", "30000", "--rooms", "300", "--room-size", "100",
         "--msgs-per-s", "500", "--from", str(saved), "--json"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    p = json.loads(out.stdout)
    assert p["workers"] >= 2  # 30,000 connections do not fit one process's 20,000 files
    assert p["deliveries_per_s"] == 50_000 and p["memory_bytes"] > 30_000 * 200
    text = subprocess.run(
        [sys.executable, "-m", "fasthub", "plan", "--connections", "1000", "--rooms", "10", "--room-size", "100",
         "--msgs-per-s", "50", "--from", str(saved)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert text.returncode == 0 and "workers" in text.stdout and "unit costs" in text.stdout, text.stdout


def test_plan_errors_are_one_line() -> None:
    def plan_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fasthub", "plan", "--connections", "10", "--rooms", "1", "--room-size", "10",
             "--msgs-per-s", "1", *args],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )

    missing = plan_cli("--from", "/nonexistent.json")
    assert missing.returncode == 1 and missing.stderr.startswith("fasthub plan: ")
    assert plan_cli("--from", "x.json", "--headroom", "1.5").returncode == 2
    assert plan_cli().returncode == 2  # a source is required


def test_live_hub_reports_costs_and_plan_says_when_they_are_unknown() -> None:
    with serve({}, ws="fasthub") as server:
        stats = httpx.get(f"{server.http}/ws/stats", timeout=5).json()
        assert stats["cpu_s"] > 0
        assert set(stats["costs"]) >= {"window_s", "cpu_per_message_in_s", "cpu_per_delivery_s", "cpu_per_connect_s"}
        # a hub that has seen no traffic cannot tell the costs apart: plan says so, no guess
        with pytest.raises(ValueError, match="did not separate"):
            costs_from_url(server.http)


def test_live_hub_costs_from_varied_traffic() -> None:
    """Windows of different fan-out (alone in a room, then 20 members) separate the costs."""
    from fasthub import HubConfig

    with serve({}, HubConfig(cleanup_interval=0.3, rate_limit=0), ws="fasthub") as server:

        async def scenario() -> None:
            clients = [await connect(server) for _ in range(20)]
            for i, c in enumerate(clients):
                await c.join("big" if i else "alone")
            sender = clients[0]
            for phase in range(8):  # each phase two sweeps (0.3 s here)
                room = "alone" if phase % 2 == 0 else "big"
                if room == "big":  # its reply is read with the rest by _drain
                    await sender.send({"type": "join_room", "room": "big"})
                end = time.monotonic() + 0.6
                while time.monotonic() < end:
                    for _ in range(50):
                        await sender.send({"type": "room_message", "room": room, "payload": "x"})
                    await _drain(clients)
                if room == "big":
                    await sender.send({"type": "leave_room", "room": "big"})

        run(scenario(), timeout=60)
        costs = server.call(server.hub.cost_meter.costs)
    assert costs["intervals"] >= 5
    assert costs["cpu_per_delivery_s"] is not None and costs["cpu_per_message_in_s"] is not None, costs


async def _drain(clients: list[Any]) -> None:
    import asyncio

    for c in clients:
        while True:
            try:
                await asyncio.wait_for(c.ws.recv(), 0.001)
            except TimeoutError:
                break


def test_delivery_cost_by_room_size() -> None:
    c = Costs(0.0, 0.0, 3e-6, delivery_by_room_size=[[1000, 4e-6], [100, 3e-6], [10_000, 6e-6]])
    assert c.delivery_cost(50) == 3e-6  # below the smallest measured room: its cost
    assert c.delivery_cost(100) == pytest.approx(3e-6)
    assert c.delivery_cost(316) == pytest.approx(3.5e-6, rel=0.01)  # half-way in log(size)
    assert c.delivery_cost(20_000) == 6e-6
    p = plan(c, Workload(20_000, 1, 20_000, 1, 60), files_per_worker=100_000)
    assert any("bigger than the largest measured" in n for n in p["notes"])


def test_costs_from_measured_phases() -> None:
    """Rooms of 11 and 101 (one delivery cost) give both costs; 1,001 its own delivery cost."""
    c_in, d_small, d1001 = 100e-6, 2e-6, 4e-6

    def stats(cpu: float, connects: int, msgs: int, out: int) -> dict[str, Any]:
        zero = {"cpu_s": 0.0, "uptime_s": 0.0, "connections_opened": 0, "messages_in": 0, "messages_out": 0,
                "rss_bytes": 40e6, "bytes_out": 0}
        return {"before": zero, "after": {**zero, "cpu_s": cpu, "uptime_s": 5.0, "connections_opened": connects,
                                          "messages_in": msgs, "messages_out": out, "bytes_out": out * 200}}

    def room(members: int, sent: int, d: float) -> dict[str, Any]:
        return {"scenario": "latency", "params": {"connections": members, "payload": 60},
                "result": {"server_cpu_s": sent * c_in + sent * (members + 1) * d, "sent": sent,
                           "received": sent * members, "pub_echo": sent},
                "server_stats": stats(2.0, members + 1, sent, sent * (members + 1))}

    runs = [
        {"scenario": "idle", "params": {}, "result": {"rss_per_conn_bytes": 2000},
         "server_stats": stats(0.5, 5000, 5000, 30_000)},
        room(10, 10_000, d_small),
        room(100, 5000, d_small),
        room(1000, 500, d1001),
    ]
    costs = costs_from_bench({"runs": runs})
    assert costs.cpu_per_message_in_s == pytest.approx(c_in)
    assert costs.delivery_by_room_size == [
        [11.0, pytest.approx(d_small)], [101.0, pytest.approx(d_small)], [1001.0, pytest.approx(d1001)]
    ]
    assert costs.cpu_per_connect_s == pytest.approx(100e-6)  # all of the idle run's CPU per connect
    assert costs.bytes_per_connection == 2000 and costs.frame_overhead_bytes == pytest.approx(140)


def test_measured_phases_try_a_wider_pair_when_the_smallest_two_disagree() -> None:
    """Noise in the room of 101 gives the pair (11, 101) a negative delivery cost: the pair
    (11, 1,001) answers instead, and 101 gets its own (clamped) figure."""
    from fasthub.plan import _measured_phases

    c_in, d = 100e-6, 3e-6

    def room(members: int, sent: int, cpu: float) -> dict[str, Any]:
        return {"scenario": "latency", "params": {"connections": members},
                "result": {"server_cpu_s": cpu, "sent": sent, "received": sent * members, "pub_echo": sent}}

    runs = [
        room(10, 2000, 2000 * c_in + 2000 * 11 * d),
        room(100, 1000, 0.05),  # too little: 1,000 messages alone cost 0.1 s
        room(1000, 100, 100 * c_in + 100 * 1001 * d),
    ]
    measured = _measured_phases(runs)
    assert measured is not None
    got_c_in, by_size = measured
    assert got_c_in == pytest.approx(c_in)
    assert by_size == [[11.0, pytest.approx(d)], [101.0, 0.0], [1001.0, pytest.approx(d)]]
    assert _measured_phases(runs[:2]) is None  # one pair, no positive answer: none
    stats = {"before": {"cpu_s": 0.0, "uptime_s": 0.0, "connections_opened": 0, "messages_in": 0, "messages_out": 0,
                        "rss_bytes": 40e6, "bytes_out": 0}}
    stats["after"] = {**stats["before"], "cpu_s": 1.0, "messages_in": 100, "messages_out": 100}
    idle = {"scenario": "idle", "params": {}, "result": {}, "server_stats": stats}
    with pytest.raises(ValueError, match="did not separate a message's cost"):
        costs_from_bench({"runs": [idle, *({**r, "server_stats": stats} for r in runs[:2])]})


def test_broker_cost_is_the_extra_cpu_of_the_same_rooms_on_redis() -> None:
    from fasthub.plan import broker_cost

    def room(members: int, rate: float, cpu: float, sent: int) -> dict[str, Any]:
        return {"scenario": "latency", "params": {"connections": members, "rate": rate},
                "result": {"server_cpu_s": cpu, "sent": sent}}

    local = [room(10, 2000.0, 1.0, 10_000), room(100, 1000.0, 2.0, 5000)]
    redis = [room(10, 2000.0, 1.0 + 10_000 * 50e-6, 10_000), room(100, 1000.0, 2.0 + 5000 * 50e-6, 5000)]
    assert broker_cost(local, redis) == pytest.approx(50e-6)
    assert broker_cost(local, []) is None


def test_calibration_with_redis_measures_the_broker(redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import fasthub.plan

    monkeypatch.setattr(fasthub.plan, "CALIBRATION", fasthub.plan.CALIBRATION[:3])  # idle and the small rooms
    doc = calibrate(redis_server.url, quiet=True, scale=0.1)
    cost = costs_from_bench(doc, "test").cpu_per_broker_publish_s
    assert cost is not None and 1e-6 < cost < 5e-3, cost
    p = plan(costs_from_bench(doc), Workload(1000, 10, 100, 20_000, 60), files_per_worker=100_000)
    assert p["workers"] > 1 and not any("broker" in n for n in p["notes"])  # counted, not a note
