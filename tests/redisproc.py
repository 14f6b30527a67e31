"""A real ``redis-server`` on a free loopback port for the broker tests (Debian's package).

CI (``ci/test``) installs redis-server and sets ``FASTHUB_REQUIRE_REDIS=1``: there a missing
server fails the tests instead of skipping them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_binary(name: str = "redis-server") -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("FASTHUB_REQUIRE_REDIS"):
            pytest.fail(f"{name} is not installed (apt-get install redis-server) and FASTHUB_REQUIRE_REDIS is set")
        pytest.skip(f"{name} is not installed (apt-get install redis-server)")
    return path


class RedisServer:
    """One redis-server process; ``stop``/``start`` again on the same port (restart tests)."""

    def __init__(self, port: int | None = None, *extra: str) -> None:
        self.port = port or free_port()
        self.extra = extra
        self.dir = tempfile.mkdtemp(prefix="fasthub-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", self.dir, "--enable-debug-command", "local", *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def command(self, *args: str) -> str:
        out = subprocess.run(
            [redis_binary("redis-cli"), "-p", str(self.port), *args], capture_output=True, timeout=10, check=True
        )
        return out.stdout.decode()


class RedisCluster:
    """A real three-master Redis Cluster (no replicas) on free loopback ports.

    ``start`` launches the servers, runs ``redis-cli --cluster create`` and waits for
    ``cluster_state:ok`` on every node; ``kill(i)``/``restart(i)`` SIGKILL and bring back one
    master on the same port and ``nodes-P.conf`` (it keeps its slots: failure tests).
    """

    def __init__(self, masters: int = 3, *extra: str) -> None:
        # Client and cluster-bus ports (``--cluster-port``; the default port+10000 may exceed 65535).
        ports: set[int] = set()
        while len(ports) < 2 * masters:
            ports.add(free_port())
        allocated = sorted(ports)
        self.ports = allocated[:masters]
        self.bus_ports = allocated[masters:]
        self.extra = extra
        self.dir = tempfile.mkdtemp(prefix="fasthub-redis-cluster-")
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * masters

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{port}/0" for port in self.ports]

    @property
    def url(self) -> str:
        return self.urls[0]

    def _launch(self, i: int) -> None:
        port = self.ports[i]
        args = [
            redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", self.dir, "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-port", str(self.bus_ports[i]),
            "--cluster-node-timeout", "2000", "--enable-debug-command", "local", *self.extra,
        ]
        self.procs[i] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            proc = self.procs[i]
            assert proc is not None
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server (cluster node {port}) exited with {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server (cluster node {port}) did not start")

    def _wait_ok(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(
                    "cluster_state:ok" in self.command("CLUSTER", "INFO", node=i, cluster_mode=False)
                    for i in range(len(self.ports))
                ):
                    return
            except subprocess.SubprocessError:
                pass
            time.sleep(0.1)
        raise RuntimeError("redis cluster did not reach cluster_state:ok")

    def start(self) -> RedisCluster:
        try:
            for i in range(len(self.ports)):
                self._launch(i)
            subprocess.run(
                [redis_binary("redis-cli"), "--cluster", "create",
                 *(f"127.0.0.1:{port}" for port in self.ports), "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, timeout=30, check=True,
            )
            self._wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, i: int) -> None:
        """SIGKILL master ``i`` (its slots become uncovered: cluster_state:fail after the node timeout)."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        self.procs[i] = None

    def restart(self, i: int) -> None:
        """Start master ``i`` again on its port from its nodes-P.conf and wait for cluster_state:ok."""
        self.kill(i)
        self._launch(i)
        self._wait_ok()

    def stop(self) -> None:
        for i in range(len(self.procs)):
            self.kill(i)

    def command(self, *args: str, node: int = 0, cluster_mode: bool = True) -> str:
        """``redis-cli [-c] -p <node's port> args...`` (``-c`` follows MOVED/ASK redirections)."""
        cli = [redis_binary("redis-cli"), *(["-c"] if cluster_mode else []), "-p", str(self.ports[node])]
        out = subprocess.run([*cli, *args], capture_output=True, timeout=10, check=True)
        return out.stdout.decode()
