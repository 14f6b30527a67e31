"""The RFC 6455 opening handshake: parse the upgrade request, answer 101 / 400 / 426.

Kept apart from the protocol class so that any listener (uvicorn's hand-off today, our own
listener later) shares one strict implementation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from http import HTTPStatus

import orjson

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_REQUEST_SIZE = 16 * 1024


class HandshakeError(Exception):
    """A request that cannot be upgraded; ``status`` is the HTTP answer (400 or 426)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class UpgradeRequest:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names lower-cased, values as sent
    key: bytes
    subprotocols: list[str]


def accept_key(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 4.2.2 step 5.4)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def _tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",")}


def parse_request(data: bytes) -> UpgradeRequest:
    """Parse and validate a complete upgrade request (everything up to the blank line)."""
    head, sep, _ = data.partition(b"\r\n\r\n")
    if not sep:
        raise HandshakeError(400, "incomplete request")
    lines = head.split(b"\r\n")
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
    # 4.2.1: a GET with Upgrade: websocket, Connection: Upgrade, a 16-byte key, version 13.
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
    if upgrade is None or b"websocket" not in _tokens(upgrade):
        raise HandshakeError(400, "missing Upgrade: websocket")
    if connection is None or b"upgrade" not in _tokens(connection):
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
    return UpgradeRequest(method, target, headers, key, protocols)


def accept_response(key: bytes, extra: list[tuple[bytes, bytes]]) -> bytes:
    """The 101 response (RFC 6455 4.2.2)."""
    out = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        accept_key(key),
        b"\r\n",
    ]
    for name, value in extra:
        out += [name, b": ", value, b"\r\n"]
    out.append(b"\r\n")
    return b"".join(out)


def http_response(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A complete HTTP/1.1 response that ends the connection."""
    try:
        phrase = HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    out = [b"HTTP/1.1 %d %s\r\n" % (status, phrase)]
    names = {name.lower() for name, _ in headers}
    for name, value in headers:
        out += [name, b": ", value, b"\r\n"]
    if b"content-length" not in names:
        out.append(b"content-length: %d\r\n" % len(body))
    if b"connection" not in names:
        out.append(b"connection: close\r\n")
    out += [b"\r\n", body]
    return b"".join(out)


def denial_body(status: int, reason: str) -> bytes:
    """The JSON body of a refused upgrade: ``{"error": reason, "status": status}``."""
    return orjson.dumps({"error": reason, "status": status})


def error_response(exc: HandshakeError) -> bytes:
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if exc.status == 426:
        headers.append((b"sec-websocket-version", b"13"))
    return http_response(exc.status, headers, exc.message.encode() + b"\n")
