"""Broker faults against a real redis-server: down at start, restarted under load, slow, bad data.

In every case nothing raises per message and the broker comes back by itself. Messages that
are not stored (``EPHEMERAL``: history off) keep being delivered locally while Redis is away;
stored ones need Redis (their offset comes from it), so their publishers get ``unavailable``
meanwhile, and what was acknowledged is never lost (``test_stored_messages_*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import pytest
from redisproc import RedisServer, free_port

from fasthub import HubConfig
from fasthub.broker import codec
from fasthub.broker.redis import RedisBroker
from tests.conftest import connect, query_user, run, serve
from tests.test_cluster import cluster, get_stats, wait_for

#: no history: every message is delivered as issue 11 built it (locally first, then Redis)
EPHEMERAL = HubConfig(member_events_limit=8, history_size=0)


def test_redis_down_at_start_serves_locally_then_joins_when_it_comes_up(caplog: Any) -> None:
    caplog.set_level(logging.ERROR, logger="fasthub.broker")
    redis = RedisServer(free_port())
    with contextlib.ExitStack() as stack:
        nodes = [
            stack.enter_context(
                serve({"authenticate": query_user}, EPHEMERAL, ws="fasthub",
                      broker=RedisBroker(redis.url, prefix="d", ttl=2.0, retry_max=0.5))
            )
            for _ in range(2)
        ]
        a_node, b_node = nodes

        async def local_only() -> None:
            a = await connect(a_node, "user=a")
            a2 = await connect(a_node, "user=a2")
            await a.join("r")
            await a2.join("r")
            await a.expect("system")
            await a2.send({"type": "room_message", "room": "r", "payload": "local"})
            for x in (a, a2):
                assert (await x.expect("room_message"))["payload"] == "local"
            stats = get_stats(a_node)
            assert stats["broker"]["state"] == "down" and stats["broker"]["broker_errors"] >= 1
            assert stats["cluster"] == {"state": "down"} and stats["connections"] == 2

        run(local_only())
        time.sleep(1.0)  # several retries while it is down
        lines = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(lines) == 2, [r.getMessage() for r in caplog.records]  # one line per node, not per retry
        redis.start()
        try:
            wait_for(lambda: all(n.hub.broker.up and len(n.hub.broker._live) == 1 for n in nodes), timeout=5)

            async def cross() -> None:
                a = await connect(a_node, "user=a3")
                b = await connect(b_node, "user=b")
                await a.join("r2")
                await b.join("r2")
                await b.send({"type": "room_message", "room": "r2", "payload": "x"})
                got = await a.expect("system")  # user_joined of b
                assert got["payload"]["action"] == "user_joined"
                assert (await a.expect("room_message"))["payload"] == "x"

            run(cross())
        finally:
            redis.stop()


def test_redis_restarted_under_load(redis_server: Any, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="fasthub.broker")
    with cluster(redis_server.url, config=EPHEMERAL, retry_max=0.5) as (a_node, b_node):

        async def scenario() -> None:
            sender = await connect(a_node, "user=s")
            near = await connect(a_node, "user=near")
            far = await connect(b_node, "user=far")
            for x in (sender, near, far):
                await x.join("load")
            await asyncio.sleep(0.1)
            for x in (sender, near, far):  # drain the member events
                with contextlib.suppress(asyncio.TimeoutError):
                    while True:
                        await x.recv(0.2)

            async def send(n: int) -> None:
                for i in range(n):
                    await sender.send({"type": "room_message", "room": "load", "payload": i})
                    await asyncio.sleep(0.005)

            await send(20)
            for x in (near, far):
                assert [(await x.expect("room_message"))["payload"] for _ in range(20)] == list(range(20))
            redis_server.stop()
            await send(100)  # during the outage: local delivery goes on
            got = [(await near.expect("room_message"))["payload"] for _ in range(100)]
            assert got == list(range(100))
            assert get_stats(a_node)["broker"]["broker_errors"] > 0
            redis_server.start()
            back = time.monotonic()
            # cross-node delivery resumes within 5 s of Redis being back
            while True:
                await sender.send({"type": "room_message", "room": "load", "payload": "probe"})
                try:
                    while (await far.recv(0.1)).get("payload") != "probe":
                        pass
                    break
                except TimeoutError:
                    assert time.monotonic() - back < 5.0, "cross-node delivery did not resume within 5 s"
            assert time.monotonic() - back < 5.0
            stats = get_stats(a_node)
            assert stats["broker"]["state"] == "up" and stats["broker"]["outages"] == 1
            assert stats["cluster"]["room_members"] == {"load": 3}

        run(scenario())
    down = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(down) <= 2, [r.getMessage() for r in down]  # once per node per outage, not per message


def test_slow_redis_never_blocks_the_event_loop(redis_server: Any) -> None:
    with cluster(redis_server.url, config=EPHEMERAL, ttl=5.0) as (a_node, _b):

        async def scenario() -> None:
            a = await connect(a_node, "user=a")
            b = await connect(a_node, "user=b")
            await a.join("r")
            await b.join("r")
            await a.expect("system")
            sleeper = asyncio.get_running_loop().run_in_executor(None, redis_server.command, "DEBUG", "SLEEP", "2")
            await asyncio.sleep(0.2)
            started = time.monotonic()
            for i in range(20):  # each publish queues for Redis; local delivery is immediate
                await a.send({"type": "room_message", "room": "r", "payload": i})
                assert (await b.expect("room_message", timeout=0.5))["payload"] == i
                await a.expect("room_message", timeout=0.5)
            await a.send({"type": "ping", "id": "p"})
            await a.expect("pong", timeout=0.5)
            assert time.monotonic() - started < 1.5  # all of it while Redis slept
            await sleeper

        run(scenario())


@pytest.mark.parametrize(
    "garbage",
    [
        b"not ours",
        b"F1T",
        codec.encode(codec.TEXT, b"x" * 16, b"{}")[:-3] + b"\xff\xff\xff",
        b"F1C" + b"y" * 16 + b"\x00\x00oops",
    ],
    ids=["foreign", "short", "truncated-exclude", "bad-count"],
)
def test_bad_data_on_a_channel_is_dropped_and_counted(redis_server: Any, garbage: bytes) -> None:
    with cluster(redis_server.url, n=1) as (node,):

        async def scenario() -> None:
            a = await connect(node, "user=a")
            await a.join("r")
            channel = node.hub.broker.room_channel("r")
            import redis as redis_py

            client = redis_py.Redis.from_url(redis_server.url)
            client.publish(channel, garbage)
            client.close()
            await a.silent(0.3)
            stats = get_stats(node)["broker"]
            assert stats["bad_messages"] == 1 and stats["state"] == "up"
            await a.send({"type": "room_message", "room": "r", "payload": "still here"})
            assert (await a.expect("room_message"))["payload"] == "still here"

        run(scenario())


async def one_member_on_each(a_node: Any, b_node: Any) -> tuple[Any, Any]:
    """``near`` on node A and ``far`` on node B, both in room ``r``, counted 2 on node A."""
    near = await connect(a_node, "user=near")
    far = await connect(b_node, "user=far")
    await near.join("r")
    await far.join("r")
    wait_for(lambda: a_node.hub.broker.room_size("r") == 2)
    return near, far


def test_counts_are_read_again_after_a_reconnect_that_missed_an_announcement(redis_server: Any) -> None:
    """Node A's connection drops (Redis stays up) while node B's last member leaves: the count
    announcement of B never reaches A, and B's hash no longer has the room."""
    with cluster(redis_server.url, retry_max=0.3) as (a_node, b_node):

        async def scenario() -> None:
            _near, far = await one_member_on_each(a_node, b_node)
            broker = a_node.hub.broker
            outages = broker.outages
            a_node.call(lambda: asyncio.ensure_future(broker._link.close()))  # A's link only
            await far.send({"type": "leave_room", "room": "r", "id": "gone"})
            await far.expect("system", id="gone")
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: wait_for(lambda: broker.up and broker.outages == outages + 1, timeout=8)
            )
            await asyncio.sleep(0.3)  # its counts read again after the resubscribe
            assert a_node.call(lambda: broker.room_size("r")) == 1

        run(scenario())


