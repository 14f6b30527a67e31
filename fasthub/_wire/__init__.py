"""RFC 6455 engine, sans-I/O: bytes in -> events out, calls in -> bytes out.

Nothing here knows asyncio, sockets or the hub. The hot modules exist twice: a compiled one
(``*_c``) and its pure-Python twin (``*_py``) with identical behaviour, proved by the agreement
tests. This module picks one of each like aiohttp's ``_websocket/reader.py``:
``FASTHUB_NO_EXTENSIONS=1`` (or type checking) takes the twin, otherwise the compiled module is
tried and a missing build falls back to the twin; ``fasthub._ext.LIVE`` records each choice.
Tests import both twins directly (``fasthub._wire.protocol_py`` / ``protocol_c``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._ext import LIVE, NO_EXTENSIONS
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

if TYPE_CHECKING or NO_EXTENSIONS:
    from .frames_py import build_close, build_frame, build_header, close_code_allowed
    from .handshake_py import parse_upgrade
    from .mask_py import apply_mask
    from .protocol_py import ServerProtocol
    from .utf8_py import Utf8Validator, is_valid_utf8

    for _name in TWINS:
        LIVE[_name] = False
else:
    import importlib

    _mods = {}
    for _compiled, _pure in TWINS.items():
        try:
            _mods[_compiled] = importlib.import_module(_compiled)
        except ImportError:  # no build: the pure twin
            _mods[_compiled] = importlib.import_module(_pure)
        LIVE[_compiled] = _mods[_compiled].__name__ == _compiled
    _frames = _mods["fasthub._wire.frames_c"]
    build_close, build_frame = _frames.build_close, _frames.build_frame
    build_header, close_code_allowed = _frames.build_header, _frames.close_code_allowed
    apply_mask = _mods["fasthub._wire.mask_c"].apply_mask
    Utf8Validator = _mods["fasthub._wire.utf8_c"].Utf8Validator
    is_valid_utf8 = _mods["fasthub._wire.utf8_c"].is_valid_utf8
    ServerProtocol = _mods["fasthub._wire.protocol_c"].ServerProtocol
    parse_upgrade = _mods["fasthub._wire.handshake_c"].parse_upgrade

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
]
