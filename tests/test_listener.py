"""The listener in front of ``fasthub serve``: upgrades served in place, HTTP handed to uvicorn.

Also the two ways a fasthub app's connection is opened there: without a scope or coroutine
when no hook would read them (``open_direct``), and run eagerly to its first suspension
otherwise, moving into a task before any async hook runs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import time
from typing import Any

import pytest

from fasthub import HubConfig
from fasthub.server.asgi_ws import resume
from tests.conftest import WS_GUID, RawClient, Server, connect, run, serve


def _send(s: socket.socket, data: bytes, pieces: int) -> None:
    """Send ``data`` in ``pieces`` parts with a pause between them."""
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        s.sendall(data[i : i + step])
        if pieces > 1:
            time.sleep(0.05)


def _exchange(port: int, data: bytes, pieces: int = 1, timeout: float = 5) -> bytes:
    """Send ``data`` (in ``pieces`` parts), read until EOF or ``timeout``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        _send(s, data, pieces)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
        return out


def _upgrade(path: str = "/ws", extra: str = "") -> tuple[bytes, bytes]:
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()
    return request, base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def _text_frames(data: bytes) -> tuple[list[Any], bytes]:
    """The JSON of the complete (unmasked, short) text frames at the start of ``data``, and the rest."""
    out: list[Any] = []
    while len(data) >= 2:
        assert data[0] == 0x81, data[:2]
        n, start = data[1], 2
        if n == 126:
            if len(data) < 4:
                break
            n, start = int.from_bytes(data[2:4], "big"), 4
        if len(data) < start + n:
            break
        out.append(json.loads(data[start : start + n]))
        data = data[start + n :]
    return out, data


