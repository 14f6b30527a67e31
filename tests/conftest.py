"""Shared fixtures: a real uvicorn server on a free loopback port, in a thread of the test process.

The server runs the real app over real sockets; running it in-process lets API tests call the
hub (through its thread-safe entry point) while real clients watch what arrives.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest
import uvicorn
import websockets

from fasthub import Hub, HubConfig, _ext, create_app
from fasthub._wire.testing import encode_frame
from fasthub.server.asgi import FasthubApp
from fasthub.server.listener import listener_protocol
from fasthub.server.uvicorn import HubProtocol

WS_IMPLS = ["fasthub", "websockets-sansio"]
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def query_user(scope: Any) -> str | None:
    """Test authenticator: the user id is the ``user`` query parameter (anonymous without it)."""
    users = parse_qs(scope.get("query_string", b"").decode()).get("user")
    return users[0] if users else None


@dataclass
class Server:
    host: str
    port: int
    prefix: str
    app: FasthubApp
    hub: Hub
    uvicorn: uvicorn.Server
    thread: threading.Thread
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}"

    def ws_url(self, query: str = "") -> str:
        return f"ws://{self.host}:{self.port}{self.prefix}/ws" + (f"?{query}" if query else "")

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` on the server's loop (the hub's thread-safe entry) and wait."""
        return self.hub.run_threadsafe(func, *args).result(timeout=5)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def serve(
    app_kwargs: dict[str, Any] | None = None,
    config: HubConfig | None = None,
    mount: bool = False,
    ws: str = "websockets-sansio",
    uvicorn_kwargs: dict[str, Any] | None = None,
    broker: Any = None,
) -> Iterator[Server]:
    hub = Hub(config or HubConfig(), broker=broker)
    app = create_app(hub, **(app_kwargs or {}))
    asgi: Any = app
    prefix = ""
    if mount:
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Mount, Route

        async def home(request: Any) -> PlainTextResponse:
            return PlainTextResponse("starlette home")

        asgi = Starlette(routes=[Route("/", home), Mount("/rt", app=app)])
        prefix = "/rt"
    sock = free_socket()
    port = sock.getsockname()[1]
    cfg = hub.config
    options: dict[str, Any] = {
        "log_level": "warning",
        "loop": "uvloop",
        "http": "httptools",
        "ws": ws,
        "ws_max_size": cfg.max_message_size,
        "ws_ping_interval": cfg.ping_interval,
        "ws_ping_timeout": cfg.pong_timeout,
        "ws_per_message_deflate": False,
        "lifespan": "on" if not mount else "auto",
        "timeout_graceful_shutdown": 2,
        "proxy_headers": False,  # as ``fasthub serve`` (uvicorn's default trusts 127.0.0.1)
    }
    if ws == "fasthub":  # what ``fasthub serve`` runs: our listener in front, HubProtocol
        options["ws"] = HubProtocol
        options["http"] = listener_protocol(cfg.handshake_timeout, cfg.max_request_size)
    options.update(uvicorn_kwargs or {})
    with uvicorn_thread(uvicorn.Config(asgi, **options), sock) as (server, thread):
        yield Server("127.0.0.1", port, prefix, app, hub, server, thread)


