# C-level API of sockio_c, cimported by outbox_c (the twin is sockio_py.py).

cpdef Py_ssize_t send_some(int fd, bytes data) noexcept

cdef class SendBatch:
    cdef readonly Py_ssize_t n
    cdef readonly list obs
    cdef readonly list datas
    cdef int fds[64]
    cdef const char *bufs[64]
    cdef Py_ssize_t lens[64]
    cdef Py_ssize_t res[64]
    cpdef bint add(self, object ob, int fd, bytes data)
    cpdef void run(self)
    cpdef Py_ssize_t result(self, Py_ssize_t k)
    cpdef void clear(self)
