# cython: language_level=3
"""Parse and validate an RFC 6455 upgrade request head (4.2.1) in C, one pass over the bytes.

Twin of ``handshake_py.py``: the same result or the same ``HandshakeError`` (status and
message) for every input, checked in the same order (``tests/test_wire_handshake.py``). A
reconnect storm is mostly handshakes, and the pure twin's per-line ``partition``/``strip``/
``lower`` calls were a third of fasthub's Python work per connect.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

from hashlib import sha1

from fasthub._wire.exceptions import HandshakeError


cdef inline bint _space(unsigned char c) noexcept:
    # what bytes.strip() removes
    return c == 32 or c == 9 or c == 10 or c == 13 or c == 11 or c == 12


cdef inline unsigned char _lower(unsigned char c) noexcept:
    return c + 32 if 65 <= c <= 90 else c


cdef inline bint memcmp_http(const unsigned char* v) noexcept:
    """Whether ``v`` starts with ``HTTP/1.`` (7 bytes, available)."""
    return v[0] == 72 and v[1] == 84 and v[2] == 84 and v[3] == 80 and v[4] == 47 and v[5] == 49 and v[6] == 46


cdef bint _key16(bytes key) noexcept:
    """What ``len(base64.b64decode(key, validate=True)) == 16`` accepts: 22 base64 characters
    and ``==`` (16 bytes and 4 spare bits; the decoder ignores their value)."""
    cdef const unsigned char* k = <const unsigned char*>PyBytes_AS_STRING(key)
    cdef unsigned char c
    cdef Py_ssize_t i
    if PyBytes_GET_SIZE(key) != 24 or k[22] != 61 or k[23] != 61:
        return False
    for i in range(22):
        c = k[i]
        if not (65 <= c <= 90 or 97 <= c <= 122 or 48 <= c <= 57 or c == 43 or c == 47):
            return False
    return True


cdef bint _has_token(const unsigned char* p, Py_ssize_t a, Py_ssize_t b, const char* token, Py_ssize_t n):
    """Whether ``p[a:b]``, split at commas and each piece stripped, has ``token`` (ASCII, any case)."""
    cdef Py_ssize_t s, e, i, k
    while True:
        e = a
        while e < b and p[e] != 44:  # ','
            e += 1
        s = a
        i = e
        while s < i and _space(p[s]):
            s += 1
        while i > s and _space(p[i - 1]):
            i -= 1
        if i - s == n:
            for k in range(n):
                if _lower(p[s + k]) != <unsigned char>token[k]:
                    break
            else:
                return True
        if e >= b:
            return False
        a = e + 1


cdef bint _is(const unsigned char* p, Py_ssize_t a, Py_ssize_t b, const char* name, Py_ssize_t n) noexcept:
    """``p[a:b]`` lower-cased equals ``name`` (given lower-case)."""
    cdef Py_ssize_t k
    if b - a != n:
        return False
    for k in range(n):
        if _lower(p[a + k]) != <unsigned char>name[k]:
            return False
    return True


def parse_upgrade(bytes data):
    """Parse everything up to the blank line of ``data``; raises ``HandshakeError``."""
    return _parse(data, True)


cdef object _parse(bytes data, bint build):
    """``parse_upgrade``'s checks. ``build`` false (``plain_upgrade``): no object is made for the
    method or the headers, None comes back as soon as a ``Sec-WebSocket-Protocol`` or
    ``-Extensions`` header shows, else ``(target, key, accept)``."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t end = data.find(b"\r\n\r\n")
    cdef Py_ssize_t i, a, b, line_end, s1, s2, spaces, colon, vs, ve, k
    cdef bytes name, value, method, target
    cdef list headers = None
    cdef list protocols = None
    cdef bint dup_key = False, upgrade_ok = False, connection_ok = False, version_ok = False
    cdef object key = None
    cdef char* q
    if end < 0:
        raise HandshakeError(400, "incomplete request")
    if build:
        headers = []
        protocols = []
    elif end != PyBytes_GET_SIZE(data) - 4:
        return None  # bytes after the head: the full path keeps them for the engine

    # request line: exactly three parts split by single spaces, the last "HTTP/1.*"
    line_end = 0
    while line_end < end and not (p[line_end] == 13 and line_end + 1 < end and p[line_end + 1] == 10):
        line_end += 1
    spaces = 0
    s1 = s2 = -1
    for i in range(line_end):
        if p[i] == 32:
            spaces += 1
            if spaces == 1:
                s1 = i
            elif spaces == 2:
                s2 = i
    if spaces != 2 or line_end - (s2 + 1) < 7 or memcmp_http(p + s2 + 1) == 0:
        raise HandshakeError(400, "malformed request line")
    if build:
        method = PyBytes_FromStringAndSize(<const char*>p, s1)
    target = PyBytes_FromStringAndSize(<const char*>p + s1 + 1, s2 - s1 - 1)

    # header lines: syntax of every line first, what they mean is checked after the method
    a = line_end + 2
    while line_end < end and a <= end:
        b = a
        while b < end and not (p[b] == 13 and b + 1 < end and p[b + 1] == 10):
            b += 1
        colon = a
        while colon < b and p[colon] != 58:  # ':'
            colon += 1
        if colon >= b or colon == a or _space(p[a]) or _space(p[colon - 1]):
            raise HandshakeError(400, "malformed header line")
        vs = colon + 1
        ve = b
        while vs < ve and _space(p[vs]):
            vs += 1
        while ve > vs and _space(p[ve - 1]):
            ve -= 1
        if build:
            name = PyBytes_FromStringAndSize(NULL, colon - a)
            q = PyBytes_AS_STRING(name)
            for k in range(colon - a):
                q[k] = <char>_lower(p[a + k])
            value = PyBytes_FromStringAndSize(<const char*>p + vs, ve - vs)
            headers.append((name, value))
        if _is(p, a, colon, b"upgrade", 7):
            upgrade_ok = _has_token(p, vs, ve, b"websocket", 9)  # the last one counts
        elif _is(p, a, colon, b"connection", 10):
            if _has_token(p, vs, ve, b"upgrade", 7):
                connection_ok = True  # every Connection header's tokens count
        elif _is(p, a, colon, b"sec-websocket-key", 17):
            if key is not None:
                dup_key = True
            else:
                key = value if build else PyBytes_FromStringAndSize(<const char*>p + vs, ve - vs)
        elif _is(p, a, colon, b"sec-websocket-version", 21):
            version_ok = ve - vs == 2 and p[vs] == 49 and p[vs + 1] == 51  # "13"
        elif _is(p, a, colon, b"sec-websocket-protocol", 22):
            if not build:
                return None
            protocols.extend(t.strip() for t in value.decode("latin-1").split(",") if t.strip())
        elif not build and _is(p, a, colon, b"sec-websocket-extensions", 24):
            return None
        a = b + 2

    if (method != b"GET") if build else not (s1 == 3 and p[0] == 71 and p[1] == 69 and p[2] == 84):
        raise HandshakeError(400, "the WebSocket handshake must be a GET")
    if dup_key:
        raise HandshakeError(400, "more than one Sec-WebSocket-Key")
    if not upgrade_ok:
        raise HandshakeError(400, "missing Upgrade: websocket")
    if not connection_ok:
        raise HandshakeError(400, "missing Connection: Upgrade")
    if not version_ok:
        raise HandshakeError(426, "unsupported Sec-WebSocket-Version (13 is required)")
    if key is None:
        raise HandshakeError(400, "missing Sec-WebSocket-Key")
    if not _key16(key):
        raise HandshakeError(400, "Sec-WebSocket-Key is not 16 bytes in base64")
    if not build:
        return target, key, _accept(key)
    return method, target, headers, key, protocols


