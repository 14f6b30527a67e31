"""Pure-Python twin of ``mask_c``: XOR masking of client payloads (RFC 6455 5.3).

No per-byte loop: the payload and the repeated mask become two big ints and one XOR does the
work (websockets' ``utils.apply_mask``).
"""

from __future__ import annotations

import sys

_ORDER = sys.byteorder


def apply_mask(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """Return ``data`` XORed with the 4-byte ``mask`` repeated (masking and unmasking are alike)."""
    if len(mask) != 4:
        raise ValueError("mask must contain 4 bytes")
    n = len(data)
    repeated = mask * (n >> 2) + mask[: n & 3]
    return (int.from_bytes(data, _ORDER) ^ int.from_bytes(repeated, _ORDER)).to_bytes(n, _ORDER)


def unmask_payload(data: bytes, mask_pos: int, length: int) -> bytes:
    """Unmask the ``length`` payload bytes that follow the 4-byte mask at ``data[mask_pos]``."""
    start = mask_pos + 4
    if mask_pos < 0 or length < 0 or start + length > len(data):
        raise ValueError("payload out of range")
    return apply_mask(data[start : start + length], data[mask_pos:start])


def unmask_append(buf: bytearray, data: bytes, start: int, end: int, mask: bytes, phase: int) -> None:
    """Append ``data[start:end]`` unmasked to ``buf``; ``phase`` is the payload offset modulo 4."""
    if start < 0 or end < start or end > len(data):
        raise ValueError("payload out of range")
    if len(mask) != 4:
        raise ValueError("mask must contain 4 bytes")
    if phase & 3:
        phase &= 3
        mask = mask[phase:] + mask[:phase]
    buf += apply_mask(data[start:end], mask)
