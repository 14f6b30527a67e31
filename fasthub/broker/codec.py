"""The bytes a broker message carries between nodes: one header, then the encoded payload as is.

``F1`` | kind (1 byte) | sender node id (16 bytes) | exclude length (2 bytes, big endian) |
exclude (connection ids joined by ``,``) | body. The body is the envelope the sending node
encoded once; a receiving node wraps it in one ``Payload`` and builds one frame for all its
members. Kinds: ``T`` a JSON envelope, ``P`` the application's own text, ``B`` binary, ``C``
a node's member count of a room (body ``b"<seq> <count>"``), ``S`` a stored message (body
``b"<offset> <epoch> <envelope>"``, written by the publish script, see ``scripts``). Anything
else on our channels is not ours: ``decode`` raises ``ValueError`` and the broker counts and drops it.
"""

from __future__ import annotations

from collections.abc import Iterable

MAGIC = b"F1"
NODE_ID_SIZE = 16
TEXT = ord("T")
PLAIN = ord("P")
BINARY = ord("B")
COUNT = ord("C")
STORED = ord("S")
_KINDS = frozenset((TEXT, PLAIN, BINARY, COUNT, STORED))
_HEADER = 2 + 1 + NODE_ID_SIZE + 2


def encode(kind: int, node: bytes, body: bytes, exclude: Iterable[str] | None = None) -> bytes:
    """One message for a channel; ``node`` is the sender's 16-byte id."""
    excl = ",".join(exclude).encode() if exclude else b""
    if len(excl) > 0xFFFF:
        raise ValueError("too many excluded connections for one broker message")
    return b"".join((MAGIC, bytes((kind,)), node, len(excl).to_bytes(2, "big"), excl, body))


def decode(data: bytes) -> tuple[int, bytes, frozenset[str] | None, bytes]:
    """``(kind, sender node, exclude or None, body)``; ``ValueError`` for bytes that are not ours."""
    if len(data) < _HEADER or data[:2] != MAGIC or data[2] not in _KINDS:
        raise ValueError("not a fasthub broker message")
    node = data[3 : 3 + NODE_ID_SIZE]
    n = int.from_bytes(data[_HEADER - 2 : _HEADER], "big")
    end = _HEADER + n
    if len(data) < end:
        raise ValueError("truncated fasthub broker message")
    exclude = frozenset(data[_HEADER:end].decode("ascii").split(",")) if n else None
    return data[2], node, exclude, data[end:]


def encode_count(node: bytes, seq: int, count: int) -> bytes:
    return encode(COUNT, node, b"%d %d" % (seq, count))


def decode_count(body: bytes) -> tuple[int, int]:
    seq, count = body.split(b" ")
    return int(seq), int(count)


def decode_stored(body: bytes) -> tuple[int, str, bytes]:
    """``(offset, epoch, envelope without offset)`` of a stored message's body."""
    offset, epoch, envelope = body.split(b" ", 2)
    return int(offset), epoch.decode("ascii"), envelope
