"""Frame building, masking and UTF-8 validation, each run against both twins (py and c)."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fasthub._wire import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT


def twin_params(base: str) -> list[object]:
    """Module names of the pure twin and of the compiled one, skipped only when it is not built."""
    compiled = f"fasthub._wire.{base}_c"
    return [
        pytest.param(f"fasthub._wire.{base}_py", id="py"),
        pytest.param(
            compiled,
            id="c",
            marks=pytest.mark.skipif(importlib.util.find_spec(compiled) is None, reason="extension not built"),
        ),
    ]


@pytest.fixture(params=twin_params("frames"))
def frames(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


@pytest.fixture(params=twin_params("mask"))
def mask(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


@pytest.fixture(params=twin_params("utf8"))
def utf8(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


# Frame building.


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, b"\x81\x00"),
        (1, b"\x81\x01"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (0xFFFF, b"\x81\x7e\xff\xff"),
        (0x10000, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_build_frame_length_encodings(frames: ModuleType, length: int, header: bytes) -> None:
    payload = bytes(i & 0xFF for i in range(length))
    frame = frames.build_frame(OP_TEXT, payload)
    assert type(frame) is bytes
    assert frame == header + payload
    assert frames.build_header(OP_TEXT, length) == header


def test_build_header_64_bit(frames: ModuleType) -> None:
    assert frames.build_header(OP_BINARY, 2**63 - 1) == b"\x82\x7f\x7f" + b"\xff" * 7
    with pytest.raises(ValueError):
        frames.build_header(OP_BINARY, 2**63)
    with pytest.raises(ValueError):
        frames.build_header(OP_BINARY, -1)


@pytest.mark.parametrize(
    ("opcode", "fin", "rsv1", "first"),
    [
        (OP_TEXT, True, False, 0x81),
        (OP_BINARY, True, False, 0x82),
        (OP_TEXT, False, False, 0x01),
        (OP_CONT, False, False, 0x00),
        (OP_CONT, True, False, 0x80),
        (OP_TEXT, True, True, 0xC1),
        (OP_BINARY, False, True, 0x42),
        (OP_CLOSE, True, False, 0x88),
        (OP_PING, True, False, 0x89),
        (OP_PONG, True, False, 0x8A),
    ],
)
def test_build_frame_first_byte(frames: ModuleType, opcode: int, fin: bool, rsv1: bool, first: int) -> None:
    assert frames.build_frame(opcode, b"ab", fin, rsv1) == bytes((first, 2)) + b"ab"
    assert frames.build_header(opcode, 2, fin=fin, rsv1=rsv1) == bytes((first, 2))


def test_build_frame_accepts_bytes_like(frames: ModuleType) -> None:
    assert frames.build_frame(OP_BINARY, bytearray(b"xy")) == b"\x82\x02xy"
    assert frames.build_frame(OP_BINARY, memoryview(b"xy")) == b"\x82\x02xy"


def test_build_frame_is_built_once_and_shareable(frames: ModuleType) -> None:
    frame = frames.build_frame(OP_TEXT, b'{"type":"message"}')
    # An immutable bytes: the same object can go to every receiver.
    assert isinstance(frame, bytes)
    assert frames.build_header(OP_TEXT, 18) + b'{"type":"message"}' == frame


@pytest.mark.parametrize(
    ("opcode", "payload", "fin"),
    [
        (OP_PING, b"x" * 126, True),
        (OP_CLOSE, b"x" * 126, True),
        (OP_PONG, b"", False),
        (3, b"", True),
        (7, b"", True),
        (0xB, b"", True),
        (0xF, b"", True),
        (16, b"", True),
        (-1, b"", True),
    ],
)
def test_build_frame_refuses_invalid(frames: ModuleType, opcode: int, payload: bytes, fin: bool) -> None:
    with pytest.raises(ValueError):
        frames.build_frame(opcode, payload, fin)


def test_build_close(frames: ModuleType) -> None:
    assert frames.build_close(1000) == b"\x88\x02\x03\xe8"
    assert frames.build_close(1001, "bye") == b"\x88\x05\x03\xe9bye"
    assert frames.build_close(4999, "é") == b"\x88\x04\x13\x87\xc3\xa9"
    assert frames.build_close(1005) == b"\x88\x00"
    assert frames.build_close(1000, "x" * 123)[1] == 125


@pytest.mark.parametrize("code", [0, 999, 1004, 1006, 1015, 1016, 2999, 5000, 65535])
def test_build_close_refuses_invalid_codes(frames: ModuleType, code: int) -> None:
    with pytest.raises(ValueError):
        frames.build_close(code)


def test_build_close_refuses_bad_reason(frames: ModuleType) -> None:
    with pytest.raises(ValueError):
        frames.build_close(1000, "x" * 124)
    with pytest.raises(ValueError):
        frames.build_close(1005, "no code, no reason")


def test_close_code_allowed(frames: ModuleType) -> None:
    allowed = {c for c in range(70000) if frames.close_code_allowed(c)}
    expected = {1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)}
    assert allowed == expected


# Masking.


def reference_mask(data: bytes, key: bytes, phase: int = 0) -> bytes:
    return bytes(b ^ key[(i + phase) % 4] for i, b in enumerate(data))


@pytest.mark.parametrize("length", [*range(0, 34), 1000, 4097])
def test_apply_mask(mask: ModuleType, length: int) -> None:
    data = bytes((i * 7 + 3) & 0xFF for i in range(length))
    key = b"\x01\x80\xfe\x37"
    masked = mask.apply_mask(data, key)
    assert type(masked) is bytes
    assert masked == reference_mask(data, key)
    assert mask.apply_mask(masked, key) == data


def test_apply_mask_bytes_like(mask: ModuleType) -> None:
    key = b"abcd"
    expected = reference_mask(b"hello world", key)
    assert mask.apply_mask(bytearray(b"hello world"), key) == expected
    assert mask.apply_mask(memoryview(b"hello world"), key) == expected
    with pytest.raises(ValueError):
        mask.apply_mask(b"data", b"abc")


@pytest.mark.parametrize("phase", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("length", [0, 1, 3, 8, 9, 17])
def test_unmask_append(mask: ModuleType, phase: int, length: int) -> None:
    data = b"...." + bytes(range(100, 100 + length)) + b"...."
    key = b"\x11\x22\x33\x44"
    buf = bytearray(b"prefix")
    assert mask.unmask_append(buf, data, 4, 4 + length, key, phase) is None
    assert buf == b"prefix" + reference_mask(data[4 : 4 + length], key, phase % 4)


def test_unmask_payload(mask: ModuleType) -> None:
    key = b"\x0f\xf0\xaa\x55"
    data = b"\x81\x85" + key + reference_mask(b"hello", key) + b"rest"
    assert mask.unmask_payload(data, 2, 5) == b"hello"
    assert mask.unmask_payload(data, 2, 0) == b""
    with pytest.raises(ValueError):
        mask.unmask_payload(data, 2, 100)


def test_unmask_range_checks(mask: ModuleType) -> None:
    with pytest.raises(ValueError):
        mask.unmask_append(bytearray(), b"abc", 2, 1, b"abcd", 0)
    with pytest.raises(ValueError):
        mask.unmask_append(bytearray(), b"abc", 0, 4, b"abcd", 0)
    with pytest.raises(ValueError):
        mask.unmask_append(bytearray(), b"abc", 0, 3, b"abc", 0)


@given(data=st.binary(max_size=300), key=st.binary(min_size=4, max_size=4), phase=st.integers(0, 3))
@settings(max_examples=150, deadline=None)
def test_mask_twins_agree(data: bytes, key: bytes, phase: int) -> None:
    pure = importlib.import_module("fasthub._wire.mask_py")
    assert pure.apply_mask(data, key) == reference_mask(data, key)
    if importlib.util.find_spec("fasthub._wire.mask_c") is None:
        return
    compiled = importlib.import_module("fasthub._wire.mask_c")
    assert compiled.apply_mask(data, key) == pure.apply_mask(data, key)
    a, b = bytearray(b"x"), bytearray(b"x")
    compiled.unmask_append(a, data, 0, len(data), key, phase)
    pure.unmask_append(b, data, 0, len(data), key, phase)
    assert a == b


# UTF-8 validation.

VALID_UTF8 = [
    b"",
    b"ascii only, quite long to cross the 8-byte fast path boundary",
    "é".encode(),
    "€".encode(),
    "𝄞".encode(),
    "\U0010ffff".encode(),
    "\ud7ff".encode(),
    "\ue000".encode(),
    "κόσμε".encode(),
    "mixed ascii and ☃ and 𝄞 and é".encode(),
]

INVALID_UTF8 = [
    b"\x80",  # lone continuation
    b"\xbf",
    b"\xc0\xaf",  # overlong /
    b"\xc1\xbf",
    b"\xe0\x80\xaf",  # overlong 3-byte
    b"\xe0\x9f\xbf",
    b"\xf0\x80\x80\xaf",  # overlong 4-byte
    b"\xf0\x8f\xbf\xbf",
    b"\xed\xa0\x80",  # surrogate U+D800
    b"\xed\xbf\xbf",  # surrogate U+DFFF
    b"\xf4\x90\x80\x80",  # U+110000
    b"\xf5\x80\x80\x80",
    b"\xff",
    b"\xfe",
    b"\xc3",  # truncated
    b"\xe2\x82",
    b"\xf0\x9d\x84",
    b"abc\xc3(",  # bad continuation
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",  # Autobahn 6.3.1
]


@pytest.mark.parametrize("data", VALID_UTF8)
def test_valid_utf8(utf8: ModuleType, data: bytes) -> None:
    assert utf8.is_valid_utf8(data)
    assert utf8.is_valid_utf8(bytearray(data))
    for split in range(len(data) + 1):
        v = utf8.Utf8Validator()
        assert v.feed(data, 0, split)
        assert v.feed(data, split, len(data))
        assert v.complete()


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_invalid_utf8(utf8: ModuleType, data: bytes) -> None:
    assert not utf8.is_valid_utf8(data)
    v = utf8.Utf8Validator()
    assert not (v.feed(data, 0, len(data)) and v.complete())


def first_bad_prefix(data: bytes) -> int | None:
    """Length of the shortest prefix that no valid UTF-8 string starts with (reference)."""
    for n in range(1, len(data) + 1):
        prefix = data[:n]
        # A prefix is completable iff appending at most 3 continuation bytes can make it valid.
        if not any(
            _decodes(prefix + tail)
            for tail in (b"", b"\x80", b"\x80\x80", b"\x80\x80\x80", b"\x90\x80\x80", b"\xa0\x80")
        ):
            return n
    return None


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("data", INVALID_UTF8 + VALID_UTF8)
def test_utf8_fails_on_first_bad_byte(utf8: ModuleType, data: bytes) -> None:
    """Fed one byte at a time, the validator fails exactly at the first impossible byte."""
    bad = first_bad_prefix(data)
    v = utf8.Utf8Validator()
    failed_at = None
    for i in range(len(data)):
        if not v.feed(data, i, i + 1):
            failed_at = i + 1
            break
    assert failed_at == bad
    v.reset()
    assert v.complete()
    assert v.feed(b"ok", 0, 2)


utf8_chunks = st.lists(
    st.one_of(
        st.text(max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.binary(max_size=6),
        st.sampled_from([b"\xed", b"\xa0", b"\x80", b"\xf4", b"\x90", b"\xe0", b"\xc3", b"\xf0"]),
    ),
    max_size=8,
)


@given(chunks=utf8_chunks)
@settings(max_examples=300, deadline=None)
def test_utf8_twins_agree_chunk_by_chunk(chunks: list[bytes]) -> None:
    """Same verdict after every chunk as the byte-exact reference, for both twins."""
    modules = [importlib.import_module("fasthub._wire.utf8_py")]
    if importlib.util.find_spec("fasthub._wire.utf8_c") is not None:
        modules.append(importlib.import_module("fasthub._wire.utf8_c"))
    data = b"".join(chunks)
    bad = first_bad_prefix(data)
    for module in modules:
        v = module.Utf8Validator()
        seen = 0
        for chunk in chunks:
            seen += len(chunk)
            ok = v.feed(chunk, 0, len(chunk))
            assert ok == (bad is None or bad > seen), (module.__name__, chunks)
        assert v.complete() == _decodes(data)
        assert module.is_valid_utf8(data) == _decodes(data)


# Bytes where UTF-8 rules change: ASCII edges, continuation sub-ranges, every special lead byte.
UTF8_BOUNDARY_BYTES = bytes.fromhex("00 7f 80 8f 90 9f a0 bf c0 c1 c2 df e0 e1 ed ef f0 f3 f4 f5 ff")


@pytest.mark.skipif(importlib.util.find_spec("fasthub._wire.utf8_c") is None, reason="extension not built")
def test_utf8_twins_agree_exhaustively() -> None:
    """Byte by byte and at once, on every 2-byte sequence and boundary sequences up to 4 bytes."""
    import itertools

    pure = importlib.import_module("fasthub._wire.utf8_py")
    compiled = importlib.import_module("fasthub._wire.utf8_c")

    def verdicts(module: ModuleType, seq: bytes) -> tuple[object, ...]:
        v = module.Utf8Validator()
        steps = tuple(v.feed(seq, i, i + 1) for i in range(len(seq)))
        whole = module.Utf8Validator()
        return steps, v.complete(), whole.feed(seq, 0, len(seq)), whole.complete()

    sequences = [bytes(p) for p in itertools.product(range(256), repeat=2)]
    for n in (3, 4):
        sequences += [bytes(p) for p in itertools.product(UTF8_BOUNDARY_BYTES, repeat=n)]
    for seq in sequences:
        assert verdicts(pure, seq) == verdicts(compiled, seq), seq
