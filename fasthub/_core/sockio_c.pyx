# cython: language_level=3
"""Write to a non-blocking socket directly (the fast path's ``send(2)``, skipping uvloop's
write machinery when the transport holds nothing); twin: ``sockio_py.py``."""

from libc.errno cimport EAGAIN, EINTR, errno


cdef extern from "errno.h":
    int EWOULDBLOCK


cdef extern from "sys/socket.h" nogil:
    ssize_t send(int sockfd, const void *buf, size_t length, int flags)
    int MSG_NOSIGNAL
    int MSG_DONTWAIT


cpdef Py_ssize_t send_some(int fd, bytes data) noexcept:
    """Bytes the socket took now (0 if it would block); -1 on an error (the transport reports it).

    Never raises (``noexcept``), so the flush, which calls it once per member, need not look for
    an exception after each call; ``None`` is an error too."""
    if data is None:
        return -1
    cdef const char *buf = data
    cdef Py_ssize_t n = len(data)
    cdef ssize_t r
    while True:
        r = send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT)
        if r >= 0:
            return r
        if errno == EINTR:
            continue
        if errno == EAGAIN or errno == EWOULDBLOCK:
            return 0
        return -1
