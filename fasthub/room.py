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

    __slots__ = (
        "_connections",
        "congested",
        "epoch",
        "member_map",
        "metadata",
        "name",
        "offset",
        "persistent",
        "syncing",
    )

    def __init__(self, name: str, metadata: dict[str, Any] | None = None, persistent: bool = False) -> None:
        self.name = name
        self.metadata: dict[str, Any] = dict(metadata) if metadata else {}
        self.persistent = persistent
        #: connection id -> connection of this process's members; the hub changes it
        self.member_map: dict[str, Connection] = {}
        #: the stream position of the last stored message delivered here (0, None: none yet)
        self.offset = 0
        self.epoch: str | None = None
        #: connection id -> stored messages held back from a member whose join is still reading
        #: the room's history (``Hub.join_room`` with a broker that answers later); else None
        self.syncing: dict[str, list[tuple[int, Any, Any]]] | None = None
        #: the last delivery left a member over the publish watermark (``Hub.room_congested``)
        self.congested = False
        self._connections: list[Connection] | None = None  # ``connections``, until ``changed``

    def connections(self) -> list[Connection]:
        """The members' connections as one list, kept until the membership changes: a broadcast
        that writes at once walks it (a dict walk would read every key, a cache miss per member
        of a big room between two sends)."""
        connections = self._connections
        if connections is None:
            connections = self._connections = list(self.member_map.values())
        return connections

    def changed(self) -> None:
        """``member_map`` changed: ``connections`` is made again when next asked for."""
        self._connections = None

    @property
    def members(self) -> list[str]:
        """Connection ids of the members (a copy)."""
        return list(self.member_map)

    @property
    def member_count(self) -> int:
        return len(self.member_map)

    def has_member(self, conn_id: str) -> bool:
        return conn_id in self.member_map

    def __repr__(self) -> str:
        return f"<Room {self.name!r} members={len(self.member_map)}>"
