"""``fasthub serve``: the hub with its embedded defaults, no broker needed."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fasthub", description="A real-time WebSocket hub.")
    parser.add_argument("--version", action="version", version=f"fasthub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve /ws, /ws/stats and the demo page")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level",
    )
    serve.add_argument("--ping-interval", type=float, help="seconds between WebSocket pings (default 54)")
    serve.add_argument("--pong-timeout", type=float, help="seconds without a pong before closing (default 60)")
    serve.add_argument("--max-message-size", type=int, help="largest client message in bytes (default 524288)")
    serve.add_argument("--send-buffer-size", type=int, help="outbound budget per connection in bytes (default 1 MiB)")
    serve.add_argument(
        "--slow-consumer",
        choices=["close", "drop"],
        help="over budget: close with 1008 (default) or drop messages",
    )
    limits = serve.add_argument_group("limits (defaults in HubConfig; 0 disables a rate or cap)")
    limits.add_argument("--rate-limit", type=float, help="messages/s per connection, burst 2x (default 1000)")
    limits.add_argument("--rate-limit-bytes", type=float, help="bytes/s per connection, burst 2x (default 4 MiB)")
    limits.add_argument("--max-connections", type=int, help="connections per process, 503 above (default 50000)")
    limits.add_argument("--max-connections-per-ip", type=int, help="connections per client IP, 429 above (default 0)")
    limits.add_argument("--max-connections-per-user", type=int, help="connections per user, 429 above (default 100)")
    limits.add_argument("--connect-rate-per-ip", type=float, help="new connections/s per IP, 429 above (default 0)")
    limits.add_argument("--handshake-timeout", type=float, help="seconds to send the upgrade request (default 10)")
    history = serve.add_argument_group("history and recovery (docs/recovery.md)")
    history.add_argument(
        "--history-size", type=int, help="messages kept per room and user stream (default 100; 0: off)"
    )
    history.add_argument("--history-ttl", type=float, help="seconds a stored message is kept (default 300)")
    history.add_argument(
        "--room-history",
        action="append",
        metavar="PATTERN=SIZE[,TTL]",
        help="history of the rooms matching PATTERN (fnmatch; first match wins; SIZE 0: off); repeatable",
    )
    history.add_argument("--recovery-max", type=int, help="most messages one recovery sends (default 300)")
    history.add_argument(
        "--session-ttl", type=float, help="seconds a closed session can be resumed (default 120; 0: off)"
    )
    history.add_argument(
        "--session-secret",
        help="key that signs reconnect tokens (or env FASTHUB_SESSION_SECRET; default: shared through Redis, "
        "else random per process)",
    )
    auth = serve.add_argument_group("authentication and access")
    auth.add_argument("--jwt-secret", help="verify HS256 JWTs with this secret (or env FASTHUB_JWT_SECRET)")
    auth.add_argument("--jwt-public-key", metavar="FILE", help="verify RS256/ES256 JWTs with this PEM public key")
    auth.add_argument("--jwt-audience", help="required 'aud' claim")
    auth.add_argument("--jwt-issuer", help="required 'iss' claim")
    auth.add_argument("--jwt-user-claim", default="sub", help="claim that holds the user id (default sub)")
    auth.add_argument("--allow-anonymous", action="store_true", help="with a JWT key: accept clients without a token")
    auth.add_argument(
        "--allowed-origin",
        action="append",
        metavar="ORIGIN",
        help="allowed Origin (repeatable; patterns like https://*.x.com)",
    )
    auth.add_argument("--stats-token", help="require this bearer token for /ws/stats (or env FASTHUB_STATS_TOKEN)")
    auth.add_argument("--no-stats", action="store_true", help="do not serve /ws/stats")
    serve.add_argument("--no-demo", action="store_true", help="do not serve the demo page at /")
    wire = serve.add_argument_group("compression (permessage-deflate, fast path)")
    wire.add_argument("--no-compression", action="store_true", help="do not negotiate permessage-deflate")
    wire.add_argument(
        "--compression-threshold", type=int, help="bytes below which messages go uncompressed (default 256)"
    )
    wire.add_argument(
        "--compression-client-context",
        action="store_true",
        help="let clients keep their compression context (one inflater per sending connection)",
    )
    ops = serve.add_argument_group("operations (docs/operations.md)")
    ops.add_argument(
        "--drain-timeout",
        type=float,
        help="on SIGTERM, seconds to close every connection with 1012 before exiting (default 30)",
    )
    ops.add_argument(
        "--drain-rate",
        type=float,
        help="connections closed per second while draining (default 2000; raised to fit the timeout; 0: at once)",
    )
    ops.add_argument("--ssl-certfile", metavar="FILE", help="serve wss:// and https:// with this PEM certificate")
    ops.add_argument("--ssl-keyfile", metavar="FILE", help="the certificate's PEM private key")
    ops.add_argument("--ssl-keyfile-password", help="password of an encrypted key file")
    ops.add_argument(
        "--proxy-headers",
        action="store_true",
        help="take the client address from X-Forwarded-For (and the scheme from X-Forwarded-Proto) sent by a "
        "trusted proxy (--forwarded-allow-ips)",
    )
    ops.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="comma-separated proxy addresses or networks trusted with --proxy-headers, '*' for all "
        "(or env FORWARDED_ALLOW_IPS; default 127.0.0.1,::1)",
    )
    ops.add_argument("--no-metrics", action="store_true", help="do not serve /metrics (Prometheus)")
    ops.add_argument("--no-health", action="store_true", help="do not serve /healthz and /readyz")
    cluster = serve.add_argument_group("cluster (several processes or machines as one hub)")
    cluster.add_argument(
        "--redis",
        metavar="URL",
        help="join every hub on this Redis, e.g. redis://127.0.0.1:6379/0 (or env FASTHUB_REDIS_URL)",
    )
    cluster.add_argument("--redis-prefix", default="fasthub", help="key and channel namespace (default fasthub)")
    cluster.add_argument(
        "--redis-sharded",
        action="store_true",
        help="Redis 7 sharded pub/sub (SPUBLISH/SSUBSCRIBE) instead of PUBLISH/SUBSCRIBE",
    )
    cluster.add_argument(
        "--redis-cluster",
        action="store_true",
        help="the Redis URL is one node of a Redis Cluster: sharded pub/sub, commands routed per slot",
    )
    cluster.add_argument(
        "--node-ttl",
        type=float,
        default=5.0,
        help="seconds after which a silent node leaves the cluster view (default 5)",
    )
    cluster.add_argument(
        "--workers",
        default="1",
        metavar="N",
        help="worker processes sharing the port (SO_REUSEPORT), supervised; 'auto' = cores; N > 1 needs --redis",
    )
    cluster.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind with SO_REUSEPORT so several fasthub serve processes share the port (what each worker does)",
    )
    serve.add_argument(
        "--ws",
        default="fasthub",
        choices=["fasthub", "websockets-sansio", "wsproto"],
        help="WebSocket implementation: fasthub's own (default, the fast path) or one of uvicorn's, served by "
        "uvicorn's httptools protocol (the portable path; needs pip install 'fasthub[portable]')",
    )
    serve.add_argument(
        "--io",
        default="fasthub",
        choices=["fasthub", "uvloop"],
        help="socket layer of the fast path over plain TCP: fasthub's own epoll set (default; less memory and "
        "work per connection) or uvloop's transports (TLS always uses uvloop's)",
    )
    serve.add_argument(
        "--echo",
        action="store_true",
        help="conformance/debug mode: echo every message back unchanged (no hub); for Autobahn runs",
    )
    _add_bench_parser(sub)
    _add_top_parser(sub)
    _add_plan_parser(sub)
    return parser


def _add_bench_parser(sub: Any) -> None:
    """``fasthub bench``: the load generator (its options live in ``fasthub.benchmark.options``)."""
    from .benchmark.options import add_arguments

    bench = sub.add_parser(
        "bench",
        help="load-test a server: idle, fanout, ingress, latency (or --compare against the peers)",
        description="Load generator for capacity planning: fasthub bench [URL] SCENARIO... [options]",
        epilog="examples: fasthub bench ws://127.0.0.1:8080/ws fanout -n 1000 -m 2000 -w 8 --json out.json | "
        "fasthub bench --compare fanout ingress --pin",
    )
    add_arguments(bench)


def _positive(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return seconds


def _add_top_parser(sub: Any) -> None:
    """``fasthub top``: a server's stats as a live table (``fasthub.top``)."""
    top = sub.add_parser(
        "top",
        help="watch a server's stats: a live table per node and for the cluster, with sparklines",
        description="Polls the stats endpoint and shows connections, messages in/out per second, bytes buffered, "
        "slow-consumer closes and memory per connection, per node and for the cluster.",
        epilog="examples: fasthub top http://127.0.0.1:8080 | fasthub top https://hub.example/ws/stats --token T "
        "--once",
    )
    top.add_argument("url", help="the server (http://host:port) or its stats URL (http://host:port/ws/stats)")
    top.add_argument("--token", help="bearer token for the stats (or env FASTHUB_STATS_TOKEN)")
    top.add_argument("--interval", type=_positive, default=1.0, help="seconds between polls (default 1)")
    top.add_argument("--once", action="store_true", help="print one table and exit")


