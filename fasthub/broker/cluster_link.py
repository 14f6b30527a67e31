"""``ClusterLink``: ``RedisBroker`` on a Redis Cluster, with sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``).

Not redis-py's ``ClusterPubSub`` (8.1): it cannot be read from one blocking loop (``get_message``
raises; ``get_sharded_message(timeout=None)`` blocks on one shard while another has messages), it
sends one ``SSUBSCRIBE`` per channel, and it loses subscriptions when a slot moves. So:

- The slot map comes from redis-py's ``RedisCluster`` (``CLUSTER SLOTS``, endpoints, TLS options),
  read once when the link connects; the link uses that client for nothing else.
- Each master gets one plain client. Its pool carries the per-tick pipelines (one per master, run
  concurrently); one connection taken out of it for good carries ``SSUBSCRIBE``/``SUNSUBSCRIBE``,
  one command per hash slot (Redis refuses a multi-slot one with CROSSSLOT), all in one write, and
  a reader task. Every reader feeds one queue: ``get_message`` is one blocking loop over all
  shards, and a channel's messages keep their order (one channel, one master, one connection).
- The slot map is fixed for the link's life. Whatever says a shard is gone or the map is stale
  (a lost connection, a ``MOVED`` or ``CLUSTERDOWN`` reply, a ``sunsubscribe`` the broker did not
  ask for: its slot left that master) breaks the link: ``get_message`` raises, and the broker
  reconnects with a new link, which reads the map again and resubscribes everything. A slot
  migration thus costs one reconnect; no subscription is ever lost silently, and no
  resubscribe machinery lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool, parse_url
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ClusterDownError, ConnectionError, MovedError

from ..stopping import stop_tasks
from .links import SUBSCRIBE_CHUNK, Command, client_options

Event = tuple[bytes, bytes, Any]

#: per-command replies that mean the slot map is stale or the cluster cannot serve: reconnect
_STALE = (MovedError, ClusterDownError)


def _slot(key: bytes | str) -> int:
    return key_slot(key.encode() if isinstance(key, str) else key)


async def _all(aws: Iterable[Awaitable[Any]]) -> list[Any]:
    """``gather`` that lets every awaitable finish (nothing left running) and then raises the first error."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


class _Shard:
    """One master: a client for pipelines and one dedicated pub/sub connection with its reader task."""

    def __init__(self, link: ClusterLink, name: str, client: Redis) -> None:
        self.link = link
        self.name = name
        self.client = client
        self.conn: AbstractConnection | None = None
        self.reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        conn: AbstractConnection = await self.client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        self.conn = conn
        await conn.send_command("PING")
        await conn.read_response()  # the master answers (bounded by socket_timeout)
        self.reader = asyncio.get_running_loop().create_task(self._read(conn))

    async def send(self, command: str, by_slot: Iterable[list[bytes]]) -> None:
        assert self.conn is not None
        commands: list[list[bytes | str]] = [
            [command, *chans[i : i + SUBSCRIBE_CHUNK]]
            for chans in by_slot
            for i in range(0, len(chans), SUBSCRIBE_CHUNK)
        ]
        await self.conn.send_packed_command(self.conn.pack_commands(commands), check_health=False)

    async def _read(self, conn: AbstractConnection) -> None:
        put = self.link.queue.put_nowait
        try:
            while True:
                # math.inf: block without the socket timeout (a quiet channel is not a dead master)
                reply = await conn.read_response(timeout=math.inf, push_request=True)
                kind = reply[0]
                if kind == b"smessage":
                    put((b"message", reply[1], reply[2]))
                elif kind == b"ssubscribe":
                    put((b"subscribe", reply[1], reply[2]))
                elif kind == b"pong":
                    put((b"pong", b"", reply[1]))
                elif kind == b"sunsubscribe" and not self.link._confirm_unsubscribe(reply[1]):
                    raise ConnectionError(f"it dropped {reply[1]!r}: its slot moved")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # lost connection, or an error reply (MOVED, CLUSTERDOWN) to a SSUBSCRIBE
            what = str(exc) if isinstance(exc, ConnectionError) else f"{type(exc).__name__} {exc}"
            self.link._fail(ConnectionError(f"Redis Cluster master {self.name}: {what}"))

    async def close(self) -> None:
        if self.reader is not None:
            await stop_tasks([self.reader], 1.0, f"Redis Cluster master {self.name}: closing")
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.disconnect(nowait=True)
        with contextlib.suppress(Exception):
            await self.client.aclose()


