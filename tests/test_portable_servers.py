"""The app on other ASGI servers: uvicorn's ``wsproto`` implementation and hypercorn.

Each is run standalone and mounted inside Starlette, on a free loopback port in a thread of the
test process, with real ``websockets`` clients: connect, join, a room message round trip, a
direct message, the stats endpoint, and a refused handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from fasthub import Denied, Hub, HubConfig, create_app
from tests.conftest import Server, connect, query_user, run, serve


def authenticate(scope: Any) -> str | None:
    user = query_user(scope)
    if user == "intruder":
        raise Denied(401, "bad token")
    return user


def mounted(app: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("starlette home")

    return Starlette(routes=[Route("/", home), Mount("/rt", app=app)])


@contextlib.contextmanager
def serve_hypercorn(mount: bool) -> Iterator[Server]:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    hub = Hub(HubConfig())
    app = create_app(hub, authenticate=authenticate)
    asgi = mounted(app) if mount else app
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the bound socket from here
    config.accesslog = None
    config.errorlog = None
    config.loglevel = "WARNING"
    config.graceful_timeout = 0.2

    started = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        state["loop"] = asyncio.get_running_loop()
        state["stop"] = stop

        async def trigger() -> None:
            started.set()
            await stop.wait()

        await hypercorn_serve(asgi, config, shutdown_trigger=trigger)  # type: ignore[arg-type]

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # pragma: no cover - shown by the start check
            state["error"] = exc
            started.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert started.wait(10), "hypercorn did not start"
    assert "error" not in state, state.get("error")
    # the listening socket is up once serve() reached the trigger; wait for it to accept
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "hypercorn is not listening"
            time.sleep(0.02)
    try:
        yield Server("127.0.0.1", port, "/rt" if mount else "", app, hub, None, thread)  # type: ignore[arg-type]
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(timeout=10)


@pytest.fixture(
    params=[
        pytest.param(("uvicorn-wsproto", False), id="uvicorn-wsproto-plain"),
        pytest.param(("uvicorn-wsproto", True), id="uvicorn-wsproto-mounted"),
        pytest.param(("hypercorn", False), id="hypercorn-plain"),
        pytest.param(("hypercorn", True), id="hypercorn-mounted"),
    ]
)
def portable(request: pytest.FixtureRequest) -> Iterator[Server]:
    kind, mount = request.param
    if kind == "hypercorn":
        with serve_hypercorn(mount) as server:
            yield server
    else:
        with serve({"authenticate": authenticate}, mount=mount, ws="wsproto") as server:
            yield server


def test_round_trip(portable: Server) -> None:
    server = portable

    async def scenario() -> None:
        a = await connect(server, "user=alice")
        b = await connect(server, "user=bob")
        assert a.user_id == "alice" and b.user_id == "bob" and a.conn_id != b.conn_id
        await a.send({"type": "ping", "id": "p", "payload": [1]})
        assert (await a.expect("pong", id="p"))["payload"] == [1]
        joined = await a.join("lobby")
        assert joined["payload"]["members"] == 1
        await b.join("lobby")
        event = await a.expect("system", room="lobby")
        assert event["payload"]["action"] == "user_joined" and event["payload"]["user_id"] == "bob"
        await a.send({"type": "room_message", "room": "lobby", "payload": {"text": "hi"}, "id": 1})
        for x in (a, b):
            got = await x.expect("room_message", room="lobby", id=1)
            assert got["from"] == "alice" and got["payload"] == {"text": "hi"} and got["offset"] == 1
        assert (await a.expect("ack", id=1, room="lobby"))["payload"]["offset"] == 1
        await b.send({"type": "user_message", "to": "alice", "payload": "dm", "id": 2})
        assert (await a.expect("user_message", id=2))["from"] == "bob"
        assert (await b.expect("ack", id=2, to="alice"))["payload"]["offset"] == 1
        await a.send("{broken")
        await a.error("invalid_json")
        # the hub API reaches clients on this server too
        assert server.call(server.hub.broadcast_to_room_json, "lobby", {"api": True}, a.conn_id) == 1
        assert await b.recv() == {"api": True, "offset": 2}
        await a.silent(0.1)

        async with httpx.AsyncClient() as http:
            resp = await http.get(server.http + "/ws/stats")
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/json"
        stats = resp.json()
        assert stats["connections"] == 2 and stats["users"] == 2
        assert stats["rooms"] == 1 and stats["room_list"] == ["lobby"]
        assert stats["messages_in"] == 6

        await b.close()
        for _ in range(100):
            if server.call(server.hub.connection_count) == 1:
                break
            await asyncio.sleep(0.02)
        assert server.call(server.hub.connection_count) == 1
        left = await a.expect("system", room="lobby")
        assert left["payload"]["action"] == "user_left"

    run(scenario())


def test_refused_handshake_and_unknown_paths(portable: Server) -> None:
    server = portable

    async def scenario() -> None:
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(server.ws_url("user=intruder"))
        assert info.value.response.status_code == 401
        assert server.call(server.hub.stats)["connections_opened"] == 0
        # a WebSocket to another path of the app is closed, not served
        url = f"ws://{server.host}:{server.port}{server.prefix}/elsewhere"
        with pytest.raises((websockets.InvalidStatus, websockets.ConnectionClosed)):
            ws = await websockets.connect(url)
            await asyncio.wait_for(ws.recv(), 3)
        async with httpx.AsyncClient() as http:
            assert (await http.get(server.http + "/nope")).status_code == 404
            assert (await http.post(server.http + "/ws/stats")).status_code == 405
        ok = await connect(server, "user=fine")
        assert ok.user_id == "fine"

    run(scenario())
