"""The hub, the message pipeline and the fan-out in memory (``fasthub.testing``), and the broker seam.

No server here: connections are ``MemorySink``s and messages enter through ``Dispatcher.receive``
as on both server paths. The end-to-end tests cover the same behaviour on real sockets.
"""

from __future__ import annotations

from typing import Any

import pytest

from fasthub import HubConfig
from fasthub._core import Payload
from fasthub.broker import LocalBroker
from fasthub.hub import Hub
from fasthub.testing import Harness


def events(messages: list[Any], kind: str = "system") -> list[Any]:
    return [m["payload"].get("event") for m in messages if m["type"] == kind]


def test_room_message_reaches_every_member_encoded_once() -> None:
    with Harness() as h:
        a, b, c = h.connect("a"), h.connect("b"), h.connect("c")
        for client in (a, b):
            client.send({"type": "join_room", "room": "r"})
        a.received(), b.received(), c.received()
        a.send({"type": "room_message", "room": "r", "payload": {"n": 1}, "id": 7})
        got_a, got_b = a.received(), b.received()
        assert got_a[:1] == got_b and len(got_b) == 1
        epoch = got_a[1]["payload"]["epoch"]
        assert got_a[1] == {"type": "ack", "id": 7, "room": "r", "payload": {"offset": 1, "epoch": epoch}}
        msg = got_a[0]
        fields = (msg["type"], msg["from"], msg["payload"], msg["id"], msg["room"])
        assert fields == ("room_message", "a", {"n": 1}, 7, "r")
        assert "timestamp" in msg
        assert c.received() == []
        assert h.hub.stats()["messages_out"] >= 2


def test_join_reply_counts_members_and_others_hear_of_it() -> None:
    with Harness() as h:
        a, b = h.connect("a"), h.connect("b")
        a.send({"type": "join_room", "room": "r"})
        (joined,) = a.received()[-1:]
        assert joined["payload"]["members"] == 1
        b.send({"type": "join_room", "room": "r", "id": "j"})
        reply = b.received()[-1]
        assert reply["payload"]["members"] == 2 and reply["id"] == "j"
        heard = a.received()
        assert events(heard) == ["user_joined"] and heard[0]["payload"]["user_id"] == "b"
        b.disconnect()
        left = a.received()
        assert events(left) == ["user_left"] and left[0]["payload"]["members"] == 1


def test_user_message_to_an_unknown_user_is_an_error_for_the_sender() -> None:
    with Harness() as h:
        a, b = h.connect("a"), h.connect("b")
        a.received(), b.received()
        a.send({"type": "user_message", "to": "nobody", "payload": 1, "id": 3})
        (err,) = a.received()
        assert err["type"] == "error" and err["payload"]["code"] == "unknown_user" and err["id"] == 3
        a.send({"type": "user_message", "to": "b", "payload": 2})
        assert [m["payload"] for m in b.received()] == [2]


def test_the_pipeline_refuses_binary_oversize_and_over_the_rate() -> None:
    config = HubConfig(max_message_size=1024, rate_limit=1, rate_limit_strikes=2)
    with Harness(config) as h:
        a = h.connect("a")
        a.received()
        a.send(b"\x00\x01")
        assert [m["payload"]["code"] for m in a.received()] == ["unsupported_data"]
        a.send({"type": "ping"})  # the burst (2) is spent now
        a.send({"type": "ping"})
        assert [m["payload"]["code"] for m in a.received() if m["type"] == "error"] == ["rate_limited"]
        assert h.hub.stats()["bytes_in"] > 0
        a.send({"type": "ping"})
        a.send({"type": "ping"})
        a.send({"type": "ping"})  # more than rate_limit_strikes refusals in a row
        a.received()
        assert a.sink.close == (1008, "rate limit exceeded")
    with Harness(HubConfig(max_message_size=1024)) as h:
        b = h.connect("b")
        b.send({"type": "ping", "payload": "x" * 2000})
        b.received()
        assert b.sink.close == (1009, "message too big")


