"""The JSON envelope: decode/encode, Message.to_dict, error envelopes, and a decode fuzz test."""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fasthub import EnvelopeError, ErrorCode, Message, MessageType
from fasthub.messages import MESSAGE_TYPES, decode, encode, error_envelope, utc_timestamp

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def refused(raw: Any, max_depth: int = 32) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as info:
        decode(raw, max_depth)
    return info.value


# -- the vocabulary ------------------------------------------------------------------------------


def test_message_types_are_the_protocols_eleven_plus_ours() -> None:
    # the original's eleven, ``refresh`` (a new token before the connection's one expires),
    # ``ack`` (a message with an id was accepted), ``resume`` (a session taken back),
    # ``presence``/``presence_stats`` (who is in a room) and ``typing``
    assert {t.value for t in MessageType} == {
        "refresh",
        "ack",
        "resume",
        "presence",
        "presence_stats",
        "typing",
        "ping",
        "pong",
        "message",
        "broadcast",
        "join_room",
        "leave_room",
        "room_message",
        "user_message",
        "notification",
        "error",
        "system",
    }
    assert frozenset(t.value for t in MessageType) == MESSAGE_TYPES


def test_error_codes() -> None:
    assert {c.value for c in ErrorCode} == {
        "unavailable",
        "invalid_session",
        "rate_limited",
        "invalid_token",
        "too_large",
        "invalid_json",
        "invalid_message",
        "unknown_type",
        "missing_field",
        "invalid_room",
        "not_member",
        "unknown_user",
        "unsupported_data",
        "unhandled",
        "forbidden",
        "too_many_rooms",
        "internal_error",
    }


def test_utc_timestamp_format() -> None:
    ts = utc_timestamp()
    assert TIMESTAMP.match(ts), ts
    parsed = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    assert abs((datetime.datetime.now(datetime.UTC) - parsed).total_seconds()) < 5


# -- decode: accepted envelopes ------------------------------------------------------------------


@pytest.mark.parametrize("mtype", sorted(MESSAGE_TYPES))
def test_every_type_decodes(mtype: str) -> None:
    msg = decode(json.dumps({"type": mtype}))
    assert isinstance(msg, Message)
    assert msg.type == mtype
    assert (msg.payload, msg.room, msg.to, msg.from_, msg.timestamp, msg.metadata, msg.id) == (None,) * 7


def test_all_fields_decode_from_str_and_bytes() -> None:
    env = {
        "type": "room_message",
        "payload": {"text": "hi", "n": [1, 2.5, None, True]},
        "room": "lobby",
        "to": "bob",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "metadata": {"trace": "abc"},
        "id": "m-1",
    }
    for raw in (json.dumps(env), json.dumps(env).encode()):
        msg = decode(raw)
        assert msg.type == "room_message"
        assert msg.payload == {"text": "hi", "n": [1, 2.5, None, True]}
        assert msg.room == "lobby"
        assert msg.to == "bob"
        assert msg.timestamp == "2026-01-01T00:00:00.000Z"
        assert msg.metadata == {"trace": "abc"}
        assert msg.id == "m-1"


def test_from_is_never_taken_from_the_client() -> None:
    msg = decode('{"type": "broadcast", "from": "mallory", "payload": 1}')
    assert msg.from_ is None
    assert "from" not in msg.to_dict()


def test_numeric_to_becomes_a_string_and_integer_ids_stay_integers() -> None:
    msg = decode('{"type": "user_message", "to": 42, "id": 7}')
    assert msg.to == "42" and isinstance(msg.to, str)
    assert msg.id == 7 and isinstance(msg.id, int)
    assert decode('{"type": "ping", "id": 0}').id == 0
    assert decode('{"type": "ping", "id": -3}').id == -3


def test_unknown_fields_are_ignored_and_payload_may_be_any_json() -> None:
    for payload in (0, "", [], {}, "text", 1.5, False, [[{"a": None}]]):
        msg = decode(orjson.dumps({"type": "message", "payload": payload, "extra": {"x": 1}}))
        assert msg.payload == payload


