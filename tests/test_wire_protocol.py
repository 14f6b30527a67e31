"""The sans-I/O server engine, run against both twins (py and c). No sockets, no event loop."""

from __future__ import annotations

import importlib
import importlib.util
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from fasthub._wire import (
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
    InvalidState,
    ProtocolError,
)
from fasthub._wire.frames_py import build_close, build_frame
from fasthub._wire.testing import encode_frame as frame

Factory = Callable[..., Any]


def twin_params(base: str) -> list[object]:
    compiled = f"fasthub._wire.{base}_c"
    return [
        pytest.param(f"fasthub._wire.{base}_py", id="py"),
        pytest.param(
            compiled,
            id="c",
            marks=pytest.mark.skipif(importlib.util.find_spec(compiled) is None, reason="extension not built"),
        ),
    ]


@pytest.fixture(params=twin_params("protocol"))
def make(request: pytest.FixtureRequest) -> Factory:
    """The ServerProtocol class of one twin."""
    cls: Factory = importlib.import_module(request.param).ServerProtocol
    return cls


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(OP_CLOSE, code.to_bytes(2, "big") + reason)


def assert_failed(p: Any, code: int, writes: list[bytes] | None = None) -> None:
    """The engine recorded the error, queued a close frame with ``code``, then b"" (7.1.7)."""
    assert isinstance(p.exc, ProtocolError)
    assert p.exc.code == code
    if writes is None:
        writes = p.data_to_send()
    assert writes == [build_close(code, p.exc.reason), b""]
    assert p.state == CLOSED
    assert p.close_code == code
    assert p.close_sent == (code, p.exc.reason)
    assert p.close_received is None
    # 7.1.7: nothing is processed after failing.
    p.receive_data(frame(OP_PING, b"late") + frame(OP_TEXT, b"late"))
    assert p.events_received() == []
    assert p.data_to_send() == []


# Data frames.


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 0xFFFF, 0x10000, 70000])
def test_length_encodings(make: Factory, length: int) -> None:
    payload = bytes(i & 0x7F for i in range(length))
    p = make()
    p.receive_data(frame(OP_TEXT, payload) + frame(OP_BINARY, payload))
    assert p.events_received() == [(OP_TEXT, payload), (OP_BINARY, payload)]
    assert p.data_to_send() == []
    assert p.buffered == 0


@pytest.mark.parametrize("width", [7, 16, 64])
def test_non_minimal_length_encodings_are_accepted(make: Factory, width: int) -> None:
    p = make()
    p.receive_data(frame(OP_BINARY, b"hello", width=width))
    assert p.events_received() == [(OP_BINARY, b"hello")]


def stream_and_events() -> tuple[bytes, list[tuple[int, object]], list[bytes]]:
    payload300 = bytes(range(256)) + bytes(44)
    data = b"".join(
        [
            frame(OP_TEXT, b"Hello"),
            frame(OP_BINARY, payload300),  # 16-bit length
            frame(OP_BINARY, b"wide", width=64),  # 64-bit length
            frame(OP_TEXT, b"caf", fin=False),
            frame(OP_PING, b"p1"),
            frame(OP_CONT, "é ".encode()[:1], fin=False),  # é split across fragments
            frame(OP_PONG, b""),
            frame(OP_CONT, "é ".encode()[1:] + "𝄞".encode()),
            frame(OP_BINARY, b"", fin=False),
            frame(OP_CONT, b"", fin=False),
            frame(OP_CONT, b"end"),
            frame(OP_TEXT, b""),
            close_frame(1000, b"done"),
        ]
    )
    events: list[tuple[int, object]] = [
        (OP_TEXT, b"Hello"),
        (OP_BINARY, payload300),
        (OP_BINARY, b"wide"),
        (OP_PING, b"p1"),
        (OP_PONG, b""),
        (OP_TEXT, "café 𝄞".encode()),
        (OP_BINARY, b"end"),
        (OP_TEXT, b""),
        (OP_CLOSE, (1000, "done")),
    ]
    writes = [b"\x8a\x02p1", b"\x88\x06\x03\xe8done", b""]
    return data, events, writes


