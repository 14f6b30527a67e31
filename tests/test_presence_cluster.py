"""Presence and typing across nodes: hubs joined by ``RedisBroker`` on a real redis-server.

Each node is a real uvicorn server (in a thread of the test process, or a ``fasthub serve``
process where a node has to die by SIGKILL); clients are real WebSocket clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from redisproc import free_port

from fasthub import Connection, HubConfig
from fasthub.broker.redis import RedisBroker
from fasthub.presence import PresenceStats, UserPresence
from tests.conftest import Client, Server, connect, query_user, run, serve
from tests.test_cluster import cluster, wait_for


def hook(conn: Connection, room: str) -> dict[str, Any]:
    return {"name": conn.user_id.title(), "tab": conn.get_metadata("tab")}


def presence_hook(*nodes: Server) -> None:
    for node in nodes:
        node.hub.presence_info = hook


async def presence_of(client: Client, room: str, rid: Any = "p") -> dict[str, Any]:
    await client.send({"type": "presence", "room": room, "id": rid})
    while (msg := await client.recv()).get("id") != rid:
        pass  # member events may come first
    assert msg["type"] == "presence", msg
    return msg["payload"]  # type: ignore[no-any-return]


async def on_loop(node: Server, coro: Any) -> Any:
    """Await a hub coroutine on the node's own event loop."""
    assert node.hub.loop is not None
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, node.hub.loop))


async def member_events(client: Client, wait: float = 0.4) -> list[tuple[str, str]]:
    """The user_joined/user_left events that arrive within ``wait`` seconds."""
    seen = []
    with contextlib.suppress(asyncio.TimeoutError):
        while True:
            msg = await client.recv(wait)
            if msg["type"] == "system" and msg["payload"]["event"] in ("user_joined", "user_left"):
                seen.append((msg["payload"]["event"], msg["payload"]["user_id"]))
    return seen


def test_presence_from_one_node_lists_the_users_of_every_node(redis_server: Any) -> None:
    with cluster(redis_server.url, config=HubConfig(history_size=0)) as (a_node, b_node):
        presence_hook(a_node, b_node)

        async def scenario() -> None:
            alice_a = await connect(a_node, "user=alice")
            await alice_a.join("lobby")
            bob = await connect(b_node, "user=bob")
            # no wait: a client told "joined" is in every node's answer already
            assert (await bob.join("lobby"))["payload"]["members"] == 2
            assert await presence_of(bob, "lobby") == {
                "presence": {
                    "alice": {"connections": 1, "info": {"name": "Alice", "tab": None}},
                    "bob": {"connections": 1, "info": {"name": "Bob", "tab": None}},
                },
                "num_users": 2,
                "num_connections": 2,
            }
            alice_b = await connect(b_node, "user=alice")
            b_node.call(lambda: b_node.hub.get_connection(alice_b.conn_id).set_metadata("tab", "phone"))
            await alice_b.join("lobby")
            payload = await presence_of(alice_a, "lobby", 1)
            # counted on both nodes; the info of the most recent join
            assert payload["presence"]["alice"] == {"connections": 2, "info": {"name": "Alice", "tab": "phone"}}
            await alice_a.send({"type": "presence_stats", "room": "lobby", "id": "s"})
            while (msg := await alice_a.recv()).get("id") != "s":
                pass
            assert msg["type"] == "presence_stats" and msg["payload"] == {"num_users": 2, "num_connections": 3}
            # the Python API, on either node
            assert await on_loop(b_node, b_node.hub.presence_stats("lobby")) == PresenceStats(2, 3)
            on_a = await on_loop(a_node, a_node.hub.presence("lobby"))
            assert on_a["bob"] == UserPresence(1, {"name": "Bob", "tab": None})
            # a non-member may look too (no can_join rule here), from the node without the room
            carol = await connect(a_node, "user=carol")
            assert (await presence_of(carol, "lobby"))["num_connections"] == 3
            # the Redis keys: one hash per room and one of infos, both with a TTL
            keys = a_node.hub.broker._presence_keys("lobby")
            assert int(redis_server.command("HLEN", keys[0])) == 2
            for key in keys:
                assert 0 < int(redis_server.command("PTTL", key)) <= 60_000
            for client in (alice_a, alice_b, bob):
                await client.close()
            await asyncio.sleep(0.3)
            assert (await presence_of(carol, "lobby"))["presence"] == {}
            assert redis_server.command("EXISTS", keys[0]).strip() == "0"  # the last leave removed it

        run(scenario())


