"""Connection: one client socket as the hub and the application see it.

A ``Connection`` *is* its outbound queue (it extends ``Outbox``) and carries its own token
buckets, so an idle connection is one compiled object with C fields instead of a connection,
an outbox, a rate limiter and the float objects between them (see docs/design-notes.md,
"Idle memory"). The fan-out loop sees only the ``Outbox`` part.

Compiled as ``fasthub._core.conn_c`` with ``conn_c.pxd``; this file is also the pure twin.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

import orjson

from fasthub._wire import close_code_allowed

if TYPE_CHECKING:
    from fasthub._wire import _nocython as cython
else:
    try:
        import cython
    except ImportError:  # pure-Python install: no Cython at run time
        from fasthub._wire import _nocython as cython

if cython.compiled:
    # conn_c.pxd cimports Outbox, Payload and Fanout from outbox_c (C-level base class)
    from fasthub._core.outbox_c import KIND_BINARY, KIND_CLOSE, KIND_PLAIN, KIND_TEXT, OVERFLOW, QUEUED
else:
    from fasthub._core.outbox_py import (
        KIND_BINARY,
        KIND_CLOSE,
        KIND_PLAIN,
        KIND_TEXT,
        OVERFLOW,
        QUEUED,
        Fanout,
        Outbox,
        Payload,
    )

if TYPE_CHECKING:
    import asyncio


class _Rare:
    """What most connections never set, kept off the connection object until one is set."""

    __slots__ = ("close_code", "close_reason", "expires_at", "expiry", "ip")

    def __init__(self) -> None:
        self.close_code: int | None = None
        self.close_reason = ""
        self.ip: str | None = None
        self.expires_at: float | None = None
        self.expiry: asyncio.TimerHandle | None = None


class Connection(Outbox):
    """A live WebSocket connection registered in a hub.

    Sends never await: they queue on the connection's outbox and return whether the message was
    accepted (``False`` when the connection is closing, or the message was dropped by the
    slow-consumer policy). Metadata and the room list are created on first use. ``scope`` is the
    ASGI scope during ``authenticate`` and ``on_connect`` and None afterwards, unless
    ``HubConfig.keep_scope`` (copy what you need into the metadata in ``on_connect``).

    The hub creates connections (applications get them from hooks and ``Hub`` lookups), so the
    class is not meant to be subclassed; the compiled class cannot be, and neither twin takes
    attributes of its own (keep per-connection data in the metadata).

    The core does not know the hub: a connection reports through the ``Fanout`` the hub hands
    it (``fanout.mark`` schedules its flush, ``fanout.overflow`` is the hub's slow-consumer
    policy, ``fanout.owner`` is the hub, for ``conn.hub``). The room bookkeeping methods
    (``add_room``, ``drop_room``) are the hub's; applications use ``Hub.join_room``.
    """

    __slots__ = (
        "_metadata",
        "_rare",
        "_rooms",
        "_user",
        "anonymous",
        "byte_tokens",
        "connected_at",
        "fanout",
        "id",
        "last_seen",
        "refused",
        "scope",
        "stamp",
        "strikes",
        "tokens",
    )

    def __init__(
        self,
        fanout: Fanout,
        conn_id: str,
        user_id: str | None,
        budget: int,
        drop_when_full: bool = False,
        scope: MutableMapping[str, Any] | None = None,
        anonymous: bool = False,
        now: float = 0.0,
    ) -> None:
        Outbox.__init__(self, budget, drop_when_full)
        self.fanout = fanout
        self.id = conn_id
        # an anonymous connection's user id is derived from its id when asked for (no string
        # of its own per idle connection)
        self._user = None if anonymous else user_id
        self.anonymous = anonymous
        self.scope = scope
        self._metadata: dict[str, Any] | None = None
        # None, one room's name (the room's own string), or a tuple of names: no set per
        # connection (216 bytes) and no tuple for the usual single room
        self._rooms: Any = None
        self.connected_at = now
        self.last_seen = now
        self._rare: _Rare | None = None  # close code and reason, IP, credential expiry
        # Token buckets on messages and bytes (``limit``/``spend``); the rates are the hub's
        self.tokens = 0.0
        self.byte_tokens = 0.0
        self.stamp = now
        self.strikes = 0
        self.refused = 0

    # -- fields most connections never set (on a _Rare object from the first one on) -------------

    def _rare_fields(self) -> _Rare:
        rare = self._rare
        if rare is None:
            rare = self._rare = _Rare()
        return rare

    # Each setter leaves ``_rare`` unmade while the value stays the default.

    @property
    def close_code(self) -> int | None:
        """The close code once the connection closed (or a close was queued); None before."""
        rare = self._rare
        return None if rare is None else rare.close_code

    @close_code.setter
    def close_code(self, value: int | None) -> None:
        if value is not None or self._rare is not None:
            self._rare_fields().close_code = value

    @property
    def close_reason(self) -> str:
        rare = self._rare
        return "" if rare is None else rare.close_reason

    @close_reason.setter
    def close_reason(self, value: str) -> None:
        if value or self._rare is not None:
            self._rare_fields().close_reason = value

    @property
    def ip(self) -> str | None:
        """The client address; set when per-IP caps or proxy headers (``--proxy-headers``) are on."""
        rare = self._rare
        return None if rare is None else rare.ip

    @ip.setter
    def ip(self, value: str | None) -> None:
        if value is not None or self._rare is not None:
            self._rare_fields().ip = value

    @property
    def expires_at(self) -> float | None:
        """Unix time the credential expires (None: it does not)."""
        rare = self._rare
        return None if rare is None else rare.expires_at

    @expires_at.setter
    def expires_at(self, value: float | None) -> None:
        if value is not None or self._rare is not None:
            self._rare_fields().expires_at = value

    @property
    def expiry(self) -> asyncio.TimerHandle | None:
        """The timer that closes the connection when its credential expires (the hub's)."""
        rare = self._rare
        return None if rare is None else rare.expiry

    @expiry.setter
    def expiry(self, value: asyncio.TimerHandle | None) -> None:
        if value is not None or self._rare is not None:
            self._rare_fields().expiry = value

    # -- rate limit --------------------------------------------------------------------------------

    def limit(self, rate: float, byte_rate: float, now: float) -> None:
        """Fill the buckets for ``rate`` messages and ``byte_rate`` bytes per second (burst 2 x)."""
        self.tokens = rate * 2.0
        self.byte_tokens = byte_rate * 2.0
        self.stamp = now

    def spend(self, now: float, nbytes: int, rate: float, byte_rate: float) -> float:
        """Spend one message and its bytes (0.0) or refuse it: how long until it would pass.

        The buckets of ``RateLimiter.take`` on this object's fields (no limiter object per
        connection; the rates, the same for every connection, are passed in; 0 disables one).
        ``strikes`` counts refusals since the last accepted message.
        """
        elapsed = now - self.stamp
        if elapsed > 0.0:
            self.stamp = now
            if rate > 0.0:
                self.tokens = min(rate * 2.0, self.tokens + elapsed * rate)
            if byte_rate > 0.0:
                self.byte_tokens = min(byte_rate * 2.0, self.byte_tokens + elapsed * byte_rate)
        wait = 0.0
        if rate > 0.0 and self.tokens < 1.0:
            wait = (1.0 - self.tokens) / rate
        if byte_rate > 0.0 and self.byte_tokens < nbytes:
            byte_wait = (nbytes - self.byte_tokens) / byte_rate
            if byte_wait > wait:
                wait = byte_wait
        if wait > 0.0:
            self.strikes += 1
            self.refused += 1
            return wait
        if rate > 0.0:
            self.tokens -= 1.0
        if byte_rate > 0.0:
            self.byte_tokens -= nbytes
        self.strikes = 0
        return 0.0

    # -- sending -------------------------------------------------------------------------------

    def send_json(self, obj: Any) -> bool:
        """Encode ``obj`` with orjson and queue it as a text frame."""
        return self.send_payload(Payload(KIND_TEXT, orjson.dumps(obj)))

    def send_text(self, text: str) -> bool:
        return self.send_payload(Payload(KIND_PLAIN, text.encode()))

    def send_bytes(self, data: bytes) -> bool:
        """Queue a binary frame."""
        return self.send_payload(Payload(KIND_BINARY, bytes(data)))

    def send_payload(self, payload: Payload) -> bool:
        """Queue an encoded payload (one a broadcast shares); False if refused or dropped."""
        fanout = self.fanout
        result = fanout.push(self, payload)
        if result == OVERFLOW:
            fanout.overflow(self)
        return bool(result == QUEUED)

    def close(self, code: int = 1000, reason: str = "", discard: bool = False) -> None:
        """Close after the messages already queued (``discard``: drop them); later sends are refused.

        Raises:
            ValueError: ``code`` may not be sent (RFC 6455 7.4: 1000-1003, 1007-1014 and
                3000-4999 may) or ``reason`` is over 123 bytes in UTF-8.
        """
        if not close_code_allowed(code):
            raise ValueError(f"close code {code} may not be sent (use 1000-1003, 1007-1014 or 3000-4999)")
        if len(reason.encode()) > 123:
            raise ValueError("a close reason is at most 123 bytes in UTF-8")
        if self.closing:
            return
        self.close_code = code
        self.close_reason = reason
        self.close_with(Payload(KIND_CLOSE, b"", code, reason), discard)
        self.mark_dirty()

    def mark_dirty(self) -> None:
        """Have the next flush look at this connection (something was queued around ``push``)."""
        if not self.scheduled:
            self.fanout.mark(self)

    @property
    def hub(self) -> Any:
        """The hub this connection belongs to."""
        return self.fanout.owner

    @property
    def user_id(self) -> str:
        """The authenticated user's id; ``anon-<connection id>`` for an anonymous connection."""
        user = self._user
        return user if user is not None else "anon-" + self.id

    @property
    def closed(self) -> bool:
        """True once a close is queued or the connection is gone."""
        return bool(self.closing)

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

    def room_names(self) -> tuple[str, ...]:
        rooms = self._rooms
        if rooms is None:
            return ()
        if isinstance(rooms, str):
            return (rooms,)
        return rooms  # type: ignore[no-any-return]

    def room_count(self) -> int:
        rooms = self._rooms
        if rooms is None:
            return 0
        if isinstance(rooms, str):
            return 1
        return len(rooms)

    def in_room(self, name: str) -> bool:
        rooms = self._rooms
        if rooms is None:
            return False
        if isinstance(rooms, str):
            return bool(rooms == name)
        return name in rooms

    def add_room(self, name: str) -> None:
        """Record membership; ``name`` should be the room's own string (one copy per room)."""
        rooms = self._rooms
        if rooms is None:
            self._rooms = name
        elif isinstance(rooms, str):
            self._rooms = (rooms, name)
        else:
            self._rooms = (*rooms, name)

    def drop_room(self, name: str) -> None:
        if not self.in_room(name):
            return
        left = tuple(r for r in self.room_names() if r != name)
        self._rooms = None if not left else left[0] if len(left) == 1 else left

    @property
    def rooms(self) -> frozenset[str]:
        return frozenset(self.room_names())

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user_id!r}>"
