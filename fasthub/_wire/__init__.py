"""RFC 6455 engine, sans-I/O: bytes in -> events out, calls in -> bytes out.

Nothing here knows asyncio, sockets or the hub. The hot modules exist twice: a compiled one
(``*_c``) and its pure-Python twin (``*_py``) with identical behaviour, proved by the agreement
tests. Each pair is chosen by ``fasthub._ext.load``, the one place that reads
``FASTHUB_NO_EXTENSIONS`` (so build and run time agree) and records the choice in ``LIVE``;
mypy sees the pure twins through the ``TYPE_CHECKING`` imports.
Tests import both twins directly (``fasthub._wire.protocol_py`` / ``protocol_c``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._ext import load
from .codes import (
    CLOSED,
    CLOSING,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    OPEN,
    CloseCode,
)
from .exceptions import HandshakeError, InvalidState, ProtocolError, WireError

#: (opcode, data) as returned by ``ServerProtocol.events_received()``; data is ``bytes``, or
#: ``(code, reason)`` for OP_CLOSE
Event = tuple[int, object]

#: the compiled modules and their pure twins
TWINS = {
    "fasthub._wire.frames_c": "fasthub._wire.frames_py",
    "fasthub._wire.mask_c": "fasthub._wire.mask_py",
    "fasthub._wire.utf8_c": "fasthub._wire.utf8_py",
    "fasthub._wire.protocol_c": "fasthub._wire.protocol_py",
    "fasthub._wire.handshake_c": "fasthub._wire.handshake_py",
}

if TYPE_CHECKING:
    from .frames_py import build_close, build_frame, build_header, close_code_allowed
    from .handshake_py import parse_upgrade, plain_upgrade
    from .mask_py import apply_mask
    from .protocol_py import ServerProtocol
    from .utf8_py import Utf8Validator, is_valid_utf8
else:
    _mods = {compiled: load(compiled, pure) for compiled, pure in TWINS.items()}
    _frames = _mods["fasthub._wire.frames_c"]
    _utf8 = _mods["fasthub._wire.utf8_c"]
    build_close, build_frame = _frames.build_close, _frames.build_frame
    build_header, close_code_allowed = _frames.build_header, _frames.close_code_allowed
    apply_mask = _mods["fasthub._wire.mask_c"].apply_mask
    Utf8Validator, is_valid_utf8 = _utf8.Utf8Validator, _utf8.is_valid_utf8
    ServerProtocol = _mods["fasthub._wire.protocol_c"].ServerProtocol
    parse_upgrade = _mods["fasthub._wire.handshake_c"].parse_upgrade
    plain_upgrade = _mods["fasthub._wire.handshake_c"].plain_upgrade

__all__ = [
    "CLOSED",
    "CLOSING",
    "OPEN",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "TWINS",
    "CloseCode",
    "Event",
    "HandshakeError",
    "InvalidState",
    "ProtocolError",
    "ServerProtocol",
    "Utf8Validator",
    "WireError",
    "apply_mask",
    "build_close",
    "build_frame",
    "build_header",
    "close_code_allowed",
    "is_valid_utf8",
    "parse_upgrade",
    "plain_upgrade",
]