# -- the usual upgrade, answered without building the request's objects -----------------------------

cdef bytes _GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
cdef const char* _B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


cdef bytes _accept(bytes key):
    """base64(SHA-1(key + GUID)): OpenSSL's SHA-1 (hardware where the CPU has it), base64 here."""
    cdef bytes digest = sha1(key + _GUID).digest()
    cdef const unsigned char* d = <const unsigned char*>PyBytes_AS_STRING(digest)
    cdef char out[28]
    cdef unsigned int v
    cdef int i
    for i in range(6):  # 20 bytes: six groups of 3, then 2 bytes and one '='
        v = (<unsigned int>d[3 * i] << 16) | (<unsigned int>d[3 * i + 1] << 8) | <unsigned int>d[3 * i + 2]
        out[4 * i] = _B64[(v >> 18) & 63]
        out[4 * i + 1] = _B64[(v >> 12) & 63]
        out[4 * i + 2] = _B64[(v >> 6) & 63]
        out[4 * i + 3] = _B64[v & 63]
    v = (<unsigned int>d[18] << 16) | (<unsigned int>d[19] << 8)
    out[24] = _B64[(v >> 18) & 63]
    out[25] = _B64[(v >> 12) & 63]
    out[26] = _B64[(v >> 6) & 63]
    out[27] = 61  # '='
    return PyBytes_FromStringAndSize(out, 28)


def plain_upgrade(bytes data):
    """``(target, key, Sec-WebSocket-Accept)`` for the usual upgrade (see ``handshake_py``), or
    None: ``parse_upgrade``'s checks, with no object made for the headers."""
    try:
        return _parse(data, False)
    except HandshakeError:
        return None
