"""``fasthub serve --ws websockets-sansio|wsproto`` really runs uvicorn's implementation.

fasthub's own front door answers the 101 with byte-for-byte uvicorn's header layout (same
names, case, order, ``date``/``server``), so the 101 alone cannot tell who served it. What
does, stably, is how each implementation answers a broken client:

- an upgrade request without ``Sec-WebSocket-Key`` gets a 400 whose status line, headers and
  body are each implementation's own;
- an unmasked client frame gets close 1002 with fasthub's reason ``unmasked frame`` or
  websockets' ``incorrect masking``, while uvicorn's wsproto drops the connection without a
  close frame.

And the room protocol still works end to end on the portable path.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from tests.conftest import run
from tests.test_cli import fasthub_serve

PORTABLE = ["websockets-sansio", "wsproto"]
IMPLS = ["fasthub", *PORTABLE]
TIMEOUT = 5.0


def _upgrade_request(port: int, key: bool = True) -> bytes:
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
    ]
    if key:
        lines.append(f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_until_eof(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection (or the deadline passes)."""
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the server did not close the connection in time; got {data!r}")


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data!r}"
    return head, rest


def _frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, payload) of each complete unmasked server frame at the start of ``data``."""
    while len(data) >= 2:
        opcode, n = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if n == 126:
            (n,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif n == 127:
            (n,) = struct.unpack("!Q", data[2:10])
            offset = 10
        if len(data) < offset + n:
            return
        yield opcode, data[offset : offset + n]
        data = data[offset + n :]


def _missing_key_response(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(_upgrade_request(port, key=False))
        return _read_until_eof(sock, time.monotonic() + TIMEOUT)


def _answer_to_unmasked_frame(port: int) -> tuple[bytes, list[tuple[int, bytes]]]:
    """The 101 head, then every frame the server sends: the hub's ``connected`` message, and
    what follows a text frame without a mask (sent once ``connected`` has arrived)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(_upgrade_request(port))
        data = b""
        deadline = time.monotonic() + TIMEOUT
        while b"\r\n\r\n" not in data or not list(_frames(_split_head(data)[1])):
            assert time.monotonic() < deadline, data
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        sock.sendall(bytes([0x81, 0x02]) + b"hi")  # FIN text "hi", mask bit clear
        data += _read_until_eof(sock, time.monotonic() + TIMEOUT)
    head, rest = _split_head(data)
    frames = list(_frames(rest))
    assert sum(len(p) + 2 + (2 if len(p) >= 126 else 0) for _, p in frames) == len(rest), rest
    return head, frames


def _close_reason(frames: list[tuple[int, bytes]]) -> tuple[int, bytes] | None:
    for opcode, payload in frames:
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0], payload[2:]
    return None


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, int]]:
    """One ``fasthub serve --ws X`` subprocess per implementation: {name: port}."""
    with (
        fasthub_serve("--ws", "fasthub") as fast,
        fasthub_serve("--ws", "websockets-sansio") as sansio,
        fasthub_serve("--ws", "wsproto") as wsproto,
    ):
        yield {"fasthub": fast, "websockets-sansio": sansio, "wsproto": wsproto}


def test_a_handshake_without_key_is_refused_by_each_implementation_in_its_own_words(
    servers: dict[str, int],
) -> None:
    answers = {name: _split_head(_missing_key_response(port)) for name, port in servers.items()}
    head, body = answers["fasthub"]
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"\r\ncontent-type: text/plain" in head
    assert body == b"missing Sec-WebSocket-Key\n"
    head, body = answers["websockets-sansio"]  # websockets' ServerProtocol.reject(), capitalized headers
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"\r\nDate: " in head
    assert body.startswith(b"Failed to open a WebSocket connection: missing Sec-WebSocket-Key header")
    head, body = answers["wsproto"]  # wsproto's RejectConnection: no reason phrase, empty body
    assert head.startswith(b"HTTP/1.1 400 \r\n") and b"content-length: 0" in head.lower()
    assert body == b""


def test_an_unmasked_frame_is_answered_by_the_chosen_implementation(servers: dict[str, int]) -> None:
    reasons = {}
    for name, port in servers.items():
        head, frames = _answer_to_unmasked_frame(port)
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert frames[0][0] == 0x1 and json.loads(frames[0][1])["payload"]["event"] == "connected"
        reasons[name] = _close_reason(frames)
    assert reasons == {
        "fasthub": (1002, b"unmasked frame"),
        "websockets-sansio": (1002, b"incorrect masking"),
        "wsproto": None,  # uvicorn's wsproto closes the transport without a close frame
    }


@pytest.mark.parametrize("ws", IMPLS)
def test_the_room_protocol_works_end_to_end(servers: dict[str, int], ws: str) -> None:
    url = f"ws://127.0.0.1:{servers[ws]}/ws"

    async def recv(conn: Any) -> Any:
        return json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT))

    async def scenario() -> None:
        async with websockets.connect(url, open_timeout=TIMEOUT, close_timeout=TIMEOUT) as conn:
            hello = await recv(conn)
            assert hello["type"] == "system" and hello["payload"]["event"] == "connected"
            await conn.send(json.dumps({"type": "join_room", "room": "lobby", "id": 1}))
            joined = await recv(conn)
            assert joined["type"] == "system" and joined["payload"]["event"] == "joined"
            await conn.send(json.dumps({"type": "room_message", "room": "lobby", "payload": {"text": "hi"}, "id": 2}))
            got = await recv(conn)
            assert got["type"] == "room_message" and got["room"] == "lobby" and got["id"] == 2
            assert got["payload"] == {"text": "hi"}

    run(scenario())


@pytest.mark.parametrize(("ws", "module"), [("websockets-sansio", "websockets"), ("wsproto", "wsproto")])
def test_a_missing_implementation_fails_at_start_with_the_pip_install_to_run(ws: str, module: str) -> None:
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"  # as if the package were not installed
        "from fasthub.cli import main\n"
        f"sys.exit(main(['serve', '--port', '0', '--ws', {ws!r}]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    stderr = out.stderr.decode()
    assert out.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert f"pip install {module}" in stderr and "fasthub[portable]" in stderr


def test_uvicorn_config_is_keyed_on_ws() -> None:
    from fasthub import Hub, HubConfig, create_app
    from fasthub.server.http import GuardedHttpToolsProtocol
    from fasthub.server.run import uvicorn_config

    app = create_app(Hub(HubConfig(handshake_timeout=3)))
    default = uvicorn_config(app)
    assert default.http.__name__ == "ListenerProtocol" and not isinstance(default.ws, str)
    for ws in PORTABLE:
        config = uvicorn_config(app, ws=ws)
        assert issubclass(config.http, GuardedHttpToolsProtocol), config.http
        assert config.http.head_timeout == 3
        assert config.ws == ws
