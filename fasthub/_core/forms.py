"""The other wire forms of a payload: compressed, MessagePack, or both; built once per payload.

A payload is encoded once (JSON, by the hub). Connections that negotiated something else get a
frame made from it by ``Forms.build`` the first time one of them is flushed, and
``Payload.frame_as`` keeps it for the others: a room of mixed clients costs one compression per
window size and one MessagePack conversion, whatever its number of members.

Called once per payload and form, never per member, so it is plain Python in both twins.
"""

from __future__ import annotations

from typing import Any

import orjson
import ormsgpack

from .._wire import OP_BINARY, OP_TEXT, build_frame
from .._wire.deflate import Deflater
from . import ENC_BITS, ENC_MSGPACK, KIND_BINARY, KIND_TEXT, Payload


class Forms:
    """Builds the frames of connections with an encoding (``Outbox.encoding``).

    Args:
        threshold: messages shorter than this many bytes are not compressed (the frame header
            and deflate's own framing would eat most of the gain).
    """

    def __init__(self, threshold: int = 256) -> None:
        if threshold < 0:
            raise ValueError("threshold must be >= 0")
        self.threshold = threshold
        self.deflater = Deflater()
        #: payloads compressed (once each per window size), their bytes before and after
        self.compressed = 0
        self.compressed_in = 0
        self.compressed_out = 0
        #: payloads converted to MessagePack (once each)
        self.packed = 0

    def encode(self, p: Payload, enc: int) -> tuple[int, bytes]:
        """``(opcode, data)`` of ``p`` for ``enc`` before compression.

        On a MessagePack connection an envelope (JSON) becomes the same envelope as a
        MessagePack map, and application bytes a MessagePack ``bin`` value, both in binary
        frames (a client tells them apart by the decoded type); application text stays text.
        """
        kind = p.kind
        if enc & ENC_MSGPACK:
            if kind == KIND_TEXT:
                self.packed += 1
                return OP_BINARY, ormsgpack.packb(orjson.loads(p.data))
            if kind == KIND_BINARY:
                self.packed += 1
                return OP_BINARY, ormsgpack.packb(p.data)
        return (OP_BINARY if kind == KIND_BINARY else OP_TEXT), p.data

    def build(self, p: Payload, enc: int) -> bytes:
        """The frame of data payload ``p`` (text, binary, plain; ``Payload.frame_as`` answers the
        others itself) for connections that negotiated ``enc``."""
        opcode, data = self.encode(p, enc)
        bits = enc & ENC_BITS
        if bits and len(data) >= self.threshold:
            packed = self.deflater.compress(data, bits)
            self.compressed += 1
            self.compressed_in += len(data)
            self.compressed_out += len(packed)
            if len(packed) < len(data):  # incompressible data goes as it is (RSV1 clear)
                return build_frame(opcode, packed, rsv1=True)
        if data is p.data:
            return p.frame()
        return build_frame(opcode, data)

    def asgi(self, p: Payload, enc: int) -> dict[str, Any]:
        """The ASGI send event of ``p`` for a MessagePack connection on the portable path."""
        kind = p.kind
        if kind != KIND_TEXT and kind != KIND_BINARY:
            return p.asgi()
        opcode, data = self.encode(p, enc)
        if opcode == OP_BINARY:
            return {"type": "websocket.send", "bytes": data}
        return {"type": "websocket.send", "text": data.decode()}
