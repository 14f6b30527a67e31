"""Session resume: the signed reconnect token of the ``connected`` message, and what it restores.

A token names a session (the connection id it was issued to) and its user, signed with
HMAC-SHA256 (``HubConfig.session_secret``, or a random key of this process). When a connection
closes, its rooms and their stream positions are kept for ``session_ttl`` seconds (in memory
with ``LocalBroker``, in Redis with ``RedisBroker``, so another worker can take it); a client
that reconnects sends ``{"type": "resume", "payload": {"token": ...}}`` and gets its rooms back
in one step, each with what it missed. A token is taken once. Modelled on Socket.IO's
connection state recovery (``pid``, ``maxDisconnectionDuration``) with centrifuge's positions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from typing import Any

import orjson

_VERSION = b"s1"


class SessionError(Exception):
    """A token that is not ours, is malformed, or is another user's."""


class Signer:
    """Issues and checks reconnect tokens."""

    def __init__(self, secret: str | None = None) -> None:
        self.fixed = secret is not None
        self.key = hashlib.sha256(secret.encode()).digest() if secret else os.urandom(32)

    def share(self, secret: bytes) -> None:
        """Use the cluster's key (unless a secret was configured): tokens signed before do not
        verify any more, so those sessions start fresh."""
        if not self.fixed:
            self.key = hashlib.sha256(secret).digest()

    def issue(self, session_id: str, user_id: str | None, now: float | None = None) -> str:
        body = base64.urlsafe_b64encode(
            orjson.dumps({"s": session_id, "u": user_id, "t": int(now if now is not None else time.time())})
        ).rstrip(b"=")
        mac = base64.urlsafe_b64encode(hmac.new(self.key, _VERSION + body, hashlib.sha256).digest()[:24])
        return f"{body.decode()}.{mac.decode()}"

    def verify(self, token: object) -> tuple[str, str | None, int]:
        """``(session id, user id, issued at)``; ``SessionError`` for a forged or malformed token."""
        if not isinstance(token, str) or len(token) > 1024 or token.count(".") != 1:
            raise SessionError("malformed session token")
        body, _, mac = token.partition(".")
        expected = base64.urlsafe_b64encode(hmac.new(self.key, _VERSION + body.encode(), hashlib.sha256).digest()[:24])
        if not hmac.compare_digest(expected, mac.encode()):
            raise SessionError("the session token's signature does not match (forged, or signed by another key)")
        try:
            data = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            return str(data["s"]), data["u"], int(data["t"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SessionError("malformed session token") from exc


class MemorySessions:
    """Closed sessions of one process, each kept ``ttl`` seconds and taken at most once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.kept: dict[str, tuple[float, bytes]] = {}

    def save(self, session_id: str, record: bytes, ttl: float) -> None:
        now = self.clock()
        if len(self.kept) > 1024 and next(iter(self.kept.values()))[0] <= now:
            self.sweep(now)
        self.kept[session_id] = (now + ttl, record)

    def take(self, session_id: str) -> bytes | None:
        entry = self.kept.pop(session_id, None)
        if entry is None or entry[0] <= self.clock():
            return None
        return entry[1]

    def sweep(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        for sid in [sid for sid, (expires, _) in self.kept.items() if expires <= now]:
            del self.kept[sid]


def record(user_id: str | None, rooms: dict[str, Any]) -> bytes:
    """What is kept of a closed session: its user and ``room -> [offset, epoch]``."""
    return orjson.dumps({"u": user_id, "r": rooms})
