"""Where the bytes of an idle connection go: tracemalloc of a real server, by allocation site.

Serves ``fasthub serve``'s app (``HubServer``, ``--io`` as given) in this process with
tracemalloc on, opens N WebSocket connections from a child process (raw sockets: handshake,
``join_room`` into one of 100 rooms, then idle), and prints the bytes still allocated per
connection, grouped by the line that allocated them, plus the process's RSS per connection.
tracemalloc sees Python's allocations only (uvloop's libuv handles are malloc'ed: the RSS line
shows them)::

    python bench/idle_bytes.py -n 5000 --io fasthub
    python bench/idle_bytes.py -n 5000 --io uvloop
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc

CLIENT = r"""
import base64, os, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    socks.append(s)
    payload = ('{"type":"join_room","room":"r%d"}' % (i % 100)).encode()
    mask = os.urandom(4)
    body = bytes(b ^ mask[j % 4] for j, b in enumerate(payload))
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + body)
print("open", flush=True)
sys.stdin.readline()
"""


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("--io", default="fasthub", choices=["fasthub", "uvloop"])
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()

    import uvloop

    from fasthub import Hub, create_app
    from fasthub.server.run import uvicorn_config
    from fasthub.server.serving import HubServer

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(Hub())
    server = HubServer(uvicorn_config(app, "127.0.0.1", port, "warning"), args.io)
    thread = threading.Thread(target=lambda: uvloop.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), "10"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    client.stdout.readline()  # type: ignore[union-attr]
    time.sleep(0.5)  # warm: the first connections create the shared state
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    rss0 = rss_kb()
    clients = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(args.n)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    clients.stdout.readline()  # type: ignore[union-attr]
    deadline = time.monotonic() + 60
    while len(app.hub.connections) < args.n + 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    gc.collect()
    after = tracemalloc.take_snapshot()
    rss1 = rss_kb()
    n = len(app.hub.connections) - 10
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"--io {args.io}: {n} connections; tracemalloc {total / n:,.0f} B per connection; "
          f"RSS {(rss1 - rss0) * 1024 / n:,.0f} B per connection (tracemalloc's own bookkeeping included)")
    for s in stats[: args.top]:
        if abs(s.size_diff) < n * 4:
            break
        frame = s.traceback[0]
        name = frame.filename
        name = name.split("site-packages/")[1] if "site-packages/" in name else os.path.relpath(name)
        where = f"{name}:{frame.lineno}"
        print(f"{s.size_diff / n:8.1f} B  {s.count_diff / n:5.2f} blocks  {where}")
    for p in (clients, client):
        p.stdin.close()  # type: ignore[union-attr]
        p.wait()
    server.should_exit = True
    thread.join(10)


if __name__ == "__main__":
    main()
