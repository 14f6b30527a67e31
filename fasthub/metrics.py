"""Prometheus metrics of a hub, read from its counters at scrape time.

Nothing here runs per message: the hub and its core already count (``Hub.stats`` reads the same
fields), and ``snapshot`` copies them into one JSON-able dict when ``/metrics`` is scraped.
The exposition itself is prometheus-client's (``generate_latest`` over metric families).

Several processes on one port (``fasthub serve --workers N``) share nothing, and a scrape
reaches one of them. Like prometheus-client's multiprocess mode, each process then writes its
snapshot to a directory (``FASTHUB_METRICS_DIR``; the supervisor makes one) every second and at
each scrape, and the process that answers adds them up: counters and histograms over every
process that ever wrote (so they never go backwards when a worker is replaced), gauges over the
live ones. ``archive`` folds a dead worker's file into ``archive.json`` so the folder stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import orjson

from ._core import FLUSH_BUCKETS

if TYPE_CHECKING:
    from .hub import Hub

#: seconds between two loop-lag probes
LAG_INTERVAL = 0.25
#: upper bounds of the loop-lag histogram, seconds
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: seconds between two snapshots written to the metrics directory
WRITE_INTERVAL = 1.0
#: a process whose snapshot is older than this is not live (its gauges are left out)
STALE_AFTER = 5.0
#: the answer's content type (Prometheus text format 0.0.4)
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Cumulative-bucket counts of observations (Prometheus's histogram), without a lock."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket (not cumulative); last: +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        i = 0
        for bound in self.bounds:
            if value <= bound:
                break
            i += 1
        self.counts[i] += 1
        self.sum += value
        self.count += 1

    def snapshot(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}


class LoopMonitor:
    """Event-loop lag: how late a timer set ``interval`` ahead fires.

    A loop blocked by a long callback answers nothing meanwhile; the next probe measures how
    long. ``/healthz`` reports the worst lag of the last ``window`` seconds.
    """

    def __init__(self, interval: float = LAG_INTERVAL, window: float = 10.0) -> None:
        self.interval = interval
        self.window = window
        self.histogram = Histogram(LAG_BUCKETS)
        self.last = 0.0
        self._recent: list[tuple[float, float]] = []  # (loop time, lag) above 10 ms, last window
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.stop()
        self._loop = loop
        self._due = loop.time() + self.interval
        self._handle = loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        lag = max(0.0, now - self._due)
        self.last = lag
        self.histogram.observe(lag)
        if lag > 0.01:
            self._recent.append((now, lag))
        if self._recent and self._recent[0][0] < now - self.window:
            self._recent = [(t, v) for t, v in self._recent if t >= now - self.window]
        self._due = now + self.interval
        self._handle = loop.call_at(self._due, self._tick)

    def worst(self) -> float:
        """The largest lag seen in the last ``window`` seconds (the current one included)."""
        loop = self._loop
        if loop is None:
            return 0.0
        now = loop.time()
        # a probe that is overdue right now counts too: the loop is late at this very moment
        overdue = max(0.0, now - self._due) if self._handle is not None else 0.0
        recent = [v for t, v in self._recent if t >= now - self.window]
        return max([overdue, self.last, *recent])


# -- what is exported ---------------------------------------------------------------------------

#: name -> (type, help, label name or None); every family ``snapshot`` fills
FAMILIES: dict[str, tuple[str, str, str | None]] = {
    "fasthub_connections": ("gauge", "Open WebSocket connections.", None),
    "fasthub_users": ("gauge", "Users with at least one open connection (anonymous ones included).", None),
    "fasthub_rooms": ("gauge", "Rooms with at least one member here.", None),
    "fasthub_buffered_bytes": ("gauge", "Bytes queued for connections and not yet written to sockets.", None),
    "fasthub_resident_memory_bytes": ("gauge", "Resident set size of the process(es).", None),
    "fasthub_draining": ("gauge", "1 while the process drains (refuses new connections, closes open ones).", None),
    "fasthub_processes": ("gauge", "Live processes whose metrics are added up here.", None),
    "fasthub_broker_up": ("gauge", "1 when the broker (Redis) is connected; 1 for the in-process one.", None),
    "fasthub_broker_lag_seconds": (
        "gauge",
        "Round trip of a probe through the broker's subscription connection (worst process).",
        None,
    ),
    "fasthub_connections_opened_total": ("counter", "WebSocket connections opened.", None),
    "fasthub_connections_closed_total": ("counter", "WebSocket connections closed, by close code.", "code"),
    "fasthub_messages_received_total": ("counter", "Messages received from clients.", None),
    "fasthub_received_bytes_total": ("counter", "Payload bytes of the messages received from clients.", None),
    "fasthub_deliveries_total": ("counter", "Messages queued to a connection (one per member reached).", None),
    "fasthub_sent_bytes_total": ("counter", "Payload bytes of the deliveries.", None),
    "fasthub_dropped_messages_total": ("counter", "Deliveries dropped by the slow-consumer policy 'drop'.", None),
    "fasthub_rate_limited_messages_total": ("counter", "Client messages refused by the rate limits.", None),
    "fasthub_slow_consumer_closes_total": ("counter", "Connections closed over their send budget.", None),
    "fasthub_handshake_failures_total": ("counter", "Upgrade requests refused, by HTTP status.", "status"),
    "fasthub_history_reads_total": (
        "counter",
        "Joins and resumes that read a stream's history, by outcome (recovered or not).",
        "outcome",
    ),
    "fasthub_joins_unavailable_total": ("counter", "Joins refused: the room position could not be read.", None),
    "fasthub_sessions_saved_total": ("counter", "Closed sessions kept for a resume.", None),
    "fasthub_resumes_total": ("counter", "Session resume requests, by outcome.", "outcome"),
    "fasthub_broker_published_total": ("counter", "Messages handed to the broker for other nodes.", None),
    "fasthub_broker_received_total": ("counter", "Messages received from the broker.", None),
    "fasthub_broker_errors_total": ("counter", "Broker commands or messages that failed.", None),
    "fasthub_process_cpu_seconds_total": ("counter", "User and system CPU time of the process(es).", None),
    "fasthub_compressed_messages_total": (
        "counter",
        "Payloads compressed for permessage-deflate (once each per window size, not per member).",
        None,
    ),
    "fasthub_compression_bytes_total": ("counter", "Bytes of the compressed payloads, before and after.", "stage"),
    "fasthub_msgpack_converted_total": ("counter", "Payloads converted to MessagePack (once each).", None),
    "fasthub_event_loop_lag_seconds": ("histogram", "How late a timer set 0.25 s ahead fired.", None),
    "fasthub_flush_connections": (
        "histogram",
        "Connections written by one flush (one per loop tick) or one direct pass.",
        None,
    ),
    "fasthub_passes_cut_total": (
        "counter",
        "Passes over many members that stopped because a socket was ready; the rest left after it.",
        None,
    ),
}

#: gauges combined by their worst value across processes instead of their sum
_WORST = {"fasthub_broker_lag_seconds": max, "fasthub_broker_up": min}


def snapshot(hub: Hub) -> dict[str, Any]:
    """This process's metrics as ``{"pid", "at", "values": {name: value | {label: value} |
    histogram}}``: what ``render`` and the metrics directory take."""
    s = hub.stats()
    broker = s.get("broker") or {}
    fanout = hub.fanout
    lag = hub.loop_monitor
    values: dict[str, Any] = {
        "fasthub_connections": s["connections"],
        "fasthub_users": s["users"],
        "fasthub_rooms": s["rooms"],
        "fasthub_buffered_bytes": s["bytes_buffered"],
        "fasthub_resident_memory_bytes": s["rss_bytes"],
        "fasthub_draining": int(hub.draining),
        "fasthub_processes": 1,
        "fasthub_broker_up": int(broker.get("state", "up") == "up"),
        "fasthub_broker_lag_seconds": broker.get("lag_s") or 0.0,
        "fasthub_connections_opened_total": s["connections_opened"],
        "fasthub_connections_closed_total": {str(k): v for k, v in hub.close_codes.items()},
        "fasthub_messages_received_total": s["messages_in"],
        "fasthub_received_bytes_total": s["bytes_in"],
        "fasthub_deliveries_total": s["messages_out"],
        "fasthub_sent_bytes_total": s["bytes_out"],
        "fasthub_dropped_messages_total": s["dropped"],
        "fasthub_rate_limited_messages_total": s["rate_limited"],
        "fasthub_slow_consumer_closes_total": s["slow_consumer_closes"],
        "fasthub_handshake_failures_total": {str(k): v for k, v in hub.handshake_failures.items()},
        "fasthub_history_reads_total": {"recovered": s["recoveries"], "unrecovered": s["recoveries_failed"]},
        "fasthub_joins_unavailable_total": s["joins_unavailable"],
        "fasthub_sessions_saved_total": s["sessions_saved"],
        "fasthub_resumes_total": dict(hub.resumes),
        "fasthub_broker_published_total": broker.get("published", 0),
        "fasthub_broker_received_total": broker.get("received", 0),
        "fasthub_broker_errors_total": broker.get("broker_errors", 0),
        "fasthub_process_cpu_seconds_total": s["cpu_s"],
        "fasthub_compressed_messages_total": s["compression"]["compressed"],
        "fasthub_compression_bytes_total": {
            "before": s["compression"]["bytes_in"],
            "after": s["compression"]["bytes_out"],
        },
        "fasthub_msgpack_converted_total": s["compression"]["msgpack_converted"],
        "fasthub_event_loop_lag_seconds": lag.histogram.snapshot(),
        "fasthub_flush_connections": {
            "bounds": list(FLUSH_BUCKETS),
            "counts": list(fanout.flush_counts),
            "sum": float(fanout.flush_total),
        },
        "fasthub_passes_cut_total": fanout.cut,
    }
    return {"pid": os.getpid(), "at": time.time(), "values": values}


def combine(snapshots: Iterable[tuple[dict[str, Any], bool]]) -> dict[str, Any]:
    """Several processes' ``values`` as one: counters and histograms summed over all of them,
    gauges over the live ones (``(snapshot, live)`` pairs)."""
    out: dict[str, Any] = {}
    for snap, live in snapshots:
        for name, value in snap["values"].items():
            spec = FAMILIES.get(name)
            if spec is None:
                continue
            kind = spec[0]
            if kind == "gauge":
                if not live:
                    continue
                if name in out and name in _WORST:
                    out[name] = _WORST[name](out[name], value)
                else:
                    out[name] = out.get(name, 0) + value
            elif kind == "histogram":
                have = out.get(name)
                if have is None or have["bounds"] != value["bounds"]:
                    out[name] = {"bounds": value["bounds"], "counts": list(value["counts"]), "sum": value["sum"]}
                else:
                    have["counts"] = [a + b for a, b in zip(have["counts"], value["counts"], strict=True)]
                    have["sum"] += value["sum"]
            elif isinstance(value, dict):
                have = out.setdefault(name, {})
                for label, n in value.items():
                    have[label] = have.get(label, 0) + n
            else:
                out[name] = out.get(name, 0) + value
    return out


def render(values: dict[str, Any]) -> bytes:
    """The Prometheus text exposition of ``values`` (one process's, or ``combine``'s)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import Collector, CollectorRegistry

    class _Families(Collector):
        def collect(self) -> Iterator[Any]:
            for name, (kind, doc, label) in FAMILIES.items():
                value = values.get(name)
                if value is None:
                    continue
                if kind == "histogram":
                    cumulative, buckets = 0, []
                    for bound, n in zip([*value["bounds"], float("inf")], value["counts"], strict=True):
                        cumulative += n
                        buckets.append(("+Inf" if bound == float("inf") else _number(bound), cumulative))
                    yield HistogramMetricFamily(name, doc, buckets=buckets, sum_value=value["sum"])
                    continue
                cls: Any = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                if label is None:
                    yield cls(name, doc, value=value)
                else:
                    family = cls(name, doc, labels=[label])
                    for key in sorted(value):
                        family.add_metric([key], value[key])
                    yield family

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families())
    return generate_latest(registry)


