"""The broker seam: what the hub hands to other nodes, and what it asks of the cluster.

The hub has one publish step (``Hub.publish_room``, ``publish_user``, ``publish_all``): it
delivers to its own connections, then hands the same encoded payload to its broker for every
other node. The broker never sees a socket; it delivers what arrives from other nodes through
the ``Node`` it was bound to (the hub's ``deliver_*`` methods, local connections only). The
answers that depend on the whole cluster (is a user online, how many members has a room) come
from the broker too, so a cluster answers them as one process does; so does presence (who is
in a room, ``presence``/``presence_stats``, kept up to date by ``presence_change``). Modelled on centrifuge's
Broker / PresenceManager split.

``LocalBroker`` (``fasthub.broker.local``) is the in-process implementation and the default:
there is no other node, so publishing is local delivery alone. ``RedisBroker``
(``fasthub.broker.redis``) joins hubs in several processes and machines through Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .._core import Payload
    from ..presence import Counts
    from ..streams import Position, Published, Recovery

#: connection ids a delivery skips: one id, several, or None
Exclude = str | Iterable[str] | None


class Node(Protocol):
    """The hub as a broker sees it: local delivery and local counts, nothing else."""

    def deliver_room(
        self, room: str, payload: Payload, exclude: Any = None, offset: int = 0, epoch: str | None = None
    ) -> int:
        """Queue ``payload`` on this node's members of ``room``; how many accepted it.

        ``offset``/``epoch``: the stream position of a stored message (0/None: not stored)."""

    def deliver_user(self, user_id: str, payload: Payload, offset: int = 0, epoch: str | None = None) -> int:
        """Queue ``payload`` on this node's connections of ``user_id``."""

    def deliver_all(self, payload: Payload, exclude: Any = None) -> int:
        """Queue ``payload`` on every connection of this node."""

    def local_room_size(self, room: str) -> int:
        """Members of ``room`` connected to this node."""

    def local_user_online(self, user_id: str) -> bool:
        """Whether ``user_id`` has a connection on this node."""

    def node_stats(self) -> dict[str, Any]:
        """This node's counters for the cluster view (connections, users, rooms, rates, memory)."""

    def shared_secret(self, secret: bytes) -> None:
        """A key every node of the cluster shares (from Redis): sign reconnect tokens with it."""

    def streams_reconnected(self) -> None:
        """The broker reconnected: live messages may have been missed; check every room served."""

    def local_presence(self, room: str, info: bool = True) -> Counts:
        """This node's users in ``room``: user id -> (connections here, exposed info as JSON or
        None; ``info=False``: None for all, the hook is not asked)."""


