"""The server-side API: Hub, Connection and Room, called on a live server while real clients watch.

Parametrized over the server kinds of conftest (standalone and mounted inside Starlette). Hub
calls go through ``server.call``, i.e. ``hub.run_threadsafe`` onto the server's loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
import websockets

from fasthub import Connection, Hub, HubConfig, HubError, Room
from tests.conftest import Client, Server, connect, run


def stats(server: Server) -> dict[str, Any]:
    return server.call(server.hub.stats)  # type: ignore[no-any-return]


async def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    """Poll ``predicate()`` (a plain function) until it is true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def closed_with(client: Client, timeout: float = 3.0) -> tuple[int | None, str | None, list[Any]]:
    """Read until the server closes; return (close code, reason, messages read before it)."""
    seen: list[Any] = []
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            seen.append(await asyncio.wait_for(client.ws.recv(), timeout))
    rcvd = info.value.rcvd
    return (rcvd.code if rcvd else None), (rcvd.reason if rcvd else None), seen


# -- Hub without a server ------------------------------------------------------------------------


def test_hub_construction_and_fresh_stats() -> None:
    cfg = HubConfig(ping_interval=5, pong_timeout=10)
    hub = Hub(cfg)
    assert hub.config is cfg
    assert Hub().config == HubConfig()
    s = hub.stats()
    assert (s["connections"], s["users"], s["rooms"], s["room_list"]) == (0, 0, 0, [])
    assert (s["messages_in"], s["messages_out"], s["dropped"], s["slow_consumer_closes"]) == (0, 0, 0, 0)
    assert hub.list_rooms() == [] and hub.get_room("x") is None and hub.get_connection("x") is None
    assert hub.get_user_connections("nobody") == []
    assert hub.broadcast_json({"a": 1}) == 0
    assert hub.send_to_user_json("nobody", {"a": 1}) == 0
    assert hub.broadcast_to_room_json("nowhere", {"a": 1}) == 0
    assert hub.delete_room("nowhere") is False


def test_run_threadsafe_before_attach_raises() -> None:
    hub = Hub(HubConfig())
    with pytest.raises(RuntimeError):
        hub.run_threadsafe(hub.stats)


def test_run_threadsafe_after_the_loop_is_closed_raises() -> None:
    loop = asyncio.new_event_loop()
    hub = Hub()
    hub.attach(loop)
    loop.close()
    with pytest.raises(RuntimeError):
        hub.run_threadsafe(hub.stats)


def test_create_room_without_a_server() -> None:
    hub = Hub()
    meta = {"topic": "news"}
    room = hub.create_room("news", meta)
    meta["topic"] = "changed"  # the room keeps its own copy
    assert isinstance(room, Room)
    assert room.name == "news" and room.metadata == {"topic": "news"}
    assert room.members == [] and room.member_count == 0
    with pytest.raises(HubError):
        hub.create_room("bad name!")
    with pytest.raises(HubError):
        hub.create_room("")
    assert hub.list_rooms() == ["news"]


# -- broadcast and users -------------------------------------------------------------------------


def test_broadcast_json_text_and_bytes_with_exclude(server: Server) -> None:
    async def scenario() -> None:
        a = await connect(server, "user=a")
        b = await connect(server, "user=b")
        c = await connect(server, "user=c")
        hub = server.hub
        assert server.call(hub.broadcast_json, {"n": 1}) == 3
        for x in (a, b, c):
            assert await x.recv() == {"n": 1}  # the object as given, no envelope added
        assert server.call(hub.broadcast_json, {"n": 2}, a.conn_id) == 2
        assert await b.recv() == {"n": 2} and await c.recv() == {"n": 2}
        await a.silent(0.1)
        assert server.call(hub.broadcast_json, {"n": 3}, [a.conn_id, c.conn_id]) == 1
        assert await b.recv() == {"n": 3}
        await a.silent(0.1)
        await c.silent(0.1)
        assert server.call(hub.broadcast_json, {"n": 4}, {b.conn_id}) == 2
        assert await a.recv() == {"n": 4} and await c.recv() == {"n": 4}
        assert server.call(hub.broadcast_json, {"n": 5}, "not-a-connection") == 3
        for x in (a, b, c):
            assert await x.recv() == {"n": 5}
        assert server.call(hub.broadcast_text, "plain text", a.conn_id) == 2
        assert await b.ws.recv() == "plain text" and await c.ws.recv() == "plain text"
        assert server.call(hub.broadcast_bytes, b"\x00\x01", [b.conn_id, c.conn_id]) == 1
        got = await a.ws.recv()
        assert isinstance(got, bytes) and got == b"\x00\x01"
        await b.silent(0.1)

    run(scenario())


