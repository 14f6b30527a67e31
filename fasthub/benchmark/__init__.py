"""``fasthub bench``: a load generator for capacity planning against any server of the protocol.

Scenarios (after the C loadgen in ``bench/loadgen``, same metric names):

* ``idle``: N connections join one room and wait; handshakes/s, server RSS per connection
  (``--pid``), then a probe must reach every member.
* ``fanout``: N subscribers and one publisher in one room, M messages with W in flight;
  deliveries/s and delivery latency, with ``lost``, ``gaps`` and ``dup_or_ooo``.
* ``ingress``: N connections each alone in its room, W echoes in flight each; messages/s.
* ``latency``: fanout at a fixed offered rate (no coordinated omission); latency percentiles.

``run_bench(BenchConfig(url, scenario, ...))`` is the programmatic entry; ``main(args)`` is the
CLI's. ``--compare`` starts fasthub and every ``bench/peers/*.py`` in turn (``run_compare``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from .options import SCENARIOS, BenchConfig, add_arguments, config_for, configs_from_args

if TYPE_CHECKING:
    from .runner import BenchError, run_bench

__all__ = ["SCENARIOS", "BenchConfig", "BenchError", "add_arguments", "main", "run_bench"]


def __getattr__(name: str) -> Any:
    """The runner loads on first use: ``fasthub serve`` builds the CLI parser from ``options``
    on every start and should not pay for the load generator's imports."""
    if name in ("run_bench", "BenchError"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: the ``/ws/stats`` fields a run keeps (``fasthub plan`` fits unit costs on their deltas)
STATS_KEYS = (
    "cpu_s", "connections", "connections_opened", "messages_in", "messages_out", "bytes_in", "bytes_out",
    "rss_bytes", "uptime_s", "compiled",
)


def stats_url(ws_url: str) -> str:
    """``/ws/stats`` beside a ``.../ws`` endpoint (``http`` for ``ws``)."""
    base = ws_url.split("?", 1)[0]
    base = "http" + base[2:] if base.startswith("ws") else base
    return (base[: -len("/ws")] if base.endswith("/ws") else base.rstrip("/")) + "/ws/stats"


def server_stats(ws_url: str, settle: dict[str, Any] | None = None, timeout: float = 5.0) -> dict[str, Any] | None:
    """The server's ``/ws/stats`` (token from ``FASTHUB_STATS_TOKEN``), or None if it has none.

    ``settle``: a snapshot from before a run; waits (at most ``timeout`` s) until the run's
    connections are gone again, so their closing is counted in this run.
    """
    import json
    import time
    import urllib.request

    token = os.environ.get("FASTHUB_STATS_TOKEN")
    request = urllib.request.Request(stats_url(ws_url), headers={"authorization": f"Bearer {token}"} if token else {})
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                data = json.loads(r.read())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or "cpu_s" not in data:
            return None
        node = data.get("node") or {}
        out = {key: node.get(key, data.get(key)) for key in STATS_KEYS}
        if settle is None or out["connections"] <= settle["connections"] or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


def main(args: argparse.Namespace) -> int:
    """Run what ``fasthub bench`` was asked; 0 when every result is ok, 1 if any failed, 2 on misuse."""
    from rich.console import Console

    from .compare import discover_servers, run_compare
    from .report import progress_for, results_table, write_json
    from .runner import run_bench

    try:
        url, scenarios = configs_from_args(args)
        if url is not None:
            for scenario in scenarios:
                config_for(args, url, scenario).resolved()
    except ValueError as exc:
        print(f"fasthub bench: {exc}", file=sys.stderr)
        return 2
    show = not args.no_progress

    def progress(label: str) -> Any:
        return progress_for(label, show)

    records: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    try:
        if url is not None:
            cpus = os.cpu_count() or 1
            client_cpus = tuple(range(1, cpus)) if args.pin and cpus >= 2 else ()
            for scenario in scenarios:
                cfg = config_for(args, url, scenario, client_cpus)
                before = server_stats(url)
                with progress(scenario) as prog:
                    result = run_bench(cfg, prog)
                record = {"server": None, "scenario": scenario, "params": cfg.resolved().params(), "result": result}
                if before is not None:  # a fasthub server: its counters and CPU around the run
                    record["server_stats"] = {"before": before, "after": server_stats(url, settle=before)}
                records.append(record)
        else:
            specs = discover_servers(args.peers_dir, tuple(args.fasthub_arg or ()))
            if args.servers:
                wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
                unknown = sorted(set(wanted) - {s.name for s in specs})
                if unknown:
                    print(f"fasthub bench: unknown server(s) {', '.join(unknown)}", file=sys.stderr)
                    return 2
                specs = [s for s in specs if s.name in wanted]
            base = config_for(args, "ws://127.0.0.1:1/ws", scenarios[0])
            records, servers = run_compare(base, scenarios, specs, pin=args.pin, progress=progress)
            extra = {"compare": True, "servers": servers, "pin": args.pin}
    except KeyboardInterrupt:
        print("fasthub bench: interrupted", file=sys.stderr)
        return 130
    # a pipe or a log file gets the whole table, not one squeezed to 80 columns
    console = Console() if sys.stdout.isatty() else Console(width=220)
    console.print(results_table(records, compare=url is None))
    if args.json:
        write_json(args.json, records, extra)
    return 0 if records and all((r.get("result") or {}).get("ok") for r in records) else 1
