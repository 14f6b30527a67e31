"""Splice: a room message's envelope read in place, and the delivered envelope written around
the sender's payload bytes, so the relay builds no Python object of the payload.

``Splice.scan`` takes ``{"type": "room_message", "room": R, "payload": P[, "id": I]
[, "idempotency_key": K]}`` and ``{"type": "join_room", "room": R[, "id": I]}`` (``join`` set;
any key order, JSON whitespace allowed) and records where each
value is; ``Splice.build`` writes ``{"type":"room_message","payload":P,"room":R,"from":F,
"timestamp":T[,"id":I][,"offset":N]}`` with P and I as the sender wrote them (a JSON parser
reads the same values: centrifuge and Socket.IO pass a publication's data through the same way).

``scan`` takes only what orjson would accept (RFC 8259, no lone surrogate escapes, no number
that overflows a double) and declines, for the full pipeline to answer, whatever it is not
sure of: another key or type, a repeated key, a room name with escapes, nesting deeper than
``max_depth`` (the envelope is level 1), a number with more than 300 digits or exponent. One
difference from decoding and encoding again: a payload object that repeats a key is passed as
sent (a parser takes the last, as orjson does).

Compiled as ``fasthub._core.splice_c`` (``splice_c.pyx``); this file is its pure twin, and the
two must agree on every input.
"""

from __future__ import annotations

#: deeper than this is declined whatever ``max_depth`` says (orjson's own limit is 1024)
DEPTH_CAP = 500
#: integer digits plus exponent above this: the number may overflow a double; declined
_MAGNITUDE_CAP = 300

_WS = frozenset(b" \t\n\r")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = frozenset(b'"\\/bfnrt')

_TYPE = b'"room_message"'
_JOIN = b'"join_room"'
_HEAD = b'{"type":"room_message"'

# envelope keys (what scan records for each)
_K_TYPE, _K_ROOM, _K_PAYLOAD, _K_ID, _K_KEY = 1, 2, 3, 4, 5
_KEYS = {b"type": _K_TYPE, b"room": _K_ROOM, b"payload": _K_PAYLOAD, b"id": _K_ID, b"idempotency_key": _K_KEY}


class Splice:
    """One per relay, reused: what the last ``scan`` found (spans are ``data[start:end]``; an
    absent value has ``end == 0``; a ``null`` payload counts as absent)."""

    __slots__ = ("id_end", "id_start", "join", "key_end", "key_start", "payload_end", "payload_start", "room",
                 "room_end", "room_start")

    def __init__(self) -> None:
        self.room = ""
        self.join = False  # the last scan's message is a join (only ``type``, ``room``, ``id``)
        self.room_start = self.room_end = 0
        self.payload_start = self.payload_end = 0
        self.id_start = self.id_end = 0
        self.key_start = self.key_end = 0

    def scan(self, data: bytes, max_depth: int) -> bool:
        """True when ``data`` is a plain room message this module can splice (see the module)."""
        n = len(data)
        limit = min(max_depth, DEPTH_CAP)
        i = _skip_ws(data, 0, n)
        if i >= n or data[i] != 123 or limit < 1:
            return False
        seen = 0
        join = False
        self.payload_start = self.payload_end = self.id_start = self.id_end = self.key_start = self.key_end = 0
        room_start = room_end = 0
        i += 1
        while True:
            i = _skip_ws(data, i, n)
            if i >= n or data[i] != 34:
                return False
            j = data.find(b'"', i + 1)
            if j < 0:
                return False
            key = _KEYS.get(data[i + 1 : j], 0)
            if key == 0 or seen & (1 << key):
                return False  # another key (its escapes included) or a repeated one
            seen |= 1 << key
            i = _skip_ws(data, j + 1, n)
            if i >= n or data[i] != 58:
                return False
            start = _skip_ws(data, i + 1, n)
            end = _value(data, start, n, 1, limit)
            if end < 0:
                return False
            if key == _K_TYPE:
                if data[start:end] == _JOIN:
                    join = True
                elif data[start:end] != _TYPE:
                    return False
            elif key == _K_ROOM:
                if data[start] != 34 or data.find(b"\\", start, end) >= 0:
                    return False
                room_start, room_end = start, end
            elif key == _K_PAYLOAD:
                if data[start:end] != b"null":
                    self.payload_start, self.payload_end = start, end
            elif key == _K_ID:
                self.id_start, self.id_end = start, end
            else:
                self.key_start, self.key_end = start, end
            i = _skip_ws(data, end, n)
            if i >= n:
                return False
            if data[i] == 44:
                i += 1
                continue
            if data[i] != 125:
                return False
            break
        if _skip_ws(data, i + 1, n) != n or not seen & (1 << _K_TYPE) or not seen & (1 << _K_ROOM):
            return False
        if join and seen & (1 << _K_PAYLOAD | 1 << _K_KEY):
            return False  # a join with a payload or a key: the full pipeline says what it makes of them
        try:
            self.room = data[room_start + 1 : room_end - 1].decode()
        except UnicodeDecodeError:  # not from the wire, which checked; declined all the same
            return False
        self.room_start, self.room_end = room_start, room_end
        self.join = join
        return True

    def build(self, data: bytes, sender: bytes, stamp: bytes, offset: int) -> bytes:
        """The delivered envelope of the last ``scan``'s message; ``sender`` and ``stamp`` are
        JSON (the user id and the timestamp, encoded); ``offset < 0``: none."""
        parts = [_HEAD]
        if self.payload_end:
            parts += (b',"payload":', data[self.payload_start : self.payload_end])
        parts += (b',"room":', data[self.room_start : self.room_end], b',"from":', sender, b',"timestamp":', stamp)
        if self.id_end:
            parts += (b',"id":', data[self.id_start : self.id_end])
        if offset >= 0:
            parts.append(b',"offset":%d' % offset)
        parts.append(b"}")
        return b"".join(parts)


