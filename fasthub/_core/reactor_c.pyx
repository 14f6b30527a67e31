# cython: language_level=3
"""Plain sockets served from one epoll set, without uvloop transports; twin: ``reactor_py.py``.

The same system calls in the same order as the twin, made directly: ``epoll_wait`` into a
fixed array, ``accept4`` with the flags set at once, ``recv`` into one shared buffer,
``send`` from the bytes' own memory, and a transport that is a small C struct with a few
Python references (no socket object, no libuv handle).
"""

import os
import socket

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, ECONNABORTED, EMFILE, ENFILE, ENOBUFS, ENOMEM, errno
from libc.stdlib cimport free, malloc

from fasthub._core.reactor_py import ACCEPT_BATCH, ACCEPT_PAUSE, MAX_EVENTS, NODELAY_INHERITED, READ_SIZE, FdSocket


cdef extern from "errno.h":
    int EWOULDBLOCK
    int ECONNRESET


cdef extern from "sys/epoll.h" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        unsigned int u32
        unsigned long long u64

    struct epoll_event:
        unsigned int events
        epoll_data_t data

    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    int EPOLL_CLOEXEC
    int EPOLL_CTL_ADD
    int EPOLL_CTL_MOD
    int EPOLL_CTL_DEL
    unsigned int EPOLLIN
    unsigned int EPOLLOUT
    unsigned int EPOLLERR
    unsigned int EPOLLHUP


cdef extern from "sys/socket.h" nogil:
    int accept4(int sockfd, void *addr, void *addrlen, int flags)
    ssize_t recv(int sockfd, void *buf, size_t length, int flags)
    ssize_t send(int sockfd, const void *buf, size_t length, int flags)
    int setsockopt(int sockfd, int level, int optname, const void *optval, unsigned int optlen)
    int shutdown(int sockfd, int how)
    int SOCK_NONBLOCK
    int SOCK_CLOEXEC
    int MSG_NOSIGNAL
    int MSG_DONTWAIT
    int SHUT_WR


cdef extern from "netinet/in.h" nogil:
    int IPPROTO_TCP


cdef extern from "netinet/tcp.h" nogil:
    int TCP_NODELAY


cdef extern from "unistd.h" nogil:
    int c_close "close"(int fd)


cdef int _READ_SIZE = READ_SIZE
cdef int _ACCEPT_BATCH = ACCEPT_BATCH
cdef int _MAX_EVENTS = MAX_EVENTS
cdef unsigned int _FAILED = EPOLLERR | EPOLLHUP


cdef class Reactor


cdef inline object _os_error(int err):
    return OSError(err, os.strerror(err))  # OSError picks the subclass (ConnectionResetError, ...)