def test_counts_are_right_again_after_a_reconnect_that_missed_a_leave(redis_server: Any) -> None:
    with cluster(redis_server.url, retry_max=0.3) as (a_node, b_node):

        async def scenario() -> None:
            near, far = await one_member_on_each(a_node, b_node)
            redis_server.stop()
            await far.send({"type": "leave_room", "room": "r", "id": "gone"})
            await far.expect("system", id="gone")  # its announcement cannot reach node A
            redis_server.start()
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: wait_for(lambda: a_node.hub.broker.room_size("r") == 1, timeout=8)
            )
            await near.send({"type": "join_room", "room": "r", "id": "again"})
            while (msg := await near.recv()).get("id") != "again":
                pass  # far's user_joined may come first
            assert msg["payload"]["members"] == 1

        run(scenario())


def test_a_node_whose_keys_expired_writes_them_again(redis_server: Any) -> None:
    with cluster(redis_server.url, ttl=1.5) as (a_node, b_node):

        async def scenario() -> None:
            near = await connect(a_node, "user=near")
            await connect(b_node, "user=bob")
            await near.send({"type": "user_message", "to": "bob", "id": 1})
            await near.expect("ack", id=1)  # delivered, no unknown_user
            me = b_node.hub.broker.node_id
            for key in (f"t:n:{{{me}}}", f"t:n:{{{me}}}:rooms", f"t:n:{{{me}}}:users"):
                redis_server.command("DEL", key)  # as if a pause longer than the TTL expired them
            await asyncio.sleep(1.2)  # node B's next heartbeat finds its key gone and rewrites
            assert redis_server.command("HEXISTS", f"t:n:{{{me}}}:users", "bob").strip() == "1"
            await near.send({"type": "user_message", "to": "bob", "id": 2})
            await near.expect("ack", id=2)

        run(scenario())


