"""``fasthub serve``: the hub with its embedded defaults, no broker needed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    serve.add_argument("--no-demo", action="store_true", help="do not serve the demo page at /")
    serve.add_argument(
        "--ws",
        default="fasthub",
        choices=["fasthub", "websockets-sansio", "wsproto"],
        help="WebSocket implementation: fasthub's own (default, the fast path) or one of uvicorn's (portable path)",
    )
    serve.add_argument(
        "--echo",
        action="store_true",
        help="conformance/debug mode: echo every message back unchanged (no hub); for Autobahn runs",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from .config import HubConfig
        from .hub import Hub
        from .server.asgi import create_app
        from .server.run import run

        overrides = {
            name: value
            for name, value in {
                "ping_interval": args.ping_interval,
                "pong_timeout": args.pong_timeout,
                "max_message_size": args.max_message_size,
                "send_buffer_size": args.send_buffer_size,
                "slow_consumer": args.slow_consumer,
            }.items()
            if value is not None
        }
        try:
            config = HubConfig(**overrides)
        except ValueError as exc:
            print(f"fasthub: {exc}", file=sys.stderr)
            return 2
        if args.echo:
            import uvicorn

            from .server.echo import ECHO_MAX_MESSAGE_SIZE, echo_app
            from .server.run import uvicorn_config

            max_size = args.max_message_size or ECHO_MAX_MESSAGE_SIZE
            uvicorn.Server(uvicorn_config(echo_app, args.host, args.port, args.log_level, ws_max_size=max_size)).run()
            return 0
        options = {} if args.ws == "fasthub" else {"ws": args.ws}
        run(create_app(Hub(config), demo=not args.no_demo), args.host, args.port, args.log_level, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
