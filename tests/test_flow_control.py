"""Flow control: a burst from one publisher goes at the pace of the members that read.

The issue's scenario: one publisher (no rate limit) sends 5,000 x 1 KB to a room of 10 reading
``websockets`` clients and 2 raw clients that never read. Without flow control the readers are
closed as slow consumers along with the others; with it (the default) every reader gets every
message in order, the two that never read are closed (no progress for ``write_timeout``), and
the hub's buffers stay bounded. Real server (the fast path), real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import websockets

from fasthub import HubConfig
from tests import conftest
from tests.conftest import Server, query_user, run, serve

N = 5000
PAD = "x" * 1000
READERS = 10


def config(**kw: Any) -> HubConfig:
    return HubConfig(rate_limit=0, rate_limit_bytes=0, write_timeout=2.0, **kw)


async def burst(server: Server) -> dict[str, Any]:
    """Publisher, readers and non-readers in room ``r``; returns what each reader got, who was
    closed, and the peak of the hub's buffered bytes sampled every 20 ms."""
    hub = server.hub
    silent = [await asyncio.to_thread(conftest.RawClient, server, f"user=silent{i}", 4096) for i in range(2)]
    for s in silent:
        sid = s.json()["payload"]["connection_id"]
        server.call(hub.join_room, sid, "r")
    readers = [await websockets.connect(server.ws_url(f"user=reader{i}"), max_size=None) for i in range(READERS)]
    pub = await websockets.connect(server.ws_url("user=pub"), max_size=None)
    for ws in [*readers, pub]:
        await ws.recv()  # connected
        await ws.send(json.dumps({"type": "join_room", "room": "r", "id": "j"}))
    for ws in [*readers, pub]:  # every member in before the burst starts
        while json.loads(await ws.recv()).get("id") != "j":
            pass
    got: list[list[int]] = [[] for _ in readers]
    closed: list[int | None] = [None] * READERS

    async def read(i: int, ws: Any) -> None:
        deadline = time.monotonic() + 60
        try:
            while len(got[i]) < N and time.monotonic() < deadline:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if msg.get("type") == "room_message":
                    got[i].append(msg["payload"]["seq"])
        except websockets.ConnectionClosed as exc:
            closed[i] = exc.rcvd.code if exc.rcvd else 1006
        except TimeoutError:
            pass

    tasks = [asyncio.ensure_future(read(i, ws)) for i, ws in enumerate(readers)]
    peak = 0
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, server.call(lambda: hub.stats()["bytes_buffered"]))
            await asyncio.sleep(0.02)

    sampler = asyncio.ensure_future(sample())
    started = time.monotonic()

    async def drain_pub() -> None:  # the publisher is a member too: it reads its echoes
        with_exc = True
        while with_exc:
            try:
                await pub.recv()
            except websockets.ConnectionClosed:
                with_exc = False

    pub_reader = asyncio.ensure_future(drain_pub())
    for i in range(N):
        try:
            await pub.send(json.dumps({"type": "room_message", "room": "r", "payload": {"seq": i, "pad": PAD}}))
        except (websockets.ConnectionClosed, OSError):
            break  # (without flow control the publisher, a member too, can be closed as well)
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    sampling = False
    await sampler
    stats = server.call(hub.stats)
    for ws in [*readers, pub]:
        with contextlib.suppress(websockets.ConnectionClosed, OSError):
            await ws.close()
    pub_reader.cancel()
    silent_open = []
    for s in silent:
        silent_open.append(server.call(lambda: len(hub.connections)))
        s.close()
    return {"got": got, "closed": closed, "peak": peak, "stats": stats, "elapsed": elapsed}


def test_readers_keep_every_message_while_non_readers_are_closed() -> None:
    with serve({"authenticate": query_user}, config(), ws="fasthub") as server:
        result = run(burst(server), timeout=120)
    budget = HubConfig().send_buffer_size
    for i, seqs in enumerate(result["got"]):
        assert result["closed"][i] is None, f"reader {i} was closed with {result['closed'][i]}"
        assert seqs == list(range(N)), f"reader {i} got {len(seqs)} messages"
    # the two that never read: closed when their writes made no progress for write_timeout
    assert result["stats"]["slow_consumer_closes"] + result["stats"]["connections_closed"] >= 2
    # bounded: each of the 13 members holds at most its budget (1 MiB), readers about the
    # watermark (512 KiB) plus a read's worth of messages
    assert result["peak"] <= 13 * budget, result["peak"]
    print(f"flow control: {N} x 1 KB to {READERS} readers in {result['elapsed']:.1f} s, "
          f"peak buffered {result['peak'] / 2**20:.1f} MiB")


def test_without_flow_control_a_burst_closes_readers_too() -> None:
    """The problem the watermark solves (``publish_watermark=0``): readers that read as fast as
    a Python client can are closed as slow consumers. (A 64 KiB budget, so that it shows on a
    fast machine too; with 1 MiB a fast enough one keeps up.)"""
    small = config(publish_watermark=0, send_buffer_size=64 * 1024, max_message_size=16 * 1024)
    with serve({"authenticate": query_user}, small, ws="fasthub") as server:
        result = run(burst(server), timeout=120)
    assert any(code == 1008 for code in result["closed"]), result["closed"]
    assert result["stats"]["slow_consumer_closes"] >= 1
