"""Streams: the offset, epoch and bounded history of every room and user (the in-memory store).

A stored message gets the next ``offset`` of its stream (a room's, or a user's for direct
messages); the stream's ``epoch`` is a random string that changes whenever its history is lost
(a restart of this process, an expired or flushed Redis stream), so a client's position
``(offset, epoch)`` either still names a point in the history or is known not to. Modelled on
centrifuge's stream position (``StreamPosition``) and its memory engine.

Messages are stored encoded *without* their offset; ``with_offset`` splices it in, so the bytes
a client gets live and the bytes it gets on recovery are the same. ``MemoryStreams`` is the
store of ``LocalBroker`` (compiled: ``fasthub._core.streams_c``, on every stored room message's
path); ``RedisBroker`` keeps the same thing in Redis Streams.
"""

from __future__ import annotations

from ._core import MemoryStream, MemoryStreams, new_epoch, with_offset
from ._core.positions import Position, Published, Recovery

#: stream kinds: a room's messages, a user's direct messages
ROOM = "r"
USER = "u"

__all__ = [
    "ROOM",
    "USER",
    "MemoryStream",
    "MemoryStreams",
    "Position",
    "Published",
    "Recovery",
    "new_epoch",
    "with_offset",
]