def _skip_ws(data: bytes, i: int, n: int) -> int:
    while i < n and data[i] in _WS:
        i += 1
    return i


def _value(data: bytes, i: int, n: int, depth: int, limit: int) -> int:
    """The index just past the JSON value at ``data[i]`` (containers nest at ``depth + 1``),
    or -1 when it is not one ``scan`` takes."""
    if i >= n:
        return -1
    c = data[i]
    if c == 34:
        return _string(data, i, n)
    if c == 123 or c == 91:
        depth += 1
        if depth > limit:
            return -1
        close = 125 if c == 123 else 93
        i = _skip_ws(data, i + 1, n)
        if i < n and data[i] == close:
            return i + 1
        while True:
            if c == 123:
                if i >= n or data[i] != 34:
                    return -1
                i = _string(data, i, n)
                if i < 0:
                    return -1
                i = _skip_ws(data, i, n)
                if i >= n or data[i] != 58:
                    return -1
                i = _skip_ws(data, i + 1, n)
            i = _value(data, i, n, depth, limit)
            if i < 0:
                return -1
            i = _skip_ws(data, i, n)
            if i >= n:
                return -1
            if data[i] == 44:
                i = _skip_ws(data, i + 1, n)
                continue
            return i + 1 if data[i] == close else -1
    if c == 116:
        return i + 4 if data[i : i + 4] == b"true" else -1
    if c == 102:
        return i + 5 if data[i : i + 5] == b"false" else -1
    if c == 110:
        return i + 4 if data[i : i + 4] == b"null" else -1
    return _number(data, i, n)


def _number(data: bytes, i: int, n: int) -> int:
    if data[i] == 45:  # -
        i += 1
    if i >= n or data[i] not in _DIGITS:
        return -1
    digits = 1
    if data[i] == 48:  # a leading 0 stands alone
        i += 1
    else:
        i += 1
        while i < n and data[i] in _DIGITS:
            i += 1
            digits += 1
    if i < n and data[i] == 46:  # .
        i += 1
        if i >= n or data[i] not in _DIGITS:
            return -1
        while i < n and data[i] in _DIGITS:
            i += 1
    exponent = 0
    if i < n and (data[i] == 101 or data[i] == 69):  # e E
        i += 1
        negative = False
        if i < n and (data[i] == 43 or data[i] == 45):
            negative = data[i] == 45
            i += 1
        if i >= n or data[i] not in _DIGITS:
            return -1
        start = i
        while i < n and data[i] in _DIGITS:
            i += 1
        if i - start > 6:
            return -1
        exponent = int(data[start:i])
        if negative:
            exponent = -exponent
    if digits + exponent > _MAGNITUDE_CAP:
        return -1
    return i


def _string(data: bytes, i: int, n: int) -> int:
    """Past the string at ``data[i]`` (a quote), or -1: raw control characters, unknown
    escapes and lone surrogates are refused (the bytes are valid UTF-8: the wire checked)."""
    i += 1
    while i < n:
        c = data[i]
        if c == 34:
            return i + 1
        if c < 32:
            return -1
        if c != 92:
            i += 1
            continue
        if i + 1 >= n:
            return -1
        e = data[i + 1]
        if e != 117:  # u
            if e not in _SIMPLE_ESCAPES:
                return -1
            i += 2
            continue
        unit = _hex4(data, i + 2, n)
        if unit < 0 or 0xDC00 <= unit <= 0xDFFF:
            return -1
        i += 6
        if 0xD800 <= unit <= 0xDBFF:  # a high surrogate: a low one must follow
            if i + 1 >= n or data[i] != 92 or data[i + 1] != 117:
                return -1
            low = _hex4(data, i + 2, n)
            if not 0xDC00 <= low <= 0xDFFF:
                return -1
            i += 6
    return -1


def _hex4(data: bytes, i: int, n: int) -> int:
    if i + 4 > n:
        return -1
    value = 0
    for k in range(i, i + 4):
        c = data[k]
        if c not in _HEX:
            return -1
        value = value * 16 + (c - 48 if c <= 57 else (c | 32) - 87)
    return value
