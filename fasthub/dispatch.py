"""The message pipeline: every client message, on every server path, and the built-in types.

``Dispatcher.receive`` is the one pipeline both server paths call with a message's bytes: count
the bytes, check the size limit and the connection's rate limit, refuse binary frames, decode,
dispatch. Order for every text message: decode (errors answered with an ``error`` envelope) -> the
application's ``on_message(conn, msg)`` if given -> the built-in for ``msg.type``. A handler that
returns ``True`` takes the message over and the built-in is skipped; any other return value
lets the built-in run, so join/leave/ping keep working when a handler is installed (unlike the
original, which lost them). Types without a built-in meaning (``message``, ``notification``) are
the handler's: with no handler they are answered with ``error`` ``unhandled``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from ._core import ENC_MSGPACK, KIND_TEXT, RELAY_CONGESTED, RELAY_NOT_HANDLED, Payload, Relay
from .broker import LocalBroker
from .connection import Connection
from .exceptions import EnvelopeError, HubError
from .hub import Hub
from .messages import (
    ErrorCode,
    Message,
    MessageType,
    decode,
    decode_value,
    encode,
    error_envelope,
    position,
    system_envelope,
    unpack,
    utc_timestamp,
)
from .presence import presence_body
from .sessions import SessionError
from .streams import ROOM, USER, Position, Published

log = logging.getLogger("fasthub")

MessageHandler = Callable[[Connection, Message], "Awaitable[bool | None] | bool | None"]
AccessHook = Callable[[Connection, str], "Awaitable[bool] | bool"]
UserHook = Callable[[Connection, str], "Awaitable[bool] | bool"]
BinaryHandler = Callable[[Connection, bytes], "Awaitable[None] | None"]

RoomHooks = AccessHook | Mapping[str, "AccessHook | bool"]
_Step = Callable[[], "Awaitable[None] | None"]

class Pause(float):
    """``Dispatcher.receive``'s answer "stop reading this connection this many seconds, then go
    on" (flow control); the later messages of the same read wait too."""


#: the flow-control pause: short, looked at again after it (a room drains in a few ticks)
PAUSE = Pause(0.005)

SERVER_ONLY = frozenset({MessageType.ERROR.value, MessageType.SYSTEM.value, MessageType.ACK.value})


def room_hook(hooks: RoomHooks | None) -> AccessHook | None:
    """A hook, or a mapping of room-name patterns (``fnmatch``; first match wins) to hooks or
    booleans, as one hook. A room no pattern matches is refused."""
    if hooks is None or callable(hooks):
        return hooks
    rules = [(pattern, rule) for pattern, rule in hooks.items()]

    def by_pattern(conn: Connection, room: str) -> Awaitable[bool] | bool:
        for pattern, rule in rules:
            if fnmatch.fnmatchcase(room, pattern):
                return rule(conn, room) if callable(rule) else bool(rule)
        return False

    return by_pattern


