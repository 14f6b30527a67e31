"""fasthub.js and the demo page in Chromium: presence, typing and MessagePack.

- The MessagePack codec inside fasthub.js (``FastHubClient.msgpack``), in the page: values
  encoded by ``ormsgpack`` and ``msgpack`` decode to the same values and encode back to the same
  bytes; values built in JavaScript decode in Python to what JSON would have given; the forms
  Python never writes (uint64 for 5, float32, str16 for one byte...) decode; extension types,
  0xc1, truncation, trailing bytes and invalid UTF-8 are errors.
- ``presence``/``presenceStats`` promises (resolved by id, rejected on an error reply, a
  timeout, a close), ``typing`` at most once a second, ``typing`` events, on a real ``fasthub
  serve`` (the demo test's fixture).
- The demo page: two users see each other in "Who is here", one sees "… is typing" while the
  other types and sees it go, and the list follows joins, leaves and closes.
- MessagePack end to end: a page on ``fasthub.msgpack`` and a Python JSON client exchange room
  messages; every frame the page gets and sends is binary; application bytes and text reach
  both formats' "binary"/"text" events; a server that selects no subprotocol gets JSON.
"""

from __future__ import annotations

import json
import math
import random
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import msgpack
import ormsgpack
import pytest
from websockets.sync.client import connect as ws_connect

from fasthub import HubConfig
from fasthub.auth import JWTAuthenticator
from tests import test_demo_browser as demo
from tests.conftest import serve, wait_in_page

# the browser fixture is conftest's; the ``fasthub serve`` fixture is the demo test's
server = demo.server

pytestmark = pytest.mark.browser

STATIC = Path(__file__).resolve().parent.parent / "fasthub" / "static"
TYPING = "\u2026"  # the ellipsis of "alice is typing…"

# -- the codec, in a page ---------------------------------------------------------------------

# Helpers in the page: hex in and out, values tagged so JSON can carry them back to Python.
CODEC_HELPERS = """
() => {
  const { encode, decode } = FastHubClient.msgpack;
  const toHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  const fromHex = (h) => new Uint8Array((h.match(/../g) || []).map((x) => parseInt(x, 16)));
  function tag(v) {
    if (typeof v === "bigint") return { $int: v.toString() };
    if (v instanceof Uint8Array) return { $bin: toHex(v) };
    if (typeof v === "number" && !Number.isFinite(v)) return { $float: String(v) };
    if (typeof v === "number" && Object.is(v, -0)) return { $float: "-0" };
    // JSON would write 2 ** 60 as 1152921504606847000, which Python reads as that int
    if (typeof v === "number" && Number.isInteger(v) && !Number.isSafeInteger(v)) return { $float: String(v) };
    if (Array.isArray(v)) return v.map(tag);
    if (v && typeof v === "object") {
      if (Object.getPrototypeOf(v) !== Object.prototype) return { $proto: "changed" };
      return { $map: Object.keys(v).map((k) => [k, tag(v[k])]) };
    }
    return v;
  }
  function attempt(fn) {
    try {
      return fn();
    } catch (e) {
      return { error: e.name, message: e.message };
    }
  }
  window.__codec = {
    // (the answers are JSON text: Playwright is slow to carry large nested values)
    // Python's bytes -> [the decoded value (tagged), the value encoded again]
    decodeEncode: (hexes) => JSON.stringify(hexes.map((h) => attempt(() => {
      const v = decode(fromHex(h));
      return { value: tag(v), again: toHex(encode(v)) };
    }))),
    decode: (hexes) => JSON.stringify(hexes.map((h) => attempt(() => ({ value: tag(decode(fromHex(h))) })))),
    encode: (values) => JSON.stringify(values.map((v) => attempt(() => toHex(encode(v))))),
    toHex: toHex,
  };
}
"""


def untag(v: Any) -> Any:
    """The page's tagged JSON -> the Python value."""
    if isinstance(v, list):
        return [untag(x) for x in v]
    if isinstance(v, dict):
        if "$int" in v:
            return int(v["$int"])
        if "$bin" in v:
            return bytes.fromhex(v["$bin"])
        if "$float" in v:
            return float(v["$float"])  # "NaN", "Infinity", "-Infinity", "-0"
        if "$map" in v:
            return {k: untag(x) for k, x in v["$map"]}
        raise AssertionError(f"unexpected tag {v}")
    return v


def same(got: Any, want: Any, path: str = "$") -> None:
    """`got` (from the page) is `want`: the same types (an integral float may come back as an
    int, as JavaScript has one number type), dict keys in the same order."""
    if isinstance(want, bool) or want is None:
        assert got is want, (path, got, want)
    elif isinstance(want, int):
        assert type(got) is int and got == want, (path, got, want)
    elif isinstance(want, float):
        assert isinstance(got, int | float) and not isinstance(got, bool), (path, got, want)
        if math.isnan(want):
            assert math.isnan(got), (path, got)
        else:
            assert got == want, (path, got, want)
    elif isinstance(want, str | bytes):
        assert type(got) is type(want) and got == want, (path, got[:40], want[:40])
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            same(g, w, f"{path}[{i}]")
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == [str(k) for k in want], (path, list(got)[:5], list(want)[:5])
        for k, w in want.items():
            same(got[str(k)], w, f"{path}.{k}")
    else:
        raise AssertionError(f"no comparison for {type(want)}")


