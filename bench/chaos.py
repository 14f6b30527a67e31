"""The chaos test: clients, publishers and faults; afterwards nothing acknowledged is lost.

    python bench/chaos.py --mode cluster --duration 60 --report chaos.json
    python bench/chaos.py --mode local --duration 30

``cluster``: ``fasthub serve --workers 2 --redis`` on a real redis-server with AOF on
(``appendfsync always``, so the streams survive a restart). ``local``: one ``fasthub serve``
(history in memory). ``--clients`` clients (``fasthub.client.Client``) each join two of
``--rooms`` rooms; one member of each room publishes ``--rate`` messages a second, each with an
idempotency key, each acknowledged. Meanwhile a fault loop, every ``--fault-every`` seconds:
aborts a client's socket (client side), makes the server close one (an oversize frame: 1009),
and in cluster mode kills a worker with SIGKILL (the supervisor starts another), restarts
redis-server, and once flushes it (every epoch changes). ``--faults`` picks other kinds, e.g.
``rolling-restart``: SIGHUP to the supervisor, which replaces its workers one at a time, each
drained (1012) so its clients resume on the other.

At the end, for every client and each of its rooms, every acknowledged message is either
received exactly once, in offset order, or covered by a gap the client was told about
(``recovered: false``). The report (JSON) counts published, acked, delivered, recovered,
not recoverable, and lost / duplicated / out of order, which must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from fasthub.client import Client

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    """A redis-server of our own with AOF on, restartable on the same port and data."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="fasthub-chaos-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--appendonly", "yes",
             "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def command(self, *args: str) -> None:
        with socket.create_connection(("127.0.0.1", self.port), 2) as s:
            s.sendall((" ".join(args) + "\r\n").encode())
            s.recv(64)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Server:
    """``fasthub serve`` as a user runs it (``--workers 2 --redis`` in cluster mode)."""

    def __init__(self, port: int, redis: Redis | None) -> None:
        self.port = port
        cmd = [sys.executable, "-m", "fasthub", "serve", "--port", str(port), "--log-level", "error",
               "--no-demo", "--rate-limit", "0"]
        if redis is not None:
            cmd += ["--workers", "2", "--redis", redis.url, "--redis-prefix", "chaos", "--node-ttl", "2"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/ws/stats", timeout=1)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("fasthub serve did not start") from None
                time.sleep(0.1)

    def workers(self) -> list[int]:
        """PIDs of the supervisor's children (the workers)."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                        pids.append(int(entry))
        return pids

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@contextlib.contextmanager
def deployment(mode: str) -> Iterator[tuple[Server, Redis | None]]:
    redis = Redis() if mode == "cluster" else None
    server = None
    try:
        if redis is not None:
            redis.start()
        server = Server(free_port(), redis)
        yield server, redis
    finally:
        if server is not None:
            server.close()
        if redis is not None:
            redis.close()


async def chaos(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with deployment(args.mode) as (server, redis):
        url = f"ws://127.0.0.1:{server.port}/ws"
        rooms = [f"room{i}" for i in range(args.rooms)]
        clients = [
            Client(url, query={"user": f"u{i}"}, backoff_min=0.05, backoff_max=1.0, request_timeout=30)
            for i in range(args.clients)
        ]
        member_of = {i: {rooms[i % args.rooms], rooms[(i + 1) % args.rooms]} for i in range(args.clients)}
        for i, c in enumerate(clients):
            await c.connect()
            for room in sorted(member_of[i]):
                await c.join(room)
        received: dict[tuple[int, str], list[tuple[str, int]]] = {}
        acked: dict[str, list[tuple[str, int]]] = {r: [] for r in rooms}
        counts: Counter[str] = Counter()

        async def consume(i: int, c: Client) -> None:
            async for msg in c:
                if msg.get("type") == "room_message" and "offset" in msg:
                    received.setdefault((i, msg["room"]), []).append((str(msg.get("epoch")), msg["offset"]))

        consumers = [asyncio.ensure_future(consume(i, c)) for i, c in enumerate(clients)]
        stop = asyncio.Event()

        async def publish(room_index: int) -> None:
            c = clients[room_index]  # client i is a member of rooms[i]
            room = rooms[room_index]
            seq = 0
            while not stop.is_set():
                seq += 1
                counts["published"] += 1
                try:
                    ack = await c.publish(room, {"p": room_index, "s": seq})
                    acked[room].append((str(ack.epoch), ack.offset))
                except Exception:
                    counts["publish_failed"] += 1
                await asyncio.sleep(rng.uniform(0.5, 1.5) / args.rate)

        publishers = [asyncio.ensure_future(publish(r)) for r in range(args.rooms)]
        faults: Counter[str] = Counter()
        kinds = ["client-drop", "server-close"]
        if args.mode == "cluster":
            kinds += ["kill-worker", "redis-restart"]
        flushed = args.mode != "cluster"
        if args.faults:
            kinds = args.faults.split(",")
            flushed = "redis-flush" not in kinds
            kinds = [k for k in kinds if k != "redis-flush"] or ["client-drop"]
        deadline = time.monotonic() + args.duration
        while time.monotonic() < deadline:
            await asyncio.sleep(args.fault_every)
            kind = rng.choice(kinds)
            if not flushed and time.monotonic() > deadline - args.duration / 2:
                kind, flushed = "redis-flush", True
            if kind == "client-drop":
                rng.choice(clients).drop()
            elif kind == "server-close":
                c = rng.choice(clients)
                ws = c._ws
                if ws is not None:
                    with contextlib.suppress(Exception):
                        await ws.send("x" * (600 * 1024))  # over max_message_size: closed 1009
            elif kind == "kill-worker":
                pids = server.workers()
                if len(pids) > 1:
                    os.kill(rng.choice(pids), signal.SIGKILL)
            elif kind == "redis-restart":
                assert redis is not None
                await asyncio.to_thread(redis.stop)
                await asyncio.sleep(0.3)
                await asyncio.to_thread(redis.start)
            elif kind == "rolling-restart":  # the supervisor replaces its workers one by one
                os.kill(server.proc.pid, signal.SIGHUP)
            elif kind == "redis-flush":
                assert redis is not None
                await asyncio.to_thread(redis.command, "FLUSHALL")
            faults[kind] += 1
        stop.set()
        await asyncio.gather(*publishers)
        await asyncio.sleep(args.settle)  # everyone reconnected and caught up
        for c in clients:
            await c.close()
        await asyncio.gather(*consumers, return_exceptions=True)

    # -- the verdict: every acked message received once, in order, or covered by a told gap --------
    lost = duplicated = out_of_order = delivered = told = 0
    examples: list[str] = []
    for i, c in enumerate(clients):
        for room in sorted(member_of[i]):
            got = received.get((i, room), [])
            seen = Counter(got)
            duplicated += sum(n - 1 for n in seen.values() if n > 1)
            for (e1, o1), (e2, o2) in itertools.pairwise(got):
                if e1 == e2 and o2 <= o1:
                    out_of_order += 1
            gaps = [g for g in c.gaps if g["room"] == room]
            for epoch, offset in acked[room]:
                if (epoch, offset) in seen:
                    delivered += 1
                elif any(_covers(g, epoch, offset) for g in gaps):
                    told += 1
                else:
                    lost += 1
                    if len(examples) < 10:
                        examples.append(f"client {i} room {room}: ({epoch}, {offset}) not received, no gap told")
                    if len(examples) == 10 and not any(e.startswith("detail") for e in examples):
                        examples.append(f"detail client {i} room {room}: gaps {gaps}, received {got[:3]}...{got[-3:]}, "
                                        f"received epochs {sorted(set(e for e, _ in got))}")
    return {
        "mode": args.mode,
        "duration_s": args.duration,
        "clients": args.clients,
        "rooms": args.rooms,
        "rate_per_room": args.rate,
        "faults": dict(faults),
        "published": counts["published"],
        "acked": sum(len(v) for v in acked.values()),
        "publish_failed": counts["publish_failed"],
        "expected_deliveries": sum(len(acked[r]) for i in member_of for r in member_of[i]),
        "delivered": delivered,
        "not_recoverable_told": told,
        "lost": lost,
        "duplicated": duplicated,
        "out_of_order": out_of_order,
        "reconnects": sum(c.reconnects for c in clients),
        "gaps_told": sum(len(c.gaps) for c in clients),
        "duplicates_dropped_by_clients": sum(c.duplicates_dropped for c in clients),
        "examples": examples,
    }


def _covers(gap: dict[str, Any], epoch: str, offset: int) -> bool:
    """Whether a gap the client was told about (positions ``from`` -> ``to``) spans (epoch, offset)."""
    before, after = gap.get("from"), gap.get("to")
    if (
        before is not None
        and before.get("epoch") == epoch
        and offset > before["offset"]
        and (after is None or after.get("epoch") != epoch or offset <= after["offset"])
    ):
        return True
    return bool(after is not None and after.get("epoch") == epoch and offset <= after["offset"]
                and (before is None or before.get("epoch") != epoch))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["cluster", "local"], default="cluster")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of faults (default 30)")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--rooms", type=int, default=10)
    p.add_argument("--rate", type=float, default=10.0, help="messages a second per room (default 10)")
    p.add_argument("--fault-every", type=float, default=1.0, help="seconds between faults (default 1)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds to catch up after the faults")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--faults",
        help="comma-separated fault kinds instead of the mode's mix: client-drop, server-close, kill-worker, "
        "redis-restart, redis-flush (once, half-way), rolling-restart (SIGHUP: workers drained and replaced)",
    )
    p.add_argument("--report", help="write the JSON report here too")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    report = asyncio.run(chaos(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n")
    return report


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result["lost"] == result["duplicated"] == result["out_of_order"] == 0 else 1)
