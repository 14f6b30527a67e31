# Types for outbox_py.py compiled as fasthub._core.outbox_c (the hot-path spec).
cimport cython

from fasthub._core.sockio_c cimport SendBatch, send_some

cdef int _KIND_TEXT, _KIND_BINARY, _KIND_PLAIN, _KIND_CLOSE, _KIND_RAW
cdef int _ENC_BITS, _ENC_MSGPACK
cdef int _QUEUED, _DROPPED, _OVERFLOW, _CLOSED
cdef int _OP_TEXT, _OP_BINARY
cdef Py_ssize_t _BATCH

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
    cdef dict _forms
    cpdef bytes frame(self)
    @cython.locals(cache=dict, frame=bytes)
    cpdef bytes frame_as(self, int enc, object forms)
    cpdef dict asgi(self)
    @cython.locals(cache=dict)
    cpdef dict asgi_as(self, int enc, object forms)

# not final: conn_c.Connection extends it (a static subclass, so cpdef calls stay C calls)
cdef class Outbox:
    # What a big flush reads per member first and together (fewer cache lines per member),
    # then the rest; flags as bytes
    cdef public object queue                 #: None | Payload | list[Payload]
    cdef public object transport
    cdef public Py_ssize_t pending
    cdef public int fd
    cdef public unsigned char closing
    cdef public unsigned char scheduled
    cdef public unsigned char unsure
    cdef public unsigned char drop_when_full
    cdef public object sink
    cdef public Py_ssize_t inflight
    cdef public Py_ssize_t buffered
    cdef public Py_ssize_t budget
    cdef public unsigned int dropped         # 4 bytes, so that encoding fits beside it
    cdef public unsigned char encoding
    cpdef int push(self, Payload p)
    cdef void _append(self, Payload p)
    cpdef list take(self)
    cpdef done(self, Py_ssize_t n)
    cpdef close_with(self, Payload p, bint discard)
    cpdef Py_ssize_t discard(self)
    cpdef Py_ssize_t size(self)

@cython.final
cdef class Fanout:
    cdef public object owner
    cdef public object overflow
    cdef public list dirty
    cdef public object schedule
    cdef public bint flush_scheduled
    cdef public Py_ssize_t hold_min
    cdef public bint held
    cdef public long long delivered
    cdef public long long dropped
    cdef public long long bytes_out
    cdef public Py_ssize_t soft_limit
    cdef public long long congested
    cdef public list flush_counts
    cdef public long long flush_total
    cdef public object forms
    cdef public long long quiet_ns
    cdef public long long last_write
    cdef public long long direct
    cdef public object input_ready
    cdef public Py_ssize_t look_every
    cdef public long long cut
    cdef readonly SendBatch batch
    cpdef mark(self, Outbox ob)
    cpdef int push(self, Outbox ob, Payload p)
    @cython.locals(count=Py_ssize_t, ob=Outbox, overflow=list)
    cpdef tuple push_many(self, dict members, Payload p, object exclude=*)
    cdef inline int _push_one(self, Outbox ob, Payload p, list overflow) except -1
    cpdef bint quiet(self)
    @cython.locals(count=Py_ssize_t, written=Py_ssize_t, r=int, ob=Outbox, overflow=list, frame=bytes,
                   error=object, n=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t, look=Py_ssize_t, next_look=Py_ssize_t,
                   batch=SendBatch)
    cpdef tuple send_many(self, list members, Payload p, object first=*)
    cdef inline Py_ssize_t _look(self)
    cdef bint _input_waits(self)
    cpdef _after_poll(self)
    @cython.locals(n=Py_ssize_t, transport=object)
    cdef int _send_one(self, Outbox ob, Payload p, bytes frame, list overflow, SendBatch batch) except -1
    @cython.locals(m=Py_ssize_t, k=Py_ssize_t, n=Py_ssize_t, short=list, obs=list,
                   datas=list, ob=Outbox, data=bytes, transport=object)
    cdef object _run_batch(self, SendBatch batch, bint direct, object error)
    @cython.locals(b=Py_ssize_t)
    cdef void _count_pass(self, Py_ssize_t n)
    @cython.locals(ob=Outbox, dirty=list, error=object, last=list, joined=bytes, items=list, q=object, data=bytes, transport=object, first=Payload, n=Py_ssize_t, i=Py_ssize_t, count=Py_ssize_t, enc=int, last_enc=int, done=Py_ssize_t, look=Py_ssize_t, next_look=Py_ssize_t, rest=list, batch=SendBatch, full=bint)
    cpdef flush(self)

cdef list _NO_ITEMS

# Ask the CPU for the next member's object while this member's send(2) runs: a big flush
# otherwise stalls on a cache miss per member (perf: most of the flush loop's own time).
cdef extern from *:
    """
    static CYTHON_INLINE void fasthub_prefetch_item(PyObject *items, Py_ssize_t i) {
        if (i < PyList_GET_SIZE(items)) {
            char *o = (char *)PyList_GET_ITEM(items, i);
            __builtin_prefetch(o);
            __builtin_prefetch(o + 64);
        }
    }
    """
    void _prefetch "fasthub_prefetch_item" (list items, Py_ssize_t i)

@cython.locals(n=Py_ssize_t, i=Py_ssize_t)
cdef bint _same(list a, list b)

cdef bytes _join(list items, int enc, object forms)