def test_id_length_limit() -> None:
    assert decode(orjson.dumps({"type": "ping", "id": "i" * 128})).id == "i" * 128
    err = refused(orjson.dumps({"type": "ping", "id": "i" * 129}))
    assert err.code == ErrorCode.INVALID_MESSAGE and err.msg_id is None


def test_depth_limit_refuses_deep_nesting_with_the_id() -> None:
    # depth 3: the envelope, the payload list, the inner list
    assert decode('{"type": "ping", "payload": [[1]]}', max_depth=3).payload == [[1]]
    err = refused('{"type": "ping", "payload": [[[1]]], "id": "deep"}', max_depth=3)
    assert err.code == ErrorCode.INVALID_MESSAGE and err.msg_id == "deep"
    assert "3" in err.message
    # objects nest too
    assert refused('{"type": "ping", "metadata": {"a": {"b": {}}}}', max_depth=3).code == "invalid_message"
    # brackets inside strings are not nesting
    assert decode('{"type": "ping", "room": "[[[[[[[[{{{{", "id": 1}', max_depth=3).room == "[[[[[[[[{{{{"
    # the default limit is 32 levels
    assert decode('{"type": "ping", "payload": ' + "[" * 31 + "]" * 31 + "}").type == "ping"
    assert refused('{"type": "ping", "payload": ' + "[" * 32 + "]" * 32 + "}").code == "invalid_message"


@pytest.mark.parametrize("max_depth", [3, 32])
def test_depth_limit_does_not_depend_on_unrelated_siblings(max_depth: int) -> None:
    """The same deepest value is accepted or refused whatever shallow siblings it has.

    ``_depth_exceeds`` counts a scalar as one more level, but the bracket pre-filter only runs
    it once the message has more than ``max_depth`` brackets: a message at exactly the limit
    is accepted alone and refused as soon as an empty ``{}`` is added beside it.
    """
    deepest = "[" * (max_depth - 1) + "1" + "]" * (max_depth - 1)  # the envelope is level 1
    alone = '{"type": "ping", "payload": ' + deepest + "}"
    with_sibling = '{"type": "ping", "payload": ' + deepest + ', "metadata": {}}'
    wide = '{"type": "ping", "payload": ' + deepest + ', "metadata": {"a": 1, "b": [2]}, "x": [[], {}]}'
    assert decode(alone, max_depth).payload is not None
    assert decode(with_sibling, max_depth).metadata == {}
    assert decode(wide, max_depth).metadata == {"a": 1, "b": [2]}


# -- decode: every refusal -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code", "msg_id"),
    [
        ("{not json", ErrorCode.INVALID_JSON, None),
        ("", ErrorCode.INVALID_JSON, None),
        (b"\xff\xfe{}", ErrorCode.INVALID_JSON, None),
        (b'{"type": "ping", "payload": "\xc3\x28"}', ErrorCode.INVALID_JSON, None),
        ('{"type": "ping"} trailing', ErrorCode.INVALID_JSON, None),
        ("NaN", ErrorCode.INVALID_JSON, None),
        ('{"type": "ping", "payload": 1e400}', ErrorCode.INVALID_JSON, None),
        ("[1, 2]", ErrorCode.INVALID_MESSAGE, None),
        ('"ping"', ErrorCode.INVALID_MESSAGE, None),
        ("null", ErrorCode.INVALID_MESSAGE, None),
        ("42", ErrorCode.INVALID_MESSAGE, None),
        ('{"type": "ping", "id": true}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type": "ping", "id": 1.5}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type": "ping", "id": [1]}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type": "ping", "id": {"a": 1}}', ErrorCode.INVALID_MESSAGE, None),
        ('{"payload": 1, "id": "a"}', ErrorCode.UNKNOWN_TYPE, "a"),
        ('{"type": null, "id": "n"}', ErrorCode.UNKNOWN_TYPE, "n"),
        ('{"type": 3, "id": 3}', ErrorCode.UNKNOWN_TYPE, 3),
        ('{"type": "PING", "id": "c"}', ErrorCode.UNKNOWN_TYPE, "c"),
        ('{"type": "teleport", "id": 9}', ErrorCode.UNKNOWN_TYPE, 9),
        ('{"type": ["ping"]}', ErrorCode.UNKNOWN_TYPE, None),
        ('{"type": "join_room", "room": 5, "id": "r"}', ErrorCode.INVALID_MESSAGE, "r"),
        ('{"type": "join_room", "room": ["a"], "id": "r"}', ErrorCode.INVALID_MESSAGE, "r"),
        ('{"type": "user_message", "to": true, "id": "t"}', ErrorCode.INVALID_MESSAGE, "t"),
        ('{"type": "user_message", "to": 1.5, "id": "t"}', ErrorCode.INVALID_MESSAGE, "t"),
        ('{"type": "user_message", "to": {"u": 1}, "id": "t"}', ErrorCode.INVALID_MESSAGE, "t"),
        ('{"type": "ping", "metadata": [1], "id": "md"}', ErrorCode.INVALID_MESSAGE, "md"),
        ('{"type": "ping", "metadata": "x", "id": "md"}', ErrorCode.INVALID_MESSAGE, "md"),
        ('{"type": "ping", "timestamp": 12345, "id": "ts"}', ErrorCode.INVALID_MESSAGE, "ts"),
        ('{"type": "ping", "timestamp": {"t": 1}, "id": "ts"}', ErrorCode.INVALID_MESSAGE, "ts"),
    ],
)
def test_refusals_carry_a_code_a_message_and_the_id(raw: Any, code: str, msg_id: Any) -> None:
    err = refused(raw)
    assert err.code == code
    assert err.message and str(err) == err.message
    assert err.msg_id == msg_id


