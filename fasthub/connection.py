"""Connection: one client socket as the hub and the application see it."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from ._core import KIND_BINARY, KIND_CLOSE, KIND_TEXT, OVERFLOW, QUEUED, Outbox, Payload, RateLimiter
from ._wire import close_code_allowed
from .messages import encode

if TYPE_CHECKING:
    from .hub import Hub


class Connection:
    """A live WebSocket connection registered in a hub.

    Sends never await: they queue on the connection's outbox and return whether the message was
    accepted (``False`` when the connection is closing, or the message was dropped by the
    slow-consumer policy). Metadata and the room set are created on first use. ``scope`` is the
    ASGI scope during ``authenticate`` and ``on_connect`` and None afterwards, unless
    ``HubConfig.keep_scope`` (copy what you need into the metadata in ``on_connect``).
    """

    __slots__ = (
        "_expiry",
        "_limiter",
        "_metadata",
        "_outbox",
        "_rooms",
        "_user",
        "anonymous",
        "close_code",
        "close_reason",
        "connected_at",
        "expires_at",
        "hub",
        "id",
        "ip",
        "last_seen",
        "scope",
    )

    def __init__(
        self,
        hub: Hub,
        conn_id: str,
        user_id: str | None,
        outbox: Outbox,
        scope: MutableMapping[str, Any] | None = None,
        anonymous: bool = False,
        now: float = 0.0,
    ) -> None:
        self.hub = hub
        self.id = conn_id
        # an anonymous connection's user id is derived from its id when asked for (no string
        # of its own per idle connection)
        self._user = None if anonymous else user_id
        self.anonymous = anonymous
        self.scope = scope
        self._outbox = outbox
        self._metadata: dict[str, Any] | None = None
        self._rooms: tuple[str, ...] | None = None  # a tuple: 56 bytes for one room, a set 216
        self.connected_at = now
        self.last_seen = now
        self.close_code: int | None = None
        self.close_reason = ""
        self.ip: str | None = None  # set when per-IP caps are on
        self.expires_at: float | None = None  # Unix time the credential expires
        self._expiry: asyncio.TimerHandle | None = None
        self._limiter: RateLimiter | None = None

    # -- sending -------------------------------------------------------------------------------

    def send_json(self, obj: Any) -> bool:
        """Encode ``obj`` with orjson and queue it as a text frame."""
        return self._push(Payload(KIND_TEXT, encode(obj)))

    def send_text(self, text: str) -> bool:
        return self._push(Payload(KIND_TEXT, text.encode()))

    def send_bytes(self, data: bytes) -> bool:
        """Queue a binary frame."""
        return self._push(Payload(KIND_BINARY, bytes(data)))

    def _push(self, payload: Payload) -> bool:
        result = self.hub._fanout.push(self._outbox, payload)
        if result == OVERFLOW:
            self.hub._slow_consumer(self._outbox)
        return result == QUEUED

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after the messages already queued; later sends are refused.

        Raises:
            ValueError: ``code`` may not be sent (RFC 6455 7.4: 1000-1003, 1007-1014 and
                3000-4999 may) or ``reason`` is over 123 bytes in UTF-8.
        """
        if not close_code_allowed(code):
            raise ValueError(f"close code {code} may not be sent (use 1000-1003, 1007-1014 or 3000-4999)")
        if len(reason.encode()) > 123:
            raise ValueError("a close reason is at most 123 bytes in UTF-8")
        if self._outbox.closing:
            return
        self._queue_close(code, reason, discard=False)

    def _queue_close(self, code: int, reason: str, discard: bool) -> None:
        self.close_code = code
        self.close_reason = reason
        self._outbox.close_with(Payload(KIND_CLOSE, b"", code, reason), discard)
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        ob = self._outbox
        if not ob.scheduled:
            self.hub._fanout._mark(ob)

    @property
    def user_id(self) -> str:
        """The authenticated user's id; ``anon-<connection id>`` for an anonymous connection."""
        user = self._user
        return user if user is not None else "anon-" + self.id

    @property
    def closed(self) -> bool:
        """True once a close is queued or the connection is gone."""
        return bool(self._outbox.closing)

    # -- metadata and rooms ----------------------------------------------------------------------

    def set_metadata(self, key: str, value: Any) -> None:
        if self._metadata is None:
            self._metadata = {}
        self._metadata[key] = value

    def get_metadata(self, key: str, default: Any = None) -> Any:
        if self._metadata is None:
            return default
        return self._metadata.get(key, default)

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the metadata."""
        return dict(self._metadata) if self._metadata else {}

    def _drop_room(self, name: str) -> None:
        rooms = self._rooms
        if rooms is not None and name in rooms:
            self._rooms = tuple(r for r in rooms if r != name) or None

    @property
    def rooms(self) -> frozenset[str]:
        return frozenset(self._rooms) if self._rooms else frozenset()

    @property
    def buffered_bytes(self) -> int:
        """Bytes queued for this connection, in the hub and in the transport."""
        return int(self._outbox.size())

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user_id!r}>"
