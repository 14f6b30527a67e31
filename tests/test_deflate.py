"""permessage-deflate (RFC 7692): negotiation, the shared compressor, the engine's inflating
(both twins), frames built once per window, and real servers with real clients."""

from __future__ import annotations

import importlib
import json
import os
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import websockets
from conftest import RawClient, Server, connect, run, serve
from hypothesis import given, settings
from hypothesis import strategies as st

from fasthub import HubConfig
from fasthub._core import KIND_BINARY, KIND_CLOSE, KIND_PLAIN, KIND_TEXT, Payload
from fasthub._core.forms import Forms
from fasthub._wire import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, ProtocolError, build_frame
from fasthub._wire.deflate import (
    INFLATE_CONTEXT,
    INFLATE_PER_MESSAGE,
    TAIL,
    Deflater,
    negotiate,
    parse_offers,
)
from fasthub._wire.testing import encode_frame as frame
from fasthub.server.echo import echo_app

Factory = Callable[..., Any]
RSV1 = 4  # encode_frame's rsv bits: RSV1 is the highest


def twin(base: str) -> list[Any]:
    return [pytest.param(f"fasthub._wire.{base}_py", id="py"), pytest.param(f"fasthub._wire.{base}_c", id="c")]


@pytest.fixture(params=twin("protocol"))
def make(request: pytest.FixtureRequest) -> Factory:
    try:
        return importlib.import_module(request.param).ServerProtocol  # type: ignore[no-any-return]
    except ImportError:
        pytest.skip("extension not built")


def deflate(data: bytes, wbits: int = 15) -> bytes:
    """One message as a client compresses it without context (7.2.1: the tail removed)."""
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def inflate(data: bytes, wbits: int = 15) -> bytes:
    return zlib.decompressobj(-wbits).decompress(data + TAIL)


def unframe(data: bytes) -> bytes:
    """The payload of one unmasked server frame."""
    n = data[1] & 0x7F
    start = 2 if n < 126 else 4 if n == 126 else 10
    return data[start:]


TEXT = json.dumps({"type": "room_message", "room": "r", "payload": {"text": "hello world " * 40}}).encode()


# -- negotiation ----------------------------------------------------------------------------------


def test_parse_offers_keeps_order_params_and_quotes() -> None:
    offers = parse_offers(
        [b'permessage-deflate; client_max_window_bits="10"; server_no_context_takeover, x-webkit; a=b', b"other"]
    )
    assert offers == [
        ("permessage-deflate", [("client_max_window_bits", "10"), ("server_no_context_takeover", None)]),
        ("x-webkit", [("a", "b")]),
        ("other", []),
    ]


@pytest.mark.parametrize(
    ("offer", "response", "server_bits", "client_ncc"),
    [
        # what Chromium sends
        (
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            15,
            True,
        ),
        ("permessage-deflate", "permessage-deflate; server_no_context_takeover; client_no_context_takeover", 15, True),
        (
            "permessage-deflate; server_max_window_bits=10; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10",
            10,
            True,
        ),
        (
            'permessage-deflate; server_max_window_bits="8"',
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=8",
            8,
            True,
        ),
    ],
)
def test_negotiate_accepts(offer: str, response: str, server_bits: int, client_ncc: bool) -> None:
    params = negotiate([offer.encode()])
    assert params is not None
    assert params.response.decode() == response
    assert params.server_bits == server_bits
    assert params.client_no_context_takeover is client_ncc
    assert params.inflate_mode == INFLATE_PER_MESSAGE


def test_negotiate_lets_clients_keep_their_context_when_allowed() -> None:
    params = negotiate([b"permessage-deflate; client_max_window_bits"], client_context=True)
    assert params is not None
    assert params.response == b"permessage-deflate; server_no_context_takeover"
    assert params.inflate_mode == INFLATE_CONTEXT
    # a client that offers to reset its context is taken at its word
    params = negotiate([b"permessage-deflate; client_no_context_takeover"], client_context=True)
    assert params is not None and params.inflate_mode == INFLATE_PER_MESSAGE


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; unknown_param",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; server_max_window_bits",  # a value is required
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; client_max_window_bits=abc",
        "permessage-deflate; client_no_context_takeover=1",
        "x-webkit-deflate-frame",
        'permessage-deflate; client_max_window_bits="10',  # unterminated quote
    ],
)
def test_negotiate_declines_what_it_cannot_honour(offer: str) -> None:
    assert negotiate([offer.encode()]) is None


