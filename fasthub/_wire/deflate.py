"""permessage-deflate (RFC 7692): negotiation, a shared compressor, and new inflaters.

The server never keeps a compression context between messages (it always answers
``server_no_context_takeover``), so a message compressed once is a valid frame for every client
that negotiated the same window, and no connection holds a compressor: one ``Deflater`` per hub
compresses everything, resetting its state after each message (``Z_FULL_FLUSH``: the output
refers to nothing before it).

Clients are asked not to keep theirs either (``client_no_context_takeover``) unless the hub
allows it: then the engine keeps one inflater per connection that has sent a compressed
message, for the connection's life (RFC 7692 7.2.2: its next message may refer to this one).

Sans-I/O and pure Python: negotiation runs once per connection, compression once per message
and form, and the work is inside zlib either way.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

isal_zlib: Any
try:
    from isal import isal_zlib
except ImportError:  # no wheel for this platform: zlib does the same job, slower
    isal_zlib = None

_ISAL_LEVEL = 1
_ZLIB_LEVEL = 6
_FULL_FLUSH = zlib.Z_FULL_FLUSH  # isal_zlib uses the same value

#: the 4 bytes a sender removes from the end of each compressed message (7.2.1) and the
#: receiver appends again (7.2.2): an empty stored block, the end of a sync flush
TAIL = b"\x00\x00\xff\xff"

EXTENSION = "permessage-deflate"

#: what an inflater raises on data that is not deflate
InflateError = zlib.error

# Inflater modes (``ServerProtocol(inflate=...)``)
INFLATE_OFF = 0  # not negotiated: RSV1 is a protocol error
INFLATE_PER_MESSAGE = 1  # client_no_context_takeover: a new inflater per message, none kept
INFLATE_CONTEXT = 2  # the client keeps its context: one inflater for the connection's life


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """What one connection negotiated."""

    #: window the server compresses with, 8-15 (``Deflater`` makes 8 safe)
    server_bits: int
    #: the client resets its context after each message (no inflater is kept)
    client_no_context_takeover: bool
    #: the ``Sec-WebSocket-Extensions`` value of the 101 response
    response: bytes

    @property
    def inflate_mode(self) -> int:
        return INFLATE_PER_MESSAGE if self.client_no_context_takeover else INFLATE_CONTEXT


class _Invalid(Exception):
    pass


def _split(value: str, sep: str) -> list[str]:
    """Split on ``sep`` outside quoted strings (RFC 7230 3.2.6)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    if quoted:
        raise _Invalid("unterminated quoted string")
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out: list[str] = []
        escaped = False
        for ch in value[1:-1]:
            if not escaped and ch == "\\":
                escaped = True
                continue
            escaped = False
            out.append(ch)
        return "".join(out)
    return value


def parse_offers(values: list[bytes]) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """The extensions of every ``Sec-WebSocket-Extensions`` header, in order (RFC 6455 9.1).

    Each is ``(name, [(param, value or None), ...])`` with lower-cased names. A malformed
    element is skipped; the others stay (a server declines what it does not understand).
    """
    offers: list[tuple[str, list[tuple[str, str | None]]]] = []
    for raw in values:
        try:
            elements = _split(raw.decode("latin-1"), ",")
        except _Invalid:
            continue
        for element in elements:
            try:
                items = [p.strip() for p in _split(element, ";")]
            except _Invalid:
                continue
            if not items or not items[0]:
                continue
            params: list[tuple[str, str | None]] = []
            for item in items[1:]:
                if not item:
                    continue
                name, eq, value = item.partition("=")
                params.append((name.strip().lower(), _unquote(value.strip()) if eq else None))
            offers.append((items[0].lower(), params))
    return offers


def _bits(value: str | None, required: bool) -> int | None:
    """A window-bits value: 8-15 in decimal without leading zeros (RFC 7692 7.1.2)."""
    if value is None:
        if required:
            raise _Invalid("a value is required")
        return None
    if not value.isdigit() or value[0] == "0" or not 8 <= int(value) <= 15:
        raise _Invalid(f"window bits {value!r} not in 8-15")
    return int(value)


