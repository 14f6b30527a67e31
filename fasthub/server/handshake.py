"""The RFC 6455 opening handshake: parse the upgrade request, answer 101 / 400 / 426.

Kept apart from the protocol class so that both front doors (uvicorn's hand-off and our own
listener) share one strict implementation.
"""

from __future__ import annotations

from binascii import b2a_base64
from dataclasses import dataclass
from hashlib import sha1
from http import HTTPStatus

import orjson

from .._wire import HandshakeError as HandshakeError
from .._wire import parse_upgrade

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_REQUEST_SIZE = 16 * 1024


@dataclass(slots=True)
class UpgradeRequest:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names lower-cased, values as sent
    key: bytes
    subprotocols: list[str]


def accept_key(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 4.2.2 step 5.4)."""
    return b2a_base64(sha1(key + _GUID).digest(), newline=False)


def parse_request(data: bytes) -> UpgradeRequest:
    """Parse and validate a complete upgrade request (everything up to the blank line).

    The parse is the wire engine's (``fasthub._wire.parse_upgrade``, compiled with a pure twin).
    """
    return UpgradeRequest(*parse_upgrade(data))


_101 = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
# the header lines after the accept key, for the last headers seen: every connect of a second
# sends the same ones (the server's ``server`` and ``date``)
_tail_of: list[tuple[bytes, bytes]] | None = None
_tail = b""


def accept_response(key: bytes, extra: list[tuple[bytes, bytes]]) -> bytes:
    """The 101 response (RFC 6455 4.2.2)."""
    return switching(accept_key(key), extra)


def switching(accept: bytes, extra: list[tuple[bytes, bytes]]) -> bytes:
    """The 101 response with this ``Sec-WebSocket-Accept`` value."""
    global _tail_of, _tail
    if extra != _tail_of:
        out = [b"\r\n"]
        for name, value in extra:
            out += [name, b": ", value, b"\r\n"]
        out.append(b"\r\n")
        _tail, _tail_of = b"".join(out), list(extra)
    return _101 + accept + _tail


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
