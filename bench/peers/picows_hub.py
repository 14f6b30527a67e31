"""The minimal room hub on picows (Cython WebSocket library, ``WSListener`` callbacks, uvloop).

    python bench/peers/picows_hub.py --port 8000 [--host 127.0.0.1]

Serves ws://HOST:PORT/ws and GET /ws/stats (picows answers plain HTTP from its listener factory
when the factory returns a non-101 response). Frames are handled synchronously in
``on_ws_frame``; a room message is serialized once into a bytearray with 14 bytes of head room,
and ``send_reuse_external_bytearray`` writes the frame header into that room and sends it to each
member without copying the payload (server frames are unmasked, so the buffer is unchanged).
The protocol is described in bench/peers/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools

import orjson
import uvloop
from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

HEADROOM = 14  # the largest WebSocket frame header; picows writes it in front of the payload
CONNECTED = orjson.dumps({"type": "system", "payload": {"event": "connected"}})
PONG = orjson.dumps({"type": "pong"})
BAD = orjson.dumps({"type": "error", "payload": {"code": "invalid_message"}})
NOT_MEMBER = orjson.dumps({"type": "error", "payload": {"code": "not_member"}})

rooms: dict[str, dict[int, WSTransport]] = {}  # room -> {connection number: transport}
connections = 0
ids = itertools.count(1)


class HubListener(WSListener):
    def __init__(self) -> None:
        self.num = next(ids)
        self.cid = f"c{self.num}"
        self.joined: set[str] = set()
        self.transport: WSTransport | None = None
        self.parts: list[bytes] | None = None  # a fragmented message being reassembled

    def on_ws_connected(self, transport: WSTransport) -> None:
        global connections
        connections += 1
        self.transport = transport
        transport.send(WSMsgType.TEXT, CONNECTED)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        global connections
        connections -= 1
        for room in list(self.joined):
            self.leave(room)

    # Like websockets.broadcast(), the hub keeps buffering for a slow member (nothing is dropped);
    # without these overrides picows logs a warning each time a buffer crosses its watermark.
    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def leave(self, room: str) -> None:
        self.joined.discard(room)
        members = rooms.get(room)
        if members is not None:
            members.pop(self.num, None)
            if not members:
                del rooms[room]

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        op = frame.msg_type
        if op == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
            return
        if op == WSMsgType.CONTINUATION:
            if self.parts is None:
                return
            self.parts.append(frame.get_payload_as_bytes())
            if not frame.fin:
                return
            data, self.parts = b"".join(self.parts), None
        elif op in (WSMsgType.TEXT, WSMsgType.BINARY):
            if not frame.fin:
                self.parts = [frame.get_payload_as_bytes()]
                return
            data = frame.get_payload_as_memoryview()  # valid until this callback returns
        else:
            return  # PING is answered by picows (enable_auto_pong); PONG needs nothing
        self.on_message(transport, data)

    def on_message(self, transport: WSTransport, data: bytes | memoryview) -> None:
        try:
            msg = orjson.loads(data)
            kind = msg["type"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            transport.send(WSMsgType.TEXT, BAD)
            return
        room = msg.get("room")
        if kind == "room_message":
            if room not in self.joined:
                transport.send(WSMsgType.TEXT, NOT_MEMBER)
                return
            out = {"type": "room_message", "room": room, "from": self.cid, "payload": msg.get("payload")}
            buf = bytearray(HEADROOM) + orjson.dumps(out)
            for member in rooms[room].values():
                member.send_reuse_external_bytearray(WSMsgType.TEXT, buf, HEADROOM)
        elif kind == "join_room" and isinstance(room, str):
            members = rooms.setdefault(room, {})
            members[self.num] = transport
            self.joined.add(room)
            reply = {"type": "system", "room": room, "payload": {"event": "joined", "members": len(members)}}
            transport.send(WSMsgType.TEXT, orjson.dumps(reply))
        elif kind == "leave_room" and isinstance(room, str):
            self.leave(room)
        elif kind == "ping":
            transport.send(WSMsgType.TEXT, PONG)
        else:
            transport.send(WSMsgType.TEXT, BAD)


def route(request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener | None:
    """picows' listener factory doubles as the router: /ws upgrades, /ws/stats is plain HTTP."""
    path = request.path.partition(b"?")[0]
    if path == b"/ws":
        return HubListener()
    if path == b"/ws/stats":
        body = orjson.dumps({"connections": connections, "rooms": len(rooms)})
        response = WSUpgradeResponse.create_ok_response(body, {"Content-Type": "application/json"})
        return WSUpgradeResponseWithListener(response, None)
    return None  # picows answers 404


async def main(host: str, port: int) -> None:
    server = await ws_create_server(route, host, port, max_frame_size=1 << 20, backlog=4096)
    print(f"picows hub on ws://{host}:{port}/ws", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main(args.host, args.port))
