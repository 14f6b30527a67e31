# Types frames_py.py when it is compiled as fasthub._wire.frames_c; cimported by protocol_c.
import cython

cdef enum:
    OP_BINARY = 0x2
    OP_CLOSE = 0x8
    OP_PONG = 0xA

cdef object _PACK_LEN2
cdef object _PACK_LEN3
cdef object _PACK_CODE
cdef list _SHORT_HEADERS
cdef bytes _EMPTY_CLOSE

@cython.locals(b0=int)
cdef int _first_byte(int opcode, bint fin, bint rsv1, Py_ssize_t length) except -1

@cython.locals(row=list)
cdef bytes _header(int b0, Py_ssize_t length)

cpdef bytes build_header(int opcode, object length, bint fin=*, bint rsv1=*)

@cython.locals(length=Py_ssize_t)
cpdef bytes build_frame(int opcode, object payload, bint fin=*, bint rsv1=*)

cpdef bint close_code_allowed(int code) noexcept

@cython.locals(payload=bytes)
cpdef bytes build_close(int code, str reason=*)
