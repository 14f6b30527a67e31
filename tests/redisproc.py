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