def test_unknown_type_message_is_bounded() -> None:
    err = refused(orjson.dumps({"type": "x" * 10_000}))
    assert err.code == ErrorCode.UNKNOWN_TYPE and len(err.message) <= 200


# -- encode and to_dict --------------------------------------------------------------------------


def test_encode_is_compact_orjson_bytes() -> None:
    data = encode({"type": "pong", "payload": {"a": [1, "é"]}})
    assert isinstance(data, bytes)
    assert data == '{"type":"pong","payload":{"a":[1,"é"]}}'.encode()


def test_encode_handles_datetimes_and_dataclasses() -> None:
    @dataclasses.dataclass
    class Point:
        x: int
        y: int

    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert orjson.loads(encode({"at": when, "p": Point(1, 2)})) == {
        "at": "2026-01-02T03:04:05+00:00",
        "p": {"x": 1, "y": 2},
    }


def test_encode_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(TypeError):
        encode({"s": {1, 2}})
    with pytest.raises(TypeError):
        encode(object())


def test_to_dict_omits_absent_fields_and_spells_from() -> None:
    assert Message(type="ping").to_dict() == {"type": "ping"}
    full = Message(
        type="user_message",
        payload={"x": 1},
        room="r",
        to="bob",
        from_="alice",
        timestamp="T",
        metadata={"m": 1},
        id=5,
    )
    assert full.to_dict() == {
        "type": "user_message",
        "payload": {"x": 1},
        "room": "r",
        "to": "bob",
        "from": "alice",
        "timestamp": "T",
        "metadata": {"m": 1},
        "id": 5,
    }
    # falsy but present values are kept
    zero = Message(type="message", payload=0, id=0, metadata={}, room="", to="")
    assert zero.to_dict() == {"type": "message", "payload": 0, "id": 0, "metadata": {}, "room": "", "to": ""}


def test_decode_to_dict_round_trip() -> None:
    env = {"type": "room_message", "room": "r", "payload": [1], "metadata": {"a": 1}, "timestamp": "T", "id": "x"}
    assert decode(encode(env)).to_dict() == env
    assert decode(encode(decode(encode(env)).to_dict())).to_dict() == env


# -- error envelopes -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_envelope_for_each_code(code: ErrorCode) -> None:
    env = error_envelope(code, f"something about {code.value}", "req-1")
    assert env["type"] == "error"
    assert env["payload"] == {"code": code.value, "message": f"something about {code.value}"}
    assert type(env["payload"]["code"]) is str  # plain str on the wire, not the enum
    assert env["id"] == "req-1"
    assert TIMESTAMP.match(env["timestamp"])
    assert orjson.loads(encode(env))["payload"]["code"] == code.value


