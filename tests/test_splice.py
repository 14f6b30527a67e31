"""``_core.Splice``: the room message envelope read in place and written around the payload bytes.

What it takes must be what orjson takes, and what it writes must read back (orjson) as the
envelope the full pipeline would deliver; whatever it declines the full pipeline answers. The
compiled module and its pure twin must agree on every input, taken or not.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fasthub._core import splice_py

COMPILED_BUILT = importlib.util.find_spec("fasthub._core.splice_c") is not None
MODULES = [pytest.param("fasthub._core.splice_py", id="py")]
if COMPILED_BUILT:
    MODULES.append(pytest.param("fasthub._core.splice_c", id="c"))

SENDER, STAMP = b'"alice"', b'"2026-12-03T10:00:00.000Z"'
TOP_KEYS = {"type", "room", "payload", "id", "idempotency_key"}


def twins() -> list[Any]:
    found = [splice_py.Splice()]
    if COMPILED_BUILT:
        found.append(importlib.import_module("fasthub._core.splice_c").Splice())
    return found


def depth(value: Any, level: int = 1) -> int:
    """Container nesting, the envelope being level 1 (as ``messages._depth_exceeds`` counts)."""
    if isinstance(value, dict):
        return max([depth(v, level + 1) for v in value.values()], default=level)
    if isinstance(value, list):
        return max([depth(v, level + 1) for v in value], default=level)
    return level - 1


def expected(obj: dict[str, Any], offset: int) -> dict[str, Any]:
    """What the full pipeline delivers for ``obj`` (``Message.to_dict`` + ``with_offset``)."""
    out: dict[str, Any] = {"type": "room_message"}
    if obj.get("payload") is not None:
        out["payload"] = obj["payload"]
    out["room"] = obj["room"]
    out["from"] = orjson.loads(SENDER)
    out["timestamp"] = orjson.loads(STAMP)
    if "id" in obj:
        out["id"] = obj["id"]
    if offset >= 0:
        out["offset"] = offset
    return out


def check(data: bytes, max_depth: int = 32, offset: int = 3) -> bool:
    """Both twins on ``data``: the same answer and bytes; when taken, the answer is right."""
    answers = []
    for splice in twins():
        taken = splice.scan(data, max_depth)
        join = bool(taken and splice.join)
        built = splice.build(data, SENDER, STAMP, offset) if taken and not join else None
        answers.append((taken, join, splice.room if taken else None, built))
    assert all(a == answers[0] for a in answers), (data, answers)
    taken, join, room, built = answers[0]
    if taken and join:  # a plain join: the relay hands its room and id to the dispatcher
        obj = orjson.loads(data)
        assert type(obj) is dict and set(obj) <= {"type", "room", "id"} and obj["type"] == "join_room"
        assert room == obj["room"] and type(room) is str
    elif taken:
        obj = orjson.loads(data)  # orjson takes whatever the splice takes
        assert type(obj) is dict and set(obj) <= TOP_KEYS and obj["type"] == "room_message"
        assert room == obj["room"] and type(room) is str
        assert depth(obj) <= max_depth
        assert built is not None
        assert orjson.loads(built) == expected(obj, offset)
        assert list(orjson.loads(built)) == list(expected(obj, offset))  # the same key order
    return bool(taken)


TAKEN = [
    b'{"type":"room_message","room":"r","payload":{"a":1}}',
    b'{"room":"r","payload":[1,2,3],"type":"room_message","id":"m1"}',
    b'{"type":"room_message","room":"r","payload":"x","id":7,"idempotency_key":"k1"}',
    b'{"type":"room_message","room":"r","payload":null}',
    b'{"type":"room_message","room":"r"}',
    b' {\n "type" : "room_message" ,\t"room":"r" , "payload" : { "a" : [ 1 , 2.5e-3 , true , false , null ] } } \r\n',
    b'{"type":"room_message","room":"r","payload":"\\u00e9\\ud83d\\ude00\\"\\\\\\/\\b\\f\\n\\r\\t"}',
    b'{"type":"room_message","room":"\xc3\xa9t\xc3\xa9","payload":"\xe2\x9c\x93"}',
    b'{"type":"room_message","room":"r","payload":-0.5E+10}',
    b'{"type":"room_message","room":"r","payload":123456789012345678901234567890}',
    b'{"type":"room_message","room":"r","payload":{"k":1,"k":2}}',  # passed as sent; a parser takes the last
    b'{"type":"room_message","room":"r","payload":{},"id":-3}',
    b'{"type":"room_message","room":"r","payload":[[[[]]]]}',
]

DECLINED = [
    b"",
    b"[]",
    b"{}",
    b"{not json",
    b'{"type":"room_message","room":"r","payload":1',
    b'{"type":"room_message","room":"r","payload":1}x',
    b'{"type":"room_message","room":"r","payload":1,}',
    b'{"type":"room_message","room":"r","payload":[1,]}',
    b'{"type":"room_message","room":"r","payload":01}',
    b'{"type":"room_message","room":"r","payload":1.}',
    b'{"type":"room_message","room":"r","payload":.5}',
    b'{"type":"room_message","room":"r","payload":-}',
    b'{"type":"room_message","room":"r","payload":+1}',
    b'{"type":"room_message","room":"r","payload":1e400}',  # infinity: orjson refuses it
    b'{"type":"room_message","room":"r","payload":NaN}',
    b'{"type":"room_message","room":"r","payload":tru}',
    b'{"type":"room_message","room":"r","payload":"\\ud800"}',  # lone surrogates
    b'{"type":"room_message","room":"r","payload":"\\udc00"}',
    b'{"type":"room_message","room":"r","payload":"\\ud800\\u0041"}',
    b'{"type":"room_message","room":"r","payload":"\\x"}',
    b'{"type":"room_message","room":"r","payload":"\\u12"}',
    b'{"type":"room_message","room":"r","payload":"a\x01b"}',  # a raw control character
    b'{"type":"room_message","room":"r","payload":{"a" 1}}',
    b'{"type":"room_message","room":"r","payload":{1:2}}',
    b'{"type":"room_message","room":"r","payload":1,"extra":2}',  # another key
    b'{"type":"room_message","room":"r","payload":1,"timestamp":"t"}',
    b'{"type":"room_message","room":"r","payload":1,"payload":2}',  # a repeated key
    b'{"type":"room_message","type":"room_message","room":"r"}',
    b'{"type":"ping","room":"r"}',
    b'{"type":"room_messag\\u0065","room":"r"}',  # escapes in the type or a key: declined
    b'{"typ\\u0065":"room_message","room":"r"}',
    b'{"type":"room_message","room":"r\\u0041"}',  # a room name with escapes: declined
    b'{"type":"room_message","room":5,"payload":1}',
    b'{"type":"room_message","payload":1}',  # no room
    b'{"room":"r","payload":1}',  # no type
]


JOINS = [
    b'{"type":"join_room","room":"r"}',
    b'{"room":"lobby","type":"join_room","id":3}',
    b' { "type" : "join_room" , "room" : "\xc3\xa9t\xc3\xa9" , "id" : "j1" } ',
]

NOT_JOINS = [
    b'{"type":"join_room","room":"r","payload":null}',  # a join with a payload or a key: the pipeline's
    b'{"type":"join_room","room":"r","idempotency_key":"k"}',
    b'{"type":"join_room","room":"r","since":{"offset":1,"epoch":"e"}}',  # a position: the pipeline's
    b'{"type":"join_room","room":"r\\u0041"}',
    b'{"type":"join_room"}',
    b'{"type":"join_roo","room":"r"}',
    b'{"type":"join_room","room":["r"]}',
]


@pytest.mark.parametrize("data", JOINS)
def test_takes_plain_joins(data: bytes) -> None:
    assert check(data)
    assert all(splice.scan(data, 32) and splice.join for splice in twins())


@pytest.mark.parametrize("data", NOT_JOINS)
def test_declines_joins_with_anything_more(data: bytes) -> None:
    assert not check(data)


def test_a_room_message_after_a_join_is_not_a_join() -> None:
    for splice in twins():
        assert splice.scan(b'{"type":"join_room","room":"r"}', 32) and splice.join
        assert splice.scan(b'{"type":"room_message","room":"r","payload":1}', 32) and not splice.join


@pytest.mark.parametrize("data", TAKEN)
def test_takes_plain_room_messages(data: bytes) -> None:
    assert check(data)
    assert check(data, offset=-1)


@pytest.mark.parametrize("data", DECLINED)
def test_declines_anything_else(data: bytes) -> None:
    assert not check(data)


def test_nesting_over_the_limit_is_declined() -> None:
    nested = b'{"type":"room_message","room":"r","payload":' + b"[" * 31 + b"]" * 31 + b"}"
    assert check(nested, max_depth=32)  # envelope + 31 levels
    assert not check(nested, max_depth=31)
    deep = b'{"type":"room_message","room":"r","payload":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert not check(deep, max_depth=100_000)  # capped (orjson stops at 1024): no deep recursion


def test_huge_numbers_are_left_to_the_full_pipeline() -> None:
    assert check(b'{"type":"room_message","room":"r","payload":1e299}')  # 1 digit + 299
    assert not check(b'{"type":"room_message","room":"r","payload":1e300}')
    assert check(b'{"type":"room_message","room":"r","payload":-1' + b"0" * 299 + b"}")  # 300 digits
    assert not check(b'{"type":"room_message","room":"r","payload":1' + b"0" * 300 + b"}")
    assert check(b'{"type":"room_message","room":"r","payload":1e-999999}')
    assert not check(b'{"type":"room_message","room":"r","payload":1e-1000000}')


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=12,
)


def huge(value: Any) -> bool:
    """A number the splice leaves to the full pipeline (digits plus exponent over 300)."""
    if isinstance(value, dict):
        return any(huge(v) for v in value.values())
    if isinstance(value, list):
        return any(huge(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) >= 1e300


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=JSON,
    room=st.text(min_size=1, max_size=6),
    msg_id=st.none() | st.integers() | st.text(max_size=5),
    indent=st.booleans(),
    ascii_only=st.booleans(),
)
def test_encoded_envelopes_read_back_as_the_full_pipeline_writes_them(
    payload: Any, room: str, msg_id: Any, indent: bool, ascii_only: bool
) -> None:
    obj: dict[str, Any] = {"type": "room_message", "room": room, "payload": payload}
    if msg_id is not None:
        obj["id"] = msg_id
    # as json.dumps writes it (spaces, \\u escapes, surrogate pairs) and as orjson does
    text = json.dumps(obj, indent=1 if indent else None, ensure_ascii=ascii_only).encode()
    taken = check(text)
    plain = depth(obj) <= 32 and "\\" not in json.dumps(room, ensure_ascii=ascii_only) and not huge(payload)
    assert taken == plain, text
    try:
        compact = orjson.dumps(obj)
    except TypeError:  # an integer over 64 bits: orjson does not write it (json.dumps did)
        return
    assert check(compact) == (depth(obj) <= 32 and b"\\" not in orjson.dumps(room) and not huge(payload))


TOKENS = st.sampled_from(
    [
        b"{", b"}", b"[", b"]", b'"', b"\\", b"u", b"d800", b"dc00", b",", b":",
        b"1", b"e", b"-", b".", b" ", b"null", b"0", b"true",
    ]
)


@settings(max_examples=600, deadline=None)
@given(
    piece=st.text(max_size=20).map(str.encode) | st.lists(TOKENS, max_size=12).map(b"".join),
    cut=st.integers(0, 80),
)
def test_twins_agree_on_mangled_messages(piece: bytes, cut: int) -> None:
    base = b'{"type":"room_message","room":"r","payload":{"a":[1,"\\u00e9",2.5]},"id":"x"}'
    check(base[:cut] + piece + base[cut:])
    join = b'{"type":"join_room","room":"r","id":"x"}'
    check(join[: cut % 40] + piece + join[cut % 40 :])
    check(piece)
