"""Slow consumers: a client that stops reading while the hub sends it a lot.

The hub can only see a slow reader where the server applies backpressure: uvicorn's ``wsproto``
implementation waits in ASGI ``send()`` while the transport is paused (``websockets-sansio``
writes straight to the transport, so it is not used here), and the fast path counts the
transport's buffer in the budget itself. The slow reader is a raw socket with a small receive
buffer; a well-behaved ``websockets`` client shares its room. Every loop is bounded in count and
time: the kernel's own buffers (up to a few MiB on loopback) fill before the hub sees anything,
so the senders keep going until the hub reacts, or give up.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
from typing import Any

import pytest

from fasthub import HubConfig
from fasthub._wire.testing import encode_frame
from tests import conftest
from tests.conftest import Client, Server, connect, query_user, run, serve

PAD = "x" * 8000  # ~8 KiB per message
MAX_MESSAGES = 4000  # ~32 MiB: far beyond the kernel's buffers
BURST = 4  # messages per loop turn: 32 KiB, half the budget of a healthy reader


def config(**kw: Any) -> HubConfig:
    return HubConfig(send_buffer_size=64 * 1024, max_message_size=16 * 1024, **kw)


# ws implementations that apply backpressure; the fast path joins when conftest offers it
KINDS = ["wsproto"]
try:
    from tests.conftest import WS_IMPLS

    if "fasthub" in WS_IMPLS:
        KINDS.append("fasthub")
except ImportError:  # pragma: no cover
    pass


class RawClient(conftest.RawClient):
    """A slow reader: a raw client with a 4 KiB receive buffer that reads only on demand."""

    def __init__(self, server: Server, query: str, rcvbuf: int = 4096) -> None:
        super().__init__(server, query, rcvbuf)

    def drain(self, limit: int = MAX_MESSAGES + 100, timeout: float = 5.0) -> list[tuple[int, bytes]]:
        """Read frames (answering pings) until a close frame, EOF or ``timeout`` of silence."""
        frames: list[tuple[int, bytes]] = []
        for _ in range(limit):
            try:
                got = self.frame(timeout)
            except TimeoutError:
                break
            if got is None:
                break
            if got[0] == 0x9:
                self.sock.sendall(encode_frame(0xA, got[1], mask=os.urandom(4)))
                continue
            frames.append(got)
            if got[0] == 0x8:
                self.sock.sendall(encode_frame(0x8, got[1][:2], mask=os.urandom(4)))
                break
        return frames


def seqs(frames: list[tuple[int, bytes]]) -> list[int]:
    out = []
    for op, data in frames:
        if op == 0x1:
            msg = json.loads(data)
            if "seq" in msg:
                out.append(msg["seq"])
    return out


class Reader:
    """Collects the ``seq`` of every numbered message a well-behaved client receives.

    It reads until ``want`` of them arrived (``want`` is lowered once the sender knows how many
    it sent) or the deadline passes; no task cancellation, so nothing read is lost.
    """

    def __init__(self, client: Client, deadline: float = 30) -> None:
        self.client = client
        self.want = MAX_MESSAGES
        self.got: list[int] = []
        self.others: list[dict[str, Any]] = []  # messages without a seq (member events)
        self.deadline = time.monotonic() + deadline
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while len(self.got) < self.want and time.monotonic() < self.deadline:
            try:
                msg = await self.client.recv(timeout=0.2)
            except TimeoutError:
                continue
            if "seq" in msg:
                self.got.append(msg["seq"])
            else:
                self.others.append(msg)

    async def member_event(self, action: str) -> dict[str, Any]:
        """A ``system`` member event: read during the flood, or the next message after it."""
        for msg in self.others:
            if msg.get("type") == "system" and msg["payload"].get("action") == action:
                return msg
        msg = await self.client.expect("system")
        assert msg["payload"]["action"] == action, msg
        return msg

    async def finish(self, sent: int) -> list[int]:
        self.want = sent
        await self.task
        return self.got


async def setup(server: Server) -> tuple[RawClient, str, Client]:
    hub = server.hub
    slow = await asyncio.to_thread(RawClient, server, "user=slow")
    sid = slow.json()["payload"]["connection_id"]
    good = await connect(server, "user=good")
    server.call(hub.join_room, sid, "r")
    assert slow.json()["payload"]["action"] == "joined"
    server.call(hub.join_room, good.conn_id, "r")
    await good.expect("system", room="r")  # joined
    assert server.call(lambda: hub.get_room("r").member_count) == 2
    return slow, sid, good


async def flood(server: Server, until: Any, extra: int = 40, via: str = "room") -> int:
    """Send numbered ~8 KiB messages in small bursts until ``until(hub)`` holds, then ``extra``
    more; return how many were sent. Fails if the hub never reacts within the bounds."""
    hub = server.hub
    sent = 0
    deadline = time.monotonic() + 15
    reacted_at: int | None = None

    def burst(start: int) -> bool:
        for i in range(start, start + BURST):
            if via == "room":
                hub.broadcast_to_room_json("r", {"seq": i, "pad": PAD})
            else:
                hub.send_to_user_json("slow", {"seq": i, "pad": PAD})
                hub.send_to_user_json("good", {"seq": i, "pad": PAD})
        return bool(until(hub))

    while sent < MAX_MESSAGES and time.monotonic() < deadline:
        reacted = await asyncio.wrap_future(hub.run_threadsafe(burst, sent))
        sent += BURST
        if reacted and reacted_at is None:
            reacted_at = sent
        if reacted_at is not None and sent >= reacted_at + extra:
            return sent
        await asyncio.sleep(0)  # let the good reader run
    raise AssertionError(f"the hub never reacted to the slow reader ({sent} messages sent)")


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.mark.parametrize("via", ["room", "user"])
def test_slow_reader_is_closed_1008_and_the_room_carries_on(kind: str, via: str) -> None:
    with serve({"authenticate": query_user}, config(), ws=kind) as server:
        hub = server.hub

        async def scenario() -> None:
            slow, sid, good = await setup(server)
            good_reader = Reader(good)
            sent = await flood(server, lambda h: h.slow_consumer_closes > 0, via=via)
            got = await good_reader.finish(sent)
            # the healthy member got everything, in order
            assert got == list(range(sent))
            s = server.call(hub.stats)
            assert s["slow_consumer_closes"] == 1
            assert s["dropped"] == 0
            # the slow reader now reads: an in-order prefix of what was sent, then 1008
            frames = await asyncio.to_thread(slow.drain)
            slow.close()
            prefix = seqs(frames)
            assert prefix == list(range(len(prefix))), prefix[:5]
            assert len(prefix) < sent  # its backlog was dropped
            assert frames and frames[-1][0] == 0x8, [op for op, _ in frames[-3:]]
            code = struct.unpack("!H", frames[-1][1][:2])[0]
            assert (code, frames[-1][1][2:].decode()) == (1008, "slow consumer")
            # and it is gone: registry, user index, room
            for _ in range(100):
                if server.call(hub.get_connection, sid) is None:
                    break
                await asyncio.sleep(0.05)
            assert server.call(hub.get_connection, sid) is None
            assert server.call(hub.get_user_connections, "slow") == []
            assert server.call(lambda: hub.get_room("r").members) == [good.conn_id]
            assert server.call(hub.stats)["slow_consumer_closes"] == 1
            left = await good_reader.member_event("user_left")
            assert left["payload"]["action"] == "user_left" and left["payload"]["user_id"] == "slow"
            # the room still works
            assert server.call(hub.broadcast_to_room_json, "r", {"after": True}) == 1
            got = await good.recv()
            assert got.pop("offset") > 0 and got == {"after": True}

        run(scenario(), timeout=60)


def test_slow_reader_that_never_reads_again_is_removed(kind: str) -> None:
    """With no read at all the close cannot be written either: write_timeout drops the peer."""
    with serve({"authenticate": query_user}, config(write_timeout=1.0), ws=kind) as server:
        hub = server.hub

        async def scenario() -> None:
            slow, sid, good = await setup(server)
            good_reader = Reader(good)
            sent = await flood(server, lambda h: h.slow_consumer_closes > 0)
            got = await good_reader.finish(sent)
            assert got == list(range(sent))
            deadline = time.monotonic() + 5
            while server.call(hub.get_connection, sid) is not None:
                assert time.monotonic() < deadline, "the stuck slow reader was never removed"
                await asyncio.sleep(0.05)
            assert server.call(hub.get_user_connections, "slow") == []
            assert server.call(lambda: hub.get_room("r").has_member(sid)) is False
            s = server.call(hub.stats)
            assert s["connections"] == 1 and s["slow_consumer_closes"] == 1
            slow.close()
            left = await good_reader.member_event("user_left")
            assert left["payload"]["action"] == "user_left" and left["payload"]["user_id"] == "slow"
            assert server.call(hub.broadcast_to_room_json, "r", {"after": True}) == 1
            got = await good.recv()
            assert got.pop("offset") > 0 and got == {"after": True}

        run(scenario(), timeout=60)


def test_drop_policy_drops_and_counts_and_keeps_the_connection(kind: str) -> None:
    with serve({"authenticate": query_user}, config(slow_consumer="drop"), ws=kind) as server:
        hub = server.hub

        async def scenario() -> None:
            slow, sid, good = await setup(server)
            good_reader = Reader(good)
            sent = await flood(server, lambda h: h.fanout.dropped > 0)
            got = await good_reader.finish(sent)
            assert got == list(range(sent))
            s = server.call(hub.stats)
            assert s["dropped"] > 0
            assert s["slow_consumer_closes"] == 0
            assert s["connections"] == 2
            assert server.call(hub.get_connection, sid) is not None
            # the slow reader catches up: what it got is in order, and with what was dropped
            # it adds up to what was sent
            server.call(hub.broadcast_to_room_json, "r", {"marker": True})
            frames: list[tuple[int, bytes]] = []
            for _ in range(MAX_MESSAGES + 10):
                got_frame = await asyncio.to_thread(slow.frame, 5.0)
                assert got_frame is not None, "the slow reader was disconnected"
                if got_frame[0] == 0x9:
                    slow.sock.sendall(encode_frame(0xA, got_frame[1], mask=os.urandom(4)))
                    continue
                frames.append(got_frame)
                if got_frame[0] == 0x1 and json.loads(got_frame[1]).get("marker") is True:
                    break
            else:
                raise AssertionError("the marker never arrived")
            received = seqs(frames)
            assert received == sorted(set(received))  # in order, no duplicates
            assert received[0] == 0
            dropped = server.call(hub.stats)["dropped"]
            assert len(received) + dropped == sent
            # still connected and served
            assert server.call(hub.send_to_user_json, "slow", {"last": 1}) == 1
            last = json.loads((await asyncio.to_thread(slow.frame, 5.0) or (0, b"{}"))[1])
            assert last == {"last": 1, "offset": 1}  # the user's first stored message
            assert server.call(hub.stats)["connections"] == 2
            slow.close()

        run(scenario(), timeout=60)
