"""``_core.Relay``: the compiled room-message path answers exactly as the full pipeline does.

Every message below goes through two in-memory hubs, one with the relay and one without it
(``dispatcher.relay = None``: decode, dispatch, ``_store``); what each member gets, acks and
errors included, must be the same (timestamps and epochs aside, which differ by nature). The
relay must take the plain shapes and leave every other one to the full pipeline.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from fasthub import HubConfig
from fasthub._wire.testing import encode_frame
from fasthub.testing import Harness
from tests.conftest import RawClient, serve

DEEP: Any = {"x": 1}
for _ in range(40):
    DEEP = {"d": DEEP}

# (message, whether the relay takes it)
CASES: list[tuple[Any, bool]] = [
    ({"type": "room_message", "room": "r", "payload": {"a": 1, "t": "é✓"}}, True),
    ({"type": "room_message", "room": "r", "payload": [1, 2, 3], "id": "m1"}, True),
    ({"type": "room_message", "room": "r", "payload": "x", "id": 7, "idempotency_key": "k1"}, True),
    ({"type": "room_message", "room": "r", "payload": "x", "id": 8, "idempotency_key": "k1"}, True),  # repeated key
    ({"type": "room_message", "room": "r", "payload": None}, True),
    ({"type": "room_message", "room": "r"}, True),
    ({"room": "r", "payload": 1, "type": "room_message"}, True),  # key order does not matter
    # as json.dumps and hand-written JSON put it: spaces, escapes, floats (the payload's bytes
    # are passed as sent; members read the same values the full pipeline writes)
    ('{"type": "room_message", "room": "r", "payload": {"a": 1.50, "b": "\\u00e9\\ud83d\\ude00", "c": [1e3]}}', True),
    ('{ "type" : "room_message" , "room" : "r" , "payload" : -0.0 , "id" : "s" }', True),
    ('{"type": "room_message", "room": "r", "payload": "\\ud800"}', False),  # a lone surrogate: invalid JSON
    ('{"type": "room_message", "room": "r", "payload": 1e999}', False),  # infinity: invalid JSON
    ({"type": "room_message", "room": "r", "payload": 1, "timestamp": "then"}, False),
    ({"type": "room_message", "room": "r", "payload": 1, "metadata": {"k": "v"}}, False),
    ({"type": "room_message", "room": "r", "payload": 1, "extra": True}, False),
    ({"type": "room_message", "room": "elsewhere", "payload": 1}, False),  # not a member
    ({"type": "room_message", "room": "nowhere!", "payload": 1}, False),  # no such room, bad name
    ({"type": "room_message", "room": "r", "payload": DEEP}, False),  # too deep
    ({"type": "room_message", "room": "r", "payload": 1, "id": True}, False),
    ({"type": "room_message", "room": "r", "payload": 1, "id": "x" * 129}, False),
    ({"type": "room_message", "room": "r", "payload": 1, "idempotency_key": ""}, False),
    ({"type": "room_message", "room": 5, "payload": 1}, False),
    ({"type": "ping", "id": 1}, False),
    ([1, 2], False),
    ("{not json", False),
]


def normalize(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("T" if k == "timestamp" else "E" if k == "epoch" else normalize(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def run(config: HubConfig, relay: bool, cases: list[tuple[Any, bool]]) -> tuple[list[Any], list[Any], int]:
    with Harness(config) as h:
        dispatcher = h.app.dispatcher
        if not relay:
            dispatcher.relay = None
        alice, bob = h.connect("alice"), h.connect(None)
        h.hub.create_room("elsewhere")
        for c in (alice, bob):
            c.send({"type": "join_room", "room": "r"})
        alice.received(), bob.received()
        for message, _ in cases:
            alice.send(message)
        got = normalize(alice.received()), normalize(bob.received())
        relayed = dispatcher.relay.relayed if dispatcher.relay is not None else 0
        return got[0], got[1], relayed


@pytest.mark.parametrize("history", [100, 0], ids=["history", "no-history"])
def test_relay_answers_as_the_full_pipeline(history: int) -> None:
    config = HubConfig(rate_limit=0, history_size=history)
    fast_alice, fast_bob, relayed = run(config, True, CASES)
    slow_alice, slow_bob, _ = run(config, False, CASES)
    assert fast_alice == slow_alice
    assert fast_bob == slow_bob
    assert relayed == sum(1 for _, fast in CASES if fast)
    # something was delivered and answered: the comparison is not of two empty lists
    kinds = [m["type"] for m in fast_alice]
    assert kinds.count("room_message") >= 8 and "ack" in kinds and "error" in kinds
    if history:
        offsets = [m["offset"] for m in fast_bob if m["type"] == "room_message"]
        assert offsets == list(range(1, len(offsets) + 1))  # a repeated key is stored once
        acks = [m for m in fast_alice if m["type"] == "ack"]
        assert acks[2]["payload"] == {"offset": acks[1]["payload"]["offset"], "epoch": "E", "duplicate": True}


# plain joins (only type, room and id) are read by the relay and handed to the dispatcher
JOIN_CASES: list[tuple[Any, bool]] = [
    ({"type": "join_room", "room": "j1"}, True),
    ({"type": "join_room", "room": "j1", "id": 5}, True),  # already a member
    ({"type": "join_room", "room": "j2", "id": "x"}, True),
    ({"type": "join_room", "room": "bad name!", "id": 6}, True),  # an invalid name: the error has the id
    ({"type": "join_room", "room": "r", "id": 7}, True),
    ({"type": "join_room", "room": "j3", "payload": None, "id": 8}, False),
    ('{ "type" : "join_room" , "room" : "j4" }', True),  # a fifth room: max_rooms_per_connection
    ({"type": "join_room", "room": "j5", "id": True}, False),
    ({"type": "join_room", "room": "j5", "since": {"offset": 0, "epoch": "e"}}, False),
]


def test_plain_joins_through_the_relay_answer_as_the_full_pipeline() -> None:
    config = HubConfig(rate_limit=0, history_size=100, max_rooms_per_connection=4)
    fast_alice, fast_bob, _ = run(config, True, JOIN_CASES)
    slow_alice, slow_bob, _ = run(config, False, JOIN_CASES)
    assert fast_alice == slow_alice
    assert fast_bob == slow_bob
    events = [(m["type"], m["payload"].get("event") or m["payload"].get("code")) for m in fast_alice]
    assert events.count(("system", "joined")) >= 5
    assert ("error", "invalid_room") in events and ("error", "too_many_rooms") in events


def test_a_plain_join_is_not_decoded_again_unless_a_join_hook_must_see_it() -> None:
    for hook in (None, lambda conn, room: True):
        with Harness(HubConfig(rate_limit=0), can_join=hook) as h:
            dispatcher = h.app.dispatcher
            decoded: list[bytes] = []
            full = dispatcher.decoded
            def counting(conn: Any, data: bytes, full: Any = full, decoded: list[bytes] = decoded) -> Any:
                decoded.append(data)
                return full(conn, data)

            dispatcher.decoded = counting  # type: ignore[method-assign]
            c = h.connect("alice")
            c.send({"type": "join_room", "room": "r", "id": 1})
            reply = c.received()[-1]
            assert reply["payload"]["event"] == "joined" and reply["id"] == 1
            assert (dispatcher.relay.join is None) == (hook is not None)
            assert len(decoded) == (0 if hook is None else 1)


@pytest.mark.parametrize("history", [100, 0], ids=["history", "no-history"])
def test_a_relayed_message_goes_to_its_sender_first(history: int) -> None:
    """The publisher joined last, but its own copy is the first one written: a client that waits
    for its echo before sending the next message is not held for the whole fan-out."""
    with Harness(HubConfig(rate_limit=0, history_size=history)) as h:
        clients = [h.connect(None) for _ in range(5)]
        for c in clients:
            c.send({"type": "join_room", "room": "r"})
        for c in clients:
            c.received()
        order: list[str] = []
        for c in clients:
            def flushed(flush: Any = c.sink.flush, cid: str = c.id) -> None:
                order.append(cid)
                flush()

            c.sink.flush = flushed  # type: ignore[method-assign]
        publisher = clients[-1]
        for n in range(3):
            order.clear()
            publisher.send({"type": "room_message", "room": "r", "payload": n})
            assert order[0] == publisher.id
            assert sorted(order) == sorted(c.id for c in clients)
        for c in clients:
            assert [m["payload"] for m in c.received()] == [0, 1, 2]  # each member's order kept


def test_a_join_that_raises_still_counts_the_read() -> None:
    """``Relay.feed`` records a read's bytes and messages even when a handler it calls raises
    (here a plain join whose hub step fails): the exception goes on, the counts stay."""
    with Harness(HubConfig(rate_limit=0)) as h:
        c = h.connect(None)
        c.received()
        relay = h.app.dispatcher.relay
        assert relay is not None and relay.join is not None

        def failing(conn: Any, room: str, msg_id: Any) -> None:
            raise RuntimeError("join failed")

        relay.join = failing
        before = (h.hub.bytes_in, h.hub.messages_in)
        ping = b'{"type":"room_message","room":"nowhere","payload":1}'
        join = b'{"type":"join_room","room":"r"}'
        with pytest.raises(RuntimeError):
            relay.feed(c.conn, [(1, join)], 1, 0.0)
        assert (h.hub.bytes_in, h.hub.messages_in) == (before[0] + len(join), before[1] + 1)
        assert relay.feed(c.conn, [(1, ping)], 1, 0.0) == 0  # not a member: the full pipeline's


def test_a_message_handler_or_publish_hook_turns_the_relay_off() -> None:
    with Harness(HubConfig(rate_limit=0), on_message=lambda conn, msg: None) as h:
        assert h.app.dispatcher.relay is None
    with Harness(HubConfig(rate_limit=0), can_publish=lambda conn, room: True) as h:
        assert h.app.dispatcher.relay is None
    with Harness(HubConfig(rate_limit=0)) as h:
        assert h.app.dispatcher.relay is not None


def test_relay_closes_a_slow_consumer_as_the_hub_does() -> None:
    """A member over its budget under policy "close" is closed by the relay's delivery."""
    config = HubConfig(
        rate_limit=0, send_buffer_size=4096, max_message_size=4096, slow_consumer="close", history_size=0
    )
    with Harness(config) as h:
        alice, bob = h.connect("alice"), h.connect("bob")
        for c in (alice, bob):
            c.send({"type": "join_room", "room": "r"})
        relay = h.app.dispatcher.relay
        assert relay is not None
        bob.sink.flush = lambda: None  # type: ignore[method-assign]  # bob stops reading
        for i in range(20):
            alice.send({"type": "room_message", "room": "r", "payload": "x" * 400 + str(i)})
        assert relay.relayed >= 11  # the relay took them (a congested room pauses, not refuses)
        assert bob.conn.closed
        assert h.hub.slow_consumer_closes == 1
        assert len([m for m in alice.received() if m["type"] == "room_message"]) == 20