def test_member_events_go_out_once_per_user_across_nodes(redis_server: Any) -> None:
    with cluster(redis_server.url) as (a_node, b_node):

        async def scenario() -> None:
            bob = await connect(b_node, "user=bob")
            await bob.join("r")
            tab_a = await connect(a_node, "user=alice")
            await tab_a.join("r")
            assert await member_events(bob) == [("user_joined", "alice")]
            tab_b = await connect(b_node, "user=alice")  # the same user on the other node
            await tab_b.join("r")
            tab_a2 = await connect(a_node, "user=alice")  # and a second tab on the first one
            await tab_a2.join("r")
            assert await member_events(bob) == []
            await tab_a.send({"type": "leave_room", "room": "r", "id": "l"})
            await tab_a.expect("system", id="l")
            await tab_a2.close()
            assert await member_events(bob) == []  # alice is still in the room, on node B
            await tab_b.close()  # her last connection, on another node than the first
            assert await member_events(bob) == [("user_left", "alice")]
            # and back again: one user_joined
            await tab_a.join("r")
            assert await member_events(bob) == [("user_joined", "alice")]

        run(scenario())


def test_typing_crosses_nodes_and_is_throttled(redis_server: Any) -> None:
    with cluster(redis_server.url, config=HubConfig(typing_interval=0.5)) as (a_node, b_node):

        async def scenario() -> None:
            a = await connect(a_node, "user=a")
            near = await connect(a_node, "user=near")
            far = await connect(b_node, "user=far")
            for client in (a, near, far):
                await client.join("r")
            await member_events(a, 0.3)
            await member_events(near, 0.1)
            for _ in range(3):
                await a.send({"type": "typing", "room": "r"})
            for client in (near, far):
                msg = await client.expect("typing", room="r")
                assert msg["from"] == "a"
                await client.silent(0.2)  # the other two were inside the interval
            await a.silent(0.05)
            await asyncio.sleep(0.4)
            await far.send({"type": "typing", "room": "r"})
            assert (await a.expect("typing"))["from"] == "far"
            await a.send({"type": "typing", "room": "r"})  # a's interval is over
            assert (await far.expect("typing"))["from"] == "a"

        run(scenario())


@contextlib.contextmanager
def fasthub_process(redis_url: str, prefix: str, node_ttl: float) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A ``fasthub serve --redis`` node in its own process (so it can die by SIGKILL)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fasthub",
            "serve",
            "--port",
            str(port),
            "--redis",
            redis_url,
            "--redis-prefix",
            prefix,
            "--node-ttl",
            str(node_ttl),
            "--log-level",
            "warning",
            "--no-demo",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert proc.poll() is None and time.monotonic() < deadline, "fasthub serve did not start"
            time.sleep(0.05)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_a_dead_nodes_entries_leave_presence_within_its_ttl(redis_server: Any) -> None:
    broker = RedisBroker(redis_server.url, prefix="dead", ttl=1.0)
    with (
        serve({"authenticate": query_user}, HubConfig(), ws="fasthub", broker=broker) as b_node,
        fasthub_process(redis_server.url, "dead", 1.0) as (port, proc),
    ):
        wait_for(lambda: broker.up and len(broker._live) == 1)
        a_node = Server("127.0.0.1", port, "", b_node.app, b_node.hub, b_node.uvicorn, b_node.thread)

        async def scenario() -> None:
            doomed = await connect(a_node)  # anonymous: `fasthub serve` without --jwt-secret
            await doomed.join("room")
            watcher = await connect(b_node, "user=watcher")
            await watcher.join("room")
            assert set((await presence_of(watcher, "room"))["presence"]) == {doomed.user_id, "watcher"}
            counts_key = broker._presence_keys("room")[0]
            assert doomed.user_id in redis_server.command("HKEYS", counts_key)
            os.kill(proc.pid, signal.SIGKILL)  # no goodbye: its entries stay in Redis
            killed = time.monotonic()
            await asyncio.sleep(0.3)
            assert doomed.user_id in redis_server.command("HKEYS", counts_key)
            while doomed.user_id in (await presence_of(watcher, "room", str(time.monotonic())))["presence"]:
                assert time.monotonic() - killed < 1.0 + 1.0 / 3 + 1.0, "the dead node is still listed"
                await asyncio.sleep(0.1)
            # left out within the node TTL plus a heartbeat, and removed by the reader
            await asyncio.sleep(0.2)
            assert redis_server.command("HKEYS", counts_key).split() == ["watcher"]
            await watcher.send({"type": "presence_stats", "room": "room", "id": "s"})
            assert (await watcher.expect("presence_stats", id="s"))["payload"] == {"num_users": 1, "num_connections": 1}

        run(scenario())


