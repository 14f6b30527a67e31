# Types for streams_py.py compiled as fasthub._core.streams_c.
cimport cython

from fasthub._core.outbox_c cimport Payload


cpdef bytes with_offset(bytes body, long long offset)


@cython.final
cdef class MemoryStream:
    cdef public str epoch
    cdef public long long offset
    cdef public object entries
    cdef public dict keys
    cdef public double last_publish
    cdef public long long answer
    @cython.locals(key=object)
    cpdef prune(self, double now, Py_ssize_t size)


@cython.final
cdef class MemoryStreams:
    cdef public dict streams
    cdef public double meta_ttl
    cdef public object clock
    cdef public str epoch
    cdef public set forgotten
    cdef public unsigned long long stored
    cpdef MemoryStream _stream(self, str key, double now)
    @cython.locals(stream=MemoryStream, payload=Payload)
    cpdef tuple append(self, str key, bytes body, Py_ssize_t size, double ttl, object idempotency_key=*)
    cpdef MemoryStream stream(self, str key)
    @cython.locals(now=double, offset=cython.longlong, payload=Payload)
    cpdef Payload store(self, MemoryStream stream, bytes body, Py_ssize_t size, double ttl, object idempotency_key=*)
