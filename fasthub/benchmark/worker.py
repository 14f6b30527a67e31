"""One client process: a uvloop event loop that owns a share of the connections.

Why processes: one Python process parses a few hundred thousand frames a second, so a fast
server needs several to be measured rather than the client. The coordinator drives every worker
through a pipe with small commands; each command gets exactly one reply ``(command, data)``,
possibly later (``connect`` replies when the phase ends), while ``status`` is answered at once
so progress keeps flowing. All processes read the same CLOCK_MONOTONIC (``time.monotonic_ns``),
so a timestamp written by the publisher's process is comparable with a receive time read in
another.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .wsclient import ECHO, OPEN, PUBLISHER, SUBSCRIBER, Client, Tally, handshake_request, room_message

__all__ = ["WorkerPlan", "worker_main"]


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker opens and how: global indices ``[first, last)`` plus maybe the publisher."""

    wid: int
    scenario: str
    host: str
    port: int
    path: str
    first: int
    last: int
    publisher: int | None  # global index of the publisher (fanout/latency), for every worker
    hosts_publisher: bool  # whether this worker opens the publisher's connection
    room: str  # fanout/idle room; ingress rooms are f"{room}-{idx}"
    pad: str
    conc: int
    hs_timeout: float
    cpus: tuple[int, ...] = ()
    lat_cap: int = 20_000_000
    seed: int = field(default=0)


