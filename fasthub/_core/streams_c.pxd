# Types for streams_py.py compiled as fasthub._core.streams_c.
cimport cython

from fasthub._core.outbox_c cimport Payload


cdef double _NEVER
cpdef bytes with_offset(bytes body, long long offset)


@cython.final
cdef class MemoryStream:
    cdef public str epoch
    cdef public long long offset
    cdef public object entries
    cdef public dict keys
    cdef public double last_publish
    cdef public long long answer
    cdef public double expires
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
    @cython.locals(keys=dict)
    cpdef bint repeated(self, MemoryStream stream, str idempotency_key) except -1
    @cython.locals(now=double, offset=cython.longlong, payload=Payload)
    cpdef Payload store_encoded(self, MemoryStream stream, bytes data, Py_ssize_t size, double ttl,
                                object idempotency_key=*)
