"""``HubProtocol``: fasthub's WebSocket protocol for uvicorn (the fast path).

Two ways in. ``fasthub serve`` makes every connection a ``listener.ListenerProtocol`` (a
subclass) that reads the request head itself. With plain uvicorn, ``uvicorn.Config(app,
ws=HubProtocol)`` or ``uvicorn app:app --ws fasthub.server.uvicorn:HubProtocol``: uvicorn parses
the upgrade request, then hands the socket over (``connection_made`` + the re-serialized request
in ``data_received``). Either way this class then owns the bytes: frames are parsed by
``fasthub._wire`` and written straight to the socket.

A fasthub app opens the connection on the hub (``open_hub``; without any ASGI task when nothing
reads the scope, ``FasthubApp.open_direct``) and the protocol serves it from its callbacks:
frames go through the app's message pipeline (``Dispatcher.receive``), and the hub's compiled
flush writes every dirty connection once per event-loop tick. Any other ASGI app gets the
standard ``websocket`` scope, send and receive through ``asgi_ws.AsgiWebSocket``.

uvicorn's internals are reached through ``uvicorn.Shared`` only. Modelled on uvicorn's
``websockets_sansio_impl.py``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._core import (
    ENC_MSGPACK,
    KIND_CLOSE,
    KIND_RAW,
    RELAY_ACCOUNTED,
    RELAY_FED,
    RELAY_PAUSED,
    RELAY_REFUSED,
    Payload,
    SocketTransport,
)
from .._wire import OP_BINARY, OP_CLOSE, OP_TEXT, OPEN, ServerProtocol, build_frame, deflate
from ..auth import MSGPACK_SUBPROTOCOL
from ..dispatch import PAUSE, Pause
from . import handshake
from .uvicorn import Shared

if TYPE_CHECKING:
    from ..connection import Connection
    from ..dispatch import Dispatcher
    from .asgi_ws import AsgiWebSocket

log = logging.getLogger("fasthub")

# connection phases
HANDSHAKE = 0  # waiting for the upgrade request / the app's accept
OPEN_ = 1
CLOSING = 2  # close frame sent, waiting for the peer's
CLOSED = 3
RESPONDED = 4  # answered with an HTTP response instead of upgrading
LINGERING = 5  # close frame sent and our side shut down; reading and discarding until the peer closes
HANDED_OFF = 6  # the connection belongs to uvicorn's HTTP protocol now (listener)

_TURN = 64  # frames one connection may have handled per loop iteration (fair scheduling)
_NOTHING = object()
FED, ACCOUNTED, REFUSED, PAUSED = RELAY_FED, RELAY_ACCOUNTED, RELAY_REFUSED, RELAY_PAUSED
_EARLY_MAX = 64 * 1024  # bytes kept from a client that sends frames before the 101
CLOSE_TIMEOUT = 5.0  # seconds to wait for the peer's close frame before dropping TCP
# A failing connection (flood, slow consumer, oversize, protocol error, dead peer) is not read
# for the close handshake: its data is discarded, at most this many bytes and seconds, until
# the peer closes (RFC 6455 7.1.1: so the peer reads our close frame instead of a TCP reset)
LINGER_BYTES = 4 * 1024 * 1024
LINGER_TIMEOUT = 2.0
# close codes after which the connection lingers instead of waiting for a close handshake
_FAILURE_CODES = frozenset({1008, 1009, 1011})
# A generic ASGI app's messages are compressed per connection as they are sent (a hub's are
# compressed once per message by its ``Forms``); shorter ones go as they are
GENERIC_DEFLATE_THRESHOLD = 256
_generic_deflater = deflate.Deflater()


def _plain_fd(transport: Any) -> int:
    """The socket's descriptor for direct writes; -1 for TLS or anything that is not a plain socket."""
    if transport.__class__ is SocketTransport:  # the Reactor's: always a plain socket
        return int(transport.fd)
    if transport.get_extra_info("sslcontext") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    try:
        return int(sock.fileno()) if sock is not None else -1
    except (AttributeError, OSError, ValueError):
        return -1


