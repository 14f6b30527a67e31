"""``fasthub bench``: every scenario on tiny parameters against a real server, and the counting.

The figures must add up (every delivery counted once, nothing lost against a correct server),
and a server that drops or duplicates one message for one subscriber must be caught: a fast
result that loses messages is a failed result. ``--compare`` is run against fasthub, a working
peer and a broken one, which must be reported rather than dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fasthub import HubConfig
from fasthub.benchmark import BenchConfig, run_bench
from fasthub.benchmark.compare import handshake_ok
from fasthub.benchmark.options import parse_target
from fasthub.cli import main as cli_main
from tests.conftest import Server, serve

# A minimal hub of the protocol, in plain asyncio: relays room messages to every member
# (sender included). With --fault it drops (or doubles) seq 5 for the first member that is not
# the sender: exactly one bad delivery.
FAKE_HUB = r"""
import argparse, asyncio, base64, hashlib, json

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
rooms = {}
state = {"faulted": False}


def frame(text):
    n = len(text)
    if n < 126:
        return bytes([0x81, n]) + text
    if n < 65536:
        return bytes([0x81, 126]) + n.to_bytes(2, "big") + text
    return bytes([0x81, 127]) + n.to_bytes(8, "big") + text


async def client(reader, writer, fault):
    head = await reader.readuntil(b"\r\n\r\n")
    key = b""
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + frame(b'{"type":"hello"}'))
    joined = []
    try:
        while True:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await reader.readexactly(8), "big")
            mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
            data = bytes(c ^ mask[i % 4] for i, c in enumerate(await reader.readexactly(n)))
            if b0 & 0x0F == 8:
                break
            if b0 & 0x0F != 1:
                continue
            msg = json.loads(data)
            if msg["type"] == "join_room":
                rooms.setdefault(msg["room"], []).append(writer)
                joined.append(msg["room"])
            elif msg["type"] == "room_message":
                envelope = {"type": "room_message", "room": msg["room"], "payload": msg["payload"]}
                out = frame(json.dumps(envelope).encode())
                for member in rooms.get(msg["room"], []):
                    if fault and msg["payload"].get("seq") == 5 and member is not writer and not state["faulted"]:
                        state["faulted"] = True
                        if fault == "drop":
                            continue
                        member.write(out)
                    member.write(out)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        for room in joined:
            rooms[room].remove(writer)
        writer.close()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fault", choices=["drop", "dup"])
    args = parser.parse_args()
    server = await asyncio.start_server(lambda r, w: client(r, w, args.fault), "127.0.0.1", args.port)
    async with server:
        await asyncio.sleep(120)  # bounded: a leaked test server ends by itself


asyncio.run(main())
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def fake_hub(tmp_path: Path, fault: str | None = None) -> Iterator[str]:
    """The fake hub in a subprocess; yields its URL once it answers a handshake."""
    script = tmp_path / "fake_hub.py"
    script.write_text(FAKE_HUB)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(script), "--port", str(port), *(["--fault", fault] if fault else [])])
    try:
        deadline = time.monotonic() + 10
        while not handshake_ok(port):
            assert proc.poll() is None and time.monotonic() < deadline, "fake hub did not start"
            time.sleep(0.05)
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture(scope="module")
def hub() -> Iterator[Server]:
    """A real fasthub (fast path) without the per-connection rate limit, so ingress can run."""
    with serve(config=HubConfig(rate_limit=0), ws="fasthub") as server:
        yield server


def _bench(server: Server, scenario: str, **kw: Any) -> dict[str, Any]:
    kw.setdefault("drain", 2.0)
    kw.setdefault("deadline", 30.0)
    return run_bench(BenchConfig(server.ws_url(), scenario, **kw))


def _clean(res: dict[str, Any]) -> None:
    assert res["ok"], res["problems"]
    assert "error" not in res
    assert res["failed"] == 0 and res["lost"] == 0 and res["gaps"] == 0 and res["dup_or_ooo"] == 0
    assert res["misrouted"] == 0 and not res["timed_out"]


@pytest.mark.parametrize("procs", [1, 2])
def test_fanout_counts_every_delivery(hub: Server, procs: int) -> None:
    res = _bench(hub, "fanout", connections=50, messages=20, window=4, procs=procs)
    _clean(res)
    assert res["client_procs"] == procs
    assert res["connected"] == 51 and res["barrier_ok"] and res["members_joined"] == 51
    assert res["sent"] == 20 and res["pub_echo"] == 20
    assert res["received"] == res["expected"] == 50 * 20
    assert res["lat_n"] == res["received"] and res["pub_lat_n"] == 20
    assert 0 <= res["lat_min_ms"] <= res["lat_p50_ms"] <= res["lat_p99_ms"] <= res["lat_max_ms"]
    assert res["deliveries_per_s"] > 0 and res["msgs_per_s"] > 0 and res["handshakes_per_s"] > 0
    assert res["subs_incomplete"] == 0


