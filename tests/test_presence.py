"""Presence and typing on one process: the pieces, the message pipeline in memory, and a real
server with real clients.

The two-node cluster over Redis is ``tests/test_presence_cluster.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from fasthub import Connection, Hub, HubConfig, HubError, MessageType
from fasthub.client import Client as FasthubClient
from fasthub.presence import PresenceStats, TypingThrottle, UserPresence, presence_body
from fasthub.testing import Harness, MemoryClient
from tests.conftest import SERVER_KINDS, Server, connect, run


def name_info(conn: Connection, room: str) -> dict[str, Any] | None:
    """A presence_info hook: the name the app put in the connection's metadata, if any."""
    name = conn.get_metadata("name")
    return {"name": name, "room": room} if name is not None else None


def events(messages: list[Any]) -> list[tuple[str, str]]:
    return [
        (m["payload"]["event"], m["payload"].get("user_id"))
        for m in messages
        if m["type"] == "system" and m["payload"]["event"] in ("user_joined", "user_left")
    ]


def fresh(h: Harness, user: str | None = None) -> MemoryClient:
    """A connection whose ``connected`` message was read."""
    client = h.connect(user)
    client.received()
    return client


def joined(client: MemoryClient, room: str) -> None:
    client.send({"type": "join_room", "room": room})
    assert client.received()[-1]["payload"]["event"] == "joined"


# -- the pieces ----------------------------------------------------------------------------------


def test_typing_throttle_allows_one_per_interval_per_connection_and_room() -> None:
    throttle = TypingThrottle(2.0)
    assert throttle.allow("c1", "r", 10.0)
    assert not throttle.allow("c1", "r", 11.9)  # within 2 s: dropped
    assert throttle.allow("c1", "other", 11.9)  # another room
    assert throttle.allow("c2", "r", 11.9)  # another connection
    assert throttle.allow("c1", "r", 12.0)  # 2 s after the last one that went out
    assert len(throttle) == 3


def test_typing_throttle_memory_is_freed_by_forget_and_sweep() -> None:
    throttle = TypingThrottle(2.0)
    for i in range(100):
        throttle.allow(f"c{i}", "r", 10.0)
    throttle.allow("late", "r", 11.5)
    throttle.forget("c0", "r")
    throttle.forget("never", "r")  # unknown: nothing to do
    assert len(throttle) == 100
    throttle.sweep(11.9)  # nothing older than 2 s yet
    assert len(throttle) == 100
    throttle.sweep(12.0)
    assert len(throttle) == 1  # only "late" can still throttle
    throttle.sweep(13.5)
    assert len(throttle) == 0


def test_typing_throttle_zero_interval_throttles_and_remembers_nothing() -> None:
    throttle = TypingThrottle(0)
    assert all(throttle.allow("c", "r", 1.0) for _ in range(5))
    assert len(throttle) == 0


def test_presence_body_and_stats_shapes() -> None:
    entries = {"alice": UserPresence(2, {"name": "Alice"}), "bob": UserPresence(1)}
    assert presence_body(entries) == {
        "presence": {"alice": {"connections": 2, "info": {"name": "Alice"}}, "bob": {"connections": 1}},
        "num_users": 2,
        "num_connections": 3,
    }
    assert presence_body({}) == {"presence": {}, "num_users": 0, "num_connections": 0}
    assert PresenceStats(2, 3).to_dict() == {"num_users": 2, "num_connections": 3}


def test_typing_interval_is_a_config_field() -> None:
    assert HubConfig().typing_interval == 2.0
    assert HubConfig(typing_interval=0).typing_interval == 0
    with pytest.raises(ValueError, match="typing_interval"):
        HubConfig(typing_interval=-1)
    for mtype in ("presence", "presence_stats", "typing"):
        assert MessageType(mtype).value == mtype


# -- the pipeline in memory -----------------------------------------------------------------------


