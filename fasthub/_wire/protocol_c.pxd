# Types protocol_py.py when it is compiled as fasthub._wire.protocol_c: the hot-path spec.
import cython

from fasthub._wire.frames_c cimport build_close, build_frame, close_code_allowed
from fasthub._wire.mask_c cimport unmask_append, unmask_payload
from fasthub._wire.utf8_c cimport Utf8Validator, is_valid_utf8

cdef enum:
    # opcodes (codes.py)
    OP_CONT = 0x0
    OP_TEXT = 0x1
    OP_BINARY = 0x2
    OP_CLOSE = 0x8
    OP_PING = 0x9
    OP_PONG = 0xA
    # connection states (codes.py)
    OPEN = 1
    CLOSING = 2
    CLOSED = 3
    # reader states
    READ_HEADER = 0
    READ_PAYLOAD = 1
    DISCARD = 2
    # inflater modes (deflate.py)
    INFLATE_OFF = 0
    INFLATE_PER_MESSAGE = 1
    INFLATE_CONTEXT = 2

cdef object CloseCode
cdef object InvalidState
cdef object ProtocolError
cdef bytes _EOF
cdef bytes TAIL
cdef object InflateError
cdef object new_inflater


cdef class ServerProtocol:
    # Word-sized fields first, then the small ones as bytes: 160 bytes per connection
    cdef public Py_ssize_t max_message_size
    cdef readonly object exc                 #: Exception | None
    cdef readonly object close_sent          #: tuple[int, str] | None
    cdef readonly object close_received      #: tuple[int, str] | None

    cdef list _events
    cdef list _writes
    cdef bytes _tail
    cdef bytes _mask
    cdef Py_ssize_t _remaining
    cdef Py_ssize_t _phase
    cdef bytearray _msg
    cdef Utf8Validator _utf8
    cdef object _inflater

    cdef readonly unsigned char state
    cdef unsigned char _rstate
    cdef unsigned char _rsv_allowed
    cdef unsigned char _msg_opcode
    cdef unsigned char _eof_sent
    cdef unsigned char _eof_received
    cdef unsigned char _fin
    cdef unsigned char _inflate
    cdef unsigned char _compressed

    cdef void _write(self, bytes data)
    cdef void _event(self, tuple event)
    cpdef receive_data(self, object data)
    cpdef receive_eof(self)
    @cython.locals(events=list)
    cpdef list events_received(self)
    @cython.locals(writes=list)
    cpdef list data_to_send(self)
    cpdef send_text(self, object data)
    cpdef send_binary(self, object data)
    cpdef send_frame(self, bytes frame)
    cpdef send_ping(self, object data=*)
    cpdef send_pong(self, object data=*)
    @cython.locals(frame=bytes)
    cpdef send_close(self, int code=*, str reason=*)
    @cython.locals(frame=bytes)
    cpdef fail(self, int code, str reason=*)
    cpdef bint close_expected(self)

    @cython.locals(
        buf="const unsigned char *",
        end=Py_ssize_t,
        pos=Py_ssize_t,
        avail=Py_ssize_t,
        take=Py_ssize_t,
        start=Py_ssize_t,
        b0="unsigned char",
        b1="unsigned char",
        fin=bint,
        opcode=int,
        length=Py_ssize_t,
        length64="unsigned long long",
        hlen=Py_ssize_t,
        mask_pos=Py_ssize_t,
        i=Py_ssize_t,
        payload=bytes,
        msg=bytearray,
        compressed=bint,
        chunk=bytearray,
    )
    cdef void _parse(self, bytes data) except *

    @cython.locals(limit=Py_ssize_t)
    cdef object _inflate_whole(self, bytes payload)

    @cython.locals(limit=Py_ssize_t, out=bytes)
    cdef bint _inflate_into(self, bytearray msg, object chunk) except -1

    @cython.locals(opcode=int, payload=bytes, start=Py_ssize_t)
    cdef bint _end_message(self) except -1

    @cython.locals(size=Py_ssize_t, code=int, reason=str)
    cdef bint _control(self, int opcode, bytes payload) except -1

    cdef void _fail(self, int code, str reason) except *
    cdef void _close_tcp(self) except *
    cdef str _state_name(self)
