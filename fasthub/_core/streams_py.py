"""The in-memory streams of ``LocalBroker``: offsets, epochs and bounded history per stream.

``fasthub.streams`` describes the model (centrifuge's stream position); this module is its
store, on the ingress path of every stored room message. Compiled as
``fasthub._core.streams_c`` with ``streams_c.pxd``; this file is also the pure twin.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from fasthub._core.positions import Position, Published, Recovery
from fasthub._core.tokens import TokenPool

if TYPE_CHECKING:
    from fasthub._wire import _nocython as cython
else:
    try:
        import cython
    except ImportError:  # pure-Python install: no Cython at run time
        from fasthub._wire import _nocython as cython

if cython.compiled:
    from fasthub._core.outbox_c import KIND_TEXT
else:
    from fasthub._core.outbox_py import KIND_TEXT, Payload


_NEVER = float("inf")


_epochs = TokenPool(6)


def new_epoch() -> str:
    """A fresh epoch: 8 URL-safe characters (48 random bits)."""
    return _epochs.next()


def with_offset(body: bytes, offset: int) -> bytes:
    """The encoded JSON object ``body`` with ``"offset": offset`` added as its last key."""
    if len(body) <= 2:  # b"{}"
        return b'{"offset":%d}' % offset
    return b'%s,"offset":%d}' % (body[: len(body) - 1], offset)


class MemoryStream:
    """One stream: its position and its last messages (offset, expiry, payload, idempotency key)."""

    __slots__ = ("answer", "entries", "epoch", "expires", "keys", "last_publish", "offset")

    def __init__(self, now: float, epoch: str) -> None:
        self.epoch = epoch
        self.offset = 0
        self.entries: deque[tuple[int, float, Payload, str | None]] = deque()
        self.keys: dict[str, int] | None = None  # idempotency key -> offset, while the entry is kept
        self.last_publish = now
        #: the offset the last store answered: the new message's, or a repeated key's first
        self.answer = 0
        #: when the oldest kept message expires (a store looks at nothing else while it is later)
        self.expires = _NEVER

    def prune(self, now: float, size: int) -> None:
        entries = self.entries
        while entries and (len(entries) > size or entries[0][1] <= now):
            _, _, _, key = entries.popleft()
            if key is not None and self.keys is not None:
                self.keys.pop(key, None)
        self.expires = entries[0][1] if entries else _NEVER


class MemoryStreams:
    """Every stream of one process, in memory.

    History is bounded per stream by count and age (the caller passes both per append, so rooms
    can differ); a stream with no message kept and none published for ``meta_ttl`` seconds is
    forgotten (its next message starts a new epoch).

    A stream that never had a message costs nothing: its position is offset 0 in this process's
    epoch, which its first message keeps (so every user and room does not need an object).
    A stream made again after being forgotten takes a random epoch of its own instead.
    """

    def __init__(self, meta_ttl: float = 86400.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.streams: dict[str, MemoryStream] = {}
        self.meta_ttl = meta_ttl
        self.clock = clock
        self.epoch = new_epoch()  # of every stream made for the first time in this process
        self.forgotten: set[str] = set()
        self.stored = 0  # messages appended, for stats

    def _stream(self, key: str, now: float) -> MemoryStream:
        stream = self.streams.get(key)
        if stream is None:
            if key in self.forgotten:
                self.forgotten.discard(key)
                epoch = new_epoch()
            else:
                epoch = self.epoch
            stream = self.streams[key] = MemoryStream(now, epoch)
        return stream

    def _position(self, key: str) -> Position:
        stream = self.streams.get(key)
        if stream is None and key not in self.forgotten:
            return Position(0, self.epoch)
        stream = self._stream(key, self.clock())
        return Position(stream.offset, stream.epoch)

    def append(
        self, key: str, body: bytes, size: int, ttl: float, idempotency_key: str | None = None
    ) -> tuple[Published, Payload | None]:
        """Store ``body`` (an encoded envelope without offset) as the stream's next message.

        Returns the position and the payload to deliver (with its offset), or the first
        publish's position and None for a repeated ``idempotency_key``.
        """
        stream = self.stream(key)
        if idempotency_key is not None and self.repeated(stream, idempotency_key):
            return Published(stream.answer, stream.epoch, duplicate=True), None
        payload = self.store_encoded(stream, with_offset(body, stream.offset + 1), size, ttl, idempotency_key)
        return Published(stream.answer, stream.epoch), payload

    def stream(self, key: str) -> MemoryStream:
        """The stream ``key``, made if need be (``repeated``'s and ``store_encoded``'s first argument)."""
        return self._stream(key, self.clock())

    def repeated(self, stream: MemoryStream, idempotency_key: str) -> bool:
        """Whether ``idempotency_key`` was stored and is still kept (``stream.answer``: its offset)."""
        keys = stream.keys
        if keys is not None:
            first = keys.get(idempotency_key)
            if first is not None:
                stream.answer = first
                return True
        return False

    def store_encoded(
        self, stream: MemoryStream, data: bytes, size: int, ttl: float, idempotency_key: str | None = None
    ) -> Payload:
        """Store ``data``, an envelope that already carries ``"offset": stream.offset + 1`` (the
        relay encodes it so, once), as the stream's next message."""
        now = self.clock()
        offset = stream.offset = stream.offset + 1
        stream.answer = offset
        stream.last_publish = now
        payload = Payload(KIND_TEXT, data)
        stream.entries.append((offset, now + ttl, payload, idempotency_key))
        if idempotency_key is not None:
            if stream.keys is None:
                stream.keys = {}
            stream.keys[idempotency_key] = offset
        if len(stream.entries) > size or stream.expires <= now:
            stream.prune(now, size)
        elif stream.expires == _NEVER:
            stream.expires = now + ttl
        self.stored += 1
        return payload

    def top(self, key: str) -> Position:
        """The stream's position now."""
        return self._position(key)

    def read(self, key: str, since: Position, limit: int, size: int) -> Recovery:
        """The messages after ``since``, if the history still holds all of them and there are
        at most ``limit``."""
        now = self.clock()
        stream = self.streams.get(key)
        if stream is None:
            position = self._position(key)
            stream = self.streams.get(key)
        if stream is not None:
            stream.prune(now, size)
            position = Position(stream.offset, stream.epoch)
        if since.epoch != position.epoch:
            return Recovery(position, False, [], "epoch")
        if since.offset > position.offset:
            return Recovery(position, False, [], "offset")
        missed = position.offset - since.offset
        if missed == 0:
            return Recovery(position, True, [])
        if missed > limit:
            return Recovery(position, False, [], "limit")
        assert stream is not None  # missed > 0: it has had messages
        entries = stream.entries
        if not entries or entries[0][0] > since.offset + 1:
            return Recovery(position, False, [], "expired")
        first = entries[0][0]
        start = since.offset + 1 - first  # offsets in the deque are contiguous
        payloads = [(entries[i][0], entries[i][2]) for i in range(start, len(entries))]
        return Recovery(position, True, payloads)

    def sweep(self) -> None:
        """Drop expired messages everywhere and forget streams idle for ``meta_ttl``."""
        now = self.clock()
        idle = []
        for key, stream in self.streams.items():
            entries = stream.entries
            stream.prune(now, len(entries))  # by age only
            if not entries and now - stream.last_publish > self.meta_ttl:
                idle.append(key)
        for key in idle:
            del self.streams[key]
        if idle:
            if len(self.forgotten) + len(idle) > 100_000:  # bounded: start a new process epoch
                self.forgotten.clear()
                self.epoch = new_epoch()
            self.forgotten.update(idle)

    def stats(self) -> dict[str, int]:
        kept = 0
        for stream in self.streams.values():
            kept += len(stream.entries)
        return {"streams": len(self.streams), "messages_kept": kept, "messages_stored": self.stored}
