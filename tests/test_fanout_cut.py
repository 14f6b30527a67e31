"""A long pass over a room's members stops where input waits (``Fanout.input_ready``), against a
real server and real sockets.

The server is made to flush a big room while a member's message waits, unread, in its socket:
the flush stops after ``look_every`` members, the loop reads the message, and the rest get both
in order. Unit tests of the cut itself (where it stops, what is joined, what goes first) are in
``test_outbox.py``; ``Reactor.input_waiting`` is in ``test_reactor.py``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from conftest import RawClient, serve

from fasthub import HubConfig
from fasthub._wire.testing import encode_frame

MEMBERS = 150


def numbers(client: RawClient, want: int, timeout: float = 5.0) -> list[int]:
    """The ``n`` of the next ``want`` messages this client reads: the application's object as it
    was sent, or a member's ``room_message`` (its payload); join notices are skipped."""
    got: list[int] = []
    while len(got) < want:
        msg: dict[str, Any] = client.json(timeout)
        if "n" in msg:
            got.append(msg["n"])
        elif msg.get("type") == "room_message":
            got.append(msg["payload"]["n"])
    return got


def test_a_flush_cut_for_a_waiting_message_loses_and_reorders_nothing() -> None:
    reactor = os.environ.get("FASTHUB_TEST_IO", "fasthub") == "fasthub"
    with serve(config=HubConfig(rate_limit=0), ws="fasthub") as server:
        hub = server.hub
        fanout = hub.fanout
        members = [RawClient(server, "") for _ in range(MEMBERS)]
        try:
            for m in members:
                assert m.json()["payload"]["event"] == "connected"
                m.send_json({"type": "join_room", "room": "big"})
            deadline = time.monotonic() + 5
            while server.call(lambda: hub.local_room_size("big")) < MEMBERS:  # the joins are read
                assert time.monotonic() < deadline
                time.sleep(0.01)

            def flush_while_a_message_waits() -> tuple[int, int, int]:
                # on the server's loop: the member's frame reaches its socket (loopback delivers
                # at once) and is not read until the loop polls, after the flush below started
                waiting = {"type": "room_message", "room": "big", "payload": {"n": 2}}
                members[-1].sock.sendall(encode_frame(0x1, json.dumps(waiting).encode(), mask=os.urandom(4)))
                fanout.look_every = 4
                sent = hub.broadcast_to_room_json("big", {"n": 1})  # queued for one flush of 150
                fanout.flush()  # which the loop would run after its poll: here it runs first
                return sent, fanout.cut, len(fanout.dirty)

            cut_before = server.call(lambda: fanout.cut)
            sent, cut_now, left = server.call(flush_while_a_message_waits)
            assert sent == MEMBERS
            if reactor:  # stopped after 4 members: 146 wait for the loop's read of the message
                assert (cut_now, left) == (cut_before + 1, MEMBERS - 4)
            else:  # uvloop's transports: nothing to look at, the flush wrote all 150
                assert (cut_now, left) == (cut_before, 0)
            for i, m in enumerate(members):
                assert numbers(m, 2) == [1, 2], i
            # the rest of the flush, with the message read meanwhile, did not stop again
            cut, watched = server.call(lambda: (fanout.cut, fanout.input_ready is not None))
            assert cut == cut_now and watched == reactor
        finally:
            for m in members:
                m.close()
