"""``fasthub.client``: an asyncio client that keeps its place in every stream across reconnects.

    async with Client("ws://127.0.0.1:8080/ws", token=jwt) as client:
        await client.join("lobby")
        ack = await client.publish("lobby", {"text": "hi"})   # Ack(offset, epoch)
        async for msg in client:                                # dicts, in order, once each
            ...

What it does for the application:
- **Positions**: the offset and epoch of every room it joined and of its user's stream, updated
  from every stored message; a message at or below the known offset (a duplicate) is dropped,
  and every stored message it yields gets ``epoch`` (its stream's, as the client knows it).
- **Reconnect** with exponential backoff and full jitter (AWS's "Exponential Backoff And
  Jitter"), then ``resume`` with the session token and the positions; if the server no longer
  has the session, each room is joined again with its position. Either way the messages missed
  meanwhile arrive first, in order.
- **Not recovered**: a room whose gap cannot be filled (``recovered: false``, or a ``resync``
  event) is reported in ``unrecovered`` and yielded as its ``system`` message, so the
  application reloads that room from its own source.
- **Acks**: ``publish``/``send_to_user`` return the server's ack; each publish has an
  ``idempotency_key``, so one that is retried after a reconnect or an ``unavailable`` error is
  stored once.
- **Presence and typing**: ``presence``/``presence_stats`` ask who is in a room; ``typing``
  sends a typing indicator (fire and forget); others' ``typing`` events arrive as messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
import ormsgpack
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from .auth import MSGPACK_SUBPROTOCOL

log = logging.getLogger("fasthub.client")

#: server messages that answer a request when they carry its id
_REPLIES = frozenset({"system", "presence", "presence_stats"})

__all__ = ["Ack", "Client", "ClientError"]


@dataclass(frozen=True, slots=True)
class Ack:
    """Where a published message was stored (offset 0, epoch None: a room without history)."""

    offset: int
    epoch: str | None
    duplicate: bool = False


class ClientError(Exception):
    """An ``error`` the server answered a request with (``code``, ``message``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Client:
    """One logical connection to a fasthub server, whatever happens to the sockets under it.

    Args:
        url: ``ws://host:port/ws``.
        token: a credential sent as ``?token=`` (a JWT for ``--jwt-secret``), or None.
        query: more query parameters for the WebSocket URL.
        reconnect: reconnect (and resume) when the socket drops; False: the iterator ends.
        backoff_min, backoff_max: the reconnect delay grows from ``backoff_min`` to at most
            ``backoff_max`` seconds (doubling), each wait a random fraction of it (full jitter).
        request_timeout: seconds a join, publish or resume waits for its answer, reconnects
            included; then ``TimeoutError``.
        format: ``"msgpack"`` offers the ``fasthub.msgpack`` subprotocol (envelopes in
            MessagePack, binary frames); a server that does not select it is spoken to in JSON.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        query: dict[str, str] | None = None,
        reconnect: bool = True,
        backoff_min: float = 0.1,
        backoff_max: float = 5.0,
        request_timeout: float = 10.0,
        format: Literal["json", "msgpack"] = "json",
    ) -> None:
        if format not in ("json", "msgpack"):
            raise ValueError("format must be 'json' or 'msgpack'")
        #: the envelopes' encoding asked for; ``protocol`` says what the server chose
        self.format = format
        self.protocol: str | None = None
        params = dict(query or {})
        if token is not None:
            params["token"] = token
        parts = urlsplit(url)
        extra = urlencode(params)
        query_string = "&".join(q for q in (parts.query, extra) if q)
        self.url = urlunsplit((parts.scheme, parts.netloc, parts.path, query_string, parts.fragment))
        self.reconnect = reconnect
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.request_timeout = request_timeout
        #: room -> {"offset", "epoch"} of the last stored message seen (or the join's position)
        self.positions: dict[str, dict[str, Any]] = {}
        #: the user's stream of direct messages, likewise (authenticated users)
        self.user_position: dict[str, Any] | None = None
        #: (room or "user", reason) of every gap the server could not fill
        self.unrecovered: list[tuple[str, str]] = []
        #: the same gaps with the positions around them: ``{room, reason, from, to}`` (what was
        #: published after ``from`` and up to ``to`` may be missing)
        self.gaps: list[dict[str, Any]] = []
        self.session: str | None = None
        self.connection_id: str | None = None
        self.user_id: str | None = None
        self.reconnects = 0
        self.duplicates_dropped = 0
        self._ws: ClientConnection | None = None
        self._inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._waiting: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._rooms: set[str] = set()
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closed = False

    # -- life --------------------------------------------------------------------------------------

    async def connect(self) -> Client:
        """Open the first connection (raises if the server cannot be reached or refuses)."""
        await self._open()
        self._runner = asyncio.get_running_loop().create_task(self._run())
        return self

    async def close(self) -> None:
        self._closed = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        if self._ws is not None:
            await self._ws.close()
        self._inbox.put_nowait(None)

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def drop(self) -> None:
        """Abort the socket now, as a network failure would (tests and demos)."""
        if self._ws is not None:
            self._ws.transport.abort()

    # -- requests ----------------------------------------------------------------------------------

    async def join(self, room: str) -> dict[str, Any]:
        """Join ``room`` (with its known position if it had one); the ``joined`` payload."""
        reply = await self._request({"type": "join_room", "room": room, **self._since(room)}, ("unavailable",))
        self._rooms.add(room)
        return reply["payload"]  # type: ignore[no-any-return]

    async def leave(self, room: str) -> None:
        self._rooms.discard(room)
        self.positions.pop(room, None)
        await self._request({"type": "leave_room", "room": room})

    async def presence(self, room: str) -> dict[str, Any]:
        """Who is in ``room``: user id -> ``{"connections": n, "info": {...}}`` (``info`` only
        where the server's application exposes some)."""
        reply = await self._request({"type": "presence", "room": room}, ("unavailable",))
        return (reply.get("payload") or {}).get("presence", {})  # type: ignore[no-any-return]

    async def presence_stats(self, room: str) -> dict[str, int]:
        """``{"num_users": n, "num_connections": m}`` of ``room``."""
        reply = await self._request({"type": "presence_stats", "room": room}, ("unavailable",))
        body: dict[str, int] = reply.get("payload") or {}
        return body

    async def typing(self, room: str) -> None:
        """Tell the other members of ``room`` that this user is typing. Not acknowledged and not
        retried: while disconnected it is dropped, and the server drops the ones sent more often
        than its ``typing_interval``; call it on every keystroke if convenient."""
        ws = self._ws
        if ws is None or not self._connected.is_set():
            return
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(self._encode({"type": "typing", "room": room}))

    async def publish(self, room: str, payload: Any, *, metadata: dict[str, Any] | None = None) -> Ack:
        """Send a ``room_message``; returns its ack once stored (retried until then)."""
        msg: dict[str, Any] = {"type": "room_message", "room": room, "payload": payload}
        if metadata is not None:
            msg["metadata"] = metadata
        return await self._publish(msg)

    async def send_to_user(self, user_id: str, payload: Any) -> Ack:
        """Send a ``user_message``; returns its ack once stored."""
        return await self._publish({"type": "user_message", "to": str(user_id), "payload": payload})

    async def _publish(self, msg: dict[str, Any]) -> Ack:
        msg["idempotency_key"] = uuid.uuid4().hex
        reply = await self._request(msg, retry_codes=("unavailable",))
        body = reply.get("payload") or {}
        return Ack(int(body.get("offset", 0)), body.get("epoch"), bool(body.get("duplicate", False)))

    async def _request(self, msg: dict[str, Any], retry_codes: tuple[str, ...] = ()) -> dict[str, Any]:
        """Send ``msg`` with a fresh id and wait for the answer with that id; resent after a
        reconnect (and after an error in ``retry_codes``) until ``request_timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        delay = self.backoff_min
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no answer to {msg['type']} within {self.request_timeout} s")
            rid = f"c{next(self._ids)}"
            fut: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._waiting[rid] = fut
            try:
                await asyncio.wait_for(self._connected.wait(), remaining)
                assert self._ws is not None
                with contextlib.suppress(websockets.ConnectionClosed):
                    await self._ws.send(self._encode({**msg, "id": rid}))
                reply = await asyncio.wait_for(asyncio.shield(fut), max(0.001, deadline - loop.time()))
            except (TimeoutError, ConnectionError):
                if loop.time() >= deadline:
                    raise TimeoutError(f"no answer to {msg['type']} within {self.request_timeout} s") from None
                continue  # the socket dropped before the answer: send again on the next one
            finally:
                self._waiting.pop(rid, None)
            if reply["type"] != "error":
                return reply
            code = reply["payload"]["code"]
            if code not in retry_codes:
                raise ClientError(code, reply["payload"]["message"])
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(self.backoff_max, delay * 2)

    def _since(self, room: str) -> dict[str, Any]:
        at = self.positions.get(room)
        return {"since": at} if at is not None and at.get("epoch") is not None else {}

    # -- messages ----------------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            msg = await self._inbox.get()
            if msg is None:
                return
            yield msg

    async def receive(self, timeout: float | None = None) -> dict[str, Any]:  # noqa: ASYNC109 (a convenience)
        """The next message (``TimeoutError`` after ``timeout``; ``EOFError`` once closed)."""
        msg = await asyncio.wait_for(self._inbox.get(), timeout)
        if msg is None:
            self._inbox.put_nowait(None)
            raise EOFError("the client is closed")
        return msg

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        rid = msg.get("id")
        if kind in ("ack", "error") or (kind in _REPLIES and rid is not None and rid in self._waiting):
            fut = self._waiting.get(rid)
            if fut is not None and not fut.done():
                if kind == "system":
                    self._position_from(msg)
                fut.set_result(msg)
                return
        if kind == "system":
            self._position_from(msg)
        elif "offset" in msg:
            if kind == "room_message" or (kind != "user_message" and msg.get("room") is not None):
                at = self.positions.get(msg.get("room", ""))
            else:
                at = self.user_position
            offset = msg["offset"]
            if at is not None and offset <= at["offset"]:
                self.duplicates_dropped += 1
                return
            if at is not None:
                at["offset"] = offset
                msg["epoch"] = at["epoch"]  # live messages carry no epoch: the stream's, as known
        self._inbox.put_nowait(msg)

    def _position_from(self, msg: dict[str, Any]) -> None:
        body = msg.get("payload") or {}
        event = body.get("event")
        room = body.get("room")
        before = self.positions.get(room) if room is not None else None
        if event in ("joined", "resync") and room is not None and "epoch" in body:
            self.positions[room] = {"offset": body["offset"], "epoch": body["epoch"]}
        if body.get("recovered") is False:
            self.unrecovered.append((room or "user", str(body.get("reason"))))
            self.gaps.append({"room": room, "reason": body.get("reason"), "from": before,
                              "to": self.positions.get(room) if room is not None else None})

    # -- the socket under it -----------------------------------------------------------------------

    def _encode(self, msg: dict[str, Any]) -> str | bytes:
        """An envelope as the connection speaks: MessagePack in a binary frame, or JSON text."""
        if self.protocol == MSGPACK_SUBPROTOCOL:
            return ormsgpack.packb(msg)
        return orjson.dumps(msg).decode()

    def _decode(self, raw: str | bytes) -> Any:
        """A frame's envelope; None for application data (a MessagePack ``bin``)."""
        if isinstance(raw, bytes) and self.protocol == MSGPACK_SUBPROTOCOL:
            value = ormsgpack.unpackb(raw)
            return value if isinstance(value, dict) else None
        return orjson.loads(raw)

    async def _open(self) -> None:
        protocols = [Subprotocol(MSGPACK_SUBPROTOCOL)] if self.format == "msgpack" else None
        ws = await websockets.connect(self.url, max_size=None, open_timeout=5, subprotocols=protocols)
        self.protocol = ws.subprotocol
        hello = self._decode(await asyncio.wait_for(ws.recv(), 5))
        body = hello.get("payload") or {}
        if body.get("event") != "connected":
            await ws.close()
            raise ConnectionError(f"unexpected first message {hello!r}")
        previous = self.session
        self.connection_id = body.get("connection_id")
        self.user_id = body.get("user_id")
        if self.user_position is None and body.get("stream") is not None:
            self.user_position = dict(body["stream"])
        self._ws = ws
        if self._runner is not None:  # a reconnect: take the session back
            self.reconnects += 1
            await self._resume(ws, previous)
        self.session = body.get("session")
        self._connected.set()

    async def _resume(self, ws: ClientConnection, token: str | None) -> None:
        """Take the previous session back; where the server has none, rejoin each room."""
        rejoin: set[str] = set(self._rooms)
        if token is not None:
            payload: dict[str, Any] = {"token": token, "rooms": {r: self.positions.get(r) for r in self._rooms}}
            if self.user_position is not None:
                payload["user"] = self.user_position
            await ws.send(self._encode({"type": "resume", "id": "resume", "payload": payload}))
        while token is not None:
            msg = self._decode(await asyncio.wait_for(ws.recv(), self.request_timeout))
            if msg.get("id") == "resume":
                body = msg.get("payload") or {}
                if msg["type"] == "error" or not body.get("resumed"):
                    rejoin = set(self._rooms)
                else:
                    user = body.get("user")
                    if user is not None and user.get("recovered") is False:
                        self.unrecovered.append(("user", str(user.get("reason"))))
                    rejoin = {r for r in self._rooms if not (body.get("rooms", {}).get(r) or {}).get("joined")}
                break
            self._on_message(msg)
        for i, room in enumerate(sorted(rejoin)):
            delay = self.backoff_min
            for attempt in range(50):  # "unavailable" (the server's broker is reconnecting): again
                rid = f"rejoin{i}.{attempt}"
                join = {"type": "join_room", "room": room, "id": rid, **self._since(room)}
                await ws.send(self._encode(join))
                while (msg := self._decode(await asyncio.wait_for(ws.recv(), self.request_timeout))).get("id") != rid:
                    self._on_message(msg)
                if msg["type"] == "system":
                    self._position_from(msg)
                    break
                if (msg.get("payload") or {}).get("code") != "unavailable":
                    log.warning("fasthub client: rejoining %r failed: %s", room, msg.get("payload"))
                    break
                await asyncio.sleep(random.uniform(0, delay))
                delay = min(self.backoff_max, delay * 2)

    async def _run(self) -> None:
        delay = self.backoff_min
        while not self._closed:
            ws = self._ws
            assert ws is not None
            try:
                async for raw in ws:
                    msg = self._decode(raw)
                    if msg is not None:
                        self._on_message(msg)
                    delay = self.backoff_min
            except websockets.ConnectionClosed:
                pass
            self._connected.clear()
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("the connection dropped"))
            if self._closed or not self.reconnect:
                break
            while not self._closed:  # reconnect: exponential backoff, full jitter
                await asyncio.sleep(random.uniform(0, delay))
                delay = min(self.backoff_max, delay * 2)
                try:
                    await self._open()
                    break
                except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                    log.debug("fasthub client: reconnect failed: %s", exc)
        self._inbox.put_nowait(None)