def frames(*messages: Any) -> bytes:
    """Client frames in one write: dicts as JSON text, bytes as binary, str as raw text."""
    out = b""
    for m in messages:
        if isinstance(m, bytes):
            out += encode_frame(0x2, m, mask=os.urandom(4))
        else:
            data = m.encode() if isinstance(m, str) else json.dumps(m).encode()
            out += encode_frame(0x1, data, mask=os.urandom(4))
    return out


def test_one_read_mixing_relayed_and_other_messages_keeps_their_order() -> None:
    """On the fast path a read's plain room messages go through ``Relay.feed``; a ping, bad
    JSON, a binary frame or a message with metadata among them is answered in its place."""
    rm = {"type": "room_message", "room": "r"}
    with serve(config=HubConfig(rate_limit=0), ws="fasthub") as server:
        c = RawClient(server, "")
        assert c.json()["payload"]["event"] == "connected"
        c.send_json({"type": "join_room", "room": "r"})
        assert c.json()["payload"]["event"] == "joined"
        relay = server.app.dispatcher.relay
        assert relay is not None
        before = relay.relayed
        c.sock.sendall(frames(
            {**rm, "payload": 1}, {"type": "ping", "id": "p"}, {**rm, "payload": 2}, "{bad",
            {**rm, "payload": 3}, b"\x00", {**rm, "payload": 4, "metadata": {"m": 1}}, {**rm, "payload": 5, "id": 9},
        ))
        got = [c.json() for _ in range(9)]
        summary = [(m["type"], m.get("payload") if m["type"] == "room_message" else m.get("id")) for m in got]
        assert summary == [
            ("room_message", 1), ("pong", "p"), ("room_message", 2), ("error", None), ("room_message", 3),
            ("error", None), ("room_message", 4), ("room_message", 5), ("ack", 9),
        ]
        assert got[3]["payload"]["code"] == "invalid_json"
        assert got[5]["payload"]["code"] == "unsupported_data"
        assert got[6]["metadata"] == {"m": 1}
        assert relay.relayed - before == 4  # 1, 2, 3 and 5: the one with metadata is the pipeline's
        c.close()


