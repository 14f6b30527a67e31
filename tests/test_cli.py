"""``fasthub serve`` as a user runs it: a subprocess, real flags, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
import websockets

from fasthub import _ext
from tests.conftest import free_socket, run

SECRET = "cli-secret-cli-secret-cli-secret-cli!!"


@contextlib.contextmanager
def fasthub_serve(
    *args: str, env: dict[str, str] | None = None, procs: list[subprocess.Popen[bytes]] | None = None
) -> Iterator[int]:
    """``fasthub serve ARGS`` on a free port, ready; ``procs``: the process is appended there."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    cmd = [sys.executable, "-m", "fasthub", "serve", "--port", str(port), "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stderr=subprocess.PIPE)
    if procs is not None:
        procs.append(proc)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "fasthub serve did not start"
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_serve_defaults_serve_ws_stats_and_demo() -> None:
    with fasthub_serve() as port:
        assert "FastHubClient" in httpx.get(f"http://127.0.0.1:{port}/static/fasthub.js").text
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200

        async def scenario() -> None:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
                hello = json.loads(await ws.recv())
                assert hello["payload"]["event"] == "connected"
                stats = httpx.get(f"http://127.0.0.1:{port}/ws/stats").json()
                assert stats["connections"] == 1
                assert stats["compiled"] is (not _ext.NO_EXTENSIONS)

        run(scenario())


