"""``AsgiWebSocket``: a ``HubProtocol`` connection as any ASGI app sees it.

When the app behind ``HubProtocol`` is not a fasthub app, or is one whose hooks read the ASGI
scope, the upgrade runs the app with the standard ``websocket`` scope and its ``send`` and
``receive``: the state machine of the ASGI WebSocket spec (accept, close, denial response
through ``websocket.http.response``), a receive queue with backpressure, and the close held
until the app has taken the messages that came before it. A fasthub app that receives the
``fasthub.transport`` extension opens its connection on the hub instead (``open_hub``), and
this object is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import socket
import types
from collections.abc import Generator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .._core import KIND_BINARY, KIND_TEXT, Payload
from .._wire import OP_BINARY, OP_CLOSE, OP_TEXT
from .protocol import CLOSE_TIMEOUT, CLOSED, HANDSHAKE, OPEN_, Handshake
from .uvicorn import client_disconnected

if TYPE_CHECKING:
    from . import handshake
    from .protocol import HubProtocol

log = logging.getLogger("fasthub")

_RECEIVE_QUEUE_HIGH = 16  # pause reading above this many queued events


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


@types.coroutine
def resume(coro: Any, yielded: Any) -> Generator[Any, Any, None]:
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


class AsgiWebSocket(Handshake):
    """The ASGI ``websocket`` interface of one ``HubProtocol`` connection."""

    __slots__ = ("deferred", "protocol", "queue", "response_body", "response_start", "waiter")

    def __init__(self, protocol: HubProtocol, handshake_state: Handshake) -> None:
        super().__init__()
        self.protocol = protocol
        self.request_buffer = handshake_state.request_buffer
        self.key = handshake_state.key
        self.offers = handshake_state.offers
        self.response_start: dict[str, Any] | None = None  # denial response in progress
        self.response_body: list[bytes] | None = None
        # a failure's close, held until the app took earlier messages (None: nothing held)
        self.deferred: list[bytes] | None = None
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None

    # -- running the app -------------------------------------------------------------------------

    def start(self, request: handshake.UpgradeRequest) -> None:
        """Build the scope and run the app: eagerly for a fasthub app, in a task otherwise."""
        protocol = self.protocol
        shared = protocol.shared
        transport = protocol.transport
        raw_path, _, query = request.target.partition(b"?")
        server, client = _addresses(transport)
        tls = transport.get_extra_info("sslcontext") is not None
        root_path = shared.root_path
        scope = {
            "type": "websocket",
            "asgi": {"version": shared.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if tls else "ws",
            "server": server,
            "client": client,
            "root_path": root_path,
            "path": root_path + unquote(raw_path.decode("ascii", "replace")),
            "raw_path": root_path.encode("ascii") + raw_path,
            "query_string": query,
            "headers": request.headers,
            "subprotocols": request.subprotocols,
            "state": shared.app_state.copy(),
            "extensions": {"websocket.http.response": {}, "fasthub.transport": {"protocol": protocol}},
        }
        self.put({"type": "websocket.connect"})
        coro = shared.app(scope, self.receive, self.send)
        context = contextvars.copy_context()
        if shared.hub_app is not None:
            # A fasthub app with synchronous hooks sets the connection up without suspending:
            # run it to its first suspension now instead of creating a task for one step
            try:
                yielded = context.run(coro.send, None)
            except StopIteration:
                self.app_returned()
                return
            except BaseException as exc:
                self.app_failed(exc)
                return
            task = protocol.loop.create_task(self.run(resume(coro, yielded)), context=context)
        else:
            task = protocol.loop.create_task(self.run(coro), context=context)
        shared.keep_task(task)

    async def run(self, coro: Any) -> None:
        try:
            await coro
        except BaseException as exc:
            self.app_failed(exc)
        else:
            self.app_returned()

    def app_failed(self, exc: BaseException) -> None:
        protocol = self.protocol
        if isinstance(exc, asyncio.CancelledError) and protocol.phase == CLOSED:
            return
        log.exception("fasthub: exception in ASGI application", exc_info=exc)
        if protocol.phase == HANDSHAKE:
            protocol.respond(500, [(b"content-type", b"text/plain")], b"internal server error\n")
        elif protocol.phase == OPEN_:
            protocol.send_close(1011, "internal error")
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc

    def app_returned(self) -> None:
        protocol = self.protocol
        if protocol.phase == HANDSHAKE:
            protocol.respond(500, [(b"content-type", b"text/plain")], b"no response from the app\n")
        elif protocol.phase == OPEN_ and protocol.conn is None:
            protocol.send_close(1000, "")
        # an attached connection lives on: the hub serves it from the protocol callbacks

    # -- ASGI send / receive ------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        protocol = self.protocol
        kind = message["type"]
        phase = protocol.phase
        if phase == HANDSHAKE:
            if kind == "websocket.accept":
                extra = []
                subprotocol = message.get("subprotocol")
                if subprotocol:
                    extra.append((b"sec-websocket-protocol", subprotocol.encode()))
                for name, value in message.get("headers") or []:
                    extra.append((bytes(name), bytes(value)))
                protocol.accept(extra)
            elif kind == "websocket.close":
                protocol.respond(403, [(b"content-type", b"text/plain")], b"forbidden\n")
            elif kind == "websocket.http.response.start":
                if self.response_start is not None:
                    raise RuntimeError("websocket.http.response.start sent twice")
                self.response_start = dict(message)
            elif kind == "websocket.http.response.body" and self.response_start is not None:
                if self.response_body is None:
                    self.response_body = []
                self.response_body.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    start = self.response_start
                    headers = [(bytes(n), bytes(v)) for n, v in start.get("headers", [])]
                    protocol.respond(int(start["status"]), headers, b"".join(self.response_body))
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start' before the handshake, but got {kind!r}"
                )
        elif phase == OPEN_:
            if kind == "websocket.send":
                text = message.get("text")
                if text is not None:
                    kind_, data = KIND_TEXT, text.encode()
                else:
                    raw = message.get("bytes")
                    if raw is None:
                        raise RuntimeError("websocket.send needs 'text' or 'bytes'")
                    kind_, data = KIND_BINARY, bytes(raw)
                conn = protocol.conn
                if conn is not None:
                    # one ordered path: the hub's outbox carries ASGI sends too
                    conn.send_payload(Payload(kind_, data))
                else:
                    protocol.send_frame(OP_TEXT if kind_ == KIND_TEXT else OP_BINARY, data)
            elif kind == "websocket.close":
                code = int(message.get("code") or 1000)
                reason = message.get("reason") or ""
                if protocol.conn is not None:
                    protocol.conn.close(code, reason)
                else:
                    protocol.send_close(code, reason)
            else:
                raise RuntimeError(f"Expected ASGI message 'websocket.send' or 'websocket.close', but got {kind!r}")
        else:
            raise client_disconnected()

    async def receive(self) -> dict[str, Any]:
        protocol = self.protocol
        if self.deferred and not self._receives_queued():
            self.write_deferred()
        while not self.queue:
            protocol.release_reading()
            self.waiter = protocol.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        event = self.queue.popleft()
        self.maybe_resume_reading()
        return event

    def put(self, event: dict[str, Any]) -> None:
        self.queue.append(event)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def queue_events(self, events: list[tuple[int, object]]) -> None:
        """Parsed frames for the app, through ``receive``; reading pauses while many wait."""
        protocol = self.protocol
        for opcode, data in events:
            if opcode == OP_TEXT:
                self.put({"type": "websocket.receive", "text": data.decode()})  # type: ignore[attr-defined]
            elif opcode == OP_BINARY:
                self.put({"type": "websocket.receive", "bytes": data})
            elif opcode == OP_CLOSE:
                protocol.close_frame_received()
        if len(self.queue) > _RECEIVE_QUEUE_HIGH and protocol.phase != CLOSED:
            protocol.hold_reading()

    def maybe_resume_reading(self) -> None:
        if len(self.queue) <= _RECEIVE_QUEUE_HIGH // 2:
            self.protocol.release_reading()

    def disconnected(self, code: int) -> None:
        self.put({"type": "websocket.disconnect", "code": code})

    # -- the close after a failure, held for the app --------------------------------------------

    def _receives_queued(self) -> bool:
        return any(e["type"] == "websocket.receive" for e in self.queue)

    def hold_close(self, out: list[bytes]) -> bool:
        """Hold the engine's final bytes while the app has messages to take (at most ``CLOSE_TIMEOUT``)."""
        if self.deferred is not None:
            self.deferred.extend(out)
            return True
        if out[-1] == b"" and self._receives_queued():
            self.deferred = out
            self.protocol.loop.call_later(CLOSE_TIMEOUT, self.write_deferred)
            return True
        return False

    def write_deferred(self) -> None:
        out = self.deferred
        self.deferred = None
        if out and self.protocol.phase != CLOSED:
            self.protocol.write_out(out)


__all__ = ["AsgiWebSocket", "resume"]
