"""Presence and typing: who is in a room, in what shape it is answered, and the typing throttle.

Presence is counted per user, not per connection: a user with three tabs in a room is one
entry with ``connections: 3``, and ``info`` is what the application's ``presence_info(conn,
room)`` hook chose to expose for the user's most recent connection to join the room. The hub
asks its broker (``Broker.presence``), so the answer covers every node; the in-process broker
counts this process's members when asked.

Typing indicators are ephemeral room messages, throttled per connection and room
(``HubConfig.typing_interval``) by ``TypingThrottle``: what it remembers is forgotten when the
connection leaves the room or closes, and at every sweep once older than the interval.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core import Connection

#: ``presence_info(conn, room) -> dict | None``: what presence shows of the user of ``conn`` in
#: ``room`` (JSON-encodable; None: nothing). Synchronous: it runs inside a join.
PresenceInfo = Callable[["Connection", str], "dict[str, Any] | None"]

#: what a broker answers: user id -> (connections on every live node, info as encoded JSON or None)
Counts = dict[str, tuple[int, "bytes | None"]]


@dataclass(frozen=True, slots=True)
class UserPresence:
    """One user in a room: how many of its connections are in it, and its exposed info."""

    connections: int
    info: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"connections": self.connections}
        if self.info is not None:
            out["info"] = self.info
        return out


@dataclass(frozen=True, slots=True)
class PresenceStats:
    """A room's counts: distinct users and their connections (on every node)."""

    users: int
    connections: int

    def to_dict(self) -> dict[str, int]:
        return {"num_users": self.users, "num_connections": self.connections}


def presence_body(entries: Mapping[str, UserPresence]) -> dict[str, Any]:
    """The ``payload`` of a ``presence`` reply: every user with its entry, and the counts."""
    return {
        "presence": {user: entry.to_dict() for user, entry in entries.items()},
        "num_users": len(entries),
        "num_connections": sum(entry.connections for entry in entries.values()),
    }


class TypingThrottle:
    """When each (connection, room) last sent a ``typing`` event, for at most ``interval`` s.

    Memory is bounded by the typing of the last interval: an entry goes when its connection
    leaves the room or closes (``forget``), or at the next ``sweep`` once it is older than the
    interval. ``interval`` 0 throttles nothing and remembers nothing.
    """

    __slots__ = ("_last", "interval")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}

    def allow(self, conn_id: str, room: str, now: float) -> bool:
        """True (and remembered) when this connection's last event in ``room`` is old enough."""
        if not self.interval:
            return True
        key = (conn_id, room)
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._last[key] = now
        return True

    def forget(self, conn_id: str, room: str) -> None:
        if self._last:
            self._last.pop((conn_id, room), None)

    def sweep(self, now: float) -> None:
        """Drop what no longer throttles anything."""
        if self._last:
            interval = self.interval
            stale = [key for key, at in self._last.items() if now - at >= interval]
            for key in stale:
                del self._last[key]

    def __len__(self) -> int:
        return len(self._last)
