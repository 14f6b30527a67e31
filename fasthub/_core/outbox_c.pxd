# Types for outbox_py.py compiled as fasthub._core.outbox_c (the hot-path spec).
cimport cython

from fasthub._core.sockio_c cimport send_some

cdef int _KIND_TEXT, _KIND_BINARY, _KIND_CLOSE, _KIND_RAW
cdef int _QUEUED, _DROPPED, _OVERFLOW, _CLOSED
cdef int _OP_TEXT, _OP_BINARY

# final: no Python subclass can override the cpdef methods, so C calls skip that lookup
@cython.final
cdef class Payload:
    cdef readonly int kind
    cdef readonly bytes data
    cdef readonly Py_ssize_t nbytes
    cdef readonly int code
    cdef readonly str reason
    cdef object _frame
    cdef object _asgi
    cpdef bytes frame(self)
    cpdef dict asgi(self)

# not final: conn_c.Connection extends it (a static subclass, so cpdef calls stay C calls)
cdef class Outbox:
    # Word-sized fields first, the flags as bytes after them (smaller per connection)
    cdef public list items
    cdef public object sink
    cdef public object transport
    cdef public Py_ssize_t pending
    cdef public Py_ssize_t inflight
    cdef public Py_ssize_t buffered
    cdef public Py_ssize_t budget
    cdef public Py_ssize_t dropped
    cdef public int fd
    cdef public unsigned char drop_when_full
    cdef public unsigned char closing
    cdef public unsigned char scheduled
    cdef public unsigned char unsure
    cpdef int push(self, Payload p)
    cdef void _append(self, Payload p)
    cpdef list take(self)
    cpdef done(self, Py_ssize_t n)
    cpdef close_with(self, Payload p, bint discard)
    cpdef Py_ssize_t discard(self)
    cpdef Py_ssize_t size(self)

@cython.final
cdef class Fanout:
    cdef public list dirty
    cdef public object schedule
    cdef public bint flush_scheduled
    cdef public Py_ssize_t hold_min
    cdef public bint held
    cdef public long long delivered
    cdef public long long dropped
    cdef public long long bytes_out
    cpdef _mark(self, Outbox ob)
    cpdef int push(self, Outbox ob, Payload p)
    @cython.locals(count=Py_ssize_t, ob=Outbox, overflow=list)
    cpdef tuple push_many(self, dict members, Payload p, object exclude=*)
    @cython.locals(ob=Outbox, dirty=list, error=object, last=list, joined=bytes, items=list, data=bytes, transport=object, first=Payload, n=Py_ssize_t)
    cpdef flush(self)

cdef list _NO_ITEMS

@cython.locals(n=Py_ssize_t, i=Py_ssize_t)
cdef bint _same(list a, list b)

cdef bytes _join(list items)
