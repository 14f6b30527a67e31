"""``AsgiSink``: the portable path's writer, one task per connection draining its outbox.

Each message goes out through the server's ASGI ``send``, awaited in order, so a server that
applies backpressure in ``send`` holds the writer back and the hub's budget sees the backlog.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .._core import KIND_CLOSE
from ..connection import Connection
from .types import Send

log = logging.getLogger("fasthub")


class AsgiSink:
    """Drains one connection's outbox through ASGI ``send``, in order, with one writer task."""

    __slots__ = ("_wake", "aborted", "conn", "handler", "loop", "send", "write_started")

    def __init__(self, send: Send, loop: asyncio.AbstractEventLoop, handler: asyncio.Task[Any] | None) -> None:
        self.send = send
        self.loop = loop
        self.handler = handler
        self.conn: Connection | None = None  # set by Hub.register; also the outbox it drains
        self._wake: asyncio.Future[None] | None = None
        self.write_started = 0.0
        self.aborted = False

    def flush(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def sweep(self, now: float) -> None:
        conn = self.conn
        if conn is None:
            return
        timeout = conn.hub.config.write_timeout
        if self.write_started and now - self.write_started > timeout:
            log.info("fasthub: %s: no write progress for %.1f s, dropping it", conn.id, timeout)
            self.abort()

    def abort(self) -> None:
        """Stop serving the connection: the app returns and the server drops the socket.

        On this path a stuck connection's ``send`` is what is stuck, so no close frame can be
        sent after it: the handler is cancelled and the server closes the socket (the client
        sees 1006).
        """
        if self.aborted:
            return
        self.aborted = True
        if self.handler is not None:
            self.handler.cancel()

    async def run_writer(self) -> None:
        outbox = self.conn
        assert outbox is not None
        loop = self.loop
        send = self.send
        enc, forms = outbox.encoding, outbox.fanout.forms
        while True:
            if outbox.queue is None:
                self._wake = loop.create_future()
                await self._wake
                self._wake = None
            for p in outbox.take():
                self.write_started = loop.time()
                try:
                    await send(p.asgi() if enc == 0 else p.asgi_as(enc, forms))
                except Exception as exc:  # the server closed the socket (ClientDisconnected, ...)
                    log.debug("fasthub: %s: send failed, the writer stops: %r", outbox.id, exc)
                    outbox.closing = True
                    outbox.discard()
                    return
                outbox.done(p.nbytes)
                if p.kind == KIND_CLOSE:
                    self.write_started = 0.0
                    return
            self.write_started = 0.0
