"""The upgrade-request parser: its answers, and the compiled twin agreeing with the pure one.

Hypothesis assembles request heads from valid and broken parts (request lines, header names in
any case, whitespace around names and values, repeated and missing headers, keys of every
near-miss shape) and also flips random bytes: both twins must return the same tuple, or raise
``HandshakeError`` with the same status and message.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.util
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fasthub._wire import HandshakeError
from fasthub._wire import handshake_py as pure

COMPILED_BUILT = importlib.util.find_spec("fasthub._wire.handshake_c") is not None
needs_compiled = pytest.mark.skipif(not COMPILED_BUILT, reason="extension not built")
TWINS = [pure] + ([importlib.import_module("fasthub._wire.handshake_c")] if COMPILED_BUILT else [])

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def head(*headers: bytes, line: bytes = b"GET /ws?x=1 HTTP/1.1") -> bytes:
    return b"\r\n".join([line, *headers]) + b"\r\n\r\n"


GOOD = head(
    b"Host: example",
    b"Upgrade: websocket",
    b"Connection: keep-alive, Upgrade",
    b"Sec-WebSocket-Key: " + KEY,
    b"Sec-WebSocket-Version: 13",
    b"Sec-WebSocket-Protocol: fasthub, bearer.abc",
)


def outcome(mod: Any, data: bytes) -> Any:
    """``parse_upgrade``'s answer and ``plain_upgrade``'s, the second checked against the first:
    it answers only a request the full parse takes, with no subprotocol or extension header and
    nothing after the head, and gives its target, key and RFC 6455 accept value."""
    plain = mod.plain_upgrade(data)
    try:
        parsed = mod.parse_upgrade(data)
    except HandshakeError as exc:
        assert plain is None, data
        return ("error", exc.status, exc.message), None
    if plain is not None:
        _, target, headers, key, _ = parsed
        names = {name for name, _ in headers}
        assert data.find(b"\r\n\r\n") == len(data) - 4
        assert b"sec-websocket-protocol" not in names and b"sec-websocket-extensions" not in names
        assert plain == (target, key, base64.b64encode(hashlib.sha1(key + GUID).digest()))
    return parsed, plain


PLAIN = head(b"Host: h", b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Key: " + KEY,
             b"Sec-WebSocket-Version: 13")


@pytest.mark.parametrize("mod", TWINS, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_the_usual_upgrade_is_answered_without_the_full_parse(mod: Any) -> None:
    # RFC 6455 1.3's example key and accept value
    assert mod.plain_upgrade(PLAIN) == (b"/ws?x=1", KEY, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    assert outcome(mod, PLAIN)[1] is not None
    for other in (
        PLAIN + b"\x81",  # a frame after the head: the full path keeps it for the engine
        PLAIN[:-2] + b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        PLAIN[:-2] + b"Sec-WebSocket-Protocol: fasthub\r\n\r\n",
        PLAIN.replace(b"GET", b"PUT"),
        PLAIN.replace(b"13", b"12"),
        PLAIN[:-2] + b"Sec-WebSocket-Key: " + KEY + b"\r\n\r\n",
    ):
        assert mod.plain_upgrade(other) is None
        outcome(mod, other)


@pytest.mark.parametrize("mod", TWINS, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_valid_request(mod: Any) -> None:
    method, target, headers, key, protocols = mod.parse_upgrade(GOOD + b"trailing bytes are not read")
    assert (method, target, key, protocols) == (b"GET", b"/ws?x=1", KEY, ["fasthub", "bearer.abc"])
    assert headers[0] == (b"host", b"example") and headers[2] == (b"connection", b"keep-alive, Upgrade")


CASES = [
    (b"GET /ws HTTP/1.1\r\nHost: x\r\n", 400, "incomplete request"),
    (head(line=b"GET /ws"), 400, "malformed request line"),
    (head(line=b"GET  /ws HTTP/1.1"), 400, "malformed request line"),
    (head(line=b"GET /ws HTTP/2"), 400, "malformed request line"),
    (head(b"Host x"), 400, "malformed header line"),
    (head(b": x"), 400, "malformed header line"),
    (head(b"Host : x"), 400, "malformed header line"),
    (head(b" Host: x"), 400, "malformed header line"),
    (head(b"Upgrade: websocket", line=b"POST /ws HTTP/1.1"), 400, "the WebSocket handshake must be a GET"),
    (head(b"Sec-WebSocket-Key: " + KEY, b"sec-websocket-key: " + KEY), 400, "more than one Sec-WebSocket-Key"),
    (head(b"Upgrade: h2c", b"Connection: Upgrade"), 400, "missing Upgrade: websocket"),
    (head(b"Upgrade: websocket", b"Upgrade: h2c"), 400, "missing Upgrade: websocket"),
    (head(b"Upgrade: WebSocket", b"Connection: close"), 400, "missing Connection: Upgrade"),
    (head(b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 8"), 426, None),
    (head(b"Upgrade: websocket", b"Connection: x", b"Connection: upgrade", b"Sec-WebSocket-Version: 13"), 400, None),
    (
        head(b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Key: abc"),
        400,
        "Sec-WebSocket-Key is not 16 bytes in base64",
    ),
]


@pytest.mark.parametrize("mod", TWINS, ids=lambda m: m.__name__.rsplit(".", 1)[1])
@pytest.mark.parametrize(("data", "status", "message"), CASES)
def test_refusals(mod: Any, data: bytes, status: int, message: str | None) -> None:
    with pytest.raises(HandshakeError) as info:
        mod.parse_upgrade(data)
    assert info.value.status == status
    if message is not None:
        assert info.value.message == message
    if status == 400 and message is None:  # the two Connection headers count together
        assert info.value.message == "missing Sec-WebSocket-Key"


names = st.sampled_from(
    [
        b"Host",
        b"Upgrade",
        b"upgrade",
        b"UPGRADE",
        b"Connection",
        b"connection",
        b"Sec-WebSocket-Key",
        b"sec-websocket-key",
        b"Sec-WebSocket-Version",
        b"Sec-WebSocket-Protocol",
        b"Origin",
        b"X",
    ]
)
values = st.one_of(
    st.sampled_from(
        [
            b"websocket",
            b"WebSocket",
            b" websocket ",
            b"h2c, websocket",
            b"Upgrade",
            b"keep-alive,upgrade",
            b"13",
            b" 13",
            b"8",
            b"",
            b"\t",
            KEY,
            b" " + KEY + b" ",
            KEY[:-1],
            KEY[:-2] + b"=A",
            KEY[:-3] + b"A==",
            b"AAAAAAAAAAAAAAAAAAAAAB==",
            b"AAAAAAAAAAAAAAAAAAAAAA=",
            b"AAAAAAAAAAAAAAAAAAAAAAA=",
            b"a,b, ,c",
            b"\x85x\xa0, y",
            b"v\x0bw",
        ]
    ),
    st.binary(max_size=12).filter(lambda b: b"\r\n" not in b),
)
spaces = st.sampled_from([b"", b" ", b"\t", b"  ", b"\x0b"])
header_lines = st.tuples(spaces, names, spaces, st.sampled_from([b":", b"", b"::"]), spaces, values, spaces).map(
    lambda t: b"".join(t)
)
request_lines = st.sampled_from(
    [
        b"GET /ws HTTP/1.1",
        b"GET /ws HTTP/1.0",
        b"get /ws HTTP/1.1",
        b"GET /ws",
        b"GET /ws HTTP/1.1 x",
        b"",
        b"POST /ws HTTP/1.1",
        b"GET /a%20b?q HTTP/1.1",
        b"GET /ws http/1.1",
    ]
)


@needs_compiled
@settings(max_examples=1500, deadline=None)
@given(request_lines, st.lists(header_lines, max_size=8), st.booleans())
def test_twins_agree_on_assembled_requests(line: bytes, lines: list[bytes], complete: bool) -> None:
    data = b"\r\n".join([line, *lines]) + (b"\r\n\r\n" if complete else b"\r\n")
    assert outcome(TWINS[1], data) == outcome(pure, data)


@needs_compiled
@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), max_size=4))
def test_twins_agree_on_mutated_requests(flips: list[tuple[int, int]]) -> None:
    data = bytearray(GOOD)
    for pos, byte in flips:
        data[pos] = byte
    assert outcome(TWINS[1], bytes(data)) == outcome(pure, bytes(data))


@needs_compiled
def test_twins_agree_on_random_keys() -> None:
    alphabet = b"ABCXYZabcxyz0189+/=-_ "
    rng = __import__("random").Random(5)
    for _ in range(3000):
        n = rng.choice([22, 23, 24, 24, 24, 25])
        key = bytes(rng.choice(alphabet) for _ in range(n))
        if rng.random() < 0.5:
            key = base64.b64encode(os.urandom(16))[: rng.choice([22, 24])] + key[24:]
        data = head(
            b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Key: " + key
        )
        assert outcome(TWINS[1], data) == outcome(pure, data), key
