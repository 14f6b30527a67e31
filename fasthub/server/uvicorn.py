"""``HubProtocol``: fasthub's WebSocket protocol class for uvicorn (the fast path).

Two ways in. ``fasthub serve`` makes every connection a ``listener.ListenerProtocol`` (a
subclass) that reads the request head itself. With plain uvicorn, ``uvicorn.Config(app,
ws=HubProtocol)`` or ``uvicorn app:app --ws fasthub.server.uvicorn:HubProtocol``: uvicorn parses
the upgrade request, then hands the socket over (``connection_made`` + the re-serialized request
in ``data_received``). Either way this class then owns the bytes: frames are parsed by
``fasthub._wire`` and written straight to the socket. To an ASGI app it speaks the standard
``websocket`` scope, send and receive, so any ASGI app runs on it; a fasthub app opens the
connection on the hub instead (``open_hub``, directly from ``data_received`` when it can), and
the hub's compiled flush writes every dirty connection once per event-loop tick.

Modelled on uvicorn's ``websockets_sansio_impl.py``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import os
import socket
import types
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .._core import KIND_BINARY, KIND_CLOSE, KIND_RAW, KIND_TEXT, Payload
from .._wire import OP_BINARY, OP_CLOSE, OP_TEXT, OPEN, ServerProtocol, build_frame
from ..exceptions import ConnectionClosed
from . import handshake

if TYPE_CHECKING:
    from ..connection import Connection
    from ..dispatch import Dispatcher
    from .asgi import FasthubApp

log = logging.getLogger("fasthub")

# connection phases
_HANDSHAKE = 0  # waiting for the upgrade request / the app's accept
_OPEN = 1
_CLOSING = 2  # close frame sent, waiting for the peer's
_CLOSED = 3
_RESPONDED = 4  # answered with an HTTP response instead of upgrading

_RECEIVE_QUEUE_HIGH = 16  # generic ASGI apps: pause reading above this many queued events
_TURN = 64  # frames one connection may have handled per loop iteration (fair scheduling)
_EARLY_MAX = 64 * 1024  # bytes kept from a client that sends frames before the 101
_CLOSE_TIMEOUT = 5.0  # seconds to wait for the peer's close frame before dropping TCP
# close codes after which TCP is closed at once, without waiting for the peer's close frame
_NO_HANDSHAKE_CODES = frozenset({1008, 1009, 1011})


def _client_disconnected() -> Exception:
    try:
        from uvicorn.protocols.utils import ClientDisconnected

        return ClientDisconnected()
    except ImportError:  # pragma: no cover - uvicorn always has it
        return ConnectionClosed("the client disconnected")


def _plain_fd(transport: Any) -> int:
    """The socket's descriptor for direct writes; -1 for TLS or anything that is not a plain socket."""
    if transport.get_extra_info("sslcontext") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    try:
        return int(sock.fileno()) if sock is not None else -1
    except (AttributeError, OSError, ValueError):
        return -1


def _addresses(transport: Any) -> tuple[Any, Any]:
    """ASGI's ``(server, client)`` for a connection, for the scope only.

    Read through a temporary socket object on the descriptor, not through uvloop's
    ``get_extra_info("sockname"/"peername")``: uvloop keeps those tuples for the transport's
    lifetime (about 300 bytes per connection that nothing reads once the scope is gone).
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return _address(transport.get_extra_info("sockname")), _address(transport.get_extra_info("peername"))
    try:
        probe = socket.socket(fileno=sock.fileno())
    except (AttributeError, OSError, ValueError):
        return None, None
    try:
        return _address(probe.getsockname()), _address(probe.getpeername())
    except OSError:  # a socket already gone, or a Unix socket without a peer name
        return None, None
    finally:
        probe.detach()  # the descriptor stays the transport's


def _address(info: Any) -> Any:
    """ASGI's ``server``/``client`` form: ``(host, port)``, ``(path, None)`` for Unix sockets."""
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    if isinstance(info, str) and info:
        return (info, None)
    return None


def _hub_app(config: Any) -> FasthubApp | None:
    """The ``FasthubApp`` behind uvicorn's own wrappers, or None (found once per server).

    Only a fasthub app is run up to its first suspension inside ``data_received`` (or opened
    without a coroutine at all, ``FasthubApp.open_direct``): its connection setup awaits
    nothing unless a hook is async, and then it moves into a task before running it
    (``asgi._resolve``). Other apps may expect ``asyncio.current_task()`` (anyio does), so they
    always start in a task.
    """
    from .asgi import FasthubApp

    app = config.loaded_app
    while type(app).__name__ in ("ProxyHeadersMiddleware", "MessageLoggerMiddleware") and hasattr(app, "app"):
        app = app.app
    return app if isinstance(app, FasthubApp) else None


