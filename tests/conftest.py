"""Shared fixtures: a real uvicorn server on a free loopback port, in a thread of the test process.

The server runs the real app over real sockets; running it in-process lets API tests call the
hub (through its thread-safe entry point) while real clients watch what arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest
import uvicorn
import websockets

from fasthub import Hub, HubConfig, create_app
from fasthub.server.asgi import FasthubApp
from fasthub.server.uvicorn import HubProtocol

WS_IMPLS = ["fasthub", "websockets-sansio"]


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
) -> Iterator[Server]:
    hub = Hub(config or HubConfig())
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
    }
    if ws == "fasthub":
        options["ws"] = HubProtocol
    options.update(uvicorn_kwargs or {})
    with uvicorn_thread(uvicorn.Config(asgi, **options), sock) as (server, thread):
        yield Server("127.0.0.1", port, prefix, app, hub, server, thread)


@contextlib.contextmanager
def uvicorn_thread(
    config: uvicorn.Config, sock: socket.socket | None = None
) -> Iterator[tuple[uvicorn.Server, threading.Thread]]:
    """Run a uvicorn server in a thread on ``sock`` (a free loopback port if omitted)."""
    sock = sock if sock is not None else free_socket()
    server = uvicorn.Server(config)
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


@pytest.fixture(
    params=[
        pytest.param((ws, mount), id=f"{ws}-{'mounted' if mount else 'plain'}")
        for ws in WS_IMPLS
        for mount in (False, True)
    ]
)
def server_kind(request: pytest.FixtureRequest) -> tuple[str, bool]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def make_server(server_kind: tuple[str, bool]) -> Iterator[Callable[..., Server]]:
    """Start servers of the parametrized kind (ws implementation x standalone/mounted)."""
    ws, mount = server_kind
    stack = contextlib.ExitStack()

    def factory(config: HubConfig | None = None, **app_kwargs: Any) -> Server:
        app_kwargs.setdefault("authenticate", query_user)
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
    return os.environ.get("FASTHUB_NO_EXTENSIONS", "") in ("", "0")
