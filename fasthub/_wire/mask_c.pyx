# cython: language_level=3
"""XOR masking of client payloads (RFC 6455 5.3) in C, 8 bytes per step.

Twin of ``mask_py.py``; both must give the same bytes for the same input.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memcpy


cdef inline void _xor_copy(
    unsigned char* dst, const unsigned char* src, Py_ssize_t n, const unsigned char* mask, Py_ssize_t phase
) noexcept nogil:
    """dst[i] = src[i] ^ mask[(phase + i) % 4]; dst may equal src."""
    cdef unsigned char m[8]
    cdef uint64_t m64, w
    cdef Py_ssize_t i
    for i in range(8):
        m[i] = mask[(phase + i) & 3]
    memcpy(&m64, m, 8)
    i = 0
    # memcpy keeps unaligned loads legal; the compiler turns it into plain (vector) moves.
    while i + 8 <= n:
        memcpy(&w, src + i, 8)
        w ^= m64
        memcpy(dst + i, &w, 8)
        i += 8
    while i < n:
        dst[i] = src[i] ^ m[i & 7]
        i += 1


cpdef bytes apply_mask(object data, object mask):
    """Return ``data`` XORed with the 4-byte ``mask`` repeated (masking and unmasking are alike)."""
    cdef const unsigned char* src
    cdef Py_ssize_t n
    if type(mask) is not bytes:
        mask = bytes(mask)
    if PyBytes_GET_SIZE(mask) != 4:
        raise ValueError("mask must contain 4 bytes")
    if type(data) is bytearray:
        src = <const unsigned char*>PyByteArray_AS_STRING(data)
        n = PyByteArray_GET_SIZE(data)
    else:
        if type(data) is not bytes:
            data = bytes(data)
        src = <const unsigned char*>PyBytes_AS_STRING(data)
        n = PyBytes_GET_SIZE(data)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    _xor_copy(<unsigned char*>PyBytes_AS_STRING(out), src, n,
              <const unsigned char*>PyBytes_AS_STRING(mask), 0)
    return out


cpdef bytes unmask_payload(bytes data, Py_ssize_t mask_pos, Py_ssize_t length):
    """Unmask the ``length`` payload bytes that follow the 4-byte mask at ``data[mask_pos]``."""
    if mask_pos < 0 or length < 0 or mask_pos + 4 + length > PyBytes_GET_SIZE(data):
        raise ValueError("payload out of range")
    cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(data) + mask_pos
    cdef bytes out = PyBytes_FromStringAndSize(NULL, length)
    _xor_copy(<unsigned char*>PyBytes_AS_STRING(out), src + 4, length, src, 0)
    return out


cpdef void unmask_append(
    bytearray buf, bytes data, Py_ssize_t start, Py_ssize_t end, bytes mask, Py_ssize_t phase
) except *:
    """Append ``data[start:end]`` unmasked to ``buf``; ``phase`` is the payload offset modulo 4."""
    if start < 0 or end < start or end > PyBytes_GET_SIZE(data):
        raise ValueError("payload out of range")
    if PyBytes_GET_SIZE(mask) != 4:
        raise ValueError("mask must contain 4 bytes")
    cdef Py_ssize_t old = PyByteArray_GET_SIZE(buf)
    cdef Py_ssize_t n = end - start
    if n == 0:
        return
    PyByteArray_Resize(buf, old + n)
    _xor_copy(<unsigned char*>PyByteArray_AS_STRING(buf) + old,
              <const unsigned char*>PyBytes_AS_STRING(data) + start, n,
              <const unsigned char*>PyBytes_AS_STRING(mask), phase & 3)
