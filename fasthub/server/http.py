"""uvicorn's httptools protocol with the two guards it lacks before a WebSocket upgrade.

uvicorn has no deadline for a request's head and no cap on its size: a client can hold a socket
open forever by sending one header byte at a time (slowloris), or send megabytes of headers.
``guarded_http_protocol`` returns a subclass that closes a connection whose request line and
headers have not arrived within ``timeout`` seconds and answers 431 when they exceed
``max_size`` bytes. Everything else is uvicorn's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .handshake import http_response
from .uvicorn import HttpToolsProtocol


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    head_timeout: float = 10.0
    max_head_size: int = 16 * 1024

    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes: int = 0
    _in_head: bool = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        if self.head_timeout > 0 and self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timeout)

    def _disarm(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self.transport.write(
                http_response(408, [(b"content-type", b"text/plain")], b"request head not received in time\n")
            )
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_size:
                self._disarm()
                self.transport.write(
                    http_response(431, [(b"content-type", b"text/plain")], b"request head too large\n")
                )
                self.transport.close()
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # the next request on a keep-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def guarded_http_protocol(timeout: float, max_size: int) -> type[Any]:
    """A ``GuardedHttpToolsProtocol`` class with these limits, for ``uvicorn.Config(http=...)``."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"head_timeout": timeout, "max_head_size": max_size},
    )
