"""Attacks on the defences: JWT, Origin, rate limits, connection caps, slowloris, access rules.

Every test uses a real server on loopback and real clients (raw sockets where a library would
not send the bad bytes), and checks the exact status or close code and that the server and the
other clients carried on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fasthub import Hub, HubConfig, create_app
from fasthub.auth import JWTAuthenticator, jwt_authenticator
from fasthub.exceptions import Denied
from fasthub.server.run import uvicorn_config
from tests.conftest import Client, Server, connect, free_socket, run, serve, uvicorn_thread

SECRET = "test-secret-that-is-long-enough-for-hs256!"


def token(sub: Any = "alice", ttl: float | None = 300, key: Any = SECRET, alg: str = "HS256", **claims: Any) -> str:
    body: dict[str, Any] = {"sub": sub, **claims}
    if ttl is not None:
        body["exp"] = int(time.time() + ttl)
    return jwt.encode(body, key, algorithm=alg)


async def refused(url: str, **kw: Any) -> int:
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(url, **kw)
    return int(info.value.response.status_code)


def alive(server: Server) -> None:
    """The server still serves a fresh client."""

    async def check() -> None:
        c = await connect(server, f"token={token('probe')}") if server.extra.get("jwt") else await connect(server)
        await c.send({"type": "ping", "id": "alive"})
        await c.expect("pong", id="alive")
        await c.close()

    run(check())


# -- JWT ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def jwt_server(config: HubConfig | None = None, **auth: Any) -> Iterator[Server]:
    auth.setdefault("secret", SECRET)
    with serve({"authenticate": jwt_authenticator(**auth)}, config, ws="fasthub") as server:
        server.extra["jwt"] = True
        yield server


def test_jwt_from_header_query_and_subprotocol() -> None:
    async def scenario(server: Server) -> None:
        url = server.ws_url()
        ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {token('h')}"})
        assert json.loads(await ws.recv())["payload"]["user_id"] == "h"
        ws2 = await websockets.connect(server.ws_url(f"token={token('q')}"))
        assert json.loads(await ws2.recv())["payload"]["user_id"] == "q"
        ws3 = await websockets.connect(url, subprotocols=["fasthub", f"bearer.{token('s')}"])  # type: ignore[list-item]
        assert ws3.subprotocol == "fasthub"
        assert json.loads(await ws3.recv())["payload"]["user_id"] == "s"
        # the header wins over the query parameter (documented order)
        ws4 = await websockets.connect(
            server.ws_url(f"token={token('q2')}"), additional_headers={"Authorization": f"Bearer {token('h2')}"}
        )
        assert json.loads(await ws4.recv())["payload"]["user_id"] == "h2"
        for w in (ws, ws2, ws3, ws4):
            await w.close()

    with jwt_server() as server:
        run(scenario(server))


def test_bad_tokens_are_refused_with_401_before_the_upgrade() -> None:
    other = "another-secret-another-secret-another!!"
    cases = {
        "missing": None,
        "malformed": "not.a.jwt",
        "garbage": "x" * 300,
        "bad signature": token(key=other),
        "expired": token(ttl=-60),
        "not yet valid": token(nbf=int(time.time()) + 600),
        "wrong audience": token(aud="someone-else"),
        "wrong issuer": token(aud="fasthub", iss="evil"),
        "alg none": jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, None, algorithm="none"),
        "no sub": jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),
    }

    async def scenario(server: Server) -> None:
        for name, tok in cases.items():
            url = server.ws_url(f"token={tok}" if tok else "")
            assert await refused(url) == 401, name
        assert server.call(server.hub.connection_count) == 0
        ok = await websockets.connect(server.ws_url(f"token={token(aud='fasthub', iss='us')}"))
        assert json.loads(await ok.recv())["payload"]["user_id"] == "alice"
        await ok.close()

    with jwt_server(audience="fasthub", issuer="us") as server:
        run(scenario(server))


def test_valid_token_refused_by_the_app_gets_403_and_anonymous_is_opt_in() -> None:
    async def scenario(server: Server) -> None:
        assert await refused(server.ws_url(f"token={token('mallory')}")) == 403
        anon = await connect(server)  # --allow-anonymous
        assert anon.user_id.startswith("anon-")
        ok = await connect(server, f"token={token('alice')}")
        assert ok.user_id == "alice"

    with jwt_server(allow_anonymous=True, authorize=lambda ident: ident.user_id != "mallory") as server:
        run(scenario(server))


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_public_key_tokens_and_algorithm_confusion(kind: str) -> None:
    if kind == "rsa":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        alg = "RS256"
    else:
        private = ec.generate_private_key(ec.SECP256R1())
        alg = "ES256"
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    async def scenario(server: Server) -> None:
        good = await connect(server, f"token={token('pk', key=private, alg=alg)}")
        assert good.user_id == "pk"
        # HS256 signed with the public key as the HMAC secret: the classic confusion attack
        forged = jwt.encode({"sub": "root", "exp": int(time.time()) + 60}, None, algorithm="none")
        assert await refused(server.ws_url(f"token={forged}")) == 401
        import hashlib
        import hmac as hmac_mod

        header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
        body = base64.urlsafe_b64encode(json.dumps({"sub": "root", "exp": int(time.time()) + 60}).encode()).rstrip(b"=")
        sig = base64.urlsafe_b64encode(hmac_mod.new(public_pem, header + b"." + body, hashlib.sha256).digest()).rstrip(
            b"="
        )
        confused = (header + b"." + body + b"." + sig).decode()
        assert await refused(server.ws_url(f"token={confused}")) == 401

    with serve({"authenticate": jwt_authenticator(public_key=public_pem)}, ws="fasthub") as server:
        run(scenario(server))


def test_token_expiry_closes_4001_unless_refreshed() -> None:
    async def scenario(server: Server) -> None:
        short = await connect(server, f"token={token('exp', ttl=1.5)}")
        kept = await connect(server, f"token={token('ref', ttl=1.5)}")
        await kept.send({"type": "refresh", "id": "r1", "payload": {"token": token("ref", ttl=60)}})
        ack = await kept.expect("system", id="r1")
        assert ack["payload"]["event"] == "token_refreshed" and ack["payload"]["expires_at"] > time.time() + 30
        # a token for somebody else, or a bad one, does not extend anything
        await kept.send({"type": "refresh", "id": "r2", "payload": {"token": token("someone-else")}})
        await kept.error("forbidden")
        await kept.send({"type": "refresh", "id": "r3", "payload": {"token": "junk"}})
        await kept.error("invalid_token")
        await kept.send({"type": "refresh", "id": "r4", "payload": {}})
        await kept.error("missing_field")
        with pytest.raises(websockets.ConnectionClosed) as info:
            await short.recv(timeout=5)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "token expired")
        await asyncio.sleep(0.5)
        await kept.send({"type": "ping", "id": "still"})
        await kept.expect("pong", id="still")

    with jwt_server() as server:
        run(scenario(server))


def test_refresh_without_token_auth_is_unhandled(server: Server) -> None:
    async def scenario() -> None:
        c = await connect(server)
        await c.send({"type": "refresh", "payload": {"token": "x"}})
        await c.error("unhandled")

    run(scenario())


# -- Origin -----------------------------------------------------------------------------------------


def test_origin_allow_list() -> None:
    async def scenario(server: Server) -> None:
        ok = await websockets.connect(server.ws_url(), origin="https://app.example.com")  # type: ignore[arg-type]
        await ok.recv()
        ok2 = await websockets.connect(server.ws_url(), origin="https://eu.cdn.example.org")  # type: ignore[arg-type]
        await ok2.recv()
        assert await refused(server.ws_url(), origin="https://evil.example.net") == 403
        assert await refused(server.ws_url(), origin="null") == 403
        plain = await connect(server)  # no Origin: not a browser
        await plain.close()

    origins = ["https://app.example.com", "https://*.cdn.example.org"]
    with serve({"allowed_origins": origins}, ws="fasthub") as server:
        run(scenario(server))


# -- rate limits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ws", ["fasthub", "websockets-sansio"])
def test_rate_limit_refuses_then_closes_a_flooder_and_spares_the_others(ws: str) -> None:
    config = HubConfig(rate_limit=20, rate_limit_strikes=30)

    async def scenario(server: Server) -> None:
        flooder = await connect(server, "user=flood")
        calm = await connect(server, "user=calm")
        await calm.join("room")
        for i in range(40):  # the burst is 40
            await flooder.send({"type": "ping", "id": i})
        for i in range(40):
            await flooder.expect("pong", id=i)
        await flooder.send({"type": "ping", "id": "over"})
        err = await flooder.error("rate_limited")
        assert "20" in err["payload"]["message"]
        # others are not affected
        await calm.send({"type": "room_message", "room": "room", "payload": 1})
        await calm.expect("room_message")
        # staying over the limit closes the connection with 1008
        with contextlib.suppress(websockets.ConnectionClosed):
            for _ in range(500):
                await flooder.send({"type": "ping"})
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await flooder.recv(timeout=10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
        assert info.value.rcvd.reason == "rate limit exceeded"
        await calm.send({"type": "ping", "id": "after"})
        await calm.expect("pong", id="after")
        assert server.call(server.hub.stats)["rate_limited"] > 30

    with serve({"authenticate": lambda s: None}, config, ws=ws) as server:
        run(scenario(server))


def test_byte_rate_limit() -> None:
    config = HubConfig(rate_limit=0, rate_limit_bytes=32 * 1024, max_message_size=32 * 1024, send_buffer_size=65536)

    async def scenario(server: Server) -> None:
        c = await connect(server)
        pad = "x" * 20_000
        for i in range(3):  # 64 KiB burst: three 20 KB messages fit
            await c.send({"type": "ping", "id": i, "payload": pad})
            assert (await c.expect("pong", id=i))["payload"] == pad
        await c.send({"type": "ping", "id": "big", "payload": pad})
        await c.error("rate_limited")

    with serve(config=config, ws="fasthub") as server:
        run(scenario(server))


# -- connection caps ----------------------------------------------------------------------------------------


def test_total_per_ip_and_per_user_caps_and_connect_rate() -> None:
    async def scenario(server: Server, expect: int, query: str, n_ok: int) -> None:
        clients = [await connect(server, query) for _ in range(n_ok)]
        assert await refused(server.ws_url(query)) == expect
        await clients[0].close()
        await asyncio.sleep(0.2)
        again = await connect(server, query)  # a freed slot is usable again
        await again.close()
        for c in clients[1:]:
            await c.close()

    from tests.conftest import query_user

    with serve({"authenticate": query_user}, HubConfig(max_connections=3), ws="fasthub") as server:
        run(scenario(server, 503, "", 3))
    with serve({"authenticate": query_user}, HubConfig(max_connections_per_ip=2), ws="fasthub") as server:
        run(scenario(server, 429, "", 2))
    with serve({"authenticate": query_user}, HubConfig(max_connections_per_user=2), ws="fasthub") as server:

        async def per_user() -> None:
            await scenario(server, 429, "user=bob", 2)
            other = await connect(server, "user=carol")  # other users unaffected
            await other.close()

        run(per_user())
    with serve({"authenticate": query_user}, HubConfig(connect_rate_per_ip=2), ws="fasthub") as server:

        async def rate() -> None:
            clients = [await connect(server) for _ in range(4)]  # burst 4
            assert await refused(server.ws_url()) == 429
            await asyncio.sleep(1.2)
            clients.append(await connect(server))
            for c in clients:
                await c.close()

        run(rate())


# -- slowloris and oversized request heads (the real `fasthub serve` stack) -------------------------------------


@contextlib.contextmanager
def real_stack(config: HubConfig) -> Iterator[int]:
    """The stack `fasthub serve` runs (guarded HTTP protocol, HubProtocol), on a free port."""
    sock = free_socket()
    with uvicorn_thread(uvicorn_config(create_app(Hub(config)), log_level="warning"), sock):
        yield sock.getsockname()[1]


def test_slowloris_is_dropped_and_huge_heads_get_431() -> None:
    with real_stack(HubConfig(handshake_timeout=0.5, max_request_size=4096)) as port:
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        slow.settimeout(5)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := slow.recv(4096):
                data += chunk
        assert time.monotonic() - started < 3
        assert data.startswith(b"HTTP/1.1 408")
        slow.close()
        idle = socket.create_connection(("127.0.0.1", port))  # sends nothing at all
        idle.settimeout(5)
        assert idle.recv(4096).startswith(b"HTTP/1.1 408")
        idle.close()
        big = socket.create_connection(("127.0.0.1", port))
        big.settimeout(5)
        big.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 8000 + b"\r\n\r\n")
        assert big.recv(4096).startswith(b"HTTP/1.1 431")
        big.close()

        async def still() -> None:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
                assert "connected" in str(await ws.recv())

        run(still())


# -- envelope limits and access rules ----------------------------------------------------------------------------


def test_metadata_and_room_name_limits() -> None:
    async def scenario(server: Server) -> None:
        c = await connect(server)
        await c.send({"type": "ping", "id": 1, "metadata": {"k": "v" * 300}})
        err = await c.error("too_large")
        assert err["id"] == 1
        await c.send({"type": "join_room", "room": "r" * 65})
        await c.error("invalid_room")
        await c.send({"type": "join_room", "room": "<script>"})
        await c.error("invalid_room")
        await c.send({"type": "ping", "id": 2, "metadata": {"k": "v"}})
        await c.expect("pong", id=2)

    with serve(config=HubConfig(max_metadata_bytes=256, max_room_name_length=64), ws="fasthub") as server:
        run(scenario(server))


def test_access_hooks_by_room_pattern() -> None:
    from tests.conftest import query_user

    rules: dict[str, Any] = {"public:*": True, "admin:*": lambda conn, room: conn.user_id == "root"}
    publish: dict[str, Any] = {"public:announce": lambda conn, room: conn.user_id == "root", "*": True}

    async def scenario(server: Server) -> None:
        user = await connect(server, "user=joe")
        root = await connect(server, "user=root")
        await user.join("public:lobby")
        await user.send({"type": "join_room", "room": "admin:ops", "id": "a"})
        assert (await user.error("forbidden"))["id"] == "a"
        await user.send({"type": "join_room", "room": "elsewhere"})  # no pattern matches: refused
        await user.error("forbidden")
        await root.join("admin:ops")
        await root.join("public:announce")
        await user.join("public:announce")
        await root.expect("system")  # user_joined
        await user.send({"type": "room_message", "room": "public:announce", "payload": "spam"})
        await user.error("forbidden")
        await root.silent()
        await root.send({"type": "room_message", "room": "public:announce", "payload": "news"})
        assert (await user.expect("room_message"))["payload"] == "news"
        assert server.call(lambda: server.hub.get_room("admin:ops").members) == [root.conn_id]

    with serve({"authenticate": query_user, "can_join": rules, "can_publish": publish}, ws="fasthub") as server:
        run(scenario(server))


def test_stats_token_and_disabled_stats() -> None:
    import httpx

    with serve({"stats_token": "s3cret"}, ws="fasthub") as server:
        assert httpx.get(server.http + "/ws/stats").status_code == 401
        assert httpx.get(server.http + "/ws/stats", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(server.http + "/ws/stats", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(server.http + "/ws/stats?token=s3cret").status_code == 200
    with serve({"stats_path": None}, ws="fasthub") as server:
        assert httpx.get(server.http + "/ws/stats").status_code == 404


def test_client_cannot_forge_from_or_see_members_or_metadata(server: Server) -> None:
    async def scenario() -> None:
        a = await connect(server, "user=a")
        b = await connect(server, "user=b")
        conn_a = server.call(server.hub.get_connection, a.conn_id)
        server.call(conn_a.set_metadata, "secret", "hunter2")
        await a.join("r")
        joined = await b.join("r")
        assert joined["payload"]["members"] == 2  # a count, never the member list
        await a.expect("system")
        await b.send({"type": "room_message", "room": "r", "from": "a", "payload": 1, "metadata": {"x": 1}})
        got = await a.expect("room_message")
        assert got["from"] == "b" and "secret" not in json.dumps(got)
        await b.send({"type": "user_message", "to": "a", "from": "root", "payload": 2})
        assert (await a.expect("user_message"))["from"] == "b"

    run(scenario())


# -- fuzzing the JWT path --------------------------------------------------------------------------------------


def test_jwt_verify_fuzz() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    auth = JWTAuthenticator(secret=SECRET, audience="fasthub")
    scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
    claims = st.dictionaries(
        st.sampled_from(["sub", "exp", "nbf", "aud", "iss", "iat", "x"]),
        st.one_of(scalar, st.lists(scalar, max_size=3)),
        max_size=7,
    )

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
    def random_tokens(tok: str) -> None:
        with pytest.raises(Denied) as info:
            auth.verify(tok)
        assert info.value.status == 401

    @settings(max_examples=300, deadline=None)
    @given(claims)
    def signed_claims(body: dict[str, Any]) -> None:
        try:
            tok = jwt.encode(body, SECRET, algorithm="HS256")
        except (TypeError, ValueError):
            return
        try:
            ident = auth.verify(tok)
        except Denied as exc:
            assert exc.status == 401
        else:
            assert ident.user_id == str(body["sub"]) and body.get("aud") is not None

    random_tokens()
    signed_claims()


def test_anonymous_clients_never_share_a_user_under_jwt_allow_anonymous() -> None:
    async def scenario(server: Server) -> None:
        a: Client = await connect(server)
        b: Client = await connect(server)
        assert a.user_id != b.user_id

    with jwt_server(allow_anonymous=True) as server:
        run(scenario(server))