def _raise_nofile(need: int) -> None:
    """Lift the soft open-files limit towards the hard one: 10,000 sockets need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need + 64
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(hard, want)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


class Worker:
    """The state of one client process and its command handlers."""

    def __init__(self, pipe: Connection, plan: WorkerPlan) -> None:
        self.pipe = pipe
        self.plan = plan
        self.loop = asyncio.get_running_loop()
        self.tally = Tally(plan.lat_cap)
        self.rng = random.Random(plan.seed)
        self.clients: list[Client] = []
        self.pub: Client | None = None
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.tasks: set[asyncio.Task[None]] = set()
        # sending state (publisher or echo clients)
        self.measuring = False
        self.sending_done = False
        self.sent = 0
        self.max_msgs = 0
        self.window = 1
        self.rate = 0.0
        self.t_start = 0
        self.t_first_send = 0
        self.t_last_send = 0
        self.deadline_ns = 0
        self.connect_t0 = 0
        self.connect_t1 = 0
        self.connect_target = 0

    # -- pipe --------------------------------------------------------------------------------

    def reply(self, cmd: str, data: Any) -> None:
        self.pipe.send((cmd, data))

    def on_pipe(self) -> None:
        while True:
            try:
                if not self.pipe.poll():
                    return
                cmd, arg = self.pipe.recv()
            except (EOFError, OSError):  # coordinator gone: stop, never linger
                self.finish()
                return
            handler = getattr(self, "cmd_" + cmd, None)
            if handler is None:
                self.reply(cmd, {"error": f"unknown command {cmd!r}"})
                continue
            try:
                handler(arg)
            except Exception as exc:  # a bug here must end the run at once, not time it out
                self.reply(cmd, {"error": f"{cmd}: {type(exc).__name__}: {exc}"})

    def finish(self) -> None:
        for client in self.clients:
            client.close()
        if not self.done.done():
            self.done.set_result(None)

    def spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- commands ----------------------------------------------------------------------------

    def cmd_status(self, _arg: Any) -> None:
        self.reply("status", self.status())

    def cmd_connect(self, arg: dict[str, Any]) -> None:
        self.spawn(self._connect(float(arg["timeout"])))

    async def _connect(self, limit_s: float) -> None:
        try:
            await self.connect_all(limit_s)
        except Exception as exc:
            self.reply("connect", {"error": f"connect: {type(exc).__name__}: {exc}"})
        else:
            self.reply("connect", self.status())

    def cmd_probe(self, arg: dict[str, Any]) -> None:
        """Send one probe (seq -1) into the room from the publisher or the first open client."""
        sender = self.pub if self.pub is not None and self.pub.state == OPEN else None
        if sender is None and not arg.get("publisher_only"):
            sender = next((c for c in self.clients if c.state == OPEN), None)
        if sender is not None:
            sender.send_text(room_message(self.plan.room, -1, time.monotonic_ns(), sender.idx, ""))
        self.reply("probe", sender is not None)

    def cmd_start(self, arg: dict[str, Any]) -> None:
        """Begin the measured phase: the publisher's window or clock, or every echo window."""
        self.max_msgs = int(arg["messages"])
        self.window = max(1, int(arg.get("window", 1)))
        self.rate = float(arg.get("rate", 0.0))
        self.deadline_ns = int(arg.get("deadline_ns", 0))
        self.measuring = True
        self.t_start = time.monotonic_ns()
        if self.plan.scenario == "ingress":
            if self.deadline_ns:
                delay = max(0.0, (self.deadline_ns - self.t_start) / 1e9)
                self.loop.call_later(delay + 0.001, self._ingress_deadline)
            for client in self.clients:
                self.refill_echo(client, 0)
        elif self.pub is not None:
            if self.rate > 0:
                self.send_rate()
            else:
                self.send_window(self.pub, 0)
        else:
            self.sending_done = True
        self.reply("start", {"t_start": self.t_start})

    def cmd_stop(self, _arg: Any) -> None:
        self.sending_done = True
        self.measuring = False
        self.reply("stop", self.status())

    def cmd_results(self, arg: dict[str, Any]) -> None:
        """Final counters and raw latencies; ``messages`` (sent in all) finds incomplete members."""
        tally = self.tally
        expected = int(arg.get("messages", 0))
        data = self.status()
        data["lat"] = tally.lat.tobytes()
        data["pub_lat"] = tally.pub_lat.tobytes()
        data["incomplete"] = sum(
            1 for c in self.clients if c.role == SUBSCRIBER and c.state == OPEN and c.received < expected
        )
        self.reply("results", data)

    def cmd_close(self, _arg: Any) -> None:
        self.reply("close", {})
        self.finish()

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        t = self.tally
        subs_open = t.n_open - (1 if self.pub is not None and self.pub.state == OPEN else 0)
        return {
            "wid": self.plan.wid,
            "open": t.n_open,
            "subs_open": subs_open,
            "failed": t.failed,
            "conn_refused": t.conn_refused,
            "hs_bad_status": t.hs_bad_status,
            "hs_bad_accept": t.hs_bad_accept,
            "hs_timeout": t.hs_timeout,
            "server_closed": t.server_closed,
            "reset_after_open": t.reset_after_open,
            "pings_answered": t.pings_answered,
            "other_frames": t.other_frames,
            "binary_frames": t.binary_frames,
            "masked_server_frames": t.masked_server_frames,
            "probe_frames": t.probe_frames,
            "probe_conns": t.probe_conns,
            "received": t.received,
            "pub_echo": t.pub_echo,
            "gaps": t.gaps,
            "dup_or_ooo": t.dup_or_ooo,
            "misrouted": t.misrouted,
            "lat_dropped": t.lat_dropped,
            "t_last_recv": t.t_last_recv,
            "t_last_data": t.t_last_data,
            "sent": self.sent,
            "sending_done": self.sending_done,
            "t_start": self.t_start,
            "t_first_send": self.t_first_send,
            "t_last_send": self.t_last_send,
            "connect_t0": self.connect_t0,
            "connect_t1": self.connect_t1,
            "connect_target": self.connect_target,
            "has_publisher": self.pub is not None,
            "pub_open": self.pub is not None and self.pub.state == OPEN,
            "cpu_s": time.process_time(),
        }

    # -- connect phase -----------------------------------------------------------------------

    def _role_of(self, idx: int) -> tuple[int, bytes, int]:
        """(role, join text, expected src) of the connection with global index ``idx``."""
        plan = self.plan
        if plan.scenario == "ingress":
            room = f"{plan.room}-{idx}"
            return ECHO, b'{"type":"join_room","room":"%s"}' % room.encode(), idx
        join = b'{"type":"join_room","room":"%s"}' % plan.room.encode()
        if idx == plan.publisher:
            return PUBLISHER, join, idx
        return SUBSCRIBER, join, plan.publisher if plan.publisher is not None else -1

    async def connect_all(self, limit_s: float) -> None:
        """Open every planned connection, at most ``conc`` at once, within ``limit_s`` seconds."""
        plan = self.plan
        indices = list(range(plan.first, plan.last))
        if plan.publisher is not None and plan.hosts_publisher:
            indices.append(plan.publisher)
        self.connect_target = len(indices)
        it = iter(indices)
        loop = self.loop
        self.connect_t0 = time.monotonic_ns()
        phase_end = loop.time() + limit_s
        src_publisher = plan.publisher if plan.publisher is not None else -1

        async def lane() -> None:
            for idx in it:
                role, join, src = self._role_of(idx)
                if role == SUBSCRIBER:
                    src = src_publisher
                request, key = handshake_request(plan.host, plan.port, plan.path)
                opened: asyncio.Future[str] = loop.create_future()
                on_batch = self.refill_echo if role == ECHO else self.send_window if role == PUBLISHER else None
                client = Client(idx, role, src, self.tally, request, key, join, opened, self.rng, on_batch)
                if role == PUBLISHER:
                    self.pub = client
                self.clients.append(client)
                budget = min(plan.hs_timeout, phase_end - loop.time())
                if budget <= 0:
                    client.fail_connect("timeout")
                    continue
                try:
                    async with asyncio.timeout(budget):
                        await loop.create_connection(lambda c=client: c, plan.host, plan.port)  # type: ignore[misc]
                        await opened
                except TimeoutError:
                    client.fail_connect("timeout")
                except OSError:
                    client.fail_connect("refused")

        lanes = max(1, min(plan.conc, len(indices)))
        await asyncio.gather(*(lane() for _ in range(lanes)))
        self.connect_t1 = time.monotonic_ns()

    # -- sending -----------------------------------------------------------------------------

    def _text(self, client: Client, seq: int, t: int) -> bytes:
        room = f"{self.plan.room}-{client.idx}" if client.role == ECHO else self.plan.room
        return room_message(room, seq, t, client.idx, self.plan.pad)

    def send_window(self, pub: Client, _n: int) -> None:
        """Fanout, window mode: keep ``window`` messages whose own copy has not come back."""
        if not self.measuring or self.rate > 0 or self.sending_done:
            return
        if pub.state != OPEN:
            self.sending_done = True
            return
        batch = []
        limit = self.max_msgs
        room = self.plan.room
        pad = self.plan.pad
        while self.sent < limit and self.sent - self.tally.pub_echo < self.window:
            t = time.monotonic_ns()
            if not self.t_first_send:
                self.t_first_send = t
            batch.append(room_message(room, self.sent, t, pub.idx, pad))
            self.t_last_send = t
            self.sent += 1
        if batch:
            pub.send_many(batch)
        if self.sent >= limit:
            self.sending_done = True

    def send_rate(self) -> None:
        """Fanout at a fixed offered rate: sends follow the clock, never the replies.

        ``t`` in each payload is the *scheduled* send time, so a backlog shows up as latency
        (no coordinated omission). Timers are ~1 ms granular, so sends come in small bursts.
        """
        pub = self.pub
        if pub is None or pub.state != OPEN:
            self.sending_done = True
            return
        if self.sending_done:
            return
        now = time.monotonic_ns()
        period = 1e9 / self.rate
        batch = []
        room = self.plan.room
        pad = self.plan.pad
        while self.sent < self.max_msgs:
            sched = self.t_start + int(period * self.sent)
            if sched > now:
                break
            if not self.t_first_send:
                self.t_first_send = sched
            batch.append(room_message(room, self.sent, sched, pub.idx, pad))
            self.sent += 1
        if batch:
            pub.send_many(batch)
            self.t_last_send = now
        if self.sent >= self.max_msgs:
            self.sending_done = True
            return
        nxt = self.t_start + int(period * self.sent)
        self.loop.call_later(max((nxt - now) / 1e9, 0.0005), self.send_rate)

    def refill_echo(self, client: Client, n: int) -> None:
        """Ingress: keep ``window`` messages in flight on this connection until the deadline."""
        if not self.measuring or self.sending_done or client.state != OPEN:
            return
        window = self.window
        if client.sent - client.received >= window:
            return
        now = time.monotonic_ns()
        if self.deadline_ns and now >= self.deadline_ns:
            self.sending_done = True
            return
        if not self.t_first_send:
            self.t_first_send = now
        batch = []
        room = f"{self.plan.room}-{client.idx}"
        pad = self.plan.pad
        while client.sent - client.received < window:
            if self.sent >= self.max_msgs:
                self.sending_done = True
                break
            batch.append(room_message(room, client.sent, now, client.idx, pad))
            client.sent += 1
            self.sent += 1
        if batch:
            client.send_many(batch)
            self.t_last_send = now

    def _ingress_deadline(self) -> None:
        self.sending_done = True


