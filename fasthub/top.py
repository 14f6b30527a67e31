"""``fasthub top URL``: a server's stats as a refreshing table in the terminal.

Polls the stats endpoint (``/ws/stats``) every ``--interval`` seconds with the standard library's
HTTP client and shows, per node and for the cluster (or for the one process that answers), the
figures of the ``/ws/dashboard`` page: connections, messages in and out per second, bytes
buffered, slow-consumer closes (cumulative) and memory per connection, each with a sparkline of
its last ``SPARK_WIDTH`` samples. ``--once`` prints one table and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

BLOCKS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 12  # samples per sparkline
TOTAL = "total"


class TopError(Exception):
    """A poll that failed; the message is one line for the user."""


def sparkline(values: Iterable[float | None], width: int = SPARK_WIDTH) -> str:
    """The last ``width`` values as blocks from ``▁`` (the lower bound) to ``█`` (the largest).

    The lower bound is 0, or the smallest value when one is negative; a missing value (None) is
    a space. All values equal to the bound (e.g. all 0) give a row of ``▁``.
    """
    recent = list(values)[-width:] if width > 0 else []
    present = [v for v in recent if v is not None]
    if not present:
        return " " * len(recent)
    low = min(0.0, min(present))
    high = max(present)
    span = high - low
    out = []
    for v in recent:
        if v is None:
            out.append(" ")
        elif span <= 0:
            out.append(BLOCKS[0])
        else:
            out.append(BLOCKS[min(len(BLOCKS) - 1, int((v - low) / span * (len(BLOCKS) - 1) + 0.5))])
    return "".join(out)


def stats_url(url: str) -> str:
    """The stats endpoint for ``url``: ``http://host:port`` (``/ws/stats`` is added), a full
    stats URL (kept as is), ``host:port`` (http) or a ``ws://``/``wss://`` URL of the server."""
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise TopError(f"{url}: expected http://host:port or the stats URL (http://host:port/ws/stats)")
    path = parts.path if parts.path not in ("", "/") else "/ws/stats"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def fetch(url: str, token: str | None, timeout: float = 5.0) -> dict[str, Any]:
    """One answer of the stats endpoint; ``TopError`` with a one-line reason otherwise."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            why = "the token was refused" if token else "the stats need a token (--token or FASTHUB_STATS_TOKEN)"
            raise TopError(f"{url}: 401 Unauthorized: {why}") from None
        raise TopError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise TopError(f"cannot reach {url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # a timeout, a reset, a malformed URL
        raise TopError(f"cannot reach {url}: {exc}") from None
    try:
        stats = json.loads(body)
    except ValueError:
        start = body[:40].decode("utf-8", "replace").split("\n")[0]
        raise TopError(f"{url} did not answer with JSON (it starts with {start!r}): is it the stats URL?") from None
    if not isinstance(stats, dict) or "connections" not in stats:
        raise TopError(f"{url} answered JSON without stats (no 'connections'): is it the stats URL?")
    return stats


# -- the figures ---------------------------------------------------------------------------------


def _count(v: float) -> str:
    return f"{round(v):,}"


def _rate(v: float) -> str:
    return f"{v:,.1f}"


def format_bytes(v: float) -> str:
    """``v`` bytes in B, KiB, MiB... (one decimal from KiB on, none from 100 of a unit)."""
    x, unit = abs(v), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if x < 1024 or unit == "TiB":
            break
        x /= 1024
    sign = "-" if v < 0 else ""
    return f"{sign}{round(x)} {unit}" if unit == "B" or x >= 100 else f"{sign}{x:.1f} {unit}"


#: (stats key, column heading, format, how the cluster total is made: "sum" or "per-connection")
METRICS: list[tuple[str, str, Callable[[float], str], str]] = [
    ("connections", "connections", _count, "sum"),
    ("messages_in_per_s", "msg in/s", _rate, "sum"),
    ("messages_out_per_s", "msg out/s", _rate, "sum"),
    ("bytes_buffered", "buffered", format_bytes, "sum"),
    ("slow_consumer_closes", "slow closes", _count, "sum"),
    ("memory_per_connection_bytes", "mem/conn", format_bytes, "per-connection"),
]
Row = tuple[str, str, dict[str, float | None]]  # (id, label, values)


def _number(v: Any) -> float | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def rows_of(stats: dict[str, Any]) -> list[Row]:
    """One row per live node and the cluster total when the answer has an up ``cluster``, else
    one row for the process that answered. The total sums the nodes, except memory per
    connection: the nodes' figures weighted by their connections."""
    cluster = stats.get("cluster")
    nodes = cluster.get("nodes") if isinstance(cluster, dict) and cluster.get("state") == "up" else None
    if not nodes:
        label = "process" if cluster is None else f"process (cluster {cluster.get('state')})"
        return [("process", label, {key: _number(stats.get(key)) for key, *_ in METRICS})]
    here = (stats.get("broker") or {}).get("node_id")
    rows: list[Row] = []
    for node in nodes:
        label = f"{node.get('host')}:{node.get('pid')} {str(node.get('node'))[:6]}"
        if node.get("node") == here:
            label += " *"
        rows.append((f"node:{node.get('node')}", label, {key: _number(node.get(key)) for key, *_ in METRICS}))
    total: dict[str, float | None] = {}
    for key, _, _, how in METRICS:
        have = [r[2] for r in rows if r[2][key] is not None]
        if not have:
            total[key] = None
        elif how == "sum":
            total[key] = sum(v[key] or 0 for v in have)
        else:
            conns = sum(v["connections"] or 0 for v in have)
            total[key] = sum((v[key] or 0) * (v["connections"] or 0) for v in have) / conns if conns else None
    rows.append((TOTAL, "cluster total", total))
    return rows


