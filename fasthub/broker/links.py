"""How ``RedisBroker`` talks to Redis: one ``Link`` per kind of deployment.

The broker speaks in raw commands and pub/sub events; a link carries them:

- ``SingleLink``: one Redis server (or a proxy in front of one): a connection pool for the
  per-tick pipelines and one pub/sub connection (``PUBLISH``/``SUBSCRIBE``, or
  ``SPUBLISH``/``SSUBSCRIBE`` when ``sharded``). All redis-py.
- A Redis Cluster link (``fasthub.broker.cluster_link``) routes each command to the master that
  owns its key or channel.

Every method raises (``redis.exceptions.RedisError`` or ``OSError``) when the connection is
lost; the broker then closes the link and reconnects with a new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

#: channels per SUBSCRIBE/UNSUBSCRIBE command
SUBSCRIBE_CHUNK = 1000

Command = tuple[Any, ...]


class Link(Protocol):
    async def connect(self) -> None:
        """Connect and check the server answers (raises if it does not)."""

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Run ``commands`` in one pipelined write; results in order (a failed command: its exception)."""

    async def subscribe(self, channels: Sequence[bytes]) -> None: ...

    async def unsubscribe(self, channels: Sequence[bytes]) -> None: ...

    async def get_message(self) -> tuple[bytes, bytes, Any]:
        """The next pub/sub event: ``(kind, channel, data)``; kind ``message``, ``subscribe``, or
        ``pong`` (data: the token of a ``barrier``)."""

    async def barrier(self, channel: bytes, token: bytes) -> None:
        """Send ``PING token`` on the pub/sub connection that carries ``channel``: its ``pong``
        arrives after every message Redis published there before it."""

    async def script_load(self, script: str) -> str:
        """Load a Lua script (on every master) and return its SHA1."""

    def connection_of(self, channel: bytes) -> str:
        """Which pub/sub connection carries ``channel`` (barriers are per connection)."""

    async def close(self) -> None: ...


def client_options(socket_timeout: float) -> dict[str, Any]:
    """redis-py options of every broker connection: bounded connects, no retries inside redis-py
    (an error reaches the broker, which reconnects and resubscribes everything itself)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return {
        "socket_connect_timeout": 2.0,
        "socket_timeout": socket_timeout,
        "health_check_interval": 0,
        "retry": Retry(NoBackoff(), 0),
    }


class SingleLink:
    """One Redis server through redis-py's asyncio client and its ``PubSub``."""

    def __init__(self, url: str, sharded: bool, socket_timeout: float) -> None:
        import redis.asyncio as aioredis

        self.sharded = sharded
        self.client = aioredis.Redis.from_url(url, **client_options(socket_timeout))
        self.pubsub: Any = None

    async def connect(self) -> None:
        await self.client.ping()
        self.pubsub = self.client.pubsub()

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for cmd in commands:
            pipe.execute_command(*cmd)
        return await pipe.execute(raise_on_error=False)

    async def subscribe(self, channels: Sequence[bytes]) -> None:
        for i in range(0, len(channels), SUBSCRIBE_CHUNK):
            chunk = channels[i : i + SUBSCRIBE_CHUNK]
            await (self.pubsub.ssubscribe(*chunk) if self.sharded else self.pubsub.subscribe(*chunk))

    async def unsubscribe(self, channels: Sequence[bytes]) -> None:
        for i in range(0, len(channels), SUBSCRIBE_CHUNK):
            chunk = channels[i : i + SUBSCRIBE_CHUNK]
            await (self.pubsub.sunsubscribe(*chunk) if self.sharded else self.pubsub.unsubscribe(*chunk))

    async def get_message(self) -> tuple[bytes, bytes, Any]:
        while True:
            msg = await self.pubsub.get_message(ignore_subscribe_messages=False, timeout=None)
            if msg is None:
                continue
            kind = msg["type"]
            if kind == "message" or kind == "smessage":
                return b"message", msg["channel"], msg["data"]
            if kind == "subscribe" or kind == "ssubscribe":
                return b"subscribe", msg["channel"], msg["data"]
            if kind == "pong":
                return b"pong", b"", msg["data"]

    async def barrier(self, channel: bytes, token: bytes) -> None:
        await self.pubsub.ping(token)

    def connection_of(self, channel: bytes) -> str:
        return ""  # one pub/sub connection

    async def script_load(self, script: str) -> str:
        sha = await self.client.script_load(script)
        return sha.decode() if isinstance(sha, bytes) else str(sha)

    async def close(self) -> None:
        import contextlib

        if self.pubsub is not None:
            with contextlib.suppress(Exception):
                await self.pubsub.aclose()
        with contextlib.suppress(Exception):
            await self.client.aclose()
