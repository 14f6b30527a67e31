"""Built-in handling of client messages, and where the application's handler fits in.

Order for every text message: decode (errors answered with an ``error`` envelope) -> the
application's ``on_message(conn, msg)`` if given -> the built-in for ``msg.type``. A handler that
returns ``True`` takes the message over and the built-in is skipped; any other return value
lets the built-in run, so join/leave/ping keep working when a handler is installed (unlike the
original, which lost them). Types without a built-in meaning (``message``, ``notification``) are
the handler's: with no handler they are answered with ``error`` ``unhandled``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ._core import KIND_TEXT, Payload
from .connection import Connection
from .exceptions import EnvelopeError, HubError
from .hub import Hub
from .messages import ErrorCode, Message, MessageType, decode, encode, error_envelope, utc_timestamp

log = logging.getLogger("fasthub")

MessageHandler = Callable[[Connection, Message], "Awaitable[bool | None] | bool | None"]
AccessHook = Callable[[Connection, str], "Awaitable[bool] | bool"]
UserHook = Callable[[Connection, str], "Awaitable[bool] | bool"]

SERVER_ONLY = frozenset({MessageType.ERROR.value, MessageType.SYSTEM.value})


async def _resolve(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class Dispatcher:
    """Runs the message pipeline for one app (shared by all its connections)."""

    def __init__(
        self,
        hub: Hub,
        on_message: MessageHandler | None = None,
        can_join: AccessHook | None = None,
        can_publish: AccessHook | None = None,
        can_message: UserHook | None = None,
    ) -> None:
        self.hub = hub
        self.on_message = on_message
        self.can_join = can_join
        self.can_publish = can_publish
        self.can_message = can_message
        self._builtins: dict[str, Callable[[Connection, Message], Awaitable[None]]] = {
            MessageType.PING.value: self._ping,
            MessageType.PONG.value: self._pong,
            MessageType.JOIN_ROOM.value: self._join_room,
            MessageType.LEAVE_ROOM.value: self._leave_room,
            MessageType.ROOM_MESSAGE.value: self._room_message,
            MessageType.USER_MESSAGE.value: self._user_message,
            MessageType.BROADCAST.value: self._broadcast,
        }

    async def handle(self, conn: Connection, data: bytes | str) -> None:
        """One text message from ``conn``."""
        hub = self.hub
        hub.messages_in += 1
        try:
            msg = decode(data, hub.config.max_json_depth)
        except EnvelopeError as exc:
            conn.send_json(error_envelope(exc.code, exc.message, exc.msg_id))
            return
        if self.on_message is not None:
            try:
                taken = await _resolve(self.on_message(conn, msg))
            except Exception:
                log.exception("fasthub: on_message raised for %r", msg.type)
                conn.send_json(error_envelope(ErrorCode.INTERNAL_ERROR, "the message handler failed", msg.id))
                return
            if taken is True or msg.type not in self._builtins:
                return
        builtin = self._builtins.get(msg.type)
        if builtin is None:
            if msg.type in SERVER_ONLY:
                text = f"{msg.type!r} is a server-to-client type"
            else:
                text = f"no handler for message type {msg.type!r}"
            conn.send_json(error_envelope(ErrorCode.UNHANDLED, text, msg.id))
            return
        try:
            await builtin(conn, msg)
        except EnvelopeError as exc:
            conn.send_json(error_envelope(exc.code, exc.message, msg.id))

    def binary(self, conn: Connection) -> None:
        """A binary frame: the protocol is JSON text, so it is refused (the connection stays)."""
        self.hub.messages_in += 1
        conn.send_json(
            error_envelope(ErrorCode.UNSUPPORTED_DATA, "binary messages are not supported; send JSON text")
        )

    # -- built-ins ---------------------------------------------------------------------------------

    async def _ping(self, conn: Connection, msg: Message) -> None:
        out: dict[str, Any] = {"type": MessageType.PONG.value, "timestamp": utc_timestamp()}
        if msg.payload is not None:
            out["payload"] = msg.payload
        if msg.id is not None:
            out["id"] = msg.id
        conn.send_json(out)

    async def _pong(self, conn: Connection, msg: Message) -> None:
        """An app-level pong only proves liveness, which receiving it already recorded."""

    def _room_name(self, msg: Message) -> str:
        room = msg.room
        if room is None:
            raise EnvelopeError(ErrorCode.MISSING_FIELD, f"{msg.type} needs a 'room'")
        if not self.hub.config.valid_room_name(room):
            cfg = self.hub.config
            raise EnvelopeError(
                ErrorCode.INVALID_ROOM,
                f"room names are 1-{cfg.max_room_name_length} characters matching {cfg.room_name_pattern}",
            )
        return room

    async def _join_room(self, conn: Connection, msg: Message) -> None:
        room = self._room_name(msg)
        if self.can_join is not None and not await _resolve(self.can_join(conn, room)):
            raise EnvelopeError(ErrorCode.FORBIDDEN, f"not allowed to join {room!r}")
        rooms = conn._rooms
        limit = self.hub.config.max_rooms_per_connection
        if rooms is not None and room not in rooms and len(rooms) >= limit:
            raise EnvelopeError(ErrorCode.TOO_MANY_ROOMS, f"a connection may be in at most {limit} rooms")
        try:
            self.hub.join_room(conn.id, room, reply_id=msg.id)
        except HubError as exc:  # raced with a close
            raise EnvelopeError(ErrorCode.INVALID_MESSAGE, str(exc)) from None

    async def _leave_room(self, conn: Connection, msg: Message) -> None:
        room = self._room_name(msg)
        if not self.hub._leave(conn, room, msg.id, reply=True):
            raise EnvelopeError(ErrorCode.NOT_MEMBER, f"not a member of {room!r}")

    async def _room_message(self, conn: Connection, msg: Message) -> None:
        name = self._room_name(msg)
        room = self.hub._rooms.get(name)
        if self.can_publish is not None:
            if not await _resolve(self.can_publish(conn, name)):
                raise EnvelopeError(ErrorCode.FORBIDDEN, f"not allowed to publish to {name!r}")
        elif room is None or conn.id not in room._members:
            raise EnvelopeError(ErrorCode.NOT_MEMBER, f"join {name!r} before sending to it")
        if room is None or not room._members:
            return
        self.hub._deliver(room._members, self._relay(conn, msg))

    async def _user_message(self, conn: Connection, msg: Message) -> None:
        to = msg.to
        if to is None:
            raise EnvelopeError(ErrorCode.MISSING_FIELD, "user_message needs a 'to'")
        if self.can_message is not None and not await _resolve(self.can_message(conn, to)):
            raise EnvelopeError(ErrorCode.FORBIDDEN, f"not allowed to message user {to!r}")
        members = self.hub._users.get(to)
        if not members:
            raise EnvelopeError(ErrorCode.UNKNOWN_USER, f"user {to!r} is not connected")
        self.hub._deliver(members, self._relay(conn, msg))

    async def _broadcast(self, conn: Connection, msg: Message) -> None:
        self.hub._deliver(self.hub._outboxes, self._relay(conn, msg))

    @staticmethod
    def _relay(conn: Connection, msg: Message) -> Payload:
        """The envelope as receivers see it: ``from`` set by the server, encoded once."""
        out: dict[str, Any] = {"type": msg.type}
        if msg.room is not None:
            out["room"] = msg.room
        if msg.to is not None:
            out["to"] = msg.to
        out["from"] = conn.user_id
        if msg.payload is not None:
            out["payload"] = msg.payload
        out["timestamp"] = msg.timestamp if msg.timestamp is not None else utc_timestamp()
        if msg.metadata is not None:
            out["metadata"] = msg.metadata
        if msg.id is not None:
            out["id"] = msg.id
        return Payload(KIND_TEXT, encode(out))