async def _amain(pipe: Connection, plan: WorkerPlan) -> None:
    worker = Worker(pipe, plan)
    loop = asyncio.get_running_loop()
    loop.add_reader(pipe.fileno(), worker.on_pipe)
    # libuv made the socket non-blocking; replies (latencies: megabytes) need blocking writes,
    # and reads only happen after poll() said a whole message is on its way
    os.set_blocking(pipe.fileno(), True)
    worker.reply("ready", {"pid": os.getpid()})
    try:
        await worker.done
    finally:
        loop.remove_reader(pipe.fileno())
        for client in worker.clients:
            client.close()
        await asyncio.sleep(0.05)  # let close frames leave


def worker_main(fd: int) -> None:
    """Process entry: read the plan from the coordinator's socket, run until told to close."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    pipe = Connection(fd)
    try:
        plan = pipe.recv()
    except (EOFError, OSError):
        return
    if not isinstance(plan, WorkerPlan):
        raise TypeError(f"expected a WorkerPlan, got {type(plan).__name__}")
    if plan.cpus:
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setaffinity(0, plan.cpus)
    _raise_nofile(plan.last - plan.first + 1)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop missing (e.g. Windows): plain asyncio
        runner = asyncio.run
    try:
        runner(_amain(pipe, plan))
    finally:
        with contextlib.suppress(OSError):
            pipe.close()