def test_negotiate_takes_the_first_acceptable_of_several_offers() -> None:
    params = negotiate([b"permessage-deflate; bogus, permessage-deflate; server_max_window_bits=12"])
    assert params is not None and params.server_bits == 12


# -- the shared compressor ---------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 9, 12, 15])
def test_each_message_decodes_on_its_own(bits: int) -> None:
    d = Deflater()
    messages = [TEXT, TEXT, TEXT[:200] * 3, os.urandom(300), TEXT]
    for msg in messages:
        packed = d.compress(msg, bits)
        assert not packed.endswith(TAIL)
        # a fresh inflater with the window the client asked for: nothing refers to an earlier message
        assert zlib.decompressobj(-bits).decompress(packed + TAIL) == msg


def test_window_8_stays_within_256_bytes() -> None:
    """Inflated one byte at a time with a 256-byte window, every copy must come from it."""
    d = Deflater()
    msg = (b"abcdefghij" * 30 + bytes(range(200))) * 20
    packed = d.compress(msg, 8) + TAIL
    inflater = zlib.decompressobj(-8)
    out = b"".join(inflater.decompress(packed[i : i + 1]) for i in range(len(packed)))
    assert out == msg


def test_deflater_refuses_other_windows() -> None:
    with pytest.raises(ValueError, match="8-15"):
        Deflater().compress(b"x" * 500, 16)


# -- the engine: inflating client messages (both twins) ----------------------------------------


def test_compressed_message_is_inflated(make: Factory) -> None:
    p = make(1000, INFLATE_PER_MESSAGE)
    p.receive_data(frame(OP_TEXT, deflate(TEXT[:900]), rsv=RSV1) + frame(OP_BINARY, deflate(b"\x00" * 900), rsv=RSV1))
    assert p.events_received() == [(OP_TEXT, TEXT[:900]), (OP_BINARY, b"\x00" * 900)]
    assert p.exc is None


