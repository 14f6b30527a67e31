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


class TokenPool:
    """Tokens of ``nbytes`` random bytes each, as unpadded URL-safe base64 (``nbytes`` a
    multiple of 3: 12 bytes give 16 characters, 6 give 8)."""

    __slots__ = ("nbytes", "pool", "pos")

    PER_DRAW = 4096

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.pool = b""
        self.pos = 0
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.pool = b""
        self.pos = 0

    def next(self) -> str:
        pos = self.pos
        n = self.nbytes
        if pos + n > len(self.pool):
            self.pool = os.urandom(n * self.PER_DRAW)
            pos = 0
        self.pos = pos + n
        return b2a_base64(self.pool[pos : pos + n], newline=False).translate(_URLSAFE).decode()