def test_many_frames_in_one_read(make: Factory) -> None:
    data, events, writes = stream_and_events()
    p = make()
    p.receive_data(data)
    assert p.events_received() == events
    assert p.data_to_send() == writes
    assert p.state == CLOSED
    assert p.close_code == 1000
    assert p.close_reason == "done"
    assert p.exc is None


def test_split_at_every_byte_boundary(make: Factory) -> None:
    data, events, writes = stream_and_events()
    for cut in range(len(data) + 1):
        p = make()
        p.receive_data(data[:cut])
        got_events = p.events_received()
        got_writes = p.data_to_send()
        p.receive_data(data[cut:])
        assert got_events + p.events_received() == events, cut
        assert got_writes + p.data_to_send() == writes, cut


def test_byte_by_byte(make: Factory) -> None:
    data, events, writes = stream_and_events()
    p = make()
    for i in range(len(data)):
        p.receive_data(data[i : i + 1])
    assert p.events_received() == events
    assert p.data_to_send() == writes


def test_split_in_three_everywhere(make: Factory) -> None:
    data = frame(OP_TEXT, "héllo wörld".encode()) + frame(OP_PING, b"x")
    for a in range(len(data) + 1):
        for b in range(a, len(data) + 1):
            p = make()
            for chunk in (data[:a], data[a:b], data[b:]):
                p.receive_data(chunk)
            assert p.events_received() == [(OP_TEXT, "héllo wörld".encode()), (OP_PING, b"x")]


def test_accepts_bytearray_and_memoryview(make: Factory) -> None:
    p = make()
    p.receive_data(bytearray(frame(OP_TEXT, b"a")))
    p.receive_data(memoryview(frame(OP_TEXT, b"b")))
    assert p.events_received() == [(OP_TEXT, b"a"), (OP_TEXT, b"b")]


def test_fragmented_message_is_delivered_once(make: Factory) -> None:
    p = make()
    p.receive_data(frame(OP_BINARY, b"ab", fin=False))
    p.receive_data(frame(OP_CONT, b"cd", fin=False))
    assert p.events_received() == []
    assert p.buffered == 4
    p.receive_data(frame(OP_PING, b"?"))
    assert p.events_received() == [(OP_PING, b"?")]
    assert p.data_to_send() == [b"\x8a\x01?"]
    p.receive_data(frame(OP_CONT, b"ef"))
    assert p.events_received() == [(OP_BINARY, b"abcdef")]
    assert p.buffered == 0


def test_events_and_writes_are_swapped_out(make: Factory) -> None:
    p = make()
    p.receive_data(frame(OP_PING, b"1"))
    assert p.events_received() == [(OP_PING, b"1")]
    assert p.events_received() == []
    assert p.data_to_send() == [b"\x8a\x011"]
    assert p.data_to_send() == []


def test_incomplete_header_is_buffered(make: Factory) -> None:
    p = make()
    data = frame(OP_BINARY, b"x" * 300)
    p.receive_data(data[:3])
    assert p.buffered == 3
    p.receive_data(data[3:9])
    assert p.buffered == 1  # 8-byte header consumed, 1 payload byte streamed
    p.receive_data(data[9:])
    assert p.events_received() == [(OP_BINARY, b"x" * 300)]


# Ping and pong.


@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125))])
def test_ping_gets_pong_with_same_payload(make: Factory, payload: bytes) -> None:
    p = make()
    p.receive_data(frame(OP_PING, payload))
    assert p.events_received() == [(OP_PING, payload)]
    assert p.data_to_send() == [bytes((0x8A, len(payload))) + payload]


def test_pong_is_an_event_only(make: Factory) -> None:
    p = make()
    p.receive_data(frame(OP_PONG, b"beat"))
    assert p.events_received() == [(OP_PONG, b"beat")]
    assert p.data_to_send() == []


# Protocol errors: 1002.