def _add_plan_parser(sub: Any) -> None:
    """``fasthub plan``: capacity for a workload from costs measured here (``fasthub.plan``)."""
    from .plan import add_arguments

    plan = sub.add_parser(
        "plan",
        help="workers, cores, memory, bandwidth and Redis throughput for a workload, from measured costs",
        description="Plans capacity from unit costs measured on this machine: a calibration run (--calibrate), "
        "a fasthub bench JSON file, or a running hub's /ws/stats (--from).",
        epilog="example: fasthub plan --connections 200000 --rooms 5000 --room-size 40 --msgs-per-s 2000 "
        "--msg-bytes 300 --calibrate --save costs.json",
    )
    add_arguments(plan)


def _authenticator(args: argparse.Namespace) -> Any:
    secret = args.jwt_secret or os.environ.get("FASTHUB_JWT_SECRET") or None
    if secret is None and args.jwt_public_key is None:
        return None
    from .auth import jwt_authenticator

    public_key = None
    if args.jwt_public_key is not None:
        with open(args.jwt_public_key, "rb") as f:
            public_key = f.read()
    return jwt_authenticator(
        secret=secret if public_key is None else None,
        public_key=public_key,
        audience=args.jwt_audience,
        issuer=args.jwt_issuer,
        user_claim=args.jwt_user_claim,
        allow_anonymous=args.allow_anonymous,
    )