def test_uncompressed_messages_stay_allowed(make: Factory) -> None:
    p = make(1000, INFLATE_PER_MESSAGE)
    p.receive_data(frame(OP_TEXT, b"plain") + frame(OP_TEXT, deflate(b"packed"), rsv=RSV1))
    assert p.events_received() == [(OP_TEXT, b"plain"), (OP_TEXT, b"packed")]


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=30), fragments=st.integers(1, 5))
def test_fragmented_compressed_message_any_split(cuts: list[int], fragments: int) -> None:
    """Fragments and reads split anywhere: both twins deliver the same inflated message."""
    packed = deflate(TEXT)
    step = -(-len(packed) // fragments)
    parts = [packed[i : i + step] for i in range(0, len(packed), step)]
    stream = b"".join(
        frame(OP_TEXT if i == 0 else OP_CONT, part, fin=i == len(parts) - 1, rsv=RSV1 if i == 0 else 0)
        for i, part in enumerate(parts)
    ) + frame(OP_PING, b"x")
    results = []
    for name in ("fasthub._wire.protocol_py", "fasthub._wire.protocol_c"):
        try:
            cls = importlib.import_module(name).ServerProtocol
        except ImportError:
            continue
        p = cls(10_000, INFLATE_PER_MESSAGE)
        pos = 0
        for cut in cuts:
            p.receive_data(stream[pos : pos + cut])
            pos += cut
        p.receive_data(stream[pos:])
        results.append((p.events_received(), p.data_to_send(), p.exc))
    assert results[0][0] == [(OP_TEXT, TEXT), (OP_PING, b"x")]
    assert all(r == results[0] for r in results)


def _assert_failed(p: Any, code: int, reason: str) -> None:
    assert isinstance(p.exc, ProtocolError), p.exc
    assert (p.exc.code, p.exc.reason) == (code, reason)
    writes = p.data_to_send()
    assert writes[-1] == b"" and writes[0][0] == 0x88
    assert int.from_bytes(writes[0][2:4], "big") == code


@pytest.mark.parametrize("split", [False, True])
def test_bomb_fails_with_1009_while_inflating(make: Factory, split: bool) -> None:
    """10 MB of zeros is 10 KB compressed: it fails at the limit, never inflated further."""
    bomb = frame(OP_BINARY, deflate(b"\x00" * 10_000_000), rsv=RSV1)
    assert len(bomb) < 20_000
    p = make(1000, INFLATE_PER_MESSAGE)
    if split:
        for i in range(0, len(bomb), 100):
            p.receive_data(bomb[i : i + 100])
    else:
        p.receive_data(bomb)
    _assert_failed(p, 1009, "message too big")
    assert p.events_received() == []
    assert p.buffered == 0


def test_inflated_size_exactly_at_the_limit_passes(make: Factory) -> None:
    p = make(1000, INFLATE_PER_MESSAGE)
    p.receive_data(frame(OP_TEXT, deflate(b"a" * 1000), rsv=RSV1))
    assert p.events_received() == [(OP_TEXT, b"a" * 1000)]
    p.receive_data(frame(OP_TEXT, deflate(b"a" * 1001), rsv=RSV1))
    _assert_failed(p, 1009, "message too big")


@pytest.mark.parametrize(
    ("inflate", "data", "code", "reason"),
    [
        (0, frame(OP_TEXT, deflate(b"hello"), rsv=RSV1), 1002, "reserved bits must be 0"),
        (1, frame(OP_PING, b"", rsv=RSV1), 1002, "compressed control frame"),
        (1, frame(OP_CLOSE, b"\x03\xe8", rsv=RSV1), 1002, "compressed control frame"),
        (
            1,
            frame(OP_TEXT, deflate(b"hello")[:2], fin=False, rsv=RSV1) + frame(OP_CONT, b"x", rsv=RSV1),
            1002,
            "RSV1 set on a continuation frame",
        ),
        (1, frame(OP_TEXT, b"\xff\xff\xff\xff", rsv=RSV1), 1007, "invalid compressed data"),
        (1, frame(OP_TEXT, deflate(b"ok \xff\xfe"), rsv=RSV1), 1007, "invalid UTF-8 in text message"),
        (1, frame(OP_TEXT, b"x" * 10, rsv=2), 1002, "reserved bits must be 0"),  # RSV2 stays reserved
    ],
)
def test_bad_compressed_input(make: Factory, inflate: int, data: bytes, code: int, reason: str) -> None:
    p = make(1000, inflate)
    p.receive_data(data)
    _assert_failed(p, code, reason)


def test_invalid_utf8_in_a_fragmented_compressed_message(make: Factory) -> None:
    packed = deflate(b"fine " * 50 + b"\xc3\x28")
    p = make(1000, INFLATE_PER_MESSAGE)
    p.receive_data(frame(OP_TEXT, packed[:20], fin=False, rsv=RSV1) + frame(OP_CONT, packed[20:]))
    _assert_failed(p, 1007, "invalid UTF-8 in text message")


def _context_stream(n: int) -> list[bytes]:
    """Messages compressed by a client that keeps its context: the later ones refer back."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = []
    for _ in range(n):
        data = c.compress(TEXT) + c.flush(zlib.Z_SYNC_FLUSH)
        out.append(frame(OP_TEXT, data[:-4], rsv=RSV1))
    return out


def test_context_takeover_keeps_one_inflater(make: Factory) -> None:
    p = make(10_000, INFLATE_CONTEXT)
    frames = _context_stream(3)
    assert len(frames[1]) < len(frames[0]) // 4  # the second message is mostly a reference
    for f in frames:
        p.receive_data(f)
    assert p.events_received() == [(OP_TEXT, TEXT)] * 3


def test_without_context_a_reference_to_an_earlier_message_fails(make: Factory) -> None:
    p = make(10_000, INFLATE_PER_MESSAGE)
    frames = _context_stream(2)
    p.receive_data(frames[0])
    assert p.events_received() == [(OP_TEXT, TEXT)]
    p.receive_data(frames[1])
    _assert_failed(p, 1007, "invalid compressed data")


def test_final_block_is_accepted(make: Factory) -> None:
    """7.2.3.3: a sender may end a message with BFINAL set instead of a sync flush."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    packed = c.compress(TEXT) + c.flush(zlib.Z_FINISH)
    for mode in (INFLATE_PER_MESSAGE, INFLATE_CONTEXT):
        p = make(10_000, mode)
        p.receive_data(frame(OP_TEXT, packed, rsv=RSV1) + frame(OP_TEXT, deflate(b"after" * 30), rsv=RSV1))
        assert p.events_received() == [(OP_TEXT, TEXT), (OP_TEXT, b"after" * 30)]


def test_close_mid_compressed_message_drops_it(make: Factory) -> None:
    p = make(10_000, INFLATE_PER_MESSAGE)
    p.receive_data(frame(OP_TEXT, deflate(TEXT)[:10], fin=False, rsv=RSV1) + frame(OP_CLOSE, b"\x03\xe8"))
    assert p.events_received() == [(OP_CLOSE, (1000, ""))]
    assert p.buffered == 0


def test_engine_rejects_an_unknown_mode(make: Factory) -> None:
    with pytest.raises(ValueError, match="inflate"):
        make(1000, 3)


# -- frames built once per encoding ----------------------------------------------------------------


def test_payload_compressed_once_per_window() -> None:
    forms = Forms(threshold=256)
    p = Payload(KIND_TEXT, TEXT)
    frames = [p.frame_as(15, forms) for _ in range(1000)]
    assert forms.compressed == 1
    assert all(f is frames[0] for f in frames)
    assert frames[0][0] == 0x80 | 0x40 | OP_TEXT  # FIN, RSV1, text
    assert p.frame_as(12, forms) is not frames[0] and forms.compressed == 2
    assert p.frame_as(0, forms) is p.frame()  # uncompressed members: the plain frame, built once
    assert inflate(unframe(frames[0])) == TEXT


def test_small_incompressible_close_and_binary_payloads() -> None:
    forms = Forms(threshold=256)
    small = Payload(KIND_TEXT, b'{"type":"pong","payload":"' + b"p" * 200 + b'"}')
    assert small.frame_as(15, forms) is small.frame() and forms.compressed == 0
    noise = Payload(KIND_BINARY, os.urandom(1000))
    assert noise.frame_as(15, forms) is noise.frame()  # tried once, larger: sent as it is
    assert forms.compressed == 1
    close = Payload(KIND_CLOSE, b"", 1000, "bye")
    assert close.frame_as(15, forms) == close.frame()
    binary = Payload(KIND_BINARY, b"\x01" * 500)
    framed = binary.frame_as(15, forms)
    assert framed[0] == 0x80 | 0x40 | OP_BINARY and inflate(unframe(framed)) == b"\x01" * 500
    plain = Payload(KIND_PLAIN, b"x" * 500)
    assert plain.frame_as(15, forms)[0] == 0x80 | 0x40 | OP_TEXT


def test_threshold_zero_compresses_everything() -> None:
    forms = Forms(threshold=0)
    p = Payload(KIND_TEXT, b"a" * 40)
    framed = p.frame_as(15, forms)
    assert framed[0] & 0x40 and inflate(unframe(framed)) == b"a" * 40
    with pytest.raises(ValueError):
        Forms(threshold=-1)


def test_config_validates_threshold() -> None:
    with pytest.raises(ValueError, match="compression_threshold"):
        HubConfig(compression_threshold=-1)


# -- real servers, real clients -------------------------------------------------------------------


def _room_body(n: int) -> dict[str, Any]:
    return {"type": "room_message", "room": "r", "payload": {"text": "chat " * n}}


def test_broadcast_is_compressed_once_for_every_member() -> None:
    """30 compressing and 30 plain members of one room: one compression per message, every
    member gets it, compressed or not as it negotiated."""

    async def scenario(server: Server) -> None:
        packed = [await connect(server) for _ in range(30)]
        plain = [await connect(server, compression=None) for _ in range(30)]
        assert packed[0].ws.response.headers["Sec-WebSocket-Extensions"] == (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        )
        assert "Sec-WebSocket-Extensions" not in plain[0].ws.response.headers
        for c in packed + plain:
            await c.join("r")
        before = server.hub.forms.compressed
        await packed[0].send(_room_body(100))
        for c in packed + plain:
            msg = await c.expect("room_message", room="r")
            assert msg["payload"]["text"] == "chat " * 100
        assert server.hub.forms.compressed - before == 1
        stats = server.call(server.hub.stats)["compression"]
        assert stats["compressed"] == server.hub.forms.compressed and 0 < stats["bytes_out"] < stats["bytes_in"]
        from fasthub.metrics import snapshot

        values = server.call(snapshot, server.hub)["values"]
        assert values["fasthub_compressed_messages_total"] == stats["compressed"]
        assert values["fasthub_compression_bytes_total"] == {"before": stats["bytes_in"], "after": stats["bytes_out"]}
        # a message under the threshold is not compressed at all
        await packed[1].send({"type": "ping"})
        await packed[1].expect("pong")
        assert server.hub.forms.compressed - before == 1
        for c in packed + plain:
            await c.close()

    with serve(ws="fasthub", config=HubConfig(member_events_limit=0)) as server:
        run(scenario(server))


def test_raw_client_sees_rsv1_only_above_the_threshold() -> None:
    with serve(ws="fasthub") as server:
        raw = RawClient(server, "", headers={"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"})
        try:
            assert "server_no_context_takeover" in raw.headers["sec-websocket-extensions"]
            hello = raw.frame()
            assert hello is not None and raw.rsv1 is (len(inflate(hello[1])) >= 256 if raw.rsv1 else False)
            raw.send_json({"type": "ping"})
            pong = raw.frame()
            assert pong is not None and not raw.rsv1 and json.loads(pong[1])["type"] == "pong"
            raw.send_json({"type": "ping", "payload": "p" * 400})
            big = raw.frame()
            assert big is not None and raw.rsv1
            assert json.loads(inflate(big[1]))["payload"] == "p" * 400
            # a compressed client message is inflated and dispatched
            body = json.dumps({"type": "ping", "payload": "q" * 300}).encode()
            raw.sock.sendall(frame(OP_TEXT, deflate(body), rsv=RSV1, mask=os.urandom(4)))
            reply = raw.frame()
            assert reply is not None and json.loads(inflate(reply[1]) if raw.rsv1 else reply[1])["payload"] == "q" * 300
        finally:
            raw.close()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(OP_TEXT, deflate(b"\x00" * 5_000_000), rsv=RSV1, mask=os.urandom(4)), 1009),
        (frame(OP_PING, b"", rsv=RSV1, mask=os.urandom(4)), 1002),
        (frame(OP_TEXT, b"\xff\xfe\xfd\xfc", rsv=RSV1, mask=os.urandom(4)), 1007),
    ],
    ids=["bomb", "compressed-ping", "not-deflate"],
)
def test_bad_compressed_input_closes_only_the_offender(data: bytes, code: int) -> None:
    config = HubConfig(max_message_size=64 * 1024)
    with serve(ws="fasthub", config=config) as server:
        offer = {"Sec-WebSocket-Extensions": "permessage-deflate"}
        bystander = RawClient(server, "", headers=offer)
        bad = RawClient(server, "", headers=offer)
        try:
            bystander.frame()
            bad.frame()
            bad.sock.sendall(data)
            got = bad.frame()
            while got is not None and got[0] != OP_CLOSE:
                got = bad.frame()
            assert got is not None and int.from_bytes(got[1][:2], "big") == code
            bystander.send_json({"type": "ping", "id": 7})
            pong = bystander.frame()
            assert pong is not None and json.loads(pong[1])["id"] == 7
        finally:
            bystander.close()
            bad.close()