def test_a_user_is_online_for_every_node_once_connected(redis_server: Any) -> None:
    """``connected`` waits until the user's node has listed the user in its users hash (what the
    other nodes' online check reads): a direct message sent right after it is delivered, never
    answered ``unknown_user``, even when that node's writes to Redis are slow."""
    with cluster(redis_server.url) as (a_node, b_node):
        broker = b_node.hub.broker
        wait_for(lambda: broker.up)
        link = broker._link
        plain = link.execute

        async def slow(commands: Any) -> Any:
            if any(c[0] == "HSET" and str(c[1]).endswith(":users") for c in commands):
                await asyncio.sleep(0.5)  # node B's users hash lags behind its subscriptions
            return await plain(commands)

        link.execute = slow

        async def scenario() -> None:
            near = await connect(a_node, "user=near")
            for i in range(3):
                t0 = time.monotonic()
                bob = await connect(b_node, f"user=bob{i}")
                assert time.monotonic() - t0 >= 0.4  # connected after the entry was written
                await near.send({"type": "user_message", "to": f"bob{i}", "payload": "hi", "id": i})
                await near.expect("ack", id=i)
                assert (await bob.expect("user_message"))["payload"] == "hi"

        run(scenario())


def test_an_open_that_does_not_happen_leaves_no_user_online(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``user_ready`` lists the user before the open; if no connection of the user registers
    after all, the entry goes again 2 x READY_TIMEOUT after the latest open of that user began
    (a second open pushes it back), and the user is not online."""
    from fasthub.broker import redis as redis_module

    monkeypatch.setattr(redis_module, "READY_TIMEOUT", 1.0)
    with cluster(redis_server.url) as (a_node, b_node):
        broker = b_node.hub.broker
        wait_for(lambda: broker.up)
        me = broker.node_id

        def listed() -> bool:
            return redis_server.command("HEXISTS", f"t:n:{{{me}}}:users", "ghost").strip() == "1"

        async def ready() -> None:
            waiter = broker.user_ready("ghost")
            assert waiter is not None
            await waiter

        loop = b_node.hub.loop
        assert loop is not None
        t0 = time.monotonic()
        asyncio.run_coroutine_threadsafe(ready(), loop).result(5)
        assert listed()
        time.sleep(max(0.0, 1.2 - (time.monotonic() - t0)))
        asyncio.run_coroutine_threadsafe(ready(), loop).result(5)  # a second open of the same user
        time.sleep(max(0.0, 2.4 - (time.monotonic() - t0)))
        assert listed()  # the first open's 2 s are over, the second's are not
        wait_for(lambda: not listed(), 5)
        assert time.monotonic() - t0 >= 3.2

        async def scenario() -> None:
            near = await connect(a_node, "user=near")
            await near.send({"type": "user_message", "to": "ghost", "id": 1})
            assert (await near.expect("error", id=1))["payload"]["code"] == "unknown_user"

        run(scenario())


class _StuckLink:
    """A link whose pipelines never return (a Redis that stopped answering)."""

    def __init__(self) -> None:
        self.calls = 0

    async def execute(self, commands: Any) -> list[Any]:
        self.calls += 1
        await asyncio.sleep(3600)
        return []


def test_the_writer_answers_its_waiters_when_cancelled_mid_pipeline() -> None:
    """A disconnect cancels the writer while a pipeline is out: every command of it that waits
    for an answer gets ``ConnectionError`` (not a future that never completes); a writer left
    behind by a disconnect that could not stop it ends at its next wake (the new one writes)."""

    async def scenario() -> None:
        broker = RedisBroker("redis://127.0.0.1:1", prefix="w")
        broker._link = _StuckLink()  # type: ignore[assignment]
        broker._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        entry = (False, "PING")
        broker._out.append(entry)
        broker._futures[id(entry)] = (answer, None)
        writer = asyncio.create_task(broker._writer())
        broker._wake_writer()
        await asyncio.sleep(0.05)
        assert broker._writing and not answer.done()
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        assert isinstance(answer.exception(), ConnectionError) and not broker._futures

        old = asyncio.create_task(broker._writer())  # its link, then a new one
        await asyncio.sleep(0)
        broker._link = _StuckLink()  # type: ignore[assignment]
        broker._out.append((False, "PING"))
        broker._wake_writer()
        await asyncio.wait_for(old, 1.0)  # it returned without writing
        assert broker._link.calls == 0 and broker._out  # type: ignore[attr-defined]

    run(scenario())


def test_a_user_on_a_node_started_after_the_last_heartbeat_is_online(redis_server: Any) -> None:
    late = RedisBroker(redis_server.url, prefix="t")
    with (
        cluster(redis_server.url, n=1, ttl=30.0) as (a_node,),  # heartbeats 10 s apart
        serve({"authenticate": query_user}, ws="fasthub", broker=late) as b_node,
    ):
        wait_for(lambda: b_node.hub.broker.up)

        async def scenario() -> None:
            alice = await connect(a_node, "user=alice")
            bob = await connect(b_node, "user=bob")
            assert a_node.hub.broker._live == []  # node A has not seen node B yet
            await alice.send({"type": "user_message", "to": "bob", "payload": "hi", "id": 1})
            assert (await bob.expect("user_message", id=1))["payload"] == "hi"

        run(scenario())


# -- stored messages (history on, the default) ---------------------------------------------------


async def drain(*clients: Any) -> None:
    for x in clients:
        with contextlib.suppress(asyncio.TimeoutError):
            while True:
                await x.recv(0.15)


def test_stored_messages_need_redis_and_what_was_acked_is_never_lost(redis_server: Any) -> None:
    """While Redis is down a stored publish is refused (``unavailable``, with its id) and
    delivered nowhere; what was acknowledged before and after reaches every member once."""
    with cluster(redis_server.url, retry_max=0.3) as (a_node, b_node):

        async def scenario() -> None:
            sender = await connect(a_node, "user=s")
            far = await connect(b_node, "user=far")
            await sender.join("r")
            await far.join("r")
            await drain(sender, far)
            await sender.send({"type": "room_message", "room": "r", "payload": "before", "id": 1})
            assert (await far.expect("room_message"))["offset"] == 1
            redis_server.stop()
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: wait_for(lambda: not a_node.hub.broker.up, timeout=5)
            )
            await sender.send({"type": "room_message", "room": "r", "payload": "during", "id": 2})
            got = []
            while (msg := await sender.recv()).get("id") != 2 or msg["type"] == "room_message":
                got.append(msg)
            assert msg["type"] == "error" and msg["payload"]["code"] == "unavailable", msg
            assert [m for m in got if m["type"] == "room_message" and m["payload"] == "during"] == []
            redis_server.start()
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: wait_for(lambda: a_node.hub.broker.up and b_node.hub.broker.up, timeout=8)
            )
            # the retry is stored and delivered; the history survived (AOF), so offsets go on
            for _ in range(50):
                await sender.send({"type": "room_message", "room": "r", "payload": "retry", "id": 3})
                while (msg := await sender.recv()).get("id") != 3 or msg["type"] == "room_message":
                    pass
                if msg["type"] == "ack":
                    break
                await asyncio.sleep(0.1)  # the other node may still be resubscribing
            assert msg["type"] == "ack", msg
            offsets = []
            while True:
                m = await far.recv()
                if m["type"] == "room_message":
                    offsets.append((m["payload"], m["offset"]))
                    if m["payload"] == "retry":
                        break
            assert offsets[-1] == ("retry", msg["payload"]["offset"])
            assert [p for p, _ in offsets].count("during") == 0

        run(scenario(), timeout=60)


def test_a_live_message_lost_between_nodes_is_recovered_from_the_history(redis_server: Any) -> None:
    """A message stored but never heard live (its PUBLISH lost): the next one shows the offset
    jump, the node reads the history and its members get both, in order."""
    with cluster(redis_server.url) as (a_node, b_node):

        async def scenario() -> None:
            a = await connect(a_node, "user=a")
            b = await connect(b_node, "user=b")
            epoch = (await a.join("gap"))["payload"]["epoch"]
            await b.join("gap")
            await drain(a, b)
            await a.send({"type": "room_message", "room": "gap", "payload": 1})
            for x in (a, b):
                assert (await x.expect("room_message"))["offset"] == 1
            # store offset 2 with the broker's own script, published on a channel nobody hears
            broker = a_node.hub.broker
            stream, meta, _ = broker._stream_keys("r", "gap")
            header = codec.encode(codec.STORED, b"x" * 16, b"")
            import redis as redis_py

            client = redis_py.Redis.from_url(redis_server.url)
            client.evalsha(broker._shas["publish"], 2, stream, meta, b'{"type":"room_message","payload":2}',
                           100, 300000, "nobody-listens", "PUBLISH", 86400, "unused", header)
            client.close()
            await a.send({"type": "room_message", "room": "gap", "payload": 3})
            for x in (a, b):
                got = [await x.expect("room_message") for _ in range(2)]
                assert [(m["offset"], m["payload"]) for m in got] == [(2, 2), (3, 3)]
                await x.silent(0.2)
            assert epoch

        run(scenario())


def test_a_flushed_redis_starts_a_new_epoch_and_members_are_told(redis_server: Any) -> None:
    with cluster(redis_server.url) as (a_node, b_node):

        async def scenario() -> None:
            a = await connect(a_node, "user=a")
            b = await connect(b_node, "user=b")
            old = (await a.join("e"))["payload"]["epoch"]
            await b.join("e")
            await drain(a, b)
            await a.send({"type": "room_message", "room": "e", "payload": 1})
            assert (await b.expect("room_message"))["offset"] == 1
            redis_server.command("FLUSHALL")
            await a.send({"type": "room_message", "room": "e", "payload": 2})
            for x in (a, b):
                while (event := await x.recv())["type"] != "system" or event["payload"]["event"] != "resync":
                    pass
                p = event["payload"]
                assert p["recovered"] is False and p["reason"] == "epoch" and p["epoch"] != old
                assert p["offset"] == 0 and event["room"] == "e"
                m = await x.expect("room_message")
                assert (m["offset"], m["payload"]) == (1, 2)

        run(scenario())


def test_messages_published_while_a_node_was_disconnected_reach_its_members_after(redis_server: Any) -> None:
    """Node A's link drops (Redis stays up) while node B's member keeps publishing: once A is
    back it checks its rooms against their streams and its member gets every message, in order."""
    with cluster(redis_server.url, retry_max=0.3) as (a_node, b_node):

        async def scenario() -> None:
            near = await connect(a_node, "user=near")
            far = await connect(b_node, "user=far")
            await near.join("r")
            await far.join("r")
            await drain(near, far)
            broker = a_node.hub.broker
            outages = broker.outages
            a_node.call(lambda: asyncio.ensure_future(broker._link.close()))  # A's link only
            for i in range(20):
                await far.send({"type": "room_message", "room": "r", "payload": i, "id": i})
                await asyncio.sleep(0.01)
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: wait_for(lambda: broker.up and broker.outages == outages + 1, timeout=8)
            )
            got = []
            while len(got) < 20:
                m = await near.recv(5.0)
                if m["type"] == "room_message":
                    got.append((m["offset"], m["payload"]))
            assert got == [(i + 1, i) for i in range(20)]
            await near.silent(0.2)

        run(scenario())
