"""Exceptions of the wire engine.

::

    WireError
    ├── ProtocolError   the peer broke RFC 6455; carries the close code that answers it
    └── InvalidState    misuse by our side, e.g. sending data after a close frame

The engine never raises ``ProtocolError``: it records it in ``ServerProtocol.exc``, queues a close
frame with ``code`` and stops reading ("errors are state in the engine"). ``InvalidState`` is
raised, and subclasses ``AssertionError`` as in websockets, because it is a bug in the caller.
"""

from __future__ import annotations


class WireError(Exception):
    """Base class of the engine's exceptions."""


class ProtocolError(WireError):
    """The peer violated the protocol; ``code`` is the close code sent in reply (1002, 1007, 1009)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


class InvalidState(WireError, AssertionError):
    """An operation is not allowed in the connection's current state."""


class HandshakeError(WireError):
    """An upgrade request that cannot be accepted; ``status`` is the HTTP answer (400 or 426)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
