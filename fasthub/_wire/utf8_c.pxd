# C-level API of utf8_c, cimported by protocol_c (see utf8_py.py for the pure twin).

cdef class Utf8Validator:
    cdef int _state

    cpdef reset(self)
    cpdef bint feed(self, object data, Py_ssize_t start, Py_ssize_t end) except -1
    cpdef bint complete(self) noexcept

cpdef bint is_valid_utf8(object data) except -1
