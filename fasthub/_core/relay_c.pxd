# Types for relay_py.py compiled as fasthub._core.relay_c.
cimport cython

from fasthub._core.conn_c cimport Connection
from fasthub._core.outbox_c cimport Fanout, Payload
from fasthub._core.splice_c cimport Splice
from fasthub._core.streams_c cimport MemoryStream, MemoryStreams


@cython.final
cdef class Relay:
    cdef public dict rooms
    cdef public object publish
    cdef public object pending
    cdef public object stamp
    cdef public object congested
    cdef public object published_type
    cdef public Py_ssize_t max_depth
    cdef public unsigned long long relayed
    cdef public MemoryStreams streams
    cdef public object history_for
    cdef public object deliver_room
    cdef public object overflowed
    cdef public Fanout fanout
    cdef public long long stamp_ms
    cdef public bytes stamp_json
    cdef public Splice splice
    cdef public object sender_id
    cdef public bytes sender
    cdef public object join
    cdef public dict histories
    cdef public Py_ssize_t max_size
    cdef public bint limited
    cdef public double rate
    cdef public double byte_rate
    cdef public object count
    cdef public int status
    cdef public double wait
    cdef public bint lone
    cpdef joins(self, object join)
    cpdef limits(self, Py_ssize_t max_size, bint limited, double rate, double byte_rate, object count)
    @cython.locals(i=Py_ssize_t, n=Py_ssize_t, n_bytes=Py_ssize_t, n_msgs=Py_ssize_t, status=int, event=tuple,
                   data=bytes, wait=double, done=int)
    cpdef Py_ssize_t feed(self, Connection conn, list events, Py_ssize_t stop, double now) except -1
    cpdef local(self, MemoryStreams streams, object history_for, Fanout fanout, object deliver_room,
                object overflowed)
    @cython.locals(splice=Splice, history=object, streams=MemoryStreams, stream=MemoryStream, stored=Payload,
                   ms=cython.longlong, body=bytes, name=str, fanout=Fanout, first=Connection)
    cpdef int room_message(self, Connection conn, bytes data)
    @cython.locals(last_epoch=object)
    cdef Py_ssize_t _deliver(self, object room, str name, Payload payload, long long offset, str epoch,
                             Connection first) except -1
    @cython.locals(members=dict, fanout=Fanout, before=cython.longlong, count=Py_ssize_t, overflow=list)
    cdef Py_ssize_t _push(self, object room, Payload payload, Connection first) except -1


cdef int _OP_TEXT


cpdef Payload ack(object msg_id, str name, object published)
