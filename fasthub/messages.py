"""The JSON envelope ``{type, payload, room, to, from, timestamp, metadata, id}``.

Decoding validates what the hub relies on and turns every problem into an ``EnvelopeError``
with a stable code, so a client always gets an ``error`` envelope naming what was wrong and the
offending message's ``id``. Encoding is orjson; absent fields are omitted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
import ormsgpack

from .exceptions import EnvelopeError


class MessageType(StrEnum):
    PING = "ping"
    PONG = "pong"
    MESSAGE = "message"
    BROADCAST = "broadcast"
    JOIN_ROOM = "join_room"
    LEAVE_ROOM = "leave_room"
    ROOM_MESSAGE = "room_message"
    USER_MESSAGE = "user_message"
    NOTIFICATION = "notification"
    ERROR = "error"
    SYSTEM = "system"
    REFRESH = "refresh"  # a fresh token before the connection's one expires
    ACK = "ack"  # a client message with an ``id`` was accepted (payload: its stream offset)
    RESUME = "resume"  # a reconnected client takes its session back (payload: token, positions)
    PRESENCE = "presence"  # who is in a room: asked with ``room``, answered with the same type
    PRESENCE_STATS = "presence_stats"  # a room's user and connection counts, asked and answered
    TYPING = "typing"  # a member is typing: relayed to the room's other members, never stored


class ErrorCode(StrEnum):
    """Codes of ``error`` envelopes (``payload.code``)."""

    INVALID_JSON = "invalid_json"  # not JSON, or not UTF-8
    INVALID_MESSAGE = "invalid_message"  # JSON but not an object, or a field of the wrong type
    UNKNOWN_TYPE = "unknown_type"  # ``type`` missing or not one of MessageType
    MISSING_FIELD = "missing_field"  # ``room`` or ``to`` missing for a type that needs it
    INVALID_ROOM = "invalid_room"  # room name too long or with forbidden characters
    NOT_MEMBER = "not_member"  # room_message or typing to a room the sender is not in
    UNKNOWN_USER = "unknown_user"  # user_message to a user with no live connection
    UNSUPPORTED_DATA = "unsupported_data"  # a binary frame (the protocol is JSON text)
    UNHANDLED = "unhandled"  # a type with no built-in meaning and no on_message handler
    FORBIDDEN = "forbidden"  # refused by an access hook (can_join, can_publish, ...)
    TOO_MANY_ROOMS = "too_many_rooms"  # over HubConfig.max_rooms_per_connection
    INTERNAL_ERROR = "internal_error"  # the application's handler raised
    RATE_LIMITED = "rate_limited"  # over the connection's message or byte rate
    INVALID_TOKEN = "invalid_token"  # a refresh token that does not verify
    TOO_LARGE = "too_large"  # metadata over HubConfig.max_metadata_bytes
    UNAVAILABLE = "unavailable"  # the broker could not store or deliver the message (try again)
    INVALID_SESSION = "invalid_session"  # a resume token that is forged, expired or another user's


MESSAGE_TYPES: frozenset[str] = frozenset(t.value for t in MessageType)
# plain strings for the envelopes every connect and join sends (an enum member's ``.value`` is
# a descriptor call)
_SYSTEM: str = MessageType.SYSTEM.value
_ERROR: str = MessageType.ERROR.value
_ID_TYPES = (str, int)
_MAX_ID_LENGTH = 128


_stamp_ms = -1
_stamp = ""
_stamp_sec = -1
_stamp_prefix = ""


def utc_timestamp() -> str:
    """RFC 3339 UTC time with milliseconds, e.g. ``2026-11-26T12:00:00.123Z``.

    On the ingress path every relayed message needs one: the formatted second is cached, and
    the whole string per millisecond (``strftime`` cost more than the rest of a relay).
    """
    global _stamp_ms, _stamp, _stamp_sec, _stamp_prefix
    ms = int(time.time() * 1000)
    if ms != _stamp_ms:
        sec = ms // 1000
        if sec != _stamp_sec:
            _stamp_sec = sec
            _stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _stamp_ms = ms
        _stamp = f"{_stamp_prefix}.{ms % 1000:03d}Z"
    return _stamp


@dataclass(slots=True)
class Message:
    """A decoded envelope. ``from_`` is spelled with an underscore in Python only."""

    type: str
    payload: Any = None
    room: str | None = None
    to: str | None = None
    from_: str | None = None
    timestamp: str | None = None
    metadata: dict[str, Any] | None = None
    id: str | int | None = None
    #: join_room: the client's position in the room's stream, ``(offset, epoch)``
    since: tuple[int, str] | None = None
    #: a publish retried with the same key within the history window is stored once
    idempotency_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The envelope as it goes on the wire (absent fields omitted)."""
        out: dict[str, Any] = {"type": self.type}
        if self.payload is not None:
            out["payload"] = self.payload
        if self.room is not None:
            out["room"] = self.room
        if self.to is not None:
            out["to"] = self.to
        if self.from_ is not None:
            out["from"] = self.from_
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp
        if self.metadata is not None:
            out["metadata"] = self.metadata
        if self.id is not None:
            out["id"] = self.id
        return out