def test_slow_consumer_closes_with_a_small_budget() -> None:
    with Harness(HubConfig(send_buffer_size=1024, max_message_size=1024)) as h:
        a = h.connect("a")
        h.hub.fanout.flush()  # nothing is consumed while the test does not settle
        for _ in range(20):
            h.hub.send_to_user_json("a", {"pad": "x" * 100})
        a.received()
        assert a.sink.close == (1008, "slow consumer")
        assert h.hub.stats()["slow_consumer_closes"] == 1


def test_async_handler_runs_before_the_builtin() -> None:
    seen: list[str] = []

    async def on_message(conn: Any, msg: Any) -> None:
        seen.append(msg.type)

    with Harness(on_message=on_message) as h:
        a = h.connect("a")
        a.received()
        a.send({"type": "ping", "id": 1})
        assert seen == ["ping"] and a.received()[0]["type"] == "pong"


class RecordingBroker(LocalBroker):
    """A broker that pretends other nodes exist: records what the hub hands it."""

    remote = True

    def __init__(self, elsewhere: dict[str, int] | None = None) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []
        self.elsewhere = elsewhere or {}  # room -> members on other nodes
        self.online_elsewhere: set[str] = set()

    def publish_room(self, room: str, payload: Payload, exclude: Any) -> None:
        self.calls.append(("room", room, payload.data, exclude))

    def publish_user(self, user_id: str, payload: Payload) -> None:
        self.calls.append(("user", user_id, payload.data))

    def publish_all(self, payload: Payload, exclude: Any) -> None:
        self.calls.append(("all", payload.data, exclude))

    def publish_stream(self, kind: str, name: str, body: bytes, exclude: Any, history: Any, key: Any) -> Any:
        # stored messages: kept (in memory, as LocalBroker does) and delivered here by the broker
        self.calls.append(("stream-" + kind, name, body, exclude))
        return super().publish_stream(kind, name, body, exclude, history, key)

    def room_opened(self, room: str) -> None:
        self.calls.append(("subscribe", room))

    def room_closed(self, room: str) -> None:
        self.calls.append(("unsubscribe", room))

    def user_opened(self, user_id: str) -> None:
        self.calls.append(("subscribe-user", user_id))

    def user_closed(self, user_id: str) -> None:
        self.calls.append(("unsubscribe-user", user_id))

    def room_size(self, room: str) -> int:
        return super().room_size(room) + self.elsewhere.get(room, 0)

    def user_online(self, user_id: str) -> bool:
        return user_id in self.online_elsewhere or super().user_online(user_id)


def test_publishes_go_through_the_broker_once_and_local_delivery_happens_here() -> None:
    broker = RecordingBroker(elsewhere={"r": 5})
    with Harness(hub=Hub(broker=broker)) as h:
        a = h.connect("a")
        a.send({"type": "join_room", "room": "r"})
        joined = a.received()[-1]
        assert joined["payload"]["members"] == 6  # the cluster's count, from the broker
        assert ("subscribe-user", "a") in broker.calls and ("subscribe", "r") in broker.calls
        # the other members (on other nodes) hear of the join through the broker
        assert [c[1] for c in broker.calls if c[0] == "room"] == ["r"]
        broker.calls.clear()
        a.send({"type": "room_message", "room": "r", "payload": "hi"})
        assert [(m["payload"], m["offset"]) for m in a.received()] == [("hi", 1)]  # delivered here once
        (call,) = broker.calls
        assert call[0] == "stream-r" and call[1] == "r" and b'"hi"' in call[2] and b"offset" not in call[2]
        broker.calls.clear()
        # a user on another node: not unknown, published for the other nodes
        broker.online_elsewhere.add("far")
        a.send({"type": "user_message", "to": "far", "payload": 1})
        assert a.received() == [] and [c[:2] for c in broker.calls] == [("stream-u", "far")]
        broker.calls.clear()
        h.hub.broadcast_json({"x": 1}, exclude=a.id)
        assert broker.calls == [("all", b'{"x":1}', (a.id,))]
        broker.calls.clear()
        a.disconnect()
        assert ("unsubscribe", "r") in broker.calls and ("unsubscribe-user", "a") in broker.calls