def _watch_input(fanout: Any, transport: Any) -> None:
    """Let the fan-out's long passes look at the ``Reactor`` that serves this connection
    (``Fanout.input_ready``): with several listeners, the one of the latest connect."""
    if transport.__class__ is SocketTransport:
        reactor = transport.reactor
        ready = fanout.input_ready
        if ready is None or getattr(ready, "__self__", None) is not reactor:
            fanout.input_ready = reactor.input_waiting


class Handshake:
    """The upgrade's state until the connection is open; a hub connection drops it then.

    ``asgi_ws.AsgiWebSocket`` extends it with what a generic ASGI app needs (receive queue,
    denial response), so an idle hub connection carries one empty slot instead.
    """

    __slots__ = ("deflate_bits", "key", "offers", "request_buffer")

    def __init__(self) -> None:
        self.request_buffer = b""  # the request head so far; then frames sent before the 101
        self.key = b""  # Sec-WebSocket-Key once the head parsed
        self.offers: list[bytes] | None = None  # its Sec-WebSocket-Extensions values, if any
        self.deflate_bits = 0  # a generic ASGI app's connection: the window it compresses with

    # What a generic ASGI app's adapter does at these points; nothing before it exists.

    def disconnected(self, code: int) -> None:
        """The socket is gone (``websocket.disconnect`` for an app)."""

    def hold_close(self, out: list[bytes]) -> bool:
        """Whether the engine's final bytes must wait (an app has messages still to take)."""
        return False


