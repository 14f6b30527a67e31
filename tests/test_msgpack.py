"""Binary messages (``on_binary``) and the MessagePack subprotocol ``fasthub.msgpack``: the codec
pieces, the frames built once per format, and real servers with real clients on both paths."""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any

import orjson
import ormsgpack
import pytest
import websockets
from conftest import Server, run, serve

from fasthub import HubConfig
from fasthub._core import KIND_BINARY, KIND_CLOSE, KIND_PLAIN, KIND_TEXT, Payload
from fasthub._core.forms import Forms
from fasthub.broker import codec
from fasthub.client import Client
from fasthub.exceptions import EnvelopeError
from fasthub.messages import decode_value, unpack

MSGPACK = 16  # Outbox.encoding: the MessagePack bit (ENC_MSGPACK)
ENVELOPE = {"type": "room_message", "room": "r", "payload": {"text": "hi", "n": 2**63, "f": 1.5, "ok": True}}


# -- the codec --------------------------------------------------------------------------------------


def test_decode_value_is_decode() -> None:
    msg = decode_value(unpack(ormsgpack.packb({**ENVELOPE, "id": 7})))
    assert (msg.type, msg.room, msg.payload, msg.id) == ("room_message", "r", ENVELOPE["payload"], 7)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\xc1", "not valid MessagePack"),  # 0xc1 is never used
        (b"\x92\x01", "not valid MessagePack"),  # truncated array
        (ormsgpack.packb([1, 2]), "must be a MessagePack map"),
        (ormsgpack.packb({"type": "room_message", "payload": b"\x00"}), "JSON cannot carry"),
        (ormsgpack.packb({1: "x"}, option=ormsgpack.OPT_NON_STR_KEYS), "not valid MessagePack"),  # int keys
    ],
)
def test_bad_messagepack_is_invalid_message(data: bytes, fragment: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        decode_value(unpack(data))
    assert info.value.code == "invalid_message"
    assert fragment in info.value.message


def test_same_validation_as_json() -> None:
    with pytest.raises(EnvelopeError) as info:
        decode_value({"type": "nope"})
    assert info.value.code == "unknown_type"
    deep: Any = {}
    for _ in range(40):
        deep = {"x": deep}
    with pytest.raises(EnvelopeError, match="deeper"):
        decode_value({"type": "message", "payload": deep}, max_depth=32)


# -- frames built once per format ------------------------------------------------------------------


def test_envelope_converted_once_for_every_msgpack_member() -> None:
    forms = Forms()
    p = Payload(KIND_TEXT, orjson.dumps(ENVELOPE))
    frames = [p.frame_as(MSGPACK, forms) for _ in range(500)]
    assert forms.packed == 1 and all(f is frames[0] for f in frames)
    assert frames[0][0] == 0x82  # FIN, binary
    assert ormsgpack.unpackb(frames[0][2:]) == ENVELOPE
    assert p.frame()[0] == 0x81  # JSON members keep their text frame


def test_binary_plain_and_close_on_msgpack_connections() -> None:
    forms = Forms()
    data = Payload(KIND_BINARY, b"\x00\x01\x02")
    assert ormsgpack.unpackb(data.frame_as(MSGPACK, forms)[2:]) == b"\x00\x01\x02"  # a bin value
    plain = Payload(KIND_PLAIN, b"just text")
    assert plain.frame_as(MSGPACK, forms) == plain.frame()
    close = Payload(KIND_CLOSE, b"", 1000, "bye")
    assert close.frame_as(MSGPACK, forms) == close.frame()
    assert data.asgi_as(MSGPACK, forms) == {"type": "websocket.send", "bytes": ormsgpack.packb(b"\x00\x01\x02")}
    assert plain.asgi_as(MSGPACK, forms) == {"type": "websocket.send", "text": "just text"}
    assert plain.asgi_as(0, forms) is plain.asgi()


def test_msgpack_and_compression_together() -> None:
    forms = Forms(threshold=0)
    big = {**ENVELOPE, "payload": {"text": "chat " * 200}}
    framed = Payload(KIND_TEXT, orjson.dumps(big)).frame_as(MSGPACK | 15, forms)
    assert framed[0] == 0x80 | 0x40 | 0x2  # FIN, RSV1, binary
    body = framed[4:] if framed[1] == 126 else framed[2:]
    assert ormsgpack.unpackb(zlib.decompressobj(-15).decompress(body + b"\x00\x00\xff\xff")) == big


def test_broker_codec_keeps_plain_text_apart() -> None:
    node = b"n" * 16
    assert codec.decode(codec.encode(codec.PLAIN, node, b"hello"))[0] == codec.PLAIN


# -- real servers ------------------------------------------------------------------------------------


async def _open(server: Server, msgpack: bool) -> Any:
    protocols = ["fasthub.msgpack"] if msgpack else None
    ws = await websockets.connect(server.ws_url(), subprotocols=protocols, max_size=None)  # type: ignore[arg-type]
    assert ws.subprotocol == ("fasthub.msgpack" if msgpack else None)
    hello = _decode(await ws.recv())
    assert hello["payload"]["event"] == "connected"
    return ws


def _decode(raw: str | bytes) -> Any:
    return ormsgpack.unpackb(raw) if isinstance(raw, bytes) else json.loads(raw)


async def _next(ws: Any, mtype: str) -> Any:
    while True:
        msg = _decode(await asyncio.wait_for(ws.recv(), 3))
        if not isinstance(msg, dict) or msg.get("type") == mtype:
            return msg


@pytest.fixture(params=["fasthub", "websockets-sansio"], ids=["fast-path", "portable"])
def ws_impl(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


def test_mixed_room_json_and_msgpack(ws_impl: str) -> None:
    got: list[tuple[str, bytes]] = []

    def on_binary(conn: Any, data: bytes) -> None:
        got.append((conn.id, data))
        conn.send_bytes(data[::-1])

    async def scenario(server: Server) -> None:
        mp = await _open(server, msgpack=True)
        js = await _open(server, msgpack=False)
        for ws in (mp, js):
            await ws.send(json.dumps({"type": "join_room", "room": "r"}))
            await _next(ws, "system")
        # a MessagePack client publishes in a binary frame; both get it, each in its format
        await mp.send(ormsgpack.packb({"type": "room_message", "room": "r", "payload": {"x": [1, 2]}}))
        raw_mp = await asyncio.wait_for(mp.recv(), 3)
        raw_js = await asyncio.wait_for(js.recv(), 3)
        assert isinstance(raw_mp, bytes) and isinstance(raw_js, str)
        assert ormsgpack.unpackb(raw_mp)["payload"] == json.loads(raw_js)["payload"] == {"x": [1, 2]}
        assert ormsgpack.unpackb(raw_mp)["from"] == json.loads(raw_js)["from"]
        assert server.call(server.hub.stats)["compression"]["msgpack_converted"] >= 1
        # JSON text from a MessagePack client is still understood; the answer comes in MessagePack
        await mp.send(json.dumps({"type": "ping", "id": 1}))
        assert (await _next(mp, "pong"))["id"] == 1
        # bad MessagePack: an error in MessagePack, and the connection goes on
        await mp.send(b"\xc1\xc1")
        err = await _next(mp, "error")
        assert err["payload"]["code"] == "invalid_message"
        await mp.send(ormsgpack.packb({"type": "ping", "id": 2}))
        assert (await _next(mp, "pong"))["id"] == 2
        # application bytes: a bin value from a MessagePack client, a binary frame from JSON
        await mp.send(ormsgpack.packb(b"abc"))
        assert ormsgpack.unpackb(await asyncio.wait_for(mp.recv(), 3)) == b"cba"
        await js.send(b"xyz")
        assert await asyncio.wait_for(js.recv(), 3) == b"zyx"
        assert [data for _, data in got] == [b"abc", b"xyz"]
        # a room broadcast of bytes reaches both
        server.call(server.hub.broadcast_to_room_bytes, "r", b"\x01\x02")
        assert ormsgpack.unpackb(await asyncio.wait_for(mp.recv(), 3)) == b"\x01\x02"
        assert await asyncio.wait_for(js.recv(), 3) == b"\x01\x02"
        # the application's own text stays text for both
        server.call(server.hub.broadcast_text, "plain words")
        assert await asyncio.wait_for(mp.recv(), 3) == "plain words"
        assert await asyncio.wait_for(js.recv(), 3) == "plain words"
        await mp.close()
        await js.close()

    with serve({"on_binary": on_binary}, config=HubConfig(member_events_limit=0), ws=ws_impl) as server:
        run(scenario(server))


def test_binary_without_handler_is_unsupported_data(ws_impl: str) -> None:
    async def scenario(server: Server) -> None:
        js = await _open(server, msgpack=False)
        await js.send(b"\x00\x01")
        err = await _next(js, "error")
        assert err["payload"]["code"] == "unsupported_data"
        mp = await _open(server, msgpack=True)
        await mp.send(ormsgpack.packb(b"data"))
        err = await _next(mp, "error")
        assert err["payload"]["code"] == "unsupported_data" and "MessagePack" in err["payload"]["message"]
        await js.send(json.dumps({"type": "ping", "id": 3}))
        assert (await _next(js, "pong"))["id"] == 3
        await js.close()
        await mp.close()

    with serve(ws=ws_impl) as server:
        run(scenario(server))


def test_failing_and_async_binary_handlers() -> None:
    seen: list[bytes] = []

    async def on_binary(conn: Any, data: bytes) -> None:
        await asyncio.sleep(0.01)
        if data == b"boom":
            raise RuntimeError("handler bug")
        seen.append(data)

    async def scenario(server: Server) -> None:
        js = await _open(server, msgpack=False)
        await js.send(b"boom")
        err = await _next(js, "error")
        assert err["payload"]["code"] == "internal_error"
        for i in range(5):
            await js.send(bytes([i]))
        await js.send(json.dumps({"type": "ping", "id": 9}))
        assert (await _next(js, "pong"))["id"] == 9
        assert seen == [bytes([i]) for i in range(5)]  # in order, each awaited before the next
        await js.close()

    with serve({"on_binary": on_binary}, ws="fasthub") as server:
        run(scenario(server))


def test_python_client_speaks_msgpack() -> None:
    async def scenario(server: Server) -> None:
        async with Client(server.ws_url(), format="msgpack") as a, Client(server.ws_url()) as b:
            assert a.protocol == "fasthub.msgpack" and b.protocol is None
            await a.join("r")
            await b.join("r")
            await a.publish("r", {"text": "from msgpack"})
            await b.publish("r", {"text": "from json"})
            texts_a = [(await a.receive(3))["payload"]["text"] for _ in range(2)]
            texts_b = [(await b.receive(3))["payload"]["text"] for _ in range(2)]
            assert texts_a == texts_b == ["from msgpack", "from json"]

    with serve(ws="fasthub", config=HubConfig(member_events_limit=0)) as server:
        run(scenario(server))


def test_client_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="format"):
        Client("ws://127.0.0.1:1/ws", format="xml")  # type: ignore[arg-type]


def test_subprotocol_choice() -> None:
    from fasthub.server.asgi import _subprotocol

    assert _subprotocol(["bearer.abc", "fasthub.msgpack"]) == "fasthub.msgpack"
    assert _subprotocol(["fasthub", "fasthub.msgpack"]) == "fasthub.msgpack"
    assert _subprotocol(["fasthub", "bearer.abc"]) == "fasthub"
    assert _subprotocol(["other"]) is None
