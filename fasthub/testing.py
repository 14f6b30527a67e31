"""An in-memory harness: a hub, its app's message pipeline and connections, without a server.

For unit tests of handlers, hooks, the hub and the fan-out: every connection is a
``MemorySink`` that records what the hub's flush hands it, and client messages enter through
the same pipeline the servers use (``Dispatcher.receive``). The harness owns an event loop
that it runs only when asked (``settle``), so what a test sees is deterministic: per-tick
flushes, async handlers and timers run at ``settle`` and nowhere else. End-to-end behaviour
(sockets, frames, the close handshake) is the server tests' job.

    with Harness(on_message=handler) as h:
        alice, bob = h.connect("alice"), h.connect("bob")
        alice.send({"type": "join_room", "room": "r"})
        assert alice.received()[-1]["payload"]["event"] == "joined"
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import orjson

from ._core import KIND_BINARY, KIND_CLOSE, KIND_PLAIN, KIND_TEXT
from .config import HubConfig
from .connection import Connection
from .hub import Hub
from .server.asgi import FasthubApp, create_app


class MemorySink:
    """A connection's sink that keeps what is flushed to it: envelopes, bytes and the close."""

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.messages: list[Any] = []  # decoded JSON of envelopes, str of plain text, bytes of binary
        self.close: tuple[int, str] | None = None
        self.flushes = 0
        self.aborted = False

    def flush(self) -> None:
        conn = self.conn
        if conn is None:
            return
        self.flushes += 1
        for p in conn.take():
            if p.kind == KIND_TEXT:
                self.messages.append(orjson.loads(p.data))
            elif p.kind == KIND_PLAIN:
                self.messages.append(p.data.decode())
            elif p.kind == KIND_BINARY:
                self.messages.append(p.data)
            elif p.kind == KIND_CLOSE:
                self.close = (p.code, p.reason)
            conn.done(p.nbytes)

    def sweep(self, now: float) -> None:
        """Nothing to keep alive in memory."""

    def abort(self) -> None:
        self.aborted = True


class MemoryClient:
    """One connection of the harness, as its client would drive it."""

    def __init__(self, harness: Harness, conn: Connection, sink: MemorySink) -> None:
        self.harness = harness
        self.conn = conn
        self.sink = sink
        self._seen = 0

    @property
    def id(self) -> str:
        return self.conn.id

    def send(self, message: Any) -> None:
        """A client message through the pipeline (a dict is encoded as JSON text; bytes are binary),
        then ``settle``."""
        binary = isinstance(message, bytes)
        data = message if binary else message.encode() if isinstance(message, str) else orjson.dumps(message)
        loop = self.harness.loop
        result = self.harness.app.dispatcher.receive(self.conn, data, binary, loop.time())
        if result is not None and inspect.isawaitable(result):
            loop.run_until_complete(result)
        self.harness.settle()

    def received(self) -> list[Any]:
        """What arrived since the last call (after ``settle``)."""
        self.harness.settle()
        new = self.sink.messages[self._seen :]
        self._seen = len(self.sink.messages)
        return new

    def disconnect(self) -> None:
        """The socket went away: the app's goodbye, as the fast path does it."""
        self.harness.app.disconnected(self.conn)
        self.harness.settle()


class Harness:
    """A hub and its app with in-memory connections; ``create_app`` keyword arguments apply."""

    def __init__(self, config: HubConfig | None = None, hub: Hub | None = None, **app_kwargs: Any) -> None:
        self.hub = hub if hub is not None else Hub(config)
        self.app: FasthubApp = create_app(self.hub, **app_kwargs)
        self.loop = asyncio.new_event_loop()
        self.hub.attach(self.loop)

    def connect(self, user_id: str | None = None) -> MemoryClient:
        """A new connection (None: anonymous), opened as the servers open one, ``connected`` queued."""
        sink = MemorySink()
        conn = self.hub.register(sink, user_id, None)
        self.app.hello(conn, None)
        self.loop.run_until_complete(self.app.connected(conn))
        self.settle()
        return MemoryClient(self, conn, sink)

    def settle(self, rounds: int = 3) -> None:
        """Run what is due on the loop now: the per-tick flush, callbacks, finished handlers."""
        for _ in range(rounds):
            self.loop.run_until_complete(asyncio.sleep(0))

    def close(self) -> None:
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.settle()
        self.loop.close()

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Harness", "MemoryClient", "MemorySink"]
