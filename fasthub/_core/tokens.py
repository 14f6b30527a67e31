"""Unguessable URL-safe tokens drawn from a pool of ``os.urandom`` bytes.

``secrets.token_urlsafe`` is one ``getrandom`` system call per token; connection ids (one per
connect, which shows in a reconnect storm) and stream epochs (one per publish and read through
the Redis broker) are drawn from a pool instead, one system call per 4,096 tokens. A forked
child (a ``--workers`` worker) starts a pool of its own, so processes never share tokens.
"""

from __future__ import annotations

import os
from binascii import b2a_base64

_URLSAFE = bytes.maketrans(b"+/", b"-_")


def urlsafe_b64(raw: bytes) -> str:
    """URL-safe base64 of ``raw``, a multiple of 3 bytes (so no padding), without a newline."""
    return b2a_base64(raw, newline=False).translate(_URLSAFE).decode()


class TokenPool:
    """Tokens of ``nbytes`` random bytes each, as unpadded URL-safe base64 (``nbytes`` a
    multiple of 3: 12 bytes give 16 characters, 6 give 8).

    Base64 of whole 3-byte groups is the concatenation of their encodings, so each draw is
    encoded at once and a token is a slice of that text."""

    __slots__ = ("pool", "pos", "size")

    PER_DRAW = 4096

    def __init__(self, nbytes: int) -> None:
        if nbytes % 3:
            raise ValueError("nbytes must be a multiple of 3")
        self.size = nbytes // 3 * 4  # characters per token
        self.pool = ""
        self.pos = 0
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.pool = ""
        self.pos = 0

    def next(self) -> str:
        pos = self.pos
        end = pos + self.size
        if end > len(self.pool):
            raw = os.urandom(self.size // 4 * 3 * self.PER_DRAW)
            self.pool = urlsafe_b64(raw)
            pos, end = 0, self.size
        self.pos = end
        return self.pool[pos:end]
