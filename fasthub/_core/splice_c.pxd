# Types for splice_c.pyx (the compiled twin of splice_py.py).

cdef class Splice:
    cdef public str room
    cdef public bint join
    cdef public Py_ssize_t room_start, room_end
    cdef public Py_ssize_t payload_start, payload_end
    cdef public Py_ssize_t id_start, id_end
    cdef public Py_ssize_t key_start, key_end
    cpdef bint scan(self, bytes data, Py_ssize_t max_depth) except -1
    cpdef bytes build(self, bytes data, bytes sender, bytes stamp, long long offset)