@contextlib.contextmanager
def uvicorn_thread(
    config: uvicorn.Config, sock: socket.socket | None = None
) -> Iterator[tuple[uvicorn.Server, threading.Thread]]:
    """Run a uvicorn server in a thread on ``sock`` (a free loopback port if omitted): a
    ``HubServer``, as ``fasthub serve`` runs (fasthub's socket layer on the fast path, unless
    ``FASTHUB_TEST_IO=uvloop``)."""
    from fasthub.server.serving import HubServer

    sock = sock if sock is not None else free_socket()
    server = HubServer(config, os.environ.get("FASTHUB_TEST_IO", "fasthub"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield server, thread
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


SERVER_KINDS = [
    pytest.param((ws, mount), id=f"{ws}-{'mounted' if mount else 'plain'}")
    for ws in WS_IMPLS
    for mount in (False, True)
]


@pytest.fixture(params=SERVER_KINDS)
def server_kind(request: pytest.FixtureRequest) -> tuple[str, bool]:
    return request.param  # type: ignore[no-any-return]


#: a ``server_kind`` param for modules whose tests also run against a two-node cluster
CLUSTER_KIND = pytest.param(("cluster", False), id="cluster-2-nodes")


class ClusterServer(Server):
    """Two nodes on one redis-server, seen as one server: each new client goes to the next node.

    ``hub``, ``call`` and ``http`` are the first node's; ``nodes`` are both.
    """

    nodes: list[Server]

    def ws_url(self, query: str = "") -> str:
        node = self.nodes[self.extra["next"] % len(self.nodes)]
        self.extra["next"] += 1
        return Server.ws_url(node, query)


def local_totals(server: Server) -> dict[str, int]:
    """Connections and users on every node of ``server`` (one node unless it is a cluster)."""
    nodes = getattr(server, "nodes", None) or [server]  # (conftest may be imported twice: no isinstance)
    stats = [node.call(node.hub.stats) for node in nodes]
    return {key: sum(s[key] for s in stats) for key in ("connections", "users")}


@contextlib.contextmanager
def serve_cluster(app_kwargs: dict[str, Any], config: HubConfig | None = None, n: int = 2) -> Iterator[Server]:
    """``n`` hubs (the fast path) joined by ``RedisBroker`` on a fresh redis-server."""
    from redisproc import RedisServer

    from fasthub.broker.redis import RedisBroker

    with contextlib.ExitStack() as stack:
        redis = RedisServer().start()
        stack.callback(redis.stop)
        nodes = [
            stack.enter_context(
                serve(app_kwargs, config, ws="fasthub", broker=RedisBroker(redis.url, prefix="e2e", ttl=2.0))
            )
            for _ in range(n)
        ]
        deadline = time.monotonic() + 10
        while not all(node.hub.broker.up and node.hub.broker.stats()["nodes_alive"] == n for node in nodes):
            assert time.monotonic() < deadline, "cluster did not form"
            time.sleep(0.02)
        first = nodes[0]
        server = ClusterServer(first.host, first.port, "", first.app, first.hub, first.uvicorn, first.thread)
        server.nodes = nodes
        server.extra["next"] = 0
        server.extra["redis"] = redis
        yield server


@pytest.fixture
def make_server(server_kind: tuple[str, bool]) -> Iterator[Callable[..., Server]]:
    """Start servers of the parametrized kind (ws implementation x standalone/mounted, or a
    two-node cluster where a test module asks for it with ``CLUSTER_KIND``)."""
    ws, mount = server_kind
    stack = contextlib.ExitStack()

    def factory(config: HubConfig | None = None, **app_kwargs: Any) -> Server:
        app_kwargs.setdefault("authenticate", query_user)
        if ws == "cluster":
            return stack.enter_context(serve_cluster(app_kwargs, config))
        return stack.enter_context(serve(app_kwargs, config, mount=mount, ws=ws))

    with stack:
        yield factory


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()


# -- client helpers ---------------------------------------------------------------------------


def run(coro: Any, timeout: float = 30) -> Any:
    """Run one async scenario to completion (tests stay plain functions)."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Client:
    """A real WebSocket client with JSON helpers."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.hello: dict[str, Any] = {}

    @property
    def conn_id(self) -> str:
        return str(self.hello["payload"]["connection_id"])

    @property
    def user_id(self) -> str:
        return str(self.hello["payload"]["user_id"])

    async def send(self, obj: Any) -> None:
        await self.ws.send(obj if isinstance(obj, (str, bytes)) else json.dumps(obj))

    async def recv(self, timeout: float = 3.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        return json.loads(raw)  # type: ignore[no-any-return]

    async def expect(self, mtype: str, timeout: float = 3.0, **fields: Any) -> dict[str, Any]:
        """Next message, which must be of type ``mtype`` (and carry ``fields``)."""
        msg = await self.recv(timeout)
        assert msg["type"] == mtype, msg
        for key, value in fields.items():
            assert msg.get(key) == value, (key, msg)
        return msg

    async def error(self, code: str, timeout: float = 3.0) -> dict[str, Any]:
        msg = await self.expect("error", timeout)
        assert msg["payload"]["code"] == code, msg
        assert msg["payload"]["message"], msg
        return msg

    async def join(self, room: str) -> dict[str, Any]:
        await self.send({"type": "join_room", "room": room})
        msg = await self.expect("system", room=room)
        assert msg["payload"]["action"] == "joined"
        return msg

    async def silent(self, wait: float = 0.2) -> None:
        """Assert nothing arrives for ``wait`` seconds."""
        with pytest.raises(asyncio.TimeoutError):
            msg = await asyncio.wait_for(self.ws.recv(), wait)
            raise AssertionError(f"unexpected message {msg}")

    async def close(self) -> None:
        await self.ws.close()


async def connect(server: Server, query: str = "", **kw: Any) -> Client:
    ws = await websockets.connect(server.ws_url(query), max_size=None, **kw)
    client = Client(ws)
    client.hello = await client.expect("system")
    assert client.hello["payload"]["event"] == "connected"
    return client


def expect_compiled() -> bool:
    return not _ext.NO_EXTENSIONS


class RawClient:
    """A WebSocket client over a plain socket: the handshake by hand, frames read on demand.

    It answers nothing by itself (no pong, no close reply): what it sends is up to the test;
    ``rcvbuf`` shrinks its receive buffer to play a slow reader.
    """

    def __init__(
        self, server: Server, query: str, rcvbuf: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect((server.host, server.port))
        key = base64.b64encode(os.urandom(16))
        path = f"{server.prefix}/ws" + (f"?{query}" if query else "")
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
            + "\r\n"
        )
        self.sock.sendall(request.encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            assert chunk, "server closed during the handshake"
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101"), lines[0]
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        expected = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()  # RFC 6455 4.2.2
        assert headers["sec-websocket-accept"] == expected
        self.headers = headers  # of the 101 response, names lower-cased
        self.rsv1 = False  # whether the last frame read had RSV1 set (permessage-deflate)

    def _read(self, n: int, deadline: float) -> bytes | None:
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def frame(self, timeout: float = 5.0) -> tuple[int, bytes] | None:
        """The next (opcode, payload), or None at EOF. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        head = self._read(2, deadline)
        if head is None:
            return None
        opcode, n = head[0] & 0x0F, head[1] & 0x7F
        assert head[1] & 0x80 == 0, "server frames are not masked"
        self.rsv1 = bool(head[0] & 0x40)
        if n == 126:
            ext = self._read(2, deadline)
            assert ext is not None
            n = struct.unpack("!H", ext)[0]
        elif n == 127:
            ext = self._read(8, deadline)
            assert ext is not None
            n = struct.unpack("!Q", ext)[0]
        payload = self._read(n, deadline) if n else b""
        assert payload is not None, "EOF inside a frame"
        return opcode, payload

    def json(self, timeout: float = 5.0) -> Any:
        got = self.frame(timeout)
        assert got is not None and got[0] == 0x1, got
        return json.loads(got[1])

    def send_json(self, obj: Any) -> None:
        self.sock.sendall(encode_frame(0x1, json.dumps(obj).encode(), mask=os.urandom(4)))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def redis_server() -> Iterator[Any]:
    """A fresh redis-server on a free loopback port (tests/redisproc.py)."""
    from redisproc import RedisServer

    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


# -- the browser ------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


def wait_in_page(page: Any, expression: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript expression in ``page`` until it is truthy.

    Not ``page.wait_for_function``: it evaluates a string predicate with ``eval`` inside the page,
    which a page's CSP without ``unsafe-eval`` refuses now and then; ``evaluate`` is not subject
    to it."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({expression})"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expression} stayed false for {timeout} s")
        time.sleep(0.02)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that drives the browser carries the ``browser`` mark (ci/test selects on it)."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright, one per test module (skipped when either is missing)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield b
        finally:
            b.close()
