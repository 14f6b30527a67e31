"""End to end: every message type and every bad input, against a real server and real clients.

Parametrized over the server kinds of conftest (ws implementation x standalone/mounted) and a
two-node cluster on a real redis-server, where consecutive clients connect to different nodes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest
import websockets

from fasthub import HubConfig, _ext
from tests.conftest import CLUSTER_KIND, SERVER_KINDS, Server, connect, local_totals, run


@pytest.fixture(params=[*SERVER_KINDS, CLUSTER_KIND])
def server_kind(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """Every test here runs on each server kind and on a two-node cluster (clients alternate nodes)."""
    return request.param  # type: ignore[no-any-return]


def test_connected_message_and_anonymous_users_are_distinct(server: Server) -> None:
    async def scenario() -> None:
        a = await connect(server)
        b = await connect(server)
        c = await connect(server, "user=alice")
        assert a.conn_id != b.conn_id
        assert a.user_id != b.user_id  # anonymous connections never share a user
        assert c.user_id == "alice"
        assert "timestamp" in a.hello
        assert local_totals(server) == {"connections": 3, "users": 3}
        for x in (a, b, c):
            await x.close()

    run(scenario())


def test_the_connected_message_is_what_orjson_writes(server: Server) -> None:
    """An anonymous connect's ``connected`` envelope is written as text on the fast path: the
    same bytes orjson writes for the same fields, and a token that resumes the session."""

    async def scenario() -> None:
        async with websockets.connect(server.ws_url()) as ws:
            text = await asyncio.wait_for(ws.recv(), 5)
            assert isinstance(text, str)
            hello = json.loads(text)
            assert text.encode() == orjson.dumps(hello)
            assert list(hello) == ["type", "payload", "timestamp"]
            assert hello["type"] == "system"
            payload = hello["payload"]
            assert payload["event"] == "connected"
            assert payload["user_id"] == "anon-" + payload["connection_id"]
            assert payload["session"].startswith(payload["connection_id"] + ".")

    run(scenario())


def test_ping_pong_with_id_and_payload(server: Server) -> None:
    async def scenario() -> None:
        a = await connect(server)
        await a.send({"type": "ping", "id": "p1", "payload": {"n": 1}})
        pong = await a.expect("pong", id="p1")
        assert pong["payload"] == {"n": 1} and pong["timestamp"].endswith("Z")
        await a.send({"type": "pong"})  # app-level pong is accepted silently
        await a.silent()

    run(scenario())


def test_join_and_leave_events(server: Server) -> None:
    async def scenario() -> None:
        a = await connect(server, "user=alice")
        b = await connect(server, "user=bob")
        await a.send({"type": "join_room", "room": "lobby", "id": 7})
        joined = await a.expect("system", room="lobby", id=7)
        assert isinstance(joined["payload"].pop("epoch"), str)
        assert joined["payload"] == {"event": "joined", "action": "joined", "room": "lobby", "members": 1, "offset": 0}
        await b.send({"type": "join_room", "room": "lobby"})
        assert (await b.expect("system"))["payload"]["members"] == 2
        event = await a.expect("system", room="lobby")
        assert event["payload"]["action"] == "user_joined" and event["payload"]["user_id"] == "bob"
        assert event["payload"]["members"] == 2
        await b.send({"type": "leave_room", "room": "lobby", "id": "l"})
        left = await b.expect("system", id="l")
        assert left["payload"]["action"] == "left" and left["payload"]["members"] == 1
        event = await a.expect("system")
        assert event["payload"]["action"] == "user_left" and event["payload"]["user_id"] == "bob"
        # leaving twice is an error; a disconnect is a leave
        await b.send({"type": "leave_room", "room": "lobby", "id": "again"})
        await b.error("not_member")
        await b.join("lobby")
        await a.expect("system")
        await b.close()
        event = await a.expect("system")
        assert event["payload"]["action"] == "user_left"
        assert server.call(lambda: server.hub.get_room("lobby").member_count) == 1

    run(scenario())


def test_room_message_reaches_every_member_sender_included_and_from_is_server_set(server: Server) -> None:
    async def scenario() -> None:
        a = await connect(server, "user=alice")
        b = await connect(server, "user=bob")
        outsider = await connect(server, "user=carol")
        await a.join("r1")
        await b.join("r1")
        await a.expect("system")  # user_joined
        await a.send({"type": "room_message", "room": "r1", "payload": {"text": "hi"}, "from": "mallory", "id": 5})
        # the sender's id also gets an ack with the message's place in the room's stream (through
        # Redis the ack and the sender's own copy race: either comes first)
        first, second = await a.recv(), await a.recv()
        ack, own = (first, second) if first["type"] == "ack" else (second, first)
        assert ack["type"] == "ack" and ack["id"] == 5 and ack["room"] == "r1"
        assert ack["payload"]["offset"] == 1 and isinstance(ack["payload"]["epoch"], str)
        for got in (own, await b.expect("room_message", room="r1", id=5)):
            assert got["type"] == "room_message" and got["id"] == 5
            assert got["from"] == "alice" and got["payload"] == {"text": "hi"} and got["offset"] == 1
            assert got["timestamp"].endswith("Z")
        await outsider.silent()
        # a client timestamp and metadata are kept
        await b.send({"type": "room_message", "room": "r1", "payload": 1, "timestamp": "T", "metadata": {"k": 1}})
        got = await a.expect("room_message")
        assert got["timestamp"] == "T" and got["metadata"] == {"k": 1} and got["from"] == "bob"

    run(scenario())


def test_user_message_reaches_every_connection_of_the_user(server: Server) -> None:
    async def scenario() -> None:
        a = await connect(server, "user=alice")
        b1 = await connect(server, "user=bob")
        b2 = await connect(server, "user=bob")
        await a.send({"type": "user_message", "to": "bob", "payload": {"x": 1}, "id": "u"})
        for b in (b1, b2):
            got = await b.expect("user_message", to="bob", id="u")
            assert got["from"] == "alice" and got["payload"] == {"x": 1} and got["offset"] == 1
        assert (await a.expect("ack", id="u", to="bob"))["payload"]["offset"] == 1
        await a.silent()
        # numeric ids are user ids too
        n = await connect(server, "user=42")
        await a.send({"type": "user_message", "to": 42, "payload": "n"})
        assert (await n.expect("user_message"))["to"] == "42"

    run(scenario())


def test_broadcast_reaches_everyone(server: Server) -> None:
    async def scenario() -> None:
        clients = [await connect(server, f"user=u{i}") for i in range(4)]
        await clients[0].send({"type": "broadcast", "payload": {"all": True}})
        for c in clients:
            got = await c.expect("broadcast")
            assert got["from"] == "u0" and got["payload"] == {"all": True}

    run(scenario())


@pytest.mark.parametrize(
    ("raw", "code", "msg_id"),
    [
        ("{not json", "invalid_json", None),
        ("[1, 2]", "invalid_message", None),
        ('"text"', "invalid_message", None),
        ('{"payload": 1, "id": "a"}', "unknown_type", "a"),
        ('{"type": "teleport", "id": 3}', "unknown_type", 3),
        ('{"type": "join_room", "id": "j"}', "missing_field", "j"),
        ('{"type": "room_message", "payload": 1, "id": "m"}', "missing_field", "m"),
        ('{"type": "user_message", "payload": 1, "id": "u"}', "missing_field", "u"),
        ('{"type": "room_message", "room": "nowhere", "payload": 1, "id": 9}', "not_member", 9),
        ('{"type": "user_message", "to": "ghost", "payload": 1, "id": "g"}', "unknown_user", "g"),
        ('{"type": "join_room", "room": "bad room!", "id": "r"}', "invalid_room", "r"),
        ('{"type": "join_room", "room": 5, "id": "r"}', "invalid_message", "r"),
        ('{"type": "message", "payload": 1, "id": "h"}', "unhandled", "h"),
        ('{"type": "system", "payload": 1}', "unhandled", None),
        ('{"type": "ping", "id": {"no": 1}}', "invalid_message", None),
        ('{"type": "ping", "metadata": [1]}', "invalid_message", None),
        ('{"type": "ping", "payload": ' + "[" * 100 + "]" * 100 + "}", "invalid_message", None),
    ],
)
def test_bad_input_gets_an_error_and_everyone_carries_on(server: Server, raw: str, code: str, msg_id: Any) -> None:
    async def scenario() -> None:
        bad = await connect(server, "user=bad")
        good = await connect(server, "user=good")
        await good.join("calm")
        await bad.send(raw)
        err = await bad.error(code)
        assert err.get("id") == msg_id
        # the offender's connection and every other one still work
        await bad.send({"type": "ping", "id": "still"})
        await bad.expect("pong", id="still")
        await good.send({"type": "room_message", "room": "calm", "payload": "ok"})
        await good.expect("room_message")

    run(scenario())


def test_binary_frame_is_refused_with_an_error(server: Server) -> None:
    async def scenario() -> None:
        a = await connect(server)
        await a.send(b"\x00\x01\x02")
        await a.error("unsupported_data")
        await a.send({"type": "ping"})
        await a.expect("pong")

    run(scenario())


def test_oversize_message_closes_1009_and_others_carry_on(make_server: Any) -> None:
    server = make_server(HubConfig(max_message_size=1024, send_buffer_size=4096))

    async def scenario() -> None:
        big = await connect(server)
        other = await connect(server)
        await big.send(json.dumps({"type": "ping", "payload": "x" * 2000}))
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await big.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        await other.send({"type": "ping", "payload": "y" * 900})
        await other.expect("pong")
        await asyncio.sleep(0.2)
        assert local_totals(server)["connections"] == 1

    run(scenario())


def test_stats_endpoint(server: Server) -> None:
    import httpx

    async def scenario() -> None:
        a = await connect(server, "user=alice")
        await a.join("lobby")
        await a.send({"type": "room_message", "room": "lobby", "payload": 1})
        await a.expect("room_message")
        async with httpx.AsyncClient() as http:
            resp = await http.get(server.http + "/ws/stats")
        assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
        stats = resp.json()
        assert stats["connections"] == 1 and stats["users"] == 1 and stats["rooms"] == 1
        assert stats["room_list"] == ["lobby"]
        assert stats["messages_in"] == 2 and stats["messages_out"] >= 3
        assert stats["uptime_s"] > 0
        for key in ("bytes_in", "dropped", "slow_consumer_closes", "connections_opened", "rss_bytes"):
            assert key in stats
        # how a pass's direct sends reach the kernel: one io_uring call per batch where the
        # compiled sockio found the kernel's io_uring working, else one send(2) each
        from tests.test_sockio import _kernel_has_io_uring

        ring = stats["compiled"] and _kernel_has_io_uring() and not _ext.env_flag("FASTHUB_NO_IO_URING")
        want = "io_uring" if ring else "send"
        assert stats["send_path"] == want

    run(scenario())


def test_demo_page_and_static_files(server: Server) -> None:
    import httpx

    page = httpx.get(server.http + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "{{FASTHUB_ROOT}}" not in page.text
    assert f'content="{server.prefix}"' in page.text
    js = httpx.get(server.http + "/static/fasthub.js")
    assert js.status_code == 200 and "FastHubClient" in js.text
    assert httpx.get(server.http + "/static/../hub.py").status_code == 404
    assert httpx.get(server.http + "/nope").status_code == 404
    assert httpx.post(server.http + "/ws/stats").status_code == 405


def test_messages_to_one_client_arrive_in_order(server: Server) -> None:
    async def scenario() -> None:
        a = await connect(server, "user=a")
        b = await connect(server, "user=b")
        await a.join("seq")
        await b.join("seq")
        await a.expect("system")
        n = 500
        for i in range(n):
            await a.send({"type": "room_message", "room": "seq", "payload": {"seq": i}})
        seen = [(await b.expect("room_message", timeout=5))["payload"]["seq"] for _ in range(n)]
        assert seen == list(range(n))

    run(scenario())


def test_stats_rates_and_capacity_figures(make_server: Any) -> None:
    server = make_server(HubConfig(ping_interval=0.2, pong_timeout=0.6))  # sweeps every 0.2 s

    async def scenario() -> None:
        a = await connect(server, "user=a")
        await a.join("r")
        seen_in: list[float] = []
        seen_out: list[float] = []
        for i in range(80):  # ~0.8 s of traffic, sampled by several sweeps
            await a.send({"type": "room_message", "room": "r", "payload": {"i": i, "pad": "x" * 100}})
            await a.expect("room_message")
            await asyncio.sleep(0.01)
            if i % 10 == 9:
                stats = server.call(server.hub.stats)
                seen_in.append(stats["messages_in_per_s"])
                seen_out.append(stats["bytes_out_per_s"])
        assert max(seen_in) > 10 and max(seen_out) > 1000
        await asyncio.sleep(0.6)  # idle: the next sweeps see no traffic
        stats = server.call(server.hub.stats)
        assert stats["messages_in_per_s"] == 0.0
        assert stats["bytes_out"] >= 80 * 100 and stats["messages_in"] >= 81
        assert stats["memory_per_connection_bytes"] is not None
        for key in ("bytes_buffered", "slow_consumer_closes", "dropped", "connections_opened", "connections_closed"):
            assert key in stats

    run(scenario())