def _workers(value: str) -> int:
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"--workers must be a number >= 1 or 'auto', got {value!r}")
    return n


def _worker_argv(argv: Sequence[str]) -> list[str]:
    """The command line of one worker: the same options, one process, on a shared port."""
    out: list[str] = []
    skip = False
    argv = list(argv)
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return [*out, "--workers", "1", "--reuse-port"]


def _room_history(rule: str, default_ttl: float | None) -> tuple[str, int, float]:
    """``PATTERN=SIZE[,TTL]`` of ``--room-history``."""
    pattern, sep, value = rule.rpartition("=")
    size, _, ttl = value.partition(",")
    try:
        if not sep or not pattern:
            raise ValueError
        return pattern, int(size), float(ttl) if ttl else (default_ttl if default_ttl is not None else 300.0)
    except ValueError:
        raise ValueError(f"--room-history {rule!r}: expected PATTERN=SIZE or PATTERN=SIZE,TTL") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from .config import HubConfig
        from .hub import Hub
        from .server.asgi import create_app
        from .server.run import MissingWebSocketImplementation, dump_stacks_on, run

        dump_stacks_on(signal.SIGUSR1)  # from the start (the --workers supervisor passes it on)

        overrides = {
            name: value
            for name, value in {
                "ping_interval": args.ping_interval,
                "pong_timeout": args.pong_timeout,
                "max_message_size": args.max_message_size,
                "send_buffer_size": args.send_buffer_size,
                "slow_consumer": args.slow_consumer,
                "rate_limit": args.rate_limit,
                "rate_limit_bytes": args.rate_limit_bytes,
                "max_connections": args.max_connections,
                "max_connections_per_ip": args.max_connections_per_ip,
                "max_connections_per_user": args.max_connections_per_user,
                "connect_rate_per_ip": args.connect_rate_per_ip,
                "handshake_timeout": args.handshake_timeout,
                "history_size": args.history_size,
                "history_ttl": args.history_ttl,
                "recovery_max": args.recovery_max,
                "session_ttl": args.session_ttl,
                "session_secret": args.session_secret or os.environ.get("FASTHUB_SESSION_SECRET") or None,
                "drain_timeout": args.drain_timeout,
                "drain_rate": args.drain_rate,
                "compression": False if args.no_compression else None,
                "compression_threshold": args.compression_threshold,
                "compression_client_context": True if args.compression_client_context else None,
            }.items()
            if value is not None
        }
        try:
            if args.room_history:
                overrides["room_history"] = tuple(_room_history(rule, args.history_ttl) for rule in args.room_history)
            config = HubConfig(**overrides)
        except ValueError as exc:
            print(f"fasthub: {exc}", file=sys.stderr)
            return 2
        if args.echo:
            from .server.echo import ECHO_MAX_MESSAGE_SIZE, echo_app
            from .server.run import uvicorn_config
            from .server.serving import HubServer

            max_size = args.max_message_size or ECHO_MAX_MESSAGE_SIZE
            try:
                echo_config = uvicorn_config(
                    echo_app, args.host, args.port, args.log_level, ws=args.ws, ws_max_size=max_size
                )
                echo_config.ws_per_message_deflate = config.compression and echo_config.ws_per_message_deflate
            except MissingWebSocketImplementation as exc:
                print(f"fasthub: {exc}", file=sys.stderr)
                return 2
            HubServer(echo_config, args.io).run()
            return 0
        try:
            authenticate = _authenticator(args)
        except (OSError, ValueError) as exc:
            print(f"fasthub: {exc}", file=sys.stderr)
            return 2
        redis_url = args.redis or os.environ.get("FASTHUB_REDIS_URL") or None
        try:
            workers = _workers(args.workers)
        except ValueError as exc:
            print(f"fasthub: {exc}", file=sys.stderr)
            return 2
        if workers > 1:
            if redis_url is None:
                print(
                    f"fasthub: --workers {args.workers} needs --redis URL (or FASTHUB_REDIS_URL): without a broker "
                    "each worker would be a separate hub, and clients on different workers could not reach each other",
                    file=sys.stderr,
                )
                return 2
            from .server.workers import supervise

            argv_ = _worker_argv(argv if argv is not None else sys.argv[1:])
            return supervise(workers, argv_, config.drain_timeout)
        from .server.run import fit_open_files

        config, note = fit_open_files(config)
        if note is not None and args.log_level in ("info", "debug"):
            print(f"INFO      fasthub: {note}", file=sys.stderr)
        broker = None
        if redis_url is not None:
            from .broker.redis import RedisBroker

            try:
                broker = RedisBroker(
                    redis_url,
                    prefix=args.redis_prefix,
                    sharded=args.redis_sharded,
                    cluster=args.redis_cluster,
                    ttl=args.node_ttl,
                )
            except ValueError as exc:
                print(f"fasthub: {exc}", file=sys.stderr)
                return 2
        app = create_app(
            Hub(config, broker=broker),
            authenticate=authenticate,
            demo=not args.no_demo,
            stats_path=None if args.no_stats else "/ws/stats",
            stats_token=args.stats_token or os.environ.get("FASTHUB_STATS_TOKEN") or None,
            allowed_origins=args.allowed_origin,
            metrics_path=None if args.no_metrics else "/metrics",
            health_path=None if args.no_health else "/healthz",
            ready_path=None if args.no_health else "/readyz",
        )
        try:
            server_options: dict[str, Any] = {}
            if args.ssl_certfile or args.ssl_keyfile:
                if not (args.ssl_certfile and args.ssl_keyfile):
                    print("fasthub: --ssl-certfile and --ssl-keyfile go together", file=sys.stderr)
                    return 2
                for path in (args.ssl_certfile, args.ssl_keyfile):
                    if not os.path.isfile(path):
                        print(f"fasthub: {path}: no such file", file=sys.stderr)
                        return 2
                server_options.update(
                    ssl_certfile=args.ssl_certfile,
                    ssl_keyfile=args.ssl_keyfile,
                    ssl_keyfile_password=args.ssl_keyfile_password,
                )
            if args.proxy_headers:
                server_options["proxy_headers"] = True
                if args.forwarded_allow_ips is not None:
                    server_options["forwarded_allow_ips"] = args.forwarded_allow_ips
            run(
                app, args.host, args.port, args.log_level, ws=args.ws, reuse_port=args.reuse_port, io=args.io,
                **server_options,
            )
        except OSError as exc:  # the port (with --reuse-port: bound here, not by uvicorn)
            print(f"fasthub: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 2
        except MissingWebSocketImplementation as exc:
            print(f"fasthub: {exc}", file=sys.stderr)
            return 2
    elif args.command == "bench":
        from .benchmark import main as bench_main

        return bench_main(args)
    elif args.command == "top":
        from .top import main as top_main

        return top_main(args)
    elif args.command == "plan":
        from .plan import main as plan_main

        return plan_main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