def test_presence_lists_users_with_their_connection_counts_and_info() -> None:
    with Harness(hub=Hub(presence_info=name_info)) as h:
        a1, a2, b, anon = fresh(h, "alice"), fresh(h, "alice"), fresh(h, "bob"), fresh(h)
        a1.conn.set_metadata("name", "Alice")
        a2.conn.set_metadata("name", "Alice (phone)")
        for client in (a1, a2, b, anon):
            joined(client, "lobby")
        b.received()  # anon's user_joined
        b.send({"type": "presence", "room": "lobby", "id": 1})
        (reply,) = b.received()
        assert reply["type"] == "presence" and reply["id"] == 1 and reply["room"] == "lobby"
        assert reply["timestamp"].endswith("Z")
        assert reply["payload"] == {
            "presence": {
                # the info of the user's most recent connection to join
                "alice": {"connections": 2, "info": {"name": "Alice (phone)", "room": "lobby"}},
                "bob": {"connections": 1},  # the hook returned None: no info
                anon.conn.user_id: {"connections": 1},  # an anonymous connection is a user of its own
            },
            "num_users": 3,
            "num_connections": 4,
        }
        b.send({"type": "presence_stats", "room": "lobby", "id": "s"})
        (stats,) = b.received()
        assert stats["type"] == "presence_stats" and stats["id"] == "s" and stats["room"] == "lobby"
        assert stats["payload"] == {"num_users": 3, "num_connections": 4}
        a2.disconnect()
        b.send({"type": "presence", "room": "lobby"})
        (reply,) = b.received()
        assert "id" not in reply
        assert reply["payload"]["presence"]["alice"] == {"connections": 1, "info": {"name": "Alice", "room": "lobby"}}


def test_presence_of_an_empty_or_unknown_room_is_empty() -> None:
    with Harness() as h:
        a = fresh(h, "a")
        a.send({"type": "presence", "room": "nobody-here", "id": 1})
        assert a.received()[0]["payload"] == {"presence": {}, "num_users": 0, "num_connections": 0}
        a.send({"type": "presence_stats", "room": "nobody-here", "id": 2})
        assert a.received()[0]["payload"] == {"num_users": 0, "num_connections": 0}