def test_a_broker_delivers_remote_traffic_through_the_hub() -> None:
    broker = RecordingBroker()
    with Harness(hub=Hub(broker=broker)) as h:
        a = h.connect("a")
        a.send({"type": "join_room", "room": "r"})
        a.received()
        # what another node published arrives: local delivery only, nothing sent back out
        broker.calls.clear()
        assert h.hub.deliver_room("r", Payload(1, b'{"from":"elsewhere"}')) == 1
        assert a.received() == [{"from": "elsewhere"}] and broker.calls == []


@pytest.mark.parametrize("remote", [False, True])
def test_the_in_process_broker_is_never_called_to_publish(remote: bool) -> None:
    hub = Hub(broker=RecordingBroker() if remote else None)
    assert (hub.broker.remote, type(hub.broker).__name__) == (remote, "RecordingBroker" if remote else "LocalBroker")


def test_the_direct_open_takes_a_query_string_too() -> None:
    """``open_direct`` serves ``/ws?x=1`` like ``/ws`` (no ASGI task or scope), and not ``/other``."""
    from fasthub.server.asgi import create_app
    from fasthub.server.handshake import UpgradeRequest

    opened: list[str] = []

    class Protocol:
        loop = None

        def open_hub(self, conn: Any, dispatcher: Any, on_lost: Any, subprotocol: Any) -> None:
            opened.append(conn.id)

        def open_plain(self, conn: Any, dispatcher: Any, on_lost: Any, hello: bytes, accept: Any = None) -> bool:
            return False  # as a protocol that is not in its plain state: open_hub then

        def deny(self, status: int, reason: str) -> None:
            raise AssertionError(reason)

    with Harness() as h:
        app = create_app(h.hub)
        for target, direct in ((b"/ws", True), (b"/ws?v=1&x", True), (b"/other", False), (b"/wsx?v=1", False)):
            request = UpgradeRequest(b"GET", target, [], b"key", [])
            assert app.open_direct(Protocol(), request) is direct, target
        assert len(opened) == 2 and h.hub.connection_count() == 2


class SlowSubscribeBroker(RecordingBroker):
    """A clustered broker whose room subscriptions take until the test says so."""

    def __init__(self) -> None:
        super().__init__(elsewhere={"r": 2})
        self.pending: dict[str, Any] = {}

    def ready(self, room: str) -> Any:
        fut = self.pending.get(room)
        if fut is None or fut.done():
            return None
        return fut


def test_the_join_reply_waits_until_the_node_hears_the_room() -> None:
    broker = SlowSubscribeBroker()
    with Harness(hub=Hub(broker=broker)) as h:
        broker.pending["r"] = h.loop.create_future()
        a = h.connect("a")
        a.received()
        a.send({"type": "join_room", "room": "r", "id": 1})
        h.settle()
        assert a.received() == []  # no "joined" before the subscription is live
        assert ("room", "r") not in [c[:2] for c in broker.calls]  # nor a user_joined
        broker.pending["r"].set_result(None)
        h.settle()
        (joined,) = a.received()
        assert joined["id"] == 1 and joined["payload"]["members"] == 3
        # a member that leaves before its subscription is live: "joined" then "left", in order
        broker.pending["s"] = h.loop.create_future()
        broker.elsewhere["s"] = 0
        a.send({"type": "join_room", "room": "s", "id": 2})
        a.send({"type": "leave_room", "room": "s", "id": 3})
        broker.pending["s"].set_result(None)
        h.settle()
        assert [m["id"] for m in a.received()] == [2, 3]  # the join answered first, then the leave


def test_a_repeated_join_while_the_first_waits_is_answered_after_it() -> None:
    broker = SlowSubscribeBroker()
    with Harness(hub=Hub(broker=broker)) as h:
        broker.pending["r"] = h.loop.create_future()
        a = h.connect("a")
        a.received()
        a.send({"type": "join_room", "room": "r", "id": 1})
        a.send({"type": "join_room", "room": "r", "id": 2})
        h.settle()
        assert a.received() == []
        broker.pending["r"].set_result(None)
        h.settle()
        assert [m["id"] for m in a.received()] == [1, 2]
