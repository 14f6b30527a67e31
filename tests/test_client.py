"""``fasthub.client`` against real servers: acks, reconnect with resume, and what it reports."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fasthub import HubConfig
from fasthub.client import Ack, Client, ClientError
from tests.conftest import CLUSTER_KIND, run


@pytest.fixture(params=[pytest.param(("fasthub", False), id="local"), CLUSTER_KIND])
def server_kind(request: pytest.FixtureRequest) -> tuple[str, bool]:
    return request.param  # type: ignore[no-any-return]


async def collect(client: Client, n: int, kind: str = "room_message", timeout: float = 10.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < n:
        msg = await client.receive(timeout)
        if msg["type"] == kind:
            out.append(msg)
    return out


def test_publish_returns_the_ack_and_messages_arrive_in_order(make_server: Any) -> None:
    server = make_server()

    async def scenario() -> None:
        async with Client(server.ws_url(), query={"user": "a"}) as a, Client(server.ws_url(), query={"user": "b"}) as b:
            assert a.user_id == "a" and a.session and a.user_position is not None
            assert a.user_position["offset"] == 0
            joined = await a.join("r")
            assert joined["offset"] == 0
            await b.join("r")
            acks = [await a.publish("r", i) for i in range(3)]
            assert [x.offset for x in acks] == [1, 2, 3] and all(isinstance(x, Ack) for x in acks)
            assert [m["payload"] for m in await collect(b, 3)] == [0, 1, 2]
            assert b.positions["r"]["offset"] == 3
            ack = await b.send_to_user("a", "dm")
            assert ack.offset == 1
            assert (await collect(a, 1, "user_message"))[0]["payload"] == "dm"
            with pytest.raises(ClientError) as info:
                await a.publish("not-joined", 1)
            assert info.value.code == "not_member"

    run(scenario())


def close_on_its_node(server: Any, conn_id: Any) -> None:
    """The server closes the connection (1012, as a restart does), on whichever node holds it."""
    for node in getattr(server, "nodes", None) or [server]:
        conn = node.call(node.hub.get_connection, conn_id)
        if conn is not None:
            node.call(conn.close, 1012, "restart")
            return
    raise AssertionError("no node holds the connection")


@pytest.mark.parametrize("how", ["client-abort", "server-close"])
def test_a_dropped_connection_reconnects_resumes_and_loses_nothing(make_server: Any, how: str) -> None:
    server = make_server()
    total = 200

    async def scenario() -> None:
        async with Client(server.ws_url(), query={"user": "pub"}) as pub, Client(
            server.ws_url(), query={"user": "reader"}, backoff_min=0.05
        ) as reader:
            await pub.join("r")
            await reader.join("r")

            async def publish() -> None:
                for i in range(total):
                    await pub.publish("r", i)
                    await asyncio.sleep(0.002)

            task = asyncio.ensure_future(publish())
            got = [m["payload"] for m in await collect(reader, 50)]
            first = reader.connection_id
            if how == "client-abort":
                reader.drop()
            else:
                close_on_its_node(server, reader.connection_id)
            got += [m["payload"] for m in await collect(reader, total - 50, timeout=15)]
            await task
            assert got == list(range(total))  # every message once, in order
            assert reader.reconnects == 1 and reader.connection_id != first
            assert reader.unrecovered == []

    run(scenario(), timeout=60)


def test_without_the_session_it_rejoins_with_its_positions(make_server: Any) -> None:
    server = make_server(HubConfig(session_ttl=0))  # no sessions kept: each room is joined again

    async def scenario() -> None:
        async with Client(server.ws_url(), query={"user": "pub"}) as pub, Client(
            server.ws_url(), query={"user": "reader"}, backoff_min=0.05
        ) as reader:
            assert reader.session is None
            for room in ("r1", "r2"):
                await pub.join(room)
                await reader.join(room)
            await pub.publish("r1", "before")
            await collect(reader, 1)
            reader.drop()
            for i in range(5):
                await pub.publish("r1" if i % 2 else "r2", i)
            got = await collect(reader, 5)
            assert sorted((m["room"], m["payload"]) for m in got) == [
                ("r1", 1), ("r1", 3), ("r2", 0), ("r2", 2), ("r2", 4)
            ]
            assert reader.unrecovered == []

    run(scenario(), timeout=30)


def test_a_gap_that_cannot_be_filled_is_reported(make_server: Any) -> None:
    server = make_server(HubConfig(history_size=3))

    async def scenario() -> None:
        async with Client(server.ws_url(), query={"user": "pub"}) as pub:
            await pub.join("r")
            reader = await Client(server.ws_url(), query={"user": "reader"}, reconnect=False).connect()
            await reader.join("r")
            positions = dict(reader.positions)
            await reader.close()
            for i in range(10):
                await pub.publish("r", i)
            again = Client(server.ws_url(), query={"user": "reader"})
            again.positions = positions  # a client that kept its positions (e.g. in storage)
            async with again:
                reply = await again.join("r")
                assert reply["recovered"] is False and reply["reason"] == "expired"
                assert again.unrecovered == [("r", "expired")]
                await pub.publish("r", "live")
                assert (await collect(again, 1))[0]["payload"] == "live"

    run(scenario(), timeout=30)
