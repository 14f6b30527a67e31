"""Client-side frame encoder for tests and fuzzing, invalid frames included.

Not used by the engine: a server never masks, and never sends what this can produce on purpose
(reserved bits, reserved opcodes, non-minimal or lying lengths, unmasked client frames).
"""

from __future__ import annotations

from .mask_py import apply_mask

DEFAULT_MASK = b"\x37\xfa\x21\x3d"


def encode_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = DEFAULT_MASK,
    width: int | None = None,
    length: int | None = None,
) -> bytes:
    """A frame as a client would send it.

    Args:
        opcode: any 4-bit value, reserved ones included.
        payload: the unmasked payload.
        fin: the FIN bit.
        rsv: the three RSV bits as an int 0-7 (RSV1 = 4).
        mask: the masking key, or None for an (invalid) unmasked frame.
        width: length encoding, 7, 16 or 64 bits; the smallest that fits by default.
        length: the length written in the header, if it should differ from ``len(payload)``.
    """
    n = len(payload) if length is None else length
    if width is None:
        width = 7 if n < 126 else 16 if n < 0x10000 else 64
    b0 = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0xF)
    mbit = 0 if mask is None else 0x80
    if width == 7:
        if n > 125:
            raise ValueError("7-bit lengths stop at 125")
        header = bytes((b0, mbit | n))
    elif width == 16:
        header = bytes((b0, mbit | 126)) + n.to_bytes(2, "big")
    elif width == 64:
        header = bytes((b0, mbit | 127)) + n.to_bytes(8, "big")
    else:
        raise ValueError("width must be 7, 16 or 64")
    if mask is None:
        return header + payload
    return header + mask + apply_mask(payload, mask)
