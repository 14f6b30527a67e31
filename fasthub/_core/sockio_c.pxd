# C-level API of sockio_c, cimported by outbox_c (the twin is sockio_py.py).

cpdef Py_ssize_t send_some(int fd, bytes data) noexcept
