"""100,000 idle connections on one machine, one hub: ``fasthub serve --workers W --redis``.

Every process stays under the 20,000 open files a process may have here: the workers (the kernel
spreads connections over them with SO_REUSEPORT) and the load generators (``loadgen idle``,
each holding ``-n`` connections from ``--src`` source addresses, every connection joined to
room ``idle``). Then a room message with ``"seq": -1`` goes into ``idle``: the load generators
count which of their connections got it (``probe_members_reached``), and sample clients of
this script (joined last on each worker, so at the end of each worker's member list) time when
it arrives. Prints one JSON object and appends it to ``--out``.

    .venv/bin/python bench/idle_cluster.py --total 100000 --workers 7 --loadgens 6

Needs redis-server and the load generator of ``bench/loadgen`` (``bench/loadgen/run.sh`` builds it into
/tmp/fasthub-loadgen by default; env ``LOADGEN_BIN`` names another binary).
Bounded: every phase has a deadline; everything started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import websockets

HERE = os.path.dirname(os.path.abspath(__file__))
LOADGEN = os.environ.get("LOADGEN_BIN", "/tmp/fasthub-loadgen/loadgen")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ws/stats", timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


async def sample_clients(port: int, n: int) -> list[Any]:
    clients = []
    for _ in range(n):
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None, ping_interval=None)
        await ws.recv()  # connected
        await ws.send(json.dumps({"type": "join_room", "room": "idle"}))
        clients.append(ws)
    for ws in clients:  # the joined replies
        while json.loads(await asyncio.wait_for(ws.recv(), 30))["payload"].get("event") != "joined":
            pass
    return clients


async def probe(clients: list[Any]) -> dict[str, Any]:
    async def first_probe(ws: Any) -> float:
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if msg.get("type") == "room_message" and msg.get("payload", {}).get("seq") == -1:
                return time.perf_counter()

    waiters = [asyncio.ensure_future(first_probe(ws)) for ws in clients[1:]]
    await asyncio.sleep(0.5)  # let the member events of late joins drain
    t0 = time.perf_counter()
    await clients[0].send(json.dumps({"type": "room_message", "room": "idle", "payload": {"seq": -1, "t": 0}}))
    times = sorted([t - t0 for t in await asyncio.gather(*waiters)])
    return {
        "sample_clients": len(times),
        "probe_first_s": round(times[0], 4),
        "probe_median_s": round(times[len(times) // 2], 4),
        "probe_last_s": round(times[-1], 4),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--total", type=int, default=100_000, help="connections held by the load generators")
    ap.add_argument("--workers", type=int, default=7)
    ap.add_argument("--loadgens", type=int, default=6)
    ap.add_argument("--src", type=int, default=8, help="source addresses per load generator")
    ap.add_argument("--sample", type=int, default=700, help="timing clients of this script")
    ap.add_argument("--hold", type=float, default=0, help="loadgen hold seconds (default: enough for all)")
    ap.add_argument("--out", default="/tmp/fasthub-loadgen/idle_cluster.jsonl")
    args = ap.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    per_loadgen = -(-args.total // args.loadgens)
    assert per_loadgen < 19_900, "each load generator must stay under 20,000 files"
    hold = args.hold or max(60.0, args.total / 1500)
    result: dict[str, Any] = {"total": args.total, "workers": args.workers, "loadgens": args.loadgens}
    procs: list[subprocess.Popen[bytes]] = []
    tmp = tempfile.mkdtemp(prefix="fasthub-idle-")
    stack = contextlib.ExitStack()
    try:
        rport, port = free_port(), free_port()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", tmp], stdout=subprocess.DEVNULL))
        time.sleep(0.3)
        cmd = [sys.executable, "-m", "fasthub", "serve", "--port", str(port), "--workers", str(args.workers),
               "--redis", f"redis://127.0.0.1:{rport}/0", "--log-level", "warning", "--no-demo",
               "--max-connections", "19500"]
        log = stack.enter_context(open(os.path.join(tmp, "server.log"), "wb"))  # noqa: SIM115
        server = subprocess.Popen(cmd, stderr=log)
        procs.append(server)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError, KeyError, ValueError):
                if stats(port)["cluster"]["nodes_alive"] == args.workers:
                    break
            assert time.monotonic() < deadline, "the workers did not form a cluster"
            time.sleep(0.2)
        workers = children(server.pid)
        rss_before = sum(rss_kb(p) for p in workers)
        t0 = time.monotonic()
        loadgens = [
            subprocess.Popen(
                [LOADGEN, "idle", "--port", str(port), "-n", str(per_loadgen), "-t", str(hold), "--src",
                 str(args.src), "--deadline", str(hold + 120)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )
            for _ in range(args.loadgens)
        ]
        procs.extend(loadgens)
        # wait until every load generator's connections are open (the cluster's count)
        want = per_loadgen * args.loadgens
        seen = 0
        while time.monotonic() - t0 < hold - 5:
            with contextlib.suppress(OSError, KeyError, ValueError):
                seen = stats(port)["connections"]
            if seen >= want:
                break
            time.sleep(1.0)
        result["connect_s"] = round(time.monotonic() - t0, 1)
        result["connected_before_probe"] = seen
        time.sleep(3.0)  # heartbeats carry the final counts
        view = stats(port)
        result["per_worker_connections"] = sorted(n["connections"] for n in view["cluster"]["nodes"])
        rss_after = sum(rss_kb(p) for p in workers)
        result["workers_rss_mb"] = round(rss_after / 1024, 1)
        result["rss_per_connection_bytes"] = round((rss_after - rss_before) * 1024 / max(1, view["connections"]))

        async def timing() -> dict[str, Any]:
            clients = await sample_clients(port, args.sample)
            try:
                return await probe(clients)
            finally:
                for ws in clients:
                    with contextlib.suppress(Exception):
                        await ws.close()

        result.update(asyncio.run(timing()))
        outs = []
        for lg in loadgens:
            out, _ = lg.communicate(timeout=hold + 180)
            outs.append(json.loads(out.decode().strip().splitlines()[-1]))
        result["loadgen_connected"] = sum(o.get("connected", 0) for o in outs)
        result["loadgen_failed"] = sum(o.get("failed", 0) for o in outs)
        result["probe_members_reached"] = sum(o.get("probe_members_reached", 0) for o in outs)
        result["loadgen"] = outs
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        stack.close()
    result["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = json.dumps(result)
    print(line)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "a") as f:
        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
