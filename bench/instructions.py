"""In-process work of one connect or one room message, for instruction counts under callgrind.

Wall-clock figures on a shared VM drift by 10-30%; instructions do not. This drives the real
``ListenerProtocol`` (``fasthub serve``'s) over a stand-in transport: ``connect`` opens N
connections (request head -> direct open -> 101 and ``connected`` flushed) and closes them;
``join`` does the same with a ``join_room`` from each (N a multiple of 256);
``ingress`` sends N ``room_message`` frames (masked, 16 per read, as the loadgen's ingress
does) to a room whose only member is the sender, each relayed back. Run it through
``bench/instructions.sh``, which subtracts a short run from a long one (start-up cancels out).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
from types import SimpleNamespace
from typing import Any

from fasthub import Hub, HubConfig, create_app
from fasthub._wire.testing import encode_frame
from fasthub.server.listener import listener_protocol


class Transport:
    """Just enough of an asyncio transport: writes are counted, nothing else happens."""

    def __init__(self) -> None:
        self.written = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return None  # no socket: the flush writes through ``write``

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.written += sum(len(c) for c in chunks)

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


REQUEST = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def main(what: str, n: int) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # FASTHUB_BENCH_CONFIG: HubConfig fields as JSON (e.g. {"history_size": 0}), to compare
    config_fields = json.loads(os.environ.get("FASTHUB_BENCH_CONFIG", "{}"))
    app = create_app(Hub(HubConfig(**{"rate_limit": 0, **config_fields})))
    config = SimpleNamespace(
        loaded=True, loaded_app=app, root_path="", asgi_version="3.0", ws_max_size=1 << 20, load=lambda: None
    )
    state = SimpleNamespace(connections=set(), tasks=set(), default_headers=[(b"server", b"uvicorn")])
    protocol_class = listener_protocol(10.0, 16384)
    app_state: dict[str, Any] = {}  # one per server, as uvicorn passes its lifespan state

    def tick() -> None:
        loop.run_until_complete(asyncio.sleep(0))

    gc.disable()
    if what in ("connect", "join"):
        opened = []
        join = encode_frame(1, b'{"type":"join_room","room":"lobby"}', mask=b"\x01\x02\x03\x04")
        for i in range(n):
            p = protocol_class(config, state, app_state, _loop=loop)
            p.connection_made(Transport())
            p.data_received(REQUEST)
            opened.append(p)
            if i % 256 == 255:
                tick()
                if what == "join":  # as the loadgen's idle does: each joins one room once open
                    for q in opened[-256:]:
                        q.data_received(join)
                    tick()
        tick()
        for p in opened:
            p.connection_lost(None)
        tick()
    else:
        p = protocol_class(config, state, app_state, _loop=loop)
        p.connection_made(Transport())
        p.data_received(REQUEST)
        tick()
        mask = b"\x01\x02\x03\x04"
        p.data_received(encode_frame(1, b'{"type":"join_room","room":"r17"}', mask=mask))
        tick()
        body = b'{"type":"room_message","room":"r17","payload":{"seq":123,"t":1733160000000000000,"pad":"'
        chunk = encode_frame(1, body + b"x" * 60 + b'"}}', mask=mask) * 16
        for _ in range(n // 16):
            p.data_received(chunk)
            tick()
    loop.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