def test_send_to_user_json_counts_connections(server: Server) -> None:
    async def scenario() -> None:
        a1 = await connect(server, "user=alice")
        a2 = await connect(server, "user=alice")
        b = await connect(server, "user=bob")
        n = await connect(server, "user=42")
        hub = server.hub
        assert server.call(hub.send_to_user_json, "alice", {"to": "alice"}) == 2
        # a JSON object is stored in the user's stream and gets its offset
        assert await a1.recv() == {"to": "alice", "offset": 1} and await a2.recv() == {"to": "alice", "offset": 1}
        await b.silent(0.1)
        assert server.call(hub.send_to_user_json, "nobody", {"x": 1}) == 0
        assert server.call(hub.send_to_user_json, 42, {"int": True}) == 1  # int user ids match
        assert await n.recv() == {"int": True, "offset": 1}
        assert server.call(hub.send_to_user_bytes, "bob", b"raw") == 1
        assert await b.ws.recv() == b"raw"
        await a2.close()
        await wait_for(lambda: len(server.call(hub.get_user_connections, "alice")) == 1)
        assert server.call(hub.send_to_user_json, "alice", {"left": 1}) == 1
        assert await a1.recv() == {"left": 1, "offset": 2}
        await a1.close()
        await wait_for(lambda: server.call(hub.get_user_connections, "alice") == [])
        assert server.call(hub.send_to_user_json, "alice", {"x": 1}) == 0  # offline

    run(scenario())


def test_get_connection_get_user_connections_and_metadata(server: Server) -> None:
    async def scenario() -> None:
        a1 = await connect(server, "user=alice")
        a2 = await connect(server, "user=alice")
        anon = await connect(server)
        hub = server.hub
        conn = server.call(hub.get_connection, a1.conn_id)
        assert isinstance(conn, Connection)
        assert conn.id == a1.conn_id and conn.user_id == "alice" and not conn.anonymous
        assert server.call(hub.get_connection, "nope") is None
        conns = server.call(hub.get_user_connections, "alice")
        assert sorted(c.id for c in conns) == sorted([a1.conn_id, a2.conn_id])
        assert all(isinstance(c, Connection) and c.user_id == "alice" for c in conns)
        assert server.call(hub.get_user_connections, "bob") == []
        anon_conn = server.call(hub.get_connection, anon.conn_id)
        assert anon_conn.anonymous and anon_conn.user_id == anon.user_id
        assert [c.id for c in server.call(hub.get_user_connections, anon.user_id)] == [anon.conn_id]
        assert sorted(c.id for c in server.call(lambda: hub.connections)) == sorted(
            [a1.conn_id, a2.conn_id, anon.conn_id]
        )
        assert server.call(hub.connection_count) == 3 and server.call(hub.user_count) == 2

        # Connection metadata
        assert server.call(lambda: conn.metadata) == {}
        assert server.call(conn.get_metadata, "role") is None
        assert server.call(conn.get_metadata, "role", "guest") == "guest"
        server.call(conn.set_metadata, "role", "admin")
        server.call(conn.set_metadata, "score", 3)
        assert server.call(conn.get_metadata, "role") == "admin"
        meta = server.call(lambda: conn.metadata)
        assert meta == {"role": "admin", "score": 3}
        meta["role"] = "hacked"  # a copy
        assert server.call(conn.get_metadata, "role") == "admin"
        server.call(conn.set_metadata, "role", None)
        assert server.call(conn.get_metadata, "role", "default") is None
        # the registry hands out the same object; other connections have their own
        assert server.call(hub.get_connection, a1.conn_id).get_metadata("score") == 3
        assert server.call(hub.get_connection, a2.conn_id).metadata == {}

    run(scenario())


