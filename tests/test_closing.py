"""Closes the server starts while the client is still busy: the client must read the code.

RFC 6455 section 7: the server sends its close frame, then closes TCP. Closing a socket that
still receives data makes the kernel answer with a reset, which can overtake the close frame,
so a failing connection lingers (our side shut down, the peer's data read and discarded) until
the peer closes. Every test here uses a real client that keeps sending (or stops reading) and
checks the close code and reason *it* received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from fasthub import HubConfig
from fasthub._wire.testing import encode_frame
from tests.conftest import RawClient, Server, query_user, run, serve

KINDS = ["fasthub", "websockets-sansio"]


async def _send_until_closed(ws: Any, messages: list[str], limit_s: float = 20.0) -> Any:
    """Send every message as fast as the client can; return the ConnectionClosed that stops it."""
    deadline = time.monotonic() + limit_s
    try:
        for text in messages:
            await ws.send(text)
            assert time.monotonic() < deadline, "the server never closed the flooding client"
        # everything went out: the close comes while reading
        while True:
            await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
    except websockets.ConnectionClosed as exc:
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_flooding_in_a_tight_loop_reads_its_1008(kind: str) -> None:
    """5,000 room messages at full speed over the rate limit: the client gets its 1008.

    The limit is 100/s with 20 refusals in a row allowed, so it trips however slowly this server
    (pure twins, sharing the test process's GIL with the client) handles messages; with the
    defaults (1000/s, 100 strikes) it trips once the server refuses 100 messages within a
    millisecond, as the compiled fast path does.
    """
    config = HubConfig(rate_limit=100, rate_limit_strikes=20)
    with serve({"authenticate": query_user}, config, ws=kind) as server:

        async def scenario() -> None:
            async with websockets.connect(server.ws_url("user=flood"), max_size=None) as ws:
                await ws.recv()  # connected
                await ws.send(json.dumps({"type": "join_room", "room": "r"}))
                await ws.recv()  # joined
                text = json.dumps({"type": "room_message", "room": "r", "payload": {"n": 1}})
                exc = await _send_until_closed(ws, [text] * 5000)
            assert exc.rcvd is not None, f"no close frame reached the client: {exc!r}"
            assert (exc.rcvd.code, exc.rcvd.reason) == (1008, "rate limit exceeded")
            # and the server carries on
            async with websockets.connect(server.ws_url("user=next")) as ws2:
                assert json.loads(await ws2.recv())["payload"]["event"] == "connected"

        run(scenario(), timeout=60)


def test_a_client_that_keeps_sending_after_an_oversize_message_reads_its_1009() -> None:
    """The engine's own failures linger too (on the portable path the server's engine closes)."""
    config = HubConfig(max_message_size=4096, rate_limit=0)
    with serve({"authenticate": query_user}, config, ws="fasthub") as server:

        async def scenario() -> None:
            async with websockets.connect(server.ws_url("user=big"), max_size=None) as ws:
                await ws.recv()
                ping = json.dumps({"type": "ping", "payload": "x" * 1000})
                big = json.dumps({"type": "ping", "payload": "x" * 10_000})
                exc = await _send_until_closed(ws, [ping] * 50 + [big] + [ping] * 3000)
            assert exc.rcvd is not None, f"no close frame reached the client: {exc!r}"
            assert exc.rcvd.code == 1009

        run(scenario(), timeout=60)


def test_a_stuck_reader_gets_1008_write_timeout_behind_its_unread_bytes() -> None:
    """write_timeout: the close frame is queued behind what the peer has not read; a peer that
    reads again within the linger receives all of it, then 1008 "write timeout"."""
    config = HubConfig(write_timeout=0.5, cleanup_interval=0.1, send_buffer_size=64 * 1024 * 1024, rate_limit=0)
    with serve({"authenticate": query_user}, config, ws="fasthub") as server:
        hub = server.hub
        client = RawClient(server, "user=stuck", rcvbuf=4096)
        try:
            assert client.json()["payload"]["event"] == "connected"
            chunk = {"pad": "y" * 60_000}
            sent = server.call(lambda: sum(hub.send_to_user_json("stuck", chunk) for _ in range(150)))
            assert sent == 150  # 9 MB, under the 64 MiB budget: no slow-consumer close
            time.sleep(1.2)  # not reading: no write progress for more than write_timeout
            frames = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                frame = client.frame(timeout=3.0)
                if frame is None:
                    break
                if frame[0] == 0x9:  # keep-alive ping: answered, not counted
                    client.sock.sendall(encode_frame(0xA, frame[1], mask=os.urandom(4)))
                    continue
                frames.append(frame)
                if frame[0] == 0x8:
                    break
            assert frames, "nothing arrived"
            opcode, body = frames[-1]
            assert opcode == 0x8, f"last frame {opcode:#x}, {len(frames)} frames"
            assert (struct.unpack("!H", body[:2])[0], body[2:].decode()) == (1008, "write timeout")
            assert sum(1 for op, _ in frames if op == 0x1) == 150  # every message, then the close
        finally:
            client.close()


def test_transport_high_water_sets_the_write_buffer_limits() -> None:
    """``HubConfig.transport_high_water`` is the transport's high mark (low: a quarter of it)."""
    with serve({"authenticate": query_user}, HubConfig(transport_high_water=32 * 1024), ws="fasthub") as server:
        client = RawClient(server, "user=hw")
        try:
            client.json()

            def limits() -> Any:
                (conn,) = server.hub.get_user_connections("hw")
                return conn.sink.transport.get_write_buffer_limits()

            assert server.call(limits) == (8 * 1024, 32 * 1024)
        finally:
            client.close()