def _number(bound: float) -> str:
    return str(int(bound)) if bound == int(bound) else repr(bound)


# -- several processes ----------------------------------------------------------------------------

ARCHIVE = "archive.json"


class MetricsDir:
    """The folder where the processes of one port leave their snapshots (see the module doc)."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(path, exist_ok=True)

    def write(self, snap: dict[str, Any]) -> None:
        pid = snap["pid"]
        tmp = os.path.join(self.path, f".{pid}.tmp")
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(snap))
        os.replace(tmp, os.path.join(self.path, f"{pid}.json"))

    def read(self) -> list[tuple[dict[str, Any], bool]]:
        """Every process's last snapshot and whether it is live; the archive (dead ones) last.

        The files are read before the archive: a worker archived meanwhile is then found in
        the archive's ``merged`` list and its file is not counted twice.
        """
        snaps: list[dict[str, Any]] = []
        for name in glob.glob(os.path.join(self.path, "[0-9]*.json")):
            with contextlib.suppress(OSError, ValueError), open(name, "rb") as f:
                snaps.append(orjson.loads(f.read()))
        archive = _read_archive(self.path)
        merged = set(archive["merged"])
        now = time.time()
        out = [(s, _alive(s["pid"]) and now - s["at"] < STALE_AFTER) for s in snaps if s["pid"] not in merged]
        if archive["values"]:
            out.append(({"pid": 0, "at": 0, "values": archive["values"]}, False))
        return out


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_archive(path: str) -> dict[str, Any]:
    try:
        with open(os.path.join(path, ARCHIVE), "rb") as f:
            data: dict[str, Any] = orjson.loads(f.read())
            return data
    except (OSError, ValueError):
        return {"merged": [], "values": {}}


def archive(path: str, pid: int) -> None:
    """Fold the snapshot of ``pid`` (a process that ended) into the archive, then remove it.

    Only the supervisor calls this, one worker at a time: the archive has one writer. Its
    counters and histograms stay in the sums; its gauges are gone.
    """
    name = os.path.join(path, f"{pid}.json")
    try:
        with open(name, "rb") as f:
            snap = orjson.loads(f.read())
    except (OSError, ValueError):
        return
    old = _read_archive(path)
    kept = {k: v for k, v in snap["values"].items() if FAMILIES.get(k, ("gauge",))[0] != "gauge"}
    values = combine([({"values": old["values"]}, False), ({"values": kept}, False)])
    tmp = os.path.join(path, ".archive.tmp")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps({"merged": [*old["merged"], pid][-10_000:], "values": values}))
    os.replace(tmp, os.path.join(path, ARCHIVE))
    with contextlib.suppress(OSError):
        os.unlink(name)


class Exporter:
    """``/metrics`` of one app: this process alone, or the sum of a metrics directory."""

    def __init__(self, hub: Hub, directory: str | None = None) -> None:
        self.hub = hub
        self.dir = MetricsDir(directory) if directory else None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write this process's snapshot now and every ``WRITE_INTERVAL`` (with a directory);
        the supervisor takes the first file as the sign that a new worker has started."""
        if self.dir is not None and self._timer is None:
            self._write(loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.dir is not None:
            with contextlib.suppress(OSError):
                self.dir.write(snapshot(self.hub))  # the last counts stay in the sums

    def _write(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.dir is not None
        with contextlib.suppress(OSError):
            self.dir.write(snapshot(self.hub))
        self._timer = loop.call_later(WRITE_INTERVAL, self._write, loop)

    def render(self) -> bytes:
        snap = snapshot(self.hub)
        if self.dir is None:
            return render(snap["values"])
        try:
            self.dir.write(snap)
            snaps = self.dir.read()
        except OSError:
            snaps = [(snap, True)]
        return render(combine(snaps))  # fasthub_processes: 1 per live snapshot, summed