class Dispatcher:
    """Runs the message pipeline for one app (shared by all its connections)."""

    def __init__(
        self,
        hub: Hub,
        on_message: MessageHandler | None = None,
        can_join: AccessHook | None = None,
        can_publish: AccessHook | None = None,
        can_message: UserHook | None = None,
        verify_token: Callable[[str], Any] | None = None,
        on_binary: BinaryHandler | None = None,
    ) -> None:
        self.hub = hub
        self.on_binary = on_binary
        config = hub.config
        self.max_size = config.max_message_size
        self.rate = config.rate_limit
        self.byte_rate = config.rate_limit_bytes
        self.limited = bool(config.rate_limit or config.rate_limit_bytes)
        self.max_depth = config.max_json_depth
        self.max_metadata = config.max_metadata_bytes
        self.rooms = hub.room_map
        self.verify_token = verify_token
        self.on_message = on_message
        self.can_join = can_join
        self.can_publish = can_publish
        self.can_message = can_message
        # a member's plain room message, relayed in one compiled call (``_core.Relay``) when
        # no application handler or publish hook has to see it
        self.relay: Relay | None = None
        if on_message is None and can_publish is None:
            self.relay = Relay(
                hub.room_map, self._publish_room, self._relay_pending, utc_timestamp, hub.room_congested,
                Published, self.max_depth,
            )
            self.relay.limits(self.max_size, self.limited, self.rate, self.byte_rate, self._count)
            if can_join is None:
                self.relay.joins(self._join_read)
            broker = hub.broker
            if isinstance(broker, LocalBroker) and type(broker).publish_stream is LocalBroker.publish_stream:
                self.relay.local(
                    broker.streams, hub.config.history_for, hub.fanout, hub.deliver_room, hub.slow_consumers
                )
        self._builtins: dict[str, Callable[[Connection, Message], Awaitable[None] | Pause | None]] = {
            MessageType.PING.value: self._ping,
            MessageType.PONG.value: self._pong,
            MessageType.JOIN_ROOM.value: self._join_room,
            MessageType.LEAVE_ROOM.value: self._leave_room,
            MessageType.ROOM_MESSAGE.value: self._room_message,
            MessageType.USER_MESSAGE.value: self._user_message,
            MessageType.BROADCAST.value: self._broadcast,
            MessageType.REFRESH.value: self._refresh,
            MessageType.RESUME.value: self._resume,
            MessageType.PRESENCE.value: self._presence,
            MessageType.PRESENCE_STATS.value: self._presence_stats,
            MessageType.TYPING.value: self._typing,
        }

    def receive(self, conn: Connection, data: bytes, binary: bool, now: float) -> Awaitable[None] | float | None:
        """One client message (a text frame's UTF-8 bytes, or a binary frame's) from either server path.

        Counts its bytes, closes with 1009 above ``max_message_size``, spends the connection's
        rate-limit tokens, then dispatches. Returns None when done, the seconds until the rate
        limit would let the next message pass when it refused this one (the fast path stops
        reading that long), or an awaitable to finish before the connection's next message.
        """
        hub = self.hub
        n = len(data)
        hub.bytes_in += n
        if conn.closing:
            return None
        if n > self.max_size:  # the fast path's engine refuses these itself (1009)
            conn.close(1009, "message too big")
            return None
        if self.limited:
            wait: float = conn.spend(now, n, self.rate, self.byte_rate)
            if wait:
                self.rate_limited(conn)
                return wait
        hub.messages_in += 1
        if binary:
            return self.binary(conn, data)
        relay = self.relay
        if relay is not None:
            done = relay.room_message(conn, data)
            if done != RELAY_NOT_HANDLED:
                return PAUSE if done == RELAY_CONGESTED else None
        return self.decoded(conn, data)

    def decoded(self, conn: Connection, data: bytes) -> Awaitable[None] | Pause | None:
        """A text message ``receive`` has counted and let through (and the relay did not take):
        decode, then dispatch.

        Synchronous unless a handler or hook is async; then the awaitable finishes the job, and
        the caller awaits it before the connection's next message (one connection's messages
        stay in order).
        """
        try:
            msg = decode(data, self.max_depth, self.max_metadata)
        except EnvelopeError as exc:
            conn.send_json(error_envelope(exc.code, exc.message, exc.msg_id))
            return None
        if self.on_message is None:
            return self._builtin(conn, msg)
        return self.dispatch(conn, msg)

    def _count(self, nbytes: int, messages: int) -> None:
        """``Relay.feed``'s counts, once per read."""
        hub = self.hub
        hub.bytes_in += nbytes
        hub.messages_in += messages

    def dispatch(self, conn: Connection, msg: Message) -> Awaitable[None] | Pause | None:
        """A decoded message: the application's ``on_message``, then the built-in for its type."""
        if self.on_message is not None:
            try:
                taken = self.on_message(conn, msg)
            except Exception:
                self._handler_failed(conn, msg)
                return None
            if inspect.isawaitable(taken):
                return self._after_handler(conn, msg, taken)
            if taken is True or msg.type not in self._builtins:
                return None
        return self._builtin(conn, msg)

    async def _after_handler(self, conn: Connection, msg: Message, pending: Awaitable[Any]) -> None:
        try:
            taken = await pending
        except Exception:
            self._handler_failed(conn, msg)
            return
        if taken is True or msg.type not in self._builtins:
            return
        rest = self._builtin(conn, msg)
        if isinstance(rest, Pause):
            await asyncio.sleep(rest)  # flow control, inside the handler's turn
        elif rest is not None:
            await rest

    def _handler_failed(self, conn: Connection, msg: Message) -> None:
        log.exception("fasthub: on_message raised for %r", msg.type)
        conn.send_json(error_envelope(ErrorCode.INTERNAL_ERROR, "the message handler failed", msg.id))

    def _builtin(self, conn: Connection, msg: Message) -> Awaitable[None] | Pause | None:
        builtin = self._builtins.get(msg.type)
        if builtin is None:
            if msg.type in SERVER_ONLY:
                text = f"{msg.type!r} is a server-to-client type"
            else:
                text = f"no handler for message type {msg.type!r}"
            conn.send_json(error_envelope(ErrorCode.UNHANDLED, text, msg.id))
            return None
        try:
            return builtin(conn, msg)
        except EnvelopeError as exc:
            conn.send_json(error_envelope(exc.code, exc.message, msg.id))
            return None

    def _gate(
        self, conn: Connection, msg: Message, allowed: Any, then: _Step, denied: EnvelopeError
    ) -> Awaitable[None] | None:
        """Run ``then`` if an answer (an access hook's, the broker's; maybe awaitable) allows it,
        else raise ``denied``; ``then`` may itself return an awaitable."""
        if inspect.isawaitable(allowed):
            return self._gate_async(conn, msg, allowed, then, denied)
        if not allowed:
            raise denied
        return then()

    async def _gate_async(
        self, conn: Connection, msg: Message, allowed: Awaitable[Any], then: _Step, denied: EnvelopeError
    ) -> None:
        try:
            if not await allowed:
                raise denied
            rest = then()
            if rest is not None:
                await rest
        except EnvelopeError as exc:
            conn.send_json(error_envelope(exc.code, exc.message, msg.id))

    def rate_limited(self, conn: Connection) -> None:
        """A message refused by the connection's rate limit; too many in a row close it (1008)."""
        self.hub.messages_in += 1
        config = self.hub.config
        if conn.strikes > config.rate_limit_strikes:
            if not conn.closed:
                log.info("fasthub: closing %s: stayed over its rate limit", conn.id)
                conn.close(1008, "rate limit exceeded")
            return
        conn.send_json(
            error_envelope(
                ErrorCode.RATE_LIMITED,
                f"over the limit of {config.rate_limit:g} messages and {config.rate_limit_bytes:g} bytes per second",
            )
        )

    def binary(self, conn: Connection, data: bytes) -> Awaitable[None] | Pause | None:
        """A binary frame: an envelope in MessagePack on a ``fasthub.msgpack`` connection (a
        MessagePack ``bin`` value there is application data), else application data. Data goes
        to ``on_binary``; without one it is refused with ``unsupported_data`` (the connection
        stays)."""
        if conn.encoding & ENC_MSGPACK:
            try:
                obj = unpack(data)
                if type(obj) is bytes:
                    return self._data(conn, obj)
                msg = decode_value(obj, self.max_depth, self.max_metadata)
            except EnvelopeError as exc:
                conn.send_json(error_envelope(exc.code, exc.message, exc.msg_id))
                return None
            return self.dispatch(conn, msg)
        return self._data(conn, data)

    def _data(self, conn: Connection, data: bytes) -> Awaitable[None] | None:
        on_binary = self.on_binary
        if on_binary is None:
            text = "binary messages are not supported; send JSON text"
            if conn.encoding & ENC_MSGPACK:
                text = "this server takes no binary data; send envelopes as MessagePack maps"
            conn.send_json(error_envelope(ErrorCode.UNSUPPORTED_DATA, text))
            return None
        try:
            result = on_binary(conn, data)
        except Exception:
            self._binary_failed(conn)
            return None
        if inspect.isawaitable(result):
            return self._after_binary(conn, result)
        return None

    async def _after_binary(self, conn: Connection, pending: Awaitable[Any]) -> None:
        try:
            await pending
        except Exception:
            self._binary_failed(conn)

    def _binary_failed(self, conn: Connection) -> None:
        log.exception("fasthub: on_binary raised")
        conn.send_json(error_envelope(ErrorCode.INTERNAL_ERROR, "the binary handler failed"))

    # -- built-ins ---------------------------------------------------------------------------------

    def _ping(self, conn: Connection, msg: Message) -> None:
        out: dict[str, Any] = {"type": MessageType.PONG.value, "timestamp": utc_timestamp()}
        if msg.payload is not None:
            out["payload"] = msg.payload
        if msg.id is not None:
            out["id"] = msg.id
        conn.send_json(out)

    def _pong(self, conn: Connection, msg: Message) -> None:
        """An app-level pong only proves liveness, which receiving it already recorded."""

    def _room_name(self, msg: Message) -> str:
        room = msg.room
        if room is None:
            raise EnvelopeError(ErrorCode.MISSING_FIELD, f"{msg.type} needs a 'room'")
        return self._check_room(room)

    def _check_room(self, room: str) -> str:
        if room in self.rooms:  # an existing room's name was validated when it was made
            return room
        if not self.hub.config.valid_room_name(room):
            cfg = self.hub.config
            raise EnvelopeError(
                ErrorCode.INVALID_ROOM,
                f"room names are 1-{cfg.max_room_name_length} characters matching {cfg.room_name_pattern}",
            )
        return room

    def _join_room(self, conn: Connection, msg: Message) -> Awaitable[None] | None:
        room = self._room_name(msg)
        if self.can_join is None:
            self._join(conn, room, msg.id, msg.since)
            return None
        denied = EnvelopeError(ErrorCode.FORBIDDEN, f"not allowed to join {room!r}")
        return self._gate(
            conn, msg, self.can_join(conn, room), lambda: self._join(conn, room, msg.id, msg.since), denied
        )

    def _join_read(self, conn: Connection, room: str, msg_id: Any) -> None:
        """A plain join the relay read (only ``type``, ``room`` and ``id``; no ``can_join``
        hook): ``_join_room`` without decoding it into a ``Message``."""
        try:
            self._join(conn, self._check_room(room), msg_id, None)
        except EnvelopeError as exc:
            conn.send_json(error_envelope(exc.code, exc.message, msg_id))

    def _join(self, conn: Connection, room: str, msg_id: Any, since: tuple[int, str] | None) -> None:
        limit = self.hub.config.max_rooms_per_connection
        if not conn.in_room(room) and conn.room_count() >= limit:
            raise EnvelopeError(ErrorCode.TOO_MANY_ROOMS, f"a connection may be in at most {limit} rooms")
        if self.hub.is_registered(conn):  # else closed while an async hook ran
            self.hub.join_connection(conn, room, msg_id, since)

    def _leave_room(self, conn: Connection, msg: Message) -> None:
        room = self._room_name(msg)
        if not self.hub.leave_room(conn.id, room, reply_id=msg.id):
            raise EnvelopeError(ErrorCode.NOT_MEMBER, f"not a member of {room!r}")

    def _room_message(self, conn: Connection, msg: Message) -> Awaitable[None] | Pause | None:
        name = msg.room
        # the ingress hot path: one room lookup, which also spares validating a known name
        room = self.rooms.get(name) if name is not None else None
        if room is None:
            name = self._room_name(msg)
        if room is not None and room.syncing and conn.id in room.syncing:
            joining = self.hub.join_pending(conn.id, name)  # type: ignore[arg-type]
            if joining is not None:  # its own join still reads the room's position: after it
                return self._after_join(joining, conn, msg)
        if self.can_publish is None:
            if room is None or conn.id not in room.member_map:
                raise EnvelopeError(ErrorCode.NOT_MEMBER, f"join {name!r} before sending to it")
            self._store(conn, msg, ROOM, name)  # type: ignore[arg-type]
            if room.congested and self.hub.room_congested(name):  # type: ignore[arg-type]
                return PAUSE  # flow control: stop reading this publisher while the room drains
            return None
        assert name is not None

        def publish() -> Awaitable[None] | None:
            self._store(conn, msg, ROOM, name)
            if self.hub.room_congested(name):
                return self.hub.wait_room_drained(name, self.hub.config.write_timeout)  # type: ignore[return-value]
            return None

        denied = EnvelopeError(ErrorCode.FORBIDDEN, f"not allowed to publish to {name!r}")
        return self._gate(conn, msg, self.can_publish(conn, name), publish, denied)

    async def _after_join(self, joining: Awaitable[None], conn: Connection, msg: Message) -> None:
        """A room message sent while the sender's own join of the room was still answered:
        published once the join is (the connection's later messages wait for it)."""
        await joining
        if conn.closed:
            return
        try:
            rest = self._room_message(conn, msg)
        except EnvelopeError as exc:
            conn.send_json(error_envelope(exc.code, exc.message, msg.id))
            return
        if isinstance(rest, Pause):
            await asyncio.sleep(rest)
        elif rest is not None:
            await rest

    def _user_message(self, conn: Connection, msg: Message) -> Awaitable[None] | None:
        to = msg.to
        if to is None:
            raise EnvelopeError(ErrorCode.MISSING_FIELD, "user_message needs a 'to'")
        if self.can_message is None:
            return self._send_user(conn, msg, to)
        denied = EnvelopeError(ErrorCode.FORBIDDEN, f"not allowed to message user {to!r}")
        return self._gate(conn, msg, self.can_message(conn, to), lambda: self._send_user(conn, msg, to), denied)

    def _send_user(self, conn: Connection, msg: Message, to: str) -> Awaitable[None] | None:
        """Publish to ``to`` if it is online on some node (the broker's answer, maybe awaited)."""

        def publish() -> None:
            self._store(conn, msg, USER, to)

        return self._gate(conn, msg, self.hub.user_online(to), publish, _unknown_user(to))

    def _refresh(self, conn: Connection, msg: Message) -> None:
        """A fresh token for the same user moves the connection's expiry (no reconnect)."""
        from .auth import Identity
        from .exceptions import Denied

        if self.verify_token is None:
            raise EnvelopeError(ErrorCode.UNHANDLED, "this server has no token authentication to refresh")
        token = msg.payload.get("token") if isinstance(msg.payload, dict) else None
        if not isinstance(token, str) or not token:
            raise EnvelopeError(ErrorCode.MISSING_FIELD, "refresh needs payload.token")
        try:
            identity = self.verify_token(token)
        except Denied as exc:
            raise EnvelopeError(ErrorCode.INVALID_TOKEN, exc.reason) from None
        if not isinstance(identity, Identity) or identity.user_id != conn.user_id:
            raise EnvelopeError(ErrorCode.FORBIDDEN, "the token is for another user")
        self.hub.set_expiry(conn, identity.expires_at)
        payload = {"event": "token_refreshed", "expires_at": identity.expires_at}
        conn.send_json(system_envelope(payload, reply_id=msg.id))

    def _resume(self, conn: Connection, msg: Message) -> Awaitable[None]:
        """Take a closed session back: its rooms, each with what was missed, in one step."""
        payload = msg.payload if isinstance(msg.payload, dict) else {}
        try:  # an anonymous connection may take an anonymous session (it keeps its new id)
            session_id = self.hub.signer.verify(payload.get("token"), None if conn.anonymous else conn.user_id)
        except SessionError as exc:
            self.hub.resumed("invalid")
            raise EnvelopeError(ErrorCode.INVALID_SESSION, str(exc)) from None
        rooms = payload.get("rooms") or {}
        if not isinstance(rooms, dict):
            raise EnvelopeError(ErrorCode.INVALID_MESSAGE, "payload.rooms must map room names to positions")
        positions = {name: position(value, msg.id) for name, value in rooms.items() if value is not None}
        user_at = payload.get("user")
        user_since = position(user_at, msg.id) if user_at is not None else None
        return self._resume_later(conn, msg, session_id, positions, user_since)

    async def _resume_later(
        self,
        conn: Connection,
        msg: Message,
        session_id: str,
        positions: dict[str, tuple[int, str]],
        user_since: tuple[int, str] | None,
    ) -> None:
        hub = self.hub
        out: dict[str, Any] = {"event": "resumed", "session": session_id}
        try:
            kept = hub.take_session(session_id)
            if inspect.isawaitable(kept):
                kept = await kept
        except Exception:
            hub.resumed("unavailable")
            conn.send_json(error_envelope(ErrorCode.UNAVAILABLE, "sessions cannot be read now; retry", msg.id))
            return
        if kept is None:
            hub.resumed("expired")
            out["resumed"] = False
            out["reason"] = "expired"  # older than session_ttl, resumed already, or never kept
            conn.send_json(system_envelope(out, reply_id=msg.id))
            return
        saved = orjson.loads(kept)
        loop = asyncio.get_running_loop()
        rooms: dict[str, Any] = {}
        waits: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []
        for name, at in (saved.get("r") or {}).items():
            since = positions.get(name) or (tuple(at) if at else None)
            if self.can_join is not None:
                allowed = self.can_join(conn, name)
                if inspect.isawaitable(allowed):
                    allowed = await allowed
                if not allowed:
                    rooms[name] = {"joined": False, "reason": "forbidden"}
                    continue
            if not hub.is_registered(conn):
                return
            fut: asyncio.Future[dict[str, Any]] = loop.create_future()
            try:
                hub.join_room(conn.id, name, since=since, on_joined=_settle_with(fut))
            except HubError as exc:
                hub.forget_join(conn.id, name)
                rooms[name] = {"joined": False, "reason": str(exc)}
                continue
            waits.append((name, fut))
        for name, fut in waits:
            try:
                reply = await asyncio.wait_for(fut, 10.0)
            except TimeoutError:
                hub.forget_join(conn.id, name)
                rooms[name] = {"joined": False, "reason": "timeout"}
                continue
            joined = reply.get("event") == "joined"
            rooms[name] = {"joined": joined, **{k: reply[k] for k in _RESUMED_FIELDS if k in reply}}
        if user_since is not None and not conn.anonymous:
            result = hub.recover_user(conn, Position(*user_since))
            out["user"] = await result if inspect.isawaitable(result) else result
        out["resumed"] = True
        out["rooms"] = rooms
        hub.resumed("resumed")
        if hub.is_registered(conn):
            conn.send_json(system_envelope(out, reply_id=msg.id))

    def _broadcast(self, conn: Connection, msg: Message) -> None:
        self.hub.publish_all(self._relay(conn, msg))

    # -- presence and typing -----------------------------------------------------------------------

    def _presence(self, conn: Connection, msg: Message) -> Awaitable[None] | None:
        """Who is in a room, on every node: for its members, and for anyone ``can_join`` lets in
        (seeing who is there is no more than joining, looking and leaving would show)."""
        room = self._room_name(msg)
        return self._may_see(conn, msg, room, lambda: self._answer_presence(conn, msg, room, False))

    def _presence_stats(self, conn: Connection, msg: Message) -> Awaitable[None] | None:
        room = self._room_name(msg)
        return self._may_see(conn, msg, room, lambda: self._answer_presence(conn, msg, room, True))

    def _may_see(self, conn: Connection, msg: Message, room: str, then: _Step) -> Awaitable[None] | None:
        if self.can_join is None or conn.in_room(room):
            return then()
        denied = EnvelopeError(ErrorCode.FORBIDDEN, f"not allowed to see who is in {room!r}")
        return self._gate(conn, msg, self.can_join(conn, room), then, denied)

    async def _answer_presence(self, conn: Connection, msg: Message, room: str, stats: bool) -> None:
        hub = self.hub
        try:
            if stats:
                body: dict[str, Any] = (await hub.presence_stats(room)).to_dict()
            else:
                body = presence_body(await hub.presence(room))
        except Exception as exc:
            log.debug("fasthub: presence of %r could not be read: %s", room, exc)
            conn.send_json(error_envelope(ErrorCode.UNAVAILABLE, "presence cannot be read now; retry", msg.id))
            return
        out: dict[str, Any] = {"type": msg.type, "room": room, "payload": body, "timestamp": utc_timestamp()}
        if msg.id is not None:
            out["id"] = msg.id
        if hub.is_registered(conn):
            conn.send_json(out)

    def _typing(self, conn: Connection, msg: Message) -> Awaitable[None] | None:
        """Relay "typing" to the room's other members (never stored, never acknowledged): only
        from a member, and only what ``can_publish`` allows when the app set it; the ones over
        the throttle (``HubConfig.typing_interval``) are dropped silently."""
        name = msg.room
        room = self.rooms.get(name) if name is not None else None
        if room is None:
            name = self._room_name(msg)
        if room is None or conn.id not in room.member_map:
            raise EnvelopeError(ErrorCode.NOT_MEMBER, f"join {name!r} before typing in it")
        assert name is not None
        if self.can_publish is None:
            self.hub.typing(conn.id, name)
            return None

        def relay() -> None:
            if self.hub.is_registered(conn) and conn.in_room(name):  # still, after an async hook
                self.hub.typing(conn.id, name)

        denied = EnvelopeError(ErrorCode.FORBIDDEN, f"not allowed to publish to {name!r}")
        return self._gate(conn, msg, self.can_publish(conn, name), relay, denied)

    @staticmethod
    def _relay(conn: Connection, msg: Message) -> Payload:
        """The envelope as receivers see it: ``from`` set by the server, encoded once."""
        msg.from_ = conn.user_id
        if msg.timestamp is None:
            msg.timestamp = utc_timestamp()
        return Payload(KIND_TEXT, encode(msg.to_dict()))

    def _store(self, conn: Connection, msg: Message, kind: str, name: str) -> None:
        """Publish a room or user message through its stream; a message with an ``id`` gets an
        ``ack`` (with its offset when stored) or, when the broker failed, an ``error``."""
        msg.from_ = conn.user_id
        if msg.timestamp is None:
            msg.timestamp = utc_timestamp()
        result = self.hub.publish_stored(kind, name, encode(msg.to_dict()), None, msg.idempotency_key)
        if isinstance(result, (int, Published)):  # an int: not stored (no history), sent
            if msg.id is not None:
                conn.send_payload(_ack(msg, kind, name, result if isinstance(result, Published) else None))
            return
        future = asyncio.ensure_future(result)
        future.add_done_callback(lambda done: self._stored(conn, msg, kind, name, done))

    @staticmethod
    def _stored(conn: Connection, msg: Message, kind: str, name: str, done: asyncio.Future[Published]) -> None:
        _answer_stored(conn, msg.id, kind, name, done)

    def _publish_room(
        self, name: str, body: bytes, idempotency_key: str | None
    ) -> Published | Awaitable[Published] | int:
        """The relay's publish: ``_store``'s, for a room."""
        return self.hub.publish_stored(ROOM, name, body, None, idempotency_key)

    @staticmethod
    def _relay_pending(conn: Connection, msg_id: Any, name: str, answer: Awaitable[Published]) -> None:
        """A relayed message the broker stores later: its ``ack`` or ``error`` then."""
        future = asyncio.ensure_future(answer)
        future.add_done_callback(lambda done: _answer_stored(conn, msg_id, ROOM, name, done))