def test_members_get_the_payload_bytes_as_sent() -> None:
    """The relay splices the delivered envelope around the sender's payload bytes: spaces,
    escapes and number forms reach the other members as written, and read as the same values."""
    payload_text = '{ "price": 1.50, "name": "caf\\u00e9 \\ud83d\\ude00", "n": [1e3, -0, true, null] }'
    with serve(config=HubConfig(rate_limit=0), ws="fasthub") as server:
        alice, bob = RawClient(server, ""), RawClient(server, "")
        for c in (alice, bob):  # one after the other: alice then hears of bob's join
            assert c.json()["payload"]["event"] == "connected"
            c.send_json({"type": "join_room", "room": "r"})
            assert c.json()["payload"]["event"] == "joined"
        assert alice.json()["payload"]["event"] == "user_joined"
        relay = server.app.dispatcher.relay
        before = relay.relayed
        alice.sock.sendall(frames('{"type":"room_message", "room":"r", "payload": ' + payload_text + ', "id": 5}'))
        got = bob.frame()
        assert got is not None and got[0] == 0x1
        assert b'"payload":' + payload_text.encode() + b',"room":"r"' in got[1]
        message = json.loads(got[1])
        assert message["payload"] == json.loads(payload_text) and message["id"] == 5
        assert message["payload"]["name"] == "caf\u00e9 \U0001f600"
        assert alice.json()["payload"] == json.loads(payload_text)  # the sender is a member too
        assert alice.json()["type"] == "ack"
        assert relay.relayed - before == 1
        alice.close()
        bob.close()


