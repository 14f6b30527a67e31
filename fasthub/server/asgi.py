"""The ASGI application: ``/ws``, ``/ws/stats``, the demo page. Runs on any ASGI server.

This is the portable path: each connection's outbox is drained by one writer task that awaits
the server's ``send`` per message, in order, so a server that applies backpressure in ``send``
(most do) holds the writer back and the hub's budget sees the backlog. On the fast path
(``server/uvicorn.py``) the hub writes frames to the transport itself.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import Any

import orjson

from .._core import KIND_CLOSE
from ..auth import SUBPROTOCOL, Identity, OriginPolicy, token_from_scope
from ..connection import Connection
from ..dispatch import Dispatcher, MessageHandler, RoomHooks, UserHook, room_hook
from ..exceptions import Denied
from ..hub import Hub
from ..messages import MessageType, utc_timestamp
from .handshake import denial_body
from .types import Receive, Scope, Send

log = logging.getLogger("fasthub")

Authenticate = Callable[[Scope], "Awaitable[str | int | Identity | None] | str | int | Identity | None"]
ConnectionCallback = Callable[[Connection], "Awaitable[None] | None"]

_STATIC_FILES = {
    "fasthub.js": "text/javascript; charset=utf-8",
    "demo.js": "text/javascript; charset=utf-8",
    "demo.css": "text/css; charset=utf-8",
}
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


async def _resolve(value: Any) -> Any:
    if inspect.isawaitable(value):
        if asyncio.current_task() is None:
            # started eagerly by the fast path (no task yet): move into one before running
            # the hook, which may rely on it (asyncio.timeout, anyio)
            await asyncio.sleep(0)
        return await value
    return value


_background: set[asyncio.Future[Any]] = set()  # on_disconnect coroutines of fast-path connections


def _finished(task: asyncio.Future[Any]) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("fasthub: on_disconnect failed", exc_info=task.exception())


def _subprotocol(offered: Iterable[str]) -> str | None:
    """The subprotocol to select: ``fasthub`` when the client offers it (tokens ride beside it)."""
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


def route_path(scope: Scope) -> str:
    """The path below the mount point (servers and Starlette's Mount keep the prefix in ``path``)."""
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root) :]
    return path or "/"


class AsgiSink:
    """Drains one connection's outbox through ASGI ``send``, in order, with one writer task."""

    __slots__ = ("_wake", "aborted", "conn", "handler", "loop", "send", "write_started")

    def __init__(self, send: Send, loop: asyncio.AbstractEventLoop, handler: asyncio.Task[Any] | None) -> None:
        self.send = send
        self.loop = loop
        self.handler = handler
        self.conn: Connection | None = None  # set by Hub._register; also the outbox it drains
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
        """Stop serving the connection: the app returns and the server drops the socket."""
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
        while True:
            if outbox.queue is None:
                self._wake = loop.create_future()
                await self._wake
                self._wake = None
            for p in outbox.take():
                self.write_started = loop.time()
                await send(p.asgi())
                outbox.done(p.nbytes)
                if p.kind == KIND_CLOSE:
                    self.write_started = 0.0
                    return
            self.write_started = 0.0


