"""``LocalBroker``: one process is the whole hub, so publishing is local delivery alone."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..sessions import MemorySessions
from ..streams import ROOM, MemoryStreams, Position, Published, Recovery

if TYPE_CHECKING:
    from .._core import Payload
    from ..presence import Counts
    from . import Node


class LocalBroker:
    """The in-process broker (the default): no other node to forward to or to ask.

    Cluster answers are this node's answers: a room's size is its local member count, a user
    is online when connected here, presence is this node's members (with the ``presence_info``
    hook asked when presence is asked). Streams are kept in memory (``streams.MemoryStreams``), so
    they start over (a new epoch) when the process restarts.
    """

    remote = False

    def __init__(self, meta_ttl: float | None = None) -> None:
        self.node: Node | None = None
        self.streams = MemoryStreams(meta_ttl if meta_ttl is not None else 86400.0)
        self.sessions = MemorySessions()
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_every = 5.0

    def bind(self, node: Node) -> None:
        self.node = node
        config = getattr(node, "config", None)
        if config is not None:
            self.streams.meta_ttl = config.history_meta_ttl
            self._sweep_every = max(1.0, min(30.0, config.history_ttl / 4))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Nothing to connect to; expired history is dropped every few seconds."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._sweeper = loop.call_later(self._sweep_every, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self.streams.sweep()
        self.sessions.sweep()
        self._sweeper = loop.call_later(self._sweep_every, self._sweep, loop)

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Everything is written at once here."""
        return True

    async def close(self) -> None:
        """Nothing to leave."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def publish_room(self, room: str, payload: Payload, exclude: Any) -> None:
        """Nothing to forward: the hub delivered to every member already."""

    def publish_user(self, user_id: str, payload: Payload) -> None:
        """Nothing to forward."""

    def publish_all(self, payload: Payload, exclude: Any) -> None:
        """Nothing to forward."""

    def publish_stream(
        self,
        kind: str,
        name: str,
        body: bytes,
        exclude: Any,
        history: tuple[int, float],
        idempotency_key: str | None,
    ) -> Published:
        published, payload = self.streams.append(f"{kind}:{name}", body, history[0], history[1], idempotency_key)
        node = self.node
        if payload is not None and node is not None:
            if kind == ROOM:
                published.delivered = node.deliver_room(name, payload, exclude, published.offset, published.epoch)
            else:
                published.delivered = node.deliver_user(name, payload, published.offset, published.epoch)
        return published

    def save_session(self, session_id: str, record: bytes, ttl: float) -> None:
        self.sessions.save(session_id, record, ttl)

    def take_session(self, session_id: str) -> bytes | None:
        return self.sessions.take(session_id)

    def stream_top(self, kind: str, name: str) -> Position:
        return self.streams.top(f"{kind}:{name}")

    def stream_recover(
        self, kind: str, name: str, since: Position, limit: int, history: tuple[int, float]
    ) -> Recovery:
        return self.streams.read(f"{kind}:{name}", since, limit, history[0])

    def room_opened(self, room: str) -> None:
        """No subscription to make."""

    def room_closed(self, room: str) -> None:
        """No subscription to drop."""

    def room_resized(self, room: str, local_size: int) -> None:
        """The local count is the count."""

    def ready(self, room: str) -> None:
        """Local members hear a room at once."""

    def user_ready(self, user_id: str) -> None:
        """Local connections hear a user at once."""

    def user_opened(self, user_id: str) -> None:
        """No subscription to make."""

    def user_closed(self, user_id: str) -> None:
        """No subscription to drop."""

    def room_size(self, room: str) -> int:
        node = self.node
        return node.local_room_size(room) if node is not None else 0

    def user_online(self, user_id: str) -> bool:
        node = self.node
        return node.local_user_online(user_id) if node is not None else False

    def presence_change(self, room: str, user_id: str, delta: int, info: bytes | None) -> None:
        """Nothing to keep: presence is read from the hub's members when asked."""

    def presence(self, room: str) -> Counts:
        node = self.node
        return node.local_presence(room) if node is not None else {}

    def presence_stats(self, room: str) -> tuple[int, int]:
        node = self.node
        counts = node.local_presence(room, info=False) if node is not None else {}
        return len(counts), sum(n for n, _ in counts.values())

    def stats(self) -> dict[str, Any]:
        return {"history": self.streams.stats()}

    async def cluster_view(self) -> None:
        return None
