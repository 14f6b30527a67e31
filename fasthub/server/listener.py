"""``ListenerProtocol``: fasthub's own front door, uvicorn's hand-off turned around.

uvicorn gives every connection an ``HttpToolsProtocol`` first (a logger lookup, flow control,
address syscalls, an httptools parser, a keep-alive timer), and only after the request is parsed
does it hand a WebSocket upgrade to the ``ws`` class, re-serializing the request for it. For a
hub whose connections are almost all WebSockets, that machinery is most of the cost of a
connect and a third of an idle connection's memory. This protocol is the first (and usually
the only) protocol of every connection: it reads the request head itself; an upgrade request
becomes a WebSocket right here (it *is* a ``HubProtocol``), and anything else is handed to
uvicorn's HTTP protocol with the bytes read so far, so HTTP routes stay plain ASGI.

Use it as uvicorn's ``http`` class (``fasthub serve`` does): ``uvicorn.Config(app,
http=ListenerProtocol, ws=HubProtocol)`` or ``uvicorn app:app --http
fasthub.server.listener:ListenerProtocol --ws fasthub.server.uvicorn:HubProtocol``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .._wire import plain_upgrade
from . import handshake
from .http import GuardedHttpToolsProtocol, guarded_http_protocol
from .protocol import HANDED_OFF, HANDSHAKE, Handshake, HubProtocol


def _wants_websocket(head: bytes) -> bool:
    """Whether a complete request head asks for a WebSocket upgrade (a cheap scan, not a parse)."""
    lower = head.lower()
    i = lower.find(b"\r\nupgrade:")
    while i >= 0:
        end = lower.find(b"\r\n", i + 10)
        if b"websocket" in lower[i + 10 : end if end >= 0 else len(lower)]:
            return True
        i = lower.find(b"\r\nupgrade:", i + 10)
    return False


class HeadDeadlines:
    """Request-head deadlines of one server's new connections, checked by one timer.

    A timer per connection (created at connect, cancelled when the head arrived) cost about a
    microsecond of every connect; here a connection is a dict entry, and one timer looks at
    the oldest entries (same timeout, so insertion order is deadline order) a few times per
    timeout.
    """

    __slots__ = ("loop", "period", "timeout", "timer", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.period = min(1.0, timeout / 4)
        self.waiting: dict[ListenerProtocol, float] = {}
        self.timer: asyncio.TimerHandle | None = None

    def add(self, protocol: ListenerProtocol) -> None:
        self.waiting[protocol] = self.loop.time() + self.timeout
        if self.timer is None:
            self.timer = self.loop.call_later(self.period, self._check)

    def _check(self) -> None:
        self.timer = None
        now = self.loop.time()
        late = []
        for protocol, deadline in self.waiting.items():
            if deadline > now:
                break
            late.append(protocol)
        for protocol in late:
            del self.waiting[protocol]
            protocol._head_late()
        if self.waiting:
            self.timer = self.loop.call_later(self.period, self._check)


class ListenerProtocol(HubProtocol):
    """Every connection's first protocol: WebSocket upgrades stay, other requests go to HTTP."""

    __slots__ = ()

    #: the protocol that serves plain HTTP requests, and the request-head guards (both set by
    #: ``listener_protocol``)
    http_class: type[Any] = GuardedHttpToolsProtocol
    head_timeout: float = 10.0
    max_head_size: int = 16 * 1024

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        shared = self.shared
        shared.track(self)
        if self.head_timeout > 0:
            heads = shared.heads
            if heads is None:
                heads = shared.heads = HeadDeadlines(self.loop, self.head_timeout)
            heads.add(self)

    def _head_late(self) -> None:
        """Slowloris: the request head did not arrive in time."""
        if self.phase == HANDSHAKE and not self.handshake().key and not self.lost:
            self.respond(408, [(b"content-type", b"text/plain")], b"request head not received in time\n")

    def _head_done(self) -> None:
        heads = self.shared.heads
        if heads is not None:
            heads.waiting.pop(self, None)

    def head_data(self, p: Handshake, data: bytes) -> None:
        buffered = p.request_buffer + data
        end = buffered.find(b"\r\n\r\n")
        if end < 0:
            if len(buffered) > self.max_head_size:
                self._head_done()
                self.respond(431, [(b"content-type", b"text/plain")], b"request head too large\n")
                return
            p.request_buffer = buffered
            return
        self._head_done()
        # bytes after the head (a client that did not wait for the 101) wait for the engine
        p.request_buffer = buffered[end + 4 :]
        hub_app = self.shared.hub_app
        if not p.request_buffer and hub_app is not None and not hub_app.reads_scope:
            plain = plain_upgrade(buffered)  # the usual upgrade, read without building its objects
            if plain is not None:
                p.key = plain[1]
                if hub_app.open_plain(self, plain[0], plain[2]):
                    return
        try:
            request = handshake.parse_request(buffered)  # compiled; upgrades are the usual case
        except handshake.HandshakeError as exc:
            if _wants_websocket(buffered[: end + 2]):
                self.refuse(exc)  # an upgrade, but a malformed one
            else:
                self._hand_off(buffered)
            return
        self.upgrade(request)

    def _hand_off(self, data: bytes) -> None:
        """A plain HTTP request: uvicorn's HTTP protocol takes the connection from here."""
        self.pending = None
        self.shared.untrack(self)
        http = self.shared.http_protocol(self.http_class, self.loop)
        transport = self.transport
        self.phase = HANDED_OFF
        http.connection_made(transport)
        transport.set_protocol(http)
        http.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        self._head_done()
        super().shutdown()


def listener_protocol(head_timeout: float, max_head_size: int) -> type[ListenerProtocol]:
    """A ``ListenerProtocol`` class with these request-head guards, for ``uvicorn.Config(http=...)``."""
    return type(
        "ListenerProtocol",
        (ListenerProtocol,),
        {
            "__slots__": (),
            "http_class": guarded_http_protocol(head_timeout, max_head_size),
            "head_timeout": head_timeout,
            "max_head_size": max_head_size,
        },
    )


__all__ = ["ListenerProtocol", "listener_protocol"]
