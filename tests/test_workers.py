"""``fasthub serve --workers N --redis URL`` as a user runs it: real processes on one port.

The kernel spreads connections over the workers (``SO_REUSEPORT``); the supervisor restarts a
worker that dies; SIGTERM stops them all.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import IO, Any

import websockets
from redisproc import free_port

from tests.conftest import run


def stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ws/stats", timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def wait_for(cond: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
            if value:
                return value
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


_STDERR: dict[int, IO[bytes]] = {}


def serve(*args: str) -> subprocess.Popen[bytes]:
    """``fasthub serve`` with its stderr (and its workers') in a file, read by ``stderr_of``: a
    pipe read only at the end can fill up and block a process that logs a lot meanwhile."""
    cmd = [sys.executable, "-m", "fasthub", "serve", "--log-level", "warning", *args]
    err = tempfile.TemporaryFile()  # noqa: SIM115  (closed by stderr_of)
    proc = subprocess.Popen(cmd, stderr=err)
    _STDERR[proc.pid] = err
    return proc


def stderr_of(proc: subprocess.Popen[bytes]) -> str:
    err = _STDERR.pop(proc.pid)
    err.seek(0)
    text = err.read().decode()
    err.close()
    return text


def test_workers_need_a_broker() -> None:
    for args, message in [
        (["--workers", "2"], "needs --redis"),
        (["--workers", "0", "--redis", "redis://127.0.0.1:1"], "--workers must be"),
        (["--workers", "x"], "--workers must be"),
    ]:
        out = subprocess.run(
            [sys.executable, "-m", "fasthub", "serve", *args], capture_output=True, timeout=30, env=dict(os.environ)
        )
        assert out.returncode == 2, out
        assert message in out.stderr.decode(), out.stderr


async def client(port: int, user: str) -> Any:
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws")
    hello = json.loads(await ws.recv())
    assert hello["payload"]["event"] == "connected"
    return ws


async def recv_type(ws: Any, mtype: str, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if msg["type"] == mtype:
            return msg  # type: ignore[no-any-return]


def test_two_workers_act_as_one_hub_and_survive_a_sigkill(redis_server: Any) -> None:
    port = free_port()
    proc = serve("--port", str(port), "--workers", "2", "--redis", redis_server.url, "--node-ttl", "2")
    try:
        view = wait_for(lambda: stats(port).get("cluster", {}).get("nodes_alive") == 2 and stats(port))
        pids = sorted(n["pid"] for n in view["cluster"]["nodes"])
        assert len(set(pids)) == 2 and proc.pid not in pids

        async def scenario() -> None:
            clients = [await client(port, f"u{i}") for i in range(12)]
            for ws in clients:
                await ws.send(json.dumps({"type": "join_room", "room": "all"}))
                await recv_type(ws, "system")
            await asyncio.sleep(0.8)  # heartbeats carry each worker's count
            nodes = stats(port)["cluster"]["nodes"]
            per_worker = {n["pid"]: n["connections"] for n in nodes}
            assert sorted(per_worker) == pids and all(per_worker.values()), per_worker  # the kernel spread them
            await clients[0].send(json.dumps({"type": "room_message", "room": "all", "payload": "one hub"}))
            for ws in clients:
                assert (await recv_type(ws, "room_message"))["payload"] == "one hub"
            # kill one worker outright: the other worker's clients go on
            victim = pids[0]
            os.kill(victim, signal.SIGKILL)
            await asyncio.sleep(0.3)
            alive = []
            for ws in clients:
                try:
                    await ws.send(json.dumps({"type": "ping"}))
                    await recv_type(ws, "pong", timeout=2)
                    alive.append(ws)
                except (websockets.ConnectionClosed, OSError, TimeoutError):
                    pass
            assert 0 < len(alive) < len(clients)
            await alive[0].send(json.dumps({"type": "room_message", "room": "all", "payload": "after"}))
            for ws in alive:
                assert (await recv_type(ws, "room_message"))["payload"] == "after"
            return None

        run(scenario(), timeout=60)
        # the dead node leaves the cluster view within its TTL and the supervisor starts a new worker
        view = wait_for(
            lambda: (s := stats(port)).get("cluster", {}).get("nodes_alive") == 2
            and victim_gone(s, pids[0])
            and s,
            timeout=15,
        )
        assert pids[1] in [n["pid"] for n in view["cluster"]["nodes"]]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            from tests.test_operations import _children, _dump_stacks

            workers = _children(proc.pid)
            _dump_stacks(workers)  # where the workers that did not stop wait
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
            raise AssertionError(f"the workers did not stop within 20 s:\n{stderr_of(proc)}") from None
        err = stderr_of(proc)
    assert proc.returncode == 0, err
    assert "ended with signal 9" in err, err
    # every worker is gone with the supervisor
    for pid in pids[1:]:
        assert not process_alive(pid)


def victim_gone(s: dict[str, Any], pid: int) -> bool:
    return pid not in [n["pid"] for n in s["cluster"]["nodes"]]


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_process_keeps_its_connections_under_its_open_file_limit() -> None:
    """With ``ulimit -n 200``, fasthub serve takes 200 - 64 connections and answers 503 after."""
    import resource

    port = free_port()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    proc = subprocess.Popen(
        [sys.executable, "-m", "fasthub", "serve", "--port", str(port), "--log-level", "info"],
        stderr=subprocess.PIPE,
        preexec_fn=limit,
    )
    try:
        wait_for(lambda: stats(port))

        async def scenario() -> tuple[int, list[int]]:
            opened, refused = [], []
            for _ in range(150):
                try:
                    opened.append(await client(port, "x"))
                except websockets.InvalidStatus as exc:
                    refused.append(exc.response.status_code)
            for ws in opened:
                await ws.close()
            return len(opened), refused

        opened, refused = run(scenario(), timeout=60)
        assert opened == 200 - 64 and set(refused) == {503} and len(refused) == 150 - opened
    finally:
        proc.terminate()
        proc.wait(10)
        err = proc.stderr.read().decode() if proc.stderr else ""
    assert "max_connections 50000 -> 136: this process may open 200 files" in err, err


def test_a_port_that_cannot_be_bound_exits_2_and_stops_the_supervisor(redis_server: Any) -> None:
    with socket.socket() as taken:  # held without SO_REUSEPORT: no worker can bind beside it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", "--port", str(port), "--workers", "2", "--redis", redis_server.url]
        out = subprocess.run(
            [sys.executable, "-m", "fasthub", *args],
            capture_output=True,
            timeout=60,
        )
    assert out.returncode == 2, out
    err = out.stderr.decode()
    assert f"cannot listen on 127.0.0.1:{port}" in err and "could not start (exit code 2); stopping" in err, err


def test_workers_auto_is_the_cores_this_process_may_use() -> None:
    from fasthub.cli import _workers

    assert _workers("auto") == len(os.sched_getaffinity(0))
    assert _workers("3") == 3


def test_a_redis_prefix_keeps_hubs_apart(redis_server: Any) -> None:
    """Two `fasthub serve` on one Redis with different --redis-prefix: two separate hubs."""
    ports = [free_port(), free_port()]
    procs = [
        serve("--port", str(port), "--redis", redis_server.url, "--redis-prefix", prefix)
        for port, prefix in zip(ports, ["one", "two"], strict=True)
    ]
    try:
        for port in ports:
            wait_for(lambda port=port: stats(port).get("cluster", {}).get("nodes_alive") == 1)
        assert redis_server.command("SCARD", "one:nodes").strip() == "1"
        assert redis_server.command("SCARD", "two:nodes").strip() == "1"
        assert redis_server.command("EXISTS", "fasthub:nodes").strip() == "0"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


STUCK_WORKER = r"""
import os, signal, sys, time
from fasthub.server.run import dump_stacks_on

def stuck_here() -> None:
    while True:
        time.sleep(0.05)

signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a worker that does not stop
dump_stacks_on(signal.SIGUSR1)
open(os.path.join(os.environ["FASTHUB_METRICS_DIR"], f"{os.getpid()}.json"), "w").close()
stuck_here()
"""

SUPERVISOR = r"""
import sys
from fasthub.server import workers
workers.STOP_GRACE = 0.5
sup = workers.Supervisor(1, [], drain_timeout=0.5)
sup.argv = [sys.executable, "-c", sys.argv[1]]
sys.exit(sup.run())
"""


def test_a_worker_that_does_not_stop_has_its_stacks_logged_then_is_killed(tmp_path: Any) -> None:
    """SIGUSR1 to the supervisor is passed on to the workers (their stacks, nobody stops). The
    supervisor's SIGTERM is ignored: after drain_timeout + STOP_GRACE it asks the worker for its
    stacks (SIGUSR1, faulthandler) and kills it; the log says where it was stuck."""
    env = dict(os.environ, FASTHUB_METRICS_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR, STUCK_WORKER], env=env, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: any(p.suffix == ".json" for p in tmp_path.iterdir()), timeout=20)
        worker = int(next(p.stem for p in tmp_path.iterdir() if p.suffix == ".json"))
        proc.send_signal(signal.SIGUSR1)  # passed on: the worker writes its stacks, all go on
        time.sleep(0.5)
        assert proc.poll() is None and process_alive(worker)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 0, err
    assert 1.0 <= took < 5.0, (took, err)  # drain_timeout + STOP_GRACE, the dump's half second, the kill
    assert f"worker pid {worker} did not stop in 1 s; its stacks follow, then it is killed" in err, err
    assert err.count("in stuck_here") == 2 and "Current thread" in err, err  # SIGUSR1, then before the kill
    assert not process_alive(worker)
