"""``fasthub plan``: workers, cores, memory, bandwidth and Redis throughput for a workload.

The answer comes from unit costs measured on this machine, never from constants:

* ``--calibrate``: start ``fasthub serve`` here, run ``fasthub bench``'s idle, ingress and
  fanout scenarios against it, and fit the costs on its ``/ws/stats`` deltas (``costs.fit``);
  with ``--redis URL`` a second server on that Redis gives the broker's cost per publish.
  ``--save FILE`` keeps what was measured for later ``--from FILE``.
* ``--from FILE``: such a file, or a ``fasthub bench --json`` file of idle, ingress and fanout
  runs against a fasthub server (each run keeps the server's stats around it).
* ``--from URL``: a running hub's ``/ws/stats`` ``costs``, fitted over its recent traffic.

The model (``plan``): each inbound message costs ``cpu_per_message_in_s`` and reaches every
member of its room, ``room_size`` deliveries at ``Costs.delivery_cost(room_size)`` each (measured
by fixed-rate fanout runs of 10, 100, 1,000 and 10,000 members, interpolated between them); with several
workers each message also crosses Redis once per worker that holds members of the room.
Workers are sized so that each stays under ``1 - headroom`` of a core, and so that none holds
more connections than its open-file limit allows.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from .costs import TERMS as _TERMS
from .costs import fit

#: files a worker keeps for itself besides its connections (``server.run.FILE_RESERVE``)
FILE_RESERVE = 64


@dataclass
class Costs:
    """Unit costs of one worker process on the machine they were measured on."""

    cpu_per_connect_s: float
    cpu_per_message_in_s: float
    cpu_per_delivery_s: float
    cpu_idle_per_s: float = 0.0
    bytes_per_connection: float | None = None  # RSS growth per idle connection
    base_rss_bytes: float | None = None  # RSS of a worker with no connection
    frame_overhead_bytes: float | None = None  # a delivery's bytes beyond its payload (envelope, frame)
    cpu_per_broker_publish_s: float | None = None  # extra CPU per message crossing Redis, per node
    source: str = ""
    #: ``[[room size, cpu per delivery], ...]`` measured by fanout runs of different sizes: a
    #: delivery costs more in a big room (its members' objects no longer fit the CPU caches)
    delivery_by_room_size: list[list[float]] | None = None

    def delivery_cost(self, room_size: int) -> float:
        """The CPU of one delivery in a room of ``room_size``: interpolated in log(size) between
        the measured sizes, the nearest measured one outside them."""
        points = sorted(self.delivery_by_room_size or [])
        if not points:
            return self.cpu_per_delivery_s
        if room_size <= points[0][0]:
            return points[0][1]
        for (s0, c0), (s1, c1) in itertools.pairwise(points):
            if room_size <= s1:
                f = (math.log(room_size) - math.log(s0)) / (math.log(s1) - math.log(s0))
                return c0 + f * (c1 - c0)
        return points[-1][1]


@dataclass
class Workload:
    connections: int
    rooms: int
    room_size: int
    msgs_per_s: float
    msg_bytes: int = 300
    headroom: float = 0.3


def plan(costs: Costs, load: Workload, files_per_worker: int | None = None) -> dict[str, Any]:
    """What ``load`` needs with ``costs``; every figure with the assumption it used."""
    if files_per_worker is None:
        files_per_worker = _file_limit()
    deliveries = load.msgs_per_s * load.room_size
    per_delivery = costs.delivery_cost(load.room_size)
    usable = 1.0 - load.headroom
    by_files = math.ceil(load.connections / max(1, files_per_worker - FILE_RESERVE))
    workers = max(1, by_files)
    notes: list[str] = []
    broker_cost = costs.cpu_per_broker_publish_s
    for _ in range(20):  # the broker's share grows with the workers: iterate to a fixed point
        nodes_per_message = _nodes_holding(workers, load.room_size) if workers > 1 else 0.0
        cpu = (
            workers * costs.cpu_idle_per_s
            + load.msgs_per_s * costs.cpu_per_message_in_s
            + deliveries * per_delivery
            + load.msgs_per_s * nodes_per_message * (broker_cost or 0.0)
        )
        needed = max(1, by_files, math.ceil(cpu / usable))
        if needed == workers:
            break
        workers = needed
    if workers > 1 and broker_cost is None:
        notes.append("the broker's CPU cost is not measured (calibrate with --redis): not counted")
    per_conn = costs.bytes_per_connection
    base = costs.base_rss_bytes
    memory = None if per_conn is None or base is None else workers * base + load.connections * per_conn
    if memory is None:
        notes.append("memory per connection not measured (bench idle needs --pid): memory not planned")
    overhead = costs.frame_overhead_bytes or 0.0
    wire = load.msg_bytes + overhead
    nodes_per_message = _nodes_holding(workers, load.room_size) if workers > 1 else 0.0
    sizes = [size for size, _ in costs.delivery_by_room_size or []]
    if sizes and load.room_size > max(sizes):
        notes.append(f"rooms of {load.room_size} are bigger than the largest measured ({max(sizes):.0f}): "
                     "its delivery cost is used, which may be low")
    if load.rooms * load.room_size < load.connections:
        notes.append(f"{load.rooms} rooms of {load.room_size} hold fewer members than {load.connections} connections")
    return {
        "workers": workers,
        "cores": workers,
        "cpu_core_seconds_per_s": round(cpu, 3),
        "cpu_per_worker": round(cpu / workers, 3),
        "cpu_per_delivery_s": per_delivery,
        "headroom": load.headroom,
        "memory_bytes": None if memory is None else round(memory / usable),
        "memory_used_bytes": None if memory is None else round(memory),
        "connections_per_worker": math.ceil(load.connections / workers),
        "deliveries_per_s": round(deliveries),
        "bandwidth_out_bytes_per_s": round(deliveries * wire),
        "bandwidth_in_bytes_per_s": round(load.msgs_per_s * wire),
        "redis_publishes_per_s": round(load.msgs_per_s) if workers > 1 else 0,
        "redis_deliveries_per_s": round(load.msgs_per_s * nodes_per_message),
        "redis_bytes_per_s": round(load.msgs_per_s * (1 + nodes_per_message) * wire) if workers > 1 else 0,
        "bound_by": "files" if by_files >= workers and by_files > 1 else "cpu",
        "notes": notes,
        "costs": asdict(costs),
        "workload": asdict(load),
    }


def _nodes_holding(workers: int, room_size: int) -> float:
    """Expected workers holding at least one member of a room of ``room_size`` spread at random."""
    return workers * (1.0 - (1.0 - 1.0 / workers) ** room_size)


def _file_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 30 if hard == resource.RLIM_INFINITY else int(hard)


# -- costs from measurements ------------------------------------------------------------------------


def costs_from_bench(doc: dict[str, Any], source: str = "") -> Costs:
    """Costs from a ``fasthub bench --json`` document (or ``--save``'s) with server stats per run."""
    runs = [run for run in doc.get("runs", []) if _has_stats(run)]
    intervals: list[dict[str, float]] = []  # each run's counter and CPU deltas, in order
    per_conn: list[float] = []
    base_rss: list[float] = []
    overhead: list[float] = []
    for run in runs:
        before, after = run["server_stats"]["before"], run["server_stats"]["after"]
        intervals.append(
            {
                "cpu_s": after["cpu_s"] - before["cpu_s"],
                "seconds": after["uptime_s"] - before["uptime_s"],
                "connects": after["connections_opened"] - before["connections_opened"],
                "messages_in": after["messages_in"] - before["messages_in"],
                "deliveries": after["messages_out"] - before["messages_out"],
            }
        )
        result = run.get("result") or {}
        if run.get("scenario") == "idle":
            if result.get("rss_per_conn_bytes"):
                per_conn.append(float(result["rss_per_conn_bytes"]))
            base_rss.append(float(before["rss_bytes"]))
        if run.get("scenario") in _FANOUT and intervals[-1]["deliveries"]:
            payload = float((run.get("params") or {}).get("payload") or 0)
            overhead.append((after["bytes_out"] - before["bytes_out"]) / intervals[-1]["deliveries"] - payload)
    scenarios = {run.get("scenario") for run in runs}
    if scenarios & _FANOUT:
        scenarios.add("fanout")
    measured = _measured_phases(runs)
    missing = ({"idle", "fanout"} if measured is not None else {"idle", "ingress", "fanout"}) - scenarios
    if missing == {"ingress"} and sum(1 for r in runs if (r.get("result") or {}).get("server_cpu_s")) >= 2:
        raise ValueError(f"{source or 'the file'}: the rooms' measured CPU did not separate a message's cost from a "
                         "delivery's (too noisy: measure again on a quieter machine), and no ingress run can stand in")
    if missing:
        raise ValueError(f"{source or 'the file'} lacks runs with server stats of: {', '.join(sorted(missing))}")
    common: dict[str, Any] = {
        "bytes_per_connection": max(per_conn) if per_conn else None,
        "base_rss_bytes": min(base_rss) if base_rss else None,
        "frame_overhead_bytes": sum(overhead) / len(overhead) if overhead else None,
        "cpu_per_broker_publish_s": doc.get("broker_cost_per_publish_s"),
        "source": source,
    }
    if measured is not None:  # the server's CPU over the runs' measured phases (bench --pid)
        c_in, by_size = measured
        # a connect from the idle runs, all of it: handshake, hello, the join and the member
        # events it sends, the close (joins come in a burst there: not at a message's paced cost)
        connect = [i["cpu_s"] / i["connects"] for i, r in zip(intervals, runs, strict=True)
                   if r.get("scenario") == "idle" and i["connects"]]
        return Costs(sum(connect) / len(connect), c_in, by_size[0][1], delivery_by_room_size=by_size, **common)
    # no measured phases: the whole runs' CPU, fitted (the idle CPU of timers is below what
    # these runs can see: fitted without it)
    fitted = fit(intervals, terms=[t for t in _TERMS if t[0] != "cpu_idle_per_s"])
    per_connect, per_message, per_delivery = (
        fitted[name] for name in ("cpu_per_connect_s", "cpu_per_message_in_s", "cpu_per_delivery_s")
    )
    if per_connect is None or per_message is None or per_delivery is None:
        raise ValueError("the runs do not separate the costs (idle, ingress and fanout runs are needed)")
    by_size = []
    for interval, run in zip(intervals, runs, strict=True):
        if run.get("scenario") in _FANOUT and interval["deliveries"]:
            rest = interval["cpu_s"] - interval["connects"] * per_connect - interval["messages_in"] * per_message
            size = float((run.get("params") or {}).get("connections") or 0) + 1  # the publisher is a member
            by_size.append([size, max(0.0, rest / interval["deliveries"])])
    return Costs(per_connect, per_message, per_delivery, delivery_by_room_size=by_size if len(by_size) > 1 else None,
                 **common)


#: scenarios of one room and its members (``latency`` is fanout at a fixed rate)
_FANOUT = {"fanout", "latency"}


def _measured_phases(runs: list[dict[str, Any]]) -> tuple[float, list[list[float]]] | None:
    """Message and delivery costs from the server CPU of the runs' measured phases, which hold
    no connect or join (``server_cpu_s``: the run had ``--pid``); None when the runs lack it.

    Two rooms of different sizes (the two smallest; or an ingress run, a room of one, and the
    smallest room): ``messages * c_in + deliveries * d = cpu`` for each, solved for both with
    one ``d`` (a delivery costs the same in small rooms). Each other room then gives its own
    delivery cost.
    """
    rooms = sorted(
        (float((r.get("params") or {}).get("connections") or 0) + 1, float(r["result"]["sent"]),
         float(r["result"]["received"] + r["result"]["pub_echo"]), float(r["result"]["server_cpu_s"]))
        for r in runs
        if r.get("scenario") in _FANOUT and (r.get("result") or {}).get("server_cpu_s")
    )
    ingress = [r["result"] for r in runs if r.get("scenario") == "ingress" and (r.get("result") or {}).get(
        "server_cpu_s")]
    if len(rooms) < 2 and ingress and rooms:
        i = ingress[-1]
        rooms.insert(0, (1.0, float(i["received"]), float(i["received"]), float(i["server_cpu_s"])))
    if len(rooms) < 2:
        return None
    # the two smallest rooms first; when noise leaves that pair no positive answer, the
    # smallest with each bigger room in turn (a wider spread of fan-out, better conditioned)
    for j in range(1, len(rooms)):
        solved = _solve_pair(rooms[0], rooms[j])
        if solved is not None:
            break
    else:
        return None
    c_in, d = solved
    by_size = [[rooms[0][0], d], [rooms[j][0], d]]
    for k, (size, m, deliveries, cpu) in enumerate(rooms):
        if k not in (0, j) and deliveries:
            by_size.append([size, max(0.0, (cpu - m * c_in) / deliveries)])
    by_size.sort()
    return c_in, by_size


_Room = tuple[float, float, float, float]  # members, messages, deliveries, server CPU


def _solve_pair(a: _Room, b: _Room) -> tuple[float, float] | None:
    """``messages * c_in + deliveries * d = cpu`` for two rooms: (c_in, d), or None unless both > 0."""
    (_, m0, d0, cpu0), (_, m1, d1, cpu1) = a, b
    det = m0 * d1 - m1 * d0
    if det <= 0 or m0 <= 0 or m1 <= 0:
        return None
    c_in = (cpu0 * d1 - cpu1 * d0) / det
    d = (m0 * cpu1 - m1 * cpu0) / det
    return (c_in, d) if d > 0 and c_in > 0 else None


def _has_stats(run: dict[str, Any]) -> bool:
    stats = run.get("server_stats")
    return bool(stats and stats.get("before") and stats.get("after"))


def costs_from_url(url: str, token: str | None = None) -> Costs:
    """Costs from a running hub's ``/ws/stats`` (fitted over its recent sweeps)."""
    target = url if url.rstrip("/").endswith("/stats") else url.rstrip("/") + "/ws/stats"
    headers = {"authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(target, headers=headers), timeout=5) as r:
        stats = json.loads(r.read())
    c = stats.get("costs") or {}
    need = ("cpu_per_message_in_s", "cpu_per_delivery_s")
    if any(c.get(k) is None for k in need):
        raise ValueError(
            f"{target}: its traffic over the last {c.get('window_s', 0)} s did not separate the cost of a message "
            "from that of a delivery (it needs windows with different fan-out); use --calibrate instead"
        )
    per_conn = stats.get("memory_per_connection_bytes")
    rss = stats.get("rss_bytes")
    conns = stats.get("node", stats).get("connections", 0)
    return Costs(
        cpu_per_connect_s=float(c.get("cpu_per_connect_s") or 0.0),
        cpu_per_message_in_s=float(c["cpu_per_message_in_s"]),
        cpu_per_delivery_s=float(c["cpu_per_delivery_s"]),
        cpu_idle_per_s=float(c.get("cpu_idle_per_s") or 0.0),
        bytes_per_connection=float(per_conn) if per_conn else None,
        base_rss_bytes=float(rss - per_conn * conns) if rss and per_conn else None,
        cpu_per_broker_publish_s=c.get("cpu_per_broker_publish_s"),
        source=target,
    )


# -- calibration ------------------------------------------------------------------------------------

#: the calibration's scenarios: small enough for a laptop, long enough to dwarf the noise
#: Every message is its own read and its own write to each member (a fixed rate), as at
#: moderate load. Under heavy load the hub coalesces
#: (several messages per read and per write), so a plan from these costs errs on the safe side.
CALIBRATION = (
    ("idle", {"connections": 5000, "duration": 2.0}),
    # fan-out at fixed rates (``latency``) in rooms of four sizes, the loop idle between messages
    # as in real traffic: the two small rooms separate a message's cost from a delivery's
    ("latency", {"connections": 10, "rate": 2000.0, "duration": 5.0}),
    ("latency", {"connections": 100, "rate": 1000.0, "duration": 5.0}),
    ("latency", {"connections": 1000, "rate": 100.0, "duration": 5.0}),
    ("latency", {"connections": 10_000, "rate": 10.0, "duration": 6.0}),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _server(extra: list[str]) -> Iterator[tuple[int, int]]:
    port = _free_port()
    cmd = [sys.executable, "-m", "fasthub", "serve", "--port", str(port), "--log-level", "error",
           "--no-demo", "--rate-limit", "0", *extra]
    # with two CPUs or more: the server on the first, the load generator on the others, so
    # neither takes the other's core (what bench/loadgen does too)
    pin = _pinned()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                            preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if pin else None)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("fasthub serve did not start for the calibration") from None
                time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)  # a drain of nothing, then out
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _pinned() -> bool:
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


def client_cpus() -> tuple[int, ...]:
    """The CPUs the calibration's load generator uses (all but the server's, when pinned)."""
    return tuple(sorted(os.sched_getaffinity(0) - {0})) if _pinned() else ()


def _scaled(params: dict[str, Any], scale: float) -> dict[str, Any]:
    out = {k: (max(2, int(v * scale)) if k in ("connections", "messages") else v) for k, v in params.items()}
    if "duration" in out:
        out["duration"] = max(1.0, out["duration"] * scale)
    return out


def _bench(port: int, pid: int, quiet: bool, scale: float = 1.0) -> list[dict[str, Any]]:
    from .benchmark import BenchConfig, run_bench, server_stats

    url = f"ws://127.0.0.1:{port}/ws"
    records = []
    for scenario, full in CALIBRATION:
        params = _scaled(full, scale)
        cfg = BenchConfig(url, scenario, pid=pid, client_cpus=client_cpus(), **params)
        before = server_stats(url)
        if not quiet:
            print(f"fasthub plan: calibrating: {scenario} {params}", file=sys.stderr)
        result = run_bench(cfg)
        after = server_stats(url, settle=before)
        if not result.get("ok"):
            raise RuntimeError(f"calibration run {scenario} failed: {result.get('problems')}")
        records.append({"scenario": scenario, "params": cfg.resolved().params(), "result": result,
                        "server_stats": {"before": before, "after": after}})
    return records


def calibrate(redis: str | None = None, quiet: bool = False, scale: float = 1.0) -> dict[str, Any]:
    """Measure this machine: the runs (and, with ``redis``, the broker's cost per publish).

    ``scale`` shrinks the runs' connections, messages and durations (tests); noisier below 1."""
    with _server([]) as (port, pid):
        runs = _bench(port, pid, quiet, scale)
    doc: dict[str, Any] = {"tool": "fasthub plan --calibrate", "created": time.time(), "runs": runs}
    if redis is not None:
        with _server(["--redis", redis, "--redis-prefix", f"plan{os.getpid()}"]) as (port, pid):
            broker_runs = _bench(port, pid, quiet, scale)
        doc["broker_cost_per_publish_s"] = broker_cost(runs, broker_runs)
        doc["broker_runs"] = broker_runs
    return doc


def broker_cost(local: list[dict[str, Any]], brokered: list[dict[str, Any]]) -> float | None:
    """The broker's CPU per message: the same fixed-rate rooms with and without Redis, the
    measured phases' CPU difference over the messages sent (each crosses Redis once here)."""
    def phases(runs: list[dict[str, Any]]) -> dict[Any, tuple[float, float]]:
        return {
            (r["params"].get("connections"), r["params"].get("rate")): (
                float(r["result"]["server_cpu_s"]), float(r["result"]["sent"]))
            for r in runs
            if r.get("scenario") in _FANOUT and (r.get("result") or {}).get("server_cpu_s")
        }

    plain, with_redis = phases(local), phases(brokered)
    extra = sent = 0.0
    for key, (cpu, n) in with_redis.items():
        if key in plain and n:
            extra += cpu - plain[key][0] * n / max(1.0, plain[key][1])  # the local run's CPU for n messages
            sent += n
    return max(0.0, extra / sent) if sent else None


# -- the command ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connections", type=int, required=True, help="open connections at once")
    parser.add_argument("--rooms", type=int, required=True, help="rooms")
    parser.add_argument("--room-size", type=int, required=True, help="members per room")
    parser.add_argument("--msgs-per-s", type=float, required=True, help="room messages published per second, in all")
    parser.add_argument("--msg-bytes", type=int, default=300, help="payload bytes per message (default 300)")
    parser.add_argument("--headroom", type=float, default=0.3, help="fraction of each core kept free (default 0.3)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="source", metavar="URL|FILE",
                     help="a running hub (http://host:port) or a fasthub bench / plan --save JSON file")
    src.add_argument("--calibrate", action="store_true", help="measure this machine now (about a minute)")
    parser.add_argument("--redis", metavar="URL", help="with --calibrate: also measure the broker's cost")
    parser.add_argument("--save", metavar="FILE", help="with --calibrate: keep the measurements for --from FILE")
    parser.add_argument("--token", help="stats token of --from URL (or env FASTHUB_STATS_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def main(args: argparse.Namespace) -> int:
    if not 0 <= args.headroom < 1:
        print("fasthub plan: --headroom must be in [0, 1)", file=sys.stderr)
        return 2
    try:
        if args.calibrate:
            doc = calibrate(args.redis, quiet=args.json)
            if args.save:
                with open(args.save, "w") as f:
                    json.dump(doc, f, indent=1, default=str)
            costs = costs_from_bench(doc, "calibration on this machine")
        elif args.source.startswith(("http://", "https://")):
            costs = costs_from_url(args.source, args.token or os.environ.get("FASTHUB_STATS_TOKEN"))
        else:
            with open(args.source) as f:
                costs = costs_from_bench(json.load(f), args.source)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"fasthub plan: {exc}", file=sys.stderr)
        return 1
    load = Workload(args.connections, args.rooms, args.room_size, args.msgs_per_s, args.msg_bytes, args.headroom)
    result = plan(costs, load)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        _print(result)
    return 0


def _print(p: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    c = p["costs"]
    t = Table(title=f"fasthub plan (costs: {c['source']})", show_header=True)
    t.add_column("what")
    t.add_column("needed", justify="right")
    t.add_column("from")
    w = p["workload"]
    cpu = f"{p['cpu_core_seconds_per_s']} core-s/s of CPU at {1 - w['headroom']:.0%} per core"
    t.add_row("workers (= cores)", str(p["workers"]), f"{cpu}; bound by {p['bound_by']}")
    mem = p["memory_bytes"]
    t.add_row("memory", "?" if mem is None else _size(mem),
              "?" if mem is None else f"{_size(p['memory_used_bytes'])} used + headroom")
    t.add_row("bandwidth out", f"{_size(p['bandwidth_out_bytes_per_s'])}/s",
              f"{p['deliveries_per_s']:,} deliveries/s")
    t.add_row("bandwidth in", f"{_size(p['bandwidth_in_bytes_per_s'])}/s", f"{w['msgs_per_s']:,} messages/s")
    t.add_row("Redis", f"{p['redis_publishes_per_s']:,} publishes/s",
              f"{p['redis_deliveries_per_s']:,} messages/s to workers, {_size(p['redis_bytes_per_s'])}/s")
    t.add_row("connections per worker", f"{p['connections_per_worker']:,}", "")
    t.add_row("unit costs", "", (f"connect {c['cpu_per_connect_s'] * 1e6:.1f} us, message in "
                                 f"{c['cpu_per_message_in_s'] * 1e6:.2f} us, delivery "
                                 f"{c['cpu_per_delivery_s'] * 1e6:.3f} us"
                                 + ("" if c["bytes_per_connection"] is None
                                    else f", {c['bytes_per_connection']:.0f} B/connection")
                                 + ("" if c["cpu_per_broker_publish_s"] is None
                                    else f", broker {c['cpu_per_broker_publish_s'] * 1e6:.1f} us/message/worker")))
    console = Console()
    console.print(t)
    for note in p["notes"]:
        console.print(f"note: {note}")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