class HubProtocol(asyncio.Protocol):
    """One WebSocket connection served by fasthub's own engine under uvicorn."""

    # Slots keep an idle connection small (no per-instance __dict__).
    __slots__ = (
        "backlog",
        "busy",
        "close_timer",
        "conn",
        "dispatcher",
        "last_ping",
        "loop",
        "lost",
        "on_lost",
        "pending",
        "phase",
        "rate_timer",
        "read_paused",
        "shared",
        "stall_since",
        "stall_size",
        "transport",
        "wire",
    )

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.shared = Shared.of(config, server_state, app_state)
        self.loop = _loop or asyncio.get_event_loop()

        # Connection state
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.phase = HANDSHAKE
        self.wire: ServerProtocol | None = None
        # the upgrade's state (a generic ASGI app's adapter once it runs); None on an open hub
        # connection
        self.pending: Handshake | AsgiWebSocket | None = Handshake()
        self.close_timer: asyncio.TimerHandle | None = None
        self.lost = False  # connection_lost has run
        self.rate_timer: asyncio.TimerHandle | None = None  # reading paused by the rate limit
        self.read_paused = False

        # Hub-attached connections (fast path)
        self.conn: Connection | None = None
        self.dispatcher: Dispatcher | None = None
        self.busy: asyncio.Task[None] | None = None  # an async handler in progress
        self.backlog: collections.deque[tuple[int, object]] | None = None
        self.on_lost: Callable[[Connection], None] | None = None  # the hub's goodbye

        # Keep-alive (the hub's sweep drives it for attached connections); while lingering,
        # ``stall_size`` counts the bytes discarded
        self.last_ping = 0.0
        self.stall_size = 0
        self.stall_since = 0.0

    # -- asyncio callbacks ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.shared.track(self)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is not None:
            # keep-alive's and the rate limit's clock, in a C field (no float kept per connection)
            conn.last_seen = self.loop.time()
        wire = self.wire
        if wire is None:
            self.handshake_data(data)
            return
        if self.phase == LINGERING:
            self._discard(len(data))
            return
        wire.receive_data(data)
        events = wire.events_received()
        if events:
            if self.dispatcher is not None:
                self._dispatch_events(events)
            else:
                self.asgi().queue_events(events)
        self.write_wire()

    def eof_received(self) -> bool | None:
        if self.phase == LINGERING:
            self._end_linger()
            return None
        if self.wire is not None:
            self.wire.receive_eof()
            self.write_wire()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._detach_transport()
        self.shared.untrack(self)
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        if self.rate_timer is not None:
            self.rate_timer.cancel()
            self.rate_timer = None
        was_open = self.phase in (OPEN_, CLOSING)
        self.phase = CLOSED
        wire = self.wire
        received = wire.close_received if wire is not None else None
        conn = self.conn
        if conn is not None and conn.close_code is None:
            if received is not None:
                conn.close_code, conn.close_reason = received
            else:
                conn.close_code = 1006 if was_open else 1005
        on_lost = self.on_lost
        if on_lost is not None and conn is not None:
            self.on_lost = None
            on_lost(conn)
        p = self.pending
        if p is not None:
            p.disconnected(received[0] if received is not None else 1006)
        if self.busy is not None and not self.busy.done():
            self.busy.cancel()

    def pause_writing(self) -> None:
        """Over the high-water mark; the budget already counts the transport's buffer."""

    def resume_writing(self) -> None:
        outbox = self._outbox()
        if outbox is not None:
            outbox.buffered = self.transport.get_write_buffer_size()

    def shutdown(self) -> None:
        """Server shutdown: close open connections with 1012 (service restart)."""
        if self.phase == OPEN_:
            if self.conn is not None:
                self.conn.close(1012, "server restarting")
                self.flush()
            else:
                self.send_close(1012, "server restarting")
                if self.pending is not None:
                    self.pending.disconnected(1012)
            # like uvicorn's own protocols: no waiting for the peer's close frame on shutdown
            self._close_transport()
        elif self.phase == HANDSHAKE:
            self.respond(500, [(b"content-type", b"text/plain")], b"server shutting down\n")
        else:
            self._close_transport()

    def _close_transport(self) -> None:
        """Close TCP once the write buffer is out; abort if the peer does not read it in time."""
        self.transport.close()
        if self.transport.get_write_buffer_size() and not self.lost:
            self.loop.call_later(1.0, self._abort_if_alive)

    def _abort_if_alive(self) -> None:
        if not self.lost:
            self.transport.abort()

    def _close_timeout(self) -> None:
        """The peer did not answer our close frame in time."""
        self.close_timer = None
        if not self.lost:
            if self.transport.get_write_buffer_size():
                self.transport.abort()  # it is not reading: close() would wait for it forever
            else:
                self.transport.close()

    # -- handshake --------------------------------------------------------------------------------

    def handshake_data(self, data: bytes) -> None:
        """Bytes before the connection is open: the request head (uvicorn's hand-off), or early frames."""
        if self.phase != HANDSHAKE:
            return
        p = self.handshake()
        if p.key:
            self.keep_early(data)
            return
        self.head_data(p, data)

    def head_data(self, p: Handshake, data: bytes) -> None:
        """The request head, re-serialized by uvicorn's hand-off (``ListenerProtocol`` reads its own)."""
        p.request_buffer += data
        if b"\r\n\r\n" not in p.request_buffer:
            if len(p.request_buffer) > handshake.MAX_REQUEST_SIZE:
                self.respond(431, [], b"request header fields too large\n")
            return
        try:
            request = handshake.parse_request(p.request_buffer)
        except handshake.HandshakeError as exc:
            self.refuse(exc)
            return
        # bytes after the head (a client that did not wait for the 101) wait for the engine
        p.request_buffer = p.request_buffer.partition(b"\r\n\r\n")[2]
        self.upgrade(request)

    def keep_early(self, data: bytes) -> None:
        """Frames sent before the app accepted (RFC 6455 clients wait for the 101, some do not):
        kept for the engine; past 64 KiB reading pauses until the open completes."""
        p = self.handshake()
        p.request_buffer += data
        if len(p.request_buffer) > _EARLY_MAX:
            self.hold_reading()

    def refuse(self, exc: handshake.HandshakeError) -> None:
        """A malformed upgrade request: 400 or 426, then close."""
        self._count_refusal(exc.status)
        self.phase = RESPONDED
        self.transport.write(handshake.error_response(exc))
        self.transport.close()

    def upgrade(self, request: handshake.UpgradeRequest) -> None:
        """A valid upgrade request: open a fasthub connection directly, or run the ASGI app."""
        p = self.handshake()
        p.key = request.key
        p.offers = deflate.offered(request.headers) or None
        hub_app = self.shared.hub_app
        if hub_app is not None and hub_app.open_direct(self, request):
            return
        from .asgi_ws import AsgiWebSocket

        adapter = self.pending = AsgiWebSocket(self, p)
        adapter.start(request)

    def handshake(self) -> Handshake:
        """The upgrade's state, made again if something needs it after a hub open."""
        p = self.pending
        if p is None:
            p = self.pending = Handshake()
        return p

    def asgi(self) -> AsgiWebSocket:
        """The generic ASGI adapter of a connection served through ASGI ``send``/``receive``."""
        from .asgi_ws import AsgiWebSocket

        p = self.pending
        if not isinstance(p, AsgiWebSocket):
            p = self.pending = AsgiWebSocket(self, p if p is not None else Handshake())
        return p

    def deny(self, status: int, reason: str) -> None:
        """Refuse the upgrade with an HTTP response (what ``FasthubApp`` sends through ASGI)."""
        self.respond(status, [(b"content-type", b"application/json")], handshake.denial_body(status, reason))

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Answer the upgrade request with an HTTP response, then close."""
        self._count_refusal(status)
        self.phase = RESPONDED
        self.transport.write(handshake.http_response(status, [*self.shared.default_headers, *headers], body))
        self.transport.close()

    def _count_refusal(self, status: int) -> None:
        hub_app = self.shared.hub_app
        if hub_app is not None:
            hub_app.hub.handshake_failed(status)

    def accept(self, extra_headers: list[tuple[bytes, bytes]]) -> None:
        """Complete a generic ASGI app's upgrade: the 101 now, frames from the engine from here on."""
        p = self.handshake()
        headers = [*self.shared.default_headers, *extra_headers]
        inflate = deflate.INFLATE_OFF
        if p.offers is not None and self.shared.per_message_deflate:
            params = deflate.negotiate(p.offers)
            if params is not None:
                headers.append((b"sec-websocket-extensions", params.response))
                inflate = params.inflate_mode
                p.deflate_bits = params.server_bits
        self.transport.write(handshake.accept_response(p.key, headers))
        hub_app = self.shared.hub_app
        self._start_engine(hub_app.hub.config.transport_high_water if hub_app is not None else 64 * 1024, inflate)
        early = p.request_buffer
        if early:
            p.request_buffer = b""
            self.loop.call_soon(self._feed, early)

    def _start_engine(self, high_water: int, inflate: int = deflate.INFLATE_OFF) -> None:
        """Open: the engine from here on, and the transport's write-buffer marks."""
        self.phase = OPEN_
        self.wire = ServerProtocol(self.shared.max_size, inflate)
        self.transport.set_write_buffer_limits(high=high_water, low=high_water // 4)

    # -- the hub's fast path ------------------------------------------------------------------------

    def open_hub(
        self,
        conn: Connection,
        dispatcher: Dispatcher,
        on_lost: Callable[[Connection], None],
        subprotocol: str | None = None,
    ) -> None:
        """Accept the upgrade and serve ``conn`` from protocol callbacks from now on.

        The 101 response is queued at the head of the outbox, so it leaves with the first frames
        (the ``connected`` message) in one write. The ASGI coroutine may then return without
        closing the socket: no task stays parked per idle connection. ``on_lost(conn)`` runs
        once when the socket is gone.
        """
        self.conn = conn
        outbox = conn  # a connection is its own outbox
        self.dispatcher = dispatcher
        self.on_lost = on_lost
        # the hub path has no receive() and no response: keep only the key and early frames
        p = self.handshake()
        key, early, offers = p.key, p.request_buffer, p.offers
        self.pending = None
        if self.lost:  # gone while the app authenticated it
            self.on_lost = None
            on_lost(conn)
            return
        if self.phase != HANDSHAKE:  # answered meanwhile (shutdown); connection_lost follows
            return
        headers = self.shared.default_headers
        if subprotocol:
            headers = [*headers, (b"sec-websocket-protocol", subprotocol.encode())]
            if subprotocol == MSGPACK_SUBPROTOCOL:
                conn.encoding |= ENC_MSGPACK
        config = conn.hub.config
        inflate = deflate.INFLATE_OFF
        if offers is not None and config.compression:
            params = deflate.negotiate(offers, config.compression_client_context)
            if params is not None:
                headers = [*headers, (b"sec-websocket-extensions", params.response)]
                inflate = params.inflate_mode
                conn.encoding |= params.server_bits
        self._start_engine(config.transport_high_water, inflate)
        transport = self.transport
        outbox.transport = transport  # the compiled flush writes here directly
        outbox.fd = _plain_fd(transport)
        _watch_input(conn.fanout, transport)
        outbox.push(Payload(KIND_RAW, handshake.accept_response(key, headers)))
        conn.mark_dirty()
        if early:  # handled after the open completes, so the replies follow ``connected``
            self.loop.call_soon(self._feed, early)

    def open_plain(
        self,
        conn: Connection,
        dispatcher: Dispatcher,
        on_lost: Callable[[Connection], None],
        hello: bytes,
        accept: bytes | None = None,
    ) -> bool:
        """``open_hub`` and the ``connected`` message (``hello``, JSON) for the usual connect:
        no subprotocol, no extension offered, no early frames. The 101 (``accept``: its
        ``Sec-WebSocket-Accept``, when the caller has it) and the first frame go out as one
        buffer, built here. False (nothing done) for any other upgrade."""
        p = self.pending
        if (
            p is None
            or p.__class__ is not Handshake
            or p.offers is not None
            or p.request_buffer
            or self.lost
            or self.phase != HANDSHAKE
        ):
            return False
        self.conn = conn
        self.dispatcher = dispatcher
        self.on_lost = on_lost
        self.pending = None
        self._start_engine(conn.hub.config.transport_high_water)
        transport = self.transport
        conn.transport = transport  # the compiled flush writes here directly
        conn.fd = _plain_fd(transport)
        _watch_input(conn.fanout, transport)
        n = len(hello)
        head = bytes((0x81, n)) if n < 126 else b"\x81\x7e" + n.to_bytes(2, "big")
        headers = self.shared.default_headers
        response = handshake.switching(accept, headers) if accept else handshake.accept_response(p.key, headers)
        conn.push(Payload(KIND_RAW, response + head + hello))
        fanout = conn.fanout  # counted as ``send_payload`` counts a message
        fanout.delivered += 1
        fanout.bytes_out += n
        conn.mark_dirty()
        return True

    def _feed(self, data: bytes) -> None:
        if not self.lost and self.phase == OPEN_:
            self.data_received(data)
            if self.dispatcher is not None:
                self._maybe_resume_reading()
            else:
                self.asgi().maybe_resume_reading()

    def _dispatch_events(self, events: list[tuple[int, object]]) -> None:
        """Run parsed frames through the message pipeline in order, at most ``_TURN`` per loop iteration.

        Later frames wait in ``backlog`` (reading paused) when an async handler is running or
        when this connection has had its turn: one client's 256 KiB read of tiny messages must
        not hold the loop while other connections wait (fair scheduling).
        """
        if self.backlog is not None:
            self.backlog.extend(events)
            return
        conn = self.conn
        dispatcher = self.dispatcher
        assert conn is not None and dispatcher is not None
        receive = dispatcher.receive
        now = conn.last_seen
        start = 0
        first: Any = _NOTHING  # the result for events[start] when the relay has produced it
        relay = dispatcher.relay
        if relay is not None:  # plain room messages, relayed in one compiled loop
            start = relay.feed(conn, events, len(events) if len(events) < _TURN else _TURN, now)
            status = relay.status
            if status == FED:
                if start == len(events):
                    return
            elif status == ACCOUNTED:
                first = dispatcher.decoded(conn, events[start][1])  # type: ignore[arg-type]
            elif status == REFUSED:
                dispatcher.rate_limited(conn)
                first = relay.wait
            elif status == PAUSED:
                first = PAUSE
        for i in range(start, len(events)):
            opcode, data = events[i]
            if i == _TURN:
                self.backlog = collections.deque(events[i:])
                self.hold_reading()
                self.loop.call_soon(self._next_turn)
                return
            if opcode in (OP_TEXT, OP_BINARY):
                if first is not _NOTHING:
                    result, first = first, _NOTHING
                else:
                    result = receive(conn, data, opcode == OP_BINARY, now)  # type: ignore[arg-type]
                if result is None:
                    continue
                if result.__class__ is float:  # refused by the rate limit: stop reading a while
                    self._pause_for(result)
                    continue
                if result.__class__ is Pause:  # flow control: the rest waits until the room drains
                    self.backlog = collections.deque(events[i + 1 :])
                    self.hold_reading()
                    if self.rate_timer is None:
                        self.rate_timer = self.loop.call_later(result, self._rate_resume)
                    return
                # an async handler: later messages wait for it, reading pauses meanwhile
                self.backlog = collections.deque(events[i + 1 :])
                self.busy = self.loop.create_task(self._finish(result))
                self.hold_reading()
                return
            if opcode == OP_CLOSE:
                self.close_frame_received()

    def hold_reading(self) -> None:
        """Stop reading from the socket (TCP then slows the sender)."""
        if not self.read_paused and not self.lost:
            self.read_paused = True
            self.transport.pause_reading()

    def release_reading(self) -> None:
        if self.read_paused and not self.lost:
            self.read_paused = False
            self.transport.resume_reading()

    def _maybe_resume_reading(self) -> None:
        """Resume reading once nothing holds it: no backlog, no async handler, no rate pause."""
        if self.backlog is None and self.busy is None and self.rate_timer is None and self.phase != CLOSED:
            self.release_reading()

    def _drain_backlog(self) -> None:
        backlog = self.backlog
        self.backlog = None
        if backlog and not self.lost and self.phase in (OPEN_, CLOSING):
            self._dispatch_events(list(backlog))
        self._maybe_resume_reading()

    def _next_turn(self) -> None:
        if self.busy is None:
            self._drain_backlog()

    def _pause_for(self, wait: float) -> None:
        """Over the rate limit: stop reading until the bucket has refilled (TCP slows the sender)."""
        if self.rate_timer is not None or self.phase != OPEN_:
            return
        self.hold_reading()
        self.rate_timer = self.loop.call_later(wait, self._rate_resume)

    def _rate_resume(self) -> None:
        self.rate_timer = None
        if self.backlog is not None and self.busy is None:
            self._drain_backlog()  # a flow-control pause kept the rest of a read
        else:
            self._maybe_resume_reading()

    async def _finish(self, pending: Any) -> None:
        try:
            await pending
        except Exception:
            log.exception("fasthub: message handling failed")
        self.busy = None
        self._drain_backlog()

    # -- Sink interface (hub/_core) -----------------------------------------------------------------

    def flush(self) -> None:
        """Write what is queued on the outbox: frames joined in one write, then a queued close.

        The hub's compiled flush writes open connections itself (``send(2)`` or
        ``transport.write``); it calls this only for a connection without a transport (closing),
        where a queued close frame is what is left to send.
        """
        outbox = self._outbox()
        if outbox is None:
            return
        items = outbox.take()
        if self.phase != OPEN_ or self.wire is None:
            outbox.done(outbox.inflight)
            return
        frames = []
        close = None
        enc, forms = outbox.encoding, outbox.fanout.forms
        for p in items:
            if p.kind == KIND_CLOSE:
                close = p
                break
            frames.append(p.frame_as(enc, forms))
        if frames:
            self.transport.write(b"".join(frames))
            outbox.unsure = True
        outbox.inflight = 0
        if close is not None:
            self.send_close(close.code, close.reason)
        outbox.buffered = self.transport.get_write_buffer_size()

    def sweep(self, now: float) -> None:
        """Keep-alive and write-progress check, driven by the hub's sweep."""
        conn = self.conn
        if self.phase not in (OPEN_, CLOSING) or conn is None or self.lost:
            return
        config = conn.hub.config
        if self.phase == OPEN_:  # keep-alive; a closing connection only gets the write check
            idle = now - conn.last_seen
            if idle > config.pong_timeout:
                log.info("fasthub: %s: no data and no pong for %.1f s, closing", conn.id, idle)
                self._fail(1011, "keepalive timeout")
                return
            if idle >= config.ping_interval and now - self.last_ping >= config.ping_interval:
                self.last_ping = now
                wire = self.wire
                if wire is not None:
                    wire.send_ping(os.urandom(4))
                    self.write_wire()
        size = self.transport.get_write_buffer_size()
        outbox = self._outbox()
        if outbox is not None:
            outbox.buffered = size
        if size and size >= self.stall_size:
            if not self.stall_since:
                self.stall_since = now
            elif now - self.stall_since > config.write_timeout:
                log.info("fasthub: %s: no write progress for %.1f s, closing", conn.id, now - self.stall_since)
                self._write_timeout(conn)
                return
        else:
            self.stall_since = 0.0
        self.stall_size = size

    def _write_timeout(self, conn: Connection) -> None:
        """Close with 1008 "write timeout": the close frame goes behind the bytes the peer has not
        read, and the connection lingers; if they are still unread at the linger's end, the
        connection is aborted (the peer then sees a reset, not the close frame)."""
        self.stall_since = 0.0
        if self.phase == OPEN_:
            if conn.close_code is None:
                conn.close_code, conn.close_reason = 1008, "write timeout"
            conn.closing = True
            conn.discard()
            self.send_close(1008, "write timeout")
        else:  # closing already and still stuck: the close frame cannot be written
            self.abort()

    def _outbox(self) -> Connection | None:
        """The hub connection once ``open_hub`` ran (its outbox is live); None before that and
        for a generic ASGI app."""
        return self.conn if self.dispatcher is not None else None

    def _detach_transport(self) -> None:
        """No more direct writes: only the close handshake is left on this socket."""
        outbox = self._outbox()
        if outbox is not None:
            outbox.transport = None
            outbox.fd = -1

    def abort(self) -> None:
        self._detach_transport()
        self.phase = CLOSED
        self.transport.abort()

    # -- closing --------------------------------------------------------------------------------------

    def write_wire(self) -> None:
        """Write what the engine queued (pongs, close frames); ``b""`` ends the connection.

        Replies to messages that arrived before a failure go out before its close frame: on the
        fast path the outbox is flushed first; for a generic app the close waits until the app
        has taken the queued messages (``receive``), or at most ``CLOSE_TIMEOUT``.
        """
        wire = self.wire
        if wire is None:
            return
        out = wire.data_to_send()
        if not out:
            return
        p = self.pending
        if p is not None and p.hold_close(out):
            return
        if out[-1] == b"" and wire.exc is not None:
            # a peer that just went away (EOF) is routine; a protocol violation is worth a line
            level = logging.DEBUG if isinstance(wire.exc, EOFError) else logging.INFO
            log.log(level, "fasthub: closing a connection: %s", wire.exc)
        outbox = self._outbox()
        if outbox is not None and outbox.queue is not None:
            self.flush()
            if self.phase == LINGERING:  # the flush held a failure close: nothing after its frame
                return
        self.write_out(out)

    def write_out(self, out: list[bytes]) -> None:
        """Write the engine's output; a final ``b""`` ends the connection (lingering when it failed)."""
        if self.phase == LINGERING:  # our side is shut down: nothing more may be written
            return
        close_tcp = False
        if out[-1] == b"":
            out.pop()
            close_tcp = True
        if out:
            self.transport.writelines(out)
            outbox = self._outbox()
            if outbox is not None:
                outbox.unsure = True
        if close_tcp:
            self._detach_transport()
            wire = self.wire
            if wire is not None and wire.close_received is None and not isinstance(wire.exc, EOFError):
                self._linger()  # we failed it: the peer may still be sending
            else:
                self.phase = CLOSED
                self._close_transport()

    def send_close(self, code: int, reason: str) -> None:
        """Start the closing handshake (or, for a failure code, close and linger)."""
        wire = self.wire
        if wire is None or self.phase != OPEN_ or wire.state != OPEN:
            return
        outbox = self._outbox()
        if outbox is not None and outbox.queue is not None:
            # what the hub queued before this close goes first (``flush`` took it already when
            # the close came through the outbox)
            forms = outbox.fanout.forms
            frames = [p.frame_as(outbox.encoding, forms) for p in outbox.take() if p.kind != KIND_CLOSE]
            outbox.inflight = 0
            if frames:
                self.transport.write(b"".join(frames))
        wire.send_close(code, reason)
        self.phase = CLOSING
        self._detach_transport()
        if code in _FAILURE_CODES:
            # a policy failure (flood, slow consumer, oversize, dead peer, stuck writes): do not
            # read on for the handshake; the close frame out, then linger until the peer closes
            self.transport.writelines(wire.data_to_send())
            self._linger()
            return
        self.write_wire()
        if self.phase == CLOSING and self.close_timer is None:
            self.close_timer = self.loop.call_later(CLOSE_TIMEOUT, self._close_timeout)

    def _linger(self) -> None:
        """Close as RFC 6455 section 7 intends when the peer may still be sending.

        Closing the socket with unread data makes the kernel answer with a reset, and a reset
        can overtake our close frame: the peer would never see the code. So our side is shut
        down (FIN after the close frame), reading goes on and everything read is discarded,
        until the peer closes, or ``LINGER_BYTES`` or ``LINGER_TIMEOUT`` run out.
        """
        if self.phase == LINGERING or self.lost:
            return
        self.phase = LINGERING
        conn = self.conn
        on_lost = self.on_lost
        if conn is not None and on_lost is not None:
            # over for the hub now: it stops counting the connection, delivering to it and
            # reporting its user online, and the app's on_disconnect runs
            conn.closing = True
            conn.discard()
            if conn.close_code is None:
                sent = self.wire.close_sent if self.wire is not None else None
                conn.close_code, conn.close_reason = sent if sent is not None else (1006, "")
            self.on_lost = None
            on_lost(conn)
        self.stall_size = 0  # bytes discarded
        self.backlog = None
        if self.rate_timer is not None:
            self.rate_timer.cancel()
            self.rate_timer = None
        if self.close_timer is not None:
            self.close_timer.cancel()
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
        self.release_reading()
        self.close_timer = self.loop.call_later(LINGER_TIMEOUT, self._end_linger)

    def _discard(self, n: int) -> None:
        self.stall_size += n
        if self.stall_size > LINGER_BYTES:
            self._end_linger()

    def _end_linger(self) -> None:
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        if self.phase != LINGERING or self.lost:
            return
        self.phase = CLOSED
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # the peer read nothing for the whole linger
        else:
            self.transport.close()

    def _fail(self, code: int, reason: str) -> None:
        wire = self.wire
        if wire is None:
            return
        wire.fail(code, reason)
        self.write_wire()

    def close_frame_received(self) -> None:
        """The peer's close frame: the engine queued the reply (or the TCP close) already."""
        if self.phase == OPEN_:
            self.phase = CLOSING
        self._detach_transport()
        outbox = self._outbox()
        if outbox is not None:
            outbox.closing = True
            outbox.discard()

    def send_frame(self, opcode: int, data: bytes) -> None:
        """A data frame for a generic ASGI app (a hub connection's frames go through its outbox)."""
        p = self.pending
        bits = p.deflate_bits if p is not None else 0
        if bits and len(data) >= GENERIC_DEFLATE_THRESHOLD:
            packed = _generic_deflater.compress(data, bits)
            if len(packed) < len(data):
                self.transport.write(build_frame(opcode, packed, rsv1=True))
                return
        self.transport.write(build_frame(opcode, data))


__all__ = ["CLOSE_TIMEOUT", "HubProtocol"]
