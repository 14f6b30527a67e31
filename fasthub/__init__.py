"""fasthub: a real-time WebSocket hub with a compiled hot path.

Rooms, user-to-user messages and broadcasts over a typed JSON envelope, served as a raw ASGI
app (``create_app``) on any ASGI server, inside Starlette/FastAPI, or with ``fasthub serve``.
"""

from __future__ import annotations

from . import _core, _ext
from .config import HubConfig
from .connection import Connection
from .exceptions import ConnectionClosed, Denied, EnvelopeError, FasthubError, HubError
from .hub import Hub
from .messages import ErrorCode, Message, MessageType
from .room import Room
from .server.asgi import FasthubApp, create_app
from .server.run import run

__version__ = "0.1.0"

_ = _core  # imported for its side effect: it records which implementation is live


def compiled(detail: bool = False) -> bool | dict[str, bool]:
    """True when every hot-path module runs compiled; ``detail=True`` gives one flag per module."""
    from . import _wire  # noqa: F401  (records its modules in _ext.LIVE)

    if detail:
        return dict(_ext.LIVE)
    return bool(_ext.LIVE) and all(_ext.LIVE.values())


__all__ = [
    "Connection",
    "ConnectionClosed",
    "Denied",
    "EnvelopeError",
    "ErrorCode",
    "FasthubApp",
    "FasthubError",
    "Hub",
    "HubConfig",
    "HubError",
    "Message",
    "MessageType",
    "Room",
    "__version__",
    "compiled",
    "create_app",
    "run",
]