@pytest.mark.parametrize("config", [HubConfig(compression=False)], ids=["config-off"])
def test_compression_off_negotiates_nothing(config: HubConfig) -> None:
    async def scenario(server: Server) -> None:
        c = await connect(server)
        assert "Sec-WebSocket-Extensions" not in c.ws.response.headers
        await c.send({"type": "ping", "payload": "z" * 500})
        assert (await c.expect("pong"))["payload"] == "z" * 500
        await c.close()

    with serve(ws="fasthub", config=config) as server:
        run(scenario(server))


def test_client_context_kept_when_allowed() -> None:
    """websockets keeps its compression context when allowed: its second message refers back."""

    async def scenario(server: Server) -> None:
        c = await connect(server)
        assert c.ws.response.headers["Sec-WebSocket-Extensions"] == "permessage-deflate; server_no_context_takeover"
        for _ in range(3):
            await c.send({"type": "ping", "payload": "same text " * 60})
            assert (await c.expect("pong"))["payload"] == "same text " * 60
        await c.close()

    with serve(ws="fasthub", config=HubConfig(compression_client_context=True)) as server:
        run(scenario(server))


def test_generic_asgi_app_compresses_per_connection() -> None:
    """A non-hub ASGI app behind HubProtocol (the echo) negotiates too; its sends compress."""
    import uvicorn
    from conftest import free_socket, uvicorn_thread

    from fasthub.server.run import uvicorn_config

    sock = free_socket()
    port = sock.getsockname()[1]
    config: uvicorn.Config = uvicorn_config(echo_app, "127.0.0.1", port, "warning")

    async def scenario() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
            for n in (10, 500, 100_000):
                await ws.send("x" * n)
                assert await ws.recv() == "x" * n

    with uvicorn_thread(config, sock):
        run(scenario())


