"""Smoke test of an installed fasthub (a wheel or an sdist install), run by the environment's python.

    python ci/wheel_smoke.py                  every hot-path module compiled (a release wheel)
    python ci/wheel_smoke.py --expect pure    every module its pure-Python twin (no C compiler)

Run it from a directory outside the repository (``ci/wheel`` and cibuildwheel's test-command
do): it refuses a ``fasthub`` imported from anywhere but this environment. It starts
``fasthub serve`` (this environment's console script) on a free loopback port, connects with
``websockets``, reads ``connected``, joins room ``r``, posts a room message and reads it back,
then stops the server. Exit status 0 when everything matched.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path
from typing import Any

TIMEOUT = 15.0


def check_import(expect: str) -> None:
    import fasthub

    where = Path(fasthub.__file__).resolve()
    prefix = Path(sys.prefix).resolve()
    if not where.is_relative_to(prefix):
        sys.exit(f"wheel_smoke: fasthub imported from {where}, not from this environment ({prefix})")
    detail = fasthub.compiled(detail=True)
    assert isinstance(detail, dict)
    print(f"wheel_smoke: fasthub from {where.parent}; compiled: {detail}")
    want = expect == "compiled"
    if not detail or any(live != want for live in detail.values()):
        sys.exit(f"wheel_smoke: expected every module {expect}, got {detail}")
    if fasthub.compiled() is not want:
        sys.exit(f"wheel_smoke: fasthub.compiled() is {fasthub.compiled()}, expected {want}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fasthub_script() -> str:
    scripts = sysconfig.get_path("scripts")
    found = shutil.which("fasthub", path=scripts)
    if found is None:
        sys.exit(f"wheel_smoke: no fasthub script in {scripts}")
    return found


def wait_listening(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"wheel_smoke: fasthub serve exited with {server.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"wheel_smoke: fasthub serve did not listen on {port} within {TIMEOUT} s")


async def recv_json(ws: Any) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), TIMEOUT)
    msg = json.loads(raw)
    assert isinstance(msg, dict), msg
    return msg


async def talk(port: int) -> None:
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=TIMEOUT) as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "system" and hello["payload"]["event"] == "connected", hello
        user = hello["payload"]["user_id"]
        await ws.send(json.dumps({"type": "join_room", "room": "r"}))
        joined = await recv_json(ws)
        assert joined["type"] == "system", joined
        assert joined["payload"]["event"] == "joined" and joined["payload"]["room"] == "r", joined
        assert joined["payload"]["members"] == 1, joined
        await ws.send(json.dumps({"type": "room_message", "room": "r", "payload": {"x": 1}}))
        echo = await recv_json(ws)
        assert echo["type"] == "room_message" and echo["room"] == "r", echo
        assert echo["payload"] == {"x": 1} and echo["from"] == user, echo
        print(f"wheel_smoke: connected as {user}, joined r, room message came back: {echo}")


def check_stats(port: int, expect: str) -> None:
    """The server process's own view: ``/ws/stats`` reports ``compiled``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ws/stats", timeout=TIMEOUT) as response:
        stats = json.loads(response.read())
    if stats["compiled"] is not (expect == "compiled"):
        sys.exit(f"wheel_smoke: the server's /ws/stats says compiled={stats['compiled']}, expected {expect}")


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect", choices=["compiled", "pure"], default="compiled")
    args = parser.parse_args()
    # the install's own choice: a FASTHUB_NO_EXTENSIONS from the caller would hide a broken wheel
    os.environ.pop("FASTHUB_NO_EXTENSIONS", None)
    check_import(args.expect)

    port = free_port()
    server = subprocess.Popen([fasthub_script(), "serve", "--port", str(port), "--log-level", "warning"])
    try:
        wait_listening(port, server)
        asyncio.run(talk(port))
        check_stats(port, args.expect)
    finally:
        stop(server)
    print("wheel_smoke: ok")


if __name__ == "__main__":
    main()
