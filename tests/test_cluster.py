"""Two hubs on one real redis-server (``RedisBroker``): they act as one hub.

Each node is a real uvicorn server in a thread of the test process, on its own event loop,
with its own ``RedisBroker``; clients are real WebSocket clients on either node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from fasthub import HubConfig
from fasthub.broker.redis import RedisBroker
from tests.conftest import Server, connect, query_user, run, serve


@contextlib.contextmanager
def cluster(
    url: str, n: int = 2, prefix: str = "t", ws: str = "fasthub", config: HubConfig | None = None, **broker_kw: Any
) -> Iterator[list[Server]]:
    with contextlib.ExitStack() as stack:
        nodes = [
            stack.enter_context(
                serve(
                    {"authenticate": query_user},
                    config or HubConfig(member_events_limit=8),
                    ws=ws,
                    broker=RedisBroker(url, prefix=prefix, ttl=broker_kw.pop("ttl", 2.0), **broker_kw),
                )
            )
            for _ in range(n)
        ]
        wait_for(lambda: all(s.hub.broker.up for s in nodes) and all(len(s.hub.broker._live) == n - 1 for s in nodes))
        yield nodes


def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def get_stats(server: Server) -> dict[str, Any]:
    with urllib.request.urlopen(server.http + "/ws/stats", timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("ws", "sharded"), [("fasthub", False), ("websockets-sansio", False), ("fasthub", True)]
)
def test_room_messages_cross_nodes_in_order(redis_server: Any, ws: str, sharded: bool) -> None:
    with cluster(redis_server.url, ws=ws, sharded=sharded) as (a_node, b_node):
        assert a_node.hub.broker.stats()["sharded"] is sharded

        async def scenario() -> None:
            a = await connect(a_node, "user=alice")
            b = await connect(b_node, "user=bob")
            joined = await a.join("lobby")
            assert joined["payload"]["members"] == 1
            joined = await b.join("lobby")
            assert joined["payload"]["members"] == 2  # counted on both nodes
            channel = a_node.hub.broker.room_channel("lobby").decode()
            numsub = redis_server.command("PUBSUB", "SHARDNUMSUB" if sharded else "NUMSUB", channel).split()
            other = redis_server.command("PUBSUB", "NUMSUB" if sharded else "SHARDNUMSUB", channel).split()
            assert (numsub, other) == ([channel, "2"], [channel, "0"])  # the kind of pub/sub asked for
            event = await a.expect("system", room="lobby")
            assert event["payload"]["action"] == "user_joined" and event["payload"]["user_id"] == "bob"
            for i in range(200):
                await a.send({"type": "room_message", "room": "lobby", "payload": i})
            for x in (a, b):
                got = [(await x.expect("room_message", room="lobby"))["payload"] for _ in range(200)]
                assert got == list(range(200))
            # exactly once: the sender's own node does not deliver its message twice
            await a.silent(0.3)
            await b.silent(0.1)
            await b.send({"type": "leave_room", "room": "lobby", "id": "l"})
            assert (await b.expect("system", id="l"))["payload"]["members"] == 1
            left = await a.expect("system", room="lobby")
            assert left["payload"]["action"] == "user_left" and left["payload"]["members"] == 1

        run(scenario())


def test_user_messages_broadcast_and_unknown_user_are_cluster_wide(redis_server: Any) -> None:
    with cluster(redis_server.url) as (a_node, b_node):

        async def scenario() -> None:
            a = await connect(a_node, "user=alice")
            b1 = await connect(b_node, "user=bob")
            b2 = await connect(a_node, "user=bob")  # bob on both nodes
            await a.send({"type": "user_message", "to": "bob", "payload": "hi", "id": 1})
            for b in (b1, b2):
                got = await b.expect("user_message", id=1)
                assert got["from"] == "alice" and got["payload"] == "hi" and got["offset"] == 1
            assert (await a.expect("ack", id=1, to="bob"))["payload"]["offset"] == 1
            await b1.silent(0.2)
            await b2.silent(0.05)
            await b1.send({"type": "user_message", "to": "alice", "payload": "back"})
            assert (await a.expect("user_message"))["from"] == "bob"
            await a.send({"type": "user_message", "to": "nobody", "id": 2})
            err = await a.error("unknown_user")
            assert err["id"] == 2
            # broadcast from the API of one node reaches the clients of both
            a_node.call(a_node.hub.broadcast_json, {"news": 1})
            for x in (a, b1, b2):
                assert (await x.recv())["news"] == 1
            await b2.close()
            await b1.close()
            await asyncio.sleep(0.3)  # bob's last connection is gone from both nodes
            await a.send({"type": "user_message", "to": "bob", "id": 3})
            await a.error("unknown_user")

        run(scenario())


def test_a_node_without_members_receives_none_of_a_rooms_traffic(redis_server: Any) -> None:
    with cluster(redis_server.url, n=3) as (a_node, b_node, c_node):

        async def scenario() -> None:
            a = await connect(a_node, "user=a")
            b = await connect(b_node, "user=b")
            c = await connect(c_node, "user=c")
            await a.join("quiet")
            await b.join("quiet")
            await a.expect("system")
            received_before = c_node.hub.broker.received
            channel = c_node.hub.broker.room_channel("quiet").decode()
            assert channel.startswith("t:{") and channel.endswith("}:r:quiet")
            assert redis_server.command("PUBSUB", "NUMSUB", channel).split() == [channel, "2"]
            for i in range(50):
                await a.send({"type": "room_message", "room": "quiet", "payload": i})
            for _ in range(50):
                await b.expect("room_message")
            assert c_node.hub.broker.received == received_before
            await c.silent(0.1)
            # the channel is dropped when the last local member leaves
            await b.send({"type": "leave_room", "room": "quiet"})
            await b.expect("system")
            await asyncio.sleep(0.2)
            assert redis_server.command("PUBSUB", "NUMSUB", channel).split() == [channel, "1"]

        run(scenario())


def test_stats_show_the_cluster(redis_server: Any) -> None:
    with cluster(redis_server.url) as (a_node, b_node):

        async def scenario() -> None:
            clients = [await connect(node, f"user=u{i}") for i, node in enumerate([a_node, b_node, b_node])]
            await clients[0].join("r1")
            await clients[1].join("r2")
            await clients[2].join("r2")
            await asyncio.sleep(1.0)  # the other node's heartbeat (every ttl / 3 s) carries its counters
            stats = get_stats(a_node)
            assert stats["connections"] == 3 and stats["users"] == 3
            assert stats["rooms"] == 2 and stats["room_list"] == ["r1", "r2"]
            assert stats["node"]["connections"] == 1 and stats["node"]["room_list"] == ["r1"]
            cl = stats["cluster"]
            assert cl["nodes_alive"] == 2 and cl["room_members"] == {"r1": 1, "r2": 2}
            assert sorted(n["connections"] for n in cl["nodes"]) == [1, 2]
            assert stats["broker"]["state"] == "up" and stats["broker"]["type"] == "redis"
            assert stats["broker"]["parser"] == "hiredis"  # a dependency: redis-py's fast parser

        run(scenario())


def test_a_join_storm_costs_few_subscribe_commands(redis_server: Any) -> None:
    """500 rooms joined by a burst of clients: subscriptions leave in a few batched commands."""

    def subscribe_calls() -> int:
        for line in redis_server.command("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_subscribe:"):
                return int(line.split("calls=")[1].split(",")[0])
        return 0

    with cluster(redis_server.url) as (a_node, b_node):
        before = subscribe_calls()

        async def scenario() -> None:
            clients = [await connect(node, f"user=s{i}") for i, node in enumerate([a_node, b_node] * 5)]
            for i, c in enumerate(clients):  # each client joins 100 rooms, all sent at once
                for r in range(100):
                    await c.send({"type": "join_room", "room": f"storm{(i * 50 + r) % 500}"})
            for c in clients:
                joined = 0
                while joined < 100:
                    msg = await c.recv(10)
                    joined += msg["payload"].get("event") == "joined"

        run(scenario())
        calls = subscribe_calls() - before
        rooms = {n.hub.broker._routes.get(n.hub.broker.room_channel(f"storm{r}")) is not None for n in (a_node, b_node)
                 for r in range(500)}
        assert rooms == {True}  # both nodes hear all 500 rooms
        # 1,000 room subscriptions (500 per node) plus 10 user channels, in batched commands
        assert calls <= 120, calls  # one per subscription would be 1,010 (38 in one run here)


def test_a_room_closed_and_opened_again_at_once_keeps_the_cluster_count(redis_server: Any) -> None:
    with cluster(redis_server.url) as (a_node, b_node):

        async def scenario() -> None:
            far = await connect(b_node, "user=far")
            await far.join("again")
            near = await connect(a_node, "user=near")
            joined = await near.join("again")
            assert joined["payload"]["members"] == 2
            for i in range(5):  # leave and join in a row: the channel stays subscribed between
                await near.send({"type": "leave_room", "room": "again", "id": f"l{i}"})
                await near.send({"type": "join_room", "room": "again", "id": f"j{i}"})
                replies = {}
                while len(replies) < 2:
                    msg = await near.recv()
                    if msg.get("id") is not None:
                        replies[msg["id"]] = msg["payload"]["members"]
                assert replies == {f"l{i}": 1, f"j{i}": 2}, replies
            # join and leave at once, before the subscription is live: both answered, in order
            await near.send({"type": "leave_room", "room": "again", "id": "x"})
            await near.expect("system", id="x")
            await asyncio.sleep(0.1)
            await near.send({"type": "join_room", "room": "again", "id": "y"})
            await near.send({"type": "leave_room", "room": "again", "id": "z"})
            assert [(await near.expect("system"))["id"] for _ in range(2)] == ["y", "z"]

        run(scenario())


def test_without_redis_server_the_redis_tests_fail_in_ci_and_skip_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from redisproc import redis_binary

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("FASTHUB_REQUIRE_REDIS", "1")  # what ci/test sets
    with pytest.raises(pytest.fail.Exception):
        redis_binary()
    monkeypatch.delenv("FASTHUB_REQUIRE_REDIS")
    with pytest.raises(pytest.skip.Exception):
        redis_binary()
