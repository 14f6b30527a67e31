"""Hub core: outbound queues, budgets and per-tick fan-out (compiled, with a pure twin)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._ext import LIVE, NO_EXTENSIONS

if TYPE_CHECKING or NO_EXTENSIONS:
    from .limits_py import RateLimiter
    from .outbox_py import (
        CLOSED,
        DROPPED,
        KIND_BINARY,
        KIND_CLOSE,
        KIND_TEXT,
        OVERFLOW,
        QUEUED,
        Fanout,
        Outbox,
        Payload,
    )

    LIVE["fasthub._core.outbox_c"] = False
    LIVE["fasthub._core.limits_c"] = False
else:
    try:
        from .outbox_c import (
            CLOSED,
            DROPPED,
            KIND_BINARY,
            KIND_CLOSE,
            KIND_TEXT,
            OVERFLOW,
            QUEUED,
            Fanout,
            Outbox,
            Payload,
        )

        LIVE["fasthub._core.outbox_c"] = True
    except ImportError:  # no build: the pure twin
        from .outbox_py import (
            CLOSED,
            DROPPED,
            KIND_BINARY,
            KIND_CLOSE,
            KIND_TEXT,
            OVERFLOW,
            QUEUED,
            Fanout,
            Outbox,
            Payload,
        )

        LIVE["fasthub._core.outbox_c"] = False
    try:
        from .limits_c import RateLimiter

        LIVE["fasthub._core.limits_c"] = True
    except ImportError:  # no build: the pure twin
        from .limits_py import RateLimiter

        LIVE["fasthub._core.limits_c"] = False

__all__ = [
    "CLOSED",
    "DROPPED",
    "KIND_BINARY",
    "KIND_CLOSE",
    "KIND_TEXT",
    "OVERFLOW",
    "QUEUED",
    "Fanout",
    "Outbox",
    "Payload",
    "RateLimiter",
]