PROTOCOL_ERRORS = {
    "rsv1": frame(OP_TEXT, b"x", rsv=4),
    "rsv2": frame(OP_TEXT, b"x", rsv=2),
    "rsv3": frame(OP_BINARY, b"x", rsv=1),
    "rsv-on-ping": frame(OP_PING, b"x", rsv=7),
    **{f"opcode-{op:x}": frame(op, b"x") for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)},
    "fragmented-ping": frame(OP_PING, b"x", fin=False),
    "fragmented-close": frame(OP_CLOSE, b"\x03\xe8", fin=False),
    "ping-126": frame(OP_PING, b"x" * 126),
    "pong-126-16-bit": frame(OP_PONG, b"x" * 126, width=16),
    "close-126": frame(OP_CLOSE, b"\x03\xe8" + b"x" * 124),
    "unmasked": frame(OP_TEXT, b"x", mask=None),
    "unmasked-ping": frame(OP_PING, b"x", mask=None),
    "continuation-first": frame(OP_CONT, b"x"),
    "text-during-text": frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"),
    "binary-during-text": frame(OP_TEXT, b"a", fin=False) + frame(OP_BINARY, b"b"),
    "continuation-after-end": frame(OP_TEXT, b"a", fin=False) + frame(OP_CONT, b"b") + frame(OP_CONT, b"c"),
    "length-msb-set": frame(OP_BINARY, b"", width=64, length=2**63),
    "length-all-ones": frame(OP_BINARY, b"", width=64, length=2**64 - 1),
    "close-1-byte": frame(OP_CLOSE, b"\x03"),
}


@pytest.mark.parametrize("data", list(PROTOCOL_ERRORS.values()), ids=list(PROTOCOL_ERRORS))
def test_protocol_errors(make: Factory, data: bytes) -> None:
    p = make()
    p.receive_data(frame(OP_PING, b"before") + data + frame(OP_TEXT, b"after"))
    events = p.events_received()
    assert events[0] == (OP_PING, b"before")
    assert (OP_TEXT, b"after") not in events
    writes = p.data_to_send()
    assert writes[0] == b"\x8a\x06before"
    assert_failed(p, 1002, writes[1:])


@pytest.mark.parametrize("data", list(PROTOCOL_ERRORS.values()), ids=list(PROTOCOL_ERRORS))
def test_protocol_errors_byte_by_byte(make: Factory, data: bytes) -> None:
    p = make()
    for i in range(len(data)):
        p.receive_data(data[i : i + 1])
    p.events_received()
    assert_failed(p, 1002)


def test_header_errors_fail_fast(make: Factory) -> None:
    """Checks that need only the first two bytes do not wait for the rest of the header."""
    for data in (frame(OP_TEXT, b"x" * 300, rsv=4), frame(OP_BINARY, b"x" * 70000, mask=None)):
        p = make()
        p.receive_data(data[:2])
        assert_failed(p, 1002)


# Close codes.

VALID_CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999]
VALID_CLOSE_CODES += [4000, 4999]
INVALID_CLOSE_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("code", VALID_CLOSE_CODES)
def test_valid_close_code_is_echoed(make: Factory, code: int) -> None:
    p = make()
    p.receive_data(close_frame(code, b"reason"))
    assert p.events_received() == [(OP_CLOSE, (code, "reason"))]
    # 5.5.1: "the endpoint typically echos the status code it received"
    assert p.data_to_send() == [build_frame(OP_CLOSE, code.to_bytes(2, "big") + b"reason"), b""]
    assert p.state == CLOSED
    assert (p.close_code, p.close_reason) == (code, "reason")
    assert p.close_received == p.close_sent == (code, "reason")
    assert p.exc is None


@pytest.mark.parametrize("code", INVALID_CLOSE_CODES)
def test_invalid_close_code(make: Factory, code: int) -> None:
    p = make()
    p.receive_data(close_frame(code))
    assert p.events_received() == []
    assert_failed(p, 1002)


def test_empty_close_gets_empty_close(make: Factory) -> None:
    p = make()
    p.receive_data(frame(OP_CLOSE, b""))
    assert p.events_received() == [(OP_CLOSE, (1005, ""))]
    assert p.data_to_send() == [b"\x88\x00", b""]
    assert p.close_code == 1005
    assert p.close_sent == (1005, "")