@pytest.mark.parametrize("procs", [1, 2])
def test_ingress_echoes_every_message(hub: Server, procs: int) -> None:
    res = _bench(hub, "ingress", connections=20, messages=200, window=4, duration=5.0, procs=procs)
    _clean(res)
    assert res["connected"] == 20
    assert res["sent"] == res["received"] == 200  # the message cap, split over the processes
    assert res["lat_n"] == 200 and res["msgs_per_s"] > 0


def test_latency_follows_the_clock(hub: Server) -> None:
    res = _bench(hub, "latency", connections=30, rate=200.0, messages=40, procs=2)
    _clean(res)
    assert res["offered_rate"] == 200.0 and res["window"] is None
    assert res["received"] == res["expected"] == 30 * 40
    # 40 messages at 200/s are scheduled over 195 ms: the sends cannot finish much sooner
    assert res["send_span_s"] >= 0.15
    assert res["lat_p99_ms"] > 0


def test_idle_probe_reaches_every_member(hub: Server) -> None:
    res = _bench(hub, "idle", connections=40, duration=0.2, procs=2, pid=os.getpid())
    assert res["ok"], res["problems"]
    assert res["connected"] == res["open_at_sample"] == 40
    assert res["probe_members_reached"] == 40
    assert res["rss_before_kb"] > 0 and res["rss_per_conn_bytes"] is not None
    assert res["connect_s"] > 0 and res["handshakes_per_s"] > 0


@pytest.mark.parametrize("fault", ["drop", "dup"])
def test_one_bad_delivery_is_caught(tmp_path: Path, fault: str) -> None:
    with fake_hub(tmp_path, fault) as url:
        res = run_bench(BenchConfig(url, "fanout", connections=10, messages=20, window=2, procs=1, drain=0.5))
    assert not res["ok"]
    assert res["sent"] == 20 and res["pub_echo"] == 20
    if fault == "drop":
        assert res["lost"] == 1 and res["gaps"] == 1 and res["dup_or_ooo"] == 0
        assert res["received"] == 10 * 20 - 1 and res["subs_incomplete"] == 1
        assert "lost=1" in res["problems"]
    else:
        assert res["dup_or_ooo"] == 1 and res["gaps"] == 0
        assert res["received"] == 10 * 20 + 1
        assert "dup_or_ooo=1" in res["problems"]