#: an envelope with no other keys than these: a join, leave, ping or presence question
_PLAIN_KEYS = frozenset({"type", "room", "id"})


def _plain(obj: dict[str, Any]) -> Message | None:
    """The ``Message`` of a valid envelope of only ``type``, ``room`` and ``id`` (all scalars,
    so nothing nests), or None for ``decode``'s full checks and their error messages."""
    mtype = obj.get("type")
    room = obj.get("room")
    msg_id = obj.get("id")
    if (
        mtype.__class__ is str
        and mtype in MESSAGE_TYPES
        and (room is None or room.__class__ is str)
        and (msg_id is None or msg_id.__class__ is int or (msg_id.__class__ is str and len(msg_id) <= _MAX_ID_LENGTH))
    ):
        return Message(mtype, None, room, None, None, None, None, msg_id)
    return None


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True when containers nest deeper than ``limit`` (the envelope object is level 1)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def decode(data: bytes | str, max_depth: int = 32, max_metadata_bytes: int = 0) -> Message:
    """Parse and validate one client envelope; raise ``EnvelopeError`` when it is refused."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(ErrorCode.INVALID_JSON, f"message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise EnvelopeError(ErrorCode.INVALID_MESSAGE, "message must be a JSON object")
    if obj.keys() <= _PLAIN_KEYS:
        plain = _plain(obj)
        if plain is not None:
            return plain
    msg_id = obj.get("id")
    if msg_id is not None and (
        not isinstance(msg_id, _ID_TYPES)
        or isinstance(msg_id, bool)
        or (isinstance(msg_id, str) and len(msg_id) > _MAX_ID_LENGTH)
    ):
        raise EnvelopeError(ErrorCode.INVALID_MESSAGE, f"id must be a string (<= {_MAX_ID_LENGTH}) or integer")
    # Counting brackets is a C-speed filter; only suspicious messages are walked.
    if isinstance(data, bytes):
        brackets = data.count(b"{") + data.count(b"[")
    else:
        brackets = data.count("{") + data.count("[")
    if brackets > max_depth and _depth_exceeds(obj, max_depth):
        raise EnvelopeError(ErrorCode.INVALID_MESSAGE, f"message nests deeper than {max_depth}", msg_id)
    mtype = obj.get("type")
    if not isinstance(mtype, str) or mtype not in MESSAGE_TYPES:
        raise EnvelopeError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {mtype!r}"[:200], msg_id)
    room = obj.get("room")
    if room is not None and not isinstance(room, str):
        raise EnvelopeError(ErrorCode.INVALID_MESSAGE, "room must be a string", msg_id)
    to = obj.get("to")
    if to is not None:
        if isinstance(to, bool) or not isinstance(to, _ID_TYPES):
            raise EnvelopeError(ErrorCode.INVALID_MESSAGE, "to must be a user id (string or integer)", msg_id)
        to = str(to)
    metadata = obj.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise EnvelopeError(ErrorCode.INVALID_MESSAGE, "metadata must be an object", msg_id)
        if max_metadata_bytes and len(orjson.dumps(metadata)) > max_metadata_bytes:
            raise EnvelopeError(ErrorCode.TOO_LARGE, f"metadata is over {max_metadata_bytes} bytes", msg_id)
    timestamp = obj.get("timestamp")
    if timestamp is not None and not isinstance(timestamp, str):
        raise EnvelopeError(ErrorCode.INVALID_MESSAGE, "timestamp must be a string", msg_id)
    since = obj.get("since")
    if since is not None:
        since = position(since, msg_id)
    ikey = obj.get("idempotency_key")
    if ikey is not None and (not isinstance(ikey, str) or not 0 < len(ikey) <= _MAX_ID_LENGTH):
        text = f"idempotency_key must be a string of 1-{_MAX_ID_LENGTH} characters"
        raise EnvelopeError(ErrorCode.INVALID_MESSAGE, text, msg_id)
    return Message(
        type=mtype,
        payload=obj.get("payload"),
        room=room,
        to=to,
        timestamp=timestamp,
        metadata=metadata,
        id=msg_id,
        since=since,
        idempotency_key=ikey,
    )


def unpack(data: bytes) -> Any:
    """One MessagePack value (``fasthub.msgpack`` connections); ``EnvelopeError`` when it is not."""
    try:
        return ormsgpack.unpackb(data)
    except (ValueError, TypeError) as exc:
        raise EnvelopeError(ErrorCode.INVALID_MESSAGE, f"message is not valid MessagePack: {exc}"[:200]) from None


def decode_value(obj: Any, max_depth: int = 32, max_metadata_bytes: int = 0) -> Message:
    """Validate an envelope decoded from MessagePack as ``decode`` validates JSON.

    It goes through JSON once: the envelope is relayed and stored as JSON, so anything JSON
    cannot carry (keys that are not strings, ``bin`` or ``ext`` values) is refused here, with
    the same checks and errors as a JSON client gets.
    """
    if not isinstance(obj, dict):
        raise EnvelopeError(ErrorCode.INVALID_MESSAGE, "message must be a MessagePack map")
    try:
        text = orjson.dumps(obj)
    except TypeError as exc:
        reason = f"message holds a value JSON cannot carry: {exc}"[:200]
        raise EnvelopeError(ErrorCode.INVALID_MESSAGE, reason) from None
    return decode(text, max_depth, max_metadata_bytes)


def position(value: Any, msg_id: Any = None) -> tuple[int, str]:
    """A client's stream position ``{"offset": N, "epoch": "E"}``."""
    if isinstance(value, dict):
        offset = value.get("offset")
        epoch = value.get("epoch")
        if (
            isinstance(offset, int)
            and not isinstance(offset, bool)
            and offset >= 0
            and isinstance(epoch, str)
            and len(epoch) <= _MAX_ID_LENGTH
        ):
            return offset, epoch
    raise EnvelopeError(ErrorCode.INVALID_MESSAGE, 'a position is {"offset": integer >= 0, "epoch": string}', msg_id)


def encode(obj: Any) -> bytes:
    """Serialize once with orjson (str keys; datetimes and dataclasses as orjson does)."""
    return orjson.dumps(obj)


def system_envelope(payload: dict[str, Any], room: str | None = None, reply_id: Any = None) -> dict[str, Any]:
    """A ``system`` envelope (joined, left, user_joined, connected, token_refreshed, ...)."""
    out: dict[str, Any] = {"type": _SYSTEM, "payload": payload, "timestamp": utc_timestamp()}
    if room is not None:
        out["room"] = room
    if reply_id is not None:
        out["id"] = reply_id
    return out


def error_envelope(code: str, message: str, msg_id: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": _ERROR,
        "payload": {"code": str(code), "message": message},
        "timestamp": utc_timestamp(),
    }
    if msg_id is not None:
        out["id"] = msg_id
    return out
