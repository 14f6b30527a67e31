"""HubProtocol under uvicorn: handshake answers, the generic ASGI contract, shutdown, CLI form."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
import websockets

from fasthub.server.echo import echo_app
from fasthub.server.uvicorn import HubProtocol
from tests.conftest import Server, connect, free_socket, run, serve, uvicorn_thread


@contextlib.contextmanager
def uvicorn_app(app: Any, **options: Any) -> Iterator[int]:
    """Serve any ASGI app on HubProtocol; yields the port."""
    sock = free_socket()
    config = uvicorn.Config(app, ws=HubProtocol, loop="uvloop", http="httptools", log_level="warning", **options)
    with uvicorn_thread(config, sock):
        yield sock.getsockname()[1]


def raw_request(port: int, request: bytes, read_until_close: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close and b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def upgrade(key: bytes | None = None, version: bytes = b"13", extra: bytes = b"", method: bytes = b"GET") -> bytes:
    key = key if key is not None else base64.b64encode(os.urandom(16))
    lines = [method + b" /ws HTTP/1.1", b"Host: 127.0.0.1", b"Upgrade: websocket", b"Connection: Upgrade"]
    if key:
        lines.append(b"Sec-WebSocket-Key: " + key)
    if version:
        lines.append(b"Sec-WebSocket-Version: " + version)
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (upgrade(version=b"8"), b"426"),
        (upgrade(version=b""), b"426"),
        (upgrade(key=b""), b"400"),
        (upgrade(key=b"c2hvcnQ="), b"400"),  # not 16 bytes
        (upgrade(key=b"!!!notbase64!!!!!!!!!!!"), b"400"),
    ],
)
def test_bad_upgrades_are_refused_with_400_or_426(request_bytes: bytes, status: bytes) -> None:
    with uvicorn_app(echo_app) as port:
        response = raw_request(port, request_bytes)
        assert response.startswith(b"HTTP/1.1 " + status), response[:200]
        if status == b"426":
            assert b"sec-websocket-version: 13" in response.lower()
        # the server carries on
        good = raw_request(port, upgrade(), read_until_close=False)
        assert good.startswith(b"HTTP/1.1 101")


def test_handshake_accept_key_and_headers() -> None:
    with uvicorn_app(echo_app) as port:
        response = raw_request(port, upgrade(key=b"dGhlIHNhbXBsZSBub25jZQ=="), read_until_close=False)
        assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response


def test_generic_asgi_app_echo_text_binary_and_close_code() -> None:
    async def scenario(port: int) -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/any") as ws:
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\xff")
            assert await ws.recv() == b"\x00\xff"
            big = "x" * 200_000
            await ws.send(big)
            assert await ws.recv() == big
            await ws.close(4000, "bye")
            assert ws.close_code == 4000

    with uvicorn_app(echo_app) as port:
        run(scenario(port))


def test_subprotocol_denial_response_and_close_before_accept() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        path = scope["path"]
        if path == "/deny":
            await send({"type": "websocket.http.response.start", "status": 401, "headers": [(b"x-why", b"token")]})
            await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
            await send({"type": "websocket.http.response.body", "body": b"token"})
        elif path == "/close":
            await send({"type": "websocket.close"})
        elif path == "/crash":
            raise RuntimeError("boom before accept")
        elif path == "/crash-open":
            await send({"type": "websocket.accept"})
            raise RuntimeError("boom after accept")
        else:
            assert scope["subprotocols"] == ["chat.v2", "chat.v1"]
            assert scope["extensions"]["fasthub.transport"]["protocol"] is not None
            await send({"type": "websocket.accept", "subprotocol": "chat.v1", "headers": [(b"x-hub", b"1")]})
            await send({"type": "websocket.send", "text": "welcome"})
            msg = await receive()
            assert msg["type"] == "websocket.disconnect"

    async def scenario(port: int) -> None:
        base = f"ws://127.0.0.1:{port}"
        async with websockets.connect(base + "/ok", subprotocols=["chat.v2", "chat.v1"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "chat.v1"
            assert ws.response.headers["x-hub"] == "1"
            assert await ws.recv() == "welcome"
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(base + "/deny")
        assert info.value.response.status_code == 401
        assert info.value.response.body == b"no token"
        assert info.value.response.headers["x-why"] == "token"
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(base + "/close")
        assert info.value.response.status_code == 403
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(base + "/crash")
        assert info.value.response.status_code == 500
        async with websockets.connect(base + "/crash-open") as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1011

    with uvicorn_app(app) as port:
        run(scenario(port))


def test_server_shutdown_closes_hub_connections_with_1012() -> None:
    async def scenario(server: Server) -> None:
        client = await connect(server)
        server.uvicorn.should_exit = True
        with pytest.raises(websockets.ConnectionClosed) as info:
            await client.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1012

    with serve(ws="fasthub") as server:
        run(scenario(server))


def test_uvicorn_cli_accepts_the_protocol_class_by_import_string(tmp_path: Any) -> None:
    app_file = tmp_path / "hubapp.py"
    app_file.write_text("from fasthub import create_app\napp = create_app()\n")
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    cmd = [
        sys.executable, "-m", "uvicorn", "hubapp:app", "--port", str(port), "--app-dir", str(tmp_path),
        "--ws", "fasthub.server.uvicorn:HubProtocol", "--loop", "uvloop", "--http", "httptools",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:

        async def scenario() -> None:
            for _ in range(100):
                try:
                    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws")
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("uvicorn did not start")
            hello = await asyncio.wait_for(ws.recv(), 5)
            assert '"connected"' in str(hello)
            await ws.close()

        run(scenario())
    finally:
        proc.terminate()
        proc.wait(10)


def test_async_handler_keeps_per_connection_order_on_the_fast_path() -> None:
    seen: list[int] = []

    async def on_message(conn: Any, msg: Any) -> bool | None:
        if msg.type == "message":
            await asyncio.sleep(0.001 if msg.payload % 3 else 0.01)
            seen.append(msg.payload)
            conn.send_json({"type": "message", "payload": msg.payload})
            return True
        return None

    async def scenario(server: Server) -> None:
        client = await connect(server)
        for i in range(60):
            await client.send({"type": "message", "payload": i})
        await client.send({"type": "ping", "id": "after"})
        got = [(await client.expect("message", timeout=5))["payload"] for _ in range(60)]
        assert got == list(range(60))
        await client.expect("pong", id="after")

    with serve({"on_message": on_message}, ws="fasthub") as server:
        run(scenario(server))
    assert seen == list(range(60))