def test_cli_writes_table_and_json(hub: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", hub.ws_url(), "fanout", "ingress", "-n", "10", "-m", "10", "--procs", "1"]
    rc = cli_main([*argv, "--drain", "2", "--json", str(out), "--no-progress"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "fasthub bench" in table and "fanout" in table and "ingress" in table
    doc = json.loads(out.read_text())
    assert doc["tool"] == "fasthub bench" and doc["versions"]["orjson"] != "-"
    assert [r["scenario"] for r in doc["runs"]] == ["fanout", "ingress"]
    for run in doc["runs"]:
        assert run["result"]["ok"] and run["params"]["connections"] == 10
    assert doc["runs"][0]["result"]["received"] == 10 * 10


def test_cli_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["bench", "ws://127.0.0.1:9/ws", "nosuch"]) == 2
    assert cli_main(["bench", "fanout"]) == 2  # neither a URL nor --compare
    assert cli_main(["bench", "ws://10.1.2.3:80/ws", "fanout"]) == 2  # not loopback
    assert "loopback" in capsys.readouterr().err
    assert parse_target("ws://10.1.2.3/ws", allow_remote=True).port == 80
    with pytest.raises(ValueError):
        parse_target("wss://127.0.0.1/ws")


def test_compare_reports_a_peer_that_fails_to_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    peers = tmp_path / "peers"
    peers.mkdir()
    (peers / "good.py").write_text(FAKE_HUB)
    (peers / "broken.py").write_text("import sys\nprint('no such framework')\nsys.exit(3)\n")
    (peers / "_shared.py").write_text("raise SystemExit('helpers are not servers')\n")
    out = tmp_path / "compare.json"
    argv = ["bench", "--compare", "fanout", "-n", "10", "-m", "10", "--procs", "1", "--peers-dir", str(peers)]
    rc = cli_main([*argv, "--json", str(out), "--no-progress"])
    assert rc == 1  # one server failed
    doc = json.loads(out.read_text())
    status = {s["name"]: s["status"] for s in doc["servers"]}
    assert list(status) == ["fasthub", "broken", "good"]
    assert status["fasthub"] == status["good"] == "ok"
    assert status["broken"].startswith("failed to start") and "no such framework" in status["broken"]
    runs = {r["server"]: r for r in doc["runs"]}
    assert runs["fasthub"]["result"]["ok"] and runs["good"]["result"]["ok"]
    assert runs["fasthub"]["server_cmd"][1:4] == ["-m", "fasthub", "serve"]
    assert "result" not in runs["broken"]
    table = capsys.readouterr().out
    assert "x fasthub" in table and "broken" in table and "failed to start" in table


def test_refused_connections_end_the_run_quickly() -> None:
    url = f"ws://127.0.0.1:{_free_port()}/ws"  # nothing listens there
    res = run_bench(BenchConfig(url, "fanout", connections=5, messages=5, procs=1))
    assert not res["ok"] and res["connected"] == 0
    assert res["failed"] == res["conn_refused"] == 6
    assert "no connection opened" in res["error"]
    assert res["total_s"] < 10


class _Transport:
    """Collects what a Client writes (stands in for an asyncio transport)."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def close(self) -> None:
        self.closed = True

    abort = close


def _server_frame(payload: bytes, opcode: int = 0x1, fin: bool = True, mask: bytes | None = None) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([m | 127]) + n.to_bytes(8, "big")
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def _unmask(frame: bytes) -> tuple[int, bytes]:
    """(opcode, payload) of one short client frame, checking that it is masked."""
    assert frame[1] & 0x80, "client frames must be masked"
    n = frame[1] & 0x7F
    key, body = frame[2:6], frame[6 : 6 + n]
    return frame[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(body))


def test_client_parser_edge_cases() -> None:
    import asyncio
    import random

    from fasthub.benchmark.wsclient import OPEN, SUBSCRIBER, Client, Tally, mask_frame

    loop = asyncio.new_event_loop()
    try:
        tally = Tally()
        client = Client(0, SUBSCRIBER, 7, tally, b"", b"", b"", loop.create_future(), random.Random(1))
        transport = _Transport()
        client.transport = transport  # type: ignore[assignment]
        client.state = OPEN
        tally.n_open = 1

        def msg(seq: int, pad: str = "", spaced: bool = False) -> bytes:
            payload = {"seq": seq, "t": time.monotonic_ns(), "src": 7, "pad": pad}
            sep = (", ", ": ") if spaced else (",", ":")  # spaced: not verbatim, the full parse
            return json.dumps({"type": "room_message", "payload": payload}, separators=sep).encode()

        stream = b"".join(
            [
                _server_frame(b'{"type":"system","payload":{"event":"joined"}}'),  # other
                _server_frame(msg(-1)),  # probe
                _server_frame(msg(0)),
                _server_frame(msg(1, "x" * 300)),  # 16-bit length
                _server_frame(msg(2, "y" * 70_000, spaced=True)),  # 64-bit length
                _server_frame(msg(3)[:20], fin=False) + _server_frame(msg(3)[20:], opcode=0x0),  # fragments
                _server_frame(msg(4), mask=b"\x01\x02\x03\x04"),  # masked: counted, still read
                _server_frame(b"hi", opcode=0x9),  # ping
                _server_frame(msg(6)),  # gap of one (5 missing)
                _server_frame(msg(6)),  # duplicate
            ]
        )
        for i in range(len(stream)):  # the worst split: one byte per read
            client.data_received(stream[i : i + 1])
        assert tally.other_frames == 1 and tally.probe_frames == 1 and tally.probe_conns == 1
        assert tally.received == 7 and client.next_seq == 7
        assert tally.gaps == 1 and tally.dup_or_ooo == 1
        assert tally.masked_server_frames == 1 and tally.misrouted == 0
        assert len(tally.lat) == 7
        assert tally.pings_answered == 1 and _unmask(transport.out[-1]) == (0xA, b"hi")
        client.data_received(_server_frame(b"\x03\xe8", opcode=0x8))
        assert tally.server_closed == 1 and tally.n_open == 0 and transport.closed
        assert _unmask(transport.out[-1]) == (0x8, b"\x03\xe8")
        # and the sending side: a 64-bit-length frame masks and unmasks to the same text
        big = b"z" * 70_000
        frame = mask_frame(big, random.Random(2))
        assert frame[1] == 0xFF and int.from_bytes(frame[2:10], "big") == len(big)
        key = frame[10:14]
        assert bytes(b ^ key[i % 4] for i, b in enumerate(frame[14:])) == big
    finally:
        loop.close()
