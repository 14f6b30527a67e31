"""Parameters of a benchmark run and the ``fasthub bench`` arguments that set them.

Kept free of heavy imports: ``fasthub.cli`` builds its parser from here on every start,
including ``fasthub serve``.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "SCENARIOS",
    "SCENARIO_DEFAULTS",
    "BenchConfig",
    "Target",
    "add_arguments",
    "config_for",
    "configs_from_args",
    "parse_target",
]

SCENARIOS = ("idle", "fanout", "ingress", "latency")

# Defaults follow the C loadgen's workloads (bench/loadgen/run.sh) where they exist:
# idle = "idle", fanout = "fanout1k_w8", ingress = "ingress"; latency is fanout at a fixed rate
# kept below what one room of 1,000 usually sustains, so it measures delay rather than backlog.
SCENARIO_DEFAULTS: dict[str, dict[str, Any]] = {
    "idle": {"connections": 10_000, "duration": 5.0},
    "fanout": {"connections": 1_000, "messages": 2_000, "window": 8},
    "ingress": {"connections": 100, "messages": 2_000_000, "window": 16, "duration": 20.0},
    "latency": {"connections": 1_000, "rate": 200.0, "duration": 5.0},
}


@dataclass(frozen=True)
class Target:
    """Where the server listens (ws:// only: TLS would measure the TLS stack, not the hub)."""

    host: str
    port: int
    path: str

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{self.path}"


def parse_target(url: str, allow_remote: bool = False) -> Target:
    """Split a ws:// URL; refuse non-loopback hosts unless ``allow_remote`` (load is not a probe)."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise ValueError(f"only ws:// URLs are supported, got {url!r}")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if not allow_remote:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise ValueError(f"{host} is not a loopback address; pass --allow-remote to load another machine")
    return Target(host, port, path)


@dataclass(frozen=True)
class BenchConfig:
    """One scenario against one URL. ``None`` fields take the scenario's default (``resolved``).

    ``duration`` is the hold time for idle, the sending time for ingress, and the length of
    the schedule for latency (``messages = rate * duration`` unless ``messages`` is set).
    """

    url: str
    scenario: str
    connections: int | None = None
    messages: int | None = None
    window: int | None = None
    rate: float | None = None
    duration: float | None = None
    payload: int = 60
    procs: int | None = None
    pid: int | None = None
    conc: int = 128
    drain: float = 5.0
    deadline: float = 120.0
    connect_timeout: float = 60.0
    hs_timeout: float = 10.0
    client_cpus: tuple[int, ...] = ()
    allow_remote: bool = False
    lat_cap: int = 20_000_000

    def resolved(self) -> BenchConfig:
        """A copy with every default filled in and the values checked."""
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r} (choose from {', '.join(SCENARIOS)})")
        values = {k: v for k, v in SCENARIO_DEFAULTS[self.scenario].items() if getattr(self, k) is None}
        cfg = replace(self, **values)
        if cfg.scenario == "latency" and cfg.messages is None:
            cfg = replace(cfg, messages=max(1, math.ceil((cfg.rate or 1.0) * (cfg.duration or 1.0))))
        if cfg.scenario != "latency":  # fanout is window-driven; latency is loadgen's fanout --rate
            cfg = replace(cfg, rate=None)
        if cfg.procs is None:
            cpus = len(cfg.client_cpus) if cfg.client_cpus else (os.cpu_count() or 1)
            cfg = replace(cfg, procs=max(1, cpus))
        if cfg.window is None:
            cfg = replace(cfg, window=1)
        if cfg.rate is None:
            cfg = replace(cfg, rate=0.0)
        if cfg.duration is None:
            cfg = replace(cfg, duration=0.0)
        if cfg.messages is None:
            cfg = replace(cfg, messages=0)
        for name in ("connections", "procs", "conc", "window"):
            if int(getattr(cfg, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if cfg.scenario in ("fanout", "latency", "ingress") and int(cfg.messages or 0) < 1:
            raise ValueError("messages must be >= 1")
        if cfg.scenario == "latency" and not cfg.rate:
            raise ValueError("latency needs --rate > 0")
        if (cfg.connections or 0) > 200_000:
            raise ValueError("more than 200,000 connections needs several source addresses; not supported")
        parse_target(cfg.url, cfg.allow_remote)
        return cfg

    def params(self) -> dict[str, Any]:
        """The parameters as stored in the JSON results."""
        out = asdict(self)
        out["client_cpus"] = list(self.client_cpus)
        return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``fasthub bench`` options (``fasthub.cli`` calls this for its ``bench`` subcommand)."""
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="[URL] SCENARIO",
        help=f"ws://host:port/ws (omit with --compare), then one or more of: {', '.join(SCENARIOS)}, all",
    )
    load = parser.add_argument_group("load (defaults per scenario, after the C loadgen's workloads)")
    load.add_argument(
        "-n",
        "--connections",
        type=int,
        help="idle: connections (10000); fanout/latency: subscribers (1000); "
        "ingress: connections, each alone in its room (100)",
    )
    load.add_argument(
        "-m",
        "--messages",
        type=int,
        help="fanout: messages (2000); ingress: cap on messages (2000000); latency: messages (default rate x duration)",
    )
    load.add_argument("-w", "--window", type=int, help="messages in flight: fanout (8), ingress per connection (16)")
    load.add_argument("--rate", type=float, help="latency: offered messages/s from the publisher (200)")
    load.add_argument(
        "-t", "--duration", type=float, help="idle: hold seconds (5); ingress: seconds (20); latency: seconds (5)"
    )
    load.add_argument("--payload", type=int, default=60, help="approx. payload JSON bytes (default 60)")
    run = parser.add_argument_group("client")
    run.add_argument("--procs", type=int, help="client processes (default: CPUs, or CPUs - 1 with --pin)")
    run.add_argument("--conc", type=int, default=128, help="handshakes in progress at once, in all (default 128)")
    run.add_argument("--pid", type=int, help="server PID: RSS per connection and server CPU from /proc")
    run.add_argument("--drain", type=float, default=5.0, help="stop waiting after S seconds without progress (5)")
    run.add_argument(
        "--deadline", type=float, default=120.0, help="hard limit per scenario in seconds, all phases (120)"
    )
    run.add_argument("--allow-remote", action="store_true", help="allow a non-loopback URL")
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write every figure, the parameters and versions here")
    out.add_argument("--no-progress", action="store_true", help="no live progress on stderr")
    cmp = parser.add_argument_group("compare (fasthub serve beside the peers in bench/peers/)")
    cmp.add_argument("--compare", action="store_true", help="start each server in turn and measure them all")
    cmp.add_argument("--peers-dir", default="bench/peers", help="peer servers, one <name>.py each (bench/peers)")
    cmp.add_argument("--servers", help="comma-separated subset of server names (fasthub and peers)")
    cmp.add_argument(
        "--pin", action="store_true", help="server on CPU 0 (taskset -c 0), clients on the other CPUs (>= 2 CPUs)"
    )
    cmp.add_argument(
        "--fasthub-arg",
        action="append",
        metavar="ARG",
        help="extra argument for fasthub serve (repeatable, e.g. --fasthub-arg=--rate-limit=0)",
    )


