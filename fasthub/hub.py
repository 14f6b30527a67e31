"""Hub: the registry of connections, users and rooms, and the send/broadcast API.

Every send is a plain function: it encodes once, wraps the bytes in one shared ``Payload`` and
goes through one publish step (``publish_room``, ``publish_user``, ``publish_all``): delivery
to this process's members (``deliver_*``: queued on each receiver's outbox in ``_core``), then
the broker for every other node (``fasthub.broker``). Nothing here awaits. The server layer
attaches the hub to its event loop (``attach``), checks admission (``admit``, ``admit_user``)
and registers each connection with a sink that drains its outbox (``register``/``unregister``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Protocol

import orjson

from . import _ext
from ._core import KIND_BINARY, KIND_PLAIN, KIND_TEXT, Connection, Fanout, Payload, RateLimiter
from ._core.forms import Forms
from ._core.tokens import TokenPool
from .broker import Broker, LocalBroker
from .config import HubConfig
from .costs import CostMeter, cpu_seconds
from .exceptions import Denied, HubError
from .messages import ErrorCode, MessageType, encode, error_envelope, system_envelope, utc_timestamp
from .metrics import LoopMonitor
from .presence import Counts, PresenceInfo, PresenceStats, TypingThrottle, UserPresence
from .room import Room
from .sessions import Signer, record
from .streams import ROOM, USER, Position, Published, Recovery

log = logging.getLogger("fasthub")

Exclude = str | Iterable[str] | None


class Sink(Protocol):
    """What the server layer attaches to each outbox (see ``server/``)."""

    conn: Connection | None

    def flush(self) -> None:
        """Write (or schedule the writing of) everything queued in the outbox."""

    def sweep(self, now: float) -> None:
        """Periodic check: close the connection if it is dead or its writes are stuck."""

    def abort(self) -> None:
        """Drop the connection now (used when a close cannot be written)."""


#: connection ids: 16 URL-safe characters (96 random bits)
_ids = TokenPool(12)
_HOSTNAME = socket.gethostname()


def _exclude_set(exclude: Exclude) -> Any:
    if exclude is None:
        return None
    if isinstance(exclude, str):
        return (exclude,)
    return frozenset(exclude)


class Hub:
    """Connections, users and rooms of one process, and the API to reach them.

    ``broker`` joins this hub to others (default: ``LocalBroker``, this process alone).
    ``presence_info(conn, room) -> dict | None`` chooses what presence shows of a member's user
    (e.g. a name from ``conn.metadata``); without it presence shows user ids and counts only.
    """

    def __init__(
        self, config: HubConfig | None = None, broker: Broker | None = None, presence_info: PresenceInfo | None = None
    ) -> None:
        self.config = config if config is not None else HubConfig()
        #: what presence shows of a member's user (see ``presence``); may be set before serving
        self.presence_info = presence_info
        self._typing = TypingThrottle(self.config.typing_interval)
        self.broker: Broker = broker if broker is not None else LocalBroker()
        # the broker is called only when there are other nodes to reach
        self._remote: Broker | None = self.broker if self.broker.remote else None
        # connection id -> connection; a connection is its own outbox, so this is also the
        # member map of a broadcast
        self._connections: dict[str, Connection] = {}
        # users with a credential; an anonymous connection is a user of its own, ``anon-<id>``,
        # found through its connection (no dict per anonymous connection)
        self._users: dict[str, dict[str, Connection]] = {}
        self._anonymous = 0
        self._rooms: dict[str, Room] = {}
        # (connection id, room) -> (token, reply id, reply ids of repeated joins) of a join whose
        # reply waits for the broker (``Broker.ready``)
        self._pending_joins: dict[tuple[str, str], tuple[object, Any, list[Any]]] = {}
        # user id -> {connection id -> stored direct messages held back while it recovers}
        self._user_syncing: dict[str, dict[str, list[Held]]] = {}
        # (connection id, room) -> called with the joined reply's payload (a session resume waits)
        self._join_done: dict[tuple[str, str], Callable[[dict[str, Any]], None]] = {}
        # (connection id, room) -> done when that pending join is answered (``join_pending``)
        self._join_waiters: dict[tuple[str, str], asyncio.Future[None]] = {}
        self.signer = Signer(self.config.session_secret)
        self.sessions_saved = 0
        self.joins_unavailable = 0  # joins refused because the room's position could not be read
        self.recoveries = 0  # joins with a position that got every missed message
        self.recoveries_failed = 0  # ... that were told recovered: false
        #: name -> room, read only (the dispatcher's one lookup per room message); the hub changes it
        self.room_map: Mapping[str, Room] = self._rooms
        self.fanout = Fanout(None, self, self._slow_consumer)
        self.fanout.soft_limit = int(self.config.send_buffer_size * self.config.publish_watermark)
        #: builds compressed and MessagePack frames, once per payload and form
        self.forms = self.fanout.forms = Forms(self.config.compression_threshold)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._started_wall = time.time()
        self._started = time.monotonic()
        # counters for stats(); the message pipeline (``Dispatcher.receive``) counts traffic in
        self.messages_in = 0
        self.bytes_in = 0
        self.connections_opened = 0
        self.connections_closed = 0
        self.slow_consumer_closes = 0
        self.rate_limited = 0  # messages refused by the rate limits of connections now closed
        # for /metrics: closes by close code, refused upgrades by HTTP status, resumes by outcome
        self.close_codes: dict[int, int] = {}
        self.handshake_failures: dict[int, int] = {}
        self.resumes: dict[str, int] = {}
        self.loop_monitor = LoopMonitor()
        self.cost_meter = CostMeter()  # CPU against the counters, sampled by the sweep (stats' costs)
        #: set by ``drain``: new connections are refused (503) and /readyz says so
        self.draining = False
        self._ip_counts: dict[str, int] = {}
        self._last_sample: tuple[float, tuple[int, int, int, int]] = (0.0, (0, 0, 0, 0))
        self._rates: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
        self._rss_at_start = rss_bytes()
        self._connect_buckets: dict[str, RateLimiter] = {}
        self.broker.bind(self)

    # -- event loop ------------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the hub is attached to (None before ``attach``)."""
        return self._loop

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Bind the hub to ``loop`` (default: the running one); again with the same loop is a no-op.

        ``fasthub serve`` and a top-level ``create_app`` do this at lifespan startup, and any app
        at its first connection. A hub mounted inside Starlette/FastAPI gets no lifespan events:
        call ``hub.attach()`` from the parent app's startup so ``run_threadsafe`` and timers work
        before the first client connects.
        """
        if loop is None:
            loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._loop = loop
        fanout = self.fanout
        fanout.schedule = loop.call_soon
        fanout.flush_scheduled = False
        if fanout.dirty:
            fanout.flush_scheduled = True
            loop.call_soon(fanout.flush)
        self._sweeper = loop.call_later(self._sweep_period(), self._sweep)
        self.loop_monitor.start(loop)
        self.broker.start(loop)

    def _sweep_period(self) -> float:
        # Often enough that an idle client is pinged with at least half of the
        # pong_timeout - ping_interval margin left to answer, and write stalls are seen in time.
        c = self.config
        return max(0.05, min(c.cleanup_interval, c.write_timeout / 2, (c.pong_timeout - c.ping_interval) / 2))

    def _sweep(self) -> None:
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        self._sample_rates(now)
        self._typing.sweep(now)
        if self._connect_buckets:  # forget addresses whose bucket is full again
            rate = self.config.connect_rate_per_ip or 1.0
            stale = [ip for ip, b in self._connect_buckets.items() if now - b.stamp > 2.0 / rate + 1.0]
            for ip in stale:
                del self._connect_buckets[ip]
        for conn in list(self._connections.values()):
            sink = conn.sink
            if sink is not None:
                try:
                    sink.sweep(now)
                except Exception:  # a broken sink must not stop the sweep
                    log.exception("fasthub: sweep failed for a connection")
        self._sweeper = loop.call_later(self._sweep_period(), self._sweep)

    def _counters(self) -> tuple[int, int, int, int]:
        f = self.fanout
        return self.messages_in, int(f.delivered), self.bytes_in, int(f.bytes_out)

    def _sample_rates(self, now: float) -> None:
        """Per-second rates over the last sweep period, for stats()."""
        counters = self._counters()
        last_at, last = self._last_sample
        if last_at and now > last_at:
            dt = now - last_at
            self._rates = tuple(round((c - p) / dt, 1) for c, p in zip(counters, last, strict=True))
        self._last_sample = (now, counters)
        self.cost_meter.sample(
            now,
            {
                "cpu_s": cpu_seconds(),
                "connects": self.connections_opened,
                "messages_in": counters[0],
                "deliveries": counters[1],
                "broker_published": (self.broker.stats() or {}).get("published", 0) if self._remote else 0,
            },
        )

    def run_threadsafe(self, func: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """Run ``func(*args)`` on the hub's event loop from any thread; the one thread-safe entry.

        Every other method must be called on the loop thread. Example, from a worker thread::

            hub.run_threadsafe(hub.broadcast_json, {"event": "deploy"}).result(timeout=5)
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the hub is not attached to a running event loop yet")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def call() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(func(*args))
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(call)
        return future

    # -- admission and registry (the server layer) ------------------------------------------------

    def admit(self, scope: dict[str, Any] | Any) -> Denied | None:
        """Connection caps checked before authentication: total, per IP, new per second per IP.

        ``scope`` is the ASGI scope (for the client address), or None when no per-IP cap is on.
        """
        c = self.config
        if self.draining:
            return Denied(503, "server draining")
        if c.max_connections and len(self._connections) >= c.max_connections:
            return Denied(503, "server at its connection limit")
        if not (c.max_connections_per_ip or c.connect_rate_per_ip):
            return None
        ip = client_ip(scope)
        if c.max_connections_per_ip and self._ip_counts.get(ip, 0) >= c.max_connections_per_ip:
            return Denied(429, "too many connections from this address")
        if c.connect_rate_per_ip:
            now = self._loop.time() if self._loop is not None else time.monotonic()
            bucket = self._connect_buckets.get(ip)
            if bucket is None:
                bucket = self._connect_buckets[ip] = RateLimiter(c.connect_rate_per_ip, 0.0, now)
            if bucket.take(now, 0):
                return Denied(429, "too many new connections from this address")
        return None

    def admit_user(self, user_id: str) -> Denied | None:
        """The per-user connection cap, checked once the user is known."""
        cap = self.config.max_connections_per_user
        if cap and len(self._users.get(user_id, ())) >= cap:
            return Denied(429, "too many connections for this user")
        return None

    def register(self, sink: Sink, user_id: str | None, scope: MutableMapping[str, Any] | None = None) -> Connection:
        """A new connection served by ``sink`` (None ``user_id``: anonymous, a user of its own)."""
        conn_id = _ids.next()
        anonymous = user_id is None
        uid = None if user_id is None else str(user_id)
        c = self.config
        now = self._loop.time() if self._loop is not None else 0.0
        drop = c.slow_consumer == "drop"
        conn = Connection(self.fanout, conn_id, uid, c.send_buffer_size, drop, scope, anonymous, now)
        conn.sink = sink
        sink.conn = conn
        self._connections[conn_id] = conn
        if uid is None:
            self._anonymous += 1
        else:
            user = self._users.get(uid)
            if user is None:
                user = self._users[uid] = {}
                if self._remote is not None:
                    self._remote.user_opened(uid)
            user[conn_id] = conn
        if c.rate_limit or c.rate_limit_bytes:
            conn.limit(c.rate_limit, c.rate_limit_bytes, now)
        if c.max_connections_per_ip:
            conn.ip = client_ip(scope)
            self._ip_counts[conn.ip] = self._ip_counts.get(conn.ip, 0) + 1
        self.connections_opened += 1
        return conn

    def unregister(self, conn: Connection) -> None:
        """The connection is gone: leave its rooms, forget it (a second call does nothing)."""
        if self._connections.pop(conn.id, None) is None:
            return
        conn.closing = True
        conn.discard()
        if self.config.session_ttl and conn.room_count():
            self._save_session(conn)
        if self._join_done:
            for name in conn.room_names():
                self._join_done.pop((conn.id, name), None)
        for name in conn.room_names():
            self._leave(conn, name, reply_id=None, reply=False)
        if conn.anonymous:
            self._anonymous -= 1
        else:
            user = self._users.get(conn.user_id)
            if user is not None:
                user.pop(conn.id, None)
                if not user:
                    del self._users[conn.user_id]
                    if self._remote is not None:
                        self._remote.user_closed(conn.user_id)
        if conn.ip is not None:
            left = self._ip_counts.get(conn.ip, 1) - 1
            if left > 0:
                self._ip_counts[conn.ip] = left
            else:
                self._ip_counts.pop(conn.ip, None)
        if conn.expiry is not None:
            conn.expiry.cancel()
            conn.expiry = None
        self.rate_limited += conn.refused
        self.connections_closed += 1
        code = conn.close_code or 1006
        self.close_codes[code] = self.close_codes.get(code, 0) + 1

    # -- sessions --------------------------------------------------------------------------------

    def session_token(self, conn: Connection) -> str | None:
        """The reconnect token of ``conn`` (its ``connected`` message carries it); None when
        session resume is off."""
        if not self.config.session_ttl:
            return None
        return self.signer.issue(conn.id, None if conn.anonymous else conn.user_id)

    def _save_session(self, conn: Connection) -> None:
        """Keep the rooms of a closing connection and where their streams were for it."""
        rooms: dict[str, Any] = {}
        for name in conn.room_names():
            room = self._rooms.get(name)
            rooms[name] = [room.offset, room.epoch] if room is not None and room.epoch is not None else None
        try:
            self.broker.save_session(conn.id, record(conn.user_id, rooms), self.config.session_ttl)
            self.sessions_saved += 1
        except Exception:  # never in the way of a close
            log.exception("fasthub: keeping the session of %s failed", conn.id)

    def probe_connection(self, user_id: str | None, scope: Any = None) -> Connection:
        """A connection object that is not registered (no socket), for asking access hooks about
        an HTTP request (``/ws/history``)."""
        conn = Connection(self.fanout, "http-" + _ids.next(), user_id, 1024, False, scope, user_id is None, 0.0)
        conn.closing = True
        return conn

    def shared_secret(self, secret: bytes) -> None:
        self.signer.share(secret)

    def join_pending(self, conn_id: str, name: str) -> asyncio.Future[None] | None:
        """Done when ``conn_id``'s join of ``name``, still waiting for the broker, is answered;
        None when no join of it waits.

        A member's own message published meanwhile would be stored before the position its
        join reads, so the joined reply would count it as seen and it would never reach that
        member (with Redis, a client that sends right after ``join_room``): the pipeline
        publishes it after this.
        """
        key = (conn_id, name)
        if key not in self._pending_joins:
            return None
        waiter = self._join_waiters.get(key)
        if waiter is None:
            loop = self._loop if self._loop is not None else asyncio.get_event_loop()
            waiter = self._join_waiters[key] = loop.create_future()
        return waiter

    def _join_answered(self, key: tuple[str, str]) -> None:
        waiter = self._join_waiters.pop(key, None) if self._join_waiters else None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def forget_join(self, conn_id: str, name: str) -> None:
        """Drop the ``on_joined`` callback of a join that failed or is no longer waited for."""
        self._join_done.pop((conn_id, name), None)

    def take_session(self, session_id: str) -> bytes | Awaitable[bytes | None] | None:
        return self.broker.take_session(session_id)

    def user_position(self, user_id: str) -> Position | Awaitable[Position] | None:
        """The position of a user's stream of direct messages (None: not stored)."""
        if self._stream_history(USER, user_id) is None:
            return None
        return self.broker.stream_top(USER, user_id)

    def recover_user(self, conn: Connection, since: Position) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """Send ``conn`` the direct messages of its user after ``since``; the answer says
        ``recovered`` and where the user's stream is."""
        user = conn.user_id
        history = self._stream_history(USER, user)
        if history is None:
            return {"recovered": False, "reason": "no history"}
        answer = self.broker.stream_recover(USER, user, since, self.config.recovery_max, history)
        if not inspect.isawaitable(answer):
            return self._user_recovered(conn, since, answer, [])
        held = self._user_syncing.setdefault(user, {})
        held[conn.id] = []
        return self._recover_user_later(conn, since, answer)

    async def _recover_user_later(self, conn: Connection, since: Position, answer: Any) -> dict[str, Any]:
        try:
            answer = await answer
        except Exception as exc:
            log.debug("fasthub: reading user %r's stream failed: %s", conn.user_id, exc)
            answer = None
        held_by = self._user_syncing.get(conn.user_id)
        held = held_by.pop(conn.id, []) if held_by else []
        if held_by is not None and not held_by:
            del self._user_syncing[conn.user_id]
        return self._user_recovered(conn, since, answer, held)

    def _user_recovered(
        self, conn: Connection, since: Position, answer: Any, held: list[Held]
    ) -> dict[str, Any]:
        if isinstance(answer, Recovery) and answer.recovered:
            reached, rest = self._merge(conn, since, answer.payloads, held)
            for _, payload, _ in rest:  # another epoch or a gap: delivered, and said below
                conn.send_payload(payload)
            if not rest:
                return {"recovered": True, "offset": reached.offset, "epoch": reached.epoch}
            return {"recovered": False, "reason": "gap", "offset": rest[-1][0], "epoch": rest[-1][2]}
        for _, payload, _ in held:
            conn.send_payload(payload)
        out: dict[str, Any] = {"recovered": False, "reason": answer.reason if answer is not None else "unavailable"}
        if answer is not None:
            out["offset"], out["epoch"] = answer.position.offset, answer.position.epoch
        return out

    def is_registered(self, conn: Connection) -> bool:
        """Whether ``conn`` is still one of this hub's open connections."""
        return self._connections.get(conn.id) is conn

    def set_expiry(self, conn: Connection, expires_at: float | None) -> None:
        """Close ``conn`` with 4001 "token expired" at ``expires_at`` (Unix time) unless refreshed."""
        if conn.expiry is not None:
            conn.expiry.cancel()
            conn.expiry = None
        conn.expires_at = expires_at
        if expires_at is None or self._loop is None:
            return
        delay = max(0.0, expires_at - time.time())
        conn.expiry = self._loop.call_later(delay, self._expired, conn)

    def _expired(self, conn: Connection) -> None:
        conn.expiry = None
        if conn.id in self._connections and not conn.closed:
            log.info("fasthub: closing %s: token expired", conn.id)
            conn.close(4001, "token expired")

    def _slow_consumer(self, conn: Connection) -> None:
        """A connection went over budget under policy "close": close it now, dropping its backlog."""
        if conn.closing:
            return
        self.slow_consumer_closes += 1
        log.info("fasthub: closing %s: slow consumer (%d bytes buffered)", conn.id, conn.size())
        conn.close(1008, "slow consumer", discard=True)

    # -- delivery: the one publish step, and local delivery under it -------------------------------

    def _deliver(self, members: dict[str, Connection], payload: Payload, exclude: Any = None) -> int:
        count, overflow = self.fanout.push_many(members, payload, exclude)
        for conn in overflow:  # the members maps hold connections only
            self._slow_consumer(conn)  # type: ignore[arg-type]
        return int(count)

    def slow_consumers(self, overflow: list[Connection]) -> None:
        """Connections a delivery left over budget under policy "close" (``_core.Relay``'s)."""
        for conn in overflow:
            self._slow_consumer(conn)

    def publish_room(self, name: str, payload: Payload, exclude: Exclude = None) -> int:
        """Send an encoded payload to every member of room ``name`` on every node.

        Delivered here first, then handed to the broker for the other nodes; returns how many
        connections of this process accepted it.
        """
        if exclude is not None:
            exclude = _exclude_set(exclude)
        room = self._rooms.get(name)  # deliver_room, inline: this is every room message's path
        count = 0
        if room is not None and room.member_map:
            before = self.fanout.congested
            count = self._deliver(room.member_map, payload, exclude)
            room.congested = self.fanout.congested != before
        if self._remote is not None:
            self._remote.publish_room(name, payload, exclude)
        return count

    def publish_user(self, user_id: str, payload: Payload) -> int:
        """Send an encoded payload to every connection of ``user_id`` on every node."""
        count = self.deliver_user(user_id, payload)
        if self._remote is not None:
            self._remote.publish_user(user_id, payload)
        return count

    def publish_all(self, payload: Payload, exclude: Exclude = None) -> int:
        """Send an encoded payload to every connection on every node."""
        if exclude is not None:
            exclude = _exclude_set(exclude)
        count = self.deliver_all(payload, exclude)
        if self._remote is not None:
            self._remote.publish_all(payload, exclude)
        return count

    def deliver_room(
        self, name: str, payload: Payload, exclude: Any = None, offset: int = 0, epoch: str | None = None
    ) -> int:
        """Local delivery to this process's members of a room (what a broker calls).

        A stored message (``offset`` > 0) is held back from members whose join is still
        reading the room's history; they get it, in order, when that read is merged.
        """
        room = self._rooms.get(name)
        if room is None or not room.member_map:
            return 0
        if offset:
            last = room.offset
            if room.epoch != epoch and room.epoch is not None:
                self._epoch_changed(room, offset, epoch)  # the history was lost: say so first
            elif offset > last + 1 and room.epoch is not None and last:
                self._resync_room(room, Position(last, room.epoch))  # a live message was lost
            room.offset = offset
            room.epoch = epoch
            if room.syncing:
                exclude = _hold_back(room.syncing, offset, payload, epoch, exclude)
        before = self.fanout.congested
        count = self._deliver(room.member_map, payload, exclude)
        room.congested = self.fanout.congested != before
        return count

    def room_congested(self, name: str) -> bool:
        """Whether a member of ``name`` on this node holds more than the publish watermark
        (``HubConfig.publish_watermark``): publishers to it are slowed until it drains."""
        room = self._rooms.get(name)
        if room is None or not room.congested:
            return False
        limit = self.fanout.soft_limit
        for conn in room.member_map.values():  # only while the last delivery said so
            if conn.size() > limit:
                return True
        room.congested = False
        return False

    async def wait_room_drained(self, name: str, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until no member of ``name`` here is over the publish watermark (False: timed out)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.room_congested(name):
            if deadline is not None and loop.time() >= deadline:
                return False
            await asyncio.sleep(FLOW_PAUSE)
        return True

    def deliver_user(self, user_id: str, payload: Payload, offset: int = 0, epoch: str | None = None) -> int:
        """Local delivery to this process's connections of a user."""
        members = self._user_members(user_id)
        if not members:
            return 0
        if offset and self._user_syncing:
            held = self._user_syncing.get(user_id)
            if held:
                return self._deliver(members, payload, _hold_back(held, offset, payload, epoch, None))
        return self._deliver(members, payload)

    def deliver_all(self, payload: Payload, exclude: Any = None) -> int:
        """Local delivery to every connection of this process."""
        return self._deliver(self._connections, payload, exclude)

    def local_room_size(self, name: str) -> int:
        room = self._rooms.get(name)
        return len(room.member_map) if room is not None else 0

    def local_user_online(self, user_id: str) -> bool:
        return bool(self._user_members(user_id))

    def user_online(self, user_id: str) -> bool | Awaitable[bool]:
        """Whether ``user_id`` has a connection on any node (the broker's answer)."""
        return self.broker.user_online(user_id)

    # -- presence and typing ---------------------------------------------------------------------

    async def presence(self, name: str) -> dict[str, UserPresence]:
        """Who is in room ``name`` on every node: user id -> its connections in the room and the
        ``info`` the ``presence_info`` hook exposed for its most recent connection to join (with
        a clustered broker taken when that connection joined, or at ``update_presence``).

        Raises ``ConnectionError`` when the broker cannot be asked now (Redis down).
        """
        answer = self.broker.presence(name)
        counts: Counts = await answer if inspect.isawaitable(answer) else answer
        return {
            user: UserPresence(n, orjson.loads(info) if info is not None else None)
            for user, (n, info) in counts.items()
        }

    async def presence_stats(self, name: str) -> PresenceStats:
        """Distinct users in room ``name`` and their connections, on every node (no info)."""
        answer = self.broker.presence_stats(name)
        users, connections = await answer if inspect.isawaitable(answer) else answer
        return PresenceStats(users, connections)

    def update_presence(self, conn_id: str) -> None:
        """Ask ``presence_info`` again for every room of the connection (after what it reads
        changed, e.g. ``conn.set_metadata("status", "away")``); the in-process broker asks it
        whenever presence is asked, so there this does nothing."""
        conn = self._conn(conn_id)
        remote = self._remote
        if remote is None or self.presence_info is None:
            return
        for name in conn.room_names():
            _settled(remote.presence_change(name, conn.user_id, 0, self._info(conn, name)))

    def local_presence(self, name: str, info: bool = True) -> Counts:
        """This node's users in room ``name``: user id -> (connections, info JSON or None)."""
        room = self._rooms.get(name)
        if room is None:
            return {}
        counts: dict[str, int] = {}
        latest: dict[str, Connection] = {}
        for conn in room.member_map.values():  # in join order: the last one of a user is its latest
            user = conn.user_id
            counts[user] = counts.get(user, 0) + 1
            latest[user] = conn
        hook = info and self.presence_info is not None
        return {user: (n, self._info(latest[user], name) if hook else None) for user, n in counts.items()}

    def _info(self, conn: Connection, room: str) -> bytes | None:
        """The ``presence_info`` hook's answer for ``conn`` in ``room``, encoded (None: no hook,
        nothing to show, or the hook failed, which is logged and never fails a join)."""
        hook = self.presence_info
        if hook is None:
            return None
        try:
            value = hook(conn, room)
            if inspect.isawaitable(value):
                if inspect.iscoroutine(value):
                    value.close()
                raise TypeError("presence_info must be synchronous (it runs inside a join)")
            return None if value is None else encode(value)
        except Exception:
            log.exception("fasthub: presence_info failed for %s in %r", conn.id, room)
            return None

    def typing(self, conn_id: str, name: str) -> bool:
        """Tell the other members of room ``name``, on every node, that the connection's user is
        typing: ``{"type": "typing", "room", "from", "timestamp"}``, never stored.

        At most one per ``HubConfig.typing_interval`` per connection and room: returns False for
        one dropped by that throttle. Raises ``HubError`` when the connection is not a member.
        """
        conn = self._conn(conn_id)
        room = self._rooms.get(name)
        if room is None or conn.id not in room.member_map:
            raise HubError(f"connection {conn_id!r} is not a member of {name!r}")
        now = self._loop.time() if self._loop is not None else time.monotonic()
        if not self._typing.allow(conn.id, name, now):
            return False
        event = {"type": MessageType.TYPING.value, "room": name, "from": conn.user_id, "timestamp": utc_timestamp()}
        self.publish_room(name, Payload(KIND_TEXT, encode(event)), conn.id)
        return True

    # -- connections and users -------------------------------------------------------------------

    def get_connection(self, conn_id: str) -> Connection | None:
        return self._connections.get(conn_id)

    def _user_members(self, user_id: str) -> dict[str, Connection] | None:
        """``connection id -> connection`` of a user's connections, or None if it has none."""
        members = self._users.get(user_id)
        if members is None and user_id.startswith("anon-"):
            conn = self._connections.get(user_id[5:])
            if conn is not None and conn.anonymous:
                return {conn.id: conn}
        return members

    def get_user_connections(self, user_id: str | int) -> list[Connection]:
        conns = self._user_members(str(user_id))
        if not conns:
            return []
        return list(conns.values())

    @property
    def connections(self) -> list[Connection]:
        return list(self._connections.values())

    def connection_count(self) -> int:
        return len(self._connections)

    def user_count(self) -> int:
        return len(self._users) + self._anonymous

    def _conn(self, conn_id: str) -> Connection:
        conn = self._connections.get(conn_id)
        if conn is None:
            raise HubError(f"no connection {conn_id!r}")
        return conn

    # -- sending ---------------------------------------------------------------------------------

    def broadcast_json(self, obj: Any, exclude: Exclude = None) -> int:
        """Send ``obj`` (encoded once) to every connection; returns how many accepted it."""
        return self.publish_all(Payload(KIND_TEXT, encode(obj)), exclude)

    def broadcast_text(self, text: str, exclude: Exclude = None) -> int:
        return self.publish_all(Payload(KIND_PLAIN, text.encode()), exclude)

    def broadcast_bytes(self, data: bytes, exclude: Exclude = None) -> int:
        return self.publish_all(Payload(KIND_BINARY, bytes(data)), exclude)

    def send_to_user_json(self, user_id: str | int, obj: Any) -> int:
        """Send ``obj`` to every connection of ``user_id``; returns how many accepted it (0: offline).

        A JSON object is stored in the user's stream (see ``publish_to_user``)."""
        user = str(user_id)
        if isinstance(obj, dict):
            body = _body(obj) if self._stream_history(USER, user) else encode(obj)  # stored: offset is ours
            return _accepted(self.publish_stored(USER, user, body), self._user_members(user))
        return self.publish_user(user, Payload(KIND_TEXT, encode(obj)))

    async def publish_to_user(
        self, user_id: str | int, obj: dict[str, Any], *, idempotency_key: str | None = None
    ) -> Published | None:
        """Store ``obj`` in the user's stream and send it to the user's connections on every node.

        Returns its position once stored (None when user history is off, or for anonymous
        users, whose messages are not stored).
        """
        result = self.publish_stored(USER, str(user_id), _body(obj), None, idempotency_key)
        if isinstance(result, int):
            return None
        return result if isinstance(result, Published) else await result

    # -- streams ---------------------------------------------------------------------------------

    def publish_stored(
        self,
        kind: str,
        name: str,
        body: bytes,
        exclude: Exclude = None,
        idempotency_key: str | None = None,
    ) -> Published | Awaitable[Published] | int:
        """Publish an encoded JSON object to a room (``ROOM``) or user (``USER``) stream.

        Where the stream keeps history, the broker stores it with the next offset and delivers
        it with that offset on every node, this one included; the answer is its position
        (awaitable with a broker that answers later). Without history it is an ordinary
        publish and the answer is how many connections of this process accepted it.
        """
        history = self._stream_history(kind, name)
        if history is None:
            payload = Payload(KIND_TEXT, body)
            if kind == ROOM:
                return self.publish_room(name, payload, exclude)
            return self.publish_user(name, payload)
        if exclude is not None:
            exclude = _exclude_set(exclude)
        return self.broker.publish_stream(kind, name, body, exclude, history, idempotency_key)

    def _stream_history(self, kind: str, name: str) -> tuple[int, float] | None:
        """(size, ttl) of a stream's history; anonymous users' messages are never stored (their
        identity does not outlive the connection)."""
        if kind == ROOM:
            return self.config.history_for(name)
        return None if name.startswith("anon-") else self.config.user_history()

    def room_position(self, name: str) -> Position | Awaitable[Position] | None:
        """The room stream's position now (None: the room keeps no history)."""
        if self.config.history_for(name) is None:
            return None
        return self.broker.stream_top(ROOM, name)

    def room_history(
        self, name: str, since: Position, limit: int | None = None
    ) -> Recovery | Awaitable[Recovery] | None:
        """The room's stored messages after ``since`` (None: the room keeps no history)."""
        history = self.config.history_for(name)
        if history is None:
            return None
        return self.broker.stream_recover(ROOM, name, since, limit or self.config.recovery_max, history)

    def send_to_user_bytes(self, user_id: str | int, data: bytes) -> int:
        return self.publish_user(str(user_id), Payload(KIND_BINARY, bytes(data)))

    # -- rooms -----------------------------------------------------------------------------------

    def create_room(self, name: str, metadata: dict[str, Any] | None = None) -> Room:
        """Get or create the room ``name``; a room created here persists when it empties."""
        room = self._rooms.get(name)
        if room is None:
            if not self.config.valid_room_name(name):
                raise HubError(f"invalid room name {name!r}")
            room = self._rooms[name] = Room(name, metadata, persistent=True)
        else:
            room.persistent = True
            if metadata:
                room.metadata.update(metadata)
        return room

    def get_room(self, name: str) -> Room | None:
        return self._rooms.get(name)

    def list_rooms(self) -> list[str]:
        return list(self._rooms)

    def room_count(self) -> int:
        return len(self._rooms)

    def delete_room(self, name: str) -> bool:
        """Remove a room; its members (of this process) are told with a ``system`` ``room_deleted`` event."""
        room = self._rooms.pop(name, None)
        if room is None:
            return False
        members = room.member_map
        if members:
            self._deliver(members, self._system({"event": "room_deleted", "room": name}, room=name))
            for conn in members.values():
                conn.drop_room(name)
                self._typing.forget(conn.id, name)
            remote = self._remote
            if remote is not None:
                for user, (n, _) in self.local_presence(name, info=False).items():
                    _settled(remote.presence_change(name, user, -n, None))
            members.clear()
            room.changed()
            if remote is not None:
                remote.room_resized(name, 0)
                remote.room_closed(name)
        return True

    def join_room(
        self,
        conn_id: str,
        name: str,
        *,
        reply_id: Any = None,
        since: Position | tuple[int, str] | None = None,
        on_joined: Callable[[dict[str, Any]], None] | None = None,
    ) -> Room:
        """Add a connection to a room (created if needed).

        The joiner gets a ``system`` ``joined`` reply with the room's size on every node and,
        when the room keeps history, its stream position (``offset``, ``epoch``): every stored
        message after that offset reaches the joiner. With ``since`` (a position the client had),
        the messages it missed come first, in order, and the reply says ``recovered`` (false:
        another epoch, or more missed than the history or ``recovery_max`` holds). While the room
        has at most ``member_events_limit`` members, the others get ``user_joined`` when this is
        the user's first connection in the room (on every node, with a clustered broker).
        """
        return self.join_connection(self._conn(conn_id), name, reply_id, since, on_joined)

    def join_connection(
        self,
        conn: Connection,
        name: str,
        reply_id: Any = None,
        since: Position | tuple[int, str] | None = None,
        on_joined: Callable[[dict[str, Any]], None] | None = None,
    ) -> Room:
        """``join_room`` for a registered connection object (the dispatcher has it at hand)."""
        room = self._rooms.get(name)
        cid = conn.id
        if on_joined is not None:
            self._join_done[(cid, name)] = on_joined
        if room is not None and cid in room.member_map:
            pending = self._pending_joins.get((cid, name))
            if pending is not None:  # the first join's reply is still waiting: answer after it
                pending[2].append(reply_id)
            else:
                here = Position(room.offset, room.epoch) if room.epoch is not None else None
                self._reply_membership(conn, room, "joined", reply_id, extra=_position_fields(here))
            return room
        if room is None and not self.config.valid_room_name(name):  # an existing room's was checked
            raise HubError(f"invalid room name {name!r}")
        if conn.room_count() >= self.config.max_rooms_per_connection:
            raise HubError(f"connection is in {conn.room_count()} rooms already (max_rooms_per_connection)")
        if since is not None and not isinstance(since, Position):
            since = Position(int(since[0]), str(since[1]))
        if room is None:
            room = self._rooms[name] = Room(name)
        members = room.member_map
        members[cid] = conn
        room.changed()
        conn.add_room(room.name)  # the room's own name string: one copy however many members
        remote = self._remote
        waiter = None
        counted: Any = None  # the user's connections in the room on every node (None: count here)
        if remote is not None:
            if len(members) == 1:
                remote.room_opened(name)
            remote.room_resized(name, len(members))
            waiter = remote.ready(name)  # reply once this node hears the room's traffic from others
            # the reply also waits for the presence write: a client told "joined" is in every
            # node's presence answer
            counted = remote.presence_change(name, conn.user_id, 1, self._info(conn, name))
        history = self.config.history_for(name)
        answer: Any = None
        later = counted is not None and _pending(counted)
        if history is not None and waiter is None:
            if since is None:
                answer = self.broker.stream_top(ROOM, name)
            else:
                answer = self._read_position(name, since, history)
            if not later and not _pending(answer):
                if answer.__class__ is Position and counted is None:
                    self._joined_at(conn, room, reply_id, answer)
                else:
                    self._finish_join(conn, room, reply_id, (), since, answer, [], counted)
                return room
        elif history is None and waiter is None and not later:
            self._announce_join(conn, room, reply_id, count=counted)
            return room
        key, token = (conn.id, name), object()
        self._pending_joins[key] = (token, reply_id, [])
        if history is not None:  # stored messages that arrive meanwhile wait for the answer
            if room.syncing is None:
                room.syncing = {}
            room.syncing[conn.id] = []
        step = self._join_later(key, token, conn, room, waiter, since, history, answer, counted)
        task = self._loop.create_task(step) if self._loop is not None else asyncio.ensure_future(step)
        _background.add(task)
        task.add_done_callback(_background.discard)
        return room

    def _read_position(self, name: str, since: Position | None, history: tuple[int, float]) -> Any:
        broker = self.broker
        if since is None:
            return broker.stream_top(ROOM, name)
        return broker.stream_recover(ROOM, name, since, self.config.recovery_max, history)

    async def _join_later(
        self,
        key: tuple[str, str],
        token: object,
        conn: Connection,
        room: Room,
        waiter: Awaitable[None] | None,
        since: Position | None,
        history: tuple[int, float] | None,
        answer: Any,
        counted: Any = None,
    ) -> None:
        """A join whose reply waits for the broker: the room's subscription, its position and
        the presence write."""
        try:
            if waiter is not None:
                await waiter
            if history is not None:
                if answer is None:
                    answer = self._read_position(room.name, since, history)
                if inspect.isawaitable(answer):
                    answer = await answer
        except Exception as exc:  # the broker is down: the reply says so, the join stands
            log.debug("fasthub: reading room %r's position failed: %s", room.name, exc)
            answer = None
        if inspect.isawaitable(counted):
            try:
                counted = await counted
            except Exception:  # not written (the broker reconnects and writes it): count here
                counted = None
        entry = self._pending_joins.get(key)
        if entry is None or entry[0] is not token:  # answered by a leave, or a later join's
            return
        del self._pending_joins[key]
        held = self._end_sync(room, conn.id)
        answer = answer if history is not None else False
        self._finish_join(conn, room, entry[1], entry[2], since, answer, held, counted)
        self._join_answered(key)

    def streams_reconnected(self) -> None:
        """The broker was away: every room served here is checked against its stream, and the
        messages its members missed are sent (or they are told ``resync``, not recovered)."""
        for room in list(self._rooms.values()):
            if room.member_map and room.epoch is not None:
                self._resync_room(room, Position(room.offset, room.epoch))

    def _epoch_changed(self, room: Room, offset: int, epoch: str | None) -> None:
        """The room's stream has a new epoch (its history was lost): tell its members before the
        message that shows it (those still joining learn it from their reply)."""
        event = {"event": "resync", "room": room.name, "recovered": False, "reason": "epoch"}
        event["offset"], event["epoch"] = offset - 1, epoch
        exclude = frozenset(room.syncing) if room.syncing else None
        self.recoveries_failed += len(room.member_map) - (len(exclude) if exclude else 0)
        self._deliver(room.member_map, self._system(event, room=room.name), exclude)

    def _resync_room(self, room: Room, since: Position) -> None:
        """Hold back the room's stored messages from its members, read what came after
        ``since``, send the missing ones, then what was held: no gap, no duplicate."""
        history = self.config.history_for(room.name)
        if history is None or self._loop is None:
            return
        syncing = room.syncing
        if syncing is None:
            syncing = room.syncing = {}
        ids = [cid for cid in room.member_map if cid not in syncing]
        if not ids:
            return
        for cid in ids:
            syncing[cid] = []
        task = self._loop.create_task(self._resync_later(room, ids, since, history))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _resync_later(self, room: Room, ids: list[str], since: Position, history: tuple[int, float]) -> None:
        answer: Any = None
        try:
            remote = self._remote
            waiter = remote.ready(room.name) if remote is not None else None
            if waiter is not None:
                await waiter
            answer = self.broker.stream_recover(ROOM, room.name, since, self.config.recovery_max, history)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception as exc:
            log.debug("fasthub: reading room %r's history failed: %s", room.name, exc)
            answer = None
        name = room.name
        for cid in ids:
            if (cid, name) in self._pending_joins or not room.syncing or cid not in room.syncing:
                continue  # left meanwhile, or joined again (that join reads for itself)
            held = self._end_sync(room, cid)
            conn = room.member_map.get(cid)
            if conn is None:
                continue
            self._send_recovered(conn, room, since, answer, held)

    def _send_recovered(self, conn: Connection, room: Room, since: Position, answer: Any, held: list[Held]) -> None:
        """A member that missed live messages: the missing ones and the held ones in order, or a
        ``resync`` event (``recovered: false`` and where the stream is) and the held ones after it."""
        if isinstance(answer, Recovery) and answer.recovered:
            position, rest = self._merge(conn, since, answer.payloads, held)
            if not rest:
                self.recoveries += 1
                return
            self._send_after(conn, room, position, rest)  # tells the epoch change or gap in them
            return
        self.recoveries_failed += 1
        if isinstance(answer, Recovery):
            reason, position = answer.reason, answer.position
        else:
            reason = "unavailable"
            if held:
                position = Position(held[0][0] - 1, held[0][2])
            else:
                position = Position(room.offset, room.epoch or since.epoch)
        if held and held[0][2] == position.epoch and held[0][0] <= position.offset:
            position = Position(held[0][0] - 1, position.epoch)
        self._tell_resync(conn, room, position, reason)
        self._send_after(conn, room, position, held)

    def _tell_resync(self, conn: Connection, room: Room, position: Position, reason: str) -> None:
        event = {"event": "resync", "room": room.name, "recovered": False, "reason": reason}
        event["offset"], event["epoch"] = position.offset, position.epoch
        conn.send_payload(self._system(event, room=room.name))

    @staticmethod
    def _merge(
        conn: Connection, start: Position, payloads: list[tuple[int, Payload]], held: list[Held]
    ) -> tuple[Position, list[Held]]:
        """Send recovered messages (after ``start``), then the held ones that follow them in the
        same epoch without a gap (duplicates skipped); the position reached and the held ones left."""
        last = start.offset
        for offset, payload in payloads:
            if offset > last:
                conn.send_payload(payload)
                last = offset
        for i, (offset, payload, epoch) in enumerate(held):
            if epoch == start.epoch and offset <= last:
                continue
            if epoch == start.epoch and offset == last + 1:
                conn.send_payload(payload)
                last = offset
                continue
            return Position(last, start.epoch), held[i:]
        return Position(last, start.epoch), []

    def _send_after(self, conn: Connection, room: Room, position: Position, held: list[Held]) -> None:
        """Held messages after a reply or a resync event at ``position``: an epoch change or a
        gap among them is told (``resync``) before the message that shows it."""
        for offset, payload, epoch in held:
            if epoch != position.epoch:
                self.recoveries_failed += 1
                self._tell_resync(conn, room, Position(offset - 1, epoch), "epoch")
            elif offset <= position.offset:
                continue
            elif offset > position.offset + 1:
                self.recoveries_failed += 1
                self._tell_resync(conn, room, Position(offset - 1, epoch), "gap")
            conn.send_payload(payload)
            position = Position(offset, epoch)

    def _end_sync(self, room: Room, conn_id: str) -> list[Held]:
        syncing = room.syncing
        if not syncing:
            return []
        held = syncing.pop(conn_id, None)
        if not syncing:
            room.syncing = None
        return held or []

    def _finish_join(
        self,
        conn: Connection,
        room: Room,
        reply_id: Any,
        again: Iterable[Any],
        since: Position | None,
        answer: Any,
        held: list[Held],
        count: int | None = None,
    ) -> None:
        """Send what the joiner missed (``answer``: a ``Recovery``, a ``Position``, None when the
        broker could not answer, False when the room keeps no history), then the reply, then the
        stored messages held back meanwhile that come after the reply's offset. ``count``: the
        user's connections in the room on every node (None: unknown, count this node's)."""
        if room.member_map.get(conn.id) is not conn:
            return  # left or closed meanwhile
        if answer is False:
            self._announce_join(conn, room, reply_id, again, count=count)
            return
        extra: dict[str, Any] = {}
        position: Position | None = None
        if isinstance(answer, Recovery):
            position = answer.position
            if answer.recovered and since is not None:
                reached, held = self._merge(conn, since, answer.payloads, held)
                position = Position(max(reached.offset, position.offset), position.epoch)
                self.recoveries += 1
            else:
                extra["reason"] = answer.reason
                self.recoveries_failed += 1
            extra["recovered"] = answer.recovered
        elif isinstance(answer, Position):
            position = answer
        else:  # the broker could not answer: a member without a position could not tell a gap
            self._join_failed(conn, room, [reply_id, *again])
            return
        if position is not None:
            extra["offset"], extra["epoch"] = position.offset, position.epoch
            if room.epoch is None or room.offset < position.offset:
                room.offset, room.epoch = position.offset, position.epoch
        self._announce_join(conn, room, reply_id, again, extra, count)
        if held and position is not None:
            self._send_after(conn, room, position, held)

    def _joined_at(self, conn: Connection, room: Room, reply_id: Any, position: Position) -> None:
        """The usual join, answered at once: ``_finish_join`` with the room's stream position
        for an answer, nothing held back, and this node counting the user's connections."""
        offset, epoch = position.offset, position.epoch
        if room.epoch is None or room.offset < offset:
            room.offset, room.epoch = offset, epoch
        self._announce_join(conn, room, reply_id, (), {"offset": offset, "epoch": epoch})

    def _join_failed(self, conn: Connection, room: Room, reply_ids: list[Any]) -> None:
        """A join into a room with history whose position could not be read (the broker is
        down): undone without a trace for the others, and answered ``unavailable`` (retry)."""
        name = room.name
        if room.member_map.pop(conn.id, None) is not None:
            room.changed()
            conn.drop_room(name)
            remote = self._remote
            if remote is not None:
                remote.room_resized(name, len(room.member_map))
                _settled(remote.presence_change(name, conn.user_id, -1, None))
            if not room.member_map:
                if remote is not None:
                    remote.room_closed(name)
                if not room.persistent and self._rooms.get(name) is room:
                    del self._rooms[name]
        self.joins_unavailable += 1
        text = f"joining {name!r} needs its stream position, which cannot be read now; retry"
        for rid in reply_ids:
            conn.send_json(error_envelope(ErrorCode.UNAVAILABLE, text, rid))
        done = self._join_done.pop((conn.id, name), None)
        if done is not None:
            done({"event": "join_failed", "room": name, "reason": "unavailable"})

    def _announce_join(
        self,
        conn: Connection,
        room: Room,
        reply_id: Any,
        again: Iterable[Any] = (),
        extra: dict[str, Any] | None = None,
        count: int | None = None,
    ) -> None:
        """The joiner's ``joined`` reply and, in small rooms, the others' ``user_joined`` when
        this is the user's first connection in the room (``count``: its connections in the room
        on every node, None: unknown, this node's members decide); ``again``: reply ids of
        repeated joins made while the first one waited."""
        if room.member_map.get(conn.id) is not conn:
            return  # closed while the room's subscription was being set up
        name = room.name
        size = self.broker.room_size(name)
        if 1 < size <= self.config.member_events_limit and self._alone(conn, room) and not (count and count > 1):
            self.publish_room(name, self._member_event("user_joined", room, conn, size), conn.id)
        self._reply_membership(conn, room, "joined", reply_id, size, extra)
        for rid in again:
            self._reply_membership(conn, room, "joined", rid, size, extra)

    def leave_room(self, conn_id: str, name: str, *, reply_id: Any = None) -> bool:
        """Remove a connection from a room; False if it was not a member."""
        return self._leave(self._conn(conn_id), name, reply_id, reply=True)

    def _leave(self, conn: Connection, name: str, reply_id: Any, reply: bool) -> bool:
        room = self._rooms.get(name)
        if room is None or conn.id not in room.member_map:
            return False
        if self._pending_joins and (conn.id, name) in self._pending_joins:
            # its join is still waiting for the room's subscription: answer it first, in order
            # (with the count known now)
            _, first, more = self._pending_joins.pop((conn.id, name))
            self._end_sync(room, conn.id)
            self._announce_join(conn, room, first, more)
            self._join_answered((conn.id, name))
        elif room.syncing:
            self._end_sync(room, conn.id)
        del room.member_map[conn.id]
        room.changed()
        conn.drop_room(name)
        self._typing.forget(conn.id, name)
        remote = self._remote
        counted: Any = None  # the user's connections left in the room on every node
        if remote is not None:
            remote.room_resized(name, len(room.member_map))
            counted = remote.presence_change(name, conn.user_id, -1, None)
        size = self.broker.room_size(name)  # before room_closed: the cluster's count, others included
        if not room.member_map:
            if remote is not None:
                remote.room_closed(name)
            if not room.persistent:
                del self._rooms[name]
        if reply:
            self._reply_membership(conn, room, "left", reply_id, size)
        if 0 < size < self.config.member_events_limit and self._alone(conn, room):
            # once per user: only when its last connection in the room, on every node, left
            event = self._member_event("user_left", room, conn, size)
            if _pending(counted):
                counted.add_done_callback(lambda done: self._left_everywhere(done, name, event))
            elif not counted:
                self.publish_room(name, event)
        elif _pending(counted):
            _settled(counted)
        return True

    def _left_everywhere(self, done: asyncio.Future[int], name: str, event: Payload) -> None:
        """A leave's presence answer: ``user_left`` when the user has no connection left in the
        room on any node (or when the broker could not say)."""
        if done.cancelled() or done.exception() is not None or not done.result():
            self.publish_room(name, event)

    @staticmethod
    def _alone(conn: Connection, room: Room) -> bool:
        """Whether no other connection of ``conn``'s user is a member of ``room`` here (a scan,
        made only in rooms small enough for member events)."""
        if conn.anonymous:
            return True
        user = conn.user_id
        for other in room.member_map.values():
            if other is not conn and not other.anonymous and other.user_id == user:
                return False
        return True

    def broadcast_to_room_json(self, name: str, obj: Any, exclude: Exclude = None) -> int:
        """Send ``obj`` (encoded once) to the members of a room; 0 if the room has none here.

        A JSON object is stored in the room's history and gets the room's next ``offset`` (see
        ``publish_to_room``); other values are sent as they are, not stored.
        """
        if isinstance(obj, dict):
            room = self._rooms.get(name)
            body = _body(obj) if self.config.history_for(name) else encode(obj)  # stored: offset is ours
            return _accepted(self.publish_stored(ROOM, name, body, exclude), room.member_map if room else None)
        return self.publish_room(name, Payload(KIND_TEXT, encode(obj)), exclude)

    async def publish_to_room(
        self, name: str, obj: dict[str, Any], *, exclude: Exclude = None, idempotency_key: str | None = None
    ) -> Published | None:
        """Store ``obj`` in the room's history and send it to the members on every node; first
        wait while a member here is over the publish watermark (flow control: a loop of these
        goes at the pace of the members that read, instead of closing them as slow consumers).

        Returns its position once stored (None when the room keeps no history). A repeated
        ``idempotency_key`` within the history window is not sent again and returns the first
        publish's position with ``duplicate=True``.
        """
        await self.wait_room_drained(name)
        result = self.publish_stored(ROOM, name, _body(obj), exclude, idempotency_key)
        if isinstance(result, int):
            return None
        return result if isinstance(result, Published) else await result

    def broadcast_to_room_bytes(self, name: str, data: bytes, exclude: Exclude = None) -> int:
        return self.publish_room(name, Payload(KIND_BINARY, bytes(data)), exclude)

    @staticmethod
    def _system(payload: dict[str, Any], room: str | None = None, reply_id: Any = None) -> Payload:
        return Payload(KIND_TEXT, encode(system_envelope(payload, room, reply_id)))

    def _reply_membership(
        self,
        conn: Connection,
        room: Room,
        action: str,
        reply_id: Any,
        size: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        members = self.broker.room_size(room.name) if size is None else size
        payload = {"event": action, "action": action, "room": room.name, "members": members}
        if extra:
            payload.update(extra)
        conn.send_payload(self._system(payload, room.name, reply_id))
        if self._join_done and action == "joined":
            done = self._join_done.pop((conn.id, room.name), None)
            if done is not None:
                done(payload)

    def _member_event(self, action: str, room: Room, conn: Connection, members: int) -> Payload:
        payload = {
            "event": action,
            "action": action,
            "room": room.name,
            "user_id": conn.user_id,
            "members": members,
        }
        return self._system(payload, room.name)

    # -- shutdown and stats ----------------------------------------------------------------------

    def close_all(self, code: int = 1001, reason: str = "server shutting down") -> None:
        for conn in list(self._connections.values()):
            conn.close(code, reason)

    def handshake_failed(self, status: int) -> None:
        """Count an upgrade request answered with HTTP ``status`` (for /metrics)."""
        self.handshake_failures[status] = self.handshake_failures.get(status, 0) + 1

    def resumed(self, outcome: str) -> None:
        """Count a session resume by outcome: resumed, expired, invalid or unavailable."""
        self.resumes[outcome] = self.resumes.get(outcome, 0) + 1

    def ready(self) -> tuple[bool, str]:
        """Whether this process accepts connections now, and why not (what /readyz answers)."""
        if self.draining:
            return False, "draining"
        if self._loop is None:
            return False, "not started"
        if getattr(self.broker, "up", True) is False:
            return False, "broker unreachable"
        c = self.config
        if c.max_connections and len(self._connections) >= c.max_connections:
            return False, "at max_connections"
        return True, "ready"

    async def drain(self, rate: float | None = None, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Close every connection with 1012, ``rate`` per second, and refuse new ones meanwhile.

        Each connection's queued messages go out before its close frame, and its session (rooms
        and stream positions) is kept as at any close, so a client resumes on another node
        without loss. Connections are closed in batches every 100 ms (``rate``, default
        ``HubConfig.drain_rate``; 0: all at once) so their clients do not reconnect to the
        neighbours all in the same instant. Returns True when every connection was gone within
        ``timeout`` (default ``HubConfig.drain_timeout``) and the broker had written what it held.
        """
        c = self.config
        rate = c.drain_rate if rate is None else rate
        timeout = c.drain_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.draining = True
        log.info("fasthub: draining %d connections (%s per second)", len(self._connections), rate or "all")
        step = 0.1
        if rate:  # fast enough to reach every connection within 80% of the timeout
            rate = max(rate, len(self._connections) / max(step, 0.8 * timeout))
        credit = 1.0  # connections the rate allows by now (the first goes at once)
        while self._connections and loop.time() < deadline:
            open_ = [conn for conn in self._connections.values() if not conn.closing]
            batch = len(open_) if not rate else int(credit)
            credit -= batch
            for conn in open_[:batch]:
                conn.close(1012, "server restarting")
            await asyncio.sleep(step)
            credit += rate * step
        # a peer that does not answer its close frame is cut by the protocol's close timeout
        while self._connections and loop.time() < deadline:  # noqa: ASYNC110 (a bounded poll)
            await asyncio.sleep(0.02)
        done = not self._connections
        if not done:
            left_open = list(self._connections.values())
            log.warning("fasthub: drain timed out after %.1f s with %d connections left: %s", timeout,
                        len(left_open), ", ".join(f"{c!r} closing={bool(c.closing)}" for c in left_open[:5]))
        left = max(0.1, deadline - loop.time())
        flushed = await self.broker.flush(min(left, 5.0))
        return done and flushed

    def _memory(self) -> tuple[int, int, int | None]:
        """Bytes buffered for connections, RSS, and (RSS now - RSS at start) / connections."""
        buffered = 0
        for conn in self._connections.values():
            buffered += conn.size()
        rss = rss_bytes()
        conns = len(self._connections)
        return buffered, rss, round((rss - self._rss_at_start) / conns) if conns else None

    def stats(self) -> dict[str, Any]:
        """Counters for ``/ws/stats``: the original's four keys plus traffic and uptime."""
        buffered, rss, per_conn = self._memory()
        conns = len(self._connections)
        msgs_in_s, msgs_out_s, bytes_in_s, bytes_out_s = self._rates
        fanout = self.fanout
        out = {
            "connections": conns,
            "users": self.user_count(),
            "rooms": len(self._rooms),
            "room_list": list(self._rooms),
            "messages_in": self.messages_in,
            "messages_out": int(fanout.delivered),
            "bytes_in": self.bytes_in,
            "bytes_out": int(fanout.bytes_out),
            "messages_in_per_s": msgs_in_s,
            "messages_out_per_s": msgs_out_s,
            "bytes_in_per_s": bytes_in_s,
            "bytes_out_per_s": bytes_out_s,
            "dropped": int(fanout.dropped),
            "slow_consumer_closes": self.slow_consumer_closes,
            "recoveries": self.recoveries,
            "sessions_saved": self.sessions_saved,
            "joins_unavailable": self.joins_unavailable,
            "recoveries_failed": self.recoveries_failed,
            "rate_limited": self.rate_limited + sum(c.refused for c in self._connections.values()),
            "connections_opened": self.connections_opened,
            "connections_closed": self.connections_closed,
            "bytes_buffered": buffered,
            "rss_bytes": rss,
            "memory_per_connection_bytes": per_conn,  # (RSS now - RSS at start) / connections
            "uptime_s": round(time.monotonic() - self._started, 3),
            "started_at": self._started_wall,
            "compiled": all(_ext.LIVE.values()) if _ext.LIVE else False,
            # how a pass's direct sends reach the kernel: "io_uring" (one call per 64) or "send"
            "send_path": _send_path(fanout),
            "cpu_s": round(cpu_seconds(), 3),
            # unit costs fitted over the last sweeps (None: the traffic did not tell them apart)
            "costs": self.cost_meter.costs(),
            # permessage-deflate and MessagePack: payloads compressed (once each per window) and
            # their bytes before and after, payloads converted to MessagePack (once each)
            "compression": {
                "compressed": self.forms.compressed,
                "bytes_in": self.forms.compressed_in,
                "bytes_out": self.forms.compressed_out,
                "msgpack_converted": self.forms.packed,
            },
        }
        broker = self.broker.stats()
        if broker:
            out["broker"] = broker
        return out

    def node_stats(self) -> dict[str, Any]:
        """What this node tells the cluster view (``RedisBroker``'s heartbeat); ``bytes_buffered``,
        ``slow_consumer_closes`` and ``memory_per_connection_bytes`` as in ``stats()``."""
        msgs_in_s, msgs_out_s, _, _ = self._rates
        buffered, rss, per_conn = self._memory()
        return {
            "pid": os.getpid(),
            "host": _HOSTNAME,
            "connections": len(self._connections),
            "users": len(self._users),
            "anonymous": self._anonymous,
            "rooms": len(self._rooms),
            "messages_in_per_s": msgs_in_s,
            "messages_out_per_s": msgs_out_s,
            "bytes_buffered": buffered,
            "slow_consumer_closes": self.slow_consumer_closes,
            "rss_bytes": rss,
            "memory_per_connection_bytes": per_conn,
            "uptime_s": round(time.monotonic() - self._started, 1),
        }

    async def cluster_stats(self) -> dict[str, Any]:
        """``stats()`` for the whole cluster: what ``/ws/stats`` serves.

        With a clustered broker, ``connections``, ``users``, ``rooms`` and ``room_list`` count
        every node (this process's own numbers move to ``node``), and ``cluster`` lists the live
        nodes with their counters. With the in-process broker it is ``stats()``.
        """
        out = self.stats()
        try:
            view = await self.broker.cluster_view()
        except Exception as exc:  # Redis went away between the heartbeat and now
            view = {"state": "down", "error": str(exc)}
        if view is None:
            return out
        out["cluster"] = view
        if view.get("state") == "up":
            out["node"] = {key: out[key] for key in ("connections", "users", "rooms", "room_list")}
            for key in ("connections", "users", "rooms", "room_list"):
                out[key] = view[key]
        return out


_background: set[asyncio.Future[Any]] = set()


def _pending(answer: Any) -> bool:
    """``inspect.isawaitable`` for a broker's answer, without its ABC checks for the usual plain
    answers (None, a count, a ``Position``): a join and a leave ask this up to three times."""
    return answer is not None and type(answer) not in _PLAIN_ANSWERS and inspect.isawaitable(answer)


_PLAIN_ANSWERS = frozenset({int, bool, Position, Recovery, tuple})


def _settled(answer: Any) -> None:
    """A broker answer nobody waits for: its failure is retrieved, so none is reported as lost
    (the broker itself notes a failed presence write and rewrites it later)."""
    if isinstance(answer, asyncio.Future):
        answer.add_done_callback(_retrieved)


def _retrieved(done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()


#: a stored message held back from a recovering member: (offset, payload, epoch)
Held = tuple[int, Payload, Any]
#: seconds a publisher to a congested room waits before it is looked at again
FLOW_PAUSE = 0.005


def _position_fields(position: Position | None) -> dict[str, Any] | None:
    return None if position is None else {"offset": position.offset, "epoch": position.epoch}


def _body(obj: dict[str, Any]) -> bytes:
    """``obj`` encoded for a stream: the offset is added on delivery, so a stale one is dropped."""
    if "offset" in obj:
        obj = {k: v for k, v in obj.items() if k != "offset"}
    return encode(obj)


def _accepted(result: Any, members: Mapping[str, Any] | None) -> int:
    """What a non-awaiting send returns: connections that accepted it here (for a broker that
    stores first, the local members it is on its way to)."""
    if isinstance(result, int):  # not stored: delivered here already
        return result
    if isinstance(result, Published):
        return result.delivered
    return len(members) if members else 0


def _hold_back(held: dict[str, list[Held]], offset: int, payload: Payload, epoch: Any, exclude: Any) -> Any:
    """Keep a stored message for the members that are still recovering; exclude them from delivery."""
    for conn_id, buffer in held.items():
        if exclude is None or conn_id not in exclude:
            buffer.append((offset, payload, epoch))
    if exclude is None:
        return frozenset(held)
    return frozenset(held).union(exclude)


def client_ip(scope: Any) -> str:
    """The client address of an ASGI scope (forwarded by a trusted proxy when
    ``--proxy-headers`` is on), or "?" when the server gave none."""
    client = scope.get("client") if scope is not None else None
    return str(client[0]) if client else "?"


def rss_bytes() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return 0


def _send_path(fanout: Fanout) -> str:
    """``ring_state()`` of the sockio module whose ``SendBatch`` the fan-out uses."""
    return str(sys.modules[type(fanout.batch).__module__].ring_state())