class ClusterLink:
    """A ``Link`` to a Redis Cluster: commands routed per slot, sharded pub/sub on every master.

    Args:
        url: any node of the cluster (``redis://`` or ``rediss://``, db 0); the others are discovered.
        socket_timeout: bound of every pipeline: a master that stops answering fails the next one
            sent to it, instead of stalling the broker's writer.
    """

    def __init__(self, url: str, socket_timeout: float) -> None:
        options = client_options(socket_timeout)
        self.topology = RedisCluster.from_url(url, **options)
        self._shard_options: dict[str, Any] = {**options, **parse_url(url)}
        self.shards: dict[str, _Shard] = {}
        self._owner: list[_Shard] = []  # slot -> its master's shard, for this link's life
        self.queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self._unsubscribing: dict[bytes, int] = {}  # SUNSUBSCRIBE sent, confirmation not yet read
        self.error: BaseException | None = None

    async def connect(self) -> None:
        await self.topology.initialize()
        slots = self.topology.nodes_manager
        owner: list[_Shard] = []
        for slot in range(REDIS_CLUSTER_HASH_SLOTS):
            node = slots.get_node_from_slot(slot)
            shard = self.shards.get(node.name)
            if shard is None:
                pool = ConnectionPool(**{**self._shard_options, "host": node.host, "port": node.port})
                shard = self.shards[node.name] = _Shard(self, node.name, Redis.from_pool(pool))
            owner.append(shard)
        self._owner = owner
        await _all(shard.open() for shard in self.shards.values())

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """One pipeline per master, all at once; results in input order.

        A master that cannot be reached raises (and breaks the link); a stale map (MOVED) or a
        cluster that cannot serve (CLUSTERDOWN) comes back in place and breaks the link too.
        """
        self._check()
        owner = self._owner
        groups: dict[_Shard, tuple[Any, list[int]]] = {}
        for i, cmd in enumerate(commands):
            # a script runs where its first key lives (EVALSHA sha numkeys key ...)
            shard = owner[_slot(cmd[3] if cmd[0] == "EVALSHA" else cmd[1])]
            group = groups.get(shard)
            if group is None:
                group = groups[shard] = (shard.client.pipeline(transaction=False), [])
            group[0].execute_command(*cmd)
            group[1].append(i)
        outs = await asyncio.gather(*(pipe.execute(raise_on_error=False) for pipe, _ in groups.values()),
                                    return_exceptions=True)
        results: list[Any] = [None] * len(commands)
        for (shard, (_, indexes)), out in zip(groups.items(), outs, strict=True):
            if isinstance(out, BaseException):
                if isinstance(out, Exception):
                    self._fail(out)
                raise out
            for i, result in zip(indexes, out, strict=True):
                results[i] = result
                if isinstance(result, _STALE):
                    self._fail(ConnectionError(f"Redis Cluster master {shard.name}: {type(result).__name__} {result}"))
        return results

    async def subscribe(self, channels: Sequence[bytes]) -> None:
        await self._send("SSUBSCRIBE", channels)

    async def barrier(self, channel: bytes, token: bytes) -> None:
        self._check()
        shard = self._owner[_slot(channel)]
        assert shard.conn is not None
        await shard.conn.send_packed_command(shard.conn.pack_command("PING", token), check_health=False)

    def connection_of(self, channel: bytes) -> str:
        return self._owner[_slot(channel)].name

    async def script_load(self, script: str) -> str:
        self._check()
        shas = await _all(shard.client.script_load(script) for shard in self.shards.values())
        sha = shas[0]
        return sha.decode() if isinstance(sha, bytes) else str(sha)

    async def unsubscribe(self, channels: Sequence[bytes]) -> None:
        pending = self._unsubscribing
        for channel in channels:
            pending[channel] = pending.get(channel, 0) + 1
        await self._send("SUNSUBSCRIBE", channels)

    async def _send(self, command: str, channels: Sequence[bytes]) -> None:
        """``command`` on each owner's pub/sub connection: one per slot, one write per master."""
        self._check()
        by_slot: dict[int, list[bytes]] = defaultdict(list)
        for channel in channels:
            by_slot[_slot(channel)].append(channel)
        by_shard: dict[_Shard, list[list[bytes]]] = defaultdict(list)
        for slot, chans in by_slot.items():
            by_shard[self._owner[slot]].append(chans)
        try:
            await _all(shard.send(command, groups) for shard, groups in by_shard.items())
        except Exception as exc:
            self._fail(exc)  # the broker's (un)subscribe tasks only log: get_message must raise too
            raise

    def _confirm_unsubscribe(self, channel: bytes) -> bool:
        """True for the reply to our SUNSUBSCRIBE; False when Redis dropped the channel by itself."""
        n = self._unsubscribing.get(channel, 0)
        if n == 0:
            return False
        if n == 1:
            del self._unsubscribing[channel]
        else:
            self._unsubscribing[channel] = n - 1
        return True

    async def get_message(self) -> Event:
        """The next event of any master, in arrival order; raises once the link is broken."""
        if self.error is not None and self.queue.empty():
            raise self.error
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def _fail(self, exc: BaseException) -> None:
        """Break the link (first failure wins): the broker's reader sees it after the events before it."""
        if self.error is None:
            self.error = exc
            self.queue.put_nowait(exc)

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    async def close(self) -> None:
        await asyncio.gather(*(shard.close() for shard in self.shards.values()), return_exceptions=True)
        self.shards.clear()
        with contextlib.suppress(Exception):
            await self.topology.aclose()
