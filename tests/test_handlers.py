"""Application hooks of ``create_app``: on_message, on_connect/on_disconnect, authenticate, access hooks.

Parametrized over the server kinds of conftest (standalone and mounted inside Starlette).
Hooks run on the server's loop; they record into plain lists the test reads after a round trip.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets

from fasthub import Connection, Denied, Message
from tests.conftest import Server, connect, query_user, run


async def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


EVERY_TYPE = [
    {"type": "ping", "id": 1},
    {"type": "pong", "id": 2},
    {"type": "join_room", "room": "r", "id": 3},
    {"type": "room_message", "room": "r", "payload": {"t": "hi"}, "id": 4},
    {"type": "user_message", "to": "bob", "payload": "dm", "id": 5},
    {"type": "broadcast", "payload": "all", "id": 6},
    {"type": "message", "payload": {"custom": True}, "id": 7},
    {"type": "notification", "payload": "note", "metadata": {"m": 1}, "id": 8},
    {"type": "leave_room", "room": "r", "id": 9},
    {"type": "system", "payload": "spoof", "id": 10},
    {"type": "error", "payload": "spoof", "id": 11},
]


@pytest.mark.parametrize("style", ["sync", "async"])
def test_on_message_sees_every_message_and_builtins_still_work(make_server: Any, style: str) -> None:
    seen: list[tuple[str, Message]] = []

    if style == "sync":

        def handler(conn: Connection, msg: Message) -> None:
            assert isinstance(conn, Connection) and isinstance(msg, Message)
            seen.append((conn.user_id, msg))

    else:

        async def handler(conn: Connection, msg: Message) -> None:  # type: ignore[misc]
            await asyncio.sleep(0)
            seen.append((conn.user_id, msg))

    server = make_server(on_message=handler)

    async def scenario() -> None:
        a = await connect(server, "user=alice")
        b = await connect(server, "user=bob")
        for env in EVERY_TYPE:
            await a.send(env)
        # the built-ins ran: pong, joined, the room message, the direct message, the broadcast, left
        await a.expect("pong", id=1)
        assert (await a.expect("system", id=3))["payload"]["action"] == "joined"
        assert (await a.expect("room_message", id=4))["from"] == "alice"
        await a.expect("ack", id=4)
        assert (await b.expect("user_message", id=5))["payload"] == "dm"
        await a.expect("ack", id=5)
        await a.expect("broadcast", id=6)
        await b.expect("broadcast", id=6)
        assert (await a.expect("system", id=9))["payload"]["action"] == "left"
        # message/notification (and client-sent system/error) are the handler's: no error back
        await a.silent(0.15)
        await b.silent(0.05)
        assert [m.type for _, m in seen] == [e["type"] for e in EVERY_TYPE]
        assert all(user == "alice" for user, _ in seen)
        assert [m.id for _, m in seen] == list(range(1, 12))
        by_type = {m.type: m for _, m in seen}
        assert by_type["message"].payload == {"custom": True}
        assert by_type["notification"].metadata == {"m": 1}
        assert by_type["user_message"].to == "bob"
        assert by_type["room_message"].room == "r"

    run(scenario())


def test_handler_returning_true_takes_a_type_over(make_server: Any) -> None:
    handled: list[Any] = []

    def handler(conn: Connection, msg: Message) -> bool | None:
        if msg.type == "room_message":
            handled.append(msg.payload)
            conn.send_json({"type": "message", "payload": {"echo": msg.payload}})
            return True
        if msg.type == "ping":
            return "yes"  # type: ignore[return-value]  # only True takes a message over
        return False

    server = make_server(on_message=handler)

    async def scenario() -> None:
        a = await connect(server, "user=a")
        b = await connect(server, "user=b")
        await a.join("r")
        await b.join("r")
        await a.expect("system")  # user_joined
        await a.send({"type": "room_message", "room": "r", "payload": "mine"})
        got = await a.expect("message")
        assert got["payload"] == {"echo": "mine"}
        await b.silent(0.15)  # the built-in relay did not run
        await a.silent(0.05)
        assert handled == ["mine"]
        # taking over skips the membership rule too (no not_member error)
        await a.send({"type": "room_message", "room": "elsewhere", "payload": "x"})
        await a.expect("message")
        await a.send({"type": "ping", "id": "p"})
        await a.expect("pong", id="p")

    run(scenario())


def test_message_and_notification_without_a_handler_are_unhandled(server: Server) -> None:
    async def scenario() -> None:
        a = await connect(server)
        for mtype in ("message", "notification"):
            await a.send({"type": mtype, "payload": 1, "id": f"{mtype}-1"})
            err = await a.error("unhandled")
            assert err["id"] == f"{mtype}-1"
            assert mtype in err["payload"]["message"]
        await a.send({"type": "ping", "id": "ok"})
        await a.expect("pong", id="ok")

    run(scenario())


@pytest.mark.parametrize("style", ["sync", "async"])
def test_handler_exception_gives_internal_error_and_the_connection_carries_on(make_server: Any, style: str) -> None:
    if style == "sync":

        def handler(conn: Connection, msg: Message) -> None:
            if msg.payload == "boom":
                raise RuntimeError("handler bug")

    else:

        async def handler(conn: Connection, msg: Message) -> None:  # type: ignore[misc]
            await asyncio.sleep(0)
            if msg.payload == "boom":
                raise RuntimeError("handler bug")

    server = make_server(on_message=handler)

    async def scenario() -> None:
        a = await connect(server, "user=a")
        b = await connect(server, "user=b")
        await a.join("r")
        await b.join("r")
        await a.expect("system")
        await a.send({"type": "room_message", "room": "r", "payload": "boom", "id": "x1"})
        err = await a.error("internal_error")
        assert err["id"] == "x1"
        assert "handler bug" not in err["payload"]["message"]  # no internals leak to clients
        await b.silent(0.1)  # the failed message was not relayed
        await a.send({"type": "message", "payload": "boom"})
        assert "id" not in await a.error("internal_error")
        await a.send({"type": "room_message", "room": "r", "payload": "fine", "id": "x2"})
        await a.expect("room_message", id="x2")
        await b.expect("room_message", id="x2")
        assert server.call(server.hub.connection_count) == 2

    run(scenario())


@pytest.mark.parametrize("style", ["sync", "async"])
def test_on_connect_and_on_disconnect(make_server: Any, style: str) -> None:
    events: list[tuple[str, Any]] = []
    server_box: list[Server] = []

    def record_connect(conn: Connection) -> None:
        hub = server_box[0].hub
        events.append(("connect", conn))
        events.append(("registered", hub.get_connection(conn.id) is conn))
        conn.send_json({"type": "message", "payload": "welcome"})

    def record_disconnect(conn: Connection) -> None:
        hub = server_box[0].hub
        events.append(("disconnect", conn))
        events.append(
            (
                "gone",
                (
                    hub.get_connection(conn.id),
                    [c.id for c in hub.get_user_connections(conn.user_id)],
                    hub.get_room("r").has_member(conn.id) if hub.get_room("r") else None,
                    conn.close_code,
                ),
            )
        )

    if style == "sync":
        on_connect: Any = record_connect
        on_disconnect: Any = record_disconnect
    else:

        async def on_connect(conn: Connection) -> None:
            await asyncio.sleep(0)
            record_connect(conn)

        async def on_disconnect(conn: Connection) -> None:
            await asyncio.sleep(0)
            record_disconnect(conn)

    server = make_server(on_connect=on_connect, on_disconnect=on_disconnect)
    server_box.append(server)

    async def scenario() -> None:
        stay = await connect(server, "user=carol")
        a = await connect(server, "user=carol")
        assert (await a.expect("message"))["payload"] == "welcome"  # after the hello
        await stay.expect("message")
        await a.join("r")
        await stay.join("r")
        await a.ws.close(4001, "later")
        await wait_for(lambda: any(kind == "gone" for kind, _ in events))
        connects = [c for kind, c in events if kind == "connect"]
        assert [c.id for c in connects] == [stay.conn_id, a.conn_id]
        assert all(isinstance(c, Connection) and c.user_id == "carol" for c in connects)
        assert [v for kind, v in events if kind == "registered"] == [True, True]
        disconnects = [c for kind, c in events if kind == "disconnect"]
        assert len(disconnects) == 1 and disconnects[0] is connects[1]
        gone = next(v for kind, v in events if kind == "gone")
        # removed from the registry, the user index and its rooms before on_disconnect ran
        assert gone == (None, [stay.conn_id], False, 4001)
        assert server.call(server.hub.connection_count) == 1

    run(scenario())


def test_on_connect_failure_closes_with_1011(make_server: Any) -> None:
    def on_connect(conn: Connection) -> None:
        raise RuntimeError("setup failed")

    server = make_server(on_connect=on_connect)

    async def scenario() -> None:
        ws = await websockets.connect(server.ws_url("user=a"))
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 3)
        assert ws.close_code == 1011
        await wait_for(lambda: server.call(server.hub.connection_count) == 0)

    run(scenario())


@pytest.mark.parametrize("style", ["sync", "async"])
def test_authenticate_sets_the_user_or_refuses_the_handshake(make_server: Any, style: str) -> None:
    scopes: list[Any] = []

    def sync_auth(scope: Any) -> Any:
        scopes.append(scope)
        user = query_user(scope)
        if user == "nobody":
            raise Denied(401, "token required")
        if user == "banned":
            raise Denied(403)
        if user == "crash":
            raise RuntimeError("auth backend down")
        return int(user) if user and user.isdigit() else user

    async def async_auth(scope: Any) -> Any:
        await asyncio.sleep(0)
        return sync_auth(scope)

    server = make_server(authenticate=sync_auth if style == "sync" else async_auth)

    async def scenario() -> None:
        # refused before the upgrade, with the hook's status; nothing is registered
        for query, status in (("user=nobody", 401), ("user=banned", 403), ("user=crash", 500)):
            with pytest.raises(websockets.InvalidStatus) as info:
                await websockets.connect(server.ws_url(query))
            assert info.value.response.status_code == status, query
        s = server.call(server.hub.stats)
        assert s["connections"] == 0 and s["connections_opened"] == 0 and s["users"] == 0
        # accepted: the hook's return value is the user id
        alice = await connect(server, "user=alice")
        assert alice.user_id == "alice"
        num = await connect(server, "user=7")
        assert num.user_id == "7"  # ids are strings
        anon = await connect(server)
        assert anon.user_id.startswith("anon-") and anon.user_id != alice.user_id
        assert len(scopes) == 6 and all(sc["type"] == "websocket" for sc in scopes)
        conn = server.call(server.hub.get_connection, num.conn_id)
        assert conn.user_id == "7" and not conn.anonymous
        assert conn.scope is None  # let go after on_connect unless HubConfig.keep_scope
        assert server.call(server.hub.get_connection, anon.conn_id).anonymous
        assert server.call(server.hub.stats)["connections_opened"] == 3

    run(scenario())


def test_denied_defaults() -> None:
    d = Denied()
    assert d.status == 403 and d.reason == "forbidden"
    d = Denied(401, "who are you")
    assert (d.status, d.reason) == (401, "who are you") and "401" in str(d)


@pytest.mark.parametrize("style", ["sync", "async"])
def test_can_join_denial(make_server: Any, style: str) -> None:
    asked: list[tuple[str, str]] = []

    def sync_hook(conn: Connection, room: str) -> bool:
        asked.append((conn.user_id, room))
        return not room.startswith("private")

    async def async_hook(conn: Connection, room: str) -> bool:
        await asyncio.sleep(0)
        return sync_hook(conn, room)

    server = make_server(can_join=sync_hook if style == "sync" else async_hook)

    async def scenario() -> None:
        a = await connect(server, "user=a")
        await a.send({"type": "join_room", "room": "private-1", "id": "j"})
        err = await a.error("forbidden")
        assert err["id"] == "j"
        assert server.call(server.hub.get_room, "private-1") is None
        assert server.call(lambda: server.hub.get_connection(a.conn_id).rooms) == frozenset()
        await a.send({"type": "room_message", "room": "private-1", "payload": 1})
        await a.error("not_member")
        await a.join("public")
        assert asked == [("a", "private-1"), ("a", "public")]

    run(scenario())


def test_can_publish_and_can_message(make_server: Any) -> None:
    """``can_publish`` replaces the member rule; ``can_message`` guards user messages."""
    asked: list[tuple[str, str, str]] = []

    def can_publish(conn: Connection, room: str) -> bool:
        asked.append(("publish", conn.user_id, room))
        return conn.user_id != "muted"

    async def can_message(conn: Connection, to: str) -> bool:
        asked.append(("message", conn.user_id, to))
        return to != "ceo"

    server = make_server(can_publish=can_publish, can_message=can_message)

    async def scenario() -> None:
        member = await connect(server, "user=member")
        muted = await connect(server, "user=muted")
        outsider = await connect(server, "user=outsider")
        ceo = await connect(server, "user=ceo")
        n = await connect(server, "user=42")
        await member.join("r")
        await muted.join("r")
        await member.expect("system")  # user_joined
        # a non-member allowed to post
        await outsider.send({"type": "room_message", "room": "r", "payload": "from outside", "id": "o"})
        for x in (member, muted):
            got = await x.expect("room_message", id="o")
            assert got["from"] == "outsider" and got["payload"] == "from outside"
        await outsider.expect("ack", id="o")  # not a member: its ack, not its own message
        await outsider.silent(0.1)
        # a member refused
        await muted.send({"type": "room_message", "room": "r", "payload": "shh", "id": "m"})
        err = await muted.error("forbidden")
        assert err["id"] == "m"
        await member.silent(0.1)

        await outsider.send({"type": "user_message", "to": "member", "payload": "hi", "id": 1})
        assert (await member.expect("user_message", id=1))["from"] == "outsider"
        await outsider.expect("ack", id=1)
        await outsider.send({"type": "user_message", "to": "ceo", "payload": "hi", "id": 2})
        assert (await outsider.error("forbidden"))["id"] == 2
        await ceo.silent(0.1)
        await outsider.send({"type": "user_message", "to": 42, "payload": "num", "id": 3})
        await n.expect("user_message", id=3)
        assert asked == [
            ("publish", "outsider", "r"),
            ("publish", "muted", "r"),
            ("message", "outsider", "member"),
            ("message", "outsider", "ceo"),
            ("message", "outsider", "42"),
        ]

    run(scenario())


def test_scope_is_there_in_on_connect_and_kept_only_with_keep_scope(make_server: Any) -> None:
    from fasthub import HubConfig

    seen: list[Any] = []

    def on_connect(conn: Any) -> None:
        seen.append(conn.scope["query_string"])
        conn.set_metadata("ua", dict(conn.scope["headers"]).get(b"user-agent"))

    for keep in (False, True):
        server = make_server(HubConfig(keep_scope=keep), on_connect=on_connect)

        async def scenario(server: Server, keep: bool) -> None:
            c = await connect(server, "user=kim")
            conn = server.call(server.hub.get_connection, c.conn_id)
            assert seen[-1] == b"user=kim"
            assert conn.get_metadata("ua") is not None
            if keep:
                assert conn.scope is not None and conn.scope["query_string"] == b"user=kim"
            else:
                assert conn.scope is None
            await c.close()

        run(scenario(server, keep))