# -- rooms ---------------------------------------------------------------------------------------


def test_create_room_get_or_create_with_metadata(server: Server) -> None:
    """Also: standalone, lifespan startup attaches the hub, so the API works before any client;
    mounted inside Starlette the sub-app gets no lifespan events, the hub attaches on the first
    WebSocket connection, and until then ``run_threadsafe`` raises RuntimeError."""

    async def scenario() -> None:
        hub = server.hub
        if server.prefix:
            with pytest.raises(RuntimeError):
                hub.run_threadsafe(hub.broadcast_json, {"x": 1})
            await (await connect(server)).close()
            await wait_for(lambda: server.call(hub.connection_count) == 0)
        assert server.call(hub.broadcast_json, {"x": 1}) == 0
        room = server.call(hub.create_room, "news", {"topic": "a"})
        assert isinstance(room, Room) and room.name == "news" and room.metadata == {"topic": "a"}
        again = server.call(hub.create_room, "news", {"lang": "en"})
        assert again is room
        assert room.metadata == {"topic": "a", "lang": "en"}
        assert server.call(hub.create_room, "news") is room
        assert server.call(hub.get_room, "news") is room
        assert server.call(hub.get_room, "other") is None
        assert server.call(hub.list_rooms) == ["news"]
        with pytest.raises(HubError):
            server.call(hub.create_room, "no spaces")
        assert server.call(hub.list_rooms) == ["news"]

    run(scenario())


def test_created_room_persists_but_client_rooms_vanish_when_empty(server: Server) -> None:
    async def scenario() -> None:
        hub = server.hub
        a = await connect(server, "user=a")
        server.call(hub.create_room, "kept")
        await a.join("kept")
        await a.join("temp")
        assert server.call(hub.list_rooms) == ["kept", "temp"]
        await a.send({"type": "leave_room", "room": "kept"})
        await a.expect("system", room="kept")
        await a.send({"type": "leave_room", "room": "temp"})
        await a.expect("system", room="temp")
        assert server.call(hub.get_room, "temp") is None
        kept = server.call(hub.get_room, "kept")
        assert kept is not None and kept.member_count == 0
        # a room that was created by a client becomes persistent through create_room
        await a.join("promoted")
        assert server.call(hub.create_room, "promoted", {"p": 1}) is server.call(hub.get_room, "promoted")
        await a.close()
        await wait_for(lambda: server.call(hub.connection_count) == 0)
        assert sorted(server.call(hub.list_rooms)) == ["kept", "promoted"]
        assert server.call(hub.get_room, "promoted").metadata == {"p": 1}

    run(scenario())


def test_delete_room_tells_members_and_removes_them(server: Server) -> None:
    async def scenario() -> None:
        hub = server.hub
        a = await connect(server, "user=a")
        b = await connect(server, "user=b")
        outsider = await connect(server, "user=o")
        server.call(hub.create_room, "doomed")
        await a.join("doomed")
        await b.join("doomed")
        await a.expect("system")  # user_joined
        assert server.call(hub.delete_room, "doomed") is True
        for x in (a, b):
            event = await x.expect("system", room="doomed")
            assert event["payload"]["event"] == "room_deleted" and event["payload"]["room"] == "doomed"
        await outsider.silent(0.1)
        assert server.call(hub.get_room, "doomed") is None
        assert "doomed" not in server.call(hub.list_rooms)
        assert server.call(lambda: hub.get_connection(a.conn_id).rooms) == frozenset()
        # no longer members: posting is refused, leaving is refused, the API sends to nobody
        await a.send({"type": "room_message", "room": "doomed", "payload": 1, "id": "m"})
        assert (await a.error("not_member"))["id"] == "m"
        await b.send({"type": "leave_room", "room": "doomed"})
        await b.error("not_member")
        assert server.call(hub.broadcast_to_room_json, "doomed", {"x": 1}) == 0
        assert server.call(hub.delete_room, "doomed") is False
        # the name can be used again, with a fresh membership
        joined = await a.join("doomed")
        assert joined["payload"]["members"] == 1
        await b.silent(0.1)

    run(scenario())


