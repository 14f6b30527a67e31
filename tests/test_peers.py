"""bench/peers/: each peer hub, started as ``fasthub bench --compare`` starts it, speaks the protocol.

Each peer runs as a subprocess on a free port; three ``websockets`` clients join one room, send
room messages and check that every member, the sender included, gets each sender's messages in
order, that ``ping`` gets ``pong``, that ``leave_room`` and a disconnect take effect, and that
``GET /ws/stats`` counts. A peer whose library is not installed is skipped, naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from fasthub.benchmark.compare import bun_binary

PEERS_DIR = Path(__file__).resolve().parent.parent / "bench" / "peers"
PEERS = {  # script -> modules it needs
    "starlette_hub": ["starlette", "uvicorn", "uvloop", "httptools"],
    "websockets_hub": ["websockets", "uvloop"],
    "picows_hub": ["picows", "uvloop"],
    "socketify_hub": ["socketify"],
    "bun_hub": [],  # JavaScript: needs bench/peers/node_modules/.bin/bun (npm install --prefix bench/peers)
}
SENDERS = 3
PER_SENDER = 5


def missing_modules(modules: list[str]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def peer_server(name: str, log: Path, *extra: str) -> Iterator[int]:
    port = free_port()
    if (PEERS_DIR / f"{name}.js").exists():
        bun = bun_binary(PEERS_DIR)
        if bun is None:
            pytest.skip(f"{name} needs Bun: npm install --prefix bench/peers")
        cmd = [str(bun), str(PEERS_DIR / f"{name}.js"), "--port", str(port), "--host", "127.0.0.1", *extra]
    else:
        cmd = [sys.executable, str(PEERS_DIR / f"{name}.py"), "--port", str(port), "--host", "127.0.0.1", *extra]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                text = log.read_text(errors="replace")
                if "cannot import socketify" in text:
                    pytest.skip(text.strip())
                pytest.fail(f"{name} exited with {proc.returncode}:\n{text}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"{name} did not listen on {port} within 10 s"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def recv_json(ws: Any, timeout: float = 3.0) -> dict[str, Any]:
    """The next message, skipping the optional ``connected`` greeting."""
    while True:
        msg: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if msg.get("type") == "system" and msg.get("payload", {}).get("event") == "connected":
            continue
        return msg


def stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ws/stats", timeout=2) as resp:
        assert resp.status == 200
        result: dict[str, Any] = json.loads(resp.read())
        return result


async def wait_stats(port: int, expected: dict[str, int]) -> None:
    for _ in range(40):  # up to ~2 s for the server to see the close
        if await asyncio.to_thread(stats, port) == expected:
            return
        await asyncio.sleep(0.05)
    assert await asyncio.to_thread(stats, port) == expected


async def scenario(port: int) -> None:
    url = f"ws://127.0.0.1:{port}/ws"
    clients = [await websockets.connect(url) for _ in range(SENDERS)]
    try:
        for i, ws in enumerate(clients):
            await ws.send(json.dumps({"type": "join_room", "room": "lobby"}))
            reply = await recv_json(ws)
            assert reply == {"type": "system", "room": "lobby", "payload": {"event": "joined", "members": i + 1}}
        assert await asyncio.to_thread(stats, port) == {"connections": SENDERS, "rooms": 1}

        # every client sends its messages without waiting: the sends of different clients interleave
        for seq in range(PER_SENDER):
            for k, ws in enumerate(clients):
                payload = {"sender": k, "seq": seq, "text": "é✓ " * seq}
                await ws.send(json.dumps({"type": "room_message", "room": "lobby", "payload": payload}))

        ids: dict[int, str] = {}
        for ws in clients:
            seen: dict[int, list[int]] = {k: [] for k in range(SENDERS)}
            for _ in range(SENDERS * PER_SENDER):
                msg = await recv_json(ws)
                assert msg["type"] == "room_message" and msg["room"] == "lobby", msg
                sender, seq = msg["payload"]["sender"], msg["payload"]["seq"]
                assert msg["payload"]["text"] == "é✓ " * seq
                assert ids.setdefault(sender, msg["from"]) == msg["from"], "a sender's id must not change"
                seen[sender].append(seq)
            # sender included; each sender's messages in the order it sent them
            assert seen == {k: list(range(PER_SENDER)) for k in range(SENDERS)}
        assert len(set(ids.values())) == SENDERS, f"each connection needs its own id: {ids}"

        await clients[1].send(json.dumps({"type": "ping"}))
        assert await recv_json(clients[1]) == {"type": "pong"}

        # after leave_room, client 2 no longer gets the room's messages
        await clients[2].send(json.dumps({"type": "leave_room", "room": "lobby"}))
        await clients[2].send(json.dumps({"type": "ping"}))
        assert await recv_json(clients[2]) == {"type": "pong"}  # the leave has been handled
        await clients[0].send(json.dumps({"type": "room_message", "room": "lobby", "payload": {"after": "leave"}}))
        for ws in clients[:2]:
            assert (await recv_json(ws))["payload"] == {"after": "leave"}
        await clients[2].send(json.dumps({"type": "ping"}))
        assert await recv_json(clients[2]) == {"type": "pong"}, "a member that left still got a room message"

        # a disconnect removes the connection from its rooms
        await clients[1].close()
        await wait_stats(port, {"connections": SENDERS - 1, "rooms": 1})
        await clients[0].send(json.dumps({"type": "join_room", "room": "lobby"}))
        assert (await recv_json(clients[0]))["payload"] == {"event": "joined", "members": 1}
    finally:
        for ws in clients:
            await ws.close()
    await wait_stats(port, {"connections": 0, "rooms": 0})


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", list(PEERS))
def test_peer_protocol(name: str, tmp_path: Path) -> None:
    missing = missing_modules(PEERS[name])
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)} (pip install -r bench/peers/requirements.txt)")
    log = tmp_path / f"{name}.log"
    with peer_server(name, log) as port:
        asyncio.run(asyncio.wait_for(scenario(port), 15))
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text


def test_websockets_peer_compression_flag(tmp_path: Path) -> None:
    """``websockets_hub.py --compression``: websockets' default permessage-deflate, negotiated;
    without the flag, none."""
    if missing_modules(PEERS["websockets_hub"]):
        pytest.skip("websockets_hub needs websockets and uvloop")

    async def extensions(port: int) -> str | None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send(json.dumps({"type": "join_room", "room": "r"}))
            await recv_json(ws)
            value: str | None = ws.response.headers.get("Sec-WebSocket-Extensions")
            return value

    with peer_server("websockets_hub", tmp_path / "on.log", "--compression") as on:
        assert "permessage-deflate" in (asyncio.run(extensions(on)) or "")
    with peer_server("websockets_hub", tmp_path / "off.log") as off:
        assert asyncio.run(extensions(off)) is None


def test_compare_finds_the_javascript_peers_only_with_bun(tmp_path: Path) -> None:
    """``fasthub bench --compare`` runs ``*.js`` peers with the Bun installed beside them."""
    from fasthub.benchmark.compare import discover_servers

    (tmp_path / "a_hub.py").write_text("")
    (tmp_path / "b_hub.js").write_text("")
    assert [s.name for s in discover_servers(tmp_path)] == ["fasthub", "a_hub"]
    bin_dir = tmp_path / "node_modules" / ".bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "bun").write_text("")
    specs = discover_servers(tmp_path)
    assert [s.name for s in specs] == ["fasthub", "a_hub", "b_hub"]
    assert specs[2].command(9, "idle") == [str(bin_dir / "bun"), str(tmp_path / "b_hub.js"), "--port", "9"]
