"""Pure twin of ``reactor_c``: plain sockets served from one epoll set, without uvloop transports.

A uvloop transport is about 1,300 bytes of Python and libuv objects per connection, and every
accept builds a transport, a libuv handle and a socket object before our protocol sees a byte.
The ``Reactor`` accepts and reads a listening socket's connections itself: one epoll set of its
own, watched by the event loop as a single reader, so a poll hands every ready socket to its
protocol in one call. A ``SocketTransport`` is the asyncio transport the protocols see (the
methods ``HubProtocol`` and uvicorn's HTTP protocol use). TLS, Unix sockets and uvicorn's own
WebSocket implementations stay on uvloop's transports.

The compiled twin makes the same system calls in the same order; this one goes through
``select.epoll`` and ``socket`` objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import select
import socket
import sys
from collections.abc import Callable
from typing import Any

#: bytes one read takes at most (one shared buffer in the compiled twin)
READ_SIZE = 256 * 1024
#: connections one poll accepts at most before it serves the ready ones
ACCEPT_BATCH = 128
#: events one ``epoll_wait`` returns at most
MAX_EVENTS = 1024
#: a full process (EMFILE) stops accepting for this long; the backlog keeps the clients waiting
ACCEPT_PAUSE = 0.1
#: Linux copies ``TCP_NODELAY`` from the listening socket to every socket accepted from it:
#: set once there, it spares a ``setsockopt`` per connect (elsewhere each accepted socket gets it)
NODELAY_INHERITED = sys.platform.startswith("linux")

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
_FAILED = select.EPOLLERR | select.EPOLLHUP
_TOO_MANY = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class FdSocket:
    """What ``get_extra_info("socket")`` gives: the descriptor and its names (uvloop's
    ``PseudoSocket`` in miniature), made on demand and never kept."""

    __slots__ = ("family", "fd")

    def __init__(self, fd: int, family: int) -> None:
        self.fd = fd
        self.family = family

    def fileno(self) -> int:
        return self.fd

    def _probe(self) -> socket.socket:
        return socket.socket(self.family, socket.SOCK_STREAM, 0, self.fd)

    def getpeername(self) -> Any:
        probe = self._probe()
        try:
            return probe.getpeername()
        finally:
            probe.detach()

    def getsockname(self) -> Any:
        probe = self._probe()
        try:
            return probe.getsockname()
        finally:
            probe.detach()


class SocketTransport:
    """One accepted socket: non-blocking ``send`` first, a write buffer only for what the
    kernel did not take, asyncio's flow-control callbacks around it."""

    __slots__ = (
        "buffer",
        "buffered",
        "closed",
        "closing",
        "eof_pending",
        "fd",
        "high",
        "low",
        "paused",
        "protocol",
        "reactor",
        "reading",
        "sock",
    )

    def __init__(self, reactor: Reactor, sock: socket.socket) -> None:
        self.reactor = reactor
        self.protocol: Any = None
        self.sock = sock
        self.fd = sock.fileno()
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.high = 64 * 1024
        self.low = 16 * 1024
        self.closing = False
        self.closed = False
        self.reading = True
        self.paused = False  # pause_writing was called
        self.eof_pending = False

    # -- asyncio.Transport ---------------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self.closed:
            return default
        if name == "socket":
            return FdSocket(self.fd, self.reactor.family)
        if name == "peername" or name == "sockname":
            try:
                probe = FdSocket(self.fd, self.reactor.family)
                return probe.getpeername() if name == "peername" else probe.getsockname()
            except OSError:
                return default
        return default

    def is_closing(self) -> bool:
        return self.closing

    def get_protocol(self) -> Any:
        return self.protocol

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def is_reading(self) -> bool:
        return self.reading and not self.closing

    def pause_reading(self) -> None:
        if self.reading and not self.closed:
            self.reading = False
            self._watch()

    def resume_reading(self) -> None:
        if not self.reading and not self.closed:
            self.reading = True
            self._watch()

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.low, self.high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self.high = high
        self.low = low
        self._check_high()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed or self.eof_pending or (self.closing and not self.buffer):
            return  # as asyncio's: once the end is scheduled, writes are dropped
        if not data:
            return
        if not self.buffer:
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._fatal(exc)
                return
            if n == len(data):
                return
            data = bytes(data[n:])
            self.buffer.append(data)
            self.buffered += len(data)
            self._watch()
        else:
            data = bytes(data)
            self.buffer.append(data)
            self.buffered += len(data)
        self._check_high()

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self.closing or self.closed or self.eof_pending:
            return
        self.eof_pending = True
        if not self.buffer:
            self._shutdown_write()

    def close(self) -> None:
        if self.closing or self.closed:
            return
        self.closing = True
        self.reading = False
        if self.buffer:
            self._watch()  # the rest goes out first; ``_end`` follows the last write
        else:
            self.reactor.loop.call_soon(self._end, None)

    def abort(self) -> None:
        if self.closed:
            return
        self.buffer.clear()
        self.buffered = 0
        self.closing = True
        self.reading = False
        self.reactor.loop.call_soon(self._end, None)

    # -- the reactor's side ----------------------------------------------------------------------

    def _watch(self) -> None:
        """Tell epoll what this socket waits for now."""
        if self.closed:
            return
        mask = (EPOLLIN if self.reading and not self.closing else 0) | (EPOLLOUT if self.buffer else 0)
        self.reactor.modify(self.fd, mask)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        if data:
            self.protocol.data_received(data)
            return
        # the peer's FIN: asyncio's order, eof_received then close unless it keeps the half
        self.reading = False
        if self.protocol.eof_received():
            self._watch()  # the half stays open: stop waiting for reads
        else:
            self.close()

    def _writable(self) -> None:
        data = b"".join(self.buffer) if len(self.buffer) > 1 else self.buffer[0]
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        self.buffer.clear()
        if n < len(data):
            self.buffer.append(data[n:])
        self.buffered = len(data) - n
        if self.buffered:
            return
        self._watch()
        if self.paused and self.buffered <= self.low:
            self.paused = False
            self.protocol.resume_writing()
        if self.eof_pending:
            self._shutdown_write()
        if self.closing:
            self.reactor.loop.call_soon(self._end, None)  # never closed inside a poll: no fd reuse

    def _check_high(self) -> None:
        if not self.paused and self.buffered > self.high:
            self.paused = True
            self.protocol.pause_writing()
        elif self.paused and self.buffered <= self.low:
            self.paused = False
            self.protocol.resume_writing()

    def _shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def _fatal(self, exc: BaseException) -> None:
        """A socket error: drop the buffer and close now; the protocol hears of it."""
        if self.closed:
            return
        self.buffer.clear()
        self.buffered = 0
        self.closing = True
        self.reading = False
        self.reactor.loop.call_soon(self._end, exc if isinstance(exc, Exception) else None)

    def _end(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.closing = True
        self.reactor.forget(self.fd)
        self.sock.close()
        self.protocol.connection_lost(exc)


class Reactor:
    """Accepts and serves one listening socket's connections from an epoll set of its own.

    ``close`` stops accepting (the listening socket closes, as ``asyncio.Server.close``);
    the open connections stay until their protocols close them. ``servers`` in uvicorn.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, factory: Callable[[], Any], backlog: int = 4096
    ) -> None:
        self.loop = loop
        self.listener: socket.socket | None = sock
        self.family = sock.family
        self.factory = factory
        self.tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        if self.tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.nodelay_each = self.tcp and not NODELAY_INHERITED
        self.epoll = select.epoll()
        self.transports: dict[int, SocketTransport] = {}
        self.accept_paused = False
        self.accept_errors = 0
        self.lfd = sock.fileno()
        sock.setblocking(False)
        sock.listen(backlog)  # as create_server(sock=...): a bound socket starts listening here
        self.epoll.register(self.lfd, EPOLLIN)
        loop.add_reader(self.epoll.fileno(), self.poll)

    # -- asyncio.Server's part uvicorn uses -------------------------------------------------------

    @property
    def sockets(self) -> list[socket.socket]:
        return [self.listener] if self.listener is not None else []

    def is_serving(self) -> bool:
        return self.listener is not None

    def close(self) -> None:
        sock, self.listener = self.listener, None
        if sock is None:
            return
        if not self.accept_paused:
            self.epoll.unregister(self.lfd)
        sock.close()
        if not self.transports:
            self._release()

    async def wait_closed(self) -> None:
        """As ``asyncio.Server.wait_closed`` on 3.11: done once closed (uvicorn has already
        waited for its connections by then)."""

    @property
    def connections(self) -> int:
        return len(self.transports)

    # -- epoll -------------------------------------------------------------------------------------

    def modify(self, fd: int, mask: int) -> None:
        self.epoll.modify(fd, mask)

    def forget(self, fd: int) -> None:
        """A connection ends (its descriptor is closed next, which takes it out of the set: no
        ``EPOLL_CTL_DEL``, a system call saved per connection)."""
        self.transports.pop(fd, None)
        if self.listener is None and not self.transports:
            self._release()

    def input_waiting(self) -> bool:
        """Whether a socket of the set is ready now: one ``epoll_wait`` that returns at once
        (level-triggered, so the next poll still gets it). The fan-out asks it during a long
        pass (``Fanout.input_ready``)."""
        if self.epoll.closed:
            return False
        return bool(self.epoll.poll(0, 1))

    def _release(self) -> None:
        if self.epoll.closed:
            return
        self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()

    def poll(self) -> None:
        """The event loop saw the set ready: serve every ready socket once."""
        if self.epoll.closed:
            return
        for fd, mask in self.epoll.poll(0, MAX_EVENTS):
            if fd == self.lfd and self.listener is not None:
                self._accept()
                continue
            t = self.transports.get(fd)
            if t is None or t.closed:
                continue
            try:
                wrote = False
                if mask & EPOLLOUT and t.buffer:
                    t._writable()
                    wrote = True
                if t.closed:
                    continue
                if mask & EPOLLIN and t.reading:
                    t._readable()
                elif mask & _FAILED:
                    # an error or hang-up is reported whatever we wait for: let the call that
                    # is due meet it (its errno reaches the protocol), else end here
                    if t.reading:
                        t._readable()
                    elif t.buffer and not wrote:
                        t._writable()
                    elif not t.closing:
                        t._fatal(ConnectionResetError(errno.ECONNRESET, "connection reset by peer"))
            except Exception as exc:  # a protocol's bug: that connection ends, the others go on
                self._protocol_failed(t, exc)

    def _accept(self) -> None:
        listener = self.listener
        assert listener is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _TOO_MANY:
                    self._pause_accept(exc)
                return  # ECONNABORTED and the like: that client is gone
            conn.setblocking(False)
            if self.nodelay_each:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        t = SocketTransport(self, conn)
        fd = t.fd
        self.transports[fd] = t
        self.epoll.register(fd, EPOLLIN)
        try:
            protocol = self.factory()
            t.protocol = protocol
            protocol.connection_made(t)
        except Exception as exc:
            self._protocol_failed(t, exc)

    def _pause_accept(self, exc: OSError) -> None:
        """Out of descriptors: stop accepting for a moment (the backlog holds the clients)."""
        self.accept_errors += 1
        if self.accept_errors == 1 or self.accept_errors % 1000 == 0:
            self.loop.call_exception_handler(
                {"message": f"fasthub: accept failed ({exc}); pausing accepts", "exception": exc}
            )
        self.accept_paused = True
        self.epoll.unregister(self.lfd)
        self.loop.call_later(ACCEPT_PAUSE, self._resume_accept)

    def _resume_accept(self) -> None:
        self.accept_paused = False
        if self.listener is not None:
            self.epoll.register(self.lfd, EPOLLIN)

    def _protocol_failed(self, t: SocketTransport, exc: Exception) -> None:
        self.loop.call_exception_handler(
            {"message": "fasthub: protocol callback failed", "exception": exc, "transport": t, "protocol": t.protocol}
        )
        if t.protocol is None:
            t.closed = True
            self.forget(t.fd)
            t.sock.close()
        else:
            t._fatal(exc)


__all__ = ["ACCEPT_BATCH", "MAX_EVENTS", "READ_SIZE", "FdSocket", "Reactor", "SocketTransport"]