def test_join_and_leave_room_from_the_api(server: Server) -> None:
    async def scenario() -> None:
        hub = server.hub
        a = await connect(server, "user=a")
        b = await connect(server, "user=b")
        room = server.call(lambda: hub.join_room(a.conn_id, "api", reply_id="r1"))
        assert isinstance(room, Room) and room.name == "api"
        joined = await a.expect("system", room="api", id="r1")
        epoch = joined["payload"].pop("epoch")
        assert isinstance(epoch, str) and len(epoch) == 8
        assert joined["payload"] == {"event": "joined", "action": "joined", "room": "api", "members": 1, "offset": 0}
        assert server.call(hub.join_room, b.conn_id, "api") is room
        assert (await b.expect("system", room="api"))["payload"]["members"] == 2
        event = await a.expect("system", room="api")
        assert event["payload"]["action"] == "user_joined" and event["payload"]["user_id"] == "b"
        # Room.name, .metadata, .members, .member_count
        assert room.name == "api" and room.metadata == {}
        assert server.call(lambda: room.member_count) == 2
        members = server.call(lambda: room.members)
        assert sorted(members) == sorted([a.conn_id, b.conn_id])
        members.append("intruder")  # a copy
        assert server.call(lambda: room.member_count) == 2
        assert server.call(room.has_member, a.conn_id) and not server.call(room.has_member, "intruder")
        room.metadata["topic"] = "t"
        assert server.call(hub.get_room, "api").metadata == {"topic": "t"}
        assert server.call(lambda: hub.get_connection(a.conn_id).rooms) == frozenset({"api"})
        # joining again is harmless: the joiner is told again, nobody else is
        server.call(hub.join_room, a.conn_id, "api")
        assert (await a.expect("system", room="api"))["payload"]["members"] == 2
        await b.silent(0.1)

        assert server.call(lambda: hub.leave_room(b.conn_id, "api", reply_id=9)) is True
        left = await b.expect("system", room="api", id=9)
        assert left["payload"]["action"] == "left" and left["payload"]["members"] == 1
        event = await a.expect("system", room="api")
        assert event["payload"]["action"] == "user_left" and event["payload"]["user_id"] == "b"
        assert server.call(hub.leave_room, b.conn_id, "api") is False
        assert server.call(hub.leave_room, b.conn_id, "never-joined") is False
        await b.silent(0.1)
        assert server.call(hub.leave_room, a.conn_id, "api") is True
        await a.expect("system", room="api")
        assert server.call(hub.get_room, "api") is None  # emptied and not persistent

        # unknown connection ids and invalid room names are HubErrors
        with pytest.raises(HubError):
            server.call(hub.join_room, "no-such-connection", "room")
        with pytest.raises(HubError):
            server.call(hub.leave_room, "no-such-connection", "room")
        for bad in ("bad room", "", "x" * 129, "é"):
            with pytest.raises(HubError):
                server.call(hub.join_room, a.conn_id, bad)
        assert server.call(hub.list_rooms) == []
        await a.silent(0.1)
        # a connection that has gone is unknown
        await b.close()
        await wait_for(lambda: server.call(hub.connection_count) == 1)
        with pytest.raises(HubError):
            server.call(hub.join_room, b.conn_id, "room")

    run(scenario())


def test_broadcast_to_room_json_with_exclude(server: Server) -> None:
    async def scenario() -> None:
        hub = server.hub
        a = await connect(server, "user=a")
        b = await connect(server, "user=b")
        c = await connect(server, "user=c")
        outsider = await connect(server, "user=o")
        for x in (a, b, c):
            server.call(hub.join_room, x.conn_id, "room")
        await a.expect("system")
        await a.expect("system")
        await a.expect("system")
        await b.expect("system")
        await b.expect("system")
        await c.expect("system")
        assert server.call(hub.broadcast_to_room_json, "room", {"k": 1}) == 3
        for x in (a, b, c):
            assert await x.recv() == {"k": 1, "offset": 1}
        assert server.call(lambda: hub.broadcast_to_room_json("room", {"k": 2}, exclude=b.conn_id)) == 2
        assert await a.recv() == {"k": 2, "offset": 2} and await c.recv() == {"k": 2, "offset": 2}
        assert server.call(lambda: hub.broadcast_to_room_json("room", {"k": 3}, exclude=[a.conn_id, c.conn_id])) == 1
        assert await b.recv() == {"k": 3, "offset": 3}
        assert server.call(hub.broadcast_to_room_bytes, "room", b"\x01\x02", a.conn_id) == 2
        assert await b.ws.recv() == b"\x01\x02" and await c.ws.recv() == b"\x01\x02"
        assert server.call(hub.broadcast_to_room_json, "nowhere", {"k": 4}) == 0
        await outsider.silent(0.1)
        await a.silent(0.05)

    run(scenario())