def test_a_failing_or_async_presence_info_hook_shows_no_info_and_never_fails_a_join(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(conn: Connection, room: str) -> dict[str, Any]:
        raise RuntimeError("boom")

    async def not_sync(conn: Connection, room: str) -> dict[str, Any]:
        return {"never": True}

    for hook in (broken, not_sync):
        with Harness(hub=Hub(presence_info=hook)) as h, caplog.at_level(logging.ERROR, "fasthub"):  # type: ignore[arg-type]
            a = fresh(h, "a")
            joined(a, "r")
            a.send({"type": "presence", "room": "r"})
            assert a.received()[0]["payload"]["presence"] == {"a": {"connections": 1}}
        assert "presence_info failed" in caplog.text
        caplog.clear()


def test_member_events_go_out_once_per_user_not_once_per_tab() -> None:
    with Harness() as h:
        watcher = fresh(h, "watcher")
        joined(watcher, "r")
        tab1, tab2, tab3 = fresh(h, "alice"), fresh(h, "alice"), fresh(h, "alice")
        joined(tab1, "r")
        assert events(watcher.received()) == [("user_joined", "alice")]
        joined(tab2, "r")
        joined(tab3, "r")
        assert events(watcher.received()) == []  # the user was in the room already
        tab1.send({"type": "leave_room", "room": "r"})
        tab2.disconnect()
        assert events(watcher.received()) == []  # alice is still in the room (tab3)
        joined(tab1, "r")  # back while tab3 is still in: still no event
        assert events(watcher.received()) == []
        tab3.disconnect()
        tab1.send({"type": "leave_room", "room": "r"})
        assert events(watcher.received()) == [("user_left", "alice")]  # her last connection left
        a, b = fresh(h), fresh(h)  # anonymous connections are users of their own
        joined(a, "r")
        joined(b, "r")
        assert events(watcher.received()) == [("user_joined", a.conn.user_id), ("user_joined", b.conn.user_id)]


def test_typing_reaches_the_other_members_only_throttled_never_stored_nor_acked() -> None:
    with Harness(HubConfig(typing_interval=0.2)) as h:
        a, b, c, outsider = fresh(h, "a"), fresh(h, "b"), fresh(h, "a"), fresh(h, "x")
        for client in (a, b, c):
            joined(client, "r")
        for client in (a, b, c):
            client.received()
        a.send({"type": "typing", "room": "r", "id": "t1", "payload": {"ignored": True}, "metadata": {"k": 1}})
        assert a.received() == []  # never acknowledged, not echoed to the sender
        got = b.received()
        assert len(got) == 1
        event = got[0]
        assert set(event) == {"type", "room", "from", "timestamp"}  # nothing of the client's but the room
        assert (event["type"], event["room"], event["from"]) == ("typing", "r", "a")
        assert c.received() == [event]  # the sender's other tab is another member: it gets it too
        assert outsider.received() == []
        for _ in range(5):  # more within the interval: dropped silently, no error
            a.send({"type": "typing", "room": "r", "id": "again"})
        assert b.received() == [] and a.received() == []
        b.send({"type": "typing", "room": "r"})  # another connection is throttled apart
        assert [m["from"] for m in a.received()] == ["b"]
        time.sleep(0.25)
        a.send({"type": "typing", "room": "r"})
        assert [m["type"] for m in b.received()] == ["typing"]
        # never stored: the room's stream did not move
        b.send({"type": "join_room", "room": "r", "id": "j"})
        assert b.received()[-1]["payload"]["offset"] == 0


def test_typing_memory_is_freed_when_connections_leave_or_close() -> None:
    with Harness() as h:
        a, b = fresh(h, "a"), fresh(h, "b")
        joined(a, "r1")
        joined(a, "r2")
        joined(b, "r1")
        a.send({"type": "typing", "room": "r1"})
        a.send({"type": "typing", "room": "r2"})
        b.send({"type": "typing", "room": "r1"})
        throttle = h.hub._typing
        assert len(throttle) == 3
        a.send({"type": "leave_room", "room": "r1"})
        assert len(throttle) == 2
        a.disconnect()
        assert len(throttle) == 1
        h.hub.delete_room("r1")
        assert len(throttle) == 0


def test_the_hub_sweep_forgets_typing_older_than_the_interval() -> None:
    config = HubConfig(typing_interval=0.05, cleanup_interval=0.05)
    with Harness(config) as h:
        a = fresh(h, "a")
        joined(a, "r")
        a.send({"type": "typing", "room": "r"})
        assert len(h.hub._typing) == 1
        h.loop.run_until_complete(asyncio.sleep(0.2))  # a sweep or more
        assert len(h.hub._typing) == 0
        assert h.hub.get_room("r") is not None and h.hub.get_room("r").member_count == 1  # type: ignore[union-attr]


def test_typing_error_cases_tell_the_offending_client() -> None:
    with Harness() as h:
        a, b = fresh(h, "a"), fresh(h, "b")
        joined(b, "r")
        b.received()
        cases = [
            ({"type": "typing", "room": "r", "id": 1}, "not_member"),  # a room not joined
            ({"type": "typing", "room": "nowhere", "id": 2}, "not_member"),  # a room that does not exist
            ({"type": "typing", "id": 3}, "missing_field"),
            ({"type": "typing", "room": "bad name!", "id": 4}, "invalid_room"),
            ({"type": "typing", "room": 42, "id": 5}, "invalid_message"),
        ]
        for message, code in cases:
            a.send(message)
            (err,) = a.received()
            assert err["type"] == "error" and err["payload"]["code"] == code, (message, err)
            assert err["id"] == message["id"] and err["payload"]["message"]
        assert b.received() == []  # nothing reached the room


def test_typing_follows_can_publish_when_the_app_sets_it() -> None:
    async def read_only(conn: Connection, room: str) -> bool:
        return not room.startswith("news")

    with Harness(can_publish=read_only) as h:
        a, b = fresh(h, "a"), fresh(h, "b")
        for client in (a, b):
            joined(client, "news")
            joined(client, "chat")
        a.received(), b.received()
        a.send({"type": "typing", "room": "news", "id": "n"})
        (err,) = a.received()
        assert err["payload"]["code"] == "forbidden" and err["id"] == "n"
        a.send({"type": "typing", "room": "chat"})
        assert [m["type"] for m in b.received()] == ["typing"]
        fresh(h, "x").send({"type": "typing", "room": "chat", "id": "x"})  # members only, hook or not
        assert [m["type"] for m in b.received()] == []


def test_presence_follows_the_join_rules_for_non_members() -> None:
    allowed = {"open"}

    def can_join(conn: Connection, room: str) -> bool:
        return room in allowed

    with Harness(can_join=can_join) as h:
        member, outsider = fresh(h, "member"), fresh(h, "outsider")
        joined(member, "open")
        allowed.add("closed")
        joined(member, "closed")
        allowed.discard("closed")  # the rule changed since: a member may still see its room
        member.received()
        for mtype in ("presence", "presence_stats"):
            outsider.send({"type": mtype, "room": "open", "id": 1})  # may join, so may look
            (reply,) = outsider.received()
            assert reply["type"] == mtype and reply["payload"]["num_users"] == 1
            outsider.send({"type": mtype, "room": "closed", "id": 2})
            (err,) = outsider.received()
            assert err["type"] == "error" and err["payload"]["code"] == "forbidden" and err["id"] == 2
            member.send({"type": mtype, "room": "closed", "id": 3})
            assert member.received()[0]["type"] == mtype


def test_presence_with_an_async_join_hook_and_pattern_rules() -> None:
    async def slow_yes(conn: Connection, room: str) -> bool:
        await asyncio.sleep(0)
        return conn.user_id == "vip"

    with Harness(can_join={"vip:*": slow_yes, "public:*": True}) as h:
        vip, other = fresh(h, "vip"), fresh(h, "other")
        joined(vip, "public:1")
        for client, room, expected in [
            (vip, "vip:lounge", "presence"),
            (other, "vip:lounge", "error"),
            (other, "public:1", "presence"),
            (other, "private:1", "error"),  # no pattern matches: refused, as a join would be
        ]:
            client.send({"type": "presence", "room": room})
            (reply,) = client.received()
            assert reply["type"] == expected, (room, reply)


def test_presence_malformed_requests_tell_the_offending_client() -> None:
    with Harness() as h:
        a = fresh(h, "a")
        for mtype in ("presence", "presence_stats"):
            cases = [
                ({"type": mtype, "id": 1}, "missing_field"),
                ({"type": mtype, "room": "", "id": 2}, "invalid_room"),
                ({"type": mtype, "room": "x" * 200, "id": 3}, "invalid_room"),
                ({"type": mtype, "room": ["r"], "id": 4}, "invalid_message"),
                ({"type": mtype, "room": "r", "id": True}, "invalid_message"),
            ]
            for message, code in cases:
                a.send(message)
                (err,) = a.received()
                assert err["type"] == "error" and err["payload"]["code"] == code, (message, err)


def test_a_handler_can_take_presence_and_typing_over() -> None:
    seen: list[str] = []

    def on_message(conn: Connection, msg: Any) -> bool:
        seen.append(msg.type)
        return msg.type == "typing"  # typing is the app's; presence goes on to the built-in

    with Harness(on_message=on_message) as h:
        a, b = fresh(h, "a"), fresh(h, "b")
        joined(a, "r")
        joined(b, "r")
        a.received(), b.received()
        a.send({"type": "typing", "room": "r"})
        a.send({"type": "presence", "room": "r"})
        assert b.received() == []
        assert a.received()[0]["type"] == "presence"
        assert seen[-2:] == ["typing", "presence"]


def test_hub_api_presence_stats_typing_and_update_presence() -> None:
    hub = Hub(HubConfig(typing_interval=60), presence_info=name_info)
    with Harness(hub=hub) as h:
        a, b = fresh(h, "alice"), fresh(h, "bob")
        a.conn.set_metadata("name", "Alice")
        joined(a, "r")
        joined(b, "r")
        a.received(), b.received()
        presence = h.loop.run_until_complete(hub.presence("r"))
        assert presence == {"alice": UserPresence(1, {"name": "Alice", "room": "r"}), "bob": UserPresence(1)}
        assert h.loop.run_until_complete(hub.presence_stats("r")) == PresenceStats(2, 2)
        assert h.loop.run_until_complete(hub.presence("none")) == {}
        a.conn.set_metadata("name", "Alice B.")
        hub.update_presence(a.id)  # in process: the hook is asked whenever presence is asked anyway
        assert h.loop.run_until_complete(hub.presence("r"))["alice"].info == {"name": "Alice B.", "room": "r"}
        assert hub.typing(a.id, "r") is True
        assert hub.typing(a.id, "r") is False  # throttled
        h.settle()
        assert [m["type"] for m in b.received()] == ["typing"]
        with pytest.raises(HubError):
            hub.typing(a.id, "elsewhere")
        with pytest.raises(HubError):
            hub.typing("no-such-connection", "r")
        with pytest.raises(HubError):
            hub.update_presence("no-such-connection")


# -- a real server, real clients -------------------------------------------------------------------

ONE_NODE = [p for p in SERVER_KINDS if p.id in ("fasthub-plain", "websockets-sansio-plain")]


@pytest.fixture(params=ONE_NODE)
def server_kind(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """The fast path and the portable path, one process each."""
    return request.param  # type: ignore[no-any-return]


def test_e2e_presence_once_per_user_events_and_typing(server: Server) -> None:
    server.hub.presence_info = lambda conn, room: {"tab": conn.get_metadata("tab")}

    async def scenario() -> None:
        watcher = await connect(server, "user=watcher")
        await watcher.join("lobby")
        tabs = []
        for i in range(2):
            tab = await connect(server, "user=alice")
            server.call(lambda c=tab, i=i: server.hub.get_connection(c.conn_id).set_metadata("tab", i))
            await tab.join("lobby")
            tabs.append(tab)
        event = await watcher.expect("system", room="lobby")
        assert (event["payload"]["event"], event["payload"]["user_id"]) == ("user_joined", "alice")
        await watcher.send({"type": "presence", "room": "lobby", "id": "p"})
        reply = await watcher.expect("presence", id="p", room="lobby")  # no second user_joined before it
        assert reply["payload"] == {
            "presence": {
                "watcher": {"connections": 1, "info": {"tab": None}},
                "alice": {"connections": 2, "info": {"tab": 1}},
            },
            "num_users": 2,
            "num_connections": 3,
        }
        await watcher.send({"type": "presence_stats", "room": "lobby", "id": "s"})
        assert (await watcher.expect("presence_stats", id="s"))["payload"] == {"num_users": 2, "num_connections": 3}
        # typing: to the others, not to the sender, throttled (2 s by default), no ack
        await tabs[0].send({"type": "typing", "room": "lobby", "id": "t"})
        for other in (watcher, tabs[1]):
            typing = await other.expect("typing", room="lobby")
            assert typing["from"] == "alice" and "id" not in typing
        await tabs[0].send({"type": "typing", "room": "lobby"})
        await tabs[0].send({"type": "ping", "id": "after"})
        await tabs[0].expect("pong", id="after")  # nothing came back for the typing events
        await watcher.silent(0.2)
        # once per user: the first tab's close is no user_left, the last one's is
        await tabs[0].close()
        await watcher.silent(0.3)
        await tabs[1].send({"type": "leave_room", "room": "lobby", "id": "l"})
        await tabs[1].expect("system", id="l")
        left = await watcher.expect("system", room="lobby")
        assert (left["payload"]["event"], left["payload"]["user_id"]) == ("user_left", "alice")
        await watcher.silent(0.2)

    run(scenario())


def test_e2e_error_cases_reach_the_offending_client(make_server: Any) -> None:
    server = make_server(can_join={"public:*": True})

    async def scenario() -> None:
        member = await connect(server, "user=m")
        await member.join("public:1")
        other = await connect(server, "user=o")
        await other.send({"type": "presence", "room": "secret:1", "id": 1})
        assert (await other.error("forbidden"))["id"] == 1
        await other.send({"type": "presence_stats", "room": "secret:1", "id": 2})
        assert (await other.error("forbidden"))["id"] == 2
        await other.send({"type": "presence", "room": "public:1", "id": 3})  # may join: may look
        assert (await other.expect("presence", id=3))["payload"]["num_users"] == 1
        await other.send({"type": "typing", "room": "public:1", "id": 4})
        assert (await other.error("not_member"))["id"] == 4
        await other.send({"type": "typing", "id": 5})
        assert (await other.error("missing_field"))["id"] == 5
        await other.send({"type": "presence", "room": "no spaces", "id": 6})
        assert (await other.error("invalid_room"))["id"] == 6
        await other.send({"type": "presence_stats", "room": {"a": 1}, "id": 7})
        assert (await other.error("invalid_message"))["id"] == 7
        await member.silent(0.2)  # none of it reached the room

    run(scenario())


def test_python_client_presence_and_typing(server: Server) -> None:
    async def scenario() -> None:
        async with (
            FasthubClient(server.ws_url("user=ann")) as ann,
            FasthubClient(server.ws_url("user=bo")) as bo,
        ):
            await ann.join("room")
            await bo.join("room")
            assert await bo.presence("room") == {"ann": {"connections": 1}, "bo": {"connections": 1}}
            assert await ann.presence_stats("room") == {"num_users": 2, "num_connections": 2}
            await ann.typing("room")
            while (msg := await bo.receive(3))["type"] != "typing":
                pass  # ann's user_joined came first
            assert msg["from"] == "ann" and msg["room"] == "room"

    run(scenario())
