"""Relay: the common room message, from its bytes to every member, in one compiled call.

Most of what a hub receives is ``{"type": "room_message", "room": R, "payload": ...}`` (maybe
with an ``id`` and an ``idempotency_key``, as fasthub.js sends) from a member of R. The full
pipeline builds a ``Message``, walks the dispatcher's layers, then builds the envelope again;
``Relay.room_message`` takes that one shape from its bytes to the stored, framed payload
instead, the delivered envelope spliced around the sender's payload bytes (``Splice``: no
Python object of the payload is built; ``docs/design-notes.md``, "Ingress"). Anything else
(another type or key, a room it is not a member of, nesting over the limit, bad JSON) is
answered ``NOT_HANDLED`` before anything happened, and the full pipeline takes it with its
errors; a plain ``join_room`` (only ``type``, ``room``, ``id``) is handed to ``join`` (the
dispatcher's, when set) without being decoded again.

Compiled as ``fasthub._core.relay_c`` with ``relay_c.pxd``; this file is also the pure twin.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from time import time as _time
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from fasthub._wire import _nocython as cython
else:
    try:
        import cython
    except ImportError:  # pure-Python install: no Cython at run time
        from fasthub._wire import _nocython as cython

if cython.compiled:
    from fasthub._core.outbox_c import KIND_TEXT
    from fasthub._core.splice_c import Splice
else:
    from fasthub._core.conn_py import Connection
    from fasthub._core.outbox_py import KIND_TEXT, Fanout, Payload
    from fasthub._core.splice_py import Splice
    from fasthub._core.streams_py import MemoryStreams

#: ``room_message``'s answers: not this shape (take the full pipeline), done, done and the
#: room is congested (stop reading the publisher a moment: ``dispatch.PAUSE``)
NOT_HANDLED = -1
DONE = 0
CONGESTED = 1

#: ``feed``'s ``status``: how far it got with ``events[i]``, the event it stopped at (see there)
FED = 0
UNTOUCHED = 1
ACCOUNTED = 2
REFUSED = 3
PAUSED = 4

_OP_TEXT = 1

_UNKNOWN = object()
_MAX_ID_LENGTH = 128  # messages._MAX_ID_LENGTH


class Relay:
    """One per dispatcher: what a room message needs, looked up once.

    ``publish(name, body, idempotency_key)`` stores and delivers (``Hub.publish_stored`` for
    rooms); ``pending(conn, msg_id, name, answer)`` takes an answer that comes later (a
    broker's awaitable); ``stamp()`` is the envelope's timestamp; ``congested(name)`` is
    ``Hub.room_congested``.

    With the in-process broker, ``local(streams, history_for, fanout, deliver_room, overflowed)``
    lets the relay do ``LocalBroker.publish_stream``'s two steps itself: store in ``streams``,
    then push to the members through ``fanout`` (``Hub.deliver_room`` for anything but the
    next message of a room in step; ``overflowed`` closes slow consumers, as the hub does).
    """

    def __init__(
        self,
        rooms: Mapping[str, Any],
        publish: Callable[[str, bytes, str | None], Any],
        pending: Callable[[Any, Any, str, Any], None],
        stamp: Callable[[], str],
        congested: Callable[[str], bool],
        published_type: type,
        max_depth: int,
    ) -> None:
        self.rooms = rooms
        self.publish = publish
        self.pending = pending
        self.stamp = stamp
        self.congested = congested
        self.published_type = published_type
        self.max_depth = max_depth
        self.relayed = 0
        # set by ``local``; read only while ``streams`` is set
        self.streams: MemoryStreams | None = None
        self.history_for: Callable[[str], tuple[int, float] | None] = _unset
        self.deliver_room: Callable[..., int] = _unset
        self.overflowed: Callable[[list[Any]], None] = _unset
        self.fanout: Fanout | None = None
        self.stamp_ms = 0
        # ``feed``: Dispatcher.receive's limits and counters (``limits``), and its answers
        self.max_size = 0
        self.limited = False
        self.rate = 0.0
        self.byte_rate = 0.0
        self.count: Callable[[int, int], None] = _unset
        self.status = FED
        self.wait = 0.0
        self.histories: dict[str, tuple[int, float] | None] = {}  # room -> history_for(room)
        self.stamp_json = b""  # the timestamp of stamp_ms, encoded
        self.splice = Splice()
        self.sender_id: Any = _UNKNOWN  # the last sender's user id, and it encoded
        self.sender = b""
        # ``join(conn, room, msg_id)`` for a plain ``join_room`` (``joins``); None: not taken
        self.join: Callable[[Any, str, Any], None] | None = None
        # ``feed``: the read held one message alone (so no burst waits behind it to be joined)
        self.lone = False

    def local(
        self,
        streams: MemoryStreams,
        history_for: Callable[[str], tuple[int, float] | None],
        fanout: Fanout,
        deliver_room: Callable[..., int],
        overflowed: Callable[[list[Any]], None],
    ) -> None:
        self.streams = streams
        self.history_for = history_for
        self.fanout = fanout
        self.deliver_room = deliver_room
        self.overflowed = overflowed

    def joins(self, join: Callable[[Any, str, Any], None]) -> None:
        """Take plain joins too (only ``type``, ``room`` and ``id``): ``join(conn, room, msg_id)``
        does what the dispatcher does with one, without decoding it again."""
        self.join = join

    def limits(
        self, max_size: int, limited: bool, rate: float, byte_rate: float, count: Callable[[int, int], None]
    ) -> None:
        """What ``feed`` checks as ``Dispatcher.receive`` does, and ``count(bytes_in, messages_in)``
        to add its counts to the hub's, once per ``feed``."""
        self.max_size = max_size
        self.limited = limited
        self.rate = rate
        self.byte_rate = byte_rate
        self.count = count

    def feed(self, conn: Connection, events: list[tuple[int, Any]], stop: int, now: float) -> int:
        """``Dispatcher.receive`` for ``events[:stop]`` (one read's ``(opcode, data)``) while each is
        a text message the relay takes; returns the index ``i`` of the first it did not finish,
        and ``status`` says what became of ``events[i]``:

        - ``FED``: ``i == stop``, all of them done;
        - ``UNTOUCHED``: not a text message, or over ``max_size``: ``receive`` it as usual;
        - ``ACCOUNTED``: counted and its rate-limit tokens spent, not a shape the relay takes:
          ``Dispatcher.decoded`` it;
        - ``REFUSED``: the rate limit refused it (``wait``: seconds until the next may pass);
        - ``PAUSED``: relayed, and its room is congested: pause before the next.
        """
        i = 0
        n_bytes = 0
        n_msgs = 0
        status = FED
        self.lone = stop == 1
        try:  # a handler that raises (a join's) still leaves the read's counts behind
            while i < stop:
                event = events[i]
                if event[0] != _OP_TEXT:
                    status = UNTOUCHED
                    break
                data: bytes = event[1]
                n = len(data)
                if n > self.max_size:
                    status = UNTOUCHED
                    break
                n_bytes += n
                if conn.closing:  # the rest of a closing connection's read is dropped, as receive does
                    i += 1
                    continue
                if self.limited:
                    wait = conn.spend(now, n, self.rate, self.byte_rate)
                    if wait:
                        self.wait = wait
                        status = REFUSED
                        break
                n_msgs += 1
                done = self.room_message(conn, data)
                if done == NOT_HANDLED:
                    status = ACCOUNTED
                    break
                if done == CONGESTED:
                    status = PAUSED
                    break
                i += 1
        finally:
            self.status = status
            self.lone = False  # for this read only (room_message has other callers)
            if n_bytes:
                self.count(n_bytes, n_msgs)
        return i

    def room_message(self, conn: Connection, data: bytes) -> int:
        """Relay ``data`` (a text message's UTF-8 bytes) if it is a member's plain room message;
        hand a plain join to ``join``."""
        splice = self.splice
        if not splice.scan(data, self.max_depth):
            return NOT_HANDLED
        name = splice.room
        msg_id: Any = None
        if splice.id_end:
            msg_id = orjson.loads(data[splice.id_start : splice.id_end])
            if not ((type(msg_id) is str and len(msg_id) <= _MAX_ID_LENGTH) or type(msg_id) is int):
                return NOT_HANDLED
        if splice.join:
            if self.join is None:
                return NOT_HANDLED
            self.join(conn, name, msg_id)
            return DONE
        ikey: Any = None
        if splice.key_end:
            ikey = orjson.loads(data[splice.key_start : splice.key_end])
            if type(ikey) is not str or not 0 < len(ikey) <= _MAX_ID_LENGTH:
                return NOT_HANDLED
        room = self.rooms.get(name)
        if room is None or conn.id not in room.member_map:
            return NOT_HANDLED
        syncing = room.syncing
        if syncing and conn.id in syncing:  # its join may still be reading history: the pipeline waits
            return NOT_HANDLED
        # the envelope as Message.to_dict writes it (type, payload, room, from, timestamp, id),
        # then the stream's offset as streams.with_offset adds it: spliced around the payload
        user = conn.user_id
        if user is not self.sender_id:
            self.sender_id = user
            self.sender = orjson.dumps(user)
        ms = int(_time() * 1000.0)
        if ms != self.stamp_ms:  # the same string within a millisecond
            self.stamp_ms = ms
            self.stamp_json = orjson.dumps(self.stamp())
        streams = self.streams
        if streams is None:
            answer = self.publish(name, splice.build(data, self.sender, self.stamp_json, -1), ikey)
        else:  # LocalBroker.publish_stream, inline
            fanout = self.fanout
            assert fanout is not None  # set with streams
            # alone after a quiet moment: written at once, the sender's copy first (``_push``)
            first = conn if self.lone and fanout.quiet() else None
            if first is None and not conn.scheduled:
                # the sender's copy leaves first: a publisher that waits for its own message
                # (or its ack) sends the next one while the others are still being written
                fanout.mark(conn)
            history: Any = self.histories.get(name, _UNKNOWN)
            if history is _UNKNOWN:
                history = self.history_for(name)
                if len(self.histories) >= 10_000:  # bounded: room names come from clients
                    self.histories.clear()
                self.histories[name] = history
            if history is None:
                body = splice.build(data, self.sender, self.stamp_json, -1)
                answer = self._push(room, Payload(KIND_TEXT, body), first)
            else:
                stream = streams.stream("r:" + name)
                stored = None
                if ikey is None or not streams.repeated(stream, ikey):
                    body = splice.build(data, self.sender, self.stamp_json, stream.offset + 1)
                    stored = streams.store_encoded(stream, body, history[0], history[1], ikey)
                    self._deliver(room, name, stored, stream.answer, stream.epoch, first)
                if msg_id is None:
                    answer = None
                else:
                    answer = self.published_type(stream.answer, stream.epoch, stored is None)
        self.relayed += 1
        if msg_id is not None:
            if type(answer) is int:  # sent, not stored (no history): an ack without position
                conn.send_payload(Payload(KIND_TEXT, orjson.dumps({"type": "ack", "id": msg_id, "room": name})))
            elif type(answer) is self.published_type:
                conn.send_payload(ack(msg_id, name, answer))
            else:
                self.pending(conn, msg_id, name, answer)
        elif answer is not None and type(answer) is not int and type(answer) is not self.published_type:
            self.pending(conn, msg_id, name, answer)  # stored later: errors are only logged
        if room.congested and self.congested(name):
            return CONGESTED
        return DONE


    def _deliver(self, room: Any, name: str, payload: Payload, offset: int, epoch: str, first: Any) -> int:
        """``Hub.deliver_room`` for the next message of a room in step (the common case); any
        other case (a new epoch, a gap, members still reading history) is the hub's."""
        last_epoch = room.epoch
        if room.syncing is not None or (
            last_epoch is not None and (last_epoch != epoch or (room.offset and offset > room.offset + 1))
        ):
            if first is not None and not first.scheduled:  # the hub queues it: the sender's copy first still
                self.fanout.mark(first)  # type: ignore[union-attr]
            return int(self.deliver_room(name, payload, None, offset, epoch))
        room.offset = offset
        room.epoch = epoch
        return self._push(room, payload, first)

    def _push(self, room: Any, payload: Payload, first: Any) -> int:
        """``Hub._deliver`` to the room's members, with the room's congestion flag."""
        members: dict[str, Any] = room.member_map
        if not members:
            return 0
        fanout = self.fanout
        assert fanout is not None  # set with streams
        before = fanout.congested
        if first is None:
            count, overflow = fanout.push_many(members, payload, None)
        else:
            count, overflow = fanout.send_many(room.connections(), payload, first)
        if overflow:
            self.overflowed(overflow)
        room.congested = fanout.congested != before
        return int(count)


def _unset(*args: Any) -> Any:
    raise RuntimeError("Relay.local was not called")


def ack(msg_id: Any, name: str, published: Any) -> Payload:
    """``{"type": "ack", "id": ..., "room": ..., "payload": {"offset", "epoch"[, "duplicate"]}}``."""
    body: dict[str, Any] = {"offset": published.offset, "epoch": published.epoch}
    if published.duplicate:
        body["duplicate"] = True
    return Payload(KIND_TEXT, orjson.dumps({"type": "ack", "id": msg_id, "room": name, "payload": body}))