@types.coroutine
def _resume(coro: Any, yielded: Any) -> Generator[Any, Any, None]:
    """Finish, inside a task, a coroutine that was started eagerly and has yielded ``yielded``.

    Like ``yield from coro`` minus its first step, which already happened: every later value,
    result and exception (cancellation included) passes between the task and ``coro``.
    """
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration:
                return


class _Shared:
    """What every connection of one uvicorn server shares: one object, not seven slots each."""

    __slots__ = ("app_state", "config", "heads", "hub_app", "server_state")

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any]) -> None:
        self.config = config
        self.server_state = server_state  # connections, tasks, default_headers (kept fresh)
        self.app_state = app_state
        self.heads: Any = None  # the listener's request-head deadlines (listener._HeadDeadlines)
        self.hub_app = _hub_app(config)  # opened directly or eagerly (see _hub_app)


class _Pending:
    """What only the handshake or a generic ASGI app needs, off the per-connection object.

    A hub connection drops it once open, so an idle connection does not carry seven empty
    slots for a request, a response and a receive queue it no longer has (one ``pending`` slot
    instead: 48 bytes less). The scope and the app's task are not kept at all: the app and
    uvicorn's task set hold them.
    """

    __slots__ = ("deferred", "key", "queue", "request_buffer", "response_body", "response_start", "waiter")

    def __init__(self) -> None:
        self.request_buffer = b""  # the request head so far; then frames sent before the 101
        self.key = b""  # Sec-WebSocket-Key once the head parsed
        self.response_start: dict[str, Any] | None = None  # denial response in progress
        self.response_body: list[bytes] | None = None
        # a failure's close, held until the app took earlier messages (None: nothing held)
        self.deferred: list[bytes] | None = None
        # receive()'s events, a deque from the first one on (the hub path never has any)
        self.queue: Any = ()
        self.waiter: asyncio.Future[None] | None = None


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
        if not config.loaded:
            config.load()
        shared = getattr(server_state, "_fasthub_shared", None)
        if shared is None or shared.config is not config or shared.app_state is not app_state:
            shared = _Shared(config, server_state, app_state)
            with contextlib.suppress(AttributeError):  # a server state without a __dict__
                server_state._fasthub_shared = shared
        self.shared = shared
        self.loop = _loop or asyncio.get_event_loop()

        # Connection state
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.phase = _HANDSHAKE
        self.wire: ServerProtocol | None = None
        # the handshake's and a generic ASGI app's state; dropped once a hub connection is open
        self.pending: _Pending | None = _Pending()
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

        # Keep-alive (the hub's sweep drives it for attached connections)
        self.last_ping = 0.0
        self.stall_size = 0
        self.stall_since = 0.0

    # -- asyncio callbacks ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.shared.server_state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is not None:
            # keep-alive's and the rate limit's clock, in a C field (no float kept per connection)
            conn.last_seen = self.loop.time()
        wire = self.wire
        if wire is None:
            self._handshake_data(data)
            return
        wire.receive_data(data)
        events = wire.events_received()
        if events:
            if self.dispatcher is not None:
                self._dispatch_events(events)
            else:
                self._queue_events(events)
        self._write_wire()

    def eof_received(self) -> bool | None:
        if self.wire is not None:
            self.wire.receive_eof()
            self._write_wire()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._detach_transport()
        self.shared.server_state.connections.discard(self)
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        if self.rate_timer is not None:
            self.rate_timer.cancel()
            self.rate_timer = None
        was_open = self.phase in (_OPEN, _CLOSING)
        self.phase = _CLOSED
        if self.conn is not None and self.conn.close_code is None:
            wire = self.wire
            if wire is not None and wire.close_received is not None:
                self.conn.close_code, self.conn.close_reason = wire.close_received
            else:
                self.conn.close_code = 1006 if was_open else 1005
        on_lost = self.on_lost
        if on_lost is not None and self.conn is not None:
            self.on_lost = None
            on_lost(self.conn)
        if self.dispatcher is None:
            code = 1006
            if self.wire is not None and self.wire.close_received is not None:
                code = self.wire.close_received[0]
            self._put({"type": "websocket.disconnect", "code": code})
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
        if self.phase == _OPEN:
            if self.conn is not None:
                self.conn._queue_close(1012, "server restarting", discard=False)
                self.flush()
            else:
                self._send_close(1012, "server restarting")
                self._put({"type": "websocket.disconnect", "code": 1012})
            # like uvicorn's own protocols: no waiting for the peer's close frame on shutdown
            self._close_transport()
        elif self.phase == _HANDSHAKE:
            self._write_response(500, [(b"content-type", b"text/plain")], b"server shutting down\n")
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

    def _handshake_data(self, data: bytes) -> None:
        if self.phase != _HANDSHAKE:
            return
        p = self._pending()
        if p.key:
            # frames before the app accepted (RFC 6455 clients wait for the 101, some do not):
            # kept for the engine; past 64 KiB reading pauses until the open completes
            p.request_buffer += data
            if len(p.request_buffer) > _EARLY_MAX and not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()
            return
        p.request_buffer += data
        if b"\r\n\r\n" not in p.request_buffer:
            if len(p.request_buffer) > handshake.MAX_REQUEST_SIZE:
                self._write_response(431, [], b"request header fields too large\n")
            return
        try:
            request = handshake.parse_request(p.request_buffer)
        except handshake.HandshakeError as exc:
            self._refuse(exc)
            return
        # bytes after the head (a client that did not wait for the 101) wait for the engine
        p.request_buffer = p.request_buffer.partition(b"\r\n\r\n")[2]
        self._upgrade(request)

    def _refuse(self, exc: handshake.HandshakeError) -> None:
        """A malformed upgrade request: 400 or 426, then close."""
        self.phase = _RESPONDED
        self.transport.write(handshake.error_response(exc))
        self.transport.close()

    def _upgrade(self, request: handshake.UpgradeRequest) -> None:
        """A valid upgrade request: open a fasthub connection directly or run the ASGI app."""
        self._pending().key = request.key
        raw_path, _, query = request.target.partition(b"?")
        hub_app = self.shared.hub_app
        if hub_app is not None and hub_app.opens_directly(raw_path):
            hub_app.open_direct(self, request.subprotocols)
            return
        server, client = _addresses(self.transport)
        tls = self.transport.get_extra_info("sslcontext") is not None
        path = unquote(raw_path.decode("ascii", "replace"))
        full_path = self.shared.config.root_path + path
        full_raw_path = self.shared.config.root_path.encode("ascii") + raw_path
        scope = {
            "type": "websocket",
            "asgi": {"version": self.shared.config.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if tls else "ws",
            "server": server,
            "client": client,
            "root_path": self.shared.config.root_path,
            "path": full_path,
            "raw_path": full_raw_path,
            "query_string": query,
            "headers": request.headers,
            "subprotocols": request.subprotocols,
            "state": self.shared.app_state.copy(),
            "extensions": {"websocket.http.response": {}, "fasthub.transport": {"protocol": self}},
        }
        self._put({"type": "websocket.connect"})
        coro = self.shared.config.loaded_app(scope, self.receive, self.send)
        context = contextvars.copy_context()
        if hub_app is not None:
            # A fasthub app with synchronous hooks sets the connection up without suspending:
            # run it to its first suspension now instead of creating a task for one step
            try:
                yielded = context.run(coro.send, None)
            except StopIteration:
                self._app_returned()
                return
            except BaseException as exc:
                self._app_failed(exc)
                return
            task = self.loop.create_task(self.run_asgi(_resume(coro, yielded)), context=context)
        else:
            task = self.loop.create_task(self.run_asgi(coro), context=context)
        self.shared.server_state.tasks.add(task)  # uvicorn's set holds it; shutdown waits for it
        task.add_done_callback(self.shared.server_state.tasks.discard)

    async def run_asgi(self, coro: Any) -> None:
        try:
            await coro
        except BaseException as exc:
            self._app_failed(exc)
        else:
            self._app_returned()

    def _app_failed(self, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError) and self.phase == _CLOSED:
            return
        log.exception("fasthub: exception in ASGI application", exc_info=exc)
        if self.phase == _HANDSHAKE:
            self._write_response(500, [(b"content-type", b"text/plain")], b"internal server error\n")
        elif self.phase == _OPEN:
            self._send_close(1011, "internal error")
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc

    def _app_returned(self) -> None:
        if self.phase == _HANDSHAKE:
            self._write_response(500, [(b"content-type", b"text/plain")], b"no response from the app\n")
        elif self.phase == _OPEN and self.conn is None:
            self._send_close(1000, "")
        # an attached connection lives on: the hub serves it from the protocol callbacks

    def deny(self, status: int, reason: str) -> None:
        """Refuse the upgrade with an HTTP response (what ``FasthubApp`` sends through ASGI)."""
        self._write_response(status, [(b"content-type", b"application/json")], handshake.denial_body(status, reason))

    def _write_response(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.phase = _RESPONDED
        self.transport.write(
            handshake.http_response(status, list(self.shared.server_state.default_headers) + headers, body)
        )
        self.transport.close()

    # -- ASGI send / receive ------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        phase = self.phase
        if phase == _HANDSHAKE:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self._write_response(403, [(b"content-type", b"text/plain")], b"forbidden\n")
            elif kind == "websocket.http.response.start":
                p = self._pending()
                if p.response_start is not None:
                    raise RuntimeError("websocket.http.response.start sent twice")
                p.response_start = dict(message)
            elif kind == "websocket.http.response.body" and (p := self._pending()).response_start is not None:
                if p.response_body is None:
                    p.response_body = []
                p.response_body.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    start = p.response_start
                    assert start is not None
                    headers = [(bytes(n), bytes(v)) for n, v in start.get("headers", [])]
                    self._write_response(int(start["status"]), headers, b"".join(p.response_body))
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start' before the handshake, but got {kind!r}"
                )
        elif phase == _OPEN:
            if kind == "websocket.send":
                text = message.get("text")
                if text is not None:
                    kind_, data = KIND_TEXT, text.encode()
                else:
                    raw = message.get("bytes")
                    if raw is None:
                        raise RuntimeError("websocket.send needs 'text' or 'bytes'")
                    kind_, data = KIND_BINARY, bytes(raw)
                conn = self.conn
                if conn is not None:
                    # one ordered path: the hub's outbox carries ASGI sends too
                    conn._push(Payload(kind_, data))
                else:
                    self.transport.write(build_frame(OP_TEXT if kind_ == KIND_TEXT else OP_BINARY, data))
            elif kind == "websocket.close":
                code = int(message.get("code") or 1000)
                reason = message.get("reason") or ""
                if self.conn is not None:
                    self.conn._queue_close(code, reason, discard=False)
                else:
                    self._send_close(code, reason)
            else:
                raise RuntimeError(f"Expected ASGI message 'websocket.send' or 'websocket.close', but got {kind!r}")
        else:
            raise _client_disconnected()

    def _accept(self, message: dict[str, Any]) -> None:
        extra = list(self.shared.server_state.default_headers)
        subprotocol = message.get("subprotocol")
        if subprotocol:
            extra.append((b"sec-websocket-protocol", subprotocol.encode()))
        for name, value in message.get("headers") or []:
            extra.append((bytes(name), bytes(value)))
        self.transport.write(handshake.accept_response(self._pending().key, extra))
        self.phase = _OPEN
        self.wire = ServerProtocol(self.shared.config.ws_max_size or 0)
        self.transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        self._feed_early()

    async def receive(self) -> dict[str, Any]:
        p = self._pending()
        if p.deferred and not any(e["type"] == "websocket.receive" for e in p.queue):
            self._write_deferred()
        while not p.queue:
            if self.read_paused:
                self.read_paused = False
                self.transport.resume_reading()
            p.waiter = self.loop.create_future()
            try:
                await p.waiter
            finally:
                p.waiter = None
        event: dict[str, Any] = p.queue.popleft()
        if self.read_paused and len(p.queue) <= _RECEIVE_QUEUE_HIGH // 2:
            self.read_paused = False
            self.transport.resume_reading()
        return event

    def _put(self, event: dict[str, Any]) -> None:
        p = self._pending()
        if not p.queue:
            p.queue = collections.deque()
        p.queue.append(event)
        waiter = p.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _queue_events(self, events: list[tuple[int, object]]) -> None:
        """Events for a generic ASGI app (no hub attached): through receive()."""
        for opcode, data in events:
            if opcode == OP_TEXT:
                self._put({"type": "websocket.receive", "text": data.decode()})  # type: ignore[attr-defined]
            elif opcode == OP_BINARY:
                self._put({"type": "websocket.receive", "bytes": data})
            elif opcode == OP_CLOSE:
                self._on_close_frame()
        if len(self._pending().queue) > _RECEIVE_QUEUE_HIGH and not self.read_paused and self.phase != _CLOSED:
            self.read_paused = True
            self.transport.pause_reading()

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
        p = self._pending()
        key, early = p.key, p.request_buffer
        self.pending = None
        if self.lost:  # gone while the app authenticated it
            self.on_lost = None
            on_lost(conn)
            return
        if self.phase != _HANDSHAKE:  # answered meanwhile (shutdown); connection_lost follows
            return
        headers = self.shared.server_state.default_headers
        if subprotocol:
            headers = [*headers, (b"sec-websocket-protocol", subprotocol.encode())]
        self.phase = _OPEN
        self.wire = ServerProtocol(self.shared.config.ws_max_size or 0)
        transport = self.transport
        transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        outbox.transport = transport  # the compiled flush writes here directly
        outbox.fd = _plain_fd(transport)
        outbox.push(Payload(KIND_RAW, handshake.accept_response(key, headers)))
        conn._mark_dirty()
        if early:  # handled after the open completes, so the replies follow ``connected``
            self.loop.call_soon(self._feed, early)

    def _feed_early(self) -> None:
        """Frames that came with the upgrade request, handled after the open completes (so the
        replies follow the ``connected`` message)."""
        p = self._pending()
        early = p.request_buffer
        if early:
            p.request_buffer = b""
            self.loop.call_soon(self._feed, early)

    def _feed(self, data: bytes) -> None:
        if not self.lost and self.phase == _OPEN:
            self.data_received(data)
            if self.dispatcher is not None:
                self._maybe_resume_reading()
            elif self.read_paused and len(self._pending().queue) <= _RECEIVE_QUEUE_HIGH // 2:
                self.read_paused = False
                self.transport.resume_reading()

    def _dispatch_events(self, events: list[tuple[int, object]]) -> None:
        """Handle parsed frames in order, at most ``_TURN`` per loop iteration.

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
        hub = conn.hub
        config = hub.config
        rate, byte_rate = config.rate_limit, config.rate_limit_bytes
        limited = rate or byte_rate
        now = conn.last_seen
        for i, (opcode, data) in enumerate(events):
            if i == _TURN:
                self.backlog = collections.deque(events[i:])
                self._pause_reading()
                self.loop.call_soon(self._next_turn)
                return
            if opcode in (OP_TEXT, OP_BINARY):
                hub.bytes_in += len(data)  # type: ignore[arg-type]
                if conn.closing:
                    continue
                if limited:
                    wait = conn.spend(now, len(data), rate, byte_rate)  # type: ignore[arg-type]
                    if wait:
                        dispatcher.rate_limited(conn)
                        self._pause_for(wait)
                        continue
                if opcode == OP_BINARY:
                    dispatcher.binary(conn)
                    continue
                pending = dispatcher.dispatch(conn, data)  # type: ignore[arg-type]
                if pending is not None:
                    # an async handler: later messages wait for it, reading pauses meanwhile
                    self.backlog = collections.deque(events[i + 1 :])
                    self.busy = self.loop.create_task(self._finish(pending))
                    self._pause_reading()
                    return
            elif opcode == OP_CLOSE:
                self._on_close_frame()

    def _pause_reading(self) -> None:
        if not self.read_paused and not self.lost:
            self.read_paused = True
            self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        """Resume reading once nothing holds it: no backlog, no async handler, no rate pause."""
        if (
            self.read_paused
            and self.backlog is None
            and self.busy is None
            and self.rate_timer is None
            and not self.lost
            and self.phase != _CLOSED
        ):
            self.read_paused = False
            self.transport.resume_reading()

    def _drain_backlog(self) -> None:
        backlog = self.backlog
        self.backlog = None
        if backlog and not self.lost:
            self._dispatch_events(list(backlog))
        self._maybe_resume_reading()

    def _next_turn(self) -> None:
        if self.busy is None:
            self._drain_backlog()

    def _pause_for(self, wait: float) -> None:
        """Over the rate limit: stop reading until the bucket has refilled (TCP slows the sender)."""
        if self.rate_timer is not None or self.phase != _OPEN:
            return
        self._pause_reading()
        self.rate_timer = self.loop.call_later(wait, self._rate_resume)

    def _rate_resume(self) -> None:
        self.rate_timer = None
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
        """Write everything queued on the outbox with one ``writelines`` (one writev)."""
        outbox = self._outbox()
        if outbox is None:
            return
        items = outbox.take()
        if self.phase != _OPEN or self.wire is None:
            outbox.done(outbox.inflight)
            return
        frames = []
        close = None
        for p in items:
            if p.kind == KIND_CLOSE:
                close = p
                break
            frames.append(p.frame())
        if frames:
            self.transport.writelines(frames)
            outbox.unsure = True
        outbox.inflight = 0
        if close is not None:
            self._send_close(close.code, close.reason)
            if close.code in _NO_HANDSHAKE_CODES:
                # a policy failure (flood, slow consumer, oversize, dead peer): do not keep
                # reading what the peer still sends while waiting for its close frame
                self.phase = _CLOSED
                self._close_transport()
        outbox.buffered = self.transport.get_write_buffer_size()

    def sweep(self, now: float) -> None:
        """Keep-alive and write-progress check, driven by the hub's sweep."""
        if self.phase not in (_OPEN, _CLOSING) or self.conn is None or self.lost:
            return
        config = self.conn.hub.config
        if self.phase == _OPEN:  # keep-alive; a closing connection only gets the write check
            idle = now - self.conn.last_seen
            if idle > config.pong_timeout:
                log.info("fasthub: %s: no data and no pong for %.1f s, closing", self.conn.id, idle)
                self._fail(1011, "keepalive timeout")
                return
            if idle >= config.ping_interval and now - self.last_ping >= config.ping_interval:
                self.last_ping = now
                wire = self.wire
                if wire is not None:
                    wire.send_ping(os.urandom(4))
                    self._write_wire()
        size = self.transport.get_write_buffer_size()
        outbox = self._outbox()
        if outbox is not None:
            outbox.buffered = size
        if size and size >= self.stall_size:
            if not self.stall_since:
                self.stall_since = now
            elif now - self.stall_since > config.write_timeout:
                log.info("fasthub: %s: no write progress for %.1f s, dropping it", self.conn.id, now - self.stall_since)
                self.abort()
                return
        else:
            self.stall_since = 0.0
        self.stall_size = size

    def _pending(self) -> _Pending:
        """The handshake/ASGI state, made again if something needs it after a hub open."""
        p = self.pending
        if p is None:
            p = self.pending = _Pending()
        return p

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
        self.phase = _CLOSED
        self.transport.abort()

    # -- closing --------------------------------------------------------------------------------------

    def _write_wire(self) -> None:
        """Write what the engine queued (pongs, close frames); ``b""`` closes TCP.

        Replies to messages that arrived before a failure go out before its close frame: on the
        fast path the outbox is flushed first; for a generic app the close waits until the app
        has taken the queued messages (``receive``), or at most ``_CLOSE_TIMEOUT``.
        """
        wire = self.wire
        if wire is None:
            return
        out = wire.data_to_send()
        if not out:
            return
        p = self.pending
        if p is not None and p.deferred is not None:
            p.deferred.extend(out)
            return
        if out[-1] == b"" and wire.exc is not None:
            # a peer that just went away (EOF) is routine; a protocol violation is worth a line
            level = logging.DEBUG if isinstance(wire.exc, EOFError) else logging.INFO
            log.log(level, "fasthub: closing a connection: %s", wire.exc)
        queued = self._pending().queue if self.dispatcher is None else ()
        if out[-1] == b"" and any(e["type"] == "websocket.receive" for e in queued):
            self._pending().deferred = out
            self.loop.call_later(_CLOSE_TIMEOUT, self._write_deferred)
            return
        outbox = self._outbox()
        if outbox is not None and outbox.queue is not None:
            self.flush()
        self._write_out(out)

    def _write_deferred(self) -> None:
        p = self.pending
        if p is None:
            return
        out = p.deferred
        p.deferred = None
        if out and self.phase != _CLOSED:
            self._write_out(out)

    def _write_out(self, out: list[bytes]) -> None:
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
            self.phase = _CLOSED
            self._detach_transport()
            self._close_transport()

    def _send_close(self, code: int, reason: str) -> None:
        wire = self.wire
        if wire is None or self.phase != _OPEN or wire.state != OPEN:
            return
        wire.send_close(code, reason)
        self.phase = _CLOSING
        self._detach_transport()
        self._write_wire()
        if self.phase == _CLOSING and self.close_timer is None:
            self.close_timer = self.loop.call_later(_CLOSE_TIMEOUT, self._close_timeout)

    def _fail(self, code: int, reason: str) -> None:
        wire = self.wire
        if wire is None:
            return
        wire.fail(code, reason)
        self._write_wire()

    def _on_close_frame(self) -> None:
        """The peer's close frame: the engine queued the reply (or the TCP close) already."""
        if self.phase == _OPEN:
            self.phase = _CLOSING
        self._detach_transport()
        outbox = self._outbox()
        if outbox is not None:
            outbox.closing = True
            outbox.discard()