INT_EDGES = [
    *(0, 1, 127, 128, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32),
    *(2**53 - 1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1),
    *(-1, -31, -32, -33, -127, -128, -129, -32767, -32768, -32769, -(2**31), -(2**31) - 1),
    *(-(2**32), -(2**53) + 1, -(2**53), -(2**53) - 1, -(2**63) + 1, -(2**63)),
]
ALPHABET = (
    'abcxyzABC019 _-"\\/\n\t'
    "\u00e9\u00fc\u00df\u20ac\u4e2d\u6587\U0001f600\U0001f4a9\u0000\u007f\u0080\u07ff\u0800\uffff"
)


def random_string(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(n))


def random_float(rng: random.Random) -> float:
    while True:
        x = float(
            rng.choice([rng.random(), rng.uniform(-1e6, 1e6), rng.uniform(-1, 1) * 10.0 ** rng.randint(-300, 300)])
        )
        if not x.is_integer():
            return x


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 4 else 7)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice(INT_EDGES)
    if kind == 2:
        bits = rng.choice([7, 8, 16, 32, 53, 63])
        return rng.randrange(-(2**bits), 2**bits)
    if kind == 3:
        return random_float(rng)
    if kind == 4:
        return random_string(rng, rng.choice([0, 1, 5, 31, 32, 33, 100, 255, 256, 300]))
    if kind == 5:
        return rng.randbytes(rng.choice([0, 1, 7, 255, 256, 1000]))
    if kind == 6:
        return random_string(rng, rng.randrange(8))
    if kind in (7, 8):
        return [random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 3, 15, 16, 17]))]
    # keys that are not array indexes: JavaScript enumerates "1", "2"... first, whatever the order
    n = rng.choice([0, 1, 3, 15, 16, 17])
    return {"k" + random_string(rng, rng.randrange(6)): random_value(rng, depth + 1) for _ in range(n)}


def codec_values() -> list[Any]:
    rng = random.Random(1409)
    values: list[Any] = [None, True, False, *INT_EDGES]
    values += [0.5, -0.5, 1.1, 5e-324, -2.2250738585072014e-308, 1.7976931348623157e308, math.pi]
    values += [random_string(rng, n) for n in (0, 1, 31, 32, 255, 256, 65535, 65536, 70000)]
    values += ["\u00e9" * 16, "\U0001f600" * 8, "\U0001f600" * 64]  # 32 and 256 UTF-8 bytes
    values += [rng.randbytes(n) for n in (0, 1, 255, 256, 65535, 65536, 70000)]
    values += [list(range(n)) for n in (0, 15, 16, 65535, 65536)]
    values += [{f"key{i}": i for i in range(n)} for n in (0, 15, 16, 65535, 65536)]
    values += [{"nested": [[[{"a": [1, {"b": None}]}]]], "": "", "__proto__": {"polluted": True}}]
    values += [random_value(rng) for _ in range(400)]
    return values


def codec_call(page: Any, name: str, hexes: list[str]) -> Any:
    """window.__codec[name](hexes) in the page (JSON text back)."""
    return json.loads(page.evaluate(f"(hexes) => window.__codec.{name}(hexes)", hexes))


