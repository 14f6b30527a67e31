# cython: language_level=3
"""Strict, incremental UTF-8 validation with a table-driven DFA and an ASCII fast path.

Twin of ``utf8_py.py``. The automaton (in the spirit of Björn Höhrmann's decoder, tables derived
here from RFC 3629 section 4) rejects on the first byte after which no valid completion exists:
overlongs, surrogates (ED A0..BF) and code points above U+10FFFF fail on their second byte.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

# States. ACCEPT: between characters; REJECT: sticky failure; the others await continuations.
cdef enum:
    ACCEPT = 0
    REJECT = 1
    NEED1 = 2      # one more 80..BF
    NEED2 = 3      # two more 80..BF
    AFTER_E0 = 4   # A0..BF then NEED1 (no overlong 3-byte forms)
    AFTER_ED = 5   # 80..9F then NEED1 (no UTF-16 surrogates)
    NEED3 = 6      # three more 80..BF
    AFTER_F0 = 7   # 90..BF then NEED2 (no overlong 4-byte forms)
    AFTER_F4 = 8   # 80..8F then NEED2 (nothing above U+10FFFF)
    NSTATES = 9
    NCLASSES = 12

cdef unsigned char CLASS[256]
cdef unsigned char TRANS[9 * 12]  # NSTATES * NCLASSES


cdef void _build_tables() noexcept:
    # Byte classes: 0 ASCII, 1 80..8F, 2 90..9F, 3 A0..BF, 4 C2..DF, 5 E0, 6 E1..EC/EE..EF,
    # 7 ED, 8 F0, 9 F1..F3, 10 F4, 11 never valid (C0, C1, F5..FF).
    cdef int b, s, c
    for b in range(256):
        if b < 0x80:
            c = 0
        elif b < 0x90:
            c = 1
        elif b < 0xA0:
            c = 2
        elif b < 0xC0:
            c = 3
        elif b < 0xC2:
            c = 11
        elif b < 0xE0:
            c = 4
        elif b == 0xE0:
            c = 5
        elif b == 0xED:
            c = 7
        elif b < 0xF0:
            c = 6
        elif b == 0xF0:
            c = 8
        elif b < 0xF4:
            c = 9
        elif b == 0xF4:
            c = 10
        else:
            c = 11
        CLASS[b] = c
    for s in range(NSTATES * NCLASSES):
        TRANS[s] = REJECT
    # From ACCEPT: ASCII stays, lead bytes choose what must follow.
    TRANS[ACCEPT * NCLASSES + 0] = ACCEPT
    TRANS[ACCEPT * NCLASSES + 4] = NEED1
    TRANS[ACCEPT * NCLASSES + 5] = AFTER_E0
    TRANS[ACCEPT * NCLASSES + 6] = NEED2
    TRANS[ACCEPT * NCLASSES + 7] = AFTER_ED
    TRANS[ACCEPT * NCLASSES + 8] = AFTER_F0
    TRANS[ACCEPT * NCLASSES + 9] = NEED3
    TRANS[ACCEPT * NCLASSES + 10] = AFTER_F4
    for c in (1, 2, 3):  # any continuation byte
        TRANS[NEED1 * NCLASSES + c] = ACCEPT
        TRANS[NEED2 * NCLASSES + c] = NEED1
        TRANS[NEED3 * NCLASSES + c] = NEED2
    TRANS[AFTER_E0 * NCLASSES + 3] = NEED1
    TRANS[AFTER_ED * NCLASSES + 1] = NEED1
    TRANS[AFTER_ED * NCLASSES + 2] = NEED1
    TRANS[AFTER_F0 * NCLASSES + 2] = NEED2
    TRANS[AFTER_F0 * NCLASSES + 3] = NEED2
    TRANS[AFTER_F4 * NCLASSES + 1] = NEED2


_build_tables()


cdef inline int _run(int state, const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef uint64_t w
    while i < n:
        if state == ACCEPT:
            # ASCII fast path: 8 bytes per step while no byte has its high bit set.
            while i + 8 <= n:
                memcpy(&w, p + i, 8)
                if w & 0x8080808080808080ULL:
                    break
                i += 8
            while i < n and p[i] < 0x80:
                i += 1
            if i == n:
                break
        state = TRANS[state * NCLASSES + CLASS[p[i]]]
        if state == REJECT:
            return REJECT
        i += 1
    return state


cdef inline const unsigned char* _buffer(object data, Py_ssize_t* size) except NULL:
    if type(data) is bytes:
        size[0] = PyBytes_GET_SIZE(data)
        return <const unsigned char*>PyBytes_AS_STRING(data)
    if type(data) is bytearray:
        size[0] = PyByteArray_GET_SIZE(data)
        return <const unsigned char*>PyByteArray_AS_STRING(data)
    raise TypeError(f"expected bytes or bytearray, got {type(data).__name__}")


cdef class Utf8Validator:
    """Validate a text message chunk by chunk, failing on the first byte that cannot be UTF-8."""

    def __init__(self):
        self._state = ACCEPT

    cpdef reset(self):
        """Start a new message."""
        self._state = ACCEPT

    cpdef bint feed(self, object data, Py_ssize_t start, Py_ssize_t end) except -1:
        """Validate ``data[start:end]``; False once the bytes so far cannot begin valid UTF-8."""
        cdef Py_ssize_t size
        cdef const unsigned char* p = _buffer(data, &size)
        # Clamp like a slice does, so both twins treat odd bounds alike.
        if end > size:
            end = size
        if start < 0:
            start = 0
        if self._state != REJECT and end > start:
            self._state = _run(self._state, p + start, end - start)
        return self._state != REJECT

    cpdef bint complete(self) noexcept:
        """True when everything fed so far is valid and no sequence is left unfinished."""
        return self._state == ACCEPT


cpdef bint is_valid_utf8(object data) except -1:
    """Validate a whole message at once."""
    cdef Py_ssize_t size
    cdef const unsigned char* p = _buffer(data, &size)
    return _run(ACCEPT, p, size) == ACCEPT