class Broker(Protocol):
    """What a broker implements. Every method runs on the hub's event loop and never blocks.

    ``publish_*`` take the payload the hub already delivered locally: a broker forwards it to
    the other nodes only (a node never delivers its own message twice). ``room_opened`` /
    ``room_closed`` and ``user_opened`` / ``user_closed`` tell it when this node gains its first
    or loses its last local member of a room or connection of a user, so a clustered broker
    subscribes only to what this node needs.
    """

    #: False when there is no other node (publishing to the broker can be skipped)
    remote: bool

    def bind(self, node: Node) -> None:
        """Attach to the hub whose connections this broker delivers into."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin connecting on ``loop`` (the hub's); must not block or raise when the broker is down."""

    async def close(self) -> None:
        """Leave the cluster and release connections (server shutdown)."""

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until what was handed over (publishes, saved sessions) is written; False when
        ``timeout`` seconds were not enough (a drain calls it before the process exits)."""

    def publish_room(self, room: str, payload: Payload, exclude: Any) -> None: ...

    def publish_user(self, user_id: str, payload: Payload) -> None: ...

    def publish_all(self, payload: Payload, exclude: Any) -> None: ...

    def publish_stream(
        self,
        kind: str,
        name: str,
        body: bytes,
        exclude: Any,
        history: tuple[int, float],
        idempotency_key: str | None,
    ) -> Published | Awaitable[Published]:
        """Store ``body`` (an envelope encoded without offset) as the next message of stream
        ``kind`` (``streams.ROOM``/``USER``) ``name``, kept ``history = (size, ttl)``, and
        deliver it with its offset to every node, this one included (``Node.deliver_room`` /
        ``deliver_user``), in offset order. Offset assignment, storing and publishing are one
        atomic step, so history and live delivery always agree."""

    def save_session(self, session_id: str, record: bytes, ttl: float) -> None:
        """Keep a closed connection's session (``sessions.record``) for ``ttl`` seconds, where
        every node can take it."""

    def take_session(self, session_id: str) -> bytes | Awaitable[bytes | None] | None:
        """The kept session, removed (a session is resumed once); None when gone."""

    def stream_top(self, kind: str, name: str) -> Position | Awaitable[Position]:
        """The stream's position now (a join's starting point)."""

    def stream_recover(
        self, kind: str, name: str, since: Position, limit: int, history: tuple[int, float]
    ) -> Recovery | Awaitable[Recovery]:
        """The stored messages after ``since`` (at most ``limit``). An awaitable answer completes
        only after every live message up to the answer's position reached this node."""

    def room_opened(self, room: str) -> None: ...

    def room_closed(self, room: str) -> None: ...

    def room_resized(self, room: str, local_size: int) -> None:
        """This node's member count of ``room`` changed (every join and leave)."""

    def ready(self, room: str) -> Awaitable[None] | None:
        """None if this node hears ``room``'s traffic now; else a future the join reply waits for.

        A client that got its ``joined`` reply receives every message published after it, on
        any node. The future must complete (also when the broker is down) within seconds.
        """

    def user_ready(self, user_id: str) -> Awaitable[Any] | None:
        """Before a connection of ``user_id`` opens: None if this node hears the user's traffic
        and every node sees the user online now, else a future the ``connected`` message waits
        for (completes within seconds)."""

    def user_opened(self, user_id: str) -> None: ...

    def user_closed(self, user_id: str) -> None: ...

    def room_size(self, room: str) -> int:
        """Members of ``room`` on every node (the join reply's ``members``, member-event gating)."""

    def user_online(self, user_id: str) -> bool | Awaitable[bool]:
        """Whether ``user_id`` has a connection on any node (``unknown_user`` otherwise)."""

    def presence_change(self, room: str, user_id: str, delta: int, info: bytes | None) -> int | Awaitable[int] | None:
        """This node has ``delta`` more connections of ``user_id`` in ``room`` (+1 a join, -1 a
        leave, 0: only ``info``, the exposed info as JSON, changed; None keeps it).

        Answers the user's connections in the room on every live node after the change (the
        member events go out once per user on that answer), or None when the broker keeps no
        cluster presence (the hub then counts its own members).
        """

    def presence(self, room: str) -> Counts | Awaitable[Counts]:
        """Who is in ``room`` on every live node: user id -> (connections, info JSON or None).
        Raises (or the awaitable does) when the cluster cannot be asked now."""

    def presence_stats(self, room: str) -> tuple[int, int] | Awaitable[tuple[int, int]]:
        """``(users, connections)`` of ``room`` on every live node, without the info."""

    def stats(self) -> dict[str, Any]:
        """Broker counters for ``/ws/stats`` (empty for the in-process broker)."""

    async def cluster_view(self) -> dict[str, Any] | None:
        """Every node's counters and the cluster-wide room list (None: this process is the hub)."""


from .local import LocalBroker  # noqa: E402  (the default implementation, after the interface)


def __getattr__(name: str) -> Any:
    if name == "RedisBroker":  # imports redis-py only when asked for
        from .redis import RedisBroker

        return RedisBroker
    raise AttributeError(name)


__all__ = ["Broker", "Exclude", "LocalBroker", "Node", "RedisBroker"]