@pytest.fixture(scope="module")
def codec(browser: Any) -> Iterator[Any]:
    """A blank page with fasthub.js and the codec helpers (no server)."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_content("<!DOCTYPE html><title>codec</title>")
    page.add_script_tag(path=str(STATIC / "fasthub.js"))
    page.evaluate(CODEC_HELPERS)
    yield page
    assert errors == []
    page.close()


def test_codec_python_encodings_decode_and_encode_back_the_same(codec: Any) -> None:
    values = codec_values()
    packed = [ormsgpack.packb(v) for v in values]
    # ormsgpack and msgpack write these values the same way (the smallest form of each)
    assert packed == [msgpack.packb(v, use_bin_type=True) for v in values]
    results = codec_call(codec, "decodeEncode", [b.hex() for b in packed])
    for value, data, result in zip(values, packed, results, strict=True):
        assert "error" not in result, (repr(value)[:80], result)
        same(untag(result["value"]), value)
        assert result["again"] == data.hex(), repr(value)[:80]


def test_codec_values_with_no_twin_in_javascript(codec: Any) -> None:
    """An integral float comes back as a Number and is written again as an integer; NaN and
    the infinities decode, and are written as nil, as JSON gives null; -0.0 as the integer 0."""
    values = [1.0, -3.0, 2.0**60, 1e300, float("nan"), float("inf"), float("-inf"), -0.0, [1.0, {"x": 2.0}]]
    results = codec_call(codec, "decodeEncode", [ormsgpack.packb(v).hex() for v in values])
    got = [untag(r["value"]) for r in results]
    assert got[:3] == [1, -3, 2.0**60] and [type(g) for g in got[:3]] == [int, int, float]
    assert got[3] == 1e300 and math.isnan(got[4]) and got[5] == math.inf and got[6] == -math.inf
    assert got[7] == 0.0 and math.copysign(1, got[7]) == -1
    again = [msgpack.unpackb(bytes.fromhex(r["again"])) for r in results]
    assert again == [1, -3, 2**60, 1e300, None, None, None, 0, [1, {"x": 2}]]
    assert type(again[3]) is float and type(again[2]) is int


def test_codec_javascript_values_decode_in_python(codec: Any) -> None:
    encoded = codec.evaluate(
        """() => {
          const { encode } = FastHubClient.msgpack;
          const cases = [
            { text: "hi", n: 1, f: 1.5, ok: true, none: null, list: [1, "a", [], {}] },
            new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 6)),
            { a: undefined, b: 1, f: function () {}, s: Symbol("x") },
            [undefined, function () {}, 1],
            [NaN, Infinity, -Infinity, -0],
            [BigInt(2) ** BigInt(64) - BigInt(1), -(BigInt(2) ** BigInt(63)), BigInt(5), -BigInt(40)],
            [2 ** 53, 2 ** 60, 2 ** 64 - 2 ** 11, 2 ** 64, -(2 ** 63), -(2 ** 63) - 2 ** 11, 1e300, 0.1],
            new Uint8Array([1, 2, 3]),
            new Uint8Array([1, 2, 3]).buffer,
            new DataView(new Uint8Array([9, 8, 7, 6]).buffer, 1, 2),
            new Uint8Array([0, 1, 2, 3, 4, 5]).subarray(2, 4),
            new Map([["a", 1], [2, "b"]]),
            ["a\\ud800b", "\\udc00", "\\ud83d\\ude00\\u00e9", "x".repeat(70000)],
            { toJSON: () => ({ x: 1 }) },
            { b: 1, a: 2, "": 3 },
          ];
          return cases.map((v) => window.__codec.toHex(encode(v)));
        }"""
    )
    decoded = [msgpack.unpackb(bytes.fromhex(h), strict_map_key=False) for h in encoded]
    assert decoded[0] == {"text": "hi", "n": 1, "f": 1.5, "ok": True, "none": None, "list": [1, "a", [], {}]}
    assert decoded[1] == "2026-01-02T03:04:05.006Z"
    assert decoded[2] == {"b": 1}
    assert decoded[3] == [None, None, 1]
    assert decoded[4] == [None, None, None, 0]
    assert decoded[5] == [2**64 - 1, -(2**63), 5, -40]
    assert decoded[6] == [2**53, 2**60, 2**64 - 2**11, 2.0**64, -(2**63), -(2.0**63) - 2**11, 1e300, 0.1]
    assert [type(x) for x in decoded[6]] == [int, int, int, float, int, float, float, float]
    assert decoded[7:11] == [b"\x01\x02\x03", b"\x01\x02\x03", b"\x08\x07", b"\x02\x03"]
    assert decoded[11] == {"a": 1, 2: "b"}
    assert decoded[12] == ["a\ufffdb", "\ufffd", "\U0001f600\u00e9", "x" * 70000]
    assert decoded[13] == {"x": 1}
    assert list(decoded[14].items()) == [("b", 1), ("a", 2), ("", 3)]
    # the same bytes Python writes for the same values
    for i in (0, 2, 3, 5, 7, 11, 12, 13, 14):
        assert bytes.fromhex(encoded[i]) == ormsgpack.packb(decoded[i], option=ormsgpack.OPT_NON_STR_KEYS), i

    refused = codec.evaluate(
        """() => {
          const a = {}; a.self = a;
          return window.__codec.encode([BigInt(2) ** BigInt(64), -(BigInt(2) ** BigInt(63)) - BigInt(1), a]);
        }"""
    )
    refused = json.loads(refused)
    assert [r["error"] for r in refused] == ["RangeError"] * 3, refused


def test_codec_decodes_every_form(codec: Any) -> None:
    """Forms Python does not write for these values (wider than needed, float32, str16...)."""
    cases: list[tuple[bytes, Any]] = [
        (b"\xcf" + struct.pack(">Q", 5), 5),
        (b"\xcf" + struct.pack(">Q", 2**53 - 1), 2**53 - 1),
        (b"\xcf" + struct.pack(">Q", 2**53), 2**53),
        (b"\xd3" + struct.pack(">q", -1), -1),
        (b"\xd3" + struct.pack(">q", -(2**53) + 1), -(2**53) + 1),
        (b"\xd3" + struct.pack(">q", 7), 7),
        (b"\xd0\x05", 5),
        (b"\xd1\x00\x05", 5),
        (b"\xd2\xff\xff\xff\xff", -1),
        (b"\xcc\x05", 5),
        (b"\xcd\x00\x05", 5),
        (b"\xce\x00\x00\x00\x05", 5),
        (b"\xca" + struct.pack(">f", 1.5), 1.5),
        (b"\xca" + struct.pack(">f", 0.1), struct.unpack(">f", struct.pack(">f", 0.1))[0]),
        (b"\xca" + struct.pack(">f", float("inf")), float("inf")),
        (b"\xd9\x00", ""),
        (b"\xd9\x01a", "a"),
        (b"\xda\x00\x01a", "a"),
        (b"\xdb\x00\x00\x00\x02\xc3\xa9", "\u00e9"),
        (b"\xc4\x00", b""),
        (b"\xc5\x00\x01\x07", b"\x07"),
        (b"\xc6\x00\x00\x00\x01\x07", b"\x07"),
        (b"\xdc\x00\x01\x01", [1]),
        (b"\xdd\x00\x00\x00\x02\x01\xc0", [1, None]),
        (b"\xde\x00\x01\xa1a\x01", {"a": 1}),
        (b"\xdf\x00\x00\x00\x01\xa1a\x01", {"a": 1}),
        # keys that are not strings: their String()
        (b"\x85" + b"".join(msgpack.packb(x) for x in (7, "a", -2, "b", None, "c", True, "d", 1.5, "e")), None),
        (b"\x82\xa1a\x01\xa1a\x02", {"a": 2}),  # a repeated key: the last one
    ]
    results = codec_call(codec, "decode", [data.hex() for data, _ in cases])
    for (data, want), result in zip(cases, results, strict=True):
        assert "error" not in result, (data, result)
        if want is not None:
            same(untag(result["value"]), want)
    assert untag(results[-2]["value"]) == {"7": "a", "-2": "b", "null": "c", "true": "d", "1.5": "e"}
    # outside +-(2^53 - 1) an integer is a BigInt, inside a Number
    kinds = codec.evaluate(
        """(hexes) => hexes.map((h) => typeof FastHubClient.msgpack.decode(
             new Uint8Array(h.match(/../g).map((x) => parseInt(x, 16)))))""",
        [
            (b"\xcf" + struct.pack(">Q", 2**53 - 1)).hex(),
            (b"\xcf" + struct.pack(">Q", 2**53)).hex(),
            (b"\xd3" + struct.pack(">q", -(2**53) + 1)).hex(),
            (b"\xd3" + struct.pack(">q", -(2**53))).hex(),
        ],
    )
    assert kinds == ["number", "bigint", "number", "bigint"]
    # "__proto__" is an own key; no prototype is changed
    assert codec.evaluate(
        """(h) => {
          const v = FastHubClient.msgpack.decode(new Uint8Array(h.match(/../g).map((x) => parseInt(x, 16))));
          return [Object.getPrototypeOf(v) === Object.prototype, Object.keys(v), v.polluted, ({}).polluted];
        }""",
        msgpack.packb({"__proto__": {"polluted": True}}).hex(),
    ) == [True, ["__proto__"], None, None]


def test_codec_refuses_what_is_not_plain_messagepack(codec: Any) -> None:
    bad = [
        b"",  # nothing
        b"\xc1",  # never used
        b"\xd4\x01\x00",  # fixext 1
        b"\xd5\x01\x00\x00",
        b"\xd6\x01" + b"\x00" * 4,
        b"\xd7\xff" + b"\x00" * 8,  # the timestamp extension too
        b"\xd8\x01" + b"\x00" * 16,
        b"\xc7\x01\x05\x00",  # ext 8
        b"\xc8\x00\x01\x05\x00",
        b"\xc9\x00\x00\x00\x01\x05\x00",
        b"\x91\xd4\x01\x00",  # inside an array
        b"\xcd\x01",  # truncated
        b"\xcf\x00\x00",
        b"\xa5abc",
        b"\xd9",
        b"\x92\x01",
        b"\x81\xa1a",
        b"\xc5\x00\x05\x01",
        b"\x01\x02",  # bytes after the value
        b"\x90\x00",
        b"\xa2\xff\xfe",  # invalid UTF-8
        b"\xa3\xed\xa0\x80",  # a UTF-8 encoded surrogate
        b"\x81\xc4\x01a\x01",  # a bin key
        b"\x81\x90\x01",  # an array key
        b"\xdd\xff\xff\xff\xff",  # 4 billion elements announced, none there
        b"\xdf\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xff",
        b"\xdb\xff\xff\xff\xff",
        b"\x91" * 600 + b"\xc0",  # nested deeper than 512
    ]
    results = codec_call(codec, "decode", [data.hex() for data in bad])
    for data, result in zip(bad, results, strict=True):
        assert result.get("error") == "MessagePackError", (data[:10], result)
    ext = results[2]["message"]
    assert "extension" in ext, ext
    assert (
        codec.evaluate("() => { try { FastHubClient.msgpack.decode('x'); } catch (e) { return e.name; } }")
        == "TypeError"
    )


# -- presence and typing through the client ---------------------------------------------------

CLIENTS = """
async ([url, room]) => {
  const open = (name) => new Promise((resolve) => {
    const hub = new FastHubClient(url, { reconnect: false });
    window[name] = hub;
    hub.events = [];
    hub.on("typing", (env) => hub.events.push(["typing", env.room, env.from]));
    hub.on("system", (env) => { if (env.payload.event === "joined") resolve(env.payload); });
    hub.joinRoom(room);
    hub.connect();
  });
  const a = await open("__a");
  const b = await open("__b");
  return [a.members, b.members, window.__a.userId, window.__b.userId];
}
"""


def test_client_presence_promises_and_typing(browser: Any, server: str) -> None:
    ws_url = server.replace("http://", "ws://") + "/ws"
    room = "p-" + uuid.uuid4().hex[:8]
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(server + "/")
        wait_in_page(page, "typeof window.FastHubClient === 'function'")
        members_a, members_b, user_a, user_b = page.evaluate(CLIENTS, [ws_url, room])
        assert (members_a, members_b) == (1, 2)

        who = page.evaluate("(room) => window.__a.presence(room)", room)
        assert who == {
            "presence": {user_a: {"connections": 1}, user_b: {"connections": 1}},
            "num_users": 2,
            "num_connections": 2,
        }
        assert page.evaluate("(room) => window.__b.presenceStats(room)", room) == {"num_users": 2, "num_connections": 2}
        # many at once: each promise gets its own reply
        rooms = [room, room + "-empty", room]
        answers = page.evaluate("(rooms) => Promise.all(rooms.map((r) => window.__a.presenceStats(r)))", rooms)
        assert [a["num_users"] for a in answers] == [2, 0, 2]

        def rejection(script: str, *args: Any) -> Any:
            return page.evaluate(
                f"(args) => ({script}).then(() => 'resolved', (e) => [e instanceof Error, e.code, e.message])",
                list(args),
            )

        ok, code, message = rejection("window.__a.presence(args[0])", "no spaces allowed")
        assert ok and code == "invalid_room" and message, message
        assert rejection("window.__a.presenceStats('')")[1] in ("invalid_room", "missing_field")
        # no reply within the timeout (the page stops reading for a moment)
        assert rejection(
            """(() => {
              const ws = window.__a.ws, onmessage = ws.onmessage;
              ws.onmessage = null;
              return window.__a.presence(args[0], { timeout: 300 }).finally(() => { ws.onmessage = onmessage; });
            })()""",
            room,
        )[:2] == [True, "timeout"]
        assert page.evaluate("window.__a._requests.size") == 0

        # typing: the first call sends, the next within a second do not, then one again
        sent = page.evaluate(
            """async (room) => {
              const a = window.__a, out = [];
              for (let i = 0; i < 5; i++) out.push(a.typing(room));
              await new Promise((r) => setTimeout(r, 1100));
              out.push(a.typing(room), a.typing(room));
              return out;
            }""",
            room,
        )
        assert sent == [True, False, False, False, False, True, False]
        # B got one: the server relays at most one per 2 s per connection and room
        wait_in_page(page, "window.__b.events.length >= 1")
        time.sleep(0.5)
        assert page.evaluate("window.__b.events") == [["typing", room, user_a]]
        assert page.evaluate("window.__a.events") == []  # never to the sender
        # typing in a room it is not in: the server says not_member (no id: fire and forget)
        assert page.evaluate("(room) => window.__a.typing(room + '-elsewhere')", room) is True

        # a close settles what is pending; a closed client refuses at once and sends no typing
        assert rejection("(() => { const p = window.__b.presence(args[0]); window.__b.close(); return p; })()", room)[
            :2
        ] == [True, "disconnected"]
        wait_in_page(page, "window.__b.state === 'closed'")
        assert rejection("window.__b.presence(args[0])", room)[:2] == [True, "not_connected"]
        assert page.evaluate("(room) => window.__b.typing(room)", room) is False
        # B's leaving shows in A's presence
        deadline = time.monotonic() + 5
        while page.evaluate("(room) => window.__a.presenceStats(room)", room)["num_users"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        page.evaluate("window.__a.close()")
    finally:
        page.close()
    assert errors == []


# -- the demo page: who is here, who is typing ------------------------------------------------


def open_page(browser: Any, base: str, msgpack_format: bool = False) -> tuple[Any, dict[str, Any]]:
    """The demo page, connected; `seen` records its WebSocket frames (Playwright's view)."""
    from playwright.sync_api import expect

    page = browser.new_page()
    page.add_init_script(demo.INIT_SCRIPT)
    seen: dict[str, Any] = {"errors": [], "sent": [], "received": []}
    page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))

    def on_socket(ws: Any) -> None:
        ws.on("framesent", lambda payload: seen["sent"].append(payload))
        ws.on("framereceived", lambda payload: seen["received"].append(payload))

    page.on("websocket", on_socket)
    page.goto(base + "/")
    if msgpack_format:
        page.check("#use-msgpack")
    page.click("#connect")
    expect(page.locator("#status")).to_have_attribute("data-state", "open", timeout=5000)
    expect(page.locator("#me-user")).not_to_have_text(demo.PLACEHOLDER, timeout=5000)
    return page, seen


