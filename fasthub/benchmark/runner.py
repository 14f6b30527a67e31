"""The coordinator: spreads connections over worker processes, runs the phases, sums the figures.

Phases follow the C loadgen (``bench/loadgen/loadgen.c``) and its metric names, so a
figure from here can sit beside one from there: connect (every connection joins its room on
open), then per scenario a hold, a probe barrier, the measured phase and a drain that ends on
completion, after ``drain`` seconds without progress, or at the deadline. Every wait has a
deadline; a worker that dies or stops answering ends the run with an ``error``.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from .options import BenchConfig, parse_target
from .stats import merge_ns, percentiles
from .sysinfo import cpu_busy, cpu_times, proc_cpu_s, proc_status_kb
from .worker import WorkerPlan

__all__ = ["BenchError", "Progress", "run_bench"]

# the counters every loadgen result ends with, in loadgen's order (plus ``misrouted``, ours)
_TRAILING_KEYS = (
    "hs_bad_status",
    "hs_bad_accept",
    "conn_refused",
    "hs_timeout",
    "server_closed",
    "reset_after_open",
    "pings_answered",
    "other_frames",
    "binary_frames",
    "masked_server_frames",
    "probe_frames",
    "misrouted",
)
# counters summed over the client processes
_SUM_KEYS = (
    "open",
    "subs_open",
    "failed",
    "probe_conns",
    "received",
    "pub_echo",
    "gaps",
    "dup_or_ooo",
    "lat_dropped",
    "sent",
    "connect_target",
    *_TRAILING_KEYS,
)


# client processes busier than this in the measured phase: the server was not the limit
CLIENT_BOUND_PCT = 85.0


class BenchError(RuntimeError):
    """A phase could not complete (worker died, deadline passed before any answer)."""


class Progress(Protocol):
    """Receives the live state; the CLI renders it (rich on a TTY, plain lines otherwise)."""

    def update(self, phase: str, state: dict[str, Any]) -> None: ...


class _NoProgress:
    def update(self, phase: str, state: dict[str, Any]) -> None:
        pass


def _sum(statuses: dict[int, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: sum(int(s.get(k, 0)) for s in statuses.values()) for k in _SUM_KEYS}
    out["t_last_recv"] = max((int(s.get("t_last_recv", 0)) for s in statuses.values()), default=0)
    out["t_last_data"] = max((int(s.get("t_last_data", 0)) for s in statuses.values()), default=0)
    out["cpu_s"] = sum(float(s.get("cpu_s", 0.0)) for s in statuses.values())
    return out


class Pool:
    """Worker processes and their pipes; every reply is routed by command name."""

    def __init__(self, plans: list[WorkerPlan], progress: Progress, deadline: float) -> None:
        self.progress = progress
        self.phase = "start"
        self.deadline = deadline  # time.monotonic() by which the scenario must be over
        self.target = sum(p.last - p.first + (1 if p.hosts_publisher else 0) for p in plans)
        self.pipes: dict[int, Connection] = {}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.status: dict[int, dict[str, Any]] = {}
        self.replies: dict[str, dict[int, Any]] = {}
        self._status_pending: set[int] = set()
        env = dict(os.environ)
        # the children import this very fasthub, installed or not
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        try:
            for plan in plans:
                ours, theirs = socket.socketpair()
                with ours, theirs:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "fasthub.benchmark._spawn", str(theirs.fileno())],
                        pass_fds=(theirs.fileno(),),
                        env=env,
                        stdin=subprocess.DEVNULL,
                    )
                    self.procs[plan.wid] = proc
                    self.pipes[plan.wid] = Connection(ours.detach())
                self.pipes[plan.wid].send(plan)
        except BaseException:
            self.close()
            raise
        self.wids = [plan.wid for plan in plans]
        self.plans = {plan.wid: plan for plan in plans}

    # -- plumbing ----------------------------------------------------------------------------

    def send(self, wid: int, cmd: str, arg: Any = None) -> None:
        try:
            self.pipes[wid].send((cmd, arg))
        except (OSError, ValueError) as exc:
            raise BenchError(f"client process {wid} is gone ({exc})") from None

    def broadcast(self, cmd: str, arg: Any = None, wids: list[int] | None = None) -> None:
        for wid in self.wids if wids is None else wids:
            self.send(wid, cmd, arg)

    def _pump(self, timeout: float) -> None:
        """Route the replies that arrive within ``timeout`` seconds."""
        by_conn = {pipe: wid for wid, pipe in self.pipes.items()}
        for conn in wait(list(by_conn), timeout):
            assert isinstance(conn, Connection)
            wid = by_conn[conn]
            try:
                while conn.poll():
                    cmd, data = conn.recv()
                    if isinstance(data, dict) and "error" in data:
                        raise BenchError(f"client process {wid}: {data['error']}")
                    if cmd == "status":
                        self.status[wid] = data
                        self._status_pending.discard(wid)
                    else:
                        self.replies.setdefault(cmd, {})[wid] = data
            except (EOFError, OSError):
                code = self.procs[wid].poll()
                raise BenchError(f"client process {wid} exited (code {code}) during {self.phase}") from None

    def request_status(self) -> None:
        for wid in self.wids:
            if wid not in self._status_pending:
                self._status_pending.add(wid)
                self.send(wid, "status")

    def total(self) -> dict[str, Any]:
        out = _sum(self.status)
        out["connect_target"] = self.target
        return out

    def bound(self, seconds: float) -> float:
        """``seconds``, cut to what is left before the scenario's deadline (at least 0.5 s)."""
        return max(0.5, min(seconds, self.deadline - time.monotonic()))

    def collect(self, cmd: str, timeout: float, wids: list[int] | None = None) -> dict[int, Any]:
        """Wait for ``cmd``'s reply from every worker in ``wids`` (progress keeps flowing)."""
        wids = self.wids if wids is None else wids
        end = time.monotonic() + timeout
        next_status = 0.0
        while True:
            got = self.replies.get(cmd, {})
            if all(w in got for w in wids):
                return {w: self.replies[cmd].pop(w) for w in wids}
            now = time.monotonic()
            if now >= end:
                raise BenchError(f"no {cmd!r} reply from every client process within {timeout:.0f} s")
            if now >= next_status:
                self.request_status()
                self.progress.update(self.phase, self.total())
                next_status = now + 0.25
            self._pump(min(0.05, end - now))

    def call(self, cmd: str, arg: Any, timeout: float, wids: list[int] | None = None) -> dict[int, Any]:
        self.broadcast(cmd, arg, wids)
        return self.collect(cmd, timeout, wids)

    def until(
        self,
        pred: Callable[[dict[str, Any]], bool],
        timeout: float,
        tick: Callable[[float], None] | None = None,
        every: float = 0.05,
    ) -> bool:
        """Poll the workers' status until ``pred(total)`` holds (True) or ``timeout`` (False)."""
        end = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if tick is not None:
                tick(now)
            self.request_status()
            # wait for this round's answers so the predicate sees one consistent snapshot
            round_end = now + 2.0
            while self._status_pending and time.monotonic() < round_end:
                self._pump(0.05)
            total = self.total()
            self.progress.update(self.phase, total)
            if pred(total):
                return True
            if time.monotonic() >= end:
                return False
            # then rest until the next round (replies to other commands are routed meanwhile)
            next_round = min(now + every, end)
            while (left := next_round - time.monotonic()) > 0:
                self._pump(left)

    def close(self) -> None:
        """Ask every worker to leave, then make sure it did (our own children, by handle)."""
        for wid in list(self.pipes):
            with contextlib.suppress(BenchError):
                self.send(wid, "close")
        end = time.monotonic() + 3.0
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.01, end - time.monotonic()))
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(2.0)
        for pipe in self.pipes.values():
            pipe.close()