def test_serve_with_jwt_origin_stats_token_and_rate_limit() -> None:
    good = jwt.encode({"sub": "zoe", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    args = ["--allowed-origin", "https://ok.example", "--stats-token", "st", "--rate-limit", "5"]
    with fasthub_serve(*args, env={"FASTHUB_JWT_SECRET": SECRET}) as port:
        url = f"ws://127.0.0.1:{port}/ws"

        async def scenario() -> None:
            with pytest.raises(websockets.InvalidStatus) as info:
                await websockets.connect(url)
            assert info.value.response.status_code == 401
            with pytest.raises(websockets.InvalidStatus) as info:
                await websockets.connect(f"{url}?token={good}", origin="https://evil.example")  # type: ignore[arg-type]
            assert info.value.response.status_code == 403
            async with websockets.connect(f"{url}?token={good}", origin="https://ok.example") as ws:  # type: ignore[arg-type]
                assert json.loads(await ws.recv())["payload"]["user_id"] == "zoe"
                for i in range(11):  # burst 10, then refused
                    await ws.send(json.dumps({"type": "ping", "id": i}))
                replies: list[Any] = [json.loads(await asyncio.wait_for(ws.recv(), 3)) for _ in range(11)]
                assert [r["type"] for r in replies].count("pong") == 10
                assert replies[-1]["payload"]["code"] == "rate_limited"

        run(scenario())
        assert httpx.get(f"http://127.0.0.1:{port}/ws/stats").status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/ws/stats", headers={"Authorization": "Bearer st"}).status_code == 200


def test_serve_refuses_invalid_settings() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fasthub", "serve", "--ping-interval", "90"], capture_output=True, timeout=30
    )
    assert out.returncode == 2
    assert b"ping_interval" in out.stderr


def test_serve_history_and_session_options() -> None:
    """--history-size, --room-history, --recovery-max, --session-ttl and --session-secret do
    what they say, seen from a client."""
    args = ["--history-size", "3", "--room-history", "live:*=0", "--recovery-max", "2", "--session-ttl", "30"]

    async def recv(ws: Any) -> Any:
        return json.loads(await asyncio.wait_for(ws.recv(), 3))

    async def until(ws: Any, rid: Any) -> Any:
        while (msg := await recv(ws)).get("id") != rid:
            pass
        return msg

    with (
        fasthub_serve(*args, "--session-secret", "s3cret") as port,
        fasthub_serve("--session-secret", "s3cret") as other,
    ):

        async def scenario() -> str:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
                token = (await recv(ws))["payload"]["session"]
                await ws.send(json.dumps({"type": "join_room", "room": "live:1", "id": "live"}))
                assert "epoch" not in (await until(ws, "live"))["payload"]  # no history there
                await ws.send(json.dumps({"type": "join_room", "room": "r", "id": "j"}))
                epoch = (await until(ws, "j"))["payload"]["epoch"]
                for i in range(5):
                    await ws.send(json.dumps({"type": "room_message", "room": "r", "payload": i, "id": i}))
                await until(ws, 4)
                # only 3 kept, at most 2 sent: 2 missed recover, 3 do not
                for since, rid, recovered in ((3, "a", True), (2, "b", False), (0, "c", False)):
                    await ws.send(json.dumps({"type": "leave_room", "room": "r", "id": f"l{rid}"}))
                    await until(ws, f"l{rid}")
                    join = {"type": "join_room", "room": "r", "id": rid, "since": {"offset": since, "epoch": epoch}}
                    await ws.send(json.dumps(join))
                    assert (await until(ws, rid))["payload"]["recovered"] is recovered
            return str(token)

        token = run(scenario())

        async def elsewhere() -> None:
            # the same --session-secret: the token verifies on another server (its session is not there)
            async with websockets.connect(f"ws://127.0.0.1:{other}/ws") as ws:
                await recv(ws)
                await ws.send(json.dumps({"type": "resume", "id": 1, "payload": {"token": token}}))
                reply = await until(ws, 1)
                assert reply["type"] == "system" and reply["payload"]["reason"] == "expired"

        run(elsewhere())
    with fasthub_serve() as port:

        async def unknown_key() -> None:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await recv(ws)
                await ws.send(json.dumps({"type": "resume", "id": 1, "payload": {"token": token}}))
                reply = await until(ws, 1)
                assert reply["type"] == "error" and reply["payload"]["code"] == "invalid_session"

        run(unknown_key())
    out = subprocess.run(
        [sys.executable, "-m", "fasthub", "serve", "--room-history", "nonsense"], capture_output=True, timeout=30
    )
    assert out.returncode == 2 and b"--room-history" in out.stderr


# Distribution name -> the modules whose import (anywhere in the package) shows it is used.
# httptools is imported through uvicorn's httptools protocol, which fasthub.server.http subclasses.
DIST_MODULES = {
    "orjson": {"orjson"},
    "uvicorn": {"uvicorn"},
    "uvloop": {"uvloop"},
    "httptools": {"httptools", "uvicorn.protocols.http.httptools_impl"},
    "pyjwt": {"jwt"},
    "rich": {"rich"},
    "websockets": {"websockets"},
    "wsproto": {"wsproto"},
    "redis": {"redis"},
    # redis-py uses hiredis's parser by itself when it is installed; the broker reads
    # redis.utils.HIREDIS_AVAILABLE to report which parser runs (/ws/stats broker.parser)
    "hiredis": {"redis.utils"},
}


def _dist_name(requirement: str) -> str:
    import re

    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return match.group(0).lower()


def _imported_modules() -> set[str]:
    """Every absolute module named by an import statement in the fasthub package (and its parents)."""
    import ast
    import pathlib

    import fasthub

    found: set[str] = set()
    for path in pathlib.Path(fasthub.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                found.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return found


def test_every_runtime_dependency_is_imported_by_the_package() -> None:
    import pathlib
    import tomllib

    project = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    imported = _imported_modules()
    unused = []
    for requirement in project["dependencies"]:
        dist = _dist_name(requirement)
        modules = DIST_MODULES.get(dist, {dist.replace("-", "_")})
        if not modules & imported:
            unused.append(dist)
    assert unused == [], f"runtime dependencies no module of fasthub imports: {unused}"
    # the portable WebSocket implementations live in an extra that `--ws` names
    extras = project["optional-dependencies"]
    assert {"websockets", "wsproto"} <= {_dist_name(r) for r in extras["portable"]}
    assert "websockets" in {_dist_name(r) for r in extras["test"]}  # the tests' client


def test_serve_compression_options() -> None:
    """--no-compression, --compression-threshold and --compression-client-context, seen from a
    raw client: the 101's extension answer and RSV1 on the frames."""
    from conftest import RawClient, Server

    offer = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}

    def open_raw(port: int) -> RawClient:
        return RawClient(Server("127.0.0.1", port, "", None, None, None, None), "", headers=offer)  # type: ignore[arg-type]

    def pong_rsv1(raw: RawClient, size: int) -> bool:
        raw.send_json({"type": "ping", "payload": "p" * size})
        got = raw.frame()
        assert got is not None
        return raw.rsv1

    with (
        fasthub_serve("--no-compression") as off,
        fasthub_serve("--compression-threshold", "2000") as high,
        fasthub_serve("--compression-client-context") as ctx,
    ):
        raw = open_raw(off)
        assert "sec-websocket-extensions" not in raw.headers
        raw.frame()
        assert not pong_rsv1(raw, 3000)
        raw.close()
        raw = open_raw(high)
        raw.frame()
        assert not pong_rsv1(raw, 1000)  # under 2000 bytes
        assert pong_rsv1(raw, 3000)
        raw.close()
        raw = open_raw(ctx)
        assert raw.headers["sec-websocket-extensions"] == "permessage-deflate; server_no_context_takeover"
        raw.close()


def test_serve_on_a_busy_port_exits_with_redis_connecting(redis_server: Any) -> None:
    """A port it cannot bind ends `fasthub serve --redis` at once (exit 3), as without Redis.

    The lifespan's shutdown cancels the broker while redis-py is still connecting; redis-py
    swallowed that cancel and the shutdown waited for the broker forever."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "fasthub", "serve", "--port", str(port), "--redis", redis_server.url],
            capture_output=True,
            timeout=30,
        )
        took = time.monotonic() - started
    finally:
        busy.close()
    assert out.returncode == 3, out.stderr[-2000:]
    assert b"address already in use" in out.stderr
    assert b"Application shutdown complete" in out.stderr
    assert took < 10


def test_serve_writes_its_stacks_on_sigusr1_and_goes_on() -> None:
    """SIGUSR1: every thread's Python stack to stderr (faulthandler); the server keeps serving."""
    procs: list[subprocess.Popen[bytes]] = []
    with fasthub_serve(procs=procs) as port:
        procs[0].send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    stderr = procs[0].stderr
    err = stderr.read().decode() if stderr else ""
    assert "Current thread" in err and "(most recent call first)" in err and "run.py" in err, err