def person(page: Any, user: str) -> Any:
    return page.locator(f'#presence-list li.person[data-user="{user}"]')


def typing_frames(frames: list[Any]) -> list[Any]:
    out = []
    for f in frames:
        env = msgpack.unpackb(f) if isinstance(f, bytes) else json.loads(f)
        if isinstance(env, dict) and env.get("type") == "typing":
            out.append(env)
    return out


def test_demo_page_shows_who_is_here_and_who_is_typing(browser: Any, server: str) -> None:
    from playwright.sync_api import expect

    page_a, seen_a = open_page(browser, server)
    page_b, seen_b = open_page(browser, server)
    user_a = page_a.locator("#me-user").inner_text()
    user_b = page_b.locator("#me-user").inner_text()
    room = "here-" + uuid.uuid4().hex[:8]

    expect(page_a.locator("#presence-summary")).to_have_text("Join a room to see who is in it.")
    demo._join(page_a, room)
    # joining from the form makes the room current: its presence is asked at once
    expect(page_a.locator("#room-msg-room")).to_have_value(room)
    expect(page_a.locator("#presence-room")).to_have_text(room)
    expect(page_a.locator("#presence-summary")).to_have_text("1 user, 1 connection", timeout=5000)
    expect(person(page_a, user_a)).to_contain_text("(you)")
    expect(person(page_a, user_a).locator(".conns")).to_have_text("1 connection")
    expect(page_a.locator(f'#room-list li.room.current[data-room="{room}"]')).to_have_count(1)

    demo._join(page_b, room)
    expect(page_b.locator("#presence-list li.person")).to_have_count(2, timeout=5000)
    expect(person(page_b, user_b)).to_contain_text("(you)")
    expect(person(page_b, user_a)).not_to_contain_text("(you)")
    # A hears B join (user_joined) and asks again
    expect(person(page_a, user_b)).to_have_count(1, timeout=5000)
    expect(page_a.locator("#presence-summary")).to_have_text("2 users, 2 connections")
    expect(page_a.locator("#presence-list li.person").first).to_have_attribute("data-user", user_a)  # you first

    # B types: A sees it, B does not see itself; B's page sent at most one typing a second
    expect(page_a.locator("#typing")).to_have_text("")
    started = time.monotonic()
    page_b.locator("#room-msg-text").press_sequentially("hello there, A", delay=120)
    typed_for = time.monotonic() - started
    expect(page_a.locator("#typing")).to_have_text(f"{user_b} is typing{TYPING}", timeout=3000)
    shown = time.monotonic()
    sent = typing_frames(seen_b["sent"])
    assert 2 <= len(sent) <= 1 + typed_for, (len(sent), typed_for)
    assert all(env == {"type": "typing", "room": room} for env in sent)
    expect(page_b.locator("#typing")).to_have_text("")
    # it goes about 3 s after the last typing event A got (the server relayed one per 2 s)
    expect(page_a.locator("#typing")).to_have_text("", timeout=8000)
    gone_after = time.monotonic() - shown
    assert 0.5 < gone_after < 6, gone_after
    got = typing_frames(seen_a["received"])
    assert 1 <= len(got) <= 1 + typed_for / 2, len(got)
    assert {env["from"] for env in got} == {user_b}

    # typing then sending: the message clears the line at once
    page_b.locator("#room-msg-text").press_sequentially("again", delay=30)
    expect(page_a.locator("#typing")).to_contain_text(user_b, timeout=3000)
    page_b.click("#send-room")
    expect(demo._entry(page_a, "room_message", "hello there, Aagain")).to_have_count(1, timeout=5000)
    expect(page_a.locator("#typing")).to_have_text("", timeout=1000)

    # the room message box picks the room: another room is not "current" until joined
    page_a.fill("#room-msg-room", room + "-other")
    expect(page_a.locator("#presence-summary")).to_contain_text("Pick a room")
    expect(page_a.locator("#presence-list li.person")).to_have_count(0)
    page_a.locator(f'#room-list li[data-room="{room}"] .room-name').click()
    expect(page_a.locator("#presence-list li.person")).to_have_count(2, timeout=5000)

    # B leaves: A's list drops it (user_left)
    page_b.locator(f'#room-list li[data-room="{room}"] button', has_text="Leave").click()
    expect(person(page_a, user_b)).to_have_count(0, timeout=5000)
    expect(page_a.locator("#presence-summary")).to_have_text("1 user, 1 connection")
    expect(page_b.locator("#presence-list li.person")).to_have_count(0)

    # B comes back, then closes its tab: A sees it come and go
    demo._join(page_b, room)
    expect(person(page_a, user_b)).to_have_count(1, timeout=5000)
    page_b.close()
    expect(person(page_a, user_b)).to_have_count(0, timeout=5000)

    # the Refresh button asks again; a disconnect empties the list
    page_a.click("#presence-refresh")
    expect(page_a.locator("#presence-summary")).to_have_text("1 user, 1 connection", timeout=5000)
    page_a.click("#connect")
    expect(page_a.locator("#status")).to_have_attribute("data-state", "closed", timeout=5000)
    expect(page_a.locator("#presence-list li.person")).to_have_count(0)
    assert page_a.evaluate("window.__csp") == []
    assert seen_a["errors"] == [] and seen_b["errors"] == [], (seen_a["errors"], seen_b["errors"])
    page_a.close()


