"""Pure-Python twin of ``utf8_c``: strict, incremental UTF-8 validation.

CPython's incremental UTF-8 decoder rejects a truncated sequence as soon as its prefix cannot
be completed (``b"\\xe0\\x80"``, ``b"\\xf4\\x90"``), except the start of a surrogate, checked
here; so it fails on the same byte as the DFA of the compiled twin (the tests compare both on
every 2-byte sequence and on every boundary byte combination up to 4 bytes). Decoded text is
thrown away: the hub wants the validated bytes.
"""

from __future__ import annotations

import codecs

_Decoder = codecs.getincrementaldecoder("utf-8")


class Utf8Validator:
    """Validate a text message chunk by chunk, failing on the first byte that cannot be UTF-8."""

    __slots__ = ("_decoder", "_ok")

    def __init__(self) -> None:
        self._decoder = _Decoder()
        self._ok = True

    def reset(self) -> None:
        """Start a new message."""
        self._decoder.reset()
        self._ok = True

    def feed(self, data: bytes | bytearray, start: int, end: int) -> bool:
        """Validate ``data[start:end]``; False once the bytes so far cannot begin valid UTF-8."""
        if not self._ok:
            return False
        chunk = data[start:end]
        # ASCII needs no decoding unless a multi-byte sequence is pending from the last chunk.
        if chunk.isascii() and not self._decoder.getstate()[0]:
            return True
        try:
            self._decoder.decode(chunk, False)
        except UnicodeDecodeError:
            self._ok = False
        else:
            # The decoder holds back "\xed\xa0".."\xed\xbf" (the start of a UTF-16 surrogate,
            # for the surrogatepass handler) instead of rejecting it: reject it here, as the DFA.
            pending = self._decoder.getstate()[0]
            if len(pending) > 1 and pending[0] == 0xED and pending[1] > 0x9F:
                self._ok = False
        return self._ok

    def complete(self) -> bool:
        """True when everything fed so far is valid and no sequence is left unfinished."""
        return self._ok and not self._decoder.getstate()[0]


def is_valid_utf8(data: bytes | bytearray) -> bool:
    """Validate a whole message at once."""
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
