# Types for conn_py.py compiled as fasthub._core.conn_c: the connection is its outbox, one object.
cimport cython

from fasthub._core.outbox_c cimport Fanout, Outbox, Payload


@cython.final
cdef class _Rare:
    cdef public object close_code
    cdef public str close_reason
    cdef public object ip
    cdef public object expires_at
    cdef public object expiry


@cython.final
cdef class Connection(Outbox):
    # Word-sized fields first, the small ones after them
    cdef public Fanout fanout
    cdef public str id
    cdef public object _user
    cdef public object scope
    cdef public object _metadata
    cdef public object _rooms
    cdef public _Rare _rare
    cdef public double connected_at
    cdef public double last_seen
    cdef public double tokens
    cdef public double byte_tokens
    cdef public double stamp
    cdef public unsigned int strikes
    cdef public unsigned int refused
    cdef public bint anonymous
    @cython.locals(elapsed=double, wait=double, byte_wait=double)
    cpdef double spend(self, double now, Py_ssize_t nbytes, double rate, double byte_rate)
    cpdef bint send_payload(self, Payload payload)
    cdef _Rare _rare_fields(self)
