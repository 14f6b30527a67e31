# cython: annotation_typing=False
"""Server frames (RFC 6455 5.2), built once as immutable ``bytes``.

Server frames are not masked (5.1: "A server MUST NOT mask any frames that it sends to the
client"), so a broadcast frame is identical for every receiver: build it once with
:func:`build_frame` and hand the same object to each transport, or use :func:`build_header` and
``writelines([header, payload])`` to avoid copying a large payload.

Compiled as ``frames_c`` with ``frames_c.pxd``; annotations are for mypy, the ``.pxd`` types it.
"""

from __future__ import annotations

from struct import Struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import _nocython as cython
else:
    try:
        import cython
    except ImportError:  # pure-Python install: no Cython at run time
        from . import _nocython as cython

if not cython.compiled:
    # Once compiled these are C constants of the same values (frames_c.pxd).
    from .codes import OP_BINARY, OP_CLOSE, OP_PONG

_PACK_LEN2 = Struct("!BBH").pack
_PACK_LEN3 = Struct("!BBQ").pack
_PACK_CODE = Struct("!H").pack

#: 2-byte headers of short frames, one row of 126 per first byte, filled on first use
_SHORT_HEADERS: list[list[bytes] | None] = [None] * 256

_EMPTY_CLOSE = b"\x88\x00"


def _first_byte(opcode: int, fin: bool, rsv1: bool, length: int) -> int:
    """FIN, RSV1 and opcode as the frame's first byte; refuse what RFC 6455 forbids to send."""
    if opcode < 0 or opcode > 0xF:
        raise ValueError(f"opcode {opcode} is not 4 bits")
    if opcode & 0x8:
        if opcode > OP_PONG:
            raise ValueError(f"opcode {opcode:#x} is reserved")
        # 5.5: "All control frames MUST have a payload length of 125 bytes or less and MUST NOT
        # be fragmented."
        if not fin:
            raise ValueError("control frames cannot be fragmented")
        if length > 125:
            raise ValueError("control frame payloads are limited to 125 bytes")
    elif opcode > OP_BINARY:
        raise ValueError(f"opcode {opcode:#x} is reserved")
    b0 = opcode
    if fin:
        b0 |= 0x80
    if rsv1:
        b0 |= 0x40
    return b0


def _header(b0: int, length: int) -> bytes:
    """Header for a payload of ``length`` bytes (5.2: the minimal length encoding is used)."""
    if length < 126:
        row = _SHORT_HEADERS[b0]
        if row is None:
            row = [bytes((b0, n)) for n in range(126)]
            _SHORT_HEADERS[b0] = row
        return row[length]
    if length < 0x10000:
        return _PACK_LEN2(b0, 126, length)
    return _PACK_LEN3(b0, 127, length)


def build_header(opcode: int, length: int, fin: bool = True, rsv1: bool = False) -> bytes:
    """Header of an unmasked server frame, for ``writelines([header, payload])``."""
    # 5.2: "the most significant bit MUST be 0" of a 64-bit length.
    if length < 0 or length >= 0x8000000000000000:
        raise ValueError(f"invalid payload length {length}")
    return _header(_first_byte(opcode, fin, rsv1, length), length)


def build_frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    """One unmasked server frame, header and payload in a single immutable ``bytes``."""
    if type(payload) is not bytes:
        payload = bytes(payload)
    length = len(payload)
    return _header(_first_byte(opcode, fin, rsv1, length), length) + payload


def close_code_allowed(code: int) -> bool:
    """Whether ``code`` may appear in a close frame (7.4.1, 7.4.2).

    1004 is reserved; 1005, 1006 and 1015 "MUST NOT be set as a status code in a Close control
    frame"; 1012-1014 are registered with IANA; 3000-4999 belong to libraries and applications.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def build_close(code: int, reason: str = "") -> bytes:
    """A whole close frame; code 1005 (no status) gives an empty payload (5.5.1)."""
    if code == 1005:
        if reason:
            raise ValueError("a close frame without a status code cannot carry a reason")
        return _EMPTY_CLOSE
    if not close_code_allowed(code):
        raise ValueError(f"close code {code} cannot be sent")
    payload = _PACK_CODE(code) + reason.encode("utf-8")
    if len(payload) > 125:
        raise ValueError("close reasons are limited to 123 bytes of UTF-8")
    return _header(0x80 | OP_CLOSE, len(payload)) + payload
