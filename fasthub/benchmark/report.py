"""What the user sees: live progress on stderr, one summary table on stdout, a JSON file.

Progress is a rich live panel when stderr is a terminal and plain lines otherwise (CI logs,
pipes), so the table on stdout stays clean either way. The table puts correctness beside speed
on purpose: a row whose ``lost``/``gaps``/``dup_or_ooo`` is not zero is marked FAILED.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .sysinfo import versions

__all__ = [
    "PlainProgress",
    "RichProgress",
    "main_figure",
    "progress_for",
    "results_table",
    "write_json",
]


class _Rates:
    """Messages per second between two updates (what the eye wants while it runs)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.last_t = self.t0
        self.last_count = 0
        self.rate = 0.0

    def feed(self, count: int) -> float:
        now = time.monotonic()
        if now - self.last_t >= 0.5:
            self.rate = (count - self.last_count) / (now - self.last_t)
            self.last_t, self.last_count = now, count
        return self.rate


def _count(state: dict[str, Any]) -> int:
    return int(state.get("received", 0)) + int(state.get("pub_echo", 0))


class RichProgress:
    """A live panel on stderr: phase, connections, messages, rate."""

    def __init__(self, label: str, console: Console) -> None:
        self.label = label
        self.console = console
        self.rates = _Rates()
        self.live = Live(console=console, auto_refresh=False, transient=True)
        self.last_draw = 0.0

    def update(self, phase: str, state: dict[str, Any]) -> None:
        now = time.monotonic()
        rate = self.rates.feed(_count(state))
        if now - self.last_draw < 0.2:
            return
        self.last_draw = now
        grid = Table.grid(padding=(0, 2))
        for _ in range(6):
            grid.add_column()
        grid.add_row(
            Text(self.label, style="bold"),
            Text(phase, style="cyan"),
            f"conns {state.get('open', 0):,}/{state.get('connect_target', 0):,}"
            + (f" ([red]{state['failed']:,} failed[/])" if state.get("failed") else ""),
            f"sent {state.get('sent', 0):,}",
            f"received {_count(state):,}",
            f"{rate:,.0f}/s  {now - self.rates.t0:.1f} s",
        )
        self.live.update(grid, refresh=True)

    def __enter__(self) -> RichProgress:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()


class PlainProgress:
    """One line per phase change, then at most one a second (logs, pipes, CI)."""

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream
        self.rates = _Rates()
        self.phase = ""
        self.last = 0.0

    def update(self, phase: str, state: dict[str, Any]) -> None:
        now = time.monotonic()
        rate = self.rates.feed(_count(state))
        if phase == self.phase and now - self.last < 1.0:
            return
        self.phase, self.last = phase, now
        print(
            f"[{now - self.rates.t0:6.1f} s] {self.label} {phase}: conns {state.get('open', 0)}/"
            f"{state.get('connect_target', 0)} failed {state.get('failed', 0)} sent {state.get('sent', 0)} "
            f"received {_count(state)} ({rate:,.0f}/s)",
            file=self.stream,
            flush=True,
        )

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Silent:
    def update(self, phase: str, state: dict[str, Any]) -> None:
        pass


@contextmanager
def progress_for(label: str, enabled: bool = True) -> Iterator[RichProgress | PlainProgress | _Silent]:
    """The right progress display for stderr (rich on a TTY, plain lines otherwise, or none)."""
    if not enabled:
        yield _Silent()
    elif sys.stderr.isatty():
        with RichProgress(label, Console(stderr=True)) as prog:
            yield prog
    else:
        with PlainProgress(label, sys.stderr) as prog:
            yield prog


# -- the summary table ----------------------------------------------------------------------

# (figure, unit, higher is better) per scenario: what "x fasthub" compares
_MAIN = {
    "idle": ("rss_per_conn_bytes", "B/conn", False),
    "fanout": ("deliveries_per_s", "deliveries/s", True),
    "ingress": ("msgs_per_s", "msgs/s", True),
    "latency": ("lat_p99_ms", "ms p99", False),
}


def main_figure(result: dict[str, Any]) -> tuple[float | None, str, bool]:
    """(value, unit, higher is better) of the figure a scenario is judged by."""
    key, unit, higher = _MAIN.get(str(result.get("scenario")), ("", "", True))
    value = result.get(key)
    if result.get("scenario") == "idle" and value is None:  # no --pid: fall back to connect rate
        return result.get("handshakes_per_s"), "handshakes/s", True
    return (float(value) if isinstance(value, (int, float)) else None), unit, higher


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    if isinstance(value, (int, float)):
        return f"{value:,.0f}"
    return str(value)


def results_table(records: list[dict[str, Any]], compare: bool = False) -> Table:
    """One row per (server, scenario) run; with ``compare``, a ratio to fasthub's figure."""
    table = Table(title="fasthub bench", title_style="bold", header_style="bold")
    if compare:
        table.add_column("server")
    for name, justify in (
        ("scenario", "left"),
        ("n", "right"),
        ("figure", "right"),
        ("unit", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    if compare:
        table.add_column("x fasthub", justify="right")
    for name in ("conn/s", "p50 ms", "p99 ms", "p999 ms", "max ms", "lost/gaps/dup", "client CPU", "result"):
        table.add_column(name, justify="left" if name == "result" else "right")
    base: dict[str, float] = {}
    for rec in records:
        res = rec.get("result") or {}
        value, _, _ = main_figure(res)
        if rec.get("server") == "fasthub" and value:
            base[str(res.get("scenario"))] = value
    for rec in records:
        res = rec.get("result") or {}
        scenario = str(rec.get("scenario") or res.get("scenario") or "-")
        row: list[str | Text] = []
        if compare:
            row.append(str(rec.get("server")))
        if not res:
            row += [scenario, "-", "-", "-"]
            if compare:
                row.append("-")
            row += ["-"] * 7
            row.append(Text(str(rec.get("status", "not run")), style="red"))
            table.add_row(*row)
            continue
        value, unit, _higher = main_figure(res)
        row += [scenario, _fmt(res.get("n")), _fmt(value, 2 if unit.startswith("ms") else 0), unit]
        if compare:
            ref = base.get(scenario)
            row.append(f"{value / ref:.2f}" if value is not None and ref else "-")
        row += [
            _fmt(res.get("handshakes_per_s")),
            _fmt(res.get("lat_p50_ms"), 2),
            _fmt(res.get("lat_p99_ms"), 2),
            _fmt(res.get("lat_p999_ms"), 2),
            _fmt(res.get("lat_max_ms"), 1),
            "/".join(_fmt(res.get(k)) for k in ("lost", "gaps", "dup_or_ooo")) if "lost" in res else "-",
            f"{res['client_busy_pct']:.0f}%" if res.get("client_busy_pct") is not None else "-",
        ]
        problems = res.get("problems") or []
        if not res.get("ok"):
            row.append(Text("FAILED: " + ", ".join(problems), style="red"))
        elif res.get("notes"):
            row.append(Text("ok, client-bound", style="yellow"))
        else:
            row.append(Text("ok", style="green"))
        table.add_row(*row)
    return table


def write_json(path: str, records: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    """Every figure with its parameters, the command line and the versions, for later comparison."""
    doc: dict[str, Any] = {
        "tool": "fasthub bench",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "versions": versions(),
        "runs": records,
    }
    doc.update(extra or {})
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, default=str)
        f.write("\n")