def test_list_rooms_and_stats(server: Server) -> None:
    async def scenario() -> None:
        hub = server.hub
        a = await connect(server, "user=alice")
        b = await connect(server, "user=bob")
        server.call(hub.create_room, "first")
        await a.join("second")
        await b.join("second")
        await a.expect("system")
        assert server.call(hub.list_rooms) == ["first", "second"]
        await a.send({"type": "room_message", "room": "second", "payload": "hi"})
        await a.expect("room_message")
        await b.expect("room_message")
        s = stats(server)
        assert s["connections"] == 2 and s["users"] == 2
        assert s["rooms"] == 2 and s["room_list"] == ["first", "second"]
        assert s["messages_in"] == 3  # two joins and one room message
        # hellos (2), joined replies (2), user_joined (1), the room message to both (2)
        assert s["messages_out"] == 7
        assert s["bytes_in"] > 0
        assert s["connections_opened"] == 2 and s["connections_closed"] == 0
        assert s["dropped"] == 0 and s["slow_consumer_closes"] == 0
        assert s["uptime_s"] >= 0 and s["started_at"] > 0
        assert isinstance(s["compiled"], bool) and isinstance(s["bytes_buffered"], int)
        await b.close()
        await wait_for(lambda: stats(server)["connections"] == 1)
        s = stats(server)
        assert s["connections_closed"] == 1 and s["users"] == 1
        assert s["room_list"] == ["first", "second"]

    run(scenario())


# -- Connection ----------------------------------------------------------------------------------


def test_connection_send_then_close_with_code_and_reason(server: Server) -> None:
    async def scenario() -> None:
        a = await connect(server, "user=a")
        b = await connect(server, "user=b")
        await a.join("r")
        hub = server.hub
        conn = server.call(hub.get_connection, a.conn_id)
        assert conn.id == a.conn_id and conn.user_id == "a"
        assert server.call(conn.send_json, {"hello": [1, 2]}) is True
        assert await a.recv() == {"hello": [1, 2]}
        assert server.call(conn.send_bytes, b"\xff\x00binary") is True
        data = await a.ws.recv()
        assert isinstance(data, bytes) and data == b"\xff\x00binary"  # a binary frame
        assert server.call(conn.send_text, "plain") is True
        text = await a.ws.recv()
        assert isinstance(text, str) and text == "plain"
        await b.silent(0.1)

        def send_then_close() -> list[bool]:
            sent = [conn.send_json({"seq": i}) for i in range(5)]
            conn.close(4001, "see you")
            sent.append(conn.send_json({"seq": "late"}))  # refused once closing
            conn.close(4002, "twice")  # ignored
            return sent

        assert server.call(send_then_close) == [True] * 5 + [False]
        code, reason, seen = await closed_with(a)
        assert code == 4001 and reason == "see you"
        assert [json.loads(m) for m in seen] == [{"seq": i} for i in range(5)]
        assert conn.closed and conn.close_code == 4001 and conn.close_reason == "see you"
        await wait_for(lambda: server.call(hub.connection_count) == 1)
        assert server.call(hub.get_room, "r") is None
        assert server.call(conn.send_json, {"x": 1}) is False

    run(scenario())


def test_connection_close_refuses_what_cannot_be_sent(server: Server) -> None:
    """A close code that may not go on the wire (1005, 1006, outside 1000-4999, ...) or a reason
    over 123 bytes is refused by ``Connection.close`` itself (ValueError), and the connection
    stays open and usable; today it is queued, and the writer fails on it later."""

    async def scenario() -> None:
        a = await connect(server, "user=a")
        conn = server.call(server.hub.get_connection, a.conn_id)
        for code, reason in [(1006, ""), (1005, ""), (1015, ""), (999, ""), (5000, ""), (1000, "r" * 124)]:
            with pytest.raises(ValueError):
                server.call(conn.close, code, reason)
            assert server.call(conn.send_json, {"still": "open", "after": code}) is True
            assert await a.recv() == {"still": "open", "after": code}

    run(scenario())


