"""Room: a named set of connections with application metadata."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core import Connection


class Room:
    """A room. Members are kept as ``connection id -> connection`` (each its own outbox) so fan-out
    iterates one dict.

    A room made by ``Hub.create_room`` is ``persistent`` and lives until ``Hub.delete_room``; a
    room made implicitly by a client's ``join_room`` disappears with its last member, so clients
    cannot grow the room table without bound.
    """

    __slots__ = ("_members", "metadata", "name", "persistent")

    def __init__(self, name: str, metadata: dict[str, Any] | None = None, persistent: bool = False) -> None:
        self.name = name
        self.metadata: dict[str, Any] = dict(metadata) if metadata else {}
        self.persistent = persistent
        self._members: dict[str, Connection] = {}

    @property
    def members(self) -> list[str]:
        """Connection ids of the members (a copy)."""
        return list(self._members)

    @property
    def member_count(self) -> int:
        return len(self._members)

    def has_member(self, conn_id: str) -> bool:
        return conn_id in self._members

    def __repr__(self) -> str:
        return f"<Room {self.name!r} members={len(self._members)}>"
