"""Per-connection token buckets on messages and bytes.

The clock is passed in (the event loop's time), so this module needs neither asyncio nor a
syscall per message. Compiled as ``fasthub._core.limits_c`` with ``limits_c.pxd``.
"""

from __future__ import annotations


class RateLimiter:
    """``rate`` messages and ``byte_rate`` bytes per second, each with a burst of twice that.

    ``take`` either spends one message and its bytes (returns 0.0) or refuses it and returns how
    long until it would pass; ``strikes`` counts refusals since the last accepted message.
    A rate of 0 disables that bucket.
    """

    def __init__(self, rate: float, byte_rate: float, now: float) -> None:
        self.rate = rate
        self.byte_rate = byte_rate
        self.tokens = rate * 2.0
        self.byte_tokens = byte_rate * 2.0
        self.stamp = now
        self.strikes = 0
        self.refused = 0

    def take(self, now: float, nbytes: int) -> float:
        elapsed = now - self.stamp
        if elapsed > 0.0:
            self.stamp = now
            if self.rate > 0.0:
                self.tokens = min(self.rate * 2.0, self.tokens + elapsed * self.rate)
            if self.byte_rate > 0.0:
                self.byte_tokens = min(self.byte_rate * 2.0, self.byte_tokens + elapsed * self.byte_rate)
        wait = 0.0
        if self.rate > 0.0 and self.tokens < 1.0:
            wait = (1.0 - self.tokens) / self.rate
        if self.byte_rate > 0.0 and self.byte_tokens < nbytes:
            byte_wait = (nbytes - self.byte_tokens) / self.byte_rate
            if byte_wait > wait:
                wait = byte_wait
        if wait > 0.0:
            self.strikes += 1
            self.refused += 1
            return wait
        if self.rate > 0.0:
            self.tokens -= 1.0
        if self.byte_rate > 0.0:
            self.byte_tokens -= nbytes
        self.strikes = 0
        return 0.0