def test_error_envelope_id_is_omitted_only_when_absent() -> None:
    assert "id" not in error_envelope(ErrorCode.INVALID_JSON, "bad")
    assert error_envelope(ErrorCode.INVALID_JSON, "bad", 0)["id"] == 0
    assert error_envelope("custom_code", "bad", "")["payload"]["code"] == "custom_code"


# -- fuzz: decode only ever returns a Message or raises EnvelopeError ------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=25,
)

field_values = json_values | st.sampled_from(sorted(MESSAGE_TYPES)) | st.text(min_size=120, max_size=140)

envelopes = st.dictionaries(
    st.sampled_from(["type", "payload", "room", "to", "from", "timestamp", "metadata", "id", "x"]),
    field_values,
    max_size=8,
)


def check_decode(raw: bytes | str, max_depth: int = 32) -> None:
    try:
        msg = decode(raw, max_depth)
    except EnvelopeError as exc:
        assert exc.code in {c.value for c in ErrorCode}
        assert isinstance(exc.message, str) and exc.message
        return
    assert isinstance(msg, Message)
    assert msg.type in MESSAGE_TYPES
    assert msg.room is None or isinstance(msg.room, str)
    assert msg.to is None or isinstance(msg.to, str)
    assert msg.metadata is None or isinstance(msg.metadata, dict)
    assert msg.timestamp is None or isinstance(msg.timestamp, str)
    assert msg.id is None or (isinstance(msg.id, (str, int)) and not isinstance(msg.id, bool))
    assert msg.from_ is None
    encode(msg.to_dict())  # what decode accepts can be sent back


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(raw: bytes) -> None:
    check_decode(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None), max_size=100))
def test_fuzz_random_text_including_surrogates(raw: str) -> None:
    check_decode(raw)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fuzz_random_json_values(value: Any) -> None:
    check_decode(orjson.dumps(value))
    check_decode(orjson.dumps(value).decode())


@settings(max_examples=500, deadline=None)
@given(envelopes, st.integers(min_value=2, max_value=8))
def test_fuzz_random_envelopes(env: dict[str, Any], max_depth: int) -> None:
    check_decode(orjson.dumps(env), max_depth)


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {"type": st.sampled_from(sorted(MESSAGE_TYPES))},
        optional={
            "payload": json_values,
            "room": st.text(max_size=20),
            "to": st.text(max_size=20) | st.integers(min_value=0, max_value=2**53),
            "timestamp": st.text(max_size=30),
            "metadata": st.dictionaries(st.text(max_size=5), json_values, max_size=3),
            "id": st.text(max_size=128) | st.integers(min_value=-(2**53), max_value=2**53),
        },
    )
)
def test_fuzz_valid_envelopes_round_trip(env: dict[str, Any]) -> None:
    try:
        msg = decode(orjson.dumps(env), 64)
    except EnvelopeError as exc:  # only the depth limit may refuse a well-typed envelope
        assert exc.code == ErrorCode.INVALID_MESSAGE and "deeper" in exc.message
        return
    expected = {k: v for k, v in env.items() if v is not None}
    if "to" in expected:
        expected["to"] = str(expected["to"])
    assert msg.to_dict() == expected


_PLAIN_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=140),
    st.sampled_from([t.value for t in MessageType]),
    st.lists(st.integers(min_value=0, max_value=9), max_size=2),
    st.recursive(st.dictionaries(st.text(max_size=3), st.none(), max_size=2), lambda c: st.lists(c, max_size=2)),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["type", "room", "id"]), _PLAIN_VALUES))
def test_envelopes_of_type_room_and_id_decode_as_the_full_checks_do(obj: dict[str, Any]) -> None:
    """Joins, leaves and pings (only ``type``/``room``/``id``) take a shorter decode; it gives
    the same message or the same refusal as the full checks, which run when another key is
    present (``"payload": null`` decodes as no payload)."""
    plain = orjson.dumps(obj)
    full = orjson.dumps({**obj, "payload": None})
    try:
        expected: Any = decode(full)
    except EnvelopeError as exc:
        expected = (exc.code, exc.message, exc.msg_id)
    try:
        got: Any = decode(plain)
    except EnvelopeError as exc:
        got = (exc.code, exc.message, exc.msg_id)
    assert got == expected