def test_presence_keys_expire_when_no_live_node_refreshes_them(redis_server: Any) -> None:
    broker = RedisBroker(redis_server.url, prefix="ttl", ttl=0.6, presence_ttl=1.2)
    with serve({"authenticate": query_user}, HubConfig(), ws="fasthub", broker=broker) as node:
        wait_for(lambda: broker.up)
        counts_key = broker._presence_keys("room")[0]

        async def scenario() -> None:
            client = await connect(node, "user=stay")
            await client.join("room")
            await asyncio.sleep(2.0)  # longer than presence_ttl: refreshed by the live node
            assert redis_server.command("HKEYS", counts_key).split() == ["stay"]
            assert 0 < int(redis_server.command("PTTL", counts_key)) <= 1200

            async def die() -> None:  # stop talking to Redis without a goodbye, as a dead node
                assert broker._main is not None
                broker._main.cancel()
                await broker._disconnect()
                broker.up = False

            node.call(lambda: asyncio.ensure_future(die()))
            await asyncio.sleep(1.6)
            assert redis_server.command("EXISTS", counts_key).strip() == "0"

        run(scenario())


def test_presence_is_unavailable_while_redis_is_down_and_rewritten_after(redis_server: Any) -> None:
    # no history: a join needs no stream position, so it works while Redis is away
    with cluster(redis_server.url, retry_max=0.2, config=HubConfig(history_size=0)) as (a_node, b_node):

        async def scenario() -> None:
            a = await connect(a_node, "user=a")
            await a.join("r")
            b = await connect(b_node, "user=b")
            await b.join("r")
            redis_server.stop()
            await asyncio.get_running_loop().run_in_executor(None, lambda: wait_for(lambda: not b_node.hub.broker.up))
            await b.send({"type": "presence", "room": "r", "id": "down"})
            while (msg := await b.recv()).get("id") != "down":
                pass
            assert msg["type"] == "error" and msg["payload"]["code"] == "unavailable"
            a2 = await connect(a_node, "user=a2")  # joins while Redis is away: written when it is back
            await a2.join("r")
            redis_server.start()  # a fresh Redis: every node writes its entries again
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: wait_for(lambda: a_node.hub.broker.up and b_node.hub.broker.up, timeout=10)
            )
            deadline = time.monotonic() + 5
            while set((payload := await presence_of(b, "r", str(time.monotonic())))["presence"]) != {"a", "a2", "b"}:
                assert time.monotonic() < deadline, payload
                await asyncio.sleep(0.1)

        run(scenario())


def test_update_presence_rewrites_the_info_and_a_stopped_node_removes_its_entries(redis_server: Any) -> None:
    with cluster(redis_server.url, config=HubConfig(history_size=0)) as (a_node, b_node):
        presence_hook(a_node, b_node)

        async def scenario() -> None:
            ann = await connect(a_node, "user=ann")
            await ann.join("r1")
            await ann.join("r2")
            bo = await connect(b_node, "user=bo")
            await bo.join("r1")
            assert (await presence_of(bo, "r1"))["presence"]["ann"]["info"] == {"name": "Ann", "tab": None}

            def away() -> None:
                conn = a_node.hub.get_connection(ann.conn_id)
                conn.set_metadata("tab", "away")
                a_node.hub.update_presence(conn.id)

            a_node.call(away)
            await asyncio.sleep(0.1)
            for room in ("r1", "r2"):  # every room of the connection, as seen from the other node
                assert (await presence_of(bo, room))["presence"]["ann"]["info"] == {"name": "Ann", "tab": "away"}

        run(scenario())
        keys = a_node.hub.broker._presence_keys("r2")
        assert redis_server.command("HKEYS", keys[0]).split() == ["ann"]

    # both nodes stopped (their clients still connected when the servers shut down): no entry left
    for room in ("r1", "r2"):
        for key in a_node.hub.broker._presence_keys(room):
            assert redis_server.command("EXISTS", key).strip() == "0", key
