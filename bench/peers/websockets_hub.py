"""The minimal room hub on the `websockets` library (asyncio server on uvloop).

    python bench/peers/websockets_hub.py --port 8000 [--host 127.0.0.1]

Serves ws://HOST:PORT/ws and GET /ws/stats. A room message is serialized once and written to
every member with ``websockets.asyncio.server.broadcast()``, the library's fan-out fast path
(no per-member coroutine; it writes to each transport without waiting for drains). The protocol
is described in bench/peers/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
from http import HTTPStatus

import orjson
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

CONNECTED = orjson.dumps({"type": "system", "payload": {"event": "connected"}})
PONG = orjson.dumps({"type": "pong"})
BAD = orjson.dumps({"type": "error", "payload": {"code": "invalid_message"}})
NOT_MEMBER = orjson.dumps({"type": "error", "payload": {"code": "not_member"}})

rooms: dict[str, set[ServerConnection]] = {}
connections: set[ServerConnection] = set()
ids = itertools.count(1)


def leave(ws: ServerConnection, room: str, joined: set[str]) -> None:
    joined.discard(room)
    members = rooms.get(room)
    if members is not None:
        members.discard(ws)
        if not members:
            del rooms[room]


async def handler(ws: ServerConnection) -> None:
    cid = f"c{next(ids)}"
    joined: set[str] = set()
    connections.add(ws)
    try:
        await ws.send(CONNECTED, text=True)
        async for raw in ws:
            try:
                msg = orjson.loads(raw)
                kind = msg["type"]
            except (orjson.JSONDecodeError, TypeError, KeyError):
                await ws.send(BAD, text=True)
                continue
            room = msg.get("room")
            if kind == "room_message":
                if room not in joined:
                    await ws.send(NOT_MEMBER, text=True)
                    continue
                out = {"type": "room_message", "room": room, "from": cid, "payload": msg.get("payload")}
                broadcast(rooms[room], orjson.dumps(out), text=True)
            elif kind == "join_room" and isinstance(room, str):
                rooms.setdefault(room, set()).add(ws)
                joined.add(room)
                reply = {"type": "system", "room": room, "payload": {"event": "joined", "members": len(rooms[room])}}
                await ws.send(orjson.dumps(reply), text=True)
            elif kind == "leave_room" and isinstance(room, str):
                leave(ws, room, joined)
            elif kind == "ping":
                await ws.send(PONG, text=True)
            else:
                await ws.send(BAD, text=True)
    except ConnectionClosed:
        pass
    finally:
        for room in list(joined):
            leave(ws, room, joined)
        connections.discard(ws)


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    """Route the HTTP request: /ws upgrades, /ws/stats answers JSON, anything else is a 404."""
    if request.path == "/ws":
        return None
    if request.path == "/ws/stats":
        body = orjson.dumps({"connections": len(connections), "rooms": len(rooms)})
        headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)
    return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")


async def main(host: str, port: int, compression: bool = False) -> None:
    async with serve(
        handler,
        host,
        port,
        process_request=process_request,
        # like the other peers: no permessage-deflate, unless --compression asks for websockets'
        # default (a compression context per connection, negotiated with clients that offer it)
        compression="deflate" if compression else None,
        max_size=1 << 20,
        backlog=4096,
    ) as server:
        print(f"websockets hub on ws://{host}:{port}/ws", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--compression", action="store_true", help="websockets' default permessage-deflate")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main(args.host, args.port, args.compression))
