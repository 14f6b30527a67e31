"""The ASGI application: ``/ws``, ``/ws/stats``, the demo page. Runs on any ASGI server.

This is the portable path: each connection's outbox is drained by one writer task that awaits
the server's ``send`` per message, in order, so a server that applies backpressure in ``send``
(most do) holds the writer back and the hub's budget sees the backlog. On the fast path
(``server/protocol.py``) the hub writes frames to the transport itself.

Both paths open a connection with the same steps (``_precheck`` -> ``authenticate`` ->
``Hub.register`` -> accept -> ``hello`` -> ``connected``) and hand every client message to
the same pipeline (``Dispatcher.receive``); they differ only in how bytes reach the socket.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import orjson

from .._core import ENC_MSGPACK, KIND_TEXT, Payload
from ..auth import MSGPACK_SUBPROTOCOL, SUBPROTOCOL, Identity, OriginPolicy, token_from_scope
from ..connection import Connection
from ..dispatch import BinaryHandler, Dispatcher, MessageHandler, Pause, RoomHooks, UserHook, room_hook
from ..exceptions import Denied
from ..hub import Hub, client_ip
from ..messages import system_envelope, utc_timestamp
from ..metrics import CONTENT_TYPE, Exporter
from ..streams import Position
from .asgi_sink import AsgiSink
from .handshake import UpgradeRequest, denial_body
from .types import Receive, Scope, Send

log = logging.getLogger("fasthub")

#: seconds a new process waits for its broker before it writes its first metrics snapshot
#: (the --workers supervisor's sign that it serves)
BROKER_WAIT = 5.0

Authenticate = Callable[[Scope], "Awaitable[str | int | Identity | None] | str | int | Identity | None"]
ConnectionCallback = Callable[[Connection], "Awaitable[None] | None"]

_DEMO_PAGE = "demo.html"  # served at / only
_DASHBOARD_PAGE = "dashboard.html"  # served at /ws/dashboard only (live charts of the stats)
_STATIC_FILES = {
    "fasthub.js": "text/javascript; charset=utf-8",
    "demo.js": "text/javascript; charset=utf-8",
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
    """The subprotocol to select: ``fasthub.msgpack`` (envelopes in MessagePack) or ``fasthub``
    (JSON) when the client offers it; tokens ride beside them (``bearer.<jwt>``)."""
    offered = tuple(offered)
    if MSGPACK_SUBPROTOCOL in offered:
        return MSGPACK_SUBPROTOCOL
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


def route_path(scope: Scope) -> str:
    """The path below the mount point (servers and Starlette's Mount keep the prefix in ``path``)."""
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root) :]
    return path or "/"


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
        on_binary: BinaryHandler | None = None,
        ws_path: str = "/ws",
        stats_path: str | None = "/ws/stats",
        demo: bool = True,
        allowed_origins: Iterable[str] | None = None,
        stats_token: str | None = None,
        history_path: str | None = "/ws/history",
        metrics_path: str | None = "/metrics",
        health_path: str | None = "/healthz",
        ready_path: str | None = "/readyz",
        metrics_dir: str | None = None,
    ) -> None:
        self.hub = hub
        self.metrics_path = metrics_path
        self.health_path = health_path
        self.ready_path = ready_path
        self.exporter = Exporter(hub, metrics_dir or os.environ.get("FASTHUB_METRICS_DIR") or None)
        self._exporting: asyncio.Task[None] | None = None
        verify = getattr(authenticate, "verify", None)
        self.dispatcher = Dispatcher(
            hub,
            on_message,
            room_hook(can_join),
            room_hook(can_publish),
            can_message,
            verify_token=verify if callable(verify) else None,
            on_binary=on_binary,
        )
        self.origins = OriginPolicy(allowed_origins) if allowed_origins is not None else None
        #: set when uvicorn's proxy-headers middleware wraps the app (``find_hub_app``): the client's
        #: address is then the forwarded one, and ``Connection.ip`` records it
        self.proxied = False
        self.stats_token = stats_token
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.authenticate = authenticate
        self.ws_path = ws_path
        self._ws_raw_path = ws_path.encode()
        self._on_lost = self.disconnected  # one bound method shared by every connection (64 bytes each)
        self.stats_path = stats_path
        self.history_path = history_path
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
                loop = asyncio.get_running_loop()
                self.hub.attach(loop)
                self._exporting = loop.create_task(self._start_exporter(loop))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._exporting is not None and not self._exporting.done():
                    self._exporting.cancel()
                await self.shutdown()
                self.exporter.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start_exporter(self, loop: asyncio.AbstractEventLoop) -> None:
        """The first metrics snapshot is what the ``--workers`` supervisor takes as "this worker
        serves" (a rolling restart then drains the old one): with a broker, it waits until the
        broker is up, so that the clients the drain moves over can resume at once, for at most
        ``BROKER_WAIT`` seconds (a worker still starts while Redis is down)."""
        broker = self.hub.broker
        deadline = loop.time() + BROKER_WAIT
        while broker.remote and not getattr(broker, "up", True) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        self.exporter.start(loop)

    async def drain(self, rate: float | None = None, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """``Hub.drain`` (1012 to every connection, new ones refused, the broker flushed): what
        the first SIGTERM of ``fasthub serve`` runs before the server stops."""
        done = await self.hub.drain(rate, timeout)
        log.info("fasthub: drained (%s)", "every connection closed" if done else "timeout")
        return done

    async def shutdown(self, grace: float = 2.0) -> None:
        """Close every connection with 1001 and give their handlers ``grace`` seconds to finish."""
        hub = self.hub
        handlers = [c.sink.handler for c in hub.connections if isinstance(c.sink, AsgiSink) and c.sink.handler]
        hub.close_all(1001, "server shutting down")
        if handlers:
            await asyncio.wait(handlers, timeout=grace)
        await hub.broker.close()

    # -- websocket -----------------------------------------------------------------------------

    async def serve_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one WebSocket connection (usable from a Starlette/FastAPI route too)."""
        loop = asyncio.get_running_loop()
        hub = self.hub
        hub.attach(loop)
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
                refused = hub.admit_user(str(user_id))
                if refused is not None:
                    await self._deny(scope, send, refused.status, refused.reason)
                    return
                if hub.broker.remote:  # in a cluster: hear the user's channel before "connected"
                    waiter = hub.broker.user_ready(str(user_id))
                    if waiter is not None:
                        await asyncio.shield(waiter)  # shared by the user's opens: not cancelled for all
                        refused = hub.admit_user(str(user_id))  # others may have opened meanwhile
                        if refused is not None:
                            await self._deny(scope, send, refused.status, refused.reason)
                            return
        stream = None
        if user_id is not None:  # where the user's stream of direct messages is (``connected``)
            try:
                stream = await _resolve(hub.user_position(str(user_id)))
            except Exception as exc:
                log.debug("fasthub: reading the user's stream position failed: %s", exc)
        subprotocol = _subprotocol(scope.get("subprotocols") or ())
        fast = scope.get("extensions", {}).get("fasthub.transport")
        if fast is not None:
            # the fast path: the protocol accepts and then serves the connection from its
            # callbacks; this coroutine returns once it is set up (no task waits per connection)
            protocol = fast["protocol"]
            conn = hub.register(protocol, user_id, scope)
            if self.proxied and conn.ip is None:
                conn.ip = client_ip(scope)
            protocol.open_hub(conn, self.dispatcher, self._on_lost, subprotocol)  # the 101 goes first
            self.hello(conn, identity, stream)
            await self.connected(conn)
            return
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if subprotocol is not None:
            accept["subprotocol"] = subprotocol
        await send(accept)
        sink = AsgiSink(send, loop, asyncio.current_task())
        conn = hub.register(sink, user_id, scope)
        if subprotocol == MSGPACK_SUBPROTOCOL:
            conn.encoding = ENC_MSGPACK
        if self.proxied and conn.ip is None:
            conn.ip = client_ip(scope)
        self.hello(conn, identity, stream)
        writer = loop.create_task(sink.run_writer())
        try:
            await self.connected(conn)
            await self._receive_loop(conn, receive)
        except asyncio.CancelledError:
            if not sink.aborted:
                raise
        except Exception:
            log.exception("fasthub: connection %s failed", conn.id)
        finally:
            if not writer.done() and conn.closed and conn.queue is not None and not sink.aborted:
                # let a queued close go out while the peer is still there (before unregister
                # discards the queue)
                sink.flush()
                await asyncio.wait([writer], timeout=0.5)
            hub.unregister(conn)
            if not writer.done():
                writer.cancel()
            if self.on_disconnect is not None:
                try:
                    await _resolve(self.on_disconnect(conn))
                except Exception:
                    log.exception("fasthub: on_disconnect failed")

    @property
    def reads_scope(self) -> bool:
        """Whether opening a connection needs its ASGI scope (else ``open_direct`` may skip it).

        The steps that read it: ``authenticate`` and ``on_connect`` get it, the Origin check
        and the per-IP caps read its headers and client address, ``keep_scope`` keeps it, and
        behind a trusted proxy ``Connection.ip`` takes the forwarded address from it.
        """
        c = self.hub.config
        return bool(
            self.authenticate is not None
            or self.on_connect is not None
            or self.origins is not None
            or c.keep_scope
            or c.max_connections_per_ip
            or c.connect_rate_per_ip
            or self.proxied
        )

    def open_direct(self, protocol: Any, request: UpgradeRequest) -> bool:
        """Open a fast-path connection without an ASGI scope or coroutine, when nothing reads one.

        The same steps as ``serve_websocket`` (admission, register, accept, hello) minus the scope:
        a reconnect storm of 10,000 clients is mostly this function. False (nothing done) when
        the request is for another path or a hook needs the scope: the protocol then runs the
        app through ASGI.
        """
        return self._open(protocol, request.target, request.subprotocols, None)

    def open_plain(self, protocol: Any, target: bytes, accept: bytes) -> bool:
        """``open_direct`` for the usual upgrade (``_wire.plain_upgrade``: no subprotocol, no
        extension, nothing after the head), with its ``Sec-WebSocket-Accept`` already made; the
        caller has checked that ``reads_scope`` is false."""
        return self._open(protocol, target, (), accept)

    def _open(self, protocol: Any, target: bytes, subprotocols: Iterable[str], accept: bytes | None) -> bool:
        if target != self._ws_raw_path and target.partition(b"?")[0] != self._ws_raw_path:
            return False
        if accept is None and self.reads_scope:
            return False
        hub = self.hub
        if hub.loop is None:
            hub.attach(protocol.loop)
        refused = hub.admit(None)
        if refused is not None:
            protocol.deny(refused.status, refused.reason)
            return True
        conn = hub.register(protocol, None, None)
        subprotocol = _subprotocol(subprotocols)
        if subprotocol is None and protocol.open_plain(
            conn, self.dispatcher, self._on_lost, self._hello_text(conn), accept
        ):
            return True
        protocol.open_hub(conn, self.dispatcher, self._on_lost, subprotocol)
        self.hello(conn, None)
        return True

    def _precheck(self, scope: Scope) -> Denied | None:
        """Refusals that need no credential: Origin allow-list, then the connection caps."""
        if self.origins is not None and not self.origins.allows(scope):
            return Denied(403, "origin not allowed")
        return self.hub.admit(scope)

    def hello(self, conn: Connection, identity: Identity | None, stream: Position | None = None) -> None:
        """The credential's expiry, then the ``connected`` message (after the 101 on the fast path):
        the connection and user ids, the reconnect token (``session``) and, for a user with a
        stream of direct messages, where it is (``stream``)."""
        if identity is not None and identity.expires_at is not None:
            self.hub.set_expiry(conn, identity.expires_at)
        if conn.anonymous and stream is None:
            conn.send_payload(Payload(KIND_TEXT, self._hello_text(conn)))
            return
        token = self.hub.session_token(conn)
        hello: dict[str, Any] = {"event": "connected", "connection_id": conn.id, "user_id": conn.user_id}
        if token is not None:
            hello["session"] = token
        if stream is not None:
            hello["stream"] = {"offset": stream.offset, "epoch": stream.epoch}
        conn.send_json(system_envelope(hello))

    def _hello_text(self, conn: Connection) -> bytes:
        """An anonymous connection's ``connected`` envelope: its id, token and time are URL-safe
        ASCII, so it is written as text, byte for byte what orjson writes for ``hello``'s dict."""
        cid = conn.id
        token = self.hub.session_token(conn)
        session = "" if token is None else f',"session":"{token}"'
        return (
            f'{{"type":"system","payload":{{"event":"connected","connection_id":"{cid}",'
            f'"user_id":"anon-{cid}"{session}}},"timestamp":"{utc_timestamp()}"}}'
        ).encode()

    async def connected(self, conn: Connection) -> None:
        """Run ``on_connect``; then let go of the scope unless ``HubConfig.keep_scope``."""
        if self.on_connect is not None:
            try:
                await _resolve(self.on_connect(conn))
            except Exception:
                log.exception("fasthub: on_connect failed")
                conn.close(1011, "internal error")
        if not self.hub.config.keep_scope:
            conn.scope = None

    def disconnected(self, conn: Connection) -> None:
        """A fast-path connection is gone: unregister it, then tell the application."""
        self.hub.unregister(conn)
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
        """The portable path's reader: every message through the one pipeline, in order."""
        loop = asyncio.get_running_loop()
        pipeline = self.dispatcher.receive
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                now = conn.last_seen = loop.time()
                text = message.get("text")
                if text is not None:
                    result = pipeline(conn, text.encode(), False, now)
                else:
                    result = pipeline(conn, message.get("bytes") or b"", True, now)
                # a rate-limit refusal (a float) needs no pause here: a client that stays over
                # piles up strikes and is closed, as on the fast path; flow control pauses
                if result is None or result.__class__ is float:
                    continue
                if result.__class__ is Pause:
                    await asyncio.sleep(result)
                else:
                    await result  # type: ignore[misc]
            elif kind == "websocket.disconnect":
                if conn.close_code is None:
                    conn.close_code = int(message.get("code", 1005))
                    conn.close_reason = str(message.get("reason") or "")
                return

    async def _deny(self, scope: Scope, send: Send, status: int, reason: str) -> None:
        extensions = scope.get("extensions", {})
        if "fasthub.transport" not in extensions:  # the fast path counts its answers itself
            self.hub.handshake_failed(status)
        if "websocket.http.response" in extensions:
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
        if path == self.health_path and path is not None:
            await self._health(send)
        elif path == self.ready_path and path is not None:
            ready, why = self.hub.ready()
            body = orjson.dumps({"ready": ready, "reason": why, "connections": len(self.hub.connections)})
            await _respond(send, 200 if ready else 503, body, b"application/json", [(b"cache-control", b"no-store")])
        elif self.metrics_path is not None and path == self.metrics_path:
            if self.stats_token is not None and not _token_matches(scope, self.stats_token):
                await _respond(send, 401, b"metrics need a token\n", b"text/plain", [(b"www-authenticate", b"Bearer")])
                return
            await _respond(send, 200, self.exporter.render(), CONTENT_TYPE, [(b"cache-control", b"no-store")])
        elif self.stats_path is not None and path == self.stats_path:
            if self.stats_token is not None and not _token_matches(scope, self.stats_token):
                await _respond(send, 401, b"stats need a token\n", b"text/plain", [(b"www-authenticate", b"Bearer")])
                return
            await _respond(
                send,
                200,
                orjson.dumps(await self.hub.cluster_stats()),
                b"application/json",
                [(b"cache-control", b"no-store")],
            )
        elif self.history_path is not None and path == self.history_path:
            await self._history(scope, send)
        elif self.demo and path == "/ws/dashboard":
            await self._dashboard(scope, send)
        elif self.demo and path in ("/", "/index.html"):
            root = html.escape(scope.get("root_path", ""), quote=True)
            page = (_static(_DEMO_PAGE) or b"").replace(b"{{FASTHUB_ROOT}}", root.encode())
            await _respond(send, 200, page, b"text/html; charset=utf-8", [(b"cache-control", b"no-cache")])
        elif self.demo and path.startswith("/static/") and path[8:] in _STATIC_FILES and (data := _static(path[8:])):
            content_type = _STATIC_FILES[path[8:]].encode()
            await _respond(send, 200, data, content_type, [(b"cache-control", b"no-cache")])
        else:
            await _respond(send, 404, b"not found", b"text/plain")

    async def _dashboard(self, scope: Scope, send: Send) -> None:
        """The live stats page, with the mount point and the stats path filled in (it polls them)."""
        root = html.escape(scope.get("root_path", ""), quote=True).encode()
        stats = html.escape(self.stats_path or "", quote=True).encode()
        page = (_static(_DASHBOARD_PAGE) or b"").replace(b"{{FASTHUB_ROOT}}", root)
        page = page.replace(b"{{FASTHUB_STATS_PATH}}", stats)
        await _respond(send, 200, page, b"text/html; charset=utf-8", [(b"cache-control", b"no-cache")])

    async def _health(self, send: Send) -> None:
        """Alive: answering at all means the loop runs; late timers in the last 10 s mean it
        is blocked for too long at times (``HubConfig.health_max_lag``)."""
        hub = self.hub
        lag = hub.loop_monitor.worst()
        ok = lag < hub.config.health_max_lag
        body = orjson.dumps({"ok": ok, "loop_lag_s": round(lag, 6), "pid": os.getpid()})
        await _respond(send, 200 if ok else 503, body, b"application/json", [(b"cache-control", b"no-store")])

    async def _history(self, scope: Scope, send: Send) -> None:
        """A room's stored messages over HTTP, for clients that load before they connect.

        ``since`` (with ``epoch``, default the room's) returns what came after it, as a join with
        that position would; without it, the last ``limit`` messages (default ``recovery_max``).
        The answer: ``{room, epoch, offset, recovered, reason?, messages: [envelopes]}``.
        """
        hub = self.hub
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        room = (query.get("room") or [""])[0]
        if not hub.config.valid_room_name(room):
            await _respond(send, 400, b'{"error":"room: a valid room name is required"}', b"application/json")
            return
        try:
            since = int(query["since"][0]) if "since" in query else None
            limit = int(query["limit"][0]) if "limit" in query else hub.config.recovery_max
            if (since is not None and since < 0) or not 0 < limit <= hub.config.recovery_max:
                raise ValueError
        except ValueError:
            text = f'{{"error":"since: an offset >= 0; limit: 1-{hub.config.recovery_max}"}}'.encode()
            await _respond(send, 400, text, b"application/json")
            return
        user_id: Any = None
        if self.authenticate is not None:
            try:
                user_id = await _resolve(self.authenticate(scope))
            except Denied as exc:
                await _respond(send, exc.status, denial_body(exc.status, exc.reason), b"application/json")
                return
            if isinstance(user_id, Identity):
                user_id = user_id.user_id
        hook = self.dispatcher.can_join
        if hook is not None:
            probe = hub.probe_connection(None if user_id is None else str(user_id), scope)
            if not await _resolve(hook(probe, room)):
                await _respond(send, 403, b'{"error":"not allowed to read this room"}', b"application/json")
                return
        try:
            answer = await _resolve(hub.room_position(room))
            if answer is None:
                await _respond(send, 404, b'{"error":"this room keeps no history"}', b"application/json")
                return
            epoch = (query.get("epoch") or [answer.epoch])[0]
            if since is not None:
                recovery = await _resolve(hub.room_history(room, Position(since, epoch), limit))
            else:  # the last ``limit``, as far back as the history still reaches (a binary search)
                top = answer.offset
                want = min(limit, top)
                recovery = await _resolve(hub.room_history(room, Position(top - want, epoch), limit))
                if not recovery.recovered:
                    low, high = 0, want  # ``low`` back is there (0: nothing), ``high`` back is not
                    recovery = await _resolve(hub.room_history(room, Position(top, epoch), limit))
                    while high - low > 1:
                        mid = (low + high) // 2
                        probe = await _resolve(hub.room_history(room, Position(top - mid, epoch), limit))
                        if probe.recovered:
                            low, recovery = mid, probe
                        else:
                            high = mid
        except Exception as exc:
            log.debug("fasthub: history of %r failed: %s", room, exc)
            await _respond(send, 503, b'{"error":"the history cannot be read now"}', b"application/json")
            return
        head: dict[str, Any] = {
            "room": room,
            "epoch": recovery.position.epoch,
            "offset": recovery.position.offset,
            "recovered": recovery.recovered,
        }
        if not recovery.recovered:
            head["reason"] = recovery.reason
        body = orjson.dumps(head)[:-1] + b',"messages":[' + b",".join(p.data for _, p in recovery.payloads) + b"]}"
        await _respond(send, 200, body, b"application/json", [(b"cache-control", b"no-store")])


_static_cache: dict[str, bytes] = {}


def _static(name: str) -> bytes | None:
    """A file of ``fasthub/static`` listed in ``_STATIC_FILES``; None for any other name or a missing file."""
    data = _static_cache.get(name)
    if data is None:
        if name not in _STATIC_FILES and name not in (_DEMO_PAGE, _DASHBOARD_PAGE):
            return None
        try:
            data = resources.files("fasthub").joinpath("static", name).read_bytes()
        except OSError:
            return None
        _static_cache[name] = data
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
    on_binary: BinaryHandler | None = None,
    ws_path: str = "/ws",
    stats_path: str | None = "/ws/stats",
    demo: bool = True,
    allowed_origins: Iterable[str] | None = None,
    stats_token: str | None = None,
    history_path: str | None = "/ws/history",
    metrics_path: str | None = "/metrics",
    health_path: str | None = "/healthz",
    ready_path: str | None = "/readyz",
    metrics_dir: str | None = None,
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
        on_binary: ``(conn, data)`` for every binary message, sync or async (without it a
            binary frame gets the ``unsupported_data`` error); on a ``fasthub.msgpack``
            connection, for every MessagePack ``bin`` value a client sends.
        ws_path, stats_path: endpoint paths below the mount point (``stats_path=None`` disables
            the stats endpoint).
        demo: serve the demo page at ``/``.
        allowed_origins: ``Origin`` allow-list (patterns); other origins get 403.
        stats_token: require ``Authorization: Bearer <token>`` (or ``?token=``) for the stats.
        history_path: ``GET <history_path>?room=R[&since=N&epoch=E&limit=K]``: a room's stored
            messages, authenticated like the socket and allowed by ``can_join`` (None disables).
        metrics_path: Prometheus metrics (``stats_token`` protects them too; None disables).
        health_path, ready_path: liveness (the event loop answers in time) and readiness (not
            draining, broker connected, below ``max_connections``) as 200 or 503 with a JSON
            body; never behind the token (None disables).
        metrics_dir: a folder shared by the processes of one port, whose metrics ``/metrics``
            then adds up (default: env ``FASTHUB_METRICS_DIR``; ``--workers`` sets it).
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
        on_binary=on_binary,
        ws_path=ws_path,
        stats_path=stats_path,
        demo=demo,
        allowed_origins=allowed_origins,
        stats_token=stats_token,
        history_path=history_path,
        metrics_path=metrics_path,
        health_path=health_path,
        ready_path=ready_path,
        metrics_dir=metrics_dir,
    )
