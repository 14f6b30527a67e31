"""Bytes on the wire per delivery of typical chat messages, with and without permessage-deflate.

Starts ``fasthub serve`` on a free loopback port, opens four raw-socket subscribers to one room
(plain JSON, JSON + permessage-deflate, MessagePack, MessagePack + permessage-deflate), and
publishes chat messages whose texts are English-like sentences of 10-400 characters (seeded, so
every run sends the same). Each subscriber counts the frames it receives as they are on the
wire (header and payload). Deterministic: no timing is involved.

    python bench/compression_bytes.py [--messages 300] [--json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import socket
import subprocess
import sys
import time
import zlib

import ormsgpack

WORDS = (  # noqa: SIM905 (a sentence reads better than a list of 90 strings)
    "the a to and of I you it is that in for on we this be are with have not can at just so "
    "what but was me do if about my they will there all how get your like one know think would "
    "time meeting tomorrow today deploy release fixed bug issue review merge branch build test "
    "lunch coffee call later thanks great sounds good let me check see morning afternoon team "
    "customer ticket update status done working on it please could someone look server down up"
).split()


def sentence(rng: random.Random, length: int) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < length:
        words.append(rng.choice(WORDS))
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice(".?!")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mask(payload: bytes, opcode: int = 1) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


class Sub:
    """A raw subscriber that records each frame's size on the wire."""

    def __init__(self, port: int, headers: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.response = head.decode("latin-1").lower()
        self.sizes: list[int] = []
        self.compressed = 0

    def frame(self) -> tuple[int, bytes]:
        while True:
            if len(self.buf) >= 2:
                n, start = self.buf[1] & 0x7F, 2
                if n == 126 and len(self.buf) >= 4:
                    n, start = int.from_bytes(self.buf[2:4], "big"), 4
                elif n == 127 and len(self.buf) >= 10:
                    n, start = int.from_bytes(self.buf[2:10], "big"), 10
                if (n < 126 or start > 2) and len(self.buf) >= start + n:
                    b0, payload = self.buf[0], self.buf[start : start + n]
                    self.sizes.append(start + n)
                    self.buf = self.buf[start + n :]
                    if b0 & 0x40:
                        self.compressed += 1
                        payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
                    return b0 & 0x0F, payload
            self.buf += self.sock.recv(1 << 20)

    def envelope(self) -> dict[str, object]:
        opcode, payload = self.frame()
        return ormsgpack.unpackb(payload) if opcode == 2 else json.loads(payload)  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "fasthub", "serve", "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        deflate = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        msgpack = "Sec-WebSocket-Protocol: fasthub.msgpack\r\n"
        subs = {
            "json": Sub(port, ""),
            "json+deflate": Sub(port, deflate),
            "msgpack": Sub(port, msgpack),
            "msgpack+deflate": Sub(port, msgpack + deflate),
        }
        assert "permessage-deflate" in subs["json+deflate"].response
        assert "fasthub.msgpack" in subs["msgpack"].response
        for sub in subs.values():
            sub.envelope()  # connected
            sub.sock.sendall(mask(json.dumps({"type": "join_room", "room": "chat", "id": "j"}).encode()))
            while sub.envelope().get("id") != "j":
                pass
        for sub in subs.values():  # only the messages count
            sub.sizes.clear()
            sub.compressed = 0
        publisher = subs["json"]
        rng = random.Random(14)
        texts = [sentence(rng, rng.choice((10, 25, 40, 60, 80, 120, 160, 220, 300, 400))) for _ in range(args.messages)]
        for i, text in enumerate(texts):
            body = {"type": "room_message", "room": "chat", "payload": {"text": text, "client_msg_id": f"m{i}"}}
            publisher.sock.sendall(mask(json.dumps(body).encode()))
            for sub in subs.values():
                while sub.envelope().get("type") != "room_message":
                    pass
        result: dict[str, object] = {"messages": args.messages, "mean_text_chars": sum(map(len, texts)) / len(texts)}
        for name, sub in subs.items():
            result[f"{name}_bytes_per_delivery"] = round(sum(sub.sizes) / len(sub.sizes), 1)
            result[f"{name}_compressed_frames"] = sub.compressed
        base = float(result["json_bytes_per_delivery"])  # type: ignore[arg-type]
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{args.messages} chat messages, texts of {result['mean_text_chars']:.0f} characters on average")
            for name, sub in subs.items():
                per = float(result[f"{name}_bytes_per_delivery"])  # type: ignore[arg-type]
                print(
                    f"  {name:16} {per:7.1f} B/delivery  ({per / base:.2f} x JSON)  compressed frames: {sub.compressed}"
                )
    finally:
        server.terminate()
        server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