def test_run_threadsafe_from_a_plain_thread(server: Server) -> None:
    async def scenario() -> None:
        a = await connect(server, "user=a")
        hub = server.hub
        results: dict[str, Any] = {}

        def worker() -> None:
            try:
                results["count"] = hub.run_threadsafe(hub.broadcast_json, {"from": "thread"}).result(timeout=5)
                results["thread"] = hub.run_threadsafe(threading.get_ident).result(timeout=5)
                results["conns"] = hub.run_threadsafe(hub.connection_count).result(timeout=5)
                try:
                    hub.run_threadsafe(hub.join_room, "missing", "room").result(timeout=5)
                except HubError as exc:
                    results["error"] = exc
            except BaseException as exc:  # pragma: no cover - reported below
                results["crash"] = exc

        t = threading.Thread(target=worker)
        t.start()
        await asyncio.get_running_loop().run_in_executor(None, t.join, 10)
        assert "crash" not in results, results
        assert results["count"] == 1
        assert results["thread"] == server.thread.ident  # ran on the server's loop thread
        assert results["thread"] != t.ident
        assert results["conns"] == 1
        assert isinstance(results["error"], HubError)
        assert await a.recv() == {"from": "thread"}

    run(scenario())


# -- limits --------------------------------------------------------------------------------------


def test_max_rooms_per_connection_and_member_events_limit(make_server: Any) -> None:
    server = make_server(HubConfig(max_rooms_per_connection=2, member_events_limit=2))

    async def scenario() -> None:
        hub = server.hub
        a = await connect(server, "user=a")
        await a.join("one")
        await a.join("two")
        await a.send({"type": "join_room", "room": "three", "id": "j3"})
        err = await a.error("too_many_rooms")
        assert err["id"] == "j3"
        assert server.call(hub.get_room, "three") is None
        await a.join("one")  # already a member: not a new room
        with pytest.raises(HubError):
            server.call(hub.join_room, a.conn_id, "three")
        server.call(hub.join_room, a.conn_id, "two")  # a member already: fine
        await a.expect("system", room="two")
        assert server.call(lambda: hub.get_connection(a.conn_id).rooms) == frozenset({"one", "two"})
        await a.send({"type": "leave_room", "room": "one"})
        await a.expect("system", room="one")
        await a.join("three")

        # member_events_limit=2: the third joiner causes no user_joined
        b = await connect(server, "user=b")  # the room limit is per connection
        c = await connect(server, "user=c")
        await b.join("three")
        assert (await a.expect("system", room="three"))["payload"]["action"] == "user_joined"
        joined = await c.join("three")
        assert joined["payload"]["members"] == 3
        await a.silent(0.1)
        await b.silent(0.05)
        # the room still works for everyone
        await c.send({"type": "room_message", "room": "three", "payload": "hi"})
        for x in (a, b, c):
            await x.expect("room_message")

    run(scenario())


def test_member_events_disabled_with_zero(make_server: Any) -> None:
    server = make_server(HubConfig(member_events_limit=0))

    async def scenario() -> None:
        a = await connect(server, "user=a")
        b = await connect(server, "user=b")
        await a.join("quiet")
        await b.join("quiet")
        await a.silent(0.1)
        await b.send({"type": "leave_room", "room": "quiet"})
        await b.expect("system")
        await a.silent(0.1)

    run(scenario())


def test_public_attach_lets_a_mounted_hub_work_before_any_client() -> None:
    from fasthub import Hub

    hub = Hub()

    async def scenario() -> None:
        hub.attach()
        loop = asyncio.get_running_loop()
        room = await loop.run_in_executor(None, lambda: hub.run_threadsafe(hub.create_room, "early").result(5))
        assert room.name == "early" and hub.get_room("early") is room

    asyncio.run(scenario())