def _answer_stored(conn: Connection, msg_id: Any, kind: str, name: str, done: asyncio.Future[Published]) -> None:
    if done.cancelled():
        exc: BaseException | None = asyncio.CancelledError()
    else:
        exc = done.exception()
    if exc is not None:
        log.debug("fasthub: storing a message in %s:%s failed: %s", kind, name, exc)
        if msg_id is not None and not conn.closed:
            conn.send_json(error_envelope(ErrorCode.UNAVAILABLE, "the message could not be stored; retry", msg_id))
        return
    if msg_id is not None and not conn.closed:
        conn.send_payload(_ack_for(msg_id, kind, name, done.result()))


_RESUMED_FIELDS = ("recovered", "reason", "offset", "epoch", "members")


def _settle_with(fut: asyncio.Future[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    def settle(payload: dict[str, Any]) -> None:
        if not fut.done():
            fut.set_result(payload)

    return settle


def _ack(msg: Message, kind: str, name: str, published: Published | None) -> Payload:
    return _ack_for(msg.id, kind, name, published)


def _ack_for(msg_id: Any, kind: str, name: str, published: Published | None) -> Payload:
    """``{"type": "ack", "id": ..., "room"|"to": ..., "payload": {"offset", "epoch"}}``."""
    out: dict[str, Any] = {"type": MessageType.ACK.value, "id": msg_id}
    out["room" if kind == ROOM else "to"] = name
    if published is not None:
        body: dict[str, Any] = {"offset": published.offset, "epoch": published.epoch}
        if published.duplicate:
            body["duplicate"] = True
        out["payload"] = body
    return Payload(KIND_TEXT, encode(out))


def _unknown_user(to: str) -> EnvelopeError:
    return EnvelopeError(ErrorCode.UNKNOWN_USER, f"user {to!r} is not connected")