def _upgrade_exchange(port: int, data: bytes, pieces: int = 1, frames: int = 1) -> tuple[bytes, list[Any]]:
    """Send ``data``; read the response head and then ``frames`` text frames."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        _send(s, data, pieces)
        buf, head, got = b"", None, []
        deadline = time.monotonic() + 5
        while len(got) < frames and time.monotonic() < deadline:
            buf += s.recv(65536)
            if head is None and b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
            if head is not None:
                more, buf = _text_frames(buf)
                got += more
        assert head is not None, buf[:200]
        return head, got


def _read_upgrade(port: int, request: bytes, pieces: int = 1) -> tuple[bytes, Any]:
    head, got = _upgrade_exchange(port, request, pieces)
    return head, got[0]


def test_upgrade_answered_in_place_with_connected_message() -> None:
    with serve(ws="fasthub") as srv:
        request, accept = _upgrade()
        head, hello = _read_upgrade(srv.port, request)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Sec-WebSocket-Accept: " + accept in head
        assert hello["type"] == "system" and hello["payload"]["event"] == "connected"
        assert hello["payload"]["user_id"].startswith("anon-")


def test_upgrade_request_in_pieces() -> None:
    with serve(ws="fasthub") as srv:
        request, accept = _upgrade()
        head, hello = _read_upgrade(srv.port, request, pieces=4)
        assert b"Sec-WebSocket-Accept: " + accept in head
        assert hello["payload"]["event"] == "connected"


def test_subprotocol_selected_on_the_direct_path() -> None:
    with serve(ws="fasthub") as srv:
        request, _ = _upgrade(extra="Sec-WebSocket-Protocol: other, fasthub\r\n")
        head, _ = _read_upgrade(srv.port, request)
        assert b"sec-websocket-protocol: fasthub" in head.lower()


def test_plain_http_handed_to_uvicorn_with_keepalive() -> None:
    with serve(ws="fasthub") as srv:
        one = b"GET /ws/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        out = _exchange(srv.port, one + one, pieces=2, timeout=1.5)
        assert out.count(b"HTTP/1.1 200 OK") == 2, out[:300]
        body = out.split(b"\r\n\r\n", 1)[1]
        assert b'"connections"' in body


def test_plain_get_of_the_websocket_path_is_http() -> None:
    with serve(ws="fasthub") as srv:
        out = _exchange(srv.port, b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 404 "), out[:100]


def test_malformed_upgrade_gets_400_and_server_carries_on() -> None:
    with serve(ws="fasthub") as srv:
        bad = (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        out = _exchange(srv.port, bad)
        assert out.startswith(b"HTTP/1.1 400 "), out[:100]
        assert b"Sec-WebSocket-Key" in out
        client = RawClient(srv, "")
        assert client.json()["payload"]["event"] == "connected"
        client.close()


def test_connection_cap_on_the_direct_path() -> None:
    with serve(ws="fasthub", config=HubConfig(max_connections=1)) as srv:
        first = RawClient(srv, "")
        assert first.json()["payload"]["event"] == "connected"
        request, _ = _upgrade()
        out = _exchange(srv.port, request)
        assert out.startswith(b"HTTP/1.1 503 "), out[:100]
        assert json.loads(out.split(b"\r\n\r\n", 1)[1]) == {"error": "server at its connection limit", "status": 503}
        first.close()


def test_sync_authenticate_runs_without_a_task() -> None:
    seen: list[Any] = []

    def authenticate(scope: dict[str, Any]) -> str:
        seen.append(asyncio.current_task())
        return "alice"

    with serve({"authenticate": authenticate}, ws="fasthub") as srv:
        client = RawClient(srv, "")
        hello = client.json()
        assert hello["payload"]["user_id"] == "alice"
        assert seen == [None]  # opened eagerly inside data_received
        client.close()


def test_async_hooks_run_inside_a_task() -> None:
    """An async hook may rely on a current task (``asyncio.timeout``, anyio): it gets one."""
    seen: dict[str, bool] = {}

    async def authenticate(scope: dict[str, Any]) -> str:
        async with asyncio.timeout(2):
            await asyncio.sleep(0.01)
        seen["authenticate"] = asyncio.current_task() is not None
        return "bob"

    async def on_connect(conn: Any) -> None:
        async with asyncio.timeout(2):
            await asyncio.sleep(0)
        seen["on_connect"] = asyncio.current_task() is not None
        conn.send_json({"type": "notification", "payload": {"hello": conn.user_id}})

    async def scenario(srv: Server) -> None:
        client = await connect(srv)
        assert client.user_id == "bob"
        note = await client.expect("notification")
        assert note["payload"] == {"hello": "bob"}
        await client.close()

    with serve({"authenticate": authenticate, "on_connect": on_connect}, ws="fasthub") as srv:
        run(scenario(srv))
    assert seen == {"authenticate": True, "on_connect": True}


def test_failing_sync_hook_answers_500() -> None:
    def on_connect(conn: Any) -> None:
        raise RuntimeError("boom")

    def authenticate(scope: dict[str, Any]) -> str:
        raise RuntimeError("broken hook")

    with serve({"authenticate": authenticate}, ws="fasthub") as srv:
        request, _ = _upgrade()
        out = _exchange(srv.port, request)
        assert out.startswith(b"HTTP/1.1 500 "), out[:100]
    with serve({"on_connect": on_connect}, ws="fasthub") as srv:
        client = RawClient(srv, "")
        assert client.json()["payload"]["event"] == "connected"
        opcode, payload = client.frame() or (0, b"")
        assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1011
        client.close()


def test_resume_forwards_results_and_cancellation() -> None:
    """``resume`` finishes an eagerly started coroutine inside a task, cancellation included."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate: asyncio.Future[int] = loop.create_future()
        log: list[str] = []

        async def body() -> None:
            try:
                log.append(f"got {await gate}")
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                log.append("cancelled")
                raise

        coro = body()
        first = coro.send(None)  # the eager step: suspends on the gate
        assert first is gate
        task = loop.create_task(_wrap(resume(coro, first)))
        await asyncio.sleep(0)
        gate.set_result(7)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert log == ["got 7", "cancelled"]

    async def _wrap(gen: Any) -> None:
        await gen

    run(main())


def test_anonymous_users_reachable_without_a_user_table_entry() -> None:
    """Anonymous connections are users of their own (``anon-<id>``), found via the connection."""

    async def scenario(srv: Server) -> None:
        a = await connect(srv)
        b = await connect(srv)
        await a.send({"type": "user_message", "to": b.user_id, "payload": {"hi": 1}})
        got = await b.expect("user_message")
        assert got["payload"] == {"hi": 1} and got["from"] == a.user_id
        assert srv.call(srv.hub.user_count) == 2
        assert srv.hub._users == {}  # nothing stored per anonymous connection
        gone = b.user_id
        await b.close()
        for _ in range(100):
            if srv.call(srv.hub.connection_count) == 1:
                break
            await asyncio.sleep(0.02)
        await a.send({"type": "user_message", "to": gone, "payload": {}, "id": "m2"})
        assert (await a.error("unknown_user"))["id"] == "m2"
        # an anonymous id that matches no connection
        await a.send({"type": "user_message", "to": "anon-" + "x" * 16, "payload": {}})
        await a.error("unknown_user")
        await a.close()

    with serve(ws="fasthub") as srv:
        run(scenario(srv))