def test_server_frames_build_valid_rsv1_headers() -> None:
    assert build_frame(OP_TEXT, b"abc", rsv1=True)[0] == 0xC1


def test_generic_app_frames_rsv1_above_the_threshold_only() -> None:
    from conftest import free_socket, uvicorn_thread

    from fasthub.server.run import uvicorn_config

    sock = free_socket()
    port = sock.getsockname()[1]
    server = Server("127.0.0.1", port, "", None, None, None, None)  # type: ignore[arg-type]
    with uvicorn_thread(uvicorn_config(echo_app, "127.0.0.1", port, "warning"), sock):
        raw = RawClient(server, "", headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
        try:
            for size, packed in ((10, False), (255, False), (256, True), (5000, True)):
                raw.sock.sendall(frame(OP_TEXT, b"y" * size, mask=os.urandom(4)))
                got = raw.frame()
                assert got is not None and raw.rsv1 is packed
                assert (inflate(got[1]) if packed else got[1]) == b"y" * size
        finally:
            raw.close()


def test_portable_implementations_do_not_compress() -> None:
    """uvicorn's own implementations would keep a compressor per connection: not negotiated."""
    from fasthub.server.run import uvicorn_config

    assert uvicorn_config(echo_app, "127.0.0.1", 1, "warning").ws_per_message_deflate is True
    assert uvicorn_config(echo_app, "127.0.0.1", 1, "warning", ws="websockets-sansio").ws_per_message_deflate is False
    off = HubConfig(compression=False)
    from fasthub import Hub, create_app

    app = create_app(Hub(off))
    assert uvicorn_config(app, "127.0.0.1", 1, "warning").ws_per_message_deflate is False


def test_negotiation_answers_are_cached_and_bounded() -> None:
    from fasthub._wire import deflate as d

    offer = [b"permessage-deflate; client_max_window_bits"]
    assert d.negotiate(offer) is d.negotiate(list(offer))  # one parse, one shared answer
    for i in range(d._ANSWERS_MAX + 10):
        d.negotiate([b"permessage-deflate; x=%d" % i])
    assert len(d._answers) <= d._ANSWERS_MAX
    assert d.negotiate(offer) is not None
