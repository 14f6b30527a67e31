"""A raw asyncio WebSocket client for load generation: handshake and RFC 6455 framing by hand.

Why not the ``websockets`` library: per message it pays for a frame object, a queue and a task
switch, so a Python client built on it saturates long before a fast server does. Here one
``data_received`` call parses every complete frame of the chunk in place, reads the clock once
(like the C loadgen's ``trecv`` per read) and counts what it finds in a shared :class:`Tally`.
Sends are pre-framed, masked bytes written straight to the transport.

What is counted mirrors the C loadgen (``bench/loadgen/loadgen.c``): frames whose JSON holds a payload
with ``"seq" >= 0`` are measured deliveries (order checked per connection: ``gaps``,
``dup_or_ooo``), ``"seq" < 0`` is a probe, anything else is ``other_frames``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import time
from array import array
from collections.abc import Callable
from typing import Any, cast

from orjson import loads

__all__ = [
    "Client",
    "Tally",
    "accept_key",
    "find_payload",
    "mask_frame",
    "room_message",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_SEQ = b'"seq"'
_PAYLOAD = b'{"seq":'  # how every payload this client sends begins
_monotonic_ns = time.monotonic_ns

# connection states (plain ints: compared in the hot path)
CONNECTING, HANDSHAKE, OPEN, CLOSED = 0, 1, 2, 3

# roles
SUBSCRIBER, PUBLISHER, ECHO = 0, 1, 2

_MAX_FRAME = 1 << 26  # 64 MiB: anything larger is a broken server, not a benchmark


def accept_key(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def mask_frame(payload: bytes, rng: random.Random, opcode: int = 0x1) -> bytes:
    """One final client frame: clients MUST mask (RFC 6455 5.3), with a fresh key per frame.

    The XOR runs on two big ints, which is the fastest pure-Python way for short payloads.
    """
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    key = rng.getrandbits(32).to_bytes(4, "big")
    if not n:
        return head + key
    stream = (key * ((n >> 2) + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return head + key + masked


def room_message(room: str, seq: int, t: int, src: int, pad: str) -> bytes:
    """The JSON text of one room message (built by formatting: cheaper than a serializer)."""
    body = f'{{"seq":{seq},"t":{t},"src":{src},"pad":"{pad}"}}'
    return f'{{"type":"room_message","room":"{room}","payload":{body}}}'.encode()


def find_payload(obj: Any, depth: int = 0) -> dict[str, Any] | None:
    """The innermost-first dict that carries ``"seq"``, anywhere in the envelope (any server's)."""
    if isinstance(obj, dict):
        if "seq" in obj:
            return obj
        if depth < 6:
            for value in obj.values():
                if isinstance(value, (dict, list)):
                    found = find_payload(value, depth + 1)
                    if found is not None:
                        return found
    elif isinstance(obj, list) and depth < 6:
        for value in obj:
            found = find_payload(value, depth + 1)
            if found is not None:
                return found
    return None


class Tally:
    """Counters shared by every connection of one worker process (summed by the coordinator)."""

    __slots__ = (
        "binary_frames",
        "conn_refused",
        "dup_or_ooo",
        "failed",
        "gaps",
        "hs_bad_accept",
        "hs_bad_status",
        "hs_timeout",
        "lat",
        "lat_cap",
        "lat_dropped",
        "masked_server_frames",
        "misrouted",
        "n_open",
        "other_frames",
        "pings_answered",
        "probe_conns",
        "probe_frames",
        "pub_echo",
        "pub_lat",
        "received",
        "reset_after_open",
        "server_closed",
        "t_last_data",
        "t_last_recv",
    )

    def __init__(self, lat_cap: int = 20_000_000) -> None:
        self.n_open = 0
        self.failed = 0
        self.conn_refused = 0
        self.hs_bad_status = 0
        self.hs_bad_accept = 0
        self.hs_timeout = 0
        self.server_closed = 0
        self.reset_after_open = 0
        self.pings_answered = 0
        self.other_frames = 0
        self.binary_frames = 0
        self.masked_server_frames = 0
        self.probe_frames = 0
        self.probe_conns = 0
        self.received = 0
        self.pub_echo = 0
        self.gaps = 0
        self.dup_or_ooo = 0
        self.misrouted = 0
        self.t_last_recv = 0
        self.t_last_data = 0
        # latencies in ns; bounded so a long run cannot exhaust memory (overflow is counted)
        self.lat: array[int] = array("q")
        self.pub_lat: array[int] = array("q")
        self.lat_cap = lat_cap
        self.lat_dropped = 0


class Client(asyncio.Protocol):
    """One WebSocket connection; ``role`` decides where its measured deliveries are counted.

    ``on_batch(client, n)`` is called after a chunk that held ``n`` measured deliveries, so a
    publisher or an echo client can refill its window once per chunk (one write, not ``n``).
    """

    __slots__ = (
        "_buf",
        "_frag",
        "_key",
        "_rng",
        "expect_src",
        "got_probe",
        "idx",
        "join",
        "next_seq",
        "on_batch",
        "opened",
        "received",
        "request",
        "role",
        "sent",
        "state",
        "tally",
        "transport",
    )

    def __init__(
        self,
        idx: int,
        role: int,
        expect_src: int,
        tally: Tally,
        request: bytes,
        key: bytes,
        join: bytes,
        opened: asyncio.Future[str],
        rng: random.Random,
        on_batch: Callable[[Client, int], None] | None = None,
    ) -> None:
        self.idx = idx
        self.role = role
        self.expect_src = expect_src
        self.tally = tally
        self.request = request
        self._key = key
        self.join = join
        self.opened = opened
        self._rng = rng
        self.on_batch = on_batch
        self.state = CONNECTING
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._frag: bytearray | None = None
        self.next_seq = 0
        self.received = 0
        self.sent = 0
        self.got_probe = False

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport = self.transport
        self.state = HANDSHAKE
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        tally = self.tally
        if self.state == OPEN:
            tally.n_open -= 1
            tally.reset_after_open += 1
        elif self.state != CLOSED:
            self._fail("reset")
        self.state = CLOSED

    def data_received(self, data: bytes) -> None:
        if self.state == OPEN:
            self._frames(data)
        elif self.state == HANDSHAKE:
            self._handshake(data)

    # -- sending -----------------------------------------------------------------------------

    def send_text(self, text: bytes) -> None:
        """Frame, mask and write one text message (dropped once the connection is not open)."""
        if self.state == OPEN and self.transport is not None:
            self.transport.write(mask_frame(text, self._rng))

    def send_many(self, texts: list[bytes]) -> None:
        """Several messages in one write (one syscall for a window's worth)."""
        if self.state == OPEN and self.transport is not None:
            rng = self._rng
            self.transport.write(b"".join([mask_frame(t, rng) for t in texts]))

    def close(self) -> None:
        """Send a close frame and drop the TCP connection (the run is over)."""
        if self.transport is not None and self.state != CLOSED:
            if self.state == OPEN:
                self.tally.n_open -= 1
                self.transport.write(mask_frame(b"\x03\xe8", self._rng, 0x8))
            self.state = CLOSED
            self.transport.close()

    # -- receiving ---------------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        tally = self.tally
        tally.failed += 1
        if reason == "refused":
            tally.conn_refused += 1
        elif reason == "bad_status":
            tally.hs_bad_status += 1
        elif reason == "bad_accept":
            tally.hs_bad_accept += 1
        elif reason == "timeout":
            tally.hs_timeout += 1
        self.state = CLOSED
        if not self.opened.done():
            self.opened.set_result(reason)
        if self.transport is not None:
            self.transport.abort()

    def fail_connect(self, reason: str) -> None:
        """The connect phase gave up on this connection (refused, timed out)."""
        if self.state != CLOSED:
            self._fail(reason)

    def _handshake(self, data: bytes) -> None:
        buf = self._buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self._buf = buf
            if len(buf) > 16384:
                self._fail("bad_status")
            return
        self._buf = b""
        head = buf[:end].decode("latin-1")
        lines = head.split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101"):
            self._fail("bad_status")
            return
        expected = accept_key(self._key).decode()
        ok = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-accept":
                ok = value.strip() == expected
                break
        if not ok:
            self._fail("bad_accept")
            return
        self.state = OPEN
        self.tally.n_open += 1
        if self.join:
            self.send_text(self.join)
        if not self.opened.done():
            self.opened.set_result("")
        rest = buf[end + 4 :]
        if rest:
            self._frames(rest)

    def _frames(self, data: bytes) -> None:
        """Parse every complete frame of ``data`` (plus any leftover) and count its messages.

        The common case, the next in-order delivery from the expected sender, is counted
        inline with local counters written back once per chunk (attribute updates per frame
        cost more than the JSON parse); everything else goes through ``_count``.
        """
        now = _monotonic_ns()
        if self._buf:
            data = self._buf + data
            self._buf = b""
        n = len(data)
        off = 0
        tally = self.tally
        batch = 0
        # fast-path state, written back after the loop
        fast = 0
        nxt = self.next_seq
        src = self.expect_src
        lat = tally.pub_lat if self.role == PUBLISHER else tally.lat
        room_left = tally.lat_cap - len(lat)
        lat_append = lat.append
        find = data.find
        while n - off >= 2:
            b0 = data[off]
            ln = data[off + 1]
            h = 2
            masked = ln & 0x80
            ln &= 0x7F
            if ln == 126:
                if n - off < 4:
                    break
                ln = (data[off + 2] << 8) | data[off + 3]
                h = 4
            elif ln == 127:
                if n - off < 10:
                    break
                ln = int.from_bytes(data[off + 2 : off + 10], "big")
                h = 10
            if masked:
                h += 4
            if ln > _MAX_FRAME:
                self.close()
                return
            start = off + h
            end = start + ln
            if end > n:
                break
            off = end
            if masked:  # servers must not mask (RFC 6455 5.1); counted, then read anyway
                tally.masked_server_frames += 1
                key = data[start - 4 : start]
                stream = (key * ((ln >> 2) + 1))[:ln]
                body = (int.from_bytes(data[start:end], "big") ^ int.from_bytes(stream, "big")).to_bytes(ln, "big")
                data = data[:start] + body + data[end:]
                find = data.find
            if b0 == 0x81:  # a whole text message: the hot path
                # Our payload object is flat and brace-free, so when the server relays it
                # verbatim, orjson needs only that slice, not the whole envelope.
                a = find(_PAYLOAD, start, end)
                msg = None
                if a >= 0:
                    try:
                        msg = loads(data[a : find(b"}", a, end) + 1])
                    except ValueError:
                        msg = None
                if msg is None:
                    if find(_SEQ, start, end) < 0:
                        tally.other_frames += 1
                        continue
                    try:
                        msg = loads(data[start:end])
                    except ValueError:
                        tally.other_frames += 1
                        continue
                    p = msg.get("payload") if type(msg) is dict else None
                else:
                    p = msg
                if type(p) is dict:
                    seq = p.get("seq")
                    t = p.get("t")
                    if seq == nxt and type(seq) is int and type(t) is int and p.get("src") == src:
                        nxt += 1
                        fast += 1
                        if room_left > 0:
                            room_left -= 1
                            lat_append(now - t if now > t else 0)
                        else:
                            tally.lat_dropped += 1
                        continue
                self.next_seq = nxt
                batch += self._count(msg, now)
                nxt = self.next_seq
                room_left = tally.lat_cap - len(lat)
                continue
            opcode = b0 & 0x0F
            if opcode == 0x9:
                tally.pings_answered += 1
                if self.transport is not None:
                    self.transport.write(mask_frame(data[start:end], self._rng, 0xA))
            elif opcode == 0x8:
                tally.server_closed += 1
                tally.n_open -= 1
                if self.transport is not None:
                    self.transport.write(mask_frame(b"\x03\xe8", self._rng, 0x8))
                    self.transport.close()
                self.state = CLOSED
                break
            elif opcode == 0x2:
                tally.binary_frames += 1
                if b0 & 0x80:
                    batch += self._message(data[start:end], now)
                else:
                    self._frag = bytearray(data[start:end])
            elif opcode == 0x1:  # first fragment of a text message
                self._frag = bytearray(data[start:end])
            elif opcode == 0x0 and self._frag is not None:
                self._frag += data[start:end]
                if b0 & 0x80:
                    whole = bytes(self._frag)
                    self._frag = None
                    self.next_seq = nxt
                    batch += self._message(whole, now)
                    nxt = self.next_seq
                    room_left = tally.lat_cap - len(lat)
        self.next_seq = nxt
        if fast:
            self.received += fast
            if self.role == PUBLISHER:
                tally.pub_echo += fast
            else:
                tally.received += fast
            tally.t_last_recv = tally.t_last_data = now
            batch += fast
        if self.state == CLOSED:
            return
        if off < n:
            self._buf = data[off:]
        if batch and self.on_batch is not None:
            self.on_batch(self, batch)

    def _message(self, text: bytes, now: int) -> int:
        """Parse and count one message; 1 if it was a measured delivery (seq >= 0), else 0."""
        if text.find(_SEQ) < 0:
            self.tally.other_frames += 1
            return 0
        try:
            msg = loads(text)
        except ValueError:
            self.tally.other_frames += 1
            return 0
        return self._count(msg, now)

    def _count(self, msg: Any, now: int) -> int:
        """Count one parsed message (the rules of loadgen's ``handle_message``)."""
        tally = self.tally
        p = msg.get("payload") if type(msg) is dict else None
        if type(p) is not dict or "seq" not in p:
            p = find_payload(msg)
            if p is None:
                tally.other_frames += 1
                return 0
        seq = p["seq"]
        if type(seq) is not int:
            tally.other_frames += 1
            return 0
        tally.t_last_recv = now
        if seq < 0:  # probe / barrier message
            tally.probe_frames += 1
            if not self.got_probe:
                self.got_probe = True
                tally.probe_conns += 1
            return 0
        t = p.get("t")
        if type(t) is not int or p.get("src") != self.expect_src:
            tally.misrouted += 1
            return 0
        tally.t_last_data = now
        nxt = self.next_seq
        if seq == nxt:
            self.next_seq = nxt + 1
        elif seq > nxt:
            tally.gaps += seq - nxt
            self.next_seq = seq + 1
        else:
            tally.dup_or_ooo += 1
        self.received += 1
        if self.role == PUBLISHER:
            tally.pub_echo += 1
            lat = tally.pub_lat
        else:
            tally.received += 1
            lat = tally.lat
        if len(lat) < tally.lat_cap:
            lat.append(now - t if now > t else 0)
        else:
            tally.lat_dropped += 1
        return 1


def handshake_request(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """(request bytes, Sec-WebSocket-Key) for one connection."""
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    return request, key
