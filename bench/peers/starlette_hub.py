"""The minimal room hub on Starlette, served by uvicorn (uvloop, httptools, websockets-sansio).

    python bench/peers/starlette_hub.py --port 8000 [--host 127.0.0.1]

Serves ws://HOST:PORT/ws and GET /ws/stats. Written the way the FastAPI/Starlette docs teach it:
one endpoint coroutine per connection and a ``ConnectionManager`` that keeps the rooms and
broadcasts by awaiting ``send_text`` on each member in turn (the message is serialized once).
The protocol is described in bench/peers/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

CONNECTED = orjson.dumps({"type": "system", "payload": {"event": "connected"}}).decode()
PONG = orjson.dumps({"type": "pong"}).decode()
BAD = orjson.dumps({"type": "error", "payload": {"code": "invalid_message"}}).decode()
NOT_MEMBER = orjson.dumps({"type": "error", "payload": {"code": "not_member"}}).decode()


class ConnectionManager:
    def __init__(self) -> None:
        self.rooms: dict[str, set[WebSocket]] = {}
        self.connections = 0

    def join(self, ws: WebSocket, room: str) -> int:
        members = self.rooms.setdefault(room, set())
        members.add(ws)
        return len(members)

    def leave(self, ws: WebSocket, room: str) -> None:
        members = self.rooms.get(room)
        if members is not None:
            members.discard(ws)
            if not members:
                del self.rooms[room]

    async def broadcast(self, room: str, message: str) -> None:
        for ws in list(self.rooms.get(room, ())):
            # a member that is going away raises; its own endpoint cleans up
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await ws.send_text(message)


manager = ConnectionManager()
ids = itertools.count(1)


async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    cid = f"c{next(ids)}"
    joined: set[str] = set()
    manager.connections += 1
    try:
        await websocket.send_text(CONNECTED)
        while True:
            raw = await websocket.receive_text()
            try:
                msg = orjson.loads(raw)
                kind = msg["type"]
            except (orjson.JSONDecodeError, TypeError, KeyError):
                await websocket.send_text(BAD)
                continue
            room = msg.get("room")
            if kind == "room_message":
                if room not in joined:
                    await websocket.send_text(NOT_MEMBER)
                    continue
                out = {"type": "room_message", "room": room, "from": cid, "payload": msg.get("payload")}
                await manager.broadcast(room, orjson.dumps(out).decode())
            elif kind == "join_room" and isinstance(room, str):
                joined.add(room)
                count = manager.join(websocket, room)
                reply = {"type": "system", "room": room, "payload": {"event": "joined", "members": count}}
                await websocket.send_text(orjson.dumps(reply).decode())
            elif kind == "leave_room" and isinstance(room, str):
                joined.discard(room)
                manager.leave(websocket, room)
            elif kind == "ping":
                await websocket.send_text(PONG)
            else:
                await websocket.send_text(BAD)
    except WebSocketDisconnect:
        pass
    finally:
        for room in joined:
            manager.leave(websocket, room)
        manager.connections -= 1


async def stats(request: Request) -> JSONResponse:
    return JSONResponse({"connections": manager.connections, "rooms": len(manager.rooms)})


app = Starlette(routes=[WebSocketRoute("/ws", ws_endpoint), Route("/ws/stats", stats)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=1 << 20,
        backlog=4096,
        log_level="warning",
        lifespan="off",
    )