cdef class SocketTransport:
    """One accepted socket: non-blocking ``send`` first, a write buffer only for what the
    kernel did not take, asyncio's flow-control callbacks around it."""

    cdef readonly Reactor reactor
    cdef public object protocol
    cdef readonly int fd
    cdef list buffer
    cdef readonly Py_ssize_t buffered
    cdef Py_ssize_t high
    cdef Py_ssize_t low
    cdef readonly bint closing
    cdef readonly bint closed
    cdef readonly bint reading
    cdef bint paused
    cdef bint eof_pending

    def __cinit__(self, Reactor reactor, int fd):
        self.reactor = reactor
        self.protocol = None
        self.fd = fd
        self.buffer = []
        self.buffered = 0
        self.high = 64 * 1024
        self.low = 16 * 1024
        self.reading = True

    # -- asyncio.Transport ---------------------------------------------------------------------

    def get_extra_info(self, name, default=None):
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

    def is_closing(self):
        return self.closing

    def get_protocol(self):
        return self.protocol

    def set_protocol(self, protocol):
        self.protocol = protocol

    def is_reading(self):
        return self.reading and not self.closing

    def pause_reading(self):
        if self.reading and not self.closed:
            self.reading = False
            self._watch()

    def resume_reading(self):
        if not self.reading and not self.closed:
            self.reading = True
            self._watch()

    def get_write_buffer_size(self):
        return self.buffered

    def get_write_buffer_limits(self):
        return self.low, self.high

    def set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self.high = high
        self.low = low
        self._check_high()

    cpdef write(self, data):
        cdef bytes b
        cdef ssize_t n
        cdef Py_ssize_t size
        if self.closed or self.eof_pending or (self.closing and not self.buffer):
            return  # as asyncio's: once the end is scheduled, writes are dropped
        b = data if type(data) is bytes else bytes(data)
        size = PyBytes_GET_SIZE(b)
        if size == 0:
            return
        if not self.buffer:
            while True:
                n = send(self.fd, PyBytes_AS_STRING(b), size, MSG_NOSIGNAL | MSG_DONTWAIT)
                if n >= 0:
                    break
                if errno == EINTR:
                    continue
                if errno == EAGAIN or errno == EWOULDBLOCK:
                    n = 0
                    break
                self._fatal(_os_error(errno))
                return
            if n == size:
                return
            b = b[n:]
            self.buffer.append(b)
            self.buffered += size - n
            self._watch()
        else:
            self.buffer.append(b)
            self.buffered += size
        self._check_high()

    def writelines(self, lines):
        self.write(b"".join(lines))

    def can_write_eof(self):
        return True

    def write_eof(self):
        if self.closing or self.closed or self.eof_pending:
            return
        self.eof_pending = True
        if not self.buffer:
            shutdown(self.fd, SHUT_WR)

    def close(self):
        if self.closing or self.closed:
            return
        self.closing = True
        self.reading = False
        if self.buffer:
            self._watch()  # the rest goes out first; ``_end`` follows the last write
        else:
            self.reactor.loop.call_soon(self._end, None)

    def abort(self):
        if self.closed:
            return
        self.buffer.clear()
        self.buffered = 0
        self.closing = True
        self.reading = False
        self.reactor.loop.call_soon(self._end, None)

    # -- the reactor's side ----------------------------------------------------------------------

    cdef _watch(self):
        """Tell epoll what this socket waits for now."""
        cdef unsigned int mask = 0
        if self.closed:
            return
        if self.reading and not self.closing:
            mask |= EPOLLIN
        if self.buffer:
            mask |= EPOLLOUT
        self.reactor.modify(self.fd, mask)

    cdef _readable(self):
        cdef ssize_t n
        while True:
            n = recv(self.fd, self.reactor.rbuf, _READ_SIZE, 0)
            if n >= 0:
                break
            if errno == EINTR:
                continue
            if errno == EAGAIN or errno == EWOULDBLOCK:
                return
            self._fatal(_os_error(errno))
            return
        if n > 0:
            self.protocol.data_received(PyBytes_FromStringAndSize(self.reactor.rbuf, n))
            return
        # the peer's FIN: asyncio's order, eof_received then close unless it keeps the half
        self.reading = False
        if self.protocol.eof_received():
            self._watch()  # the half stays open: stop waiting for reads
        else:
            self.close()

    cdef _writable(self):
        cdef bytes data
        cdef ssize_t n
        cdef Py_ssize_t size
        data = b"".join(self.buffer) if len(self.buffer) > 1 else self.buffer[0]
        size = PyBytes_GET_SIZE(data)
        while True:
            n = send(self.fd, PyBytes_AS_STRING(data), size, MSG_NOSIGNAL | MSG_DONTWAIT)
            if n >= 0:
                break
            if errno == EINTR:
                continue
            if errno == EAGAIN or errno == EWOULDBLOCK:
                return
            self._fatal(_os_error(errno))
            return
        self.buffer.clear()
        if n < size:
            self.buffer.append(data[n:])
        self.buffered = size - n
        if self.buffered:
            return
        self._watch()
        if self.paused and self.buffered <= self.low:
            self.paused = False
            self.protocol.resume_writing()
        if self.eof_pending:
            shutdown(self.fd, SHUT_WR)
        if self.closing:
            self.reactor.loop.call_soon(self._end, None)

    cdef _check_high(self):
        if not self.paused and self.buffered > self.high:
            self.paused = True
            self.protocol.pause_writing()
        elif self.paused and self.buffered <= self.low:
            self.paused = False
            self.protocol.resume_writing()

    cdef _fatal(self, exc):
        """A socket error: drop the buffer and close now; the protocol hears of it."""
        if self.closed:
            return
        self.buffer.clear()
        self.buffered = 0
        self.closing = True
        self.reading = False
        self.reactor.loop.call_soon(self._end, exc if isinstance(exc, Exception) else None)

    def _end(self, exc):
        if self.closed:
            return
        self.closed = True
        self.closing = True
        self.reactor.forget(self.fd)
        c_close(self.fd)
        self.protocol.connection_lost(exc)