def test_close_reason_invalid_utf8(make: Factory) -> None:
    p = make()
    p.receive_data(close_frame(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"))
    assert_failed(p, 1007)


def test_close_reason_max_length(make: Factory) -> None:
    p = make()
    p.receive_data(close_frame(1000, "é".encode() * 61 + b"x"))
    assert p.events_received() == [(OP_CLOSE, (1000, "é" * 61 + "x"))]


# Invalid UTF-8: 1007, as early as possible.


def test_invalid_utf8_single_frame(make: Factory) -> None:
    p = make()
    p.receive_data(frame(OP_TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"))
    assert p.events_received() == []
    assert_failed(p, 1007)


def test_invalid_utf8_fails_before_the_last_fragment(make: Factory) -> None:
    p = make()
    p.receive_data(frame(OP_TEXT, "κό".encode(), fin=False))
    p.receive_data(frame(OP_CONT, b"\xf4\x90\x80\x80", fin=False))
    assert_failed(p, 1007)


def test_invalid_utf8_fails_mid_frame(make: Factory) -> None:
    """Autobahn 6.4.3-6.4.4: the frame is incomplete, the bad byte is already there."""
    data = frame(OP_TEXT, "κόσμε".encode() + b"\xf4\x90\x80\x80" + b"edited")
    bad_end = 6 + 10 + 2  # header + "κόσμε" + the first two bytes of the bad sequence
    p = make()
    p.receive_data(data[: bad_end - 1])
    assert p.data_to_send() == []
    p.receive_data(data[bad_end - 1 : bad_end])
    assert_failed(p, 1007)


def test_utf8_sequence_may_span_fragments(make: Factory) -> None:
    snowman = "☃".encode()
    p = make()
    p.receive_data(frame(OP_TEXT, snowman[:1], fin=False))
    p.receive_data(frame(OP_CONT, snowman[1:2], fin=False))
    p.receive_data(frame(OP_CONT, snowman[2:]))
    assert p.events_received() == [(OP_TEXT, snowman)]


def test_utf8_truncated_at_end_of_message(make: Factory) -> None:
    p = make()
    p.receive_data(frame(OP_TEXT, "☃".encode()[:2], fin=False))
    assert p.data_to_send() == []
    p.receive_data(frame(OP_CONT, b""))
    assert_failed(p, 1007)
    p = make()
    p.receive_data(frame(OP_TEXT, "☃".encode()[:2]))
    assert_failed(p, 1007)


def test_binary_is_not_validated(make: Factory) -> None:
    p = make()
    p.receive_data(frame(OP_BINARY, b"\xff\xfe", fin=False) + frame(OP_CONT, b"\xed\xa0"))
    assert p.events_received() == [(OP_BINARY, b"\xff\xfe\xed\xa0")]


# Size limit: 1009 before buffering.


def test_message_at_limit_is_accepted(make: Factory) -> None:
    p = make(max_message_size=100)
    p.receive_data(frame(OP_BINARY, b"x" * 100))
    p.receive_data(frame(OP_TEXT, b"y" * 60, fin=False) + frame(OP_CONT, b"y" * 40))
    assert p.events_received() == [(OP_BINARY, b"x" * 100), (OP_TEXT, b"y" * 100)]


def test_frame_over_limit_fails_on_its_header(make: Factory) -> None:
    p = make(max_message_size=100)
    p.receive_data(frame(OP_BINARY, b"x" * 101)[:8])  # header and mask only
    assert_failed(p, 1009)


def test_fragments_over_limit_fail_on_the_header(make: Factory) -> None:
    p = make(max_message_size=100)
    p.receive_data(frame(OP_TEXT, b"y" * 60, fin=False))
    p.receive_data(frame(OP_PING, b""))  # control frames do not count
    assert p.buffered == 60
    p.receive_data(frame(OP_CONT, b"y" * 41)[:6])
    assert p.buffered == 0
    assert p.events_received() == [(OP_PING, b"")]
    writes = p.data_to_send()
    assert writes[0] == b"\x8a\x00"
    assert_failed(p, 1009, writes[1:])


@pytest.mark.parametrize("length", [2**62, 2**63 - 1, 2**32, 513 * 1024])
def test_huge_length_header_allocates_nothing(make: Factory, length: int) -> None:
    p = make()  # 512 KiB default
    tracemalloc.start()
    try:
        p.receive_data(frame(OP_BINARY, b"", length=length) + b"\x00" * 1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024
    assert_failed(p, 1009)


def test_no_limit(make: Factory) -> None:
    p = make(max_message_size=0)
    payload = b"z" * (600 * 1024)
    data = frame(OP_BINARY, payload)
    for i in range(0, len(data), 65536):
        p.receive_data(data[i : i + 65536])
    assert p.events_received() == [(OP_BINARY, payload)]


def test_negative_limit_refused(make: Factory) -> None:
    with pytest.raises(ValueError):
        make(max_message_size=-1)


# Closing handshake.


def no_close_yet(p: Any) -> bool:
    """close_code and close_reason stay None until the connection is CLOSED."""
    return p.close_code is None and p.close_reason is None


def test_client_initiated_close(make: Factory) -> None:
    p = make()
    assert p.state == OPEN
    assert no_close_yet(p)
    p.receive_data(close_frame(1001, b"bye") + frame(OP_TEXT, b"ignored"))
    assert p.events_received() == [(OP_CLOSE, (1001, "bye"))]
    assert p.data_to_send() == [b"\x88\x05\x03\xe9bye", b""]
    assert p.state == CLOSED
    assert not p.close_expected()
    # 1.4: "discards any further data received"
    p.receive_data(frame(OP_PING, b"late"))
    assert p.events_received() == []
    p.receive_eof()
    assert p.data_to_send() == []
    assert (p.close_code, p.close_reason) == (1001, "bye")
    assert p.exc is None
    with pytest.raises(InvalidState):
        p.send_text(b"too late")


def test_server_initiated_close(make: Factory) -> None:
    p = make()
    p.send_close(1001, "going away")
    assert p.data_to_send() == [build_close(1001, "going away")]
    assert p.state == CLOSING
    assert p.close_expected()
    assert no_close_yet(p)
    with pytest.raises(InvalidState):
        p.send_text(b"x")
    with pytest.raises(InvalidState):
        p.send_binary(b"x")
    with pytest.raises(InvalidState):
        p.send_close()
    p.send_ping(b"still there?")  # control frames may follow a close
    assert p.data_to_send() == [b"\x89\x0cstill there?"]
    # Data sent by the peer before it saw our close is still delivered; pings still answered.
    p.receive_data(frame(OP_TEXT, b"in flight") + frame(OP_PING, b"x"))
    assert p.events_received() == [(OP_TEXT, b"in flight"), (OP_PING, b"x")]
    assert p.data_to_send() == [b"\x8a\x01x"]
    p.receive_data(close_frame(1001))
    assert p.events_received() == [(OP_CLOSE, (1001, ""))]
    assert p.data_to_send() == [b""]  # no second close frame
    assert p.state == CLOSED
    assert p.close_sent == (1001, "going away")
    assert (p.close_code, p.close_reason) == (1001, "")


def test_server_close_then_eof_without_reply(make: Factory) -> None:
    p = make()
    p.send_close()
    p.data_to_send()
    p.receive_eof()
    assert p.data_to_send() == [b""]
    assert p.state == CLOSED
    assert isinstance(p.exc, EOFError)
    assert p.close_code == 1000


def test_close_during_fragmented_message(make: Factory) -> None:
    """5.4 allows control frames between fragments, the close frame included."""
    p = make()
    p.receive_data(frame(OP_TEXT, b"frag", fin=False) + close_frame(1000) + frame(OP_CONT, b"ment"))
    assert p.events_received() == [(OP_CLOSE, (1000, ""))]
    assert p.data_to_send() == [b"\x88\x02\x03\xe8", b""]
    assert p.buffered == 0


def test_unexpected_eof(make: Factory) -> None:
    p = make()
    p.receive_data(frame(OP_TEXT, b"partial message")[:10])
    p.receive_eof()
    assert p.data_to_send() == [b""]
    assert p.events_received() == []
    assert p.state == CLOSED
    assert p.close_code == CloseCode.ABNORMAL
    assert p.close_reason == ""
    assert isinstance(p.exc, EOFError)
    p.receive_eof()
    p.receive_data(frame(OP_TEXT, b"after eof"))
    assert p.data_to_send() == []
    assert p.events_received() == []


def test_fail(make: Factory) -> None:
    p = make()
    p.fail(CloseCode.POLICY_VIOLATION, "slow consumer")
    assert p.data_to_send() == [build_close(1008, "slow consumer"), b""]
    assert p.state == CLOSED
    assert p.close_code == 1008
    assert p.exc is None
    p.fail(1011)  # idempotent once closed
    assert p.data_to_send() == []


def test_fail_abnormal_sends_no_close_frame(make: Factory) -> None:
    p = make()
    p.fail(1006)
    assert p.data_to_send() == [b""]
    assert p.close_code == 1006


def test_fail_while_closing(make: Factory) -> None:
    p = make()
    p.send_close(1000)
    p.data_to_send()
    p.fail(1002)
    assert p.data_to_send() == [b""]


# Sending.


def test_send_frames(make: Factory) -> None:
    p = make()
    p.send_text(b'{"a":1}')
    p.send_binary(b"\x00\x01")
    p.send_ping()
    p.send_ping(b"x")
    p.send_pong(b"y")
    shared = build_frame(OP_TEXT, b"broadcast")
    p.send_frame(shared)
    writes = p.data_to_send()
    assert writes == [
        b'\x81\x07{"a":1}',
        b"\x82\x02\x00\x01",
        b"\x89\x00",
        b"\x89\x01x",
        b"\x8a\x01y",
        shared,
    ]
    assert writes[-1] is shared  # built once, the same object for every receiver


def test_send_large_text(make: Factory) -> None:
    p = make()
    payload = b"a" * 70000
    p.send_text(payload)
    assert p.data_to_send() == [b"\x81\x7f" + (70000).to_bytes(8, "big") + payload]


def test_send_after_close_raises(make: Factory) -> None:
    p = make()
    p.receive_data(close_frame(1000))
    for send in (p.send_text, p.send_binary, p.send_frame, p.send_ping, p.send_pong):
        with pytest.raises(InvalidState):
            send(b"x")
    with pytest.raises(AssertionError):  # InvalidState is a misuse, like websockets'
        p.send_close()


def test_send_invalid_control_frames(make: Factory) -> None:
    p = make()
    with pytest.raises(ValueError):
        p.send_ping(b"x" * 126)
    with pytest.raises(ValueError):
        p.send_close(1005, "reason without code")
    with pytest.raises(ValueError):
        p.send_close(999)
    assert p.state == OPEN
    p.send_close(1005)
    assert p.data_to_send() == [b"\x88\x00"]


AUTOBAHN_6_4_PARTS = {
    # 6.4.1 / 6.4.3: the second part holds the first impossible byte (\x90 after \xf4).
    "6.4.1": ("\u03ba\u1f79\u03c3\u03bc\u03b5".encode(), b"\xf4\x90\x80\x80", b"edited", 2),
    # 6.4.2 / 6.4.4: \xf4 alone may still start U+100000..U+10FFFF; the third part cannot.
    "6.4.2": ("\u03ba\u1f79\u03c3\u03bc\u03b5".encode(), b"\xf4", b"\x90\x80\x80edited", 3),
}


@pytest.mark.parametrize("chops", [False, True], ids=["frames", "chops"])
@pytest.mark.parametrize("case", list(AUTOBAHN_6_4_PARTS), ids=list(AUTOBAHN_6_4_PARTS))
def test_autobahn_6_4_fail_fast(make: Factory, case: str, chops: bool) -> None:
    """Fail on the part that makes the text impossible: 6.4.1-2 in frames, 6.4.3-4 in one frame."""
    *parts, failing_part = AUTOBAHN_6_4_PARTS[case]
    if chops:
        data = frame(OP_TEXT, b"".join(parts))
        head = 6 + len(parts[0])
        sends = [data[:head], data[head : head + len(parts[1])], data[head + len(parts[1]) :]]
    else:
        sends = [
            frame(OP_TEXT, parts[0], fin=False),
            frame(OP_CONT, parts[1], fin=False),
            frame(OP_CONT, parts[2]),
        ]
    p = make()
    for number, chunk in enumerate(sends, 1):
        p.receive_data(chunk)
        if number < failing_part:
            assert p.data_to_send() == [], number
    assert_failed(p, 1007)