def test_feed_spends_the_rate_limit_as_receive_does() -> None:
    """Past the burst, the relay's loop refuses as the pipeline does: ``rate_limited``, and the
    messages after the pause still arrive in order."""
    config = HubConfig(rate_limit=5, rate_limit_bytes=0, rate_limit_strikes=1000)
    with serve(config=config, ws="fasthub") as server:
        c = RawClient(server, "")
        assert c.json()["payload"]["event"] == "connected"
        c.send_json({"type": "join_room", "room": "r"})
        assert c.json()["payload"]["event"] == "joined"
        c.sock.sendall(frames(*({"type": "room_message", "room": "r", "payload": i} for i in range(30))))
        seen, limited = [], 0
        deadline = time.monotonic() + 10
        while len(seen) + limited < 30 and time.monotonic() < deadline:
            m = c.json()
            if m["type"] == "error":
                assert m["payload"]["code"] == "rate_limited"
                limited += 1
            else:
                seen.append(m["payload"])
        assert limited >= 1 and seen == sorted(seen) and len(seen) >= 5
        c.close()


@pytest.mark.parametrize("with_id", [False, True], ids=["plain", "with-id"])
def test_a_message_sent_right_after_join_reaches_its_sender_through_redis(redis_server: Any, with_id: bool) -> None:
    """With Redis a join reads the room's position from the broker. A message the new member
    sends before the ``joined`` reply (in the same write, as a load generator does) is published
    after that read: the reply's offset is before it, and the member gets it (it was stored
    first, counted as seen, and never delivered before)."""
    from fasthub.broker import RedisBroker

    broker = RedisBroker(redis_server.url, prefix=f"joinrace{os.getpid()}", ttl=2.0)
    with serve(config=HubConfig(rate_limit=0), ws="fasthub", broker=broker) as server:
        deadline = time.monotonic() + 10
        while not broker.up:  # connected to Redis (else the join is answered "unavailable")
            assert time.monotonic() < deadline, "the broker did not connect"
            time.sleep(0.02)
        c = RawClient(server, "")
        assert c.json()["payload"]["event"] == "connected"
        extra = {"id": "m1"} if with_id else {}
        c.sock.sendall(frames(
            {"type": "join_room", "room": "race"},
            {"type": "room_message", "room": "race", "payload": {"n": 1}, **extra},
            {"type": "room_message", "room": "race", "payload": {"n": 2}},
        ))
        joined = c.json()
        assert joined["type"] == "system" and joined["payload"].get("event") == "joined", joined
        assert joined["payload"]["offset"] == 0, joined
        got = [c.json() for _ in range(3 if with_id else 2)]
        messages = [m for m in got if m["type"] == "room_message"]
        assert [(m["payload"]["n"], m["offset"]) for m in messages] == [(1, 1), (2, 2)]
        if with_id:
            assert next(m for m in got if m["type"] == "ack")["payload"]["offset"] == 1
        c.close()


