"""Hub core: connections, outbound queues, budgets, per-tick fan-out, rate limits (compiled, twins).

Picks each compiled module or its pure twin like aiohttp's ``_websocket/reader.py``:
``FASTHUB_NO_EXTENSIONS=1`` (or type checking) takes the twin, otherwise the compiled module is
tried and a missing build falls back to the twin; ``fasthub._ext.LIVE`` records each choice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._ext import LIVE, NO_EXTENSIONS

if TYPE_CHECKING or NO_EXTENSIONS:
    from . import conn_py as _conn
    from . import limits_py as _limits
    from . import outbox_py as _outbox

    LIVE["fasthub._core.outbox_c"] = LIVE["fasthub._core.conn_c"] = LIVE["fasthub._core.limits_c"] = False
else:
    # Connection extends Outbox at C level: both compiled or both pure, never one of each
    try:
        from . import conn_c as _conn
        from . import outbox_c as _outbox
    except ImportError:  # no build: the pure twins
        from . import conn_py as _conn
        from . import outbox_py as _outbox
    try:
        from . import limits_c as _limits
    except ImportError:
        from . import limits_py as _limits
    LIVE["fasthub._core.outbox_c"] = _outbox.__name__.endswith("_c")
    LIVE["fasthub._core.conn_c"] = _conn.__name__.endswith("_c")
    LIVE["fasthub._core.limits_c"] = _limits.__name__.endswith("_c")

KIND_TEXT = _outbox.KIND_TEXT
KIND_BINARY = _outbox.KIND_BINARY
KIND_CLOSE = _outbox.KIND_CLOSE
KIND_RAW = _outbox.KIND_RAW
QUEUED = _outbox.QUEUED
DROPPED = _outbox.DROPPED
OVERFLOW = _outbox.OVERFLOW
CLOSED = _outbox.CLOSED
Payload = _outbox.Payload
Outbox = _outbox.Outbox
Fanout = _outbox.Fanout
Connection = _conn.Connection
RateLimiter = _limits.RateLimiter

__all__ = [
    "CLOSED",
    "DROPPED",
    "KIND_BINARY",
    "KIND_CLOSE",
    "KIND_RAW",
    "KIND_TEXT",
    "OVERFLOW",
    "QUEUED",
    "Connection",
    "Fanout",
    "Outbox",
    "Payload",
    "RateLimiter",
]
