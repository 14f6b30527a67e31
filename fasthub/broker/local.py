"""``LocalBroker``: one process is the whole hub, so publishing is local delivery alone."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._core import Payload
    from . import Node


class LocalBroker:
    """The in-process broker (the default): no other node to forward to or to ask.

    Cluster answers are this node's answers: a room's size is its local member count, a user
    is online when connected here.
    """

    remote = False

    def __init__(self) -> None:
        self.node: Node | None = None

    def bind(self, node: Node) -> None:
        self.node = node

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to leave."""

    def publish_room(self, room: str, payload: Payload, exclude: Any) -> None:
        """Nothing to forward: the hub delivered to every member already."""

    def publish_user(self, user_id: str, payload: Payload) -> None:
        """Nothing to forward."""

    def publish_all(self, payload: Payload, exclude: Any) -> None:
        """Nothing to forward."""

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

    def stats(self) -> dict[str, Any]:
        return {}

    async def cluster_view(self) -> None:
        return None