def test_a_lone_message_after_a_pause_is_written_at_once_and_a_burst_is_joined() -> None:
    """On the fast path a message that came alone after a quiet moment skips the queue and
    the flush (``Fanout.send_many``, the sender's copy first); messages that come together are
    queued and joined as before. Every member gets every message once, in order, either way."""
    with serve(config=HubConfig(rate_limit=0), ws="fasthub") as server:
        clients = [RawClient(server, "") for _ in range(4)]
        for c in clients:  # one after the other: each hears of the joins after its own
            assert c.json()["payload"]["event"] == "connected"
            c.send_json({"type": "join_room", "room": "r"})
            assert c.json()["payload"]["event"] == "joined"
        for i, c in enumerate(clients):
            assert [c.json()["payload"]["event"] for _ in range(len(clients) - 1 - i)] == ["user_joined"] * (3 - i)
        fanout = server.hub.fanout
        publisher = clients[1]
        rm = {"type": "room_message", "room": "r"}
        for n in range(3):  # each alone, after a pause longer than quiet_ns (1 ms)
            time.sleep(0.01)
            before = fanout.direct
            publisher.sock.sendall(frames({**rm, "payload": n}))
            for c in clients:
                assert c.json()["payload"] == n
            deadline = time.monotonic() + 2  # counted after the pass, in the server's thread
            while fanout.direct == before and time.monotonic() < deadline:
                time.sleep(0.001)
            assert fanout.direct == before + 1
        before = fanout.direct
        publisher.sock.sendall(frames(*({**rm, "payload": 10 + k} for k in range(5))))  # one read
        for c in clients:
            assert [c.json()["payload"] for _ in range(5)] == [10, 11, 12, 13, 14]
        assert fanout.direct == before  # queued and flushed, not written at once
        for c in clients:
            c.close()