def test_head_deadlines_one_timer_oldest_first() -> None:
    """One timer per server: late heads get ``_head_late``, the rest wait, the timer re-arms."""
    from fasthub.server.listener import HeadDeadlines

    class Loop:
        def __init__(self) -> None:
            self.now = 100.0
            self.timers: list[tuple[float, Any]] = []

        def time(self) -> float:
            return self.now

        def call_later(self, delay: float, fn: Any) -> Any:
            self.timers.append((delay, fn))
            return object()

    class Proto:
        def __init__(self) -> None:
            self.late = 0

        def _head_late(self) -> None:
            self.late += 1

    loop = Loop()
    heads = HeadDeadlines(loop, 2.0)  # type: ignore[arg-type]
    a, b, c = Proto(), Proto(), Proto()
    heads.add(a)  # type: ignore[arg-type]
    loop.now = 101.0
    heads.add(b)  # type: ignore[arg-type]
    heads.add(c)  # type: ignore[arg-type]
    assert len(loop.timers) == 1 and loop.timers[0][0] == 0.5  # one timer, a quarter of the timeout
    heads.waiting.pop(c)  # c's head arrived
    loop.now = 102.5
    loop.timers.pop()[1]()
    assert (a.late, b.late, c.late) == (1, 0, 0) and list(heads.waiting) == [b]
    assert len(loop.timers) == 1  # re-armed while someone waits
    loop.now = 103.1
    loop.timers.pop()[1]()
    assert (a.late, b.late, c.late) == (1, 1, 0) and not heads.waiting
    assert loop.timers == []  # nobody waits: no timer


def _early_frames_exchange(port: int, extra: str = "") -> list[Any]:
    """Upgrade request and two masked frames in one send, before any 101: what comes back."""
    from fasthub._wire.testing import encode_frame

    request, _ = _upgrade(extra=extra)
    frames = b"".join(
        encode_frame(0x1, json.dumps(m).encode(), mask=os.urandom(4))
        for m in ({"type": "join_room", "room": "early", "id": "j1"}, {"type": "ping", "id": "p1"})
    )
    head, got = _upgrade_exchange(port, request + frames, frames=3)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return ["101", *got]


def test_frames_sent_with_the_upgrade_request_are_not_lost() -> None:
    """A client that does not wait for the 101: its frames are handled after ``connected``."""
    with serve(ws="fasthub") as srv:
        got = _early_frames_exchange(srv.port)
    assert got[0] == "101"
    assert got[1]["payload"]["event"] == "connected"
    assert got[2]["payload"]["event"] == "joined" and got[2]["id"] == "j1"
    assert got[3]["type"] == "pong" and got[3]["id"] == "p1"


def test_early_frames_wait_for_an_async_authenticate() -> None:
    async def authenticate(scope: dict[str, Any]) -> str:
        await asyncio.sleep(0.1)  # the frames arrive while this runs
        return "carol"

    with serve({"authenticate": authenticate}, ws="fasthub") as srv:
        got = _early_frames_exchange(srv.port)
    assert got[1]["payload"]["event"] == "connected" and got[1]["payload"]["user_id"] == "carol"
    assert [m.get("id") for m in got[2:]] == ["j1", "p1"]


def test_an_open_hub_connection_keeps_only_what_it_uses() -> None:
    """Idle memory: after the open and some traffic a hub connection holds no handshake state,
    no empty outbox list and no rarely used fields; one room is kept as the room's own name."""
    with serve(ws="fasthub") as srv:

        async def scenario() -> None:
            a = await connect(srv)
            await a.join("lobby")
            await a.send({"type": "room_message", "room": "lobby", "payload": {"n": 1}})
            await a.expect("room_message")

            def look() -> tuple[Any, ...]:
                conn = srv.hub.get_connection(a.conn_id)
                assert conn is not None
                room = srv.hub.get_room("lobby")
                assert room is not None
                return (type(conn.sink).__name__, conn.sink.pending, conn.items, conn._rare, conn._rooms is room.name)

            assert srv.call(look) == ("ListenerProtocol", None, None, None, True)
            await a.close()

        run(scenario())
