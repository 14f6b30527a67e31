"""Echo app for conformance runs (``fasthub serve --echo``): every message comes back unchanged.

Text stays text and binary stays binary; it runs through the same engine as the hub, which is
what the Autobahn|Testsuite checks. Not a hub: no rooms, no envelope.
"""

from __future__ import annotations

from ..exceptions import ConnectionClosed
from .types import Receive, Scope, Send

ECHO_MAX_MESSAGE_SIZE = 64 * 1024 * 1024  # Autobahn's family 9 sends messages up to 16 MiB


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        body = b"fasthub echo server: connect a WebSocket to any path\n"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    if scope["type"] != "websocket":
        return
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            reply = {"type": "websocket.send", "text": message["text"]}
        else:
            reply = {"type": "websocket.send", "bytes": message.get("bytes") or b""}
        try:
            await send(reply)
        except (OSError, ConnectionClosed):  # the peer left while its message was queued
            return