# -- MessagePack end to end -------------------------------------------------------------------


def _reply(raw: Any, want: Any, timeout: float = 5.0) -> dict[str, Any]:
    """Frames from a websockets client until one for which `want(envelope)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        msg = json.loads(raw.recv(timeout=max(0.1, deadline - time.monotonic())))
        if want(msg):
            return msg  # type: ignore[no-any-return]


MSGPACK_PAGE = """
([url, room]) => new Promise((resolve, reject) => {
  window.__frames = [];
  window.__got = [];
  const hub = new FastHubClient(url, { format: "msgpack", reconnect: false });
  window.__hub = hub;
  hub.on("room_message", (env) => window.__got.push(env));
  hub.on("system", (env) => { if (env.payload.event === "joined") resolve(env.payload); });
  hub.on("close", (e) => reject(new Error("closed " + e.code)));
  hub.joinRoom(room);
  hub.connect();
  // every frame, as the socket hands it over
  hub.ws.addEventListener("message", (ev) => window.__frames.push(
    typeof ev.data === "string" ? "text" : Object.prototype.toString.call(ev.data)));
})
"""


def test_msgpack_page_and_json_client_share_a_room(browser: Any, server: str) -> None:
    ws_url = server.replace("http://", "ws://") + "/ws"
    room = "mp-" + uuid.uuid4().hex[:8]
    page = browser.new_page()
    frames: dict[str, list[Any]] = {"sent": [], "received": []}
    page.on(
        "websocket",
        lambda ws: (
            ws.on("framesent", lambda p: frames["sent"].append(p)),
            ws.on("framereceived", lambda p: frames["received"].append(p)),
        ),
    )
    try:
        page.goto(server + "/")
        wait_in_page(page, "typeof window.FastHubClient === 'function'")
        joined = page.evaluate(MSGPACK_PAGE, [ws_url, room])
        assert joined["room"] == room and joined["members"] == 1
        assert page.evaluate("[window.__hub.ws.protocol, window.__hub.protocol, window.__hub.format]") == [
            "fasthub.msgpack",
            "fasthub.msgpack",
            "msgpack",
        ]
        user_page = page.evaluate("window.__hub.userId")

        with ws_connect(ws_url, open_timeout=5) as raw:
            hello = json.loads(raw.recv(timeout=5))
            assert hello["payload"]["event"] == "connected"
            user_raw = hello["payload"]["user_id"]
            raw.send(json.dumps({"type": "join_room", "room": room, "id": "j"}))
            assert _reply(raw, lambda m: m.get("id") == "j")["payload"]["members"] == 2

            # page -> JSON client: a payload with what JSON carries (numbers, unicode, nesting)
            payload = {
                "text": "from msgpack \u00e9\U0001f600",
                "n": 2**40,
                "f": 0.25,
                "list": [1, None, True, {"k": "v"}],
            }
            ack = page.evaluate("([room, p]) => window.__hub.publish(room, p)", [room, payload])
            assert ack["offset"] >= 1 and ack["epoch"]
            got = _reply(raw, lambda m: m.get("type") == "room_message")
            assert got["payload"] == payload and got["from"] == user_page and got["room"] == room

            # JSON client -> page
            raw.send(json.dumps({"type": "room_message", "room": room, "payload": {"text": "from json", "big": 2**60}}))
            wait_in_page(page, "window.__got.some((e) => e.payload.text === 'from json')")
            env = page.evaluate(
                "(() => { const e = window.__got.find((e) => e.payload.text === 'from json');"
                " return [e.from, e.room, typeof e.payload.big, String(e.payload.big), typeof e.offset]; })()"
            )
            assert env == [user_raw, room, "bigint", str(2**60), "number"]

            # presence and typing over MessagePack
            who = page.evaluate("(room) => window.__hub.presence(room)", room)
            assert set(who["presence"]) == {user_page, user_raw} and who["num_connections"] == 2
            assert page.evaluate("(room) => window.__hub.typing(room)", room) is True
            typing = _reply(raw, lambda m: m.get("type") == "typing")
            assert typing["room"] == room and typing["from"] == user_page

        # every frame the page got was binary (an ArrayBuffer), and so was every frame it sent
        kinds = page.evaluate("window.__frames")
        assert kinds and set(kinds) == {"[object ArrayBuffer]"}, kinds
        assert frames["received"] and all(isinstance(f, bytes) for f in frames["received"])
        assert frames["sent"] and all(isinstance(f, bytes) for f in frames["sent"])
        sent = [msgpack.unpackb(f) for f in frames["sent"]]
        assert [e["type"] for e in sent] == ["join_room", "room_message", "presence", "typing"]
        assert sent[1]["payload"] == payload
        assert msgpack.unpackb(frames["received"][0])["payload"]["event"] == "connected"
        page.evaluate("window.__hub.close()")
    finally:
        page.close()


def test_demo_page_messagepack_toggle(browser: Any, server: str) -> None:
    """One page on MessagePack, one on JSON, in one room: messages, presence and typing cross."""
    from playwright.sync_api import expect

    page_m, seen_m = open_page(browser, server, msgpack_format=True)
    page_j, seen_j = open_page(browser, server)
    try:
        expect(page_m.locator("#format")).to_have_text("MessagePack")
        expect(page_j.locator("#format")).to_have_text("JSON")
        expect(page_m.locator("#use-msgpack")).to_be_disabled()  # chosen when connecting
        user_m = page_m.locator("#me-user").inner_text()
        user_j = page_j.locator("#me-user").inner_text()
        room = "tog-" + uuid.uuid4().hex[:8]
        demo._join(page_m, room)
        demo._join(page_j, room)
        expect(person(page_m, user_j)).to_have_count(1, timeout=5000)
        expect(person(page_j, user_m)).to_have_count(1, timeout=5000)

        # typing first: filling the box types too, and the server relays one per 2 s
        page_j.locator("#room-msg-text").press_sequentially("abc", delay=50)
        expect(page_m.locator("#typing")).to_have_text(f"{user_j} is typing{TYPING}", timeout=3000)
        page_m.locator("#room-msg-text").press_sequentially("xyz", delay=50)
        expect(page_j.locator("#typing")).to_have_text(f"{user_m} is typing{TYPING}", timeout=3000)

        page_m.fill("#room-msg-text", "packed hello")  # (xyz typed before: replaced)
        page_m.click("#send-room")
        demo._expect_payload(page_j, "room_message", {"text": "packed hello"})
        demo._expect_payload(page_m, "room_message", {"text": "packed hello"})
        page_j.fill("#room-msg-text", '{"json": [1, 2.5, "x"]}')
        page_j.click("#send-room")
        demo._expect_payload(page_m, "room_message", {"json": [1, 2.5, "x"]})

        assert seen_m["received"] and all(isinstance(f, bytes) for f in seen_m["received"])
        assert seen_m["sent"] and all(isinstance(f, bytes) for f in seen_m["sent"])
        assert all(isinstance(f, str) for f in seen_j["received"] + seen_j["sent"])
        # disconnected, the toggle can be changed again
        page_m.click("#connect")
        expect(page_m.locator("#use-msgpack")).to_be_enabled()
        expect(page_m.locator("#format")).to_have_text(demo.PLACEHOLDER)
        assert seen_m["errors"] == [] and seen_j["errors"] == []
        assert page_m.evaluate("window.__csp") == [] and page_j.evaluate("window.__csp") == []
    finally:
        page_m.close()
        page_j.close()


DATA_PAGE = """
([url, format]) => new Promise((resolve, reject) => {
  const hub = new FastHubClient(url, { format: format, reconnect: false });
  const got = [];
  hub.on("binary", (b) => got.push(["binary", b instanceof Uint8Array, Array.from(b)]));
  hub.on("text", (t) => got.push(["text", t]));
  hub.on("any", (env) => { if (env.type === "message") got.push(["envelope", env.payload]); });
  hub.on("open", (info) => {
    hub.send({ type: "message", payload: { ask: "data" } });
    hub.sendBytes(new Uint8Array([7, 8, 9]));
    hub.sendBytes(new Uint16Array([0x0201]).buffer);  // an ArrayBuffer
  });
  hub.on("close", (e) => reject(new Error("closed " + e.code)));
  hub.connect();
  setTimeout(() => reject(new Error("after 10 s: " + JSON.stringify(got))), 10000);
  const poll = setInterval(() => {
    if (got.length >= 5) { clearInterval(poll); resolve([hub.format, got]); hub.close(); }
  }, 20);
})
"""


def _data_app() -> dict[str, Any]:
    def on_message(conn: Any, msg: Any) -> bool:
        if msg.type == "message":
            conn.send_bytes(b"\x00\x01\xfe\xff")
            conn.send_text("plain text, not an envelope")
            conn.send_json({"type": "message", "payload": {"back": True}})
            return True
        return False

    def on_binary(conn: Any, data: bytes) -> None:
        conn.send_bytes(b"echo:" + data)

    return {"on_message": on_message, "on_binary": on_binary}


@pytest.mark.parametrize("format_", ["json", "msgpack"])
def test_application_bytes_and_text_reach_both_formats(browser: Any, format_: str) -> None:
    """`send_bytes` -> "binary" (a raw frame on JSON, a MessagePack bin on MessagePack);
    `send_text` -> "text"; an envelope -> its type's event; `sendBytes` -> `on_binary`."""
    with serve(_data_app(), HubConfig(), ws="fasthub") as srv:
        page = browser.new_page()
        try:
            page.goto(srv.http + "/")
            wait_in_page(page, "typeof window.FastHubClient === 'function'")
            fmt, got = page.evaluate(DATA_PAGE, [srv.ws_url(), format_])
        finally:
            page.close()
    assert fmt == format_
    assert sorted(got, key=str) == sorted(
        [
            ["binary", True, [0, 1, 254, 255]],
            ["text", "plain text, not an envelope"],
            ["envelope", {"back": True}],
            ["binary", True, [*b"echo:", 7, 8, 9]],
            ["binary", True, [*b"echo:", 1, 2]],
        ],
        key=str,
    )


