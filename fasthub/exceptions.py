"""Exceptions of fasthub.

::

    FasthubError
    ├── EnvelopeError        a client message was refused (carries the error code sent back)
    ├── HubError             misuse of the hub API (unknown connection, invalid room name, ...)
    ├── ConnectionClosed     sending to a connection that is closed
    └── Denied               an authenticate hook refuses a connection (HTTP status)
"""

from __future__ import annotations

from typing import Any


class FasthubError(Exception):
    """Base class of every fasthub exception."""


class EnvelopeError(FasthubError):
    """A client message that is refused; ``code`` is the ``error`` envelope's code."""

    def __init__(self, code: str, message: str, msg_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.msg_id = msg_id


class HubError(FasthubError, ValueError):
    """An API call the hub cannot carry out (unknown connection, bad room name, ...)."""


class ConnectionClosed(FasthubError):
    """The connection is closed (or closing) and takes no more messages."""


class Denied(FasthubError):
    """Raised by an ``authenticate`` hook to refuse a connection before the upgrade.

    The client gets an HTTP response with ``status`` (401 for a missing or bad credential, 403
    for a valid one that is refused) where the server supports the ASGI denial extension, and a
    close before accept (which servers answer with 403) elsewhere.
    """

    def __init__(self, status: int = 403, reason: str = "forbidden") -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