def test_portable_path_counts_bytes_not_characters() -> None:
    """One pipeline: ``bytes_in`` (and the byte rate limit) count UTF-8 bytes on both paths."""
    for kind in KINDS:
        with serve({"authenticate": query_user}, HubConfig(), ws=kind) as server:

            async def scenario(server: Server = server, kind: str = kind) -> None:
                async with websockets.connect(server.ws_url("user=u")) as ws:
                    await ws.recv()
                    text = json.dumps({"type": "ping", "payload": "é€😀" * 10}, ensure_ascii=False)
                    await ws.send(text)
                    assert json.loads(await ws.recv())["type"] == "pong"
                    assert server.call(server.hub.stats)["bytes_in"] == len(text.encode()), kind

            run(scenario())


def _seconds_until_socket_closed(server: Server, limit_s: float) -> float:
    """Seconds until the server closed its last socket (uvicorn forgets the protocol then)."""
    start = time.monotonic()
    while server.call(lambda: len(server.uvicorn.server_state.connections)):
        assert time.monotonic() - start < limit_s, f"still open after {limit_s} s"
        time.sleep(0.05)
    return time.monotonic() - start


@contextlib.contextmanager
def _failed_client(user: str) -> Iterator[tuple[Server, RawClient]]:
    """A fast-path server and a raw client it has just failed with 1009 (the close frame read)."""
    with serve({"authenticate": query_user}, HubConfig(max_message_size=4096), ws="fasthub") as server:
        client = RawClient(server, f"user={user}")
        try:
            client.json()
            client.sock.sendall(encode_frame(0x1, b"x" * 10_000, mask=os.urandom(4)))  # over 4 KiB
            frame = client.frame()
            assert frame is not None and frame[0] == 0x8 and struct.unpack("!H", frame[1][:2])[0] == 1009
            yield server, client
        finally:
            client.close()


def test_linger_ends_after_its_timeout_when_the_peer_never_closes() -> None:
    with _failed_client("stays") as (server, client):
        # our side is shut down at once (FIN), the socket is kept, reading, for the linger
        client.sock.settimeout(2.0)
        assert client.sock.recv(100) == b""
        # the hub forgot the connection when the linger started; the socket waits for the peer
        assert server.call(server.hub.get_user_connections, "stays") == []
        gone = _seconds_until_socket_closed(server, 6.0)
        assert 1.5 < gone < 4.0, gone  # LINGER_TIMEOUT (2 s): not at once, not forever


def test_linger_ends_after_its_byte_budget_when_the_peer_keeps_sending() -> None:
    from fasthub.server.protocol import LINGER_BYTES

    with _failed_client("flood") as (_, client):
        chunk = encode_frame(0x1, b"y" * 60_000, mask=os.urandom(4))
        sent = 0
        start = time.monotonic()
        with contextlib.suppress(ConnectionError):
            while sent < 4 * LINGER_BYTES and time.monotonic() - start < 1.5:
                client.sock.sendall(chunk)
                sent += len(chunk)
        assert sent < 4 * LINGER_BYTES, "the server kept reading past its linger budget"
        assert time.monotonic() - start < 1.5, "cut by the byte budget, before the linger's timeout"


def test_a_ping_answered_in_the_same_read_as_a_failure_close_is_not_written_after_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The engine's pong and a queued 1008 in one read: the close frame is the last thing written
    (nothing after our side is shut down, no transport error), and the client reads the 1008."""
    config = HubConfig(rate_limit=1, rate_limit_strikes=1)
    with serve({"authenticate": query_user}, config, ws="fasthub") as server:
        client = RawClient(server, "user=pinger")
        try:
            client.json()
            burst = b"".join(encode_frame(0x1, b'{"type":"ping"}', mask=os.urandom(4)) for _ in range(10))
            client.sock.sendall(burst + encode_frame(0x9, b"are you there", mask=os.urandom(4)))
            frames = []
            while True:
                frame = client.frame(timeout=3.0)
                assert frame is not None, f"no close frame after {[op for op, _ in frames]}"
                frames.append(frame)
                if frame[0] == 0x8:
                    break
            assert struct.unpack("!H", frame[1][:2])[0] == 1008
            client.sock.settimeout(3.0)
            assert client.sock.recv(100) == b""  # then our FIN: nothing written after the close
        finally:
            client.close()
        assert not [r for r in caplog.records if "Fatal error" in r.getMessage() or "write_eof" in r.getMessage()]