cdef class Reactor:
    """Accepts and serves one listening socket's connections from an epoll set of its own.

    ``close`` stops accepting (the listening socket closes, as ``asyncio.Server.close``);
    the open connections stay until their protocols close them. ``servers`` in uvicorn.
    """

    cdef readonly object loop
    cdef readonly object factory
    cdef object listener
    cdef readonly int family
    cdef bint tcp
    cdef bint nodelay_each  # TCP_NODELAY per accepted socket (where it is not inherited)
    cdef int epfd
    cdef readonly int lfd
    cdef list transports  # by descriptor
    cdef Py_ssize_t count
    cdef char *rbuf
    cdef epoll_event *events
    cdef readonly bint accept_paused
    cdef readonly Py_ssize_t accept_errors

    def __cinit__(self):
        self.epfd = -1
        self.rbuf = NULL
        self.events = NULL

    def __init__(self, loop, sock, factory, int backlog=4096):
        self.loop = loop
        self.listener = sock
        self.family = sock.family
        self.factory = factory
        self.tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        if self.tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.nodelay_each = self.tcp and not NODELAY_INHERITED
        self.transports = []
        self.count = 0
        self.rbuf = <char *>malloc(_READ_SIZE)
        self.events = <epoll_event *>malloc(sizeof(epoll_event) * _MAX_EVENTS)
        if self.rbuf == NULL or self.events == NULL:
            raise MemoryError()
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise _os_error(errno)
        self.lfd = sock.fileno()
        sock.setblocking(False)
        sock.listen(backlog)  # as create_server(sock=...): a bound socket starts listening here
        self._ctl(EPOLL_CTL_ADD, self.lfd, EPOLLIN)
        loop.add_reader(self.epfd, self.poll)

    def __dealloc__(self):
        if self.rbuf != NULL:
            free(self.rbuf)
        if self.events != NULL:
            free(self.events)
        if self.epfd >= 0:
            c_close(self.epfd)

    # -- asyncio.Server's part uvicorn uses -------------------------------------------------------

    @property
    def sockets(self):
        return [self.listener] if self.listener is not None else []

    def is_serving(self):
        return self.listener is not None

    def close(self):
        sock, self.listener = self.listener, None
        if sock is None:
            return
        if not self.accept_paused:
            self._ctl(EPOLL_CTL_DEL, self.lfd, 0)
        sock.close()
        if self.count == 0:
            self._release()

    async def wait_closed(self):
        """As ``asyncio.Server.wait_closed`` on 3.11: done once closed (uvicorn has already
        waited for its connections by then)."""

    @property
    def connections(self):
        return self.count

    # -- epoll -------------------------------------------------------------------------------------

    cdef int _ctl(self, int op, int fd, unsigned int mask) except -1:
        cdef epoll_event ev
        ev.events = mask
        ev.data.u64 = 0
        ev.data.fd = fd
        if epoll_ctl(self.epfd, op, fd, &ev) < 0:
            if op == EPOLL_CTL_DEL:
                return 0  # already gone
            raise _os_error(errno)
        return 0

    cpdef modify(self, int fd, unsigned int mask):
        self._ctl(EPOLL_CTL_MOD, fd, mask)

    cpdef forget(self, int fd):
        """A connection ends (its descriptor is closed next, which takes it out of the set: no
        ``EPOLL_CTL_DEL``, a system call saved per connection)."""
        if fd < len(self.transports) and self.transports[fd] is not None:
            self.transports[fd] = None
            self.count -= 1
        if self.listener is None and self.count == 0:
            self._release()

    cpdef bint input_waiting(self):
        """Whether a socket of the set is ready now: one ``epoll_wait`` that returns at once
        (level-triggered, so the next poll still gets it). The fan-out asks it during a long
        pass (``Fanout.input_ready``)."""
        cdef epoll_event ev
        if self.epfd < 0:
            return False
        return epoll_wait(self.epfd, &ev, 1, 0) > 0

    cdef _release(self):
        if self.epfd < 0:
            return
        self.loop.remove_reader(self.epfd)
        c_close(self.epfd)
        self.epfd = -1

    def poll(self):
        """The event loop saw the set ready: serve every ready socket once."""
        cdef int n, i, fd
        cdef unsigned int mask
        cdef SocketTransport t
        cdef bint wrote
        if self.epfd < 0:
            return
        n = epoll_wait(self.epfd, self.events, _MAX_EVENTS, 0)
        if n < 0:
            if errno == EINTR:
                return
            raise _os_error(errno)
        for i in range(n):
            fd = self.events[i].data.fd
            mask = self.events[i].events
            if fd == self.lfd and self.listener is not None:
                self._accept()
                continue
            if fd >= len(self.transports):
                continue
            obj = self.transports[fd]
            if obj is None:
                continue
            t = <SocketTransport>obj
            if t.closed:
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
                        t._fatal(ConnectionResetError(ECONNRESET, "connection reset by peer"))
            except Exception as exc:  # a protocol's bug: that connection ends, the others go on
                self._protocol_failed(t, exc)

    cdef _accept(self):
        cdef int i, fd, err
        cdef int one = 1
        for i in range(_ACCEPT_BATCH):
            fd = accept4(self.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                err = errno
                if err == EINTR:
                    continue
                if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
                    self._pause_accept(_os_error(err))
                return  # EAGAIN; ECONNABORTED and the like: that client is gone
            if self.nodelay_each:
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
            self._serve(fd)

    cdef _serve(self, int fd):
        cdef SocketTransport t = SocketTransport(self, fd)
        cdef list table = self.transports
        if fd >= len(table):
            table.extend([None] * max(1024, fd + 1 - len(table)))
        table[fd] = t
        self.count += 1
        self._ctl(EPOLL_CTL_ADD, fd, EPOLLIN)
        try:
            protocol = self.factory()
            t.protocol = protocol
            protocol.connection_made(t)
        except Exception as exc:
            self._protocol_failed(t, exc)

    cdef _pause_accept(self, exc):
        """Out of descriptors: stop accepting for a moment (the backlog holds the clients)."""
        self.accept_errors += 1
        if self.accept_errors == 1 or self.accept_errors % 1000 == 0:
            self.loop.call_exception_handler(
                {"message": f"fasthub: accept failed ({exc}); pausing accepts", "exception": exc}
            )
        self.accept_paused = True
        self._ctl(EPOLL_CTL_DEL, self.lfd, 0)
        self.loop.call_later(ACCEPT_PAUSE, self._resume_accept)

    def _resume_accept(self):
        self.accept_paused = False
        if self.listener is not None:
            self._ctl(EPOLL_CTL_ADD, self.lfd, EPOLLIN)

    cdef _protocol_failed(self, SocketTransport t, exc):
        self.loop.call_exception_handler(
            {"message": "fasthub: protocol callback failed", "exception": exc, "transport": t, "protocol": t.protocol}
        )
        if t.protocol is None:
            t.closed = True
            self.forget(t.fd)
            c_close(t.fd)
        else:
            t._fatal(exc)
