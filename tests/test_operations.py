"""What operators use: /metrics, /healthz, /readyz, the drain (hub.drain and SIGTERM), the
supervisor's rolling restart and the metrics summed over --workers. Real servers, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from fasthub import Denied, HubConfig
from fasthub.metrics import FAMILIES, MetricsDir, archive, combine, render, snapshot
from tests.conftest import WS_IMPLS, Server, connect, free_socket, run, serve

ROOT = Path(__file__).resolve().parent.parent


def _auth(scope: Any) -> str | None:
    query = scope.get("query_string", b"").decode()
    if "user=bad" in query:
        raise Denied(401, "bad token")
    return query.partition("user=")[2] or None


def scrape(server: Server | str, token: str | None = None) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``/metrics`` parsed by prometheus-client's own parser: sample name -> labels -> value."""
    base = server if isinstance(server, str) else server.http
    headers = {"authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(f"{base}/metrics", headers=headers, timeout=5)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def one(metrics: dict[str, Any], name: str, **labels: str) -> float:
    return float(metrics.get(name, {}).get(tuple(sorted(labels.items())), 0.0))


@pytest.mark.parametrize("ws", WS_IMPLS)
def test_metrics_count_traffic_closes_and_refusals(ws: str) -> None:
    with serve({"authenticate": _auth}, HubConfig(max_message_size=1000), ws=ws) as server:

        async def scenario() -> None:
            a = await connect(server, "user=a")
            b = await connect(server, "user=b")
            await a.join("r")
            await b.join("r")
            for i in range(5):
                await a.send({"type": "room_message", "room": "r", "payload": {"i": i}})
            for _ in range(5):
                await b.expect("room_message")
            await a.send("not json")
            while (msg := await a.recv())["type"] != "error":  # its user_joined and own copies first
                pass
            assert msg["payload"]["code"] == "invalid_json"
            await b.send("x" * 2000)  # over max_message_size: 1009
            with pytest.raises(websockets.ConnectionClosed):
                await b.recv()
            assert b.ws.close_code == 1009
            await a.close()
            with pytest.raises(websockets.InvalidStatus) as refused:
                await websockets.connect(server.ws_url("user=bad"))
            assert refused.value.response.status_code == 401

        run(scenario())
        deadline = time.monotonic() + 5
        while server.call(lambda: len(server.hub.connections)) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # one loop-lag probe at least (every 0.25 s)
        m = scrape(server)
    assert one(m, "fasthub_messages_received_total") >= 8  # 2 joins, 5 messages, 1 bad
    assert one(m, "fasthub_deliveries_total") >= 10  # 5 to each member, replies, hellos
    assert one(m, "fasthub_connections_opened_total") == 2
    assert one(m, "fasthub_connections_closed_total", code="1000") == 1
    assert one(m, "fasthub_connections_closed_total", code="1009") == 1
    assert one(m, "fasthub_handshake_failures_total", status="401") == 1
    assert one(m, "fasthub_connections") == 0
    assert one(m, "fasthub_sessions_saved_total") == 2  # both were in a room
    assert one(m, "fasthub_event_loop_lag_seconds_count") >= 1
    assert one(m, "fasthub_flush_connections_count") >= 1
    assert one(m, "fasthub_flush_connections_bucket", le="+Inf") == one(m, "fasthub_flush_connections_count")
    assert one(m, "fasthub_resident_memory_bytes") > 10_000_000
    assert one(m, "fasthub_process_cpu_seconds_total") > 0


def test_metric_names_follow_prometheus_conventions() -> None:
    for name, (kind, doc, _) in FAMILIES.items():
        assert name.startswith("fasthub_") and name == name.lower() and doc.endswith("."), name
        assert name.endswith("_total") == (kind == "counter"), name
        if "seconds" in name or "bytes" in name:
            assert name.rsplit("_", 1)[-1] in ("seconds", "bytes", "total"), name


def test_metrics_are_protected_like_the_stats_and_probes_are_not() -> None:
    with serve({"stats_token": "s3cret"}, ws="fasthub") as server:
        assert httpx.get(f"{server.http}/metrics", timeout=5).status_code == 401
        assert httpx.get(f"{server.http}/metrics?token=wrong", timeout=5).status_code == 401
        assert one(scrape(server, "s3cret"), "fasthub_connections") == 0
        assert httpx.get(f"{server.http}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"{server.http}/readyz", timeout=5).status_code == 200
    with serve({"metrics_path": None, "health_path": None, "ready_path": None}, ws="fasthub") as server:
        for path in ("/metrics", "/healthz", "/readyz"):
            assert httpx.get(f"{server.http}{path}", timeout=5).status_code == 404, path


def test_healthz_fails_after_the_loop_was_blocked() -> None:
    with serve({}, HubConfig(health_max_lag=0.5), ws="fasthub") as server:
        r = httpx.get(f"{server.http}/healthz", timeout=5)
        assert r.status_code == 200 and r.json()["ok"] is True
        server.hub.run_threadsafe(time.sleep, 1.0)  # a handler that blocks the loop for 1 s
        r = httpx.get(f"{server.http}/healthz", timeout=5)
        assert r.status_code == 503, r.text
        assert r.json()["ok"] is False and r.json()["loop_lag_s"] >= 0.5


def test_readyz_follows_the_broker() -> None:
    from redisproc import RedisServer

    from fasthub.broker.redis import RedisBroker

    redis = RedisServer().start()
    try:
        with serve({}, ws="fasthub", broker=RedisBroker(redis.url, prefix="ready", ttl=2.0)) as server:
            deadline = time.monotonic() + 10
            while httpx.get(f"{server.http}/readyz", timeout=5).status_code != 200:
                assert time.monotonic() < deadline, "never ready"
                time.sleep(0.05)
            redis.stop()
            deadline = time.monotonic() + 10
            while (r := httpx.get(f"{server.http}/readyz", timeout=5)).status_code == 200:
                assert time.monotonic() < deadline, "still ready without Redis"
                time.sleep(0.05)
            assert r.status_code == 503 and r.json()["reason"] == "broker unreachable"
            assert one(scrape(server), "fasthub_broker_up") == 0
            # alive all the same: a broker outage is not a reason to restart the process
            assert httpx.get(f"{server.http}/healthz", timeout=5).status_code == 200
    finally:
        redis.stop()


@pytest.mark.parametrize("ws", WS_IMPLS)
def test_drain_flushes_then_closes_1012_in_batches_and_refuses_new(ws: str) -> None:
    with serve({}, HubConfig(), ws=ws) as server:
        hub = server.hub

        async def scenario() -> None:
            clients = [await connect(server) for _ in range(10)]
            for c in clients:
                await c.join("r")
            # messages queued to everyone in the same tick as the drain begins
            loop = hub.loop
            assert loop is not None

            def burst_and_drain() -> Any:
                for i in range(20):
                    hub.broadcast_to_room_json("r", {"type": "room_message", "room": "r", "payload": {"i": i}})
                return asyncio.ensure_future(server.app.drain(rate=50, timeout=10))

            drained = asyncio.run_coroutine_threadsafe(_call(burst_and_drain), loop)
            closed_at: list[float] = []
            start = time.monotonic()

            async def read(c: Any) -> list[int]:
                got = []
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for raw in c.ws:
                        msg = orjson.loads(raw)
                        if msg["type"] == "room_message":
                            got.append(msg["payload"]["i"])
                closed_at.append(time.monotonic() - start)
                assert c.ws.close_code == 1012, c.ws.close_code
                return got

            readers = [asyncio.ensure_future(read(c)) for c in clients]
            await asyncio.sleep(0.05)
            r = await asyncio.to_thread(httpx.get, f"{server.http}/readyz", timeout=5)
            assert r.status_code == 503 and r.json()["reason"] == "draining"
            with pytest.raises(websockets.InvalidStatus) as refused:
                await websockets.connect(server.ws_url())
            assert refused.value.response.status_code == 503
            results = await asyncio.gather(*readers)
            assert all(got == list(range(20)) for got in results), results  # queued first, then 1012
            # 50 per second in batches of 5 every 100 ms: the last closes about 100 ms after the first
            assert max(closed_at) - min(closed_at) >= 0.07, closed_at
            assert await asyncio.wrap_future(drained) is True

        run(scenario())
        assert one(scrape(server), "fasthub_connections_closed_total", code="1012") == 10
        assert one(scrape(server), "fasthub_draining") == 1


async def _call(func: Any) -> Any:
    return await func()


def _port() -> int:
    sock = free_socket()
    port = int(sock.getsockname()[1])
    sock.close()
    return port


@contextlib.contextmanager
def fasthub_serve(
    *args: str, env: dict[str, str] | None = None, https: Any = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``fasthub serve ARGS`` on a free port, ready; ``https``: the client SSL context to wait with."""
    port = _port()
    cmd = [sys.executable, "-m", "fasthub", "serve", "--port", str(port), "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, env={**os.environ, **(env or {})})
    base = f"{'https' if https else 'http'}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1, verify=https or True).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "fasthub serve did not start"
            time.sleep(0.05)
        yield proc, base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_sigterm_drains_and_a_second_one_exits_at_once() -> None:
    with fasthub_serve("--drain-rate", "4", "--drain-timeout", "30") as (proc, base):
        ws_url = base.replace("http", "ws") + "/ws"

        async def scenario() -> None:
            clients = [await websockets.connect(ws_url) for _ in range(40)]
            for c in clients:
                await c.recv()
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            # 4 per second, raised to 40 / 24 s: the first batch closes, the rest wait
            await asyncio.sleep(0.5)
            codes = [c.close_code for c in clients]
            assert codes.count(1012) >= 1 and codes.count(None) >= 30, codes
            r = await asyncio.to_thread(urllib_status, f"{base}/readyz")
            assert r == 503
            proc.send_signal(signal.SIGTERM)  # the second: out now
            await asyncio.to_thread(proc.wait, 10)
            assert time.monotonic() - start < 5
            for c in clients:
                with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
                    await asyncio.wait_for(c.recv(), 2)
            assert all(c.close_code in (1012, 1006) for c in clients), [c.close_code for c in clients]

        run(scenario(), timeout=60)


def test_sigterm_drain_ends_within_the_timeout() -> None:
    """Clients that never read (so never answer the close frame) do not hold the process past
    --drain-timeout: it stops at the deadline and uvicorn's shutdown drops them."""
    with fasthub_serve("--drain-timeout", "3") as (proc, base):
        port = int(base.rsplit(":", 1)[1])
        socks = []
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 101")  # then never read again
            socks.append(sock)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
        took = time.monotonic() - start
        assert 2.5 < took < 3 + 2.5, took  # waited for them, but only until the drain timeout (+ uvicorn's stop)
        assert code in (0, -signal.SIGTERM)
        for sock in socks:
            sock.settimeout(2)
            data = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    data += chunk
            assert b"\x88" in data and (1012).to_bytes(2, "big") in data  # the close frame was sent
            sock.close()


def urllib_status(url: str) -> int:
    """The HTTP status of a GET, 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def test_metrics_directory_sums_processes_and_keeps_dead_counters(tmp_path: Path) -> None:
    """The --workers aggregation without processes: snapshots of two pids, one then archived."""
    d = MetricsDir(str(tmp_path))
    me = os.getpid()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    base = {
        "fasthub_connections": 3,
        "fasthub_messages_received_total": 10,
        "fasthub_connections_closed_total": {"1000": 2},
        "fasthub_broker_lag_seconds": 0.5,
        "fasthub_event_loop_lag_seconds": {"bounds": [0.1], "counts": [4, 1], "sum": 0.3},
    }
    d.write({"pid": me, "at": time.time(), "values": base})
    d.write({"pid": dead.pid, "at": time.time(), "values": {**base, "fasthub_broker_lag_seconds": 2.0}})
    values = combine(d.read())
    assert values["fasthub_connections"] == 3  # the dead process's gauge is left out
    assert values["fasthub_messages_received_total"] == 20
    assert values["fasthub_connections_closed_total"] == {"1000": 4}
    assert values["fasthub_event_loop_lag_seconds"]["counts"] == [8, 2]
    archive(str(tmp_path), dead.pid)
    assert not (tmp_path / f"{dead.pid}.json").exists()
    again = combine(d.read())
    assert again["fasthub_messages_received_total"] == 20  # the archive keeps its counters
    assert again["fasthub_broker_lag_seconds"] == 0.5
    text = render(again).decode()
    assert 'fasthub_connections_closed_total{code="1000"} 4.0' in text
    assert "fasthub_messages_received_total 20.0" in text


def test_workers_metrics_add_up_and_survive_a_rolling_restart() -> None:
    from redisproc import RedisServer

    redis = RedisServer().start()
    try:
        with fasthub_serve("--workers", "2", "--redis", redis.url, "--redis-prefix", "ops", "--node-ttl", "2") as (
            proc,
            base,
        ):
            ws_url = base.replace("http", "ws") + "/ws"

            async def scenario() -> None:
                # max_queue=None: the member events they never read must not stop them reading
                clients = [await websockets.connect(ws_url, max_queue=None) for _ in range(20)]
                for c in clients:
                    await c.recv()
                    await c.send('{"type":"join_room","room":"r"}')
                    await c.recv()
                # whichever worker answers, it counts both (the other one's numbers are at most
                # one second old: each worker writes its snapshot every second)
                await asyncio.sleep(1.2)
                for _ in range(6):
                    m = await asyncio.to_thread(scrape, base)
                    assert one(m, "fasthub_processes") == 2
                    assert one(m, "fasthub_connections") == 20
                    assert one(m, "fasthub_connections_opened_total") == 20
                before = one(m, "fasthub_messages_received_total")
                assert before >= 20
                for c in clients:
                    await c.close()
                old = _children(proc.pid)
                assert len(old) == 2
                proc.send_signal(signal.SIGHUP)  # both workers replaced, one at a time
                deadline = time.monotonic() + 40
                while True:
                    now = _children(proc.pid)
                    if len(now) == 2 and not now & old:
                        m = await asyncio.to_thread(scrape, base)
                        if one(m, "fasthub_processes") == 2:
                            break
                    if time.monotonic() >= deadline:
                        _dump_stacks(now & old)  # where the workers that did not stop wait
                        raise AssertionError(("the rolling restart did not end", old, now))
                    await asyncio.sleep(0.2)
                m = await asyncio.to_thread(scrape, base)
                # the replaced workers' counters stay in the sums: nothing goes backwards
                assert one(m, "fasthub_messages_received_total") >= before
                assert one(m, "fasthub_connections_opened_total") == 20
                assert one(m, "fasthub_connections") == 0

            run(scenario(), timeout=90)
    finally:
        redis.stop()


def _dump_stacks(pids: set[int]) -> None:
    """SIGUSR1: each ``fasthub serve`` writes its threads' stacks to its stderr (the test's)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGUSR1)
    time.sleep(0.5)


def _children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.add(int(entry))
    return out


def test_snapshot_has_every_family() -> None:
    from fasthub import Hub

    values = snapshot(Hub())["values"]
    assert set(values) == set(FAMILIES)
    assert b"# TYPE fasthub_deliveries_total counter" in render(values)


def test_drain_rate_below_ten_per_second() -> None:
    """2 per second: one close at once, then one every half second (not a batch every 100 ms)."""
    with serve({}, HubConfig(), ws="fasthub") as server:

        async def scenario() -> None:
            clients = [await connect(server) for _ in range(4)]
            loop = server.hub.loop
            assert loop is not None
            drained = asyncio.run_coroutine_threadsafe(server.app.drain(rate=2, timeout=30), loop)
            start = time.monotonic()
            closed_at = []
            for c in clients:
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for _ in c.ws:
                        pass
                closed_at.append(time.monotonic() - start)
            assert await asyncio.wrap_future(drained) is True
            closed_at.sort()
            assert closed_at[0] < 0.3 and 1.2 < closed_at[-1] < 2.5, closed_at

        run(scenario())


def test_cli_turns_metrics_and_probes_off() -> None:
    port = _port()
    cmd = [sys.executable, "-m", "fasthub", "serve", "--port", str(port), "--log-level", "warning",
           "--no-metrics", "--no-health"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while urllib_status(f"{base}/ws/stats") != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "fasthub serve did not start"
            time.sleep(0.05)
        for path in ("/metrics", "/healthz", "/readyz"):
            assert urllib_status(base + path) == 404, path
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_a_drain_that_times_out_names_the_connections_it_left(caplog: pytest.LogCaptureFixture) -> None:
    """A peer that does not answer its 1012 keeps its connection past a short drain timeout (the
    protocol's close timeout is longer): the drain says False and logs which connection it left."""
    from tests.conftest import RawClient

    with serve({}, HubConfig(), ws="fasthub") as server:
        silent = RawClient(server, "")
        hello = silent.json()
        loop = server.hub.loop
        assert loop is not None
        with caplog.at_level(logging.WARNING, logger="fasthub"):
            done = asyncio.run_coroutine_threadsafe(server.app.drain(rate=0, timeout=0.5), loop).result(10)
        assert done is False
        assert silent.frame() == (0x8, (1012).to_bytes(2, "big") + b"server restarting")
        assert "fasthub: drain timed out after 0.5 s with 1 connections left: <Connection" in caplog.text
        assert f"<Connection {hello['payload']['connection_id']} user=" in caplog.text
        assert "> closing=True" in caplog.text
        silent.close()


def test_a_new_process_says_it_serves_once_its_broker_is_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first metrics snapshot (the ``--workers`` supervisor's sign that a new worker serves,
    after which a rolling restart drains the old one) waits until the broker is up, so the
    clients moved over can resume at once; with Redis away, for at most BROKER_WAIT seconds."""
    from redisproc import RedisServer, free_port

    from fasthub.broker.redis import RedisBroker
    from fasthub.server import asgi

    monkeypatch.setattr(asgi, "BROKER_WAIT", 1.5)
    redis = RedisServer(free_port())  # not started yet
    snapshots = tmp_path / "metrics"
    snapshots.mkdir()
    broker = RedisBroker(redis.url, prefix="late", ttl=2.0, retry_max=0.2)
    try:
        with serve({"metrics_dir": str(snapshots)}, ws="fasthub", broker=broker):
            time.sleep(0.4)
            assert not list(snapshots.glob("*.json")) and not broker.up  # not yet: no broker
            redis.start()
            deadline = time.monotonic() + 5
            while not list(snapshots.glob("*.json")):
                assert time.monotonic() < deadline
                time.sleep(0.005)
            assert broker.up  # the snapshot came once the broker was up
    finally:
        redis.stop()
    away = tmp_path / "away"
    away.mkdir()
    t0 = time.monotonic()
    with serve({"metrics_dir": str(away)}, ws="fasthub", broker=RedisBroker(redis.url, prefix="a", ttl=2.0)):
        while not list(away.glob("*.json")):
            assert time.monotonic() - t0 < 5
            time.sleep(0.01)
        assert time.monotonic() - t0 >= 1.4  # Redis never came: it serves after BROKER_WAIT anyway