def test_msgpack_falls_back_to_json_on_a_server_without_it(browser: Any) -> None:
    """A server that knows only "fasthub" (JSON) selects it, and the client speaks JSON."""
    from websockets.sync.server import serve as ws_serve
    from websockets.typing import Subprotocol

    offered: list[Any] = []

    def handler(ws: Any) -> None:
        offered.append(ws.request.headers.get("Sec-WebSocket-Protocol"))
        ws.send(
            json.dumps({"type": "system", "payload": {"event": "connected", "connection_id": "c1", "user_id": "u1"}})
        )
        for message in ws:
            env = json.loads(message)  # text JSON: a binary frame would fail here
            if env.get("type") == "ping":
                ws.send(json.dumps({"type": "pong", "id": env["id"]}))

    with ws_serve(handler, "127.0.0.1", 0, subprotocols=[Subprotocol("fasthub")]) as srv:
        port = srv.socket.getsockname()[1]
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        page = browser.new_page()
        try:
            page.set_content("<!DOCTYPE html><title>fallback</title>")
            page.add_script_tag(path=str(STATIC / "fasthub.js"))
            result = page.evaluate(
                """(url) => new Promise((resolve, reject) => {
                  const hub = new FastHubClient(url, { format: "msgpack", token: "abc.def.ghi", reconnect: false });
                  hub.on("close", (e) => reject(new Error("closed " + e.code)));
                  let opened;
                  hub.on("open", (info) => { opened = info; hub.ping(); });
                  hub.on("pong", (env, extra) => {
                    resolve([opened, hub.format, hub.userId, typeof extra.rtt]);
                    hub.close();
                  });
                  hub.connect();
                })""",
                f"ws://127.0.0.1:{port}/ws",
            )
        finally:
            page.close()
            srv.shutdown()
    assert result == [{"reconnected": False, "format": "json", "protocol": "fasthub"}, "json", "u1", "number"]
    # msgpack first, then the token's entry (and "fasthub" once)
    assert offered == ["fasthub.msgpack, fasthub, bearer.abc.def.ghi"]


def test_msgpack_with_a_token(browser: Any) -> None:
    """`token` rides beside fasthub.msgpack as `bearer.<jwt>`; the server selects MessagePack."""
    secret = "s" * 32
    token = jwt.encode({"sub": "alice"}, secret, algorithm="HS256")
    with serve({"authenticate": JWTAuthenticator(secret=secret)}, ws="fasthub") as srv:
        page = browser.new_page()
        try:
            page.goto(srv.http + "/")
            wait_in_page(page, "typeof window.FastHubClient === 'function'")
            result = page.evaluate(
                """([url, token]) => new Promise((resolve, reject) => {
                  const hub = new FastHubClient(url, { format: "msgpack", token: () => token, reconnect: false });
                  hub.on("system", (env) => {
                    if (env.payload.event === "connected") { resolve([hub.format, hub.userId]); hub.close(); }
                  });
                  hub.on("close", (e) => reject(new Error("closed " + e.code)));
                  hub.connect();
                })""",
                [srv.ws_url(), token],
            )
            assert result == ["msgpack", "alice"]
        finally:
            page.close()
