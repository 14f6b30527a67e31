"""``_core.Reactor``: fasthub's own socket layer, against real loopback sockets under uvloop.

Runs against whichever twin is live (the suite runs compiled, then with
``FASTHUB_NO_EXTENSIONS=1``); each test checks what a client on the other end sees and what
the protocol was told, in asyncio's order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from fasthub import _ext
from fasthub._core import Reactor


class Recorder(asyncio.Protocol):
    """Records every callback; ``on_data`` decides what a read does."""

    def __init__(self, on_data: Callable[[Recorder, bytes], None] | None = None, keep_half: bool = False) -> None:
        self.events: list[Any] = []
        self.data = b""
        self.transport: Any = None
        self.on_data = on_data
        self.keep_half = keep_half
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.on_data is not None:
            self.on_data(self, data)

    def eof_received(self) -> bool:
        self.events.append("eof")
        return self.keep_half

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", type(exc).__name__ if exc is not None else None))
        if not self.lost.done():
            self.lost.set_result(exc)


def serve(factory: Callable[[], asyncio.Protocol]) -> tuple[Reactor, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    reactor = Reactor(asyncio.get_running_loop(), sock, factory, 128)
    return reactor, sock.getsockname()[1]


def serve_recorders(
    on_data: Callable[[Recorder, bytes], None] | None = None,
) -> tuple[Reactor, int, list[Recorder]]:
    """``serve`` with a ``Recorder`` per connection, listed as they are made."""
    made: list[Recorder] = []

    def factory() -> Recorder:
        p = Recorder(on_data)
        made.append(p)
        return p

    reactor, port = serve(factory)
    return reactor, port, made


def run(coro: Any) -> Any:
    return uvloop.run(coro)


async def until(cond: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


def test_the_live_twin_is_the_expected_one() -> None:
    import fasthub._core as core

    expected = "reactor_py" if _ext.NO_EXTENSIONS else "reactor_c"
    assert core.Reactor.__module__.rsplit(".", 1)[-1] == expected


def test_accept_read_write_and_the_peers_close() -> None:
    async def main() -> None:
        reactor, port, made = serve_recorders(lambda p, d: p.transport.write(d.upper()))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"HELLO"
        p = made[0]
        t = p.transport
        assert t.get_extra_info("peername") == writer.get_extra_info("sockname")
        assert t.get_extra_info("sockname") == ("127.0.0.1", port)
        assert t.get_extra_info("socket").fileno() >= 0
        assert t.get_extra_info("sslcontext") is None
        assert t.get_extra_info("nothing", 7) == 7
        assert reactor.connections == 1
        writer.close()
        await asyncio.wait_for(p.lost, 5)
        assert p.events == ["made", "eof", ("lost", None)]
        assert reactor.connections == 0
        assert t.is_closing() and t.get_extra_info("peername") is None
        reactor.close()

    run(main())


def test_accepted_sockets_have_nagle_off() -> None:
    """TCP_NODELAY on every accepted socket (on Linux inherited from the listening socket, so
    no ``setsockopt`` per connect): small frames are not held back for an ACK."""

    async def main() -> None:
        reactor, port, made = serve_recorders(lambda p, d: p.transport.write(d))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        probe = socket.socket(fileno=os.dup(made[0].transport.get_extra_info("socket").fileno()))
        try:
            assert probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            probe.close()
        writer.close()
        await asyncio.wait_for(made[0].lost, 5)
        reactor.close()

    run(main())


def test_a_big_write_is_buffered_paused_and_resumed_in_order() -> None:
    payload = bytes(range(256)) * 40_000  # 10 MB: far past the socket's buffer

    async def main() -> None:
        reactor, port, made = serve_recorders()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: made)
        t = made[0].transport
        t.set_write_buffer_limits(high=256 * 1024)
        assert t.get_write_buffer_limits() == (64 * 1024, 256 * 1024)
        t.write(payload)
        t.write(b"tail")
        assert t.get_write_buffer_size() > 0
        assert made[0].events == ["made", "pause"]
        got = await reader.readexactly(len(payload) + 4)
        assert got == payload + b"tail"
        await until(lambda: t.get_write_buffer_size() == 0)
        assert made[0].events == ["made", "pause", "resume"]
        writer.close()
        reactor.close()

    run(main())


def test_close_sends_what_is_buffered_first_and_abort_does_not() -> None:
    payload = b"x" * 8_000_000

    async def main() -> None:
        reactor, port, made = serve_recorders()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: made)
        t = made[0].transport
        t.write(payload)
        t.close()
        t.write(b"more")  # still buffered: goes out before the end, as asyncio's
        assert t.is_closing()
        got = await asyncio.wait_for(reader.read(), 10)  # until EOF
        assert got == payload + b"more"
        await asyncio.wait_for(made[0].lost, 5)
        assert made[0].events[-1] == ("lost", None)
        writer.close()

        reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: len(made) == 2)
        t2 = made[1].transport
        big = b"y" * 64_000_000
        t2.write(big)
        t2.abort()
        t2.write(b"dropped")
        await asyncio.wait_for(made[1].lost, 5)
        got2 = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := await asyncio.wait_for(reader2.read(1 << 20), 5):
                got2 += len(chunk)
        assert got2 < len(big)  # what the kernel had taken, not the buffer abort dropped
        writer2.close()
        reactor.close()

    run(main())


def test_pause_reading_holds_data_until_resume() -> None:
    async def main() -> None:
        reactor, port, made = serve_recorders()
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: made)
        t = made[0].transport
        t.pause_reading()
        assert not t.is_reading()
        writer.write(b"held")
        await asyncio.sleep(0.1)
        assert made[0].data == b""
        t.resume_reading()
        await until(lambda: made[0].data == b"held")
        writer.close()
        reactor.close()

    run(main())


def test_write_eof_half_closes_and_the_peer_can_still_send() -> None:
    async def main() -> None:
        reactor, port, made = serve_recorders()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: made)
        t = made[0].transport
        assert t.can_write_eof()
        t.write(b"bye")
        t.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"bye"
        writer.write(b"still here")
        await until(lambda: made[0].data == b"still here")
        writer.close()
        await asyncio.wait_for(made[0].lost, 5)
        reactor.close()

    run(main())


def test_a_reset_reaches_the_protocol_as_connection_reset() -> None:
    async def main() -> None:
        reactor, port, made = serve_recorders()
        client = socket.create_connection(("127.0.0.1", port))
        await until(lambda: made)
        made[0].transport.write(b"unread")  # unread data makes the close a reset
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        exc = await asyncio.wait_for(made[0].lost, 5)
        assert isinstance(exc, ConnectionResetError)
        assert reactor.connections == 0
        reactor.close()

    run(main())


def test_a_failing_protocol_ends_its_connection_only() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))

        def on_data(p: Recorder, data: bytes) -> None:
            if data == b"boom":
                raise RuntimeError("a bug")
            p.transport.write(data)

        reactor, port, made = serve_recorders(on_data)
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: len(made) == 2)
        w1.write(b"boom")
        assert await asyncio.wait_for(r1.read(), 5) == b""  # closed
        exc = await asyncio.wait_for(made[0].lost, 5)
        assert isinstance(exc, RuntimeError)
        assert errors and errors[0]["message"] == "fasthub: protocol callback failed"
        w2.write(b"fine")
        assert await r2.readexactly(4) == b"fine"
        w1.close()
        w2.close()
        reactor.close()

    run(main())


def test_close_stops_accepting_and_the_open_connections_go_on() -> None:
    async def main() -> None:
        reactor, port, made = serve_recorders(lambda p, d: p.transport.write(d))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: made)
        assert reactor.is_serving() and len(reactor.sockets) == 1
        reactor.close()
        assert not reactor.is_serving() and reactor.sockets == []
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"echo")
        assert await reader.readexactly(4) == b"echo"
        writer.close()
        await asyncio.wait_for(reactor.wait_closed(), 1)
        await until(lambda: reactor.connections == 0)

    run(main())


def test_many_connections_in_one_poll() -> None:
    """More clients than one accept batch, all connecting at once, each answered."""

    async def main() -> None:
        reactor, port = serve(lambda: Recorder(lambda p, d: p.transport.write(d)))
        conns = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(300)))
        for i, (_r, w) in enumerate(conns):
            w.write(b"%05d" % i)
        got = await asyncio.gather(*(r.readexactly(5) for r, _w in conns))
        assert got == [b"%05d" % i for i in range(300)]
        assert reactor.connections == 300
        for _r, w in conns:
            w.close()
        await until(lambda: reactor.connections == 0)
        reactor.close()

    run(main())


def test_input_waiting_says_whether_a_socket_of_the_set_is_ready_and_takes_nothing() -> None:
    """What the fan-out asks during a long pass (``Fanout.input_ready``): one look that
    returns at once and leaves the event for the loop's next poll."""

    async def main() -> None:
        reactor, port, made = serve_recorders()
        assert not reactor.input_waiting()  # nothing connected, nothing sent
        a = socket.create_connection(("127.0.0.1", port))
        time.sleep(0.05)  # the loop does not run: the connect waits in the backlog
        assert reactor.input_waiting() and reactor.input_waiting()  # a look takes nothing
        await until(lambda: len(made) == 1)
        assert not reactor.input_waiting()
        a.sendall(b"ping")
        time.sleep(0.05)
        assert reactor.input_waiting()
        await until(lambda: made[0].data == b"ping")  # the next poll still got it
        assert not reactor.input_waiting()
        a.close()
        await until(lambda: reactor.connections == 0)
        reactor.close()  # the set is released: nothing to look at
        assert not reactor.input_waiting()

    run(main())
