"""``fasthub bench --compare``: the same scenarios against fasthub and each peer server in turn.

Each (server, scenario) gets a fresh server process on a free port, like the C loadgen's
``run.sh``: a fresh process makes RSS per connection meaningful and keeps one scenario's
leftovers out of the next. A peer is ``<peers-dir>/<name>.py`` run as
``python <name>.py --port PORT`` serving ``ws://127.0.0.1:PORT/ws``. A server that does not
answer a WebSocket handshake within ``start_timeout`` is reported as failed with its log tail,
never silently dropped. Servers are stopped by their own PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .options import BenchConfig
from .runner import Progress, run_bench

__all__ = ["RunningServer", "ServerSpec", "ServerStartError", "discover_servers", "run_compare", "start_server"]


class ServerStartError(RuntimeError):
    """The server exited or never answered a WebSocket handshake."""


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server; ``{port}`` is filled in per start."""

    name: str
    argv: tuple[str, ...]
    ingress_argv: tuple[str, ...] = ()  # extra arguments for the ingress scenario only

    def command(self, port: int, scenario: str) -> list[str]:
        extra = self.ingress_argv if scenario == "ingress" else ()
        return [a.replace("{port}", str(port)) for a in (*self.argv, *extra)]


def fasthub_spec(extra: tuple[str, ...] = ()) -> ServerSpec:
    """``fasthub serve``; the per-connection rate limit would cap ingress, so it is off there."""
    argv = (sys.executable, "-m", "fasthub", "serve", "--port", "{port}", "--log-level", "warning", *extra)
    return ServerSpec("fasthub", argv, ("--rate-limit", "0"))


def discover_servers(peers_dir: str | os.PathLike[str], fasthub_args: tuple[str, ...] = ()) -> list[ServerSpec]:
    """fasthub first, then every ``<peers_dir>/*.py`` not starting with ``_`` (helpers), then
    every ``*.js`` there when ``<peers_dir>/node_modules/.bin/bun`` is installed (``npm install
    --prefix <peers_dir>``)."""
    specs = [fasthub_spec(fasthub_args)]
    folder = Path(peers_dir)
    if folder.is_dir():
        for path in sorted(folder.glob("*.py")):
            if not path.name.startswith("_"):
                specs.append(ServerSpec(path.stem, (sys.executable, str(path.resolve()), "--port", "{port}")))
        bun = bun_binary(folder)
        if bun is not None:
            for path in sorted(folder.glob("*.js")):
                if not path.name.startswith("_"):
                    specs.append(ServerSpec(path.stem, (str(bun), str(path.resolve()), "--port", "{port}")))
    return specs


def bun_binary(peers_dir: str | os.PathLike[str]) -> Path | None:
    """The Bun that ``npm install --prefix bench/peers`` put there, or None."""
    path = Path(peers_dir) / "node_modules" / ".bin" / "bun"
    return path.resolve() if path.exists() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def handshake_ok(port: int, path: str = "/ws", timeout: float = 1.0) -> bool:
    """True when a WebSocket upgrade on ``path`` is answered with 101 (the server is ready)."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(request)
            head = b""
            end = time.monotonic() + timeout
            while b"\r\n\r\n" not in head and len(head) < 16384 and time.monotonic() < end:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
            ok = head.startswith(b"HTTP/1.1 101")
            if ok:
                with contextlib.suppress(OSError):
                    sock.sendall(b"\x88\x82\x00\x00\x00\x00\x03\xe8")  # close 1000, zero mask
            return ok
    except OSError:
        return False


@dataclass
class RunningServer:
    """A started server process (ours: stopped by its PID, never by name)."""

    name: str
    command: list[str]
    port: int
    proc: subprocess.Popen[bytes]
    log_path: str
    started_s: float = 0.0
    log_tail: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        self.log_tail = _tail(self.log_path)


def _tail(path: str, lines: int = 5) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()[-lines:]
    except OSError:
        return []


def _pin_prefix(pin: bool) -> list[str]:
    if pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", "0"]  # taskset execs the server: the PID stays the server's
    return []


@contextlib.contextmanager
def start_server(
    spec: ServerSpec, scenario: str, log_dir: str, pin: bool = False, start_timeout: float = 30.0
) -> Iterator[RunningServer]:
    """Start ``spec`` on a free port and yield it once it completes a handshake; stop it after.

    Raises ServerStartError (with the log tail) when it exits or never becomes ready.
    """
    port = free_port()
    command = [*_pin_prefix(pin), *spec.command(port, scenario)]
    log_path = os.path.join(log_dir, f"{spec.name}.{scenario}.{port}.log")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # so "-m fasthub" finds this fasthub
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        except OSError as exc:
            raise ServerStartError(f"cannot run {command[0]}: {exc}") from None
    server = RunningServer(spec.name, command, port, proc, log_path)
    try:
        while True:
            if proc.poll() is not None:
                tail = " | ".join(_tail(log_path)) or "no output"
                raise ServerStartError(f"exited with code {proc.returncode} before serving: {tail}")
            if handshake_ok(port):
                break
            if time.monotonic() - t0 > start_timeout:
                tail = " | ".join(_tail(log_path)) or "no output"
                raise ServerStartError(f"no WebSocket handshake on port {port} within {start_timeout:.0f} s: {tail}")
            time.sleep(0.1)
        server.started_s = round(time.monotonic() - t0, 2)
        time.sleep(0.5)  # let start-up settle before the RSS baseline (as run.sh does)
        yield server
    finally:
        server.stop()


def run_compare(
    base: BenchConfig,
    scenarios: list[str],
    specs: list[ServerSpec],
    pin: bool = False,
    progress: Callable[[str], contextlib.AbstractContextManager[Progress]] | None = None,
    start_timeout: float = 30.0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run every scenario against every server; (one record per run, one entry per server).

    ``base`` carries the load parameters; its URL and PID are replaced per server. A server
    that fails to start gets a record with ``status`` saying why, and its remaining scenarios
    are skipped (recorded too).
    """
    cpus = os.cpu_count() or 1
    client_cpus = tuple(range(1, cpus)) if pin and cpus >= 2 else base.client_cpus
    records: list[dict[str, Any]] = []
    servers: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fasthub-bench-") as log_dir:
        for spec in specs:
            entry: dict[str, Any] = {"name": spec.name, "command": list(spec.argv), "status": "ok"}
            servers.append(entry)
            for scenario in scenarios:
                record: dict[str, Any] = {"server": spec.name, "scenario": scenario}
                records.append(record)
                if entry["status"] != "ok":
                    record["status"] = "skipped: " + entry["status"]
                    continue
                try:
                    with start_server(spec, scenario, log_dir, pin, start_timeout) as server:
                        cfg = replace(
                            base,
                            url=f"ws://127.0.0.1:{server.port}/ws",
                            scenario=scenario,
                            pid=server.pid,
                            client_cpus=client_cpus,
                        )
                        record["server_cmd"] = server.command
                        record["params"] = cfg.resolved().params()
                        label = f"{spec.name} {scenario}"
                        if progress is None:
                            result = run_bench(cfg)
                        else:
                            with progress(label) as prog:
                                result = run_bench(cfg, prog)
                        record["server_alive_at_end"] = server.alive()
                        if not server.alive():
                            result.setdefault("problems", []).append("server died")
                            result["ok"] = False
                    record["server_log_tail"] = server.log_tail
                    record["result"] = result
                    record["status"] = "ok" if result.get("ok") else "failed"
                except ServerStartError as exc:
                    entry["status"] = f"failed to start: {exc}"
                    record["status"] = entry["status"]
    return records, servers