def configs_from_args(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """(URL or None, scenarios) from the positional ``[URL] SCENARIO...`` arguments."""
    targets = list(args.targets or [])
    url = None
    if targets and "://" in targets[0]:
        url = targets.pop(0)
    scenarios: list[str] = []
    for name in targets:
        if name == "all":
            scenarios.extend(s for s in SCENARIOS if s not in scenarios)
        elif name in SCENARIOS:
            if name not in scenarios:
                scenarios.append(name)
        else:
            raise ValueError(f"unknown scenario {name!r} (choose from {', '.join(SCENARIOS)}, all)")
    if not scenarios:
        raise ValueError("name at least one scenario: " + ", ".join(SCENARIOS))
    if url is None and not args.compare:
        raise ValueError("give a ws:// URL, or --compare to start the servers")
    if url is not None and args.compare:
        raise ValueError("--compare starts its own servers: leave the URL out")
    return url, scenarios


def config_for(args: argparse.Namespace, url: str, scenario: str, client_cpus: tuple[int, ...] = ()) -> BenchConfig:
    """The BenchConfig of one scenario from parsed arguments."""
    return BenchConfig(
        url=url,
        scenario=scenario,
        connections=args.connections,
        messages=args.messages,
        window=args.window,
        rate=args.rate,
        duration=args.duration,
        payload=args.payload,
        procs=args.procs,
        pid=args.pid,
        conc=args.conc,
        drain=args.drain,
        deadline=args.deadline,
        client_cpus=client_cpus,
        allow_remote=args.allow_remote,
    )
