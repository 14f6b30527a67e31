"""docs/deployment.md and docs/operations.md stay true where the walkthrough cannot show it.

- The metrics table of docs/operations.md and ``fasthub.metrics.FAMILIES`` list the same
  families with the same types and labels (both ways).
- Behind nginx with the walkthrough's own ``nginx.conf`` (taken from the page), clients connect
  with ``wss://``, meet in a room, and fasthub (``--proxy-headers --forwarded-allow-ips
  127.0.0.1``) sees each client's own address: the clients connect from 127.0.0.2 and 127.0.0.3,
  loopback addresses nginx reports in ``X-Forwarded-For`` and fasthub does not trust, so one
  that sends its own ``X-Forwarded-For`` is still seen as what it is.

nginx is Debian's ``nginx-light`` (``ci/test`` installs it); without it these tests skip, or
fail when ``FASTHUB_REQUIRE_TOOLS`` is set (as ``ci/test`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from fasthub import HubConfig
from fasthub.metrics import FAMILIES
from tests.conftest import run, serve
from tests.test_docs import dc
from tests.test_operations import fasthub_serve, scrape
from tests.test_tls_proxy import client_context, make_certificate

#: the compiled pass of ci/test runs these; their subject is not the twins (see ci/test)
pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENT = ROOT / "docs" / "deployment.md"
OPERATIONS = ROOT / "docs" / "operations.md"


# -- the metrics table -----------------------------------------------------------------------------


def metrics_table() -> dict[str, tuple[str, str | None]]:
    """name -> (type, label or None) of the table under "## Metrics" in docs/operations.md."""
    text = OPERATIONS.read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str | None]] = {}
    for line in section.splitlines():
        m = re.match(r"^\| `(fasthub_\w+)` \| (\w+) \| (?:`(\w+)`)? *\| (.+) \|$", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} is twice in the table"
            assert m.group(4).strip(), f"{m.group(1)}: no meaning"
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def test_the_metrics_table_lists_every_family_and_nothing_else() -> None:
    documented = metrics_table()
    exported = {name: (kind, label) for name, (kind, _, label) in FAMILIES.items()}
    assert sorted(set(exported) - set(documented)) == [], "exported but not in docs/operations.md"
    assert sorted(set(documented) - set(exported)) == [], "in docs/operations.md but not exported"
    assert documented == exported


# -- behind nginx --------------------------------------------------------------------------------------


def nginx_binary() -> str:
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if path is None:
        if os.environ.get("FASTHUB_REQUIRE_TOOLS"):
            pytest.fail("nginx is not installed (apt-get install nginx-light) and FASTHUB_REQUIRE_TOOLS is set")
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    return path


def documented_nginx_conf() -> str:
    """The ``deploy/nginx.conf`` block of docs/deployment.md, as written there."""
    (block,) = [b for b in dc.parse_blocks(DEPLOYMENT) if b.mark == "file" and b.args == ["deploy/nginx.conf"]]
    text: str = block.text
    assert "listen 127.0.0.1:8443 ssl;" in text and "server 127.0.0.1:8000;" in text
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def nginx(folder: Path, upstream: int) -> Iterator[tuple[int, ssl.SSLContext]]:
    """nginx with the documented configuration (its ports moved to free ones) in ``folder``:
    TLS on the port it yields, proxying to 127.0.0.1:``upstream``; and a client context that
    trusts its certificate."""
    binary = nginx_binary()
    port = free_port()
    conf = documented_nginx_conf().replace("127.0.0.1:8443", f"127.0.0.1:{port}")
    conf = conf.replace("127.0.0.1:8000", f"127.0.0.1:{upstream}")
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    (folder / "nginx.conf").write_text(conf)
    cert, _ = make_certificate(folder)  # cert.pem and key.pem, the names nginx.conf uses
    proc = subprocess.Popen(
        [binary, "-p", f"{folder}/", "-c", "nginx.conf", "-e", "stderr", "-g", "daemon off;"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, f"nginx exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.05)
        yield port, client_context(cert)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


async def open_from(url: str, ctx: ssl.SSLContext, source: str, forwarded: str | None = None) -> Any:
    """A client connecting from the loopback address ``source``, optionally sending its own
    ``X-Forwarded-For``; it has read its ``connected`` message."""
    headers = {"x-forwarded-for": forwarded} if forwarded else None
    ws = await websockets.connect(url, ssl=ctx, local_addr=(source, 0), additional_headers=headers)
    hello = json.loads(await ws.recv())
    assert hello["payload"]["event"] == "connected"
    return ws


async def until(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        msg: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if msg["type"] == kind:
            return msg


def test_behind_the_documented_nginx_clients_meet_and_keep_their_addresses(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []

    def on_connect(conn: Any) -> None:
        seen.append((conn.ip, conn.scope["scheme"]))

    options = {"proxy_headers": True, "forwarded_allow_ips": "127.0.0.1"}  # --proxy-headers --forwarded-allow-ips
    config = HubConfig(keep_scope=True)
    with serve({"on_connect": on_connect}, config, ws="fasthub", uvicorn_kwargs=options) as server, \
            nginx(tmp_path, server.port) as (port, ctx):
        url = f"wss://127.0.0.1:{port}/ws"

        async def scenario() -> dict[str, Any]:
            alice = await open_from(url, ctx, "127.0.0.2")
            bob = await open_from(url, ctx, "127.0.0.3", forwarded="203.0.113.7")  # a claim nginx appends to
            try:
                for ws in (alice, bob):
                    await ws.send(json.dumps({"type": "join_room", "room": "lobby"}))
                    assert (await until(ws, "system"))["payload"]["event"] == "joined"
                await alice.send(json.dumps({"type": "room_message", "room": "lobby", "payload": {"text": "hi"}}))
                return await until(bob, "room_message")
            finally:
                await alice.close()
                await bob.close()

        msg = run(scenario())
    assert msg["payload"] == {"text": "hi"} and msg["room"] == "lobby"
    # X-Forwarded-For "127.0.0.2" and "203.0.113.7, 127.0.0.3": the right-most untrusted address;
    # X-Forwarded-Proto https: the WebSocket scheme is wss
    assert seen == [("127.0.0.2", "wss"), ("127.0.0.3", "wss")]


def test_per_address_limits_count_the_clients_behind_the_documented_nginx(tmp_path: Path) -> None:
    """``fasthub serve`` as the walkthrough runs it, with one connection per address: through
    nginx the clients are still told apart, and a forged X-Forwarded-For does not help."""
    args = ("--proxy-headers", "--forwarded-allow-ips", "127.0.0.1", "--max-connections-per-ip", "1")
    with fasthub_serve(*args) as (_, base), nginx(tmp_path, int(base.rsplit(":", 1)[1])) as (port, ctx):
        url = f"wss://127.0.0.1:{port}/ws"

        async def status(source: str, forwarded: str | None = None) -> int:
            try:
                ws = await open_from(url, ctx, source, forwarded)
            except websockets.InvalidStatus as exc:
                return int(exc.response.status_code)
            opened.append(ws)
            return 101

        opened: list[Any] = []

        async def scenario() -> list[int]:
            try:
                return [
                    await status("127.0.0.2"),
                    await status("127.0.0.2"),  # the same address again: refused
                    await status("127.0.0.3", forwarded="127.0.0.9"),  # a new address; its claim is ignored
                    await status("127.0.0.4", forwarded="127.0.0.3"),  # posing as a connected one: still 127.0.0.4
                ]
            finally:
                for ws in opened:
                    await ws.close()

        assert run(scenario()) == [101, 429, 101, 101]
        refused = scrape(base)["fasthub_handshake_failures_total"]
        assert refused == {(("status", "429"),): 1.0}