class FasthubApp:
    """ASGI app serving a hub; build it with ``create_app``."""

    def __init__(
        self,
        hub: Hub,
        *,
        on_message: MessageHandler | None = None,
        on_connect: ConnectionCallback | None = None,
        on_disconnect: ConnectionCallback | None = None,
        authenticate: Authenticate | None = None,
        can_join: RoomHooks | None = None,
        can_publish: RoomHooks | None = None,
        can_message: UserHook | None = None,
        ws_path: str = "/ws",
        stats_path: str | None = "/ws/stats",
        demo: bool = True,
        allowed_origins: Iterable[str] | None = None,
        stats_token: str | None = None,
    ) -> None:
        self.hub = hub
        verify = getattr(authenticate, "verify", None)
        self.dispatcher = Dispatcher(
            hub,
            on_message,
            room_hook(can_join),
            room_hook(can_publish),
            can_message,
            verify_token=verify if callable(verify) else None,
        )
        self.origins = OriginPolicy(allowed_origins) if allowed_origins is not None else None
        self.stats_token = stats_token
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.authenticate = authenticate
        self.ws_path = ws_path
        self._on_lost = self._lost  # one bound method shared by every connection (64 bytes each)
        self.stats_path = stats_path
        self.demo = demo

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            if route_path(scope) == self.ws_path:
                await self.serve_websocket(scope, receive, send)
            else:
                await receive()
                await send({"type": "websocket.close", "code": 1008, "reason": "no such endpoint"})
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    # -- lifespan ------------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.hub._attach(asyncio.get_running_loop())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def shutdown(self, grace: float = 2.0) -> None:
        """Close every connection with 1001 and give their handlers ``grace`` seconds to finish."""
        hub = self.hub
        handlers = [
            c.sink.handler for c in hub._connections.values() if isinstance(c.sink, AsgiSink) and c.sink.handler
        ]
        hub.close_all(1001, "server shutting down")
        if handlers:
            await asyncio.wait(handlers, timeout=grace)

    # -- websocket -----------------------------------------------------------------------------

    async def serve_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one WebSocket connection (usable from a Starlette/FastAPI route too)."""
        loop = asyncio.get_running_loop()
        hub = self.hub
        hub._attach(loop)
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        refused = self._precheck(scope)
        if refused is not None:
            await self._deny(scope, send, refused.status, refused.reason)
            return
        identity: Identity | None = None
        user_id: Any = None
        if self.authenticate is not None:
            try:
                user_id = await _resolve(self.authenticate(scope))
            except Denied as exc:
                await self._deny(scope, send, exc.status, exc.reason)
                return
            except Exception:
                log.exception("fasthub: authenticate hook failed")
                await self._deny(scope, send, 500, "authentication failed")
                return
            if isinstance(user_id, Identity):
                identity = user_id
                user_id = identity.user_id
            if user_id is not None:
                refused = hub._admit_user(str(user_id))
                if refused is not None:
                    await self._deny(scope, send, refused.status, refused.reason)
                    return
        subprotocol = _subprotocol(scope.get("subprotocols") or ())
        fast = scope.get("extensions", {}).get("fasthub.transport")
        if fast is not None:
            await self._serve_fast(fast["protocol"], scope, user_id, identity, subprotocol)
            return
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if subprotocol is not None:
            accept["subprotocol"] = subprotocol
        await send(accept)
        sink = AsgiSink(send, loop, asyncio.current_task())
        conn = hub._register(sink, user_id, scope)
        writer = loop.create_task(sink.run_writer())
        self._hello(conn, identity)
        try:
            await self._connected(conn)
            await self._receive_loop(conn, receive)
        except asyncio.CancelledError:
            if not sink.aborted:
                raise
        except Exception:
            log.exception("fasthub: connection %s failed", conn.id)
        finally:
            if not writer.done() and conn.closed and conn.queue is not None and not sink.aborted:
                # let a queued close go out while the peer is still there (before _unregister
                # discards the queue)
                sink.flush()
                await asyncio.wait([writer], timeout=0.5)
            hub._unregister(conn)
            if not writer.done():
                writer.cancel()
            if self.on_disconnect is not None:
                try:
                    await _resolve(self.on_disconnect(conn))
                except Exception:
                    log.exception("fasthub: on_disconnect failed")

    def opens_directly(self, raw_path: bytes) -> bool:
        """Whether an upgrade to ``raw_path`` can be served by ``open_direct``.

        That is when nothing would read the scope: no authenticate or on_connect hook, no Origin
        list, no per-IP caps, ``keep_scope`` off, and the request is for ``ws_path`` itself.
        """
        if self.authenticate is not None or self.on_connect is not None or self.origins is not None:
            return False
        c = self.hub.config
        if c.keep_scope or c.max_connections_per_ip or c.connect_rate_per_ip:
            return False
        return raw_path == self.ws_path.encode()

    def open_direct(self, protocol: Any, subprotocols: list[str]) -> None:
        """Open a fast-path connection without an ASGI scope or coroutine (see ``opens_directly``).

        The same steps as ``serve_websocket`` takes for such an app, minus everything nobody
        would look at: a reconnect storm of 10,000 clients is mostly this function.
        """
        hub = self.hub
        if hub._loop is None:
            hub._attach(protocol.loop)
        refused = hub._admit(None)
        if refused is not None:
            protocol.deny(refused.status, refused.reason)
            return
        self._open_fast(protocol, None, None, None, _subprotocol(subprotocols))

    def _precheck(self, scope: Scope) -> Denied | None:
        """Refusals that need no credential: Origin allow-list, then the connection caps."""
        if self.origins is not None and not self.origins.allows(scope):
            return Denied(403, "origin not allowed")
        return self.hub._admit(scope)

    @staticmethod
    def _hello(conn: Connection, identity: Identity | None) -> None:
        if identity is not None and identity.expires_at is not None:
            conn.hub._set_expiry(conn, identity.expires_at)
        conn.send_json(
            {
                "type": MessageType.SYSTEM.value,
                "payload": {"event": "connected", "connection_id": conn.id, "user_id": conn.user_id},
                "timestamp": utc_timestamp(),
            }
        )

    async def _serve_fast(
        self, protocol: Any, scope: Scope, user_id: Any, identity: Identity | None, subprotocol: str | None
    ) -> None:
        """Fast path: the protocol feeds the dispatcher from its callbacks and writes frames itself.

        The 101 and the ``connected`` message leave in one write; this coroutine returns once
        the connection is set up, so no task waits per connection.
        """
        conn = self._open_fast(protocol, scope, user_id, identity, subprotocol)
        await self._connected(conn)

    def _open_fast(
        self, protocol: Any, scope: Scope | None, user_id: Any, identity: Identity | None, subprotocol: str | None
    ) -> Connection:
        """Register the connection, accept it on the protocol, queue the ``connected`` message."""
        conn = self.hub._register(protocol, user_id, scope)
        protocol.open_hub(conn, self.dispatcher, self._on_lost, subprotocol)
        self._hello(conn, identity)
        return conn

    async def _connected(self, conn: Connection) -> None:
        """Run ``on_connect``; then let go of the scope unless ``HubConfig.keep_scope``."""
        if self.on_connect is not None:
            try:
                await _resolve(self.on_connect(conn))
            except Exception:
                log.exception("fasthub: on_connect failed")
                conn.close(1011, "internal error")
        if not self.hub.config.keep_scope:
            conn.scope = None

    def _lost(self, conn: Connection) -> None:
        """A fast-path connection is gone: unregister it, then tell the application."""
        self.hub._unregister(conn)
        if self.on_disconnect is None:
            return
        try:
            result = self.on_disconnect(conn)
        except Exception:
            log.exception("fasthub: on_disconnect failed")
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            _background.add(task)
            task.add_done_callback(_finished)

    async def _receive_loop(self, conn: Connection, receive: Receive) -> None:
        hub = self.hub
        loop = asyncio.get_running_loop()
        dispatcher = self.dispatcher
        max_size = hub.config.max_message_size
        rate, byte_rate = hub.config.rate_limit, hub.config.rate_limit_bytes
        limited = bool(rate or byte_rate)
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                now = conn.last_seen = loop.time()
                text = message.get("text")
                if text is not None:
                    n = len(text)
                    if n > max_size or (n * 4 > max_size and len(text.encode()) > max_size):
                        conn._queue_close(1009, "message too big", discard=False)
                        continue
                    hub.bytes_in += n
                    if limited and conn.spend(now, n, rate, byte_rate):
                        # refused and counted; no sleep here: a client that stays over must
                        # pile up strikes and be closed, like on the fast path
                        dispatcher.rate_limited(conn)
                        continue
                    if not conn.closed:
                        pending = dispatcher.dispatch(conn, text)
                        if pending is not None:
                            await pending
                else:
                    data = message.get("bytes") or b""
                    if len(data) > max_size:
                        conn._queue_close(1009, "message too big", discard=False)
                        continue
                    hub.bytes_in += len(data)
                    if limited and conn.spend(now, len(data), rate, byte_rate):
                        dispatcher.rate_limited(conn)
                        continue
                    if not conn.closed:
                        dispatcher.binary(conn)
            elif kind == "websocket.disconnect":
                if conn.close_code is None:
                    conn.close_code = int(message.get("code", 1005))
                    conn.close_reason = str(message.get("reason") or "")
                return

    async def _deny(self, scope: Scope, send: Send, status: int, reason: str) -> None:
        if "websocket.http.response" in scope.get("extensions", {}):
            body = denial_body(status, reason)
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": reason})

    # -- http ----------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope)
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed", b"text/plain", [(b"allow", b"GET, HEAD")])
            return
        if self.stats_path is not None and path == self.stats_path:
            if self.stats_token is not None and not _token_matches(scope, self.stats_token):
                await _respond(send, 401, b"stats need a token\n", b"text/plain", [(b"www-authenticate", b"Bearer")])
                return
            await _respond(
                send,
                200,
                orjson.dumps(self.hub.stats()),
                b"application/json",
                [(b"cache-control", b"no-store")],
            )
        elif self.demo and path in ("/", "/index.html"):
            root = html.escape(scope.get("root_path", ""), quote=True)
            page = _static("demo.html").replace(b"{{FASTHUB_ROOT}}", root.encode())
            await _respond(send, 200, page, b"text/html; charset=utf-8", [(b"cache-control", b"no-cache")])
        elif self.demo and path.startswith("/static/") and path[8:] in _STATIC_FILES:
            name = path[8:]
            await _respond(send, 200, _static(name), _STATIC_FILES[name].encode(), [(b"cache-control", b"no-cache")])
        else:
            await _respond(send, 404, b"not found", b"text/plain")


_static_cache: dict[str, bytes] = {}


def _static(name: str) -> bytes:
    data = _static_cache.get(name)
    if data is None:
        data = _static_cache[name] = resources.files("fasthub").joinpath("static", name).read_bytes()
    return data


async def _respond(
    send: Send, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *_SECURITY_HEADERS,
    ]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _token_matches(scope: Scope, expected: str) -> bool:
    token = token_from_scope(scope) or ""
    return hmac.compare_digest(token.encode(), expected.encode())


def create_app(
    hub: Hub | None = None,
    *,
    on_message: MessageHandler | None = None,
    on_connect: ConnectionCallback | None = None,
    on_disconnect: ConnectionCallback | None = None,
    authenticate: Authenticate | None = None,
    can_join: RoomHooks | None = None,
    can_publish: RoomHooks | None = None,
    can_message: UserHook | None = None,
    ws_path: str = "/ws",
    stats_path: str | None = "/ws/stats",
    demo: bool = True,
    allowed_origins: Iterable[str] | None = None,
    stats_token: str | None = None,
) -> FasthubApp:
    """A raw ASGI app serving ``hub`` (a new one with default config if omitted).

    Args:
        on_message: ``(conn, msg)`` for every decoded client message, sync or async; return
            ``True`` to take the message over (the built-in handling is skipped).
        on_connect, on_disconnect: ``(conn)`` callbacks, sync or async.
        authenticate: ``(scope) -> user id | Identity | None`` (None: anonymous, a user of its
            own); raise ``fasthub.Denied(status)`` to refuse before the upgrade. An ``Identity``
            with ``expires_at`` closes the connection with 4001 then, unless a ``refresh``
            message brings a new token (needs an authenticator with ``verify``, like
            ``jwt_authenticator``).
        can_join, can_publish: ``(conn, room) -> bool``, or a mapping of room-name patterns
            (``fnmatch``, first match wins) to such hooks or booleans; ``can_publish`` replaces
            the default rule that only members may post to a room.
        can_message: ``(conn, to_user) -> bool`` for ``user_message``.
        ws_path, stats_path: endpoint paths below the mount point (``stats_path=None`` disables
            the stats endpoint).
        demo: serve the demo page at ``/``.
        allowed_origins: ``Origin`` allow-list (patterns); other origins get 403.
        stats_token: require ``Authorization: Bearer <token>`` (or ``?token=``) for the stats.
    """
    return FasthubApp(
        hub if hub is not None else Hub(),
        on_message=on_message,
        on_connect=on_connect,
        on_disconnect=on_disconnect,
        authenticate=authenticate,
        can_join=can_join,
        can_publish=can_publish,
        can_message=can_message,
        ws_path=ws_path,
        stats_path=stats_path,
        demo=demo,
        allowed_origins=allowed_origins,
        stats_token=stats_token,
    )
