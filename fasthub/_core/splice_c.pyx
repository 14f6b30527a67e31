# cython: language_level=3
"""Splice in C: the room message envelope scanned in place (twin of ``splice_py.py``, which
says what is taken and what is declined; the two must agree on every input)."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdio cimport snprintf
from libc.string cimport memcmp, memcpy, memchr

DEPTH_CAP = 500
cdef Py_ssize_t _DEPTH_CAP = 500
cdef Py_ssize_t _MAGNITUDE_CAP = 300

cdef const char* _HEAD = b'{"type":"room_message"'
cdef const char* _TYPE = b'"room_message"'
cdef const char* _JOIN = b'"join_room"'

cdef enum:
    K_NONE = 0
    K_TYPE = 1
    K_ROOM = 2
    K_PAYLOAD = 3
    K_ID = 4
    K_KEY = 5


cdef inline bint _ws(unsigned char c) noexcept nogil:
    return c == 32 or c == 9 or c == 10 or c == 13


cdef inline Py_ssize_t _skip_ws(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and _ws(s[i]):
        i += 1
    return i


cdef inline bint _digit(unsigned char c) noexcept nogil:
    return 48 <= c <= 57


cdef int _key(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    if n == 4:
        if memcmp(s, b"type", 4) == 0:
            return K_TYPE
        if memcmp(s, b"room", 4) == 0:
            return K_ROOM
    elif n == 7:
        if memcmp(s, b"payload", 7) == 0:
            return K_PAYLOAD
    elif n == 2:
        if s[0] == 105 and s[1] == 100:  # id
            return K_ID
    elif n == 15:
        if memcmp(s, b"idempotency_key", 15) == 0:
            return K_KEY
    return K_NONE


cdef long _hex4(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef long value = 0
    cdef unsigned char c
    cdef Py_ssize_t k
    if i + 4 > n:
        return -1
    for k in range(i, i + 4):
        c = s[k]
        if 48 <= c <= 57:
            value = value * 16 + (c - 48)
        elif 97 <= (c | 32) <= 102:
            value = value * 16 + ((c | 32) - 87)
        else:
            return -1
    return value


cdef Py_ssize_t _string(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef unsigned char c, e
    cdef long unit, low
    i += 1
    while i < n:
        c = s[i]
        if c == 34:
            return i + 1
        if c < 32:
            return -1
        if c != 92:
            i += 1
            continue
        if i + 1 >= n:
            return -1
        e = s[i + 1]
        if e != 117:  # u
            if e == 34 or e == 92 or e == 47 or e == 98 or e == 102 or e == 110 or e == 114 or e == 116:
                i += 2
                continue
            return -1
        unit = _hex4(s, i + 2, n)
        if unit < 0 or 0xDC00 <= unit <= 0xDFFF:
            return -1
        i += 6
        if 0xD800 <= unit <= 0xDBFF:
            if i + 1 >= n or s[i] != 92 or s[i + 1] != 117:
                return -1
            low = _hex4(s, i + 2, n)
            if not 0xDC00 <= low <= 0xDFFF:
                return -1
            i += 6
    return -1


cdef Py_ssize_t _number(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t digits = 1, start
    cdef long exponent = 0
    cdef bint negative
    if s[i] == 45:
        i += 1
    if i >= n or not _digit(s[i]):
        return -1
    if s[i] == 48:
        i += 1
    else:
        i += 1
        while i < n and _digit(s[i]):
            i += 1
            digits += 1
    if i < n and s[i] == 46:
        i += 1
        if i >= n or not _digit(s[i]):
            return -1
        while i < n and _digit(s[i]):
            i += 1
    if i < n and (s[i] == 101 or s[i] == 69):
        i += 1
        negative = False
        if i < n and (s[i] == 43 or s[i] == 45):
            negative = s[i] == 45
            i += 1
        if i >= n or not _digit(s[i]):
            return -1
        start = i
        while i < n and _digit(s[i]):
            if i - start >= 6:
                return -1
            exponent = exponent * 10 + (s[i] - 48)
            i += 1
        if negative:
            exponent = -exponent
    if digits + exponent > _MAGNITUDE_CAP:
        return -1
    return i


cdef Py_ssize_t _value(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t depth,
                       Py_ssize_t limit) noexcept nogil:
    cdef unsigned char c, close
    if i >= n:
        return -1
    c = s[i]
    if c == 34:
        return _string(s, i, n)
    if c == 123 or c == 91:
        depth += 1
        if depth > limit:
            return -1
        close = 125 if c == 123 else 93
        i = _skip_ws(s, i + 1, n)
        if i < n and s[i] == close:
            return i + 1
        while True:
            if c == 123:
                if i >= n or s[i] != 34:
                    return -1
                i = _string(s, i, n)
                if i < 0:
                    return -1
                i = _skip_ws(s, i, n)
                if i >= n or s[i] != 58:
                    return -1
                i = _skip_ws(s, i + 1, n)
            i = _value(s, i, n, depth, limit)
            if i < 0:
                return -1
            i = _skip_ws(s, i, n)
            if i >= n:
                return -1
            if s[i] == 44:
                i = _skip_ws(s, i + 1, n)
                continue
            return i + 1 if s[i] == close else -1
    if c == 116:
        return i + 4 if i + 4 <= n and memcmp(s + i, b"true", 4) == 0 else -1
    if c == 102:
        return i + 5 if i + 5 <= n and memcmp(s + i, b"false", 5) == 0 else -1
    if c == 110:
        return i + 4 if i + 4 <= n and memcmp(s + i, b"null", 4) == 0 else -1
    return _number(s, i, n)


cdef inline char* _put(char* p, const char* src, Py_ssize_t n) noexcept nogil:
    memcpy(p, src, n)
    return p + n


cdef class Splice:
    """One per relay, reused: what the last ``scan`` found (see ``splice_py.Splice``)."""

    def __init__(self):
        self.room = ""
        self.join = False

    cpdef bint scan(self, bytes data, Py_ssize_t max_depth) except -1:
        cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t limit = max_depth if max_depth < _DEPTH_CAP else _DEPTH_CAP
        cdef Py_ssize_t i, j, start, end, room_start = 0, room_end = 0
        cdef int seen = 0, key
        cdef bint join = False
        cdef const unsigned char* q
        i = _skip_ws(s, 0, n)
        if i >= n or s[i] != 123 or limit < 1:
            return False
        self.payload_start = self.payload_end = self.id_start = self.id_end = self.key_start = self.key_end = 0
        i += 1
        while True:
            i = _skip_ws(s, i, n)
            if i >= n or s[i] != 34:
                return False
            q = <const unsigned char*>memchr(s + i + 1, 34, n - i - 1)
            if q == NULL:
                return False
            j = q - s
            key = _key(s + i + 1, j - i - 1)
            if key == K_NONE or seen & (1 << key):
                return False
            seen |= 1 << key
            i = _skip_ws(s, j + 1, n)
            if i >= n or s[i] != 58:
                return False
            start = _skip_ws(s, i + 1, n)
            end = _value(s, start, n, 1, limit)
            if end < 0:
                return False
            if key == K_TYPE:
                if end - start == 11 and memcmp(s + start, _JOIN, 11) == 0:
                    join = True
                elif end - start != 14 or memcmp(s + start, _TYPE, 14) != 0:
                    return False
            elif key == K_ROOM:
                if s[start] != 34 or memchr(s + start, 92, end - start) != NULL:
                    return False
                room_start = start
                room_end = end
            elif key == K_PAYLOAD:
                if not (end - start == 4 and memcmp(s + start, b"null", 4) == 0):
                    self.payload_start = start
                    self.payload_end = end
            elif key == K_ID:
                self.id_start = start
                self.id_end = end
            else:
                self.key_start = start
                self.key_end = end
            i = _skip_ws(s, end, n)
            if i >= n:
                return False
            if s[i] == 44:
                i += 1
                continue
            if s[i] != 125:
                return False
            break
        if _skip_ws(s, i + 1, n) != n or not seen & (1 << K_TYPE) or not seen & (1 << K_ROOM):
            return False
        if join and seen & (1 << K_PAYLOAD | 1 << K_KEY):
            return False
        try:
            self.room = (<const char*>s)[room_start + 1 : room_end - 1].decode("utf-8")
        except UnicodeDecodeError:
            return False
        self.room_start = room_start
        self.room_end = room_end
        self.join = join
        return True

    cpdef bytes build(self, bytes data, bytes sender, bytes stamp, long long offset):
        cdef const char* s = PyBytes_AS_STRING(data)
        cdef char digits[32]
        cdef Py_ssize_t nd = 0
        cdef Py_ssize_t total = 22 + 8 + (self.room_end - self.room_start) + 8 + len(sender) + 13 + len(stamp) + 1
        cdef bytes out
        cdef char* p
        if self.payload_end:
            total += 11 + self.payload_end - self.payload_start
        if self.id_end:
            total += 6 + self.id_end - self.id_start
        if offset >= 0:
            nd = snprintf(digits, sizeof(digits), b',"offset":%lld', offset)
            total += nd
        out = PyBytes_FromStringAndSize(NULL, total)
        p = PyBytes_AS_STRING(out)
        p = _put(p, _HEAD, 22)
        if self.payload_end:
            p = _put(p, b',"payload":', 11)
            p = _put(p, s + self.payload_start, self.payload_end - self.payload_start)
        p = _put(p, b',"room":', 8)
        p = _put(p, s + self.room_start, self.room_end - self.room_start)
        p = _put(p, b',"from":', 8)
        p = _put(p, PyBytes_AS_STRING(sender), PyBytes_GET_SIZE(sender))
        p = _put(p, b',"timestamp":', 13)
        p = _put(p, PyBytes_AS_STRING(stamp), PyBytes_GET_SIZE(stamp))
        if self.id_end:
            p = _put(p, b',"id":', 6)
            p = _put(p, s + self.id_start, self.id_end - self.id_start)
        if nd:
            p = _put(p, digits, nd)
        p[0] = 125
        return out
