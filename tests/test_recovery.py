"""Streams end to end: offsets, epochs, acks, joins with a position, and the race of a resume.

Each test runs on one fast-path server (``LocalBroker``: history in memory) and on a two-node
cluster on a real redis-server (``RedisBroker``: history in Redis Streams), where consecutive
clients connect to different nodes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fasthub import HubConfig
from tests.conftest import CLUSTER_KIND, Client, connect, query_user, run


@pytest.fixture(params=[pytest.param(("fasthub", False), id="local"), CLUSTER_KIND])
def server_kind(request: pytest.FixtureRequest) -> tuple[str, bool]:
    return request.param  # type: ignore[no-any-return]


async def joined(client: Client, room: str, since: dict[str, Any] | None = None, rid: Any = "j") -> dict[str, Any]:
    """Join (with a position), return the reply; the room messages before it are in ``client.before``."""
    msg: dict[str, Any] = {"type": "join_room", "room": room, "id": rid}
    if since is not None:
        msg["since"] = since
    await client.send(msg)
    before = []
    while True:
        got = await client.recv()
        if got["type"] == "system" and got.get("id") == rid:
            client.before = before  # type: ignore[attr-defined]
            return got["payload"]  # type: ignore[no-any-return]
        if got["type"] == "room_message":
            before.append(got)


async def room_messages(client: Client, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    out = []
    while len(out) < n:
        got = await client.recv(timeout)
        if got["type"] == "room_message":
            out.append(got)
    return out


def test_offsets_epochs_and_acks(make_server: Any) -> None:
    server = make_server()

    async def scenario() -> None:
        a = await connect(server, "user=a")
        b = await connect(server, "user=b")
        first = await joined(a, "r")
        assert first["offset"] == 0 and isinstance(first["epoch"], str) and len(first["epoch"]) == 8
        second = await joined(b, "r")
        assert (second["offset"], second["epoch"]) == (0, first["epoch"])
        for i in range(3):
            await a.send({"type": "room_message", "room": "r", "payload": i, "id": f"m{i}"})
        got = await room_messages(b, 3)
        assert [(m["offset"], m["payload"]) for m in got] == [(1, 0), (2, 1), (3, 2)]
        acks = []
        while len(acks) < 3:
            msg = await a.recv()
            if msg["type"] == "ack":
                acks.append(msg)
        assert [(m["id"], m["payload"]["offset"], m["payload"]["epoch"]) for m in acks] == [
            ("m0", 1, first["epoch"]),
            ("m1", 2, first["epoch"]),
            ("m2", 3, first["epoch"]),
        ]
        # a later join starts where the stream is
        c = await connect(server, "user=c")
        assert (await joined(c, "r"))["offset"] == 3

    run(scenario())


def test_a_rejoin_with_its_position_gets_what_it_missed_in_order_then_live(make_server: Any) -> None:
    server = make_server()

    async def scenario() -> None:
        a = await connect(server, "user=a")
        b = await connect(server, "user=b")
        await joined(a, "r")
        epoch = (await joined(b, "r"))["epoch"]
        for i in range(3):
            await a.send({"type": "room_message", "room": "r", "payload": i})
        last = (await room_messages(b, 3))[-1]["offset"]
        await b.close()
        for i in range(3, 8):
            await a.send({"type": "room_message", "room": "r", "payload": i})
        await room_messages(a, 8)  # all stored
        b = await connect(server, "user=b")
        reply = await joined(b, "r", {"offset": last, "epoch": epoch})
        assert reply["recovered"] is True and (reply["offset"], reply["epoch"]) == (8, epoch)
        assert [(m["offset"], m["payload"]) for m in b.before] == [(4, 3), (5, 4), (6, 5), (7, 6), (8, 7)]
        await a.send({"type": "room_message", "room": "r", "payload": "live"})
        live = (await room_messages(b, 1))[0]
        assert (live["offset"], live["payload"]) == (9, "live")
        # nothing missed: recovered, nothing resent
        c = await connect(server, "user=c")
        reply = await joined(c, "r", {"offset": 9, "epoch": epoch})
        assert reply["recovered"] is True and reply["offset"] == 9 and c.before == []

    run(scenario())


def test_a_resume_while_messages_keep_arriving_has_no_gap_and_no_duplicate(make_server: Any) -> None:
    """The race the buffering is for: a publisher sends every ~2 ms while a reader drops and
    rejoins with its position five times; it must end with every offset exactly once, in order."""
    server = make_server()
    total = 400

    async def scenario() -> None:
        pub = await connect(server, "user=pub")
        await joined(pub, "race")
        reader = await connect(server, "user=reader")
        position = await joined(reader, "race")
        epoch = position["epoch"]
        seen: list[int] = []

        async def publish() -> None:
            for i in range(total):
                await pub.send({"type": "room_message", "room": "race", "payload": i})
                await asyncio.sleep(0.002)

        publisher = asyncio.ensure_future(publish())
        for _ in range(5):
            for m in await room_messages(reader, 30):
                seen.append(m["offset"])
            await reader.close()
            await asyncio.sleep(0.02)
            reader = await connect(server, "user=reader")
            reply = await joined(reader, "race", {"offset": seen[-1], "epoch": epoch})
            assert reply["recovered"] is True, reply
            seen.extend(m["offset"] for m in reader.before)
            assert reply["offset"] == seen[-1]
        await publisher
        while len(seen) < total:
            seen.extend(m["offset"] for m in await room_messages(reader, total - len(seen)))
        assert seen == list(range(1, total + 1))
        await reader.silent(0.2)

    run(scenario(), timeout=60)


def test_what_cannot_be_recovered_says_so(make_server: Any) -> None:
    server = make_server(HubConfig(history_size=5, recovery_max=3))

    async def scenario() -> None:
        a = await connect(server, "user=a")
        epoch = (await joined(a, "r"))["epoch"]
        for i in range(10):
            await a.send({"type": "room_message", "room": "r", "payload": i})
        await room_messages(a, 10)
        b = await connect(server, "user=b")
        cases = [
            ({"offset": 8, "epoch": "another"}, "epoch"),  # the history was lost since
            ({"offset": 1, "epoch": epoch}, "limit"),  # 9 missed, more than recovery_max
            ({"offset": 11, "epoch": epoch}, "offset"),  # a position the stream never had
        ]
        for n, (since, reason) in enumerate(cases):
            reply = await joined(b, "r", since, rid=n)
            assert reply["recovered"] is False and reply["reason"] == reason, reply
            assert (reply["offset"], reply["epoch"]) == (10, epoch) and b.before == []
            await b.send({"type": "leave_room", "room": "r", "id": f"l{n}"})
            await b.expect("system", id=f"l{n}")
        # 3 missed but only the last 5 kept: recovered; 3 missed from further back: expired
        assert (await joined(b, "r", {"offset": 7, "epoch": epoch}))["recovered"] is True
        assert [m["offset"] for m in b.before] == [8, 9, 10]

    run(scenario())


def test_expired_history_is_not_recovered(make_server: Any) -> None:
    server = make_server(HubConfig(history_size=100, history_ttl=0.3))

    async def scenario() -> None:
        a = await connect(server, "user=a")
        epoch = (await joined(a, "r"))["epoch"]
        await a.send({"type": "room_message", "room": "r", "payload": "old"})
        await room_messages(a, 1)
        await asyncio.sleep(0.5)
        b = await connect(server, "user=b")
        reply = await joined(b, "r", {"offset": 0, "epoch": epoch})
        assert reply["recovered"] is False and reply["reason"] == "expired" and b.before == []

    run(scenario())


def test_rooms_without_history_carry_no_offsets(make_server: Any) -> None:
    server = make_server(HubConfig(room_history=(("live:*", 0, 0),)))

    async def scenario() -> None:
        a = await connect(server, "user=a")
        reply = await joined(a, "live:1")
        assert "offset" not in reply and "epoch" not in reply
        await a.send({"type": "room_message", "room": "live:1", "payload": 1, "id": 1})
        got = (await room_messages(a, 1))[0]
        assert "offset" not in got
        ack = await a.expect("ack", id=1)
        assert "payload" not in ack  # accepted, not stored
        # other rooms keep history
        assert (await joined(a, "kept"))["offset"] == 0

    run(scenario())


def test_a_retried_publish_with_its_idempotency_key_is_stored_and_delivered_once(make_server: Any) -> None:
    server = make_server()

    async def scenario() -> None:
        a = await connect(server, "user=a")
        b = await connect(server, "user=b")
        await joined(a, "r")
        await joined(b, "r")
        acks: dict[int, dict[str, Any]] = {}
        for attempt in range(3):
            await a.send({"type": "room_message", "room": "r", "payload": "once", "id": attempt,
                          "idempotency_key": "k-1"})
            # (through Redis the ack and the sender's own copy race: either may come first)
            while attempt not in acks:
                msg = await a.recv()
                if msg["type"] == "ack":
                    acks[msg["id"]] = msg
        for attempt, ack in acks.items():
            assert ack["payload"]["offset"] == 1
            assert ack["payload"].get("duplicate", False) is (attempt > 0)
        await a.send({"type": "room_message", "room": "r", "payload": "next", "idempotency_key": "k-2"})
        got = await room_messages(b, 2)
        assert [(m["payload"], m["offset"]) for m in got] == [("once", 1), ("next", 2)]
        await b.silent(0.2)

    run(scenario())


def test_a_bad_position_gets_an_error_and_the_connection_stays(make_server: Any) -> None:
    server = make_server()

    async def scenario() -> None:
        a = await connect(server, "user=a")
        for since in ({"offset": -1, "epoch": "e"}, {"offset": 1}, 5, {"offset": "1", "epoch": "e"}):
            await a.send({"type": "join_room", "room": "r", "since": since, "id": "bad"})
            err = await a.error("invalid_message")
            assert err["id"] == "bad"
        await a.send({"type": "room_message", "room": "r", "payload": 1, "idempotency_key": ""})
        await a.error("invalid_message")
        assert (await joined(a, "r"))["offset"] == 0

    run(scenario())


# -- session resume --------------------------------------------------------------------------------


def test_a_session_comes_back_with_its_rooms_and_what_it_missed(make_server: Any) -> None:
    server = make_server()

    async def scenario() -> None:
        pub = await connect(server, "user=pub")
        await joined(pub, "r1")
        await joined(pub, "r2")
        bob = await connect(server, "user=bob")
        first = bob.hello["payload"]
        assert isinstance(first["session"], str) and first["stream"]["offset"] == 0
        e1 = (await joined(bob, "r1"))["epoch"]
        e2 = (await joined(bob, "r2"))["epoch"]
        await pub.send({"type": "room_message", "room": "r1", "payload": "seen"})
        assert (await room_messages(bob, 1))[0]["offset"] == 1
        await bob.close()
        await asyncio.sleep(0.1)
        for i in range(3):
            await pub.send({"type": "room_message", "room": "r1", "payload": i})
        await pub.send({"type": "room_message", "room": "r2", "payload": "r2"})
        server.call(server.hub.send_to_user_json, "bob", {"type": "notification", "payload": "while away"})
        await room_messages(pub, 5)
        bob = await connect(server, "user=bob")
        await bob.send({"type": "resume", "id": "res", "payload": {
            "token": first["session"],
            "rooms": {"r1": {"offset": 1, "epoch": e1}, "r2": {"offset": 0, "epoch": e2}},
            "user": first["stream"],
        }})
        got: list[dict[str, Any]] = []
        while (msg := await bob.recv())["type"] != "system" or msg["payload"]["event"] != "resumed":
            got.append(msg)
        p = msg["payload"]
        assert msg["id"] == "res" and p["resumed"] is True and p["session"] == first["connection_id"]
        assert p["rooms"]["r1"]["recovered"] is True and p["rooms"]["r1"]["offset"] == 4
        assert p["rooms"]["r2"]["recovered"] is True and p["rooms"]["r2"]["offset"] == 1
        assert p["user"]["recovered"] is True and p["user"]["offset"] == 1
        room_msgs = [(m["room"], m["offset"], m["payload"]) for m in got if m["type"] == "room_message"]
        assert sorted(room_msgs) == [("r1", 2, 0), ("r1", 3, 1), ("r1", 4, 2), ("r2", 1, "r2")]
        assert [m["payload"] for m in got if m["type"] == "notification"] == ["while away"]
        # live again in both rooms
        await pub.send({"type": "room_message", "room": "r2", "payload": "live"})
        assert (await room_messages(bob, 1))[0]["offset"] == 2
        # a session is taken once
        again = await connect(server, "user=bob")
        await again.send({"type": "resume", "id": 2, "payload": {"token": first["session"]}})
        reply = await again.expect("system", id=2)
        assert reply["payload"]["resumed"] is False and reply["payload"]["reason"] == "expired"

    run(scenario())


def test_a_bad_session_token_is_refused_and_the_connection_starts_fresh(make_server: Any) -> None:
    server = make_server(HubConfig(session_ttl=0.3))

    async def scenario() -> None:
        alice = await connect(server, "user=alice")
        token = alice.hello["payload"]["session"]
        await joined(alice, "r")
        await alice.close()
        mallory = await connect(server, "user=mallory")
        await mallory.send({"type": "resume", "id": 1, "payload": {"token": token}})
        err = await mallory.error("invalid_session")
        assert err["id"] == 1 and "not this user's" in err["payload"]["message"]
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        for bad in (forged, "x.y", 42, None):
            await mallory.send({"type": "resume", "id": 2, "payload": {"token": bad}})
            assert (await mallory.error("invalid_session"))["id"] == 2
        await asyncio.sleep(0.5)  # older than session_ttl
        alice = await connect(server, "user=alice")
        await alice.send({"type": "resume", "id": 3, "payload": {"token": token}})
        reply = await alice.expect("system", id=3)
        assert reply["payload"]["resumed"] is False and reply["payload"]["reason"] == "expired"
        assert (await joined(alice, "r"))["members"] == 1  # and it carries on as a fresh connection

    run(scenario())


# -- GET /ws/history -------------------------------------------------------------------------------


def test_the_history_endpoint_serves_what_a_join_would_recover(make_server: Any) -> None:
    import httpx

    from fasthub.exceptions import Denied

    def auth(scope: Any) -> str:
        user = query_user(scope)
        if user is None:
            raise Denied(401, "who are you?")
        return user

    server = make_server(HubConfig(history_size=10), authenticate=auth, can_join={"secret": False, "*": True})

    async def scenario() -> None:
        a = await connect(server, "user=a")
        (await joined(a, "r"))["epoch"]
        for i in range(15):
            await a.send({"type": "room_message", "room": "r", "payload": i})
        await room_messages(a, 15)

    run(scenario())
    base = f"{server.http}/ws/history"
    got = httpx.get(base, params={"room": "r", "since": 12, "user": "a"}).json()
    assert got["recovered"] is True and got["offset"] == 15
    assert [(m["offset"], m["payload"]) for m in got["messages"]] == [(13, 12), (14, 13), (15, 14)]
    epoch = got["epoch"]
    # without since: the last `limit` that the history still holds
    tail = httpx.get(base, params={"room": "r", "limit": 4, "user": "a"}).json()
    assert [m["offset"] for m in tail["messages"]] == [12, 13, 14, 15]
    whole = httpx.get(base, params={"room": "r", "user": "a"}).json()
    assert [m["offset"] for m in whole["messages"]] == list(range(6, 16))  # 10 kept
    old = httpx.get(base, params={"room": "r", "since": 2, "user": "a"}).json()
    assert old["recovered"] is False and old["reason"] == "expired" and old["messages"] == []
    other = httpx.get(base, params={"room": "r", "since": 2, "epoch": "other", "user": "a"}).json()
    assert other["reason"] == "epoch" and other["epoch"] == epoch
    assert httpx.get(base, params={"room": "r", "since": 12}).status_code == 401  # authenticated like /ws
    assert httpx.get(base, params={"room": "secret", "user": "a"}).status_code == 403  # and can_join
    assert httpx.get(base, params={"room": "", "user": "a"}).status_code == 400
    assert httpx.get(base, params={"room": "r", "since": -1, "user": "a"}).status_code == 400
    assert httpx.get(base, params={"room": "r", "limit": 100000, "user": "a"}).status_code == 400


def test_epochs_are_random_and_a_forked_worker_draws_its_own() -> None:
    """Epochs come from a pool of random bytes (the Redis broker passes one with every publish):
    8 URL-safe characters, none repeated, and a forked ``--workers`` child never repeats its
    parent's next ones (it refills its own pool)."""
    import os
    import re

    from fasthub.streams import new_epoch

    drawn = [new_epoch() for _ in range(5000)]
    assert len(set(drawn)) == len(drawn)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{8}", e) for e in drawn)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next epochs, to the parent
        os.write(write, " ".join(new_epoch() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 65536).decode().split()
    os.close(read)
    parent = [new_epoch() for _ in range(50)]
    assert len(child) == 50 and not set(child) & set(parent)
