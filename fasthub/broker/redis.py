"""``RedisBroker``: several hub processes, on one machine or many, act as one hub through Redis.

Traffic discipline (docs/cluster.md has the figures):

- One channel per room and per user, subscribed only while this node has a local member (or
  connection) and unsubscribed when the last one leaves: a node with no member of room X
  receives none of X's traffic. Subscription changes made in one event-loop tick leave in one
  ``SUBSCRIBE``/``UNSUBSCRIBE`` command each.
- A channel name carries a partition hash tag (``fasthub:{7}:r:lobby``), so on a Redis Cluster
  the rooms spread over a fixed number of slots; ``sharded=True`` uses Redis 7 sharded pub/sub
  (``SPUBLISH``/``SSUBSCRIBE``) there.
- The encoded envelope crosses Redis once per message (``codec``); publishes made in one tick
  leave in one pipelined write, in order, from one writer task, so one connection's messages
  to a room reach every node in the order sent. A node skips its own messages (sender id).
- Cluster answers: each node keeps its member count of every room and its users in two
  hashes with a TTL (``fasthub:n:{<node>}:rooms`` / ``:users``) and announces count changes on
  the room's channel, so ``room_size`` is a sum of cached numbers (no round trip on a join) and
  ``user_online`` is the node set, then one pipelined ``HEXISTS`` per other node. A heartbeat
  key per node, with a TTL, is the cluster view; a node that dies drops out of it within
  ``ttl`` seconds.
- Presence: a hash per room (user -> connections per node) and one of exposed info, written by
  deltas in the per-tick pipeline (``scripts.PRESENCE_CHANGE``), read in one script call;
  entries of nodes whose key expired are left out and removed by the reader, and the keys
  expire ``presence_ttl`` after live nodes stop refreshing them.

Faults: Redis down (at start or later) never stops local delivery. Publishes that cannot go
out are counted (``broker_errors``), the outage is logged once, and the broker reconnects with
backoff (at most ``retry_max`` seconds apart), resubscribes every channel with local members
and rewrites this node's hashes. Bad data on a channel is counted (``bad_messages``) and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from redis.utils import HIREDIS_AVAILABLE

from .._core import KIND_BINARY, KIND_PLAIN, KIND_TEXT, Payload
from ..presence import Counts
from ..stopping import bounded, stop_tasks
from ..streams import ROOM, Position, Published, Recovery, new_epoch, with_offset
from . import codec, scripts
from .links import Link, SingleLink

if TYPE_CHECKING:
    from . import Node

log = logging.getLogger("fasthub.broker")

#: seconds a join reply waits for the room's subscription before it is sent anyway
READY_TIMEOUT = 2.0
#: user_online checks in flight at once (redis-py's pool holds 100 connections)
ONLINE_CHECKS = 32
#: subscription changes are gathered this long before one SUBSCRIBE/UNSUBSCRIBE leaves (a join
#: storm arrives over many ticks; the first member of a room on a node waits this much longer)
SUBSCRIBE_DELAY = 0.005


def redact(url: str) -> str:
    """``url`` without its password (for logs and ``/ws/stats``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


#: payload kinds and the broker codec's, both ways
_CODEC_KINDS = {KIND_TEXT: codec.TEXT, KIND_PLAIN: codec.PLAIN, KIND_BINARY: codec.BINARY}
_PAYLOAD_KINDS = {v: k for k, v in _CODEC_KINDS.items()}


class RedisBroker:
    """Joins this hub to every other hub on the same Redis (and ``prefix``).

    Args:
        url: ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS).
        prefix: key and channel namespace; hubs with different prefixes share nothing.
        partitions: hash-tag partitions for room and user channels (fixed for a cluster's life).
        sharded: use ``SPUBLISH``/``SSUBSCRIBE`` (Redis >= 7) instead of ``PUBLISH``/``SUBSCRIBE``.
        cluster: ``url`` is one node of a Redis Cluster: each command goes to the master owning its
            slot (``cluster_link.ClusterLink``); implies ``sharded`` (a cluster's plain pub/sub
            would copy every message to every master).
        ttl: seconds after which a silent node leaves the cluster view (heartbeat every ttl/3).
        retry_max: longest pause between reconnect attempts.
        max_pending: messages held for Redis while it is slow; more are counted and dropped.
        presence_ttl: seconds a room's presence keys outlive the last node that refreshes them
            (every ``presence_ttl / 3``); default ``max(60, 4 * ttl)``. A dead node's entries are
            left out of answers within ``ttl`` whatever this is: it only bounds leftovers.
    """

    remote = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "fasthub",
        partitions: int = 64,
        sharded: bool = False,
        cluster: bool = False,
        ttl: float = 5.0,
        retry_max: float = 1.0,
        max_pending: int = 100_000,
        presence_ttl: float | None = None,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        if not ttl > 0:
            raise ValueError("ttl must be > 0")
        if presence_ttl is not None and not presence_ttl > 0:
            raise ValueError("presence_ttl must be > 0")
        self.url = url
        self.prefix = prefix
        self.partitions = partitions
        self.cluster = cluster
        self.sharded = sharded or cluster
        self.ttl = float(ttl)
        self.retry_max = float(retry_max)
        self.max_pending = max_pending
        self.presence_ttl = float(presence_ttl) if presence_ttl is not None else max(60.0, 4 * self.ttl)
        self._presence_ms = max(1, int(self.presence_ttl * 1000))
        self._presence_refreshed = 0.0  # loop time of the last refresh of the presence keys' TTL
        self._presence_lost: set[str] = set()  # rooms whose presence writes were lost (rewritten later)
        self.node_id = os.urandom(8).hex()
        self._node_b = self.node_id.encode()
        self.node: Node | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: Link | None = None
        self._main: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[Any]] = []  # reader, writer, heartbeat: one ends, all restart
        self._side: set[asyncio.Task[Any]] = set()  # subscription changes and count loads
        self.up = False
        # what this node wants to hear: channel -> ("r", room) / ("u", user) / ("a", "")
        self._routes: dict[bytes, tuple[str, str]] = {}
        self._all_channel = f"{prefix}:{{0}}:all".encode()
        self._channels: dict[str, bytes] = {}  # room -> channel name (every room message needs it)
        self._subscribed: set[bytes] = set()  # sent SUBSCRIBE for these
        self._pending_add: set[bytes] = set()  # wanted since the last subscription change
        self._pending_drop: set[bytes] = set()
        self._confirmed: set[bytes] = set()  # Redis confirmed these
        self._subs_scheduled = False
        self._ready: dict[str, asyncio.Future[None]] = {}  # room -> join replies waiting for it
        self._user_waiters: dict[bytes, asyncio.Future[None]] = {}  # user channel -> opens waiting
        # user -> opens waiting for the user's entry in this node's users hash (the other nodes'
        # online check), and the users listed there while their first connection opens
        self._user_listed: dict[str, asyncio.Future[None]] = {}
        self._opening: dict[str, float] = {}  # user -> loop time of the latest such open
        self._to_load: set[str] = set()  # rooms subscribed whose counts are being read
        self._loading = False
        # cluster counts: room -> node -> (seq, members) for rooms this node is subscribed to
        self._counts: dict[str, dict[bytes, tuple[int, int]]] = {}
        self._seq = 0
        self._rooms_dirty: set[str] = set()
        self._announced: set[str] = set()  # rooms whose last announced local count was not 0
        self._users_dirty: set[str] = set()
        self._live: list[bytes] = []  # other live node ids, from the last heartbeat
        self._online_checks = asyncio.Semaphore(ONLINE_CHECKS)
        self._view: dict[str, Any] = {}
        # the writer: commands queued in one tick leave in one pipeline
        self._out: list[tuple[Any, ...]] = []
        # id(out entry) -> (future, conversion of the answer or None): a publish's answer becomes
        # a ``Published``, a presence change's a count, a read's stays the script's raw answer
        self._futures: dict[int, tuple[asyncio.Future[Any], Callable[[Any], Any] | None]] = {}
        # barriers about to be sent, one per pub/sub connection, shared by the reads of a tick
        self._barrier_soon: dict[str, asyncio.Future[None]] = {}
        self._wake: asyncio.Event | None = None
        # streams: script SHA1s (loaded at every connect), barriers waiting for their pong
        self._shas: dict[str, str] = {}
        self._barriers: dict[bytes, asyncio.Future[None]] = {}
        self._barrier_seq = 0
        self.meta_ttl = 86400
        self._connected_once = False
        self._secret: bytes | None = None
        self._outage_logged = False
        # counters for /ws/stats
        self.published = 0
        self.received = 0
        self.broker_errors = 0
        self.bad_messages = 0
        self.outages = 0
        self._bad_logged_at = 0.0
        self.lag = 0.0  # seconds: the last probe's round trip through a pub/sub connection
        self._writing = False  # the writer has a pipeline in flight

    # -- names ------------------------------------------------------------------------------------

    def _partition(self, name: str) -> int:
        return zlib.crc32(name.encode()) % self.partitions

    def room_channel(self, room: str) -> bytes:
        channel = self._channels.get(room)
        if channel is None:
            if len(self._channels) >= 65536:  # a cache, not a registry of every room ever seen
                self._channels.clear()
            channel = self._channels[room] = f"{self.prefix}:{{{self._partition(room)}}}:r:{room}".encode()
        return channel

    def user_channel(self, user_id: str) -> bytes:
        return f"{self.prefix}:{{{self._partition(user_id)}}}:u:{user_id}".encode()

    def _node_key(self, node: str | bytes, part: str = "") -> str:
        if isinstance(node, bytes):
            node = node.decode()
        return f"{self.prefix}:n:{{{node}}}{part}"

    @property
    def _nodes_key(self) -> str:
        return f"{self.prefix}:nodes"

    # -- lifecycle --------------------------------------------------------------------------------

    def bind(self, node: Node) -> None:
        self.node = node
        config = getattr(node, "config", None)
        if config is not None:
            self.meta_ttl = max(1, int(config.history_meta_ttl))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Connect in the background (the hub serves its local connections meanwhile)."""
        if self._loop is loop and self._main is not None and not self._main.done():
            return
        self._loop = loop
        self._wake = asyncio.Event()
        self._main = loop.create_task(self._run())

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until the writer has sent every queued command (publishes, saved sessions)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._wake_writer()
        while (self._out or self._writing) and loop.time() < deadline:  # noqa: ASYNC110 (a bounded poll)
            await asyncio.sleep(0.005)
        return not (self._out or self._writing)

    async def close(self) -> None:
        """Leave the cluster: stop the tasks, remove this node's keys, close the connections.

        What the writer holds (a closing connection's saved session, the last publishes) is
        written first, for at most a second."""
        if self.up and self._main is not None:
            await self.flush(1.0)
        main, self._main = self._main, None
        if main is not None:
            # redis-py can swallow a cancel that lands inside its connect: stop_tasks cancels again
            await stop_tasks([main], 2.0, "broker close")
        if self._link is not None and self.up:
            me = self.node_id
            rooms = [name for kind, name in self._routes.values() if kind == "r"]
            await bounded(self._link.execute([self._presence_reset(room, {}) for room in rooms]), 1.0,
                          "broker close: presence reset")
            leave = [
                ("SREM", self._nodes_key, me),
                ("DEL", self._node_key(me)),
                ("DEL", self._node_key(me, ":rooms")),
                ("DEL", self._node_key(me, ":users")),
            ]
            await bounded(self._link.execute(leave), 1.0, "broker close: leave")
        await self._disconnect()
        self.up = False
        self._release_waiters()

    async def _run(self) -> None:
        """Connect, serve until a task fails, then reconnect with backoff; forever (until ``close``)."""
        delay = 0.05
        while True:
            try:
                await self._connect()
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError  # close() cancelled the connect; redis-py swallowed it
                delay = 0.05
                if self.outages:
                    log.warning("fasthub: broker: Redis at %s is back", redact(self.url))
                self._outage_logged = False
                done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
                failure = next((t.exception() for t in done if not t.cancelled() and t.exception()), None)
                raise failure if failure is not None else ConnectionError("a broker task ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._went_down(exc)
                await self._disconnect()
                await asyncio.sleep(delay)
                delay = min(self.retry_max, delay * 2)

    def _new_link(self) -> Link:
        if self.cluster:
            from .cluster_link import ClusterLink

            return ClusterLink(self.url, max(5.0, self.ttl))
        return SingleLink(self.url, self.sharded, max(5.0, self.ttl))

    async def _connect(self) -> None:
        self._link = self._new_link()
        await self._link.connect()
        self._shas = {
            "publish": await self._link.script_load(scripts.PUBLISH),
            "read": await self._link.script_load(scripts.READ),
            "presence": await self._link.script_load(scripts.PRESENCE_CHANGE),
            "presence_reset": await self._link.script_load(scripts.PRESENCE_RESET),
            "presence_get": await self._link.script_load(scripts.PRESENCE_GET),
        }
        await self._heartbeat_once()
        self._subscribed.clear()
        self._confirmed.clear()
        self._to_load.clear()
        self._loading = False
        for counts in self._counts.values():  # announcements were missed: read them all again
            counts.clear()
        # everything with local members, plus the broadcast channel; and this node's hashes
        self._routes[self._all_channel] = ("a", "")
        await self._send_subscribe(list(self._routes))
        self._rewrite_state()
        self.up = True
        self._pending_add.clear()
        self._pending_drop.clear()
        # what changed while connecting (a room opened or closed during the resubscribe)
        self._pending_add.update(ch for ch in self._routes if ch not in self._subscribed)
        self._pending_drop.update(ch for ch in self._subscribed if ch not in self._routes)
        self._sync_subs()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._reader()),
            loop.create_task(self._writer()),
            loop.create_task(self._heartbeat()),
        ]
        if self._rooms_dirty or self._users_dirty or self._out:
            self._wake_writer()
        if self._connected_once and self.node is not None:
            # live messages published while the link was down were missed: the hub checks
            # every room it serves against its stream (and sends what is missing)
            self.node.streams_reconnected()
        self._connected_once = True

    def _went_down(self, exc: BaseException) -> None:
        was_up, self.up = self.up, False
        if was_up or not self._outage_logged:
            self.outages += 1
            log.error("fasthub: broker: Redis at %s unreachable (%s); retrying, local delivery goes on",
                      redact(self.url), exc or type(exc).__name__)
            self._outage_logged = True
        self.broker_errors += sum(cmd[0] for cmd in self._out)
        self._fail_futures(self._out, exc)
        self._out.clear()
        self._release_waiters()
        for fut in [*self._barriers.values(), *self._barrier_soon.values()]:
            _settle(fut)
        self._barriers.clear()
        self._barrier_soon.clear()

    def _release_waiters(self) -> None:
        """Joins and opens waiting for a subscription go on now, with what is known."""
        tables: tuple[dict[Any, asyncio.Future[None]], ...] = (self._ready, self._user_waiters, self._user_listed)
        for table in tables:
            for fut in table.values():
                _settle(fut)
            table.clear()

    def _waiter(self, table: dict[Any, asyncio.Future[None]], key: Any) -> asyncio.Future[None]:
        """The future for ``key`` in ``table``, completed by ``READY_TIMEOUT`` at the latest."""
        fut = table.get(key)
        if fut is None or fut.done():  # one settled by its timeout: a new wait gets its own
            assert self._loop is not None
            fut = table[key] = self._loop.create_future()
            self._loop.call_later(READY_TIMEOUT, _settle, fut)
        return fut

    def _load(self, rooms: Iterable[str]) -> None:
        """Read the other nodes' counts of ``rooms`` (one task at a time gathers them)."""
        self._to_load.update(rooms)
        if not self._loading:
            self._loading = True
            self._spawn(self._load_counts())

    async def _disconnect(self) -> None:
        tasks = [*self._tasks, *self._side]
        self._tasks = []
        self._side.clear()
        await stop_tasks(tasks, 1.0, "broker disconnect")
        link, self._link = self._link, None
        if link is not None:
            await bounded(link.close(), 1.5, "broker disconnect: closing the Redis connections")

    # -- subscriptions ----------------------------------------------------------------------------

    def _want(self, channel: bytes, route: tuple[str, str]) -> None:
        self._routes[channel] = route
        self._pending_drop.discard(channel)
        if channel not in self._subscribed:
            self._pending_add.add(channel)
        self._schedule_subs()

    def _unwant(self, channel: bytes) -> None:
        self._routes.pop(channel, None)
        self._pending_add.discard(channel)
        if channel in self._subscribed:
            self._pending_drop.add(channel)
        self._schedule_subs()

    def _schedule_subs(self) -> None:
        if not self._subs_scheduled and self._loop is not None:
            self._subs_scheduled = True
            self._loop.call_later(SUBSCRIBE_DELAY, self._sync_subs)

    def _sync_subs(self) -> None:
        self._subs_scheduled = False
        if not self.up or self._link is None:
            return  # (re)connecting subscribes to everything in _routes
        # only what changed since the last call: no walk over every channel of the node
        add = [ch for ch in self._pending_add if ch in self._routes and ch not in self._subscribed]
        drop = [ch for ch in self._pending_drop if ch not in self._routes and ch in self._subscribed]
        self._pending_add.clear()
        self._pending_drop.clear()
        # bookkeeping now, before any await: a channel wanted again meanwhile is re-added above
        self._subscribed.difference_update(drop)
        self._confirmed.difference_update(drop)
        if add or drop:
            self._spawn(self._change_subs(add, drop))

    def _spawn(self, coro: Any) -> None:
        """A short task of this connection's life; its failure shows in the reader anyway."""
        task = asyncio.ensure_future(coro)
        self._side.add(task)
        task.add_done_callback(self._side_done)

    def _side_done(self, task: asyncio.Task[Any]) -> None:
        self._side.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("fasthub: broker: %s", task.exception())

    async def _change_subs(self, add: list[bytes], drop: list[bytes]) -> None:
        if drop:
            assert self._link is not None
            await self._link.unsubscribe(drop)
        if add:
            await self._send_subscribe(add)

    async def _send_subscribe(self, channels: list[bytes]) -> None:
        self._subscribed.update(channels)
        assert self._link is not None
        await self._link.subscribe(channels)

    # -- the Broker interface: membership ---------------------------------------------------------

    def room_opened(self, room: str) -> None:
        self._counts.setdefault(room, {})
        channel = self.room_channel(room)
        self._want(channel, ("r", room))
        if channel in self._confirmed and self.up:
            # closed and opened again before the unsubscribe left: still subscribed, but the
            # other nodes' counts were dropped at the close; read them again before replying
            self._load((room,))

    def room_closed(self, room: str) -> None:
        self._counts.pop(room, None)
        self._unwant(self.room_channel(room))
        _settle(self._ready.pop(room, None))

    def room_resized(self, room: str, local_size: int) -> None:
        self._rooms_dirty.add(room)
        self._wake_writer()

    def ready(self, room: str) -> Awaitable[None] | None:
        """None when this node already hears room's traffic; else a future for the join reply."""
        if not self.up or (self.room_channel(room) in self._confirmed and room not in self._to_load):
            return None
        return self._waiter(self._ready, room)

    def user_ready(self, user_id: str) -> Awaitable[Any] | None:
        """Before a user's connection opens: None if this node hears the user's channel and lists
        the user in its users hash, else a future that completes once Redis confirmed both the
        subscription and the entry (the ``connected`` message waits for it, so a ``user_message``
        sent from any node after it arrives: the sender's node finds the user online, and this
        node hears the channel)."""
        if not self.up:
            return None
        node = self.node
        channel = self.user_channel(user_id)
        listed = node is not None and node.local_user_online(user_id)
        if channel in self._confirmed and listed:
            return None
        loop = self._loop
        assert loop is not None
        if user_id not in self._opening:
            # forget the user again if no connection of the user registers (the client went away)
            loop.call_later(2 * READY_TIMEOUT, self._drop_unused_user, user_id)
        self._opening[user_id] = loop.time()  # a later open of the user pushes that back
        if channel not in self._routes:
            self._want(channel, ("u", user_id))
        waits = []
        if channel not in self._confirmed:
            waits.append(self._waiter(self._user_waiters, channel))
        if not listed:
            waits.append(self._waiter(self._user_listed, user_id))
            self._users_dirty.add(user_id)
            self._wake_writer()
        return waits[0] if len(waits) == 1 else asyncio.gather(*waits)

    def _drop_unused_user(self, user_id: str) -> None:
        """2 x READY_TIMEOUT after the latest open of ``user_id`` began: if no connection of the
        user registered, the channel and the users-hash entry made for it go again."""
        since = self._opening.get(user_id)
        if since is None:
            return
        loop = self._loop
        assert loop is not None
        due = since + 2 * READY_TIMEOUT
        if loop.time() < due:  # another open of the user began since
            loop.call_at(due, self._drop_unused_user, user_id)
            return
        del self._opening[user_id]
        _settle(self._user_listed.pop(user_id, None))
        node = self.node
        if node is not None and not node.local_user_online(user_id):
            self._unwant(self.user_channel(user_id))
            self._users_dirty.add(user_id)  # the entry written for the open that did not happen
            self._wake_writer()

    def user_opened(self, user_id: str) -> None:
        # registered: listed as a local user from now on (and no longer once it closes, not
        # 4 s later; an open of the same user still under way then may see its entry late)
        self._opening.pop(user_id, None)
        self._want(self.user_channel(user_id), ("u", user_id))
        self._users_dirty.add(user_id)
        self._wake_writer()

    def user_closed(self, user_id: str) -> None:
        if user_id not in self._opening:  # else another open of the user still needs the channel
            self._unwant(self.user_channel(user_id))
        self._users_dirty.add(user_id)
        self._wake_writer()

    def room_size(self, room: str) -> int:
        node = self.node
        size = node.local_room_size(room) if node is not None else 0
        counts = self._counts.get(room)
        if counts:
            live = self._live
            for other, (_, n) in counts.items():
                if other in live:
                    size += n
        return size

    def user_online(self, user_id: str) -> bool | Awaitable[bool]:
        node = self.node
        if node is not None and node.local_user_online(user_id):
            return True
        if not self.up:
            return False
        return self._online_elsewhere(user_id)

    async def _online_elsewhere(self, user_id: str) -> bool:
        """One ``HEXISTS`` per other node, from the node set as it is now (a node that started
        since the last heartbeat counts too); at most ``ONLINE_CHECKS`` at once."""
        async with self._online_checks:
            try:
                link = self._link
                assert link is not None
                (members,) = await link.execute([("SMEMBERS", self._nodes_key)])
                others = [m for m in members if m != self._node_b] if not isinstance(members, Exception) else []
                if not others:
                    return False
                answers = await link.execute([("HEXISTS", self._node_key(o, ":users"), user_id) for o in others])
            except Exception:
                self.broker_errors += 1
                return False
        return any(a is True or a == 1 for a in answers)

    # -- the Broker interface: presence ----------------------------------------------------------

    def _presence_keys(self, room: str) -> tuple[str, str]:
        base = f"{self.prefix}:{{{self._partition(room)}}}"
        return f"{base}:p:{room}", f"{base}:pi:{room}"

    def _presence_reset(self, room: str, users: Counts, drop: Iterable[bytes] | None = None) -> tuple[Any, ...]:
        """``PRESENCE_RESET``: remove the entries of ``drop`` (default: this node), then add this
        node's ``users``."""
        dropped = list(drop) if drop is not None else [self._node_b]
        args: list[Any] = [self._presence_ms, len(dropped), *dropped]
        for user, (n, info) in users.items():
            args += [user, b"%s:%d" % (self._node_b, n), info or b""]
        return ("EVALSHA", self._shas["presence_reset"], 2, *self._presence_keys(room), *args)

    def presence_change(self, room: str, user_id: str, delta: int, info: bytes | None) -> asyncio.Future[int] | None:
        """A ``PRESENCE_CHANGE`` in this tick's pipeline; the answer is the user's connections in
        the room on the live nodes. Lost (Redis down): None, and the room's entries of this node
        are rewritten from its members when Redis is back."""
        loop = self._loop
        if not self.up or loop is None or len(self._out) >= self.max_pending:
            self._presence_lost.add(room)
            return None
        fut: asyncio.Future[int] = loop.create_future()
        counts, infos = self._presence_keys(room)
        args = (user_id, self.node_id, delta, info or b"", self._presence_ms)
        entry: tuple[Any, ...] = (False, "EVALSHA", self._shas["presence"], 2, counts, infos, *args)
        self._out.append(entry)
        self._futures[id(entry)] = (fut, self._live_count)
        fut.add_done_callback(lambda done: self._presence_written(done, room))
        if len(self._out) == 1:
            self._wake_writer()
        return fut

    def _presence_written(self, done: asyncio.Future[int], room: str) -> None:
        if done.cancelled() or done.exception() is not None:
            self._presence_lost.add(room)

    def _live_count(self, value: Any) -> int:
        """A user's connections in a room on this node and the nodes alive at the last heartbeat
        (a node not known yet counts from the next one: at worst a second ``user_joined``)."""
        total = 0
        me, live = self._node_b, self._live
        for node, n in _entries(value):
            if node == me or node in live:
                total += n
        return total

    async def presence(self, room: str) -> Counts:
        counts, info = await self._presence_read(room, True)
        return {user: (n, info.get(user)) for user, n in counts.items()}

    async def presence_stats(self, room: str) -> tuple[int, int]:
        counts, _ = await self._presence_read(room, False)
        return len(counts), sum(counts.values())

    async def _presence_read(self, room: str, with_info: bool) -> tuple[dict[str, int], dict[str, bytes]]:
        """The room's presence through the writer (after this node's writes queued before it),
        counted on live nodes: those of the last heartbeat, and any other whose key exists now.
        Entries of nodes whose key is gone are removed."""
        link, loop = self._link, self._loop
        if not self.up or link is None or loop is None:
            raise ConnectionError("the broker is not connected to Redis")
        fut: asyncio.Future[Any] = loop.create_future()
        entry = (False, "EVALSHA", self._shas["presence_get"], 2, *self._presence_keys(room), 1 if with_info else 0)
        self._out.append(entry)
        self._futures[id(entry)] = (fut, None)
        if len(self._out) == 1:
            self._wake_writer()
        raw_counts, raw_info = await fut
        users: dict[str, list[tuple[bytes, int]]] = {}
        nodes: set[bytes] = set()
        for i in range(0, len(raw_counts) - 1, 2):
            entries = list(_entries(raw_counts[i + 1]))
            users[_text(raw_counts[i])] = entries
            nodes.update(node for node, _ in entries)
        alive = {self._node_b, *self._live}
        unknown = [node for node in nodes if node not in alive]
        if unknown:
            exists = await link.execute([("EXISTS", self._node_key(node)) for node in unknown])
            dead = [node for node, e in zip(unknown, exists, strict=True) if e == 0]
            alive.update(node for node in unknown if node not in dead)
            if dead:
                self._out.append((False, *self._presence_reset(room, {}, dead)))
                self._wake_writer()
        counts: dict[str, int] = {}
        for user, entries in users.items():
            total = sum(n for node, n in entries if node in alive)
            if total > 0:
                counts[user] = total
        info: dict[str, bytes] = {}
        for i in range(0, len(raw_info) - 1, 2):
            user = _text(raw_info[i])
            if user in counts:
                value = raw_info[i + 1]
                info[user] = value if isinstance(value, bytes) else str(value).encode()
        return counts, info

    # -- the Broker interface: publishing ---------------------------------------------------------

    def publish_room(self, room: str, payload: Payload, exclude: Any) -> None:
        self._publish(self.room_channel(room), payload, exclude)

    def publish_user(self, user_id: str, payload: Payload) -> None:
        self._publish(self.user_channel(user_id), payload, None)

    def publish_all(self, payload: Payload, exclude: Any) -> None:
        self._publish(self._all_channel, payload, exclude)

    def _publish(self, channel: bytes, payload: Payload, exclude: Iterable[str] | None) -> None:
        if not self.up:
            self._lost()
            return
        out = self._out
        if len(out) >= self.max_pending:
            self._lost()
            return
        kind = _CODEC_KINDS.get(payload.kind, codec.TEXT)
        try:
            data = codec.encode(kind, self._node_b, payload.data, exclude)
        except ValueError as exc:  # delivered locally already; the other nodes cannot get it
            self.broker_errors += 1
            log.warning("fasthub: broker: not published to other nodes: %s", exc)
            return
        out.append((True, "SPUBLISH" if self.sharded else "PUBLISH", channel, data))
        if len(out) == 1:
            self._wake_writer()

    # -- streams: history and offsets (scripts.PUBLISH / READ) ------------------------------------

    def _stream_keys(self, kind: str, name: str) -> tuple[str, str, str]:
        base = f"{self.prefix}:{{{self._partition(name)}}}"
        return f"{base}:s:{kind}:{name}", f"{base}:m:{kind}:{name}", f"{base}:i:{kind}:{name}:"

    def publish_stream(
        self,
        kind: str,
        name: str,
        body: bytes,
        exclude: Any,
        history: tuple[int, float],
        idempotency_key: str | None,
    ) -> asyncio.Future[Published]:
        """One ``scripts.PUBLISH`` in this tick's pipeline. Every node delivers the message from
        its channel, this one included, so all members everywhere see one order."""
        assert self._loop is not None
        fut: asyncio.Future[Published] = self._loop.create_future()
        if not self.up or len(self._out) >= self.max_pending:
            self._lost()
            fut.set_exception(ConnectionError("the broker is not connected to Redis"))
            return fut
        try:
            header = codec.encode(codec.STORED, self._node_b, b"", exclude)
        except ValueError as exc:
            fut.set_exception(exc)
            return fut
        stream, meta, idem = self._stream_keys(kind, name)
        channel = self.room_channel(name) if kind == ROOM else self.user_channel(name)
        keys: tuple[Any, ...] = (3, stream, meta, idem + idempotency_key) if idempotency_key else (2, stream, meta)
        entry = (
            True,
            "EVALSHA",
            self._shas["publish"],
            *keys,
            body,
            history[0],
            max(1, int(history[1] * 1000)),
            channel,
            "SPUBLISH" if self.sharded else "PUBLISH",
            self.meta_ttl,
            new_epoch(),
            header,
        )
        self._out.append(entry)
        self._futures[id(entry)] = (fut, _published)
        if len(self._out) == 1:
            self._wake_writer()
        return fut

    def _fail_futures(self, batch: Iterable[tuple[Any, ...]], exc: BaseException) -> None:
        futures = self._futures
        if not futures:
            return
        for cmd in batch:
            entry = futures.pop(id(cmd), None)
            if entry is not None and not entry[0].done():
                entry[0].set_exception(ConnectionError(f"Redis did not answer: {exc}"))

    def _session_key(self, session_id: str) -> str:
        return f"{self.prefix}:{{{self._partition(session_id)}}}:session:{session_id}"

    def save_session(self, session_id: str, record: bytes, ttl: float) -> None:
        if not self.up:
            return  # lost with the outage: that client's resume starts fresh
        self._out.append((False, "SET", self._session_key(session_id), record, "PX", max(1, int(ttl * 1000))))
        if len(self._out) == 1:
            self._wake_writer()

    async def take_session(self, session_id: str) -> bytes | None:
        link = self._link
        if not self.up or link is None:
            raise ConnectionError("the broker is not connected to Redis")
        (answer,) = await link.execute([("GETDEL", self._session_key(session_id))])
        if isinstance(answer, Exception):
            raise answer
        return answer if answer is None or isinstance(answer, bytes) else str(answer).encode()

    def stream_top(self, kind: str, name: str) -> Awaitable[Position]:
        return self._read(kind, name, None, 0, None)  # type: ignore[return-value]

    def stream_recover(
        self, kind: str, name: str, since: Position, limit: int, history: tuple[int, float]
    ) -> Awaitable[Recovery]:
        return self._read(kind, name, since, limit, history)  # type: ignore[return-value]

    async def _read(
        self, kind: str, name: str, since: Position | None, limit: int, history: tuple[int, float] | None
    ) -> Position | Recovery:
        """The stream's position (and the messages after ``since``), then a barrier on the
        channel's pub/sub connection: once it returns, every live message up to that position
        has reached this node."""
        link = self._link
        if not self.up or link is None:
            raise ConnectionError("the broker is not connected to Redis")
        stream, meta, _ = self._stream_keys(kind, name)
        ttl_ms = max(1, int(history[1] * 1000)) if history else 0
        start = since.offset if since is not None else -1
        # through the writer: the reads of a join storm leave in one pipeline per tick
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        entry = (False, "EVALSHA", self._shas["read"], 2, stream, meta, self.meta_ttl, new_epoch(), start, limit,
                 ttl_ms)
        self._out.append(entry)
        self._futures[id(entry)] = (fut, None)
        if len(self._out) == 1:
            self._wake_writer()
        answer = await fut
        top, epoch, entries = int(answer[0]), _text(answer[1]), answer[2]
        position = Position(top, epoch)
        await self._barrier(self.room_channel(name) if kind == ROOM else self.user_channel(name))
        if since is None:
            return position
        if since.epoch != epoch:
            return Recovery(position, False, [], "epoch")
        if since.offset > top:
            return Recovery(position, False, [], "offset")
        missed = top - since.offset
        if missed == 0:
            return Recovery(position, True, [])
        if missed > limit:
            return Recovery(position, False, [], "limit")
        if not isinstance(entries, list):
            return Recovery(position, False, [], "expired")
        payloads: list[tuple[int, Payload]] = []
        expect = since.offset + 1
        for entry_id, fields in entries:
            offset = int(_text(entry_id).partition("-")[0])
            if offset != expect:
                return Recovery(position, False, [], "expired")  # trimmed (MAXLEN) or gone
            data = _field(fields, b"d")
            payloads.append((offset, Payload(KIND_TEXT, with_offset(data, offset))))
            expect += 1
            if offset >= top:
                break
        if expect != top + 1:
            return Recovery(position, False, [], "expired")
        return Recovery(position, True, payloads)

    async def _barrier(self, channel: bytes) -> None:
        """Wait for a ``PING`` sent after now on the pub/sub connection of ``channel``; the reads
        that finish in one tick share one (sent on the next tick)."""
        link = self._link
        assert link is not None and self._loop is not None
        key = link.connection_of(channel)
        shared = self._barrier_soon.get(key)
        if shared is None:
            shared = self._barrier_soon[key] = self._loop.create_future()
            self._loop.call_soon(self._spawn, self._send_barrier(key, channel, shared))
        try:
            await asyncio.wait_for(asyncio.shield(shared), READY_TIMEOUT)
        except TimeoutError:
            log.debug("fasthub: broker: no pong for a barrier within %s s", READY_TIMEOUT)

    async def _send_barrier(self, key: str, channel: bytes, shared: asyncio.Future[None]) -> None:
        assert self._loop is not None
        if self._barrier_soon.get(key) is shared:
            del self._barrier_soon[key]  # reads finishing from now on need a later barrier
        self._barrier_seq += 1
        token = b"fasthub-barrier-%d" % self._barrier_seq
        self._barriers[token] = shared
        try:
            link = self._link
            if link is None:
                raise ConnectionError("the broker is not connected")
            await link.barrier(channel, token)
        except Exception:
            self._barriers.pop(token, None)
            _settle(shared)  # the link is going down: the reads go on (a reconnect resyncs)
            raise

    def _lost(self) -> None:
        self.broker_errors += 1
        if not self._outage_logged:
            self._outage_logged = True
            log.error("fasthub: broker: Redis at %s is not connected; cross-node messages are dropped "
                      "(counted in broker_errors) until it is back", redact(self.url))

    def _wake_writer(self) -> None:
        if self._wake is not None and not self._wake.is_set():
            self._wake.set()

    # -- the writer: one pipeline per tick --------------------------------------------------------

    async def _writer(self) -> None:
        wake = self._wake
        link = self._link
        assert wake is not None
        while True:
            await wake.wait()
            if self._link is not link:
                return  # left behind by a disconnect that could not stop it: the new writer writes
            wake.clear()
            if self._rooms_dirty or self._users_dirty:
                self._state_commands()
            while self._out:
                batch, self._out = self._out, []
                messages = 0
                for cmd in batch:
                    messages += cmd[0]
                assert self._link is not None
                self._writing = True
                try:
                    results = await self._link.execute([cmd[1:] for cmd in batch])
                except Exception as exc:
                    self.broker_errors += messages
                    self._fail_futures(batch, exc)
                    raise
                except asyncio.CancelledError:  # a disconnect: what waits for an answer gets one
                    self._fail_futures(batch, ConnectionError("the broker disconnected"))
                    raise
                finally:
                    self._writing = False
                failed = sum(1 for cmd, r in zip(batch, results, strict=True) if cmd[0] and isinstance(r, Exception))
                self.broker_errors += failed
                self.published += messages - failed
                if self._futures:
                    self._answer(batch, results)

    def _answer(self, batch: list[tuple[Any, ...]], results: list[Any]) -> None:
        """Complete the futures of the commands in ``batch`` that wait for an answer."""
        futures = self._futures
        noscript = None
        for cmd, result in zip(batch, results, strict=True):
            entry = futures.pop(id(cmd), None)
            if entry is None or entry[0].done():
                continue
            fut, convert = entry
            if isinstance(result, Exception):
                if "NOSCRIPT" in str(result):
                    noscript = result
                fut.set_exception(ConnectionError(f"Redis refused the script: {result}"))
            elif convert is None:
                fut.set_result(result)
            else:
                try:
                    fut.set_result(convert(result))
                except (ValueError, TypeError, IndexError) as exc:
                    fut.set_exception(ConnectionError(f"unexpected answer from Redis: {exc}"))
        if noscript is not None:  # the scripts were flushed: reconnect (which loads them again)
            raise ConnectionError(f"Redis lost the broker's scripts: {noscript}")

    def _state_commands(self) -> None:
        """This node's member counts and users as they are now, and the count announcements."""
        node = self.node
        out = self._out
        publish = "SPUBLISH" if self.sharded else "PUBLISH"
        if self._rooms_dirty:
            rooms_key = self._node_key(self.node_id, ":rooms")
            for room in self._rooms_dirty:
                n = node.local_room_size(room) if node is not None else 0
                self._seq += 1
                if n:
                    out.append((False, "HSET", rooms_key, room, b"%d %d" % (self._seq, n)))
                    self._announced.add(room)
                else:
                    out.append((False, "HDEL", rooms_key, room))
                    self._announced.discard(room)
                out.append((False, publish, self.room_channel(room), codec.encode_count(self._node_b, self._seq, n)))
            out.append((False, "PEXPIRE", rooms_key, int(self.ttl * 1000)))
            self._rooms_dirty.clear()
        if self._users_dirty:
            users_key = self._node_key(self.node_id, ":users")
            listed = self._user_listed
            for user in self._users_dirty:
                if user in self._opening or (node is not None and node.local_user_online(user)):
                    cmd = (False, "HSET", users_key, user, 1)
                    waiter = listed.pop(user, None)
                    if waiter is not None:  # an open waits for this entry
                        assert self._loop is not None
                        answer = self._loop.create_future()
                        answer.add_done_callback(functools.partial(_answered, waiter))
                        self._futures[id(cmd)] = (answer, None)
                    out.append(cmd)
                else:
                    out.append((False, "HDEL", users_key, user))
            out.append((False, "PEXPIRE", users_key, int(self.ttl * 1000)))
            self._users_dirty.clear()

    def _rewrite_state(self) -> None:
        """After a (re)connect, or when this node's keys expired: its hashes from scratch.

        A write lost with the connection may have left entries of rooms and users this node no
        longer has: the hashes are deleted and written again, and every room ever announced
        with members is announced again (with 0 where none are left). The same for this node's
        presence entries, in every room it has members of or lost a presence write in.
        """
        self._out.append((False, "DEL", self._node_key(self.node_id, ":rooms")))
        self._out.append((False, "DEL", self._node_key(self.node_id, ":users")))
        self._rooms_dirty.update(self._announced)
        rooms = self._presence_lost
        self._presence_lost = set()
        for kind, name in self._routes.values():
            if kind == "r":
                self._rooms_dirty.add(name)
                rooms.add(name)
            elif kind == "u":
                self._users_dirty.add(name)
        node = self.node
        for room in rooms:  # this node's presence entries from scratch (writes may have been lost)
            self._out.append((False, *self._presence_reset(room, node.local_presence(room) if node else {})))
        self._wake_writer()

    # -- the reader: other nodes' traffic ---------------------------------------------------------

    async def _reader(self) -> None:
        link = self._link
        assert link is not None
        while True:
            kind, channel, data = await link.get_message()
            if kind == b"message":
                self._on_message(channel, data)
            elif kind == b"pong":
                _settle(self._barriers.pop(data, None))
            else:
                self._on_subscribed(channel)

    def _on_subscribed(self, channel: bytes) -> None:
        if channel not in self._subscribed:
            return  # the confirmation of a channel dropped since: not subscribed any more
        self._confirmed.add(channel)
        _settle(self._user_waiters.pop(channel, None))
        route = self._routes.get(channel)
        if route is not None and route[0] == "r":
            self._load((route[1],))

    async def _load_counts(self) -> None:
        """Counts of rooms just subscribed, from every live node's hash; then their joins reply."""
        await asyncio.sleep(0)  # let the confirmations of one SUBSCRIBE arrive together
        self._loading = False
        rooms = list(self._to_load)
        try:
            if rooms and self._live:
                live = list(self._live)
                assert self._link is not None
                answers = await self._link.execute([("HMGET", self._node_key(o, ":rooms"), *rooms) for o in live])
                for other, values in zip(live, answers, strict=True):
                    if isinstance(values, Exception):
                        continue
                    for room, value in zip(rooms, values, strict=True):
                        if value is not None:
                            seq, n = codec.decode_count(value)
                            self._set_count(room, other, seq, n)
                        elif (counts := self._counts.get(room)) is not None:
                            counts.pop(other, None)  # no member there (an announcement was missed)
        finally:
            self._to_load.difference_update(rooms)
            for room in rooms:
                _settle(self._ready.pop(room, None))

    def _set_count(self, room: str, other: bytes, seq: int, n: int) -> None:
        counts = self._counts.get(room)
        if counts is None:
            return  # no local member any more
        old = counts.get(other)
        if old is None or seq > old[0]:
            counts[other] = (seq, n)  # a zero keeps its seq: an older, larger count cannot return

    def _on_message(self, channel: bytes, data: bytes) -> None:
        try:
            kind, sender, exclude, body = codec.decode(data)
        except (ValueError, UnicodeDecodeError):
            self._bad(channel, "undecodable")
            return
        route = self._routes.get(channel)
        node = self.node
        if kind == codec.STORED:  # every node delivers these from here, the publisher's too
            if route is None or node is None or route[0] == "a":
                return
            try:
                offset, epoch, envelope = codec.decode_stored(body)
            except (ValueError, UnicodeDecodeError):
                self._bad(channel, "bad stored message")
                return
            self.received += 1
            payload = Payload(KIND_TEXT, with_offset(envelope, offset))
            if route[0] == "r":
                node.deliver_room(route[1], payload, exclude, offset, epoch)
            else:
                node.deliver_user(route[1], payload, offset, epoch)
            return
        if sender == self._node_b:
            return  # delivered locally when it was published
        if route is None or node is None:
            return  # a late message of a channel just dropped
        target, name = route
        if kind == codec.COUNT:
            if target != "r":
                self._bad(channel, "count on a non-room channel")
                return
            try:
                seq, n = codec.decode_count(body)
            except ValueError:
                self._bad(channel, "bad count")
                return
            if sender not in self._live:
                self._live.append(sender)  # a node newer than our last heartbeat
            self._set_count(name, sender, seq, n)
            return
        self.received += 1
        payload = Payload(_PAYLOAD_KINDS[kind], body)
        if target == "r":
            node.deliver_room(name, payload, exclude)
        elif target == "u":
            node.deliver_user(name, payload)
        else:
            node.deliver_all(payload, exclude)

    def _bad(self, channel: bytes, why: str) -> None:
        self.bad_messages += 1
        now = time.monotonic()
        if now - self._bad_logged_at > 60.0:
            self._bad_logged_at = now
            log.warning("fasthub: broker: dropped a message on %r that is not ours (%s); counted in bad_messages",
                        channel[:200], why)

    # -- the cluster view -------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            await self._heartbeat_once()
            self._spawn(self._measure_lag())
            self._refresh_presence()

    def _refresh_presence(self) -> None:
        """Every ``presence_ttl / 3``: the presence keys of the rooms this node has members of
        live on (one ``PEXPIRE`` each, in the writer's pipeline)."""
        assert self._loop is not None
        now = self._loop.time()
        if now - self._presence_refreshed < self.presence_ttl / 3:
            return
        self._presence_refreshed = now
        out = self._out
        for kind, name in self._routes.values():
            if kind == "r":
                counts, info = self._presence_keys(name)
                out.append((False, "PEXPIRE", counts, self._presence_ms))
                out.append((False, "PEXPIRE", info, self._presence_ms))
        self._wake_writer()

    async def _measure_lag(self) -> None:
        """The broker's lag for /metrics: how long a ``PING`` on this node's pub/sub connection
        takes to come back (a message published now reaches the node no sooner)."""
        assert self._loop is not None
        start = self._loop.time()
        with contextlib.suppress(Exception):
            await self._barrier(self.user_channel(self.node_id))
            self.lag = self._loop.time() - start

    async def _heartbeat_once(self) -> None:
        """Refresh this node's keys and read who else is alive.

        Liveness is the node key's existence (``PX ttl``, Redis's clock), so clocks of
        different machines need not agree. If this node's key had expired (a pause longer
        than ``ttl``), its hashes may have expired with it: they are written again.
        """
        me = self.node_id
        stats = self.node.node_stats() if self.node is not None else {}
        ttl_ms = int(self.ttl * 1000)
        link = self._link
        assert link is not None
        info = orjson.dumps({"node": me, "at": time.time(), **stats})
        secret_key = f"{self.prefix}:session-secret"
        previous, _, _, _, members, _, secret = await link.execute(
            [
                ("SET", self._node_key(me), info, "PX", ttl_ms, "GET"),
                ("PEXPIRE", self._node_key(me, ":rooms"), ttl_ms),
                ("PEXPIRE", self._node_key(me, ":users"), ttl_ms),
                ("SADD", self._nodes_key, me),
                ("SMEMBERS", self._nodes_key),
                ("SET", secret_key, os.urandom(32).hex(), "NX"),
                ("GET", secret_key),
            ]
        )
        if isinstance(members, Exception):
            raise members
        if isinstance(secret, bytes) and secret != self._secret and self.node is not None:
            # every node signs reconnect tokens with the same key, so a session resumes anywhere
            self._secret = secret
            self.node.shared_secret(secret)
        if previous is None and self.up:
            self._rewrite_state()  # our keys had expired
        live = await self._alive([m for m in members if m != self._node_b])
        new = [n for n in live if n not in self._live]
        self._live = live
        alive = set(live)
        for counts in self._counts.values():
            for other in [o for o in counts if o not in alive]:
                del counts[other]
        if new and self._counts and self.up:  # a node that started since: read its counts too
            self._load(self._counts)

    async def _alive(self, others: list[bytes]) -> list[bytes]:
        """The node ids of ``others`` whose key exists; the rest leave the node set."""
        if not others:
            return []
        link = self._link
        assert link is not None
        exists = await link.execute([("EXISTS", self._node_key(o)) for o in others])
        live = [o for o, e in zip(others, exists, strict=True) if e == 1 or isinstance(e, Exception)]
        dead = [o for o, e in zip(others, exists, strict=True) if e == 0]
        if dead:
            await link.execute([("SREM", self._nodes_key, *dead)])
        return live

    async def cluster_view(self) -> dict[str, Any]:
        """Every live node's counters and the cluster-wide rooms, users and member counts.

        The live nodes and their rooms and users are read now; other nodes' counters are as of
        their last heartbeat (at most ``ttl / 3`` seconds old).
        """
        if not self.up:
            return {"state": "down"}
        link = self._link
        assert link is not None
        (members,) = await link.execute([("SMEMBERS", self._nodes_key)])
        if isinstance(members, Exception):
            raise members
        ids = [self._node_b, *(n for n in members if n != self._node_b)]
        commands: list[tuple[Any, ...]] = []
        for node in ids:
            commands += [
                ("GET", self._node_key(node)),
                ("HGETALL", self._node_key(node, ":rooms")),
                ("HKEYS", self._node_key(node, ":users")),
            ]
        answers = await link.execute(commands)
        nodes = []
        rooms: dict[str, int] = {}
        users: set[bytes] = set()
        for i, _node in enumerate(ids):
            info, room_counts, user_ids = answers[3 * i : 3 * i + 3]
            if any(isinstance(a, Exception) for a in (info, room_counts, user_ids)):
                continue
            if i == 0 and self.node is not None:  # this node: now, not as of its last heartbeat
                nodes.append({"node": self.node_id, "at": time.time(), **self.node.node_stats()})
            elif info is None:
                continue  # gone since the last heartbeat
            else:
                nodes.append(orjson.loads(info))
            for room, value in room_counts.items():
                _, n = codec.decode_count(value)
                name = room.decode()
                rooms[name] = rooms.get(name, 0) + n
            users.update(user_ids)

        def total(key: str) -> Any:
            return round(sum(n.get(key) or 0 for n in nodes), 1)

        return {
            "state": "up",
            "nodes_alive": len(nodes),
            "connections": total("connections"),
            "users": len(users) + total("anonymous"),
            "rooms": len(rooms),
            "room_list": sorted(rooms),
            "room_members": rooms,
            "messages_in_per_s": total("messages_in_per_s"),
            "messages_out_per_s": total("messages_out_per_s"),
            "rss_bytes": total("rss_bytes"),
            "nodes": nodes,
        }

    def stats(self) -> dict[str, Any]:
        return {
            "type": "redis",
            "url": redact(self.url),
            "node_id": self.node_id,
            "state": "up" if self.up else "down",
            "sharded": self.sharded,
            "cluster": self.cluster,
            "parser": "hiredis" if HIREDIS_AVAILABLE else "python",
            "published": self.published,
            "received": self.received,
            "broker_errors": self.broker_errors,
            "bad_messages": self.bad_messages,
            "outages": self.outages,
            "subscriptions": len(self._confirmed),
            "nodes_alive": len(self._live) + 1 if self.up else None,
            "lag_s": round(self.lag, 6),
        }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _published(result: Any) -> Published:
    return Published(int(result[0]), _text(result[1]), bool(int(result[2])))


def _entries(value: Any) -> Iterable[tuple[bytes, int]]:
    """``(node id, connections)`` of a presence value ``b"<node>:<n> <node>:<n>"``."""
    if not value:
        return ()
    if not isinstance(value, bytes):
        value = str(value).encode()
    out = []
    for part in value.split():
        node, _, n = part.partition(b":")
        out.append((node, int(n)))
    return out


def _field(fields: list[Any], name: bytes) -> bytes:
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name or fields[i] == name.decode():
            value = fields[i + 1]
            return value if isinstance(value, bytes) else str(value).encode()
    raise ValueError(f"stream entry without {name!r}")


def _settle(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


def _answered(waiter: asyncio.Future[None], answer: asyncio.Future[Any]) -> None:
    """A command an open waits for was answered (or failed: the open goes on all the same)."""
    if not answer.cancelled():
        answer.exception()
    _settle(waiter)
