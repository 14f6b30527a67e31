# cython: annotation_typing=False
"""Sans-I/O server side of RFC 6455: bytes in -> events out, calls in -> bytes out.

The loop, step by step (websockets' ``Protocol`` contract):

1. Bytes arrive from the socket: ``receive_data(data)`` (any split, any number of frames).
2. ``data_to_send()`` returns what to write now (pongs, close replies); write it in order. An
   element ``b""`` means "close the TCP connection now": the server closes it as soon as the
   closing handshake completes or the connection fails (7.1.1, 7.1.7).
3. ``events_received()`` returns ``(opcode, data)`` tuples: ``(OP_TEXT, bytes)`` with a whole,
   UTF-8-validated message (still bytes, for orjson), ``(OP_BINARY, bytes)``,
   ``(OP_PING, bytes)``, ``(OP_PONG, bytes)``, ``(OP_CLOSE, (code, reason))``.
4. To send, call ``send_text`` / ``send_binary`` / ``send_frame`` / ``send_ping`` /
   ``send_close`` / ``fail``, then ``data_to_send()``.
5. On EOF from the socket: ``receive_eof()``, then ``data_to_send()``.

Bad input never raises: the error is recorded in ``exc`` (a ``ProtocolError`` carrying the close
code), a close frame with that code and ``b""`` are queued, and every later byte is discarded.

Parsing streams: a data frame's payload is unmasked into the message buffer as it arrives and
text is validated on the way, so invalid UTF-8 fails the connection at the first chunk that
holds it, even mid-frame. A frame or message that cannot fit ``max_message_size`` fails on its
header, before a byte of it is buffered. A whole unfragmented frame inside one read takes a fast
path: one unmask straight into the ``bytes`` object that is delivered.

Compiled as ``protocol_c`` with ``protocol_c.pxd`` (typed fields, C-level calls into ``mask_c``,
``utf8_c`` and ``frames_c``); annotations are for mypy, the ``.pxd`` types the C build.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .codes import CloseCode
from .deflate import TAIL, InflateError, new_inflater
from .exceptions import InvalidState, ProtocolError

if TYPE_CHECKING:
    from . import _nocython as cython
else:
    try:
        import cython
    except ImportError:  # pure-Python install: no Cython at run time
        from . import _nocython as cython

if not cython.compiled:
    # Once compiled, these names are C constants and C functions cimported by protocol_c.pxd.
    from .codes import CLOSED, CLOSING, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, OPEN
    from .deflate import INFLATE_CONTEXT, INFLATE_OFF
    from .frames_py import build_close, build_frame, close_code_allowed
    from .mask_py import unmask_append, unmask_payload
    from .utf8_py import Utf8Validator, is_valid_utf8

    # Reader states.
    READ_HEADER = 0
    READ_PAYLOAD = 1
    DISCARD = 2

_EOF = b""


class ServerProtocol:
    """One server-side WebSocket connection after the opening handshake (sans-I/O).

    Args:
        max_message_size: limit of a message's payload, fragments included (0: no limit);
            a longer message fails the connection with 1009 before it is buffered. A
            compressed message is limited by its inflated size, checked while inflating.
        inflate: permessage-deflate as negotiated (``deflate.INFLATE_*``): off (RSV1 is a
            protocol error), a new inflater per compressed message, or one kept for the
            connection's life when the client keeps its compression context.
    """

    def __init__(self, max_message_size: int = 512 * 1024, inflate: int = 0) -> None:
        if max_message_size < 0:
            raise ValueError("max_message_size must be >= 0")
        if inflate < 0 or inflate > 2:
            raise ValueError("inflate must be one of deflate.INFLATE_*")
        self.max_message_size: int = max_message_size
        #: OPEN, CLOSING (close sent, waiting for the peer's) or CLOSED (b"" queued or EOF)
        self.state: int = OPEN
        #: why the connection failed: ProtocolError (with .code), EOFError, or None
        self.exc: Exception | None = None
        #: (code, reason) of the close frame sent / received, None before
        self.close_sent: tuple[int, str] | None = None
        self.close_received: tuple[int, str] | None = None

        # created on first use: an idle connection holds neither list
        self._events: list[tuple[int, object]] | None = None
        self._writes: list[bytes] | None = None
        self._eof_sent = False
        self._eof_received = False

        # Reader: _tail keeps an incomplete header or control frame (at most 131 bytes).
        self._rstate: int = READ_HEADER
        self._tail = b""
        # RSV bits an extension has negotiated (5.2: "MUST be 0 unless an extension is
        # negotiated"): RSV1 with permessage-deflate, on a data message's first frame only
        self._inflate: int = inflate
        self._rsv_allowed = 0x40 if inflate != INFLATE_OFF else 0
        # the inflater of the compressed message in progress, or the connection's (context kept)
        self._inflater: object = None
        self._compressed = False  # the message in progress is compressed

        # Current data frame (READ_PAYLOAD): FIN bit, mask, payload bytes left, mask phase.
        self._fin = False
        self._mask = b""
        self._remaining = 0
        self._phase = 0

        # Current message: opcode (0 when none is in progress), payload so far, UTF-8 state;
        # the buffer and validator exist only while a message arrives in pieces (an idle
        # connection, and one that gets whole messages per read, holds neither)
        self._msg_opcode: int = 0
        self._msg: bytearray | None = None
        self._utf8: Utf8Validator | None = None

    # Public state.

    @property
    def close_code(self) -> int | None:
        """The code the connection closed with; None until CLOSED.

        The peer's code if its close frame arrived (1005 if it had none), else the code we sent
        (e.g. 1002 after a protocol error), else 1006 (7.1.5: closed without a close frame).
        """
        if self.state != CLOSED:
            return None
        if self.close_received is not None:
            return self.close_received[0]
        if self.close_sent is not None:
            return self.close_sent[0]
        return int(CloseCode.ABNORMAL)

    @property
    def close_reason(self) -> str | None:
        """The reason that goes with :attr:`close_code`; None until CLOSED."""
        if self.state != CLOSED:
            return None
        if self.close_received is not None:
            return self.close_received[1]
        if self.close_sent is not None:
            return self.close_sent[1]
        return ""

    @property
    def buffered(self) -> int:
        """Bytes held for later: an incomplete header or control frame and the message so far."""
        return len(self._tail) + (len(self._msg) if self._msg is not None else 0)

    def close_expected(self) -> bool:
        """True while we wait for the peer's close frame (arm a timeout in the I/O layer)."""
        return self.state == CLOSING

    # Public methods for receiving data.

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Parse bytes from the network; never raises on bad input (see ``exc``)."""
        if self._rstate == DISCARD:
            return
        if type(data) is not bytes:
            data = bytes(data)
        if self._tail:
            data = self._tail + data
            self._tail = b""
        self._parse(data)

    def receive_eof(self) -> None:
        """The peer closed its side of the TCP connection; idempotent."""
        if self._eof_received:
            return
        self._eof_received = True
        if self._rstate != DISCARD:
            # 7.1.5: closed without a closing handshake; nothing can be sent back.
            self.exc = EOFError("unexpected end of stream")
            self.fail(CloseCode.ABNORMAL)
        self.state = CLOSED

    # Public methods for getting the results.

    def _write(self, data: bytes) -> None:
        if self._writes is None:
            self._writes = [data]
        else:
            self._writes.append(data)

    def _event(self, event: tuple[int, object]) -> None:
        if self._events is None:
            self._events = [event]
        else:
            self._events.append(event)

    def events_received(self) -> list[tuple[int, object]]:
        """Return the events parsed since the last call."""
        events = self._events
        if events is None:
            return []
        self._events = None
        return events

    def data_to_send(self) -> list[bytes]:
        """Return the bytes to write since the last call; ``b""`` means close the TCP connection."""
        writes = self._writes
        if writes is None:
            return []
        self._writes = None
        return writes

    # Public methods for sending.

    def send_text(self, data: bytes) -> None:
        """Queue a text frame; ``data`` must be UTF-8 (not checked: it comes from our encoder)."""
        if self.state != OPEN:
            raise InvalidState(f"cannot send a message: {self._state_name()}")
        self._write(build_frame(OP_TEXT, data))

    def send_binary(self, data: bytes) -> None:
        """Queue a binary frame."""
        if self.state != OPEN:
            raise InvalidState(f"cannot send a message: {self._state_name()}")
        self._write(build_frame(OP_BINARY, data))

    def send_frame(self, frame: bytes) -> None:
        """Queue a data frame built once by ``build_frame`` and shared by many connections."""
        if self.state != OPEN:
            raise InvalidState(f"cannot send a message: {self._state_name()}")
        self._write(frame)

    def send_ping(self, data: bytes = b"") -> None:
        """Queue a ping (allowed while closing: 5.5 control frames may follow a close)."""
        if self.state == CLOSED:
            raise InvalidState(f"cannot send a ping: {self._state_name()}")
        self._write(build_frame(OP_PING, data))

    def send_pong(self, data: bytes = b"") -> None:
        """Queue an unsolicited pong, a unidirectional heartbeat (5.5.3)."""
        if self.state == CLOSED:
            raise InvalidState(f"cannot send a pong: {self._state_name()}")
        self._write(build_frame(OP_PONG, data))

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (7.1.2); the TCP close follows the peer's close frame."""
        if self.state != OPEN:
            raise InvalidState(f"cannot send a close frame: {self._state_name()}")
        frame = build_close(code, reason)
        self._write(frame)
        self.close_sent = (int(code), reason)
        self.state = CLOSING

    def fail(self, code: int, reason: str = "") -> None:
        """Fail the WebSocket connection (7.1.7): close frame unless 1006, then close TCP.

        "An endpoint MUST NOT continue to attempt to process data (including a responding
        Close frame) from the remote endpoint after being instructed to _Fail the WebSocket
        Connection_", so everything received afterwards is discarded.
        """
        if self.state == OPEN and code != 1006:
            frame = build_close(code, reason)
            self._write(frame)
            self.close_sent = (int(code), reason)
        self._close_tcp()

    # Private methods for receiving data.

    def _parse(self, data: bytes) -> None:
        """Consume ``data``; keep an incomplete header or control frame in ``_tail``."""
        buf = data  # compiled: const unsigned char * over the bytes
        end = len(data)
        pos = 0
        while True:
            if self._rstate == READ_PAYLOAD:
                take = end - pos
                if take > self._remaining:
                    take = self._remaining
                if take:
                    msg = self._msg
                    assert msg is not None  # a message is in progress: its first frame made it
                    start = len(msg)
                    if self._compressed:
                        chunk = bytearray()
                        unmask_append(chunk, data, pos, pos + take, self._mask, self._phase)
                        if not self._inflate_into(msg, chunk):
                            return
                    else:
                        unmask_append(msg, data, pos, pos + take, self._mask, self._phase)
                    pos += take
                    self._remaining -= take
                    self._phase = (self._phase + take) & 3
                    # 8.1: "When an endpoint is to interpret a byte stream as UTF-8 but finds
                    # that the byte stream is not, in fact, a valid UTF-8 stream, that endpoint
                    # MUST _Fail the WebSocket Connection_." Checked per chunk: fail fast.
                    if self._msg_opcode == OP_TEXT and not self._utf8.feed(msg, start, len(msg)):  # type: ignore[union-attr]
                        self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in text message")
                        return
                if self._remaining:
                    return  # every byte consumed, the frame continues in the next read
                self._rstate = READ_HEADER
                if self._fin and not self._end_message():
                    return
                continue

            # READ_HEADER
            avail = end - pos
            if avail < 2:
                break
            b0 = buf[pos]
            b1 = buf[pos + 1]
            fin = (b0 & 0x80) != 0
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            # 5.2: "RSV1, RSV2, RSV3: ... MUST be 0 unless an extension is negotiated that
            # defines meanings for non-zero values."
            if b0 & 0x70 & ~self._rsv_allowed:
                self._fail(CloseCode.PROTOCOL_ERROR, "reserved bits must be 0")
                return
            if opcode >= OP_CLOSE:
                # 5.2: opcodes 0xB-0xF "are reserved for further control frames".
                if opcode > OP_PONG:
                    self._fail(CloseCode.PROTOCOL_ERROR, "reserved opcode")
                    return
                # 5.5: "All control frames MUST have a payload length of 125 bytes or less
                # and MUST NOT be fragmented."
                if not fin:
                    self._fail(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
                    return
                if length > 125:
                    self._fail(CloseCode.PROTOCOL_ERROR, "control frame too long")
                    return
                # RFC 7692 6.1: "An endpoint MUST NOT set the "Per-Message Compressed" bit of
                # control frames and non-first fragments of a data message."
                if b0 & 0x40:
                    self._fail(CloseCode.PROTOCOL_ERROR, "compressed control frame")
                    return
            elif opcode > OP_BINARY:
                # 5.2: opcodes 0x3-0x7 "are reserved for further non-control frames".
                self._fail(CloseCode.PROTOCOL_ERROR, "reserved opcode")
                return
            elif opcode == OP_CONT and b0 & 0x40:
                self._fail(CloseCode.PROTOCOL_ERROR, "RSV1 set on a continuation frame")
                return
            # 5.1: "The server MUST close the connection upon receiving a frame that is not
            # masked."
            if not b1 & 0x80:
                self._fail(CloseCode.PROTOCOL_ERROR, "unmasked frame")
                return
            # 5.4: a fragmented message is one data frame with FIN clear, then continuation
            # frames; "control frames MAY be injected in the middle".
            if opcode == OP_CONT:
                if not self._msg_opcode:
                    self._fail(CloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
                    return
            elif opcode < OP_CLOSE and self._msg_opcode:
                self._fail(CloseCode.PROTOCOL_ERROR, "expected a continuation frame")
                return

            if length < 126:
                hlen = 6
            elif length == 126:
                hlen = 8
            else:
                hlen = 14
            if avail < hlen:
                break
            if length == 126:
                length = (buf[pos + 2] << 8) | buf[pos + 3]
            elif length == 127:
                length64 = 0
                for i in range(pos + 2, pos + 10):
                    length64 = (length64 << 8) | buf[i]
                # 5.2: "the most significant bit MUST be 0".
                if length64 >> 63:
                    self._fail(CloseCode.PROTOCOL_ERROR, "frame length over 2^63 - 1")
                    return
                length = length64
            mask_pos = pos + hlen - 4

            if opcode >= OP_CLOSE:
                if avail < hlen + length:
                    break  # control frames are small: wait for the whole frame
                payload = unmask_payload(data, mask_pos, length)
                pos += hlen + length
                if not self._control(opcode, payload):
                    return
                continue

            # Data frame. 10.4: limit the message before buffering any of it. A compressed one
            # is limited while it inflates; its frames only may not exceed what the largest
            # message could take compressed (deflate expands the incompressible by < 1/8).
            compressed = (b0 & 0x40) != 0 or (opcode == OP_CONT and self._compressed)
            if self.max_message_size:
                if compressed:
                    if length > self.max_message_size + (self.max_message_size >> 3) + 64:
                        self._fail(CloseCode.MESSAGE_TOO_BIG, "message too big")
                        return
                elif length > self.max_message_size - (len(self._msg) if self._msg is not None else 0):
                    self._fail(CloseCode.MESSAGE_TOO_BIG, "message too big")
                    return
            pos += hlen
            if opcode != OP_CONT:
                if fin and avail - hlen >= length:
                    # Fast path: a whole unfragmented message in this read.
                    payload = unmask_payload(data, mask_pos, length)
                    pos += length
                    if compressed:
                        inflated = self._inflate_whole(payload)
                        if inflated is None:
                            return
                        payload = inflated
                    if opcode == OP_TEXT and not is_valid_utf8(payload):
                        self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in text message")
                        return
                    self._event((opcode, payload))
                    continue
                self._msg_opcode = opcode
                self._msg = bytearray()
                if compressed:
                    self._compressed = True
                    if self._inflater is None:
                        self._inflater = new_inflater()
                if opcode == OP_TEXT:
                    if self._utf8 is None:
                        self._utf8 = Utf8Validator()
                    else:
                        self._utf8.reset()
            self._fin = fin
            self._mask = data[mask_pos : mask_pos + 4]
            self._remaining = length
            self._phase = 0
            self._rstate = READ_PAYLOAD

        if pos < end:
            self._tail = data[pos:]

    def _inflate_whole(self, payload: bytes) -> bytes | None:
        """A whole compressed message inflated (RFC 7692 7.2.2); None if it failed the connection."""
        inflater = self._inflater
        if inflater is None:
            inflater = new_inflater()
            if self._inflate == INFLATE_CONTEXT:
                self._inflater = inflater
        limit = self.max_message_size
        try:
            # at most one byte past the limit is ever inflated (a bomb stops there)
            out = inflater.decompress(payload + TAIL, limit + 1 if limit else 0)  # type: ignore[attr-defined]
        except InflateError:
            self._fail(CloseCode.INVALID_DATA, "invalid compressed data")
            return None
        if limit and len(out) > limit:
            self._fail(CloseCode.MESSAGE_TOO_BIG, "message too big")
            return None
        if inflater.eof and self._inflater is not None:  # type: ignore[attr-defined]
            self._inflater = None  # ended with a final block: the next message starts afresh
        return out  # type: ignore[no-any-return]

    def _inflate_into(self, msg: bytearray, chunk: bytes | bytearray) -> bool:
        """Inflate part of a compressed message onto ``msg``; False if it failed the connection."""
        inflater = self._inflater
        limit = self.max_message_size
        try:
            out = inflater.decompress(chunk, limit - len(msg) + 1 if limit else 0)  # type: ignore[attr-defined]
        except InflateError:
            self._fail(CloseCode.INVALID_DATA, "invalid compressed data")
            return False
        msg += out
        if limit and len(msg) > limit:
            self._fail(CloseCode.MESSAGE_TOO_BIG, "message too big")
            return False
        return True

    def _end_message(self) -> bool:
        """Deliver the message just completed; False if it failed the connection."""
        opcode = self._msg_opcode
        if self._compressed:
            start = len(self._msg)  # type: ignore[arg-type]
            if not self._inflate_into(self._msg, TAIL):  # type: ignore[arg-type]
                return False
            self._compressed = False
            if self._inflate != INFLATE_CONTEXT or self._inflater.eof:  # type: ignore[attr-defined]
                self._inflater = None
            if opcode == OP_TEXT and not self._utf8.feed(self._msg, start, len(self._msg)):  # type: ignore[union-attr, arg-type]
                self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in text message")
                return False
        if opcode == OP_TEXT and not self._utf8.complete():  # type: ignore[union-attr]
            self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in text message")
            return False
        payload = bytes(self._msg)  # type: ignore[arg-type]
        self._msg = None
        self._msg_opcode = 0
        self._event((opcode, payload))
        return True

    def _control(self, opcode: int, payload: bytes) -> bool:
        """Handle a control frame; False when reading must stop (close frame or failure)."""
        if opcode == OP_PING:
            # 5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong frame in
            # response ... The Pong frame MUST have identical "Application data"."
            self._event((OP_PING, payload))
            self._write(build_frame(OP_PONG, payload))
            return True
        if opcode == OP_PONG:
            # 5.5.3: "A response to an unsolicited Pong frame is not expected."
            self._event((OP_PONG, payload))
            return True

        # 5.5.1 Close. "If there is a body, the first two bytes of the body MUST be a 2-byte
        # unsigned integer (in network byte order) representing a status code".
        size = len(payload)
        if size == 0:
            code = 1005  # 7.1.5: "If this Close control frame contains no status code ..."
            reason = ""
        elif size == 1:
            self._fail(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
            return False
        else:
            code = (payload[0] << 8) | payload[1]
            if not close_code_allowed(code):
                self._fail(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
                return False
            try:
                # 5.5.1: the body after the code "is not guaranteed to be human readable" but
                # is UTF-8 (7.1.6), so invalid bytes fail with 1007 like text messages.
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in close reason")
                return False
        self.close_received = (code, reason)
        self._event((OP_CLOSE, (code, reason)))
        # A close frame may arrive between the fragments of a message: drop the unfinished one.
        self._msg = None
        self._msg_opcode = 0
        self._compressed = False
        if self.state == OPEN:
            # 5.5.1: "If an endpoint receives a Close frame and did not previously send a Close
            # frame, the endpoint MUST send a Close frame in response. (When sending a Close
            # frame in response, the endpoint typically echos the status code it received.)"
            # The received payload is echoed as is: an empty one stays empty (no status).
            self._write(build_frame(OP_CLOSE, payload))
            self.close_sent = (code, reason)
        # 7.1.1: "the server SHOULD close the underlying TCP connection" once both close
        # frames have gone by; 1.4: the peer "discards any further data received".
        self._close_tcp()
        return False

    def _fail(self, code: int, reason: str) -> None:
        """Record a protocol error and fail the connection with its close code."""
        self.exc = ProtocolError(int(code), reason)
        self.fail(code, reason)

    def _close_tcp(self) -> None:
        """Queue the TCP close (b"") once, stop reading and release the buffers."""
        if not self._eof_sent:
            self._eof_sent = True
            self._write(_EOF)
        self.state = CLOSED
        self._rstate = DISCARD
        self._tail = b""
        self._msg = None
        self._msg_opcode = 0
        self._compressed = False
        self._inflater = None

    def _state_name(self) -> str:
        return "the connection is closing" if self.state == CLOSING else "the connection is closed"
