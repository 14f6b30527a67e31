"""Keep-alive: a peer that answers no ping is dropped; a healthy idle peer stays.

Short timers make it quick. On the portable path the server's own WebSocket keep-alive (uvicorn's
ws_ping_interval/ws_ping_timeout, which conftest sets from HubConfig) pings; on the fast path the
hub's sweep does. The tests only look at what a client and the hub's API can observe.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
from typing import Any

from fasthub import HubConfig
from fasthub._wire.testing import encode_frame
from tests.conftest import RawClient, connect, run

CONFIG = HubConfig(ping_interval=0.3, pong_timeout=0.6, cleanup_interval=0.2)


async def answer_pings(raw: RawClient, stop: asyncio.Event, got: list[tuple[int, bytes]]) -> int:
    """Answer every ping until ``stop``; keep the other frames in ``got``; return the ping count."""
    pings = 0
    while not stop.is_set():
        try:
            frame = await asyncio.to_thread(raw.frame, 0.2)
        except TimeoutError:
            continue
        assert frame is not None, "the server closed a peer that answers its pings"
        if frame[0] == 0x9:
            pings += 1
            raw.sock.sendall(encode_frame(0xA, frame[1], mask=os.urandom(4)))
        else:
            got.append(frame)
    return pings


def test_dead_peer_is_dropped_and_healthy_idle_peers_stay(make_server: Any) -> None:
    """Three idle peers in one room: one answers no ping (dropped), one is the ``websockets``
    library with its own pings off (it answers the server's), one is a raw socket answering
    pings by hand. Only the first goes; the others still get room messages afterwards."""
    server = make_server(CONFIG)
    hub = server.hub

    async def scenario() -> None:
        zombie = await asyncio.to_thread(RawClient, server, "user=zombie")
        hello = zombie.json()
        zid = hello["payload"]["connection_id"]
        assert hello["payload"]["user_id"] == "zombie"
        healthy = await connect(server, "user=healthy", ping_interval=None)
        polite = await asyncio.to_thread(RawClient, server, "user=polite")
        pid = polite.json()["payload"]["connection_id"]
        idle_since = time.monotonic()
        server.call(hub.join_room, pid, "r")
        assert polite.json()["payload"]["action"] == "joined"
        stop = asyncio.Event()
        polite_frames: list[tuple[int, bytes]] = []
        polite_task = asyncio.create_task(answer_pings(polite, stop, polite_frames))
        server.call(hub.join_room, zid, "r")
        server.call(hub.join_room, healthy.conn_id, "r")
        await healthy.expect("system", room="r")
        assert server.call(lambda: hub.get_room("r").member_count) == 3

        # the zombie reads nothing, sends nothing, answers no ping: it is dropped
        def registered() -> tuple[Any, ...]:
            room = hub.get_room("r")
            return (
                hub.get_connection(zid) is not None,
                bool(hub.get_user_connections("zombie")),
                room is not None and room.has_member(zid),
            )

        deadline = time.monotonic() + 5
        state = server.call(registered)
        while state != (False, False, False):
            # removed from the registry, its user and its rooms in the same step
            assert state == (True, True, True), state
            assert time.monotonic() < deadline, "the dead peer was not dropped"
            await asyncio.sleep(0.05)
            state = server.call(registered)
        dropped_after = time.monotonic() - idle_since
        assert dropped_after < 4 * CONFIG.pong_timeout + 1, dropped_after

        # the server closed the zombie's socket: a close frame (1011) and then EOF
        frames = []
        for _ in range(100):
            got = await asyncio.to_thread(zombie.frame, 3.0)
            if got is None:
                break
            frames.append(got)
        else:
            raise AssertionError("the server did not close the TCP connection")
        zombie.close()
        opcodes = [op for op, _ in frames]
        assert set(opcodes) <= {0x1, 0x8, 0x9}, opcodes  # texts, pings and the close
        assert 0x9 in opcodes  # it was pinged
        closes = [data for op, data in frames if op == 0x8]
        assert len(closes) == 1 and struct.unpack("!H", closes[0][:2])[0] == 1011, closes

        # the healthy members saw the zombie leave, and stay while idle
        left = await healthy.expect("system", room="r")
        assert left["payload"]["action"] == "user_left" and left["payload"]["user_id"] == "zombie"
        await asyncio.sleep(max(0.0, 3 * CONFIG.pong_timeout + 0.2 - (time.monotonic() - idle_since)))
        assert time.monotonic() - idle_since >= 3 * CONFIG.pong_timeout
        s = server.call(hub.stats)
        assert s["connections"] == 2 and s["users"] == 2
        assert sorted(server.call(lambda: hub.get_room("r").members)) == sorted([healthy.conn_id, pid])
        assert server.call(hub.broadcast_to_room_json, "r", {"still": "here"}) == 2
        assert await healthy.recv() == {"still": "here", "offset": 1}
        await healthy.send({"type": "ping", "id": "p"})
        await healthy.expect("pong", id="p")
        deadline = time.monotonic() + 3
        while not any(op == 0x1 and json.loads(d) == {"still": "here", "offset": 1} for op, d in polite_frames):
            assert time.monotonic() < deadline and not polite_task.done(), polite_frames
            await asyncio.sleep(0.02)
        stop.set()
        assert await polite_task >= 2  # pinged while idle, and it answered
        # what the polite peer got: user_joined (healthy), user_left (zombie), the room message
        assert [op for op, _ in polite_frames] == [0x1] * len(polite_frames)
        polite.close()

    run(scenario())