def _plans(cfg: BenchConfig, room: str) -> list[WorkerPlan]:
    """Contiguous blocks of connection indices per worker; the publisher (index N) in worker 0."""
    target = parse_target(cfg.url, cfg.allow_remote)
    n = int(cfg.connections or 0)
    publisher = n if cfg.scenario in ("fanout", "latency") else None
    procs = max(1, min(int(cfg.procs or 1), n + (publisher is not None)))
    pad = "x" * max(0, cfg.payload - 50)  # {"seq":..,"t":..,"src":..,"pad":""} is ~50 bytes
    conc = max(1, cfg.conc // procs)
    cpus = cfg.client_cpus
    plans = []
    for wid in range(procs):
        first, last = n * wid // procs, n * (wid + 1) // procs
        plans.append(
            WorkerPlan(
                wid=wid,
                scenario=cfg.scenario,
                host=target.host,
                port=target.port,
                path=target.path,
                first=first,
                last=last,
                publisher=publisher,
                hosts_publisher=publisher is not None and wid == 0,
                room=room,
                pad=pad,
                conc=conc,
                hs_timeout=cfg.hs_timeout,
                cpus=(cpus[wid % len(cpus)],) if cpus else (),
                lat_cap=max(1, cfg.lat_cap // procs),
                seed=secrets.randbits(32),
            )
        )
    return plans


def _server_sample(pid: int | None) -> dict[str, Any]:
    return {
        "rss_kb": proc_status_kb(pid, "VmRSS"),
        "hwm_kb": proc_status_kb(pid, "VmHWM"),
        "cpu_s": proc_cpu_s(pid),
        "cpus": cpu_times(),
    }


def _connect(pool: Pool, cfg: BenchConfig, res: dict[str, Any]) -> None:
    pool.phase = "connect"
    limit = pool.bound(cfg.connect_timeout)
    replies = pool.call("connect", {"timeout": limit}, limit + cfg.hs_timeout + 15)
    t0 = min(int(r["connect_t0"]) for r in replies.values())
    t1 = max(int(r["connect_t1"]) for r in replies.values())
    total = _sum(replies)
    connect_s = max(1e-9, (t1 - t0) / 1e9)
    res["connected"] = total["open"]
    res["failed"] = total["failed"]
    res["connect_s"] = round(connect_s, 4)
    res["handshakes_per_s"] = round(total["open"] / connect_s, 1)
    if not total["open"]:
        _counters(res, total)
        why = ", ".join(f"{k}={total[k]}" for k in ("conn_refused", "hs_bad_status", "hs_bad_accept", "hs_timeout"))
        raise BenchError(f"no connection opened ({why})")
    if any(r.get("has_publisher") and not r.get("pub_open") for r in replies.values()):
        raise BenchError("the publisher's connection failed")


def _results(pool: Pool, messages: int) -> tuple[dict[str, Any], dict[int, Any]]:
    pool.phase = "results"
    replies = pool.call("results", {"messages": messages}, 60.0)
    return _sum(replies), replies


def _counters(res: dict[str, Any], total: dict[str, Any]) -> None:
    """The trailing counters every loadgen result carries (plus ``misrouted``, ours)."""
    for key in _TRAILING_KEYS:
        res[key] = total[key]


def _run_idle(pool: Pool, cfg: BenchConfig, res: dict[str, Any]) -> None:
    before = _server_sample(cfg.pid)
    _connect(pool, cfg, res)
    pool.phase = "hold"
    hold = float(cfg.duration or 0.0)
    pool.until(lambda _t: False, pool.bound(hold), every=0.25)
    after = _server_sample(cfg.pid)
    open_at_sample = pool.total()["open"]
    # membership check: one probe into the room from the first open connection
    pool.phase = "probe"
    sent = False
    for wid in pool.wids:
        if pool.call("probe", {}, 10.0, [wid])[wid]:
            sent = True
            break
    quiet = {"frames": -1, "since": time.monotonic()}

    def reached_or_quiet(t: dict[str, Any]) -> bool:
        now = time.monotonic()
        if t["probe_frames"] != quiet["frames"]:
            quiet["frames"], quiet["since"] = t["probe_frames"], now
        return bool(t["probe_conns"] >= t["open"] or now - quiet["since"] > 3.0)

    if sent:
        pool.until(reached_or_quiet, pool.bound(15.0))
    total, _ = _results(pool, 0)
    rss0, rss1 = before["rss_kb"], after["rss_kb"]
    res.update(
        {
            "hold_s": hold,
            "open_at_sample": open_at_sample,
            "rss_before_kb": rss0,
            "rss_after_kb": rss1,
            "hwm_before_kb": before["hwm_kb"],
            "hwm_after_kb": after["hwm_kb"],
            "rss_per_conn_bytes": (
                round((rss1 - rss0) * 1024 / open_at_sample)
                if rss0 is not None and rss1 is not None and open_at_sample
                else None
            ),
            "probe_members_reached": total["probe_conns"],
            "open_at_end": total["open"],
        }
    )
    _counters(res, total)
    res["timed_out"] = False


def _run_fanout(pool: Pool, cfg: BenchConfig, res: dict[str, Any]) -> None:
    _connect(pool, cfg, res)
    m = int(cfg.messages or 0)
    # barrier: the publisher probes every 250 ms until every open member has seen a probe
    pool.phase = "barrier"
    last_probe = [0.0]

    def probe(now: float) -> None:
        if now - last_probe[0] >= 0.25:
            last_probe[0] = now
            pool.send(0, "probe", {"publisher_only": True})

    barrier_ok = pool.until(lambda t: bool(t["open"] and t["probe_conns"] >= t["open"]), pool.bound(30.0), probe)
    members_joined = pool.total()["probe_conns"]
    # let the probes drain: 300 ms without any frame
    pool.phase = "settle"
    pool.until(lambda t: time.monotonic_ns() - t["t_last_recv"] > 300_000_000, pool.bound(10.0))
    pool.replies.pop("probe", None)
    start_total = pool.total()
    subs_open = int(start_total["subs_open"])
    server0 = _server_sample(cfg.pid)
    # the measured phase: the publisher sends by window or by clock, everyone counts
    pool.phase = "measure"
    rate = float(cfg.rate or 0.0)
    pool.call("start", {"messages": m, "window": cfg.window, "rate": rate}, 10.0, [0])
    progress = {"count": -1, "since": time.monotonic()}
    hard_end = pool.deadline

    def done(t: dict[str, Any]) -> bool:
        pub = pool.status.get(0, {})
        sent = int(pub.get("sent", 0))
        if pub.get("sending_done") and t["received"] >= subs_open * sent and t["pub_echo"] >= sent:
            return True
        now = time.monotonic()
        count = t["received"] + t["pub_echo"] + t["sent"]
        if count != progress["count"]:
            progress["count"], progress["since"] = count, now
        return now - progress["since"] > cfg.drain or now >= hard_end

    pool.until(done, pool.bound(cfg.deadline) + 1.0)
    server1 = _server_sample(cfg.pid)
    pub = pool.status.get(0, {})
    sent = int(pub.get("sent", 0))
    timed_out = not (pub.get("sending_done") and pool.total()["received"] >= subs_open * sent)
    total, replies = _results(pool, sent)
    t_first = int(replies[0]["t_first_send"])
    t_last = int(total["t_last_data"])
    duration = max(1e-9, (t_last - t_first) / 1e9) if t_first and t_last > t_first else 1e-9
    expected = subs_open * m
    res.update(
        {
            "m": m,
            "window": cfg.window if not rate else None,
            "rate": rate,
            "scope": "own",
            "payload_bytes": cfg.payload,
            "barrier_ok": barrier_ok,
            "members_joined": members_joined,
            "subs_open_at_start": subs_open,
            "subs_open_at_end": total["subs_open"],
            "sent": sent,
            "expected": expected,
            "received": total["received"],
            "lost": expected - total["received"],
            "pub_echo": total["pub_echo"],
            "dup_or_ooo": total["dup_or_ooo"],
            "gaps": total["gaps"],
            "subs_incomplete": sum(int(r.get("incomplete", 0)) for r in replies.values()),
            "duration_s": round(duration, 4),
            "send_span_s": round((int(replies[0]["t_last_send"]) - t_first) / 1e9, 4) if t_first else 0.0,
            "deliveries_per_s": round(total["received"] / duration, 1),
            "msgs_per_s": round(total["pub_echo"] / duration, 2),
        }
    )
    if rate:
        res["offered_rate"] = rate
    _server_figures(res, server0, server1, cfg.pid)
    _client_cpu(res, start_total["cpu_s"], total["cpu_s"], duration, len(pool.wids))
    res.update(percentiles("lat", merge_ns(r["lat"] for r in replies.values())))
    res.update(percentiles("pub_lat", merge_ns(r["pub_lat"] for r in replies.values())))
    res["lat_dropped"] = total["lat_dropped"]
    _counters(res, total)
    res["timed_out"] = timed_out


def _run_ingress(pool: Pool, cfg: BenchConfig, res: dict[str, Any]) -> None:
    _connect(pool, cfg, res)
    n = int(cfg.connections or 1)
    m = int(cfg.messages or 0)
    # a short settle so the joins are in before the first echo is expected
    pool.phase = "settle"
    pool.until(lambda t: time.monotonic_ns() - t["t_last_recv"] > 300_000_000, pool.bound(5.0))
    start_total = pool.total()
    server0 = _server_sample(cfg.pid)
    pool.phase = "measure"
    duration_limit = float(cfg.duration or 0.0)
    deadline_ns = time.monotonic_ns() + int(duration_limit * 1e9)
    for wid, plan in pool.plans.items():
        cap = math.ceil(m * (plan.last - plan.first) / n)
        pool.send(wid, "start", {"messages": cap, "window": cfg.window, "deadline_ns": deadline_ns})
    starts = pool.collect("start", 10.0)
    t0 = min(int(s["t_start"]) for s in starts.values())
    progress = {"count": -1, "since": time.monotonic()}
    hard_end = pool.deadline

    def done(t: dict[str, Any]) -> bool:
        all_done = all(s.get("sending_done") for s in pool.status.values())
        if all_done and t["received"] >= t["sent"]:
            return True
        now = time.monotonic()
        count = t["received"] + t["sent"]
        if count != progress["count"]:
            progress["count"], progress["since"] = count, now
        return now - progress["since"] > cfg.drain or now >= hard_end

    pool.until(done, pool.bound(duration_limit + cfg.drain + 30) + 1.0)
    timed_out = not (all(s.get("sending_done") for s in pool.status.values()))
    server1 = _server_sample(cfg.pid)
    pool.call("stop", None, 10.0)
    total, replies = _results(pool, 0)
    t_last = int(total["t_last_data"])
    duration = max(1e-9, (t_last - t0) / 1e9) if t_last > t0 else 1e-9
    if total["received"] < total["sent"]:
        timed_out = True
    res.update(
        {
            "window": cfg.window,
            "max_msgs": m,
            "duration_limit_s": duration_limit,
            "payload_bytes": cfg.payload,
            "sent": total["sent"],
            "received": total["received"],
            "lost": total["sent"] - total["received"],
            "dup_or_ooo": total["dup_or_ooo"],
            "gaps": total["gaps"],
            "duration_s": round(duration, 4),
            "msgs_per_s": round(total["received"] / duration, 1),
        }
    )
    _server_figures(res, server0, server1, cfg.pid)
    _client_cpu(res, start_total["cpu_s"], total["cpu_s"], duration, len(pool.wids))
    res.update(percentiles("lat", merge_ns(r["lat"] for r in replies.values())))
    res["lat_dropped"] = total["lat_dropped"]
    _counters(res, total)
    res["timed_out"] = timed_out


def _server_figures(res: dict[str, Any], s0: dict[str, Any], s1: dict[str, Any], pid: int | None) -> None:
    if pid:
        cpu0, cpu1 = s0["cpu_s"], s1["cpu_s"]
        res["server_cpu_s"] = round(cpu1 - cpu0, 4) if cpu0 is not None and cpu1 is not None else None
        res["rss_start_kb"] = s0["rss_kb"]
        res["rss_end_kb"] = s1["rss_kb"]
        res["hwm_end_kb"] = s1["hwm_kb"]
    res.update(cpu_busy(s0["cpus"], s1["cpus"]))


def _client_cpu(res: dict[str, Any], cpu0: float, cpu1: float, duration: float, procs: int) -> None:
    """Client CPU in the measured phase; near 100 % busy means the figure is a lower bound."""
    res["loadgen_cpu_s"] = round(cpu1 - cpu0, 2)
    res["client_busy_pct"] = round(100.0 * (cpu1 - cpu0) / (duration * procs), 1) if duration > 1e-3 else None


def verdict(res: dict[str, Any]) -> list[str]:
    """Why a result is not to be trusted (empty when it is): loss, reordering, failures."""
    problems = []
    if "error" in res:
        problems.append(str(res["error"]))
    for key in ("lost", "gaps", "dup_or_ooo", "misrouted", "failed", "server_closed", "reset_after_open"):
        if res.get(key):
            problems.append(f"{key}={res[key]}")
    if res.get("timed_out"):
        problems.append("timed out")
    if res.get("barrier_ok") is False:
        problems.append("barrier failed")
    reached = res.get("probe_members_reached")
    if res.get("scenario") == "idle" and reached is not None and reached < res.get("open_at_sample", 0):
        problems.append(f"probe reached {res['probe_members_reached']} of {res['open_at_sample']}")
    if res.get("connected") == 0:
        problems.append("no connection")
    return problems


def run_bench(cfg: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run one scenario and return every figure as a flat dict (loadgen's names where shared).

    ``ok`` is False when anything was lost, reordered or failed: ``problems`` says what.
    Errors in a phase (a dead worker, a deadline) are reported in ``error``, not raised.
    """
    cfg = cfg.resolved()
    prog: Progress = progress if progress is not None else _NoProgress()
    room = "bench-" + secrets.token_hex(4)
    res: dict[str, Any] = {
        "scenario": cfg.scenario,
        "mode": "fanout" if cfg.scenario == "latency" else cfg.scenario,
        "url": parse_target(cfg.url, cfg.allow_remote).url,
        "n": cfg.connections,
    }
    t_run0 = time.monotonic()
    plans = _plans(cfg, room)
    res["client_procs"] = len(plans)
    pool = Pool(plans, prog, t_run0 + cfg.deadline)
    try:
        pool.phase = "spawn"
        pool.collect("ready", pool.bound(60.0))
        if cfg.scenario == "idle":
            _run_idle(pool, cfg, res)
        elif cfg.scenario in ("fanout", "latency"):
            _run_fanout(pool, cfg, res)
        else:
            _run_ingress(pool, cfg, res)
    except BenchError as exc:
        res["error"] = str(exc)
    finally:
        pool.phase = "close"
        pool.close()
    res["total_s"] = round(time.monotonic() - t_run0, 3)
    problems = verdict(res)
    res["ok"] = not problems
    res["problems"] = problems
    busy = res.get("client_busy_pct")
    res["notes"] = (
        [f"client-bound ({busy:.0f}% busy): the figure is a lower bound; add CPUs or --procs"]
        if busy is not None and busy > CLIENT_BOUND_PCT
        else []
    )
    return res
