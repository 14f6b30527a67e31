"""``fasthub serve`` as a user runs it: a subprocess, real flags, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
import websockets

from tests.conftest import free_socket, run

SECRET = "cli-secret-cli-secret-cli-secret-cli!!"


@contextlib.contextmanager
def fasthub_serve(*args: str, env: dict[str, str] | None = None) -> Iterator[int]:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    cmd = [sys.executable, "-m", "fasthub", "serve", "--port", str(port), "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stderr=subprocess.PIPE)
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
                assert stats["compiled"] is (os.environ.get("FASTHUB_NO_EXTENSIONS", "") in ("", "0"))

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
