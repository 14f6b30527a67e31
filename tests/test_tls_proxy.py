"""``wss://`` with a certificate made here, and the client address behind a trusted proxy
(``--proxy-headers``/``--forwarded-allow-ips``): believed from trusted peers only."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fasthub import HubConfig
from fasthub.server.protocol import HubProtocol
from tests.conftest import run, serve
from tests.test_operations import fasthub_serve


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files in ``folder``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fasthub test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def client_context(cert_file: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert_file))  # verifies the chain and 127.0.0.1
    return ctx


async def chat(url: str, ctx: ssl.SSLContext) -> dict[str, Any]:
    """Two clients in a room over TLS; what the second receives of the first's 100 KB message."""
    async with websockets.connect(url, ssl=ctx) as a, websockets.connect(url, ssl=ctx) as b:
        for ws in (a, b):
            assert (await ws.recv()).find('"connected"') > 0
            await ws.send('{"type":"join_room","room":"tls"}')
        await asyncio.sleep(0.2)
        big = "x" * 100_000  # several TLS records
        await a.send('{"type":"room_message","room":"tls","payload":{"big":"' + big + '"}}')
        while True:
            msg = json.loads(await asyncio.wait_for(b.recv(), 5))
            if msg["type"] == "room_message":
                return msg  # type: ignore[no-any-return]


def test_wss_on_the_fast_path(tmp_path: Path) -> None:
    cert_file, key_file = make_certificate(tmp_path)
    ctx = client_context(cert_file)
    kwargs = {"ssl_certfile": str(cert_file), "ssl_keyfile": str(key_file)}
    with serve({}, HubConfig(), ws="fasthub", uvicorn_kwargs=kwargs) as server:
        url = f"wss://127.0.0.1:{server.port}/ws"
        msg = run(chat(url, ctx))
        assert len(msg["payload"]["big"]) == 100_000
        # served by fasthub's own engine: every connection's sink is the fast-path protocol
        sinks = server.call(lambda: [type(c.sink) for c in server.hub.connections])
        assert sinks == [] or all(issubclass(s, HubProtocol) for s in sinks)

        async def held() -> list[type]:
            async with websockets.connect(url, ssl=ctx) as ws:
                await ws.recv()
                return server.call(lambda: [type(c.sink) for c in server.hub.connections])  # type: ignore[no-any-return]

        sinks = run(held())
        assert sinks and all(issubclass(s, HubProtocol) for s in sinks), sinks
        r = httpx.get(f"https://127.0.0.1:{server.port}/ws/stats", verify=ctx, timeout=5)
        assert r.status_code == 200 and "connections" in r.json()
        # a plain-text client on the TLS port is not served
        with pytest.raises((websockets.InvalidMessage, OSError, websockets.InvalidHandshake, TimeoutError)):
            run(asyncio.wait_for(websockets.connect(f"ws://127.0.0.1:{server.port}/ws"), 3))


def test_fasthub_serve_with_ssl_options(tmp_path: Path) -> None:
    cert_file, key_file = make_certificate(tmp_path)
    ctx = client_context(cert_file)
    with fasthub_serve("--ssl-certfile", str(cert_file), "--ssl-keyfile", str(key_file), https=ctx) as (_, base):
        msg = run(chat(base.replace("https", "wss") + "/ws", ctx))
        assert msg["payload"]["big"] == "x" * 100_000
        # an untrusting client refuses the self-signed certificate
        with pytest.raises(ssl.SSLCertVerificationError):
            run(websockets.connect(base.replace("https", "wss") + "/ws", ssl=ssl.create_default_context()))


@pytest.mark.parametrize(
    ("flags", "distinct_addresses"),
    [
        (["--proxy-headers", "--forwarded-allow-ips", "127.0.0.1"], True),  # a trusted proxy
        (["--proxy-headers", "--forwarded-allow-ips", "10.9.9.9"], False),  # this peer is not trusted
        ([], False),  # no --proxy-headers: the header is ignored even from 127.0.0.1
    ],
    ids=["trusted", "untrusted-peer", "off"],
)
def test_forwarded_for_is_believed_only_from_trusted_proxies(flags: list[str], distinct_addresses: bool) -> None:
    """One connection per IP: two clients with different X-Forwarded-For are two addresses only
    when the peer (127.0.0.1) is a trusted proxy; otherwise the second is refused (429)."""
    with fasthub_serve("--max-connections-per-ip", "1", *flags) as (_, base):
        url = base.replace("http", "ws") + "/ws"

        async def scenario() -> None:
            opened: list[Any] = []

            async def status(forwarded: str) -> int:
                try:
                    ws = await websockets.connect(url, additional_headers={"x-forwarded-for": forwarded})
                except websockets.InvalidStatus as exc:
                    return int(exc.response.status_code)
                opened.append(ws)
                return 101

            try:
                assert await status("203.0.113.7") == 101
                assert await status("198.51.100.9") == (101 if distinct_addresses else 429)
                if distinct_addresses:  # the same forwarded address twice is the same client
                    assert await status("203.0.113.7") == 429
            finally:
                for ws in opened:
                    await ws.close()

        run(scenario())


def test_connection_sees_the_forwarded_address() -> None:
    seen: list[Any] = []

    def on_connect(conn: Any) -> None:
        seen.append((conn.ip, conn.scope["client"][0] if conn.scope else None))

    options = {"proxy_headers": True, "forwarded_allow_ips": "127.0.0.1"}
    with serve({"on_connect": on_connect}, HubConfig(keep_scope=True), ws="fasthub", uvicorn_kwargs=options) as server:

        async def scenario() -> None:
            async with websockets.connect(server.ws_url(), additional_headers={"x-forwarded-for": "192.0.2.44"}) as ws:
                await ws.recv()

        run(scenario())
    assert seen == [("192.0.2.44", "192.0.2.44")]
