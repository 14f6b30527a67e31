"""Hubs on a real three-master Redis Cluster (``RedisBroker(cluster=True)``: ``ClusterLink``).

One cluster (tests/redisproc.py) serves the module; each test uses its own prefix. Rooms are
picked so that their channels land on different masters; the faults are real (a slot moved
with ``CLUSTER SETSLOT``, a master SIGKILLed and restarted).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from redis.crc import key_slot
from redisproc import RedisCluster, free_port, redis_binary

from fasthub.broker.redis import RedisBroker
from tests.conftest import Client, connect, run
from tests.test_cluster import cluster, get_stats, wait_for
from tests.test_cluster_faults import EPHEMERAL


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    redis_binary()
    redis_binary("redis-cli")
    rc = RedisCluster().start()
    try:
        yield rc
    finally:
        rc.stop()


def owner(rc: RedisCluster, channel: bytes) -> int:
    """Index of the master that owns ``channel``'s slot (each master's own CLUSTER NODES line)."""
    slot = key_slot(channel)
    for i in range(len(rc.ports)):
        nodes = rc.command("CLUSTER", "NODES", node=i, cluster_mode=False)
        me = next(line for line in nodes.splitlines() if "myself" in line)
        for ranges in me.split()[8:]:
            lo, _, hi = ranges.partition("-")
            if not ranges.startswith("[") and int(lo) <= slot <= int(hi or lo):
                return i
    raise AssertionError(f"slot {slot} has no owner")


def room_per_master(broker: RedisBroker, rc: RedisCluster) -> list[str]:
    """One room name per master, in master order."""
    rooms: dict[int, str] = {}
    for k in range(1000):
        rooms.setdefault(owner(rc, broker.room_channel(f"room{k}")), f"room{k}")
        if len(rooms) == len(rc.ports):
            return [rooms[i] for i in range(len(rc.ports))]
    raise AssertionError("no room on some master")


def shard_subscribers(rc: RedisCluster, channel: bytes, node: int) -> int:
    out = rc.command("PUBSUB", "SHARDNUMSUB", channel.decode(), node=node, cluster_mode=False).split()
    assert out[0] == channel.decode(), out
    return int(out[1])


async def room_messages(client: Client, n: int, timeout: float = 3.0) -> list[dict[str, Any]]:
    """The next ``n`` room messages, skipping system events."""
    out = []
    while len(out) < n:
        msg = await client.recv(timeout)
        if msg["type"] == "room_message":
            out.append(msg)
        else:
            assert msg["type"] == "system", msg
    return out


def test_two_nodes_act_as_one_hub_with_rooms_on_every_master(redis_cluster: RedisCluster) -> None:
    with cluster(redis_cluster.url, prefix="c1", cluster=True) as (a_node, b_node):
        stats = a_node.hub.broker.stats()
        assert stats["cluster"] is True and stats["sharded"] is True and stats["state"] == "up"
        rooms = room_per_master(a_node.hub.broker, redis_cluster)

        async def scenario() -> None:
            a = await connect(a_node, "user=alice")
            b = await connect(b_node, "user=bob")
            for room in rooms:
                assert (await a.join(room))["payload"]["members"] == 1
                assert (await b.join(room))["payload"]["members"] == 2  # counted on both nodes
                event = await a.expect("system", room=room)
                assert event["payload"]["action"] == "user_joined" and event["payload"]["user_id"] == "bob"
            for i, room in enumerate(rooms):  # each room's channel: both nodes, on its own master only
                channel = a_node.hub.broker.room_channel(room)
                counts = [shard_subscribers(redis_cluster, channel, node) for node in range(3)]
                assert counts == [2 if node == i else 0 for node in range(3)], (room, counts)
            for n in range(100):  # interleaved over the three masters
                for room in rooms:
                    await a.send({"type": "room_message", "room": room, "payload": n})
            for x in (a, b):
                got: dict[str, list[int]] = defaultdict(list)
                for msg in await room_messages(x, 300):
                    got[msg["room"]].append(msg["payload"])
                assert got == {room: list(range(100)) for room in rooms}  # each room in order, exactly once
            await a.silent(0.3)
            await b.silent(0.05)

            # user messages and unknown_user are cluster-wide
            b2 = await connect(a_node, "user=bob")  # bob on both nodes
            await a.send({"type": "user_message", "to": "bob", "payload": "hi", "id": 1})
            for x in (b, b2):
                got_msg = await x.expect("user_message", id=1)
                assert got_msg["from"] == "alice" and got_msg["payload"] == "hi"
            await a.expect("ack", id=1)
            await b.send({"type": "user_message", "to": "alice", "payload": "back"})
            assert (await a.expect("user_message"))["from"] == "bob"
            await a.send({"type": "user_message", "to": "nobody", "id": 2})
            assert (await a.error("unknown_user"))["id"] == 2
            # a broadcast from one node's API reaches the clients of both
            a_node.call(a_node.hub.broadcast_json, {"news": 1})
            for x in (a, b, b2):
                assert (await x.recv())["news"] == 1
            await b2.close()
            await b.send({"type": "leave_room", "room": rooms[1], "id": "l"})
            assert (await b.expect("system", id="l"))["payload"]["members"] == 1
            left = await a.expect("system", room=rooms[1])
            assert left["payload"]["action"] == "user_left" and left["payload"]["members"] == 1
            await b.close()
            await asyncio.sleep(0.3)  # bob's connections are gone from both nodes
            await a.send({"type": "user_message", "to": "bob", "id": 3})
            while (msg := await a.recv())["type"] == "system":
                assert msg["payload"]["action"] == "user_left", msg  # bob left the other rooms
            assert msg["type"] == "error" and msg["payload"]["code"] == "unknown_user" and msg["id"] == 3, msg

        run(scenario())


def test_a_node_without_members_receives_none_of_a_rooms_traffic(redis_cluster: RedisCluster) -> None:
    with cluster(redis_cluster.url, n=3, prefix="c2", cluster=True) as (a_node, b_node, c_node):

        async def scenario() -> None:
            a = await connect(a_node, "user=a")
            b = await connect(b_node, "user=b")
            c = await connect(c_node, "user=c")
            await a.join("quiet")
            await b.join("quiet")
            await a.expect("system")
            channel = c_node.hub.broker.room_channel("quiet")
            master = owner(redis_cluster, channel)
            assert shard_subscribers(redis_cluster, channel, master) == 2
            received_before = c_node.hub.broker.received
            for i in range(50):
                await a.send({"type": "room_message", "room": "quiet", "payload": i})
            assert [m["payload"] for m in await room_messages(b, 50)] == list(range(50))
            assert c_node.hub.broker.received == received_before  # not one message reached node c
            await c.silent(0.1)
            # the channel is dropped when the last local member leaves
            await b.send({"type": "leave_room", "room": "quiet"})
            await b.expect("system")
            await asyncio.sleep(0.2)
            assert shard_subscribers(redis_cluster, channel, master) == 1

        run(scenario())


def test_a_moved_slot_reconnects_and_resubscribes_on_its_new_master(redis_cluster: RedisCluster) -> None:
    rc = redis_cluster
    # history off: a slot holding keys (streams) cannot be reassigned by SETSLOT alone (that
    # takes MIGRATE, as `redis-cli --cluster reshard` does); this is about the subscriptions
    with cluster(rc.url, prefix="c3", cluster=True, config=EPHEMERAL) as (a_node, b_node):
        broker = a_node.hub.broker
        channel = broker.room_channel("moving")
        slot = key_slot(channel)
        src = owner(rc, channel)
        dst = (src + 1) % 3
        # the slot is the room's hash tag's: another test on this cluster (any prefix, the same
        # tag) may have left keys in it, which SETSLOT alone cannot move: cleared first
        for key in rc.command("CLUSTER", "GETKEYSINSLOT", str(slot), "1000", node=src, cluster_mode=False).split():
            rc.command("DEL", key, node=src, cluster_mode=False)
        assert rc.command("CLUSTER", "COUNTKEYSINSLOT", str(slot), node=src, cluster_mode=False).strip() == "0"
        ids = [rc.command("CLUSTER", "MYID", node=i, cluster_mode=False).strip() for i in range(3)]
        outages = [n.hub.broker.outages for n in (a_node, b_node)]

        async def scenario() -> None:
            a = await connect(a_node, "user=a")
            b = await connect(b_node, "user=b")
            await a.join("moving")
            await b.join("moving")
            await a.send({"type": "room_message", "room": "moving", "payload": "before"})
            assert (await room_messages(b, 1))[0]["payload"] == "before"
            # the room's presence keys live in its slot too: gone first (the nodes write them
            # again on the new owner when they reconnect)
            for key in broker._presence_keys("moving"):
                rc.command("DEL", key, node=src, cluster_mode=False)
            # the slot moves (every master told at once: no wait for gossip)
            for node in (dst, src, 3 - src - dst):
                rc.command("CLUSTER", "SETSLOT", str(slot), "NODE", ids[dst], node=node, cluster_mode=False)
            assert owner(rc, channel) == dst
            # each node's link sees its subscription dropped by the old owner, reconnects, resubscribes
            deadline = time.monotonic() + 5
            while not all(n.hub.broker.up and n.hub.broker.outages > o
                          for n, o in zip((a_node, b_node), outages, strict=True)):
                assert time.monotonic() < deadline, "the nodes did not reconnect"
                await asyncio.sleep(0.02)
            while shard_subscribers(rc, channel, dst) < 2:
                assert time.monotonic() < deadline, "not resubscribed on the new owner"
                await asyncio.sleep(0.02)
            assert shard_subscribers(rc, channel, src) == 0
            for i in range(20):
                await a.send({"type": "room_message", "room": "moving", "payload": i})
            assert [m["payload"] for m in await room_messages(b, 20)] == list(range(20))
            counts_key = broker._presence_keys("moving")[0]
            while sorted(rc.command("HKEYS", counts_key, node=dst, cluster_mode=False).split()) != ["a", "b"]:
                assert time.monotonic() < deadline + 5, "presence not written again on the new owner"
                await asyncio.sleep(0.05)

        run(scenario())


def test_a_master_killed_then_restarted(redis_cluster: RedisCluster) -> None:
    """SIGKILL one master: no node crashes or hangs, local delivery goes on, the outage shows in
    the stats; after the restart (cluster_state:ok), cross-node delivery resumes within a bound."""
    rc = redis_cluster
    victim = 1
    # history off: stored messages need their master (test_stored_messages_* for those)
    with cluster(rc.url, prefix="c4", cluster=True, retry_max=0.5, config=EPHEMERAL) as (a_node, b_node):
        room = room_per_master(a_node.hub.broker, rc)[victim]  # its channel lives on the victim

        async def scenario() -> dict[str, float]:
            a = await connect(a_node, "user=a")
            a2 = await connect(a_node, "user=a2")
            b = await connect(b_node, "user=b")
            for x in (a, a2, b):
                await x.join(room)
            await a.send({"type": "room_message", "room": room, "payload": "before"})
            for x in (a, a2, b):
                assert (await room_messages(x, 1))[0]["payload"] == "before"
            errors_before = a_node.hub.broker.broker_errors

            await asyncio.to_thread(rc.kill, victim)
            deadline = time.monotonic() + 5
            while a_node.hub.broker.up or b_node.hub.broker.up:
                assert time.monotonic() < deadline, "the nodes did not notice the dead master"
                await asyncio.sleep(0.02)
            # the whole cluster refuses commands once it marks the master failed; the nodes go on
            deadline = time.monotonic() + 10
            while "cluster_state:fail" not in rc.command("CLUSTER", "INFO", node=0, cluster_mode=False):
                assert time.monotonic() < deadline, "the cluster did not mark the master failed"
                await asyncio.sleep(0.1)
            await a.send({"type": "room_message", "room": room, "payload": "during"})
            for x in (a, a2):
                assert (await room_messages(x, 1))[0]["payload"] == "during"  # local delivery
            await b.silent(0.3)
            started = time.monotonic()
            stats = await asyncio.to_thread(get_stats, a_node)
            assert time.monotonic() - started < 2.0  # /ws/stats answers at once
            assert stats["broker"]["state"] == "down" and stats["cluster"] == {"state": "down"}
            assert stats["broker"]["outages"] >= 1 and stats["broker"]["broker_errors"] > errors_before

            started = time.monotonic()
            await asyncio.to_thread(rc.restart, victim)  # returns at cluster_state:ok on every master
            ok = time.monotonic()
            n = 0
            while True:  # probe until one crosses
                assert time.monotonic() - ok < 10, "cross-node delivery did not resume"
                n += 1
                await a.send({"type": "room_message", "room": room, "payload": {"probe": n}})
                try:
                    probe = (await room_messages(b, 1, timeout=0.25))[0]
                except TimeoutError:
                    continue
                assert "probe" in probe["payload"], probe
                break
            resumed = time.monotonic() - ok
            assert resumed < 3.0  # measured ~0.5 s: the nodes retry every retry_max (0.5 s) at most
            for i in range(20):
                await a.send({"type": "room_message", "room": room, "payload": i})
            got = [m["payload"] for m in await room_messages(b, n - probe["payload"]["probe"] + 20)]
            assert got[-20:] == list(range(20)), got
            assert a_node.hub.broker.up and b_node.hub.broker.up
            return {"restart": ok - started, "resume": resumed}

        timings = run(scenario(), timeout=60)
        print(f"master restart to cluster_state:ok {timings['restart']:.2f}s, then delivery resumed in "
              f"{timings['resume']:.2f}s")


def test_fasthub_serve_redis_cluster_processes_share_a_room(redis_cluster: RedisCluster) -> None:
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "fasthub", "serve", "--log-level", "warning", "--port", str(port),
             "--redis", redis_cluster.url, "--redis-cluster", "--redis-prefix", "c5", "--node-ttl", "2"],
            stderr=subprocess.PIPE,
        )
        for port in ports
    ]

    def stats(port: int) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ws/stats", timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def formed() -> bool:
        try:
            return all(stats(port).get("cluster", {}).get("nodes_alive") == 2 for port in ports)
        except OSError:
            return False

    try:
        wait_for(formed, timeout=20)
        assert stats(ports[0])["broker"]["cluster"] is True

        async def scenario() -> None:
            clients = []
            for port in ports:
                ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws")
                assert json.loads(await ws.recv())["payload"]["event"] == "connected"
                await ws.send(json.dumps({"type": "join_room", "room": "lobby"}))
                clients.append(Client(ws))
            for x in clients:
                await x.expect("system", room="lobby")
            await clients[0].send({"type": "room_message", "room": "lobby", "payload": "crossed"})
            assert (await room_messages(clients[1], 1))[0]["payload"] == "crossed"
            for x in clients:
                await x.close()

        run(scenario())
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        errs = []
        for proc in procs:
            try:
                proc.wait(20)
            finally:
                errs.append(proc.stderr.read().decode() if proc.stderr else "")
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught
    assert all(p.returncode in (0, -signal.SIGTERM) for p in procs) and not any(errs), errs
