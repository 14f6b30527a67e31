"""The compiled engine and its pure twin agree byte for byte; neither crashes, hangs or bloats.

Hypothesis builds client frame streams, valid and invalid (random opcodes, FIN, RSV, masks,
length encodings, payloads with invalid UTF-8, close codes), cuts them at random boundaries and
feeds both twins the same chunks: after every chunk they must return the same events, the same
bytes to send and the same state.
"""

from __future__ import annotations

import importlib
import importlib.util
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fasthub._wire import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, InvalidState
from fasthub._wire.testing import encode_frame

COMPILED_BUILT = importlib.util.find_spec("fasthub._wire.protocol_c") is not None
needs_compiled = pytest.mark.skipif(not COMPILED_BUILT, reason="extension not built")

#: what a stuck header or control frame may hold besides the message: 6 + 125 bytes
TAIL_MAX = 131

LIMITS = st.sampled_from([0, 40, 300, 512 * 1024])

keys = st.binary(min_size=4, max_size=4)

payloads = st.one_of(
    st.text(max_size=30).map(lambda s: s.encode()),  # valid UTF-8
    st.binary(max_size=30),  # mostly invalid as text
    st.text(min_size=1, max_size=10).map(lambda s: s.encode()[:-1]),  # often truncated
    st.sampled_from([b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc3", b"\xe2\x82", b"\xce\xba"]),
    st.binary(min_size=126, max_size=300),  # 16-bit lengths
)

close_payloads = st.one_of(
    st.just(b""),
    st.binary(max_size=1),
    st.tuples(
        st.sampled_from([1000, 1001, 1005, 1006, 1007, 1015, 2999, 3000, 4999, 5000, 0]),
        st.one_of(st.text(max_size=20).map(lambda s: s.encode()), st.binary(max_size=8)),
    ).map(lambda t: t[0].to_bytes(2, "big") + t[1]),
)

OPCODES = [OP_CONT] * 3 + [OP_TEXT] * 3 + [OP_BINARY] * 2 + [OP_CLOSE, OP_PING, OP_PING, OP_PONG, 3, 0xB]


@st.composite
def random_frame(draw: st.DrawFn) -> bytes:
    opcode = draw(st.sampled_from(OPCODES))
    payload = draw(close_payloads if opcode == OP_CLOSE else payloads)
    return encode_frame(
        opcode,
        payload,
        fin=draw(st.sampled_from([True, True, False])),
        rsv=draw(st.sampled_from([0] * 12 + [1, 2, 4])),
        mask=draw(st.one_of(keys, keys, keys, keys, keys, keys, keys, st.none())),
        width=draw(st.sampled_from([None] * 6 + [16, 64])),
    )


@st.composite
def fragmented_message(draw: st.DrawFn) -> bytes:
    """A well-formed message in fragments with control frames in between."""
    opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
    data = draw(payloads)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    out = []
    for i, piece in enumerate(pieces):
        out.append(encode_frame(opcode if i == 0 else OP_CONT, piece, fin=i == len(pieces) - 1, mask=draw(keys)))
        if draw(st.booleans()):
            out.append(encode_frame(draw(st.sampled_from([OP_PING, OP_PONG])), draw(st.binary(max_size=8))))
    return b"".join(out)


streams = st.lists(st.one_of(random_frame(), fragmented_message(), fragmented_message()), max_size=8).map(b"".join)


@st.composite
def chunked(draw: st.DrawFn, data_strategy: st.SearchStrategy[bytes]) -> list[bytes]:
    data = draw(data_strategy)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


ACTIONS = st.sampled_from(["none", "none", "none", "ping", "text", "close", "fail"])


def observe(p: Any) -> tuple[object, ...]:
    exc = p.exc
    return (
        p.events_received(),
        p.data_to_send(),
        p.state,
        p.close_code,
        p.close_reason,
        p.close_sent,
        p.close_received,
        p.buffered,
        None if exc is None else (type(exc), getattr(exc, "code", None), str(exc)),
    )


def act(p: Any, action: str) -> object:
    try:
        if action == "ping":
            p.send_ping(b"hb")
        elif action == "text":
            p.send_text(b'{"ok":true}')
        elif action == "close":
            p.send_close(1001, "bye")
        elif action == "fail":
            p.fail(1008, "policy")
    except InvalidState as exc:
        return type(exc)
    return None


@needs_compiled
@given(
    chunks=chunked(streams),
    limit=LIMITS,
    action=ACTIONS,
    action_at=st.integers(0, 12),
    eof=st.booleans(),
)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_twins_agree(chunks: list[bytes], limit: int, action: str, action_at: int, eof: bool) -> None:
    pure = importlib.import_module("fasthub._wire.protocol_py").ServerProtocol(limit)
    compiled = importlib.import_module("fasthub._wire.protocol_c").ServerProtocol(limit)
    for i, chunk in enumerate(chunks):
        if i == action_at:
            assert act(pure, action) == act(compiled, action)
        pure.receive_data(chunk)
        compiled.receive_data(chunk)
        seen = observe(pure)
        assert seen == observe(compiled), i
        if seen[0]:
            event("delivered events")
    if eof:
        pure.receive_eof()
        compiled.receive_eof()
    event(f"close code {pure.close_code}")
    assert observe(pure) == observe(compiled)


@needs_compiled
@given(
    chunks=chunked(st.binary(max_size=600)),
    limit=LIMITS,
)
@settings(max_examples=200, deadline=None)
def test_twins_agree_on_random_bytes(chunks: list[bytes], limit: int) -> None:
    pure = importlib.import_module("fasthub._wire.protocol_py").ServerProtocol(limit)
    compiled = importlib.import_module("fasthub._wire.protocol_c").ServerProtocol(limit)
    for chunk in chunks:
        pure.receive_data(chunk)
        compiled.receive_data(chunk)
        assert observe(pure) == observe(compiled)


# Fuzzing: no exception escapes, no hang (deadline), buffering stays within the limit.


def twin_params() -> list[object]:
    return [
        pytest.param("fasthub._wire.protocol_py", id="py"),
        pytest.param("fasthub._wire.protocol_c", id="c", marks=needs_compiled),
    ]


def check_bounded(p: Any, limit: int) -> None:
    assert p.buffered <= limit + TAIL_MAX
    for opcode, data in p.events_received():
        if opcode in (OP_TEXT, OP_BINARY):
            assert len(data) <= limit
    p.data_to_send()


@st.composite
def lying_headers(draw: st.DrawFn) -> bytes:
    """Frames whose headers claim any length at all, followed by a little of anything."""
    width = draw(st.sampled_from([7, 16, 64]))
    header = encode_frame(
        draw(st.integers(0, 15)),
        b"",
        fin=draw(st.booleans()),
        rsv=draw(st.integers(0, 7)),
        mask=draw(st.one_of(keys, st.none())),
        width=width,
        length=draw(st.integers(0, {7: 125, 16: 2**16 - 1, 64: 2**64 - 1}[width])),
    )
    return header + draw(st.binary(max_size=200))


@pytest.mark.parametrize("module", twin_params())
@given(
    chunks=chunked(st.one_of(st.binary(max_size=2000), streams, st.lists(lying_headers()).map(b"".join))),
    limit=st.sampled_from([40, 300, 4096]),
)
@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz(module: str, chunks: list[bytes], limit: int) -> None:
    p = importlib.import_module(module).ServerProtocol(limit)
    for chunk in chunks:
        p.receive_data(chunk)
        check_bounded(p, limit)
    p.receive_eof()
    check_bounded(p, limit)
    assert p.state == 3  # CLOSED


@pytest.mark.parametrize("module", twin_params())
def test_fuzz_long_random_stream(module: str) -> None:
    """Mostly valid traffic in random chunks, with noise now and then, and a small limit."""
    rng = random.Random(6455)
    cls = importlib.import_module(module).ServerProtocol
    delivered = 0
    for _ in range(100):
        p = cls(1024)
        parts = []
        for _ in range(rng.randint(1, 30)):
            roll = rng.random()
            if roll < 0.02:
                parts.append(rng.randbytes(rng.randint(1, 40)))
            elif roll < 0.5:
                count = rng.randint(1, 4)
                for i in range(count):
                    opcode = OP_BINARY if i == 0 else OP_CONT
                    parts.append(encode_frame(opcode, rng.randbytes(rng.randint(0, 300)), fin=i == count - 1))
            elif roll < 0.6:
                parts.append(encode_frame(OP_PING, rng.randbytes(rng.randint(0, 125))))
            else:
                chars = [chr(rng.choice([0x41, 0xE9, 0x20AC, 0x1D11E])) for _ in range(rng.randint(0, 200))]
                parts.append(encode_frame(OP_TEXT, "".join(chars).encode()))
        data = b"".join(parts)
        pos = 0
        while pos < len(data):
            step = rng.randint(1, 700)
            p.receive_data(data[pos : pos + step])
            delivered += len(p.events_received())
            check_bounded(p, 1024)
            pos += step
    assert delivered > 300