class History:
    """The last ``SPARK_WIDTH`` values of each (row, figure)."""

    def __init__(self, width: int = SPARK_WIDTH) -> None:
        self.width = width
        self.samples = 0
        self.values: dict[tuple[str, str], deque[float | None]] = {}

    def add(self, rows: Sequence[Row]) -> None:
        self.samples += 1
        seen = set()
        for row_id, _, values in rows:
            for key, *_ in METRICS:
                series = self.values.setdefault((row_id, key), deque([None] * (self.samples - 1), self.width))
                series.append(values[key])
                seen.add((row_id, key))
        for gone in set(self.values) - seen:  # a node that left: a gap
            self.values[gone].append(None)

    def spark(self, row_id: str, key: str) -> str:
        return sparkline(self.values.get((row_id, key), ()), self.width)


def render(url: str, stats: dict[str, Any], rows: Sequence[Row], history: History, note: str = "") -> Table:
    cluster = isinstance(stats.get("cluster"), dict) and stats["cluster"].get("state") == "up"
    scope = f"{len(rows) - 1} nodes" if cluster else "one process"
    title = f"fasthub top · {url} · {scope} · {time.strftime('%H:%M:%S')}"
    caption = "slow closes: cumulative; mem/conn: RSS growth / connections"
    if cluster:
        caption += "; * the node that answered"
    if note:
        caption = note
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left", expand=False)
    table.add_column("node" if cluster else "", no_wrap=True)
    for _, heading, _, _ in METRICS:
        table.add_column(heading, justify="right", no_wrap=True)
    for row_id, label, values in rows:
        cells = []
        for key, _, fmt, _ in METRICS:
            v = values[key]
            cells.append(Text(f"{'-' if v is None else fmt(v)}\n{history.spark(row_id, key)}"))
        style = "bold" if row_id == TOTAL else None
        table.add_row(label, *cells, style=style, end_section=row_id != TOTAL)
    return table


def main(args: argparse.Namespace) -> int:
    """``fasthub top``: exit 0 (``--once`` printed, or Ctrl-C), 1 when a first poll fails."""
    token = args.token or os.environ.get("FASTHUB_STATS_TOKEN") or None
    console = Console() if sys.stdout.isatty() else Console(width=160)
    history = History()
    try:
        url = stats_url(args.url)
        stats = fetch(url, token)
    except TopError as exc:
        print(f"fasthub top: {exc}", file=sys.stderr)
        return 1
    rows = rows_of(stats)
    history.add(rows)
    if args.once:
        console.print(render(url, stats, rows, history))
        return 0
    try:
        with Live(render(url, stats, rows, history), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(args.interval)
                note = ""
                try:
                    stats = fetch(url, token)
                    rows = rows_of(stats)
                    history.add(rows)
                except TopError as exc:  # keep polling: the server may be restarting
                    note = f"last poll failed: {exc}"
                live.update(render(url, stats, rows, history, note), refresh=True)
    except KeyboardInterrupt:
        return 0
