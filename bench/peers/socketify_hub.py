"""The minimal room hub on socketify (uWebSockets for Python, through cffi).

    python bench/peers/socketify_hub.py --port 8000 [--host 127.0.0.1]

Serves ws://HOST:PORT/ws and GET /ws/stats. Rooms are uWebSockets' native pub/sub topics:
``ws.subscribe(room)`` joins, and ``app.publish(room, msg)`` hands the message, serialized
once, to uWS, which writes it to every subscriber in C (``app.publish`` includes the sender;
``ws.publish`` in uWS would skip it). uWS unsubscribes a closed socket from all its topics by
itself; the Python side only keeps a room -> member count for the stats and the join reply.

uWS drops a message for a subscriber whose send buffer is over ``max_backpressure`` (64 KiB by
default); the hub must not lose messages, so ``max_backpressure=0`` (no limit) is set, as it
is for the other peers, whose buffers are unbounded too.
The protocol is described in bench/peers/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import sys

try:
    import orjson
    from socketify import App, AppListenOptions, CompressOptions, OpCode
except (ImportError, OSError) as exc:  # OSError: the bundled libsocketify .so failed to load
    sys.exit(f"socketify_hub: cannot import socketify ({exc!r}); `pip install socketify` (needs libuv1)")

CONNECTED = orjson.dumps({"type": "system", "payload": {"event": "connected"}})
PONG = orjson.dumps({"type": "pong"})
BAD = orjson.dumps({"type": "error", "payload": {"code": "invalid_message"}})
NOT_MEMBER = orjson.dumps({"type": "error", "payload": {"code": "not_member"}})

app = App()
members: dict[str, int] = {}  # room -> member count
connections = 0
ids = itertools.count(1)


class Conn:
    """Per-socket user data, attached at upgrade time."""

    __slots__ = ("cid", "joined")

    def __init__(self) -> None:
        self.cid = f"c{next(ids)}"
        self.joined: set[str] = set()


def leave(conn: Conn, room: str) -> None:
    conn.joined.discard(room)
    members[room] -= 1
    if not members[room]:
        del members[room]


def ws_upgrade(res, req, socket_context) -> None:
    res.upgrade(
        req.get_header("sec-websocket-key"),
        req.get_header("sec-websocket-protocol"),
        req.get_header("sec-websocket-extensions"),
        socket_context,
        Conn(),
    )


def ws_open(ws) -> None:
    global connections
    connections += 1
    ws.send(CONNECTED, OpCode.TEXT)


def ws_message(ws, message, opcode) -> None:
    try:
        msg = orjson.loads(message)
        kind = msg["type"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        ws.send(BAD, OpCode.TEXT)
        return
    room = msg.get("room")
    conn: Conn = ws.get_user_data()
    if kind == "room_message":
        if room not in conn.joined:
            ws.send(NOT_MEMBER, OpCode.TEXT)
            return
        out = {"type": "room_message", "room": room, "from": conn.cid, "payload": msg.get("payload")}
        app.publish(room, orjson.dumps(out), OpCode.TEXT)
    elif kind == "join_room" and isinstance(room, str):
        if room not in conn.joined:
            conn.joined.add(room)
            members[room] = members.get(room, 0) + 1
            ws.subscribe(room)
        reply = {"type": "system", "room": room, "payload": {"event": "joined", "members": members[room]}}
        ws.send(orjson.dumps(reply), OpCode.TEXT)
    elif kind == "leave_room" and isinstance(room, str):
        if room in conn.joined:
            leave(conn, room)
            ws.unsubscribe(room)
    elif kind == "ping":
        ws.send(PONG, OpCode.TEXT)
    else:
        ws.send(BAD, OpCode.TEXT)


def ws_close(ws, code, message) -> None:
    global connections
    connections -= 1
    conn: Conn | None = ws.get_user_data()
    if conn is not None:
        for room in list(conn.joined):
            leave(conn, room)  # uWS has already dropped the socket's subscriptions


def stats(res, req) -> None:
    body = orjson.dumps({"connections": connections, "rooms": len(members)})
    res.send(body, content_type=b"application/json")


app.ws(
    "/ws",
    {
        "compression": CompressOptions.DISABLED,
        "max_payload_length": 1 << 20,
        "idle_timeout": 0,  # 0 disables uWS' idle timeout (clients may be silent receivers)
        "max_backpressure": 0,  # 0 = unlimited: never drop a published message
        "upgrade": ws_upgrade,
        "open": ws_open,
        "message": ws_message,
        "close": ws_close,
    },
)
app.get("/ws/stats", stats)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()

    def listening(config) -> None:
        print(f"socketify hub on ws://{args.host}:{args.port}/ws", flush=True)

    app.listen(AppListenOptions(port=args.port, host=args.host), listening)
    app.run()
