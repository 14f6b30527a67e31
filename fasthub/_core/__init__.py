"""Hub core: connections, outbound queues, budgets, per-tick fan-out, rate limits (compiled, twins).

Each compiled module or its pure twin is chosen by ``fasthub._ext`` (the one place that reads
``FASTHUB_NO_EXTENSIONS`` and records ``LIVE``); outbox and conn load as one group because
``conn_c.Connection`` extends ``outbox_c.Outbox`` at C level: both compiled or both pure. mypy
sees the pure twins through the ``TYPE_CHECKING`` imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._ext import load, load_group

if TYPE_CHECKING:
    from . import conn_py as _conn
    from . import limits_py as _limits
    from . import outbox_py as _outbox
    from . import reactor_py as _reactor
    from . import relay_py as _relay
    from . import splice_py as _splice
    from . import streams_py as _streams
else:
    _outbox, _conn, _relay, _splice, _streams = load_group(
        [
            ("fasthub._core.outbox_c", "fasthub._core.outbox_py"),
            ("fasthub._core.conn_c", "fasthub._core.conn_py"),
            ("fasthub._core.relay_c", "fasthub._core.relay_py"),
            ("fasthub._core.splice_c", "fasthub._core.splice_py"),
            ("fasthub._core.streams_c", "fasthub._core.streams_py"),
        ]
    )
    _limits = load("fasthub._core.limits_c", "fasthub._core.limits_py")
    _reactor = load("fasthub._core.reactor_c", "fasthub._core.reactor_py")

KIND_TEXT = _outbox.KIND_TEXT
KIND_BINARY = _outbox.KIND_BINARY
KIND_CLOSE = _outbox.KIND_CLOSE
KIND_RAW = _outbox.KIND_RAW
KIND_PLAIN = _outbox.KIND_PLAIN
ENC_BITS = _outbox.ENC_BITS
ENC_MSGPACK = _outbox.ENC_MSGPACK
QUEUED = _outbox.QUEUED
DROPPED = _outbox.DROPPED
OVERFLOW = _outbox.OVERFLOW
CLOSED = _outbox.CLOSED
Payload = _outbox.Payload
Outbox = _outbox.Outbox
Fanout = _outbox.Fanout
FLUSH_BUCKETS: tuple[int, ...] = _outbox.FLUSH_BUCKETS
Connection = _conn.Connection
Relay = _relay.Relay
MemoryStream = _streams.MemoryStream
MemoryStreams = _streams.MemoryStreams
new_epoch = _streams.new_epoch
with_offset = _streams.with_offset
RELAY_NOT_HANDLED: int = _relay.NOT_HANDLED
RELAY_CONGESTED: int = _relay.CONGESTED
RELAY_FED: int = _relay.FED
RELAY_ACCOUNTED: int = _relay.ACCOUNTED
RELAY_REFUSED: int = _relay.REFUSED
RELAY_PAUSED: int = _relay.PAUSED
RateLimiter = _limits.RateLimiter
Reactor = _reactor.Reactor
SocketTransport = _reactor.SocketTransport
Splice = _splice.Splice

__all__ = [
    "CLOSED",
    "DROPPED",
    "ENC_BITS",
    "ENC_MSGPACK",
    "FLUSH_BUCKETS",
    "KIND_BINARY",
    "KIND_CLOSE",
    "KIND_PLAIN",
    "KIND_RAW",
    "KIND_TEXT",
    "OVERFLOW",
    "QUEUED",
    "RELAY_ACCOUNTED",
    "RELAY_CONGESTED",
    "RELAY_FED",
    "RELAY_NOT_HANDLED",
    "RELAY_PAUSED",
    "RELAY_REFUSED",
    "Connection",
    "Fanout",
    "MemoryStream",
    "MemoryStreams",
    "Outbox",
    "Payload",
    "RateLimiter",
    "Reactor",
    "Relay",
    "SocketTransport",
    "Splice",
    "new_epoch",
    "with_offset",
]
