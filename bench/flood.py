"""Flood test: one client floods while 100 others exchange room messages.

    python bench/flood.py [--seconds 10] [--clients 100] [--json out.json] [-- extra fasthub serve args]

Runs the scenario twice against a fresh ``fasthub serve`` (defaults, so the rate limits are on):
without the flooder, then with it. The 100 clients sit in 10 rooms of 10, each sends a room
message every 100 ms with a sequence number and a timestamp, and every member checks it gets
every message of every sender in order. The flooder (another process, raw socket, pre-built
masked frames) writes room messages as fast as the socket takes them. Reported: deliveries,
losses, p50/p99 latency of both runs, their ratio, what happened to the flooder, server RSS
peak. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import websockets

ROOMS = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


def _frame(text: bytes) -> bytes:
    mask = b"\x11\x22\x33\x44"
    n = len(text)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))


def _flood_once(port: int, deadline: float) -> tuple[int, str]:
    """One flooding connection, until the server closes it or the deadline; (bytes sent, how it ended)."""
    import base64

    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            return 0, "refused"
        buf += chunk
    if not buf.startswith(b"HTTP/1.1 101"):
        sock.close()
        return 0, "refused " + buf.split(b"\r\n", 1)[0].decode()
    sock.sendall(_frame(b'{"type":"join_room","room":"flood"}'))
    burst = _frame(b'{"type":"room_message","room":"flood","payload":{"spam":"' + b"x" * 60 + b'"}}') * 200
    sock.setblocking(False)
    sent = 0
    ended = "deadline"
    pending = memoryview(burst)
    while time.monotonic() < deadline:
        try:
            n = sock.send(pending)
            sent += n
            pending = pending[n:] if n < len(pending) else memoryview(burst)  # never cut a frame
        except BlockingIOError:
            time.sleep(0.001)
        except OSError:
            ended = "reset"
            break
        try:  # drain what the server sends back (errors, echoes, maybe its close frame)
            data = sock.recv(1 << 20)
            if not data:
                ended = "eof"
                break
            if b"rate limit exceeded" in data:
                ended = "closed 1008 rate limit exceeded"
                break
            if b"slow consumer" in data:
                ended = "closed 1008 slow consumer"
                break
        except BlockingIOError:
            pass
        except OSError:
            ended = "reset"
            break
    sock.close()
    return sent, ended


def flooder(port: int, seconds: float, result: Any) -> None:
    """A persistent attacker: floods, and reconnects to flood again whenever it is closed."""
    started = time.monotonic()
    deadline = started + seconds
    total = 0
    endings: dict[str, int] = {}
    while time.monotonic() < deadline:
        sent, ended = _flood_once(port, deadline)
        total += sent
        endings[ended] = endings.get(ended, 0) + 1
    result["flood_bytes_sent"] = total
    result["flood_connections"] = sum(endings.values())
    result["flood_endings"] = endings
    result["flood_seconds"] = round(time.monotonic() - started, 2)


async def members(port: int, n: int, seconds: float) -> dict[str, Any]:
    conns = []
    for i in range(n):
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None)
        hello = json.loads(await ws.recv())
        conns.append((i, ws, hello["payload"]["user_id"]))
    for i, ws, _ in conns:
        await ws.send(json.dumps({"type": "join_room", "room": f"r{i % ROOMS}"}))
    await asyncio.sleep(1.0)  # joins and their events settle

    latencies: list[float] = []
    expected: dict[tuple[int, int], int] = {}  # (receiver, sender) -> next seq
    lost = 0
    out_of_order = 0
    received = 0
    sent_by: dict[int, int] = {}
    stop = asyncio.Event()

    async def reader(i: int, ws: Any) -> None:
        nonlocal lost, out_of_order, received
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("type") != "room_message":
                continue
            p = msg["payload"]
            key = (i, p["src"])
            want = expected.get(key, 0)
            if p["seq"] < want:
                out_of_order += 1
            else:
                lost += p["seq"] - want
                expected[key] = p["seq"] + 1
            received += 1
            latencies.append(time.perf_counter() - p["t"])

    async def writer(i: int, ws: Any) -> None:
        seq = 0
        await asyncio.sleep((i % 10) / 100)
        while not stop.is_set():
            payload = {"src": i, "seq": seq, "t": time.perf_counter()}
            await ws.send(json.dumps({"type": "room_message", "room": f"r{i % ROOMS}", "payload": payload}))
            seq += 1
            await asyncio.sleep(0.1)
        sent_by[i] = seq

    readers = [asyncio.create_task(reader(i, ws)) for i, ws, _ in conns]
    writers = [asyncio.create_task(writer(i, ws)) for i, ws, _ in conns]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*writers)
    await asyncio.sleep(1.0)  # in-flight messages arrive
    # every member must have every message of every sender of its room
    per_room = n // ROOMS
    should = sum(sent_by[s] for s in sent_by) * per_room
    for t in readers:
        t.cancel()
    for _, ws, _ in conns:
        await ws.close()
    latencies.sort()
    return {
        "sent": sum(sent_by.values()),
        "expected_deliveries": should,
        "received": received,
        "lost": (should - received) + lost,
        "out_of_order": out_of_order,
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3) if latencies else None,
    }


def run_once(args: argparse.Namespace, flood: bool) -> dict[str, Any]:
    port = free_port()
    cmd = [sys.executable, "-m", "fasthub", "serve", "--port", str(port), "--log-level", "warning", *args.extra]
    server = subprocess.Popen(cmd)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.1)
        before = rss_kb(server.pid)
        manager = multiprocessing.Manager()
        result = manager.dict()
        proc = None
        if flood:
            proc = multiprocessing.Process(target=flooder, args=(port, args.seconds + 1.5, result))
            proc.start()
        stats = asyncio.run(members(port, args.clients, args.seconds))
        if proc is not None:
            proc.join(args.seconds + 10)
        after = rss_kb(server.pid)
        stats.update(dict(result))
        stats["server_rss_kb_before"] = before["VmRSS"]
        stats["server_rss_peak_kb"] = after["VmHWM"]
        stats["server_alive"] = server.poll() is None
        return stats
    finally:
        server.terminate()
        server.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("extra", nargs="*", help="extra `fasthub serve` arguments (after --)")
    args = parser.parse_args()
    baseline = run_once(args, flood=False)
    flooded = run_once(args, flood=True)
    report = {
        "baseline": baseline,
        "flooded": flooded,
        "p99_ratio": round(flooded["p99_ms"] / baseline["p99_ms"], 2)
        if baseline.get("p99_ms") and flooded.get("p99_ms")
        else None,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    ok = baseline["lost"] == 0 and flooded["lost"] == 0 and flooded["server_alive"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