def _accept(params: list[tuple[str, str | None]], client_context: bool) -> DeflateParams:
    """Our answer to one permessage-deflate offer; ``_Invalid`` declines it (7.1)."""
    seen: set[str] = set()
    server_bits = 15
    client_ncc = False
    for name, value in params:
        # 7: "A server MUST decline an extension negotiation offer ... if [it] includes an
        # extension parameter not defined ..., has an invalid value, or has duplicates"
        if name in seen:
            raise _Invalid(f"duplicate {name}")
        seen.add(name)
        if name == "server_no_context_takeover":
            if value is not None:
                raise _Invalid("server_no_context_takeover takes no value")
        elif name == "client_no_context_takeover":
            if value is not None:
                raise _Invalid("client_no_context_takeover takes no value")
            client_ncc = True
        elif name == "server_max_window_bits":
            server_bits = _bits(value, required=True)  # type: ignore[assignment]
        elif name == "client_max_window_bits":
            _bits(value, required=False)  # our inflaters use 15 bits: any client window fits
        else:
            raise _Invalid(f"unknown parameter {name}")
    # 7.1.1.1: the server may always add server_no_context_takeover; 7.1.1.2: and may ask the
    # client not to keep its context either
    response = [EXTENSION, "server_no_context_takeover"]
    if client_ncc or not client_context:
        response.append("client_no_context_takeover")
        client_ncc = True
    if "server_max_window_bits" in seen:
        # 7.1.2.1: accepted by answering the same or a smaller value
        response.append(f"server_max_window_bits={server_bits}")
    return DeflateParams(server_bits, client_ncc, "; ".join(response).encode())


#: answers to the offers seen lately: clients of one kind send the very same header (Chromium:
#: ``permessage-deflate; client_max_window_bits``), so a connect costs a dict lookup, not a parse
_answers: dict[tuple[bool, tuple[bytes, ...]], DeflateParams | None] = {}
_ANSWERS_MAX = 256


def negotiate(values: list[bytes], client_context: bool = False) -> DeflateParams | None:
    """Accept the first valid permessage-deflate offer of ``Sec-WebSocket-Extensions``; None
    when there is none (the connection goes on uncompressed).

    ``client_context``: let clients keep their compression context between messages (one
    inflater per connection that sends compressed messages); otherwise the answer always
    carries ``client_no_context_takeover``.
    """
    key = (client_context, tuple(values))
    try:
        return _answers[key]
    except KeyError:
        pass
    answer = _negotiate(values, client_context)
    if len(_answers) >= _ANSWERS_MAX:  # bounded: the header comes from clients
        _answers.clear()
    _answers[key] = answer
    return answer


def _negotiate(values: list[bytes], client_context: bool) -> DeflateParams | None:
    for name, params in parse_offers(values):
        if name != EXTENSION:
            continue
        try:
            return _accept(params, client_context)
        except _Invalid:
            continue
    return None


def offered(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The ``Sec-WebSocket-Extensions`` values of a request's headers (names lower-cased)."""
    return [value for name, value in headers if name == b"sec-websocket-extensions"]


class Deflater:
    """Compresses messages one at a time, each on its own (no context kept between them).

    One stream per window size, reset after every message by a full flush (the output refers
    to nothing before it), so a hub holds at most eight compressors whatever its number of
    connections. The library is ISA-L (``isal``) at its level 1 where it can be imported:
    measured on the hub's envelopes (``bench/deflate_libs.py``), it compresses 1.4-7 times
    faster than zlib's default level for the same size up to 1 KB and within 4% at 8 KB.
    A client that asked for a 256-byte window (``server_max_window_bits=8``) gets zlib at
    9 bits: zlib never refers further back than 250 bytes there, ISA-L does.
    """

    __slots__ = ("_streams",)

    def __init__(self) -> None:
        self._streams: dict[int, Any] = {}

    @staticmethod
    def _stream(bits: int) -> Any:
        if bits == 8:
            return zlib.compressobj(_ZLIB_LEVEL, zlib.DEFLATED, -9)
        if isal_zlib is not None:
            return isal_zlib.compressobj(_ISAL_LEVEL, isal_zlib.DEFLATED, -bits)
        return zlib.compressobj(_ZLIB_LEVEL, zlib.DEFLATED, -bits)

    def compress(self, data: bytes, bits: int = 15) -> bytes:
        """``data`` as one message's payload (7.2.1: without the trailing 00 00 ff ff)."""
        stream = self._streams.get(bits)
        if stream is None:
            if not 8 <= bits <= 15:
                raise ValueError("window bits must be 8-15")
            stream = self._streams[bits] = self._stream(bits)
        out: bytes = stream.compress(data) + stream.flush(_FULL_FLUSH)
        return out[:-4] if out.endswith(TAIL) else out


def new_inflater() -> Any:
    """A raw-deflate inflater with the largest window, so any client window fits."""
    return zlib.decompressobj(-15)


__all__ = [
    "EXTENSION",
    "INFLATE_CONTEXT",
    "INFLATE_OFF",
    "INFLATE_PER_MESSAGE",
    "TAIL",
    "DeflateParams",
    "Deflater",
    "InflateError",
    "negotiate",
    "new_inflater",
    "offered",
    "parse_offers",
]
