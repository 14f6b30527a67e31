"""Parse and validate an RFC 6455 upgrade request head (4.2.1), pure Python.

Twin of ``handshake_c.pyx``: both return the same result or raise the same ``HandshakeError``
(same status, same message) for every input; ``tests/test_wire_handshake.py`` checks it.
The checks run in a fixed order, so the first failure named is the same in both: the request
line, every header line's syntax, the method, a repeated key, then Upgrade, Connection,
version and key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from .exceptions import HandshakeError

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: (method, target, headers with lower-cased names and stripped values, key, subprotocols)
Upgrade = tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes, list[str]]


def _has_token(value: bytes, token: bytes) -> bool:
    return token in {t.strip().lower() for t in value.split(b",")}


def parse_upgrade(data: bytes) -> Upgrade:
    """Parse everything up to the blank line of ``data``; raises ``HandshakeError``."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise HandshakeError(400, "incomplete request")
    lines = data[:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise HandshakeError(400, "malformed request line")
    method, target = parts[0], parts[1]
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise HandshakeError(400, "malformed header line")
        headers.append((name.lower(), value.strip()))
    if method != b"GET":
        raise HandshakeError(400, "the WebSocket handshake must be a GET")
    upgrade = connection = key = version = None
    protocols: list[str] = []
    for name, value in headers:
        if name == b"upgrade":
            upgrade = value
        elif name == b"connection":
            connection = value if connection is None else connection + b"," + value
        elif name == b"sec-websocket-key":
            if key is not None:
                raise HandshakeError(400, "more than one Sec-WebSocket-Key")
            key = value
        elif name == b"sec-websocket-version":
            version = value
        elif name == b"sec-websocket-protocol":
            protocols.extend(p.strip() for p in value.decode("latin-1").split(",") if p.strip())
    if upgrade is None or not _has_token(upgrade, b"websocket"):
        raise HandshakeError(400, "missing Upgrade: websocket")
    if connection is None or not _has_token(connection, b"upgrade"):
        raise HandshakeError(400, "missing Connection: Upgrade")
    if version != b"13":
        raise HandshakeError(426, "unsupported Sec-WebSocket-Version (13 is required)")
    if key is None:
        raise HandshakeError(400, "missing Sec-WebSocket-Key")
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, "Sec-WebSocket-Key is not 16 bytes in base64")
    return method, target, headers, key, protocols


def plain_upgrade(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    """``(target, key, Sec-WebSocket-Accept)`` for the usual upgrade, the whole of ``data`` being
    its head: valid, with no ``Sec-WebSocket-Protocol`` or ``-Extensions`` header. None for
    anything else (then ``parse_upgrade`` answers it). The accept key is RFC 6455 4.2.2's."""
    if not data.endswith(b"\r\n\r\n") or data.find(b"\r\n\r\n") != len(data) - 4:
        return None
    try:
        _, target, headers, key, _ = parse_upgrade(data)
    except HandshakeError:
        return None
    for name, _ in headers:
        if name == b"sec-websocket-protocol" or name == b"sec-websocket-extensions":
            return None
    return target, key, base64.b64encode(hashlib.sha1(key + _GUID).digest())
