"""Run a hub app under uvicorn with uvloop and httptools."""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import importlib
import logging
import signal
import socket
from types import FrameType
from typing import Any

from ..config import HubConfig
from ..hub import Hub
from ..stopping import where
from .asgi import FasthubApp, create_app
from .http import guarded_http_protocol
from .listener import listener_protocol
from .protocol import HubProtocol

# uvicorn's own WebSocket implementations (the portable path) and the module each one needs
PORTABLE_WS = {"websockets-sansio": "websockets", "websockets": "websockets", "wsproto": "wsproto"}
PORTABLE_EXTRA = "fasthub[portable]"


#: seconds past ``HubConfig.drain_timeout`` after which a stopping server logs what it waits on
STUCK_REPORT = 5.0


class MissingWebSocketImplementation(ImportError):
    """``ws=`` names one of uvicorn's implementations whose package is not installed."""


def _check_portable_ws(ws: str) -> None:
    module = PORTABLE_WS.get(ws)
    if module is None:
        return
    try:
        importlib.import_module(module)  # uvicorn imports it next anyway
    except ImportError:
        raise MissingWebSocketImplementation(
            f"--ws {ws} needs the {module!r} package, which is not installed: "
            f"run `pip install {module}` (or `pip install '{PORTABLE_EXTRA}'`)",
            name=module,
        ) from None


def uvicorn_config(app: Any, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info", **kw: Any) -> Any:
    """A ``uvicorn.Config`` on uvloop + httptools; the WebSocket path is chosen by ``ws``.

    ``ws="fasthub"`` (the default, or ``HubProtocol``): the fast path, fasthub's listener as the
    ``http`` class, which performs every upgrade itself with ``HubProtocol``. Any other ``ws``
    (``"websockets-sansio"``, ``"wsproto"``, a class or import string): the portable path,
    uvicorn's httptools protocol with fasthub's request-head guards, handing upgrades to that
    implementation. Raises ``MissingWebSocketImplementation`` when its package is missing.

    Limits and timers come from the app's ``HubConfig`` (the defaults for a non-hub app).
    Other keywords are uvicorn's: ``ssl_certfile``/``ssl_keyfile`` serve ``wss://`` (the fast
    path included), ``proxy_headers=True`` with ``forwarded_allow_ips`` takes the client's
    address from ``X-Forwarded-For`` sent by those peers only (off by default).
    """
    import uvicorn

    hub = getattr(app, "hub", None)
    cfg = hub.config if isinstance(hub, Hub) else HubConfig()
    ws = kw.pop("ws", "fasthub")
    if ws == "fasthub" or ws is HubProtocol:
        http: Any = listener_protocol(cfg.handshake_timeout, cfg.max_request_size)
        ws = HubProtocol
    else:
        if isinstance(ws, str):
            _check_portable_ws(ws)
        http = guarded_http_protocol(cfg.handshake_timeout, cfg.max_request_size)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "loop": "uvloop",
        "http": http,
        "ws": ws,
        "ws_max_size": cfg.max_message_size,
        "ws_ping_interval": cfg.ping_interval,
        "ws_ping_timeout": cfg.pong_timeout,
        # the fast path compresses for generic ASGI apps too (a hub's own connections follow
        # HubConfig.compression); uvicorn's portable implementations would keep a compressor
        # per connection, so they do not
        "ws_per_message_deflate": cfg.compression and ws is HubProtocol,
        "lifespan": "on",
        "access_log": False,
        "backlog": 4096,
        "timeout_graceful_shutdown": 5,
        # X-Forwarded-For is believed only when asked for (uvicorn's default trusts 127.0.0.1)
        "proxy_headers": False,
    }
    options.update(kw)
    return uvicorn.Config(app, **options)


#: files a serving process keeps for itself: listening socket, Redis connections, logs, the loop
FILE_RESERVE = 64


def fit_open_files(config: HubConfig) -> tuple[HubConfig, str | None]:
    """Raise this process's open-file limit to its hard limit, and keep ``max_connections`` under it.

    Every connection is a file: past the limit ``accept`` fails and clients see resets. Below it,
    a full process answers 503. Returns the config to use and a note when it was lowered.
    """
    import dataclasses
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return config, None
    room = max(1, soft - FILE_RESERVE)
    if config.max_connections and config.max_connections <= room:
        return config, None
    note = (
        f"max_connections {config.max_connections or 'unlimited'} -> {room}: this process may open "
        f"{soft} files (ulimit -n); raise the limit to hold more (docs/cluster.md)"
    )
    return dataclasses.replace(config, max_connections=room), note


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket with ``SO_REUSEPORT``: the kernel spreads connections over every such socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def run(
    app: FasthubApp | Hub | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_level: str = "info",
    reuse_port: bool = False,
    io: str = "fasthub",
    **uvicorn_options: Any,
) -> None:
    """Serve ``app`` (or a hub, or a new default hub) until interrupted.

    ``reuse_port``: bind with ``SO_REUSEPORT`` (several processes on one port, as ``--workers``).
    ``io``: ``"fasthub"`` serves plain-TCP connections of the fast path with fasthub's own
    socket layer (``HubServer``), ``"uvloop"`` with uvloop's transports.
    """

    if not isinstance(app, FasthubApp):
        app = create_app(app)
    logger = logging.getLogger("fasthub")
    logger.setLevel(log_level.upper())
    if not logger.handlers:  # uvicorn configures its own loggers only
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-9s %(message)s"))
        logger.addHandler(handler)
    # A hub allocates a few short-lived objects per message and few cycles: collect the young
    # generation less often, and move everything alive at start-up out of the collector's way.
    gc.set_threshold(20_000, 50, 100)
    gc.freeze()
    server = draining_server(uvicorn_config(app, host, port, log_level, **uvicorn_options), app, reuse_port, io)
    server.run(sockets=[reuse_port_socket(host, port)] if reuse_port else None)


def dump_stacks_on(signum: int) -> bool:
    """Make ``signum`` write every thread's Python stack to stderr (``faulthandler``), unless the
    application handles that signal itself. Works while the event loop is blocked; the
    supervisor of ``--workers`` sends it to a worker that does not stop, before killing it.
    ``fasthub serve`` calls it first thing (once, for every way it serves)."""
    if signal.getsignal(signum) is not signal.SIG_DFL:
        return False
    faulthandler.register(signum, all_threads=True)
    return True


def draining_server(config: Any, app: FasthubApp, stop_listening: bool, io: str = "fasthub") -> Any:
    """A ``uvicorn.Server`` whose first SIGTERM drains ``app`` before the usual shutdown.

    The drain (``FasthubApp.drain``) refuses new connections with 503 (``/readyz`` says
    "draining") and closes open ones with 1012 at ``HubConfig.drain_rate`` per second; the
    server then shuts down as on SIGINT. ``stop_listening`` (``--reuse-port``, every worker of
    ``--workers``): the listening socket closes at once, so the kernel sends new connections to
    the processes still serving the port. A second SIGTERM, or SIGINT, exits at once.
    """

    from .serving import HubServer

    class DrainingServer(HubServer):
        drain_task: asyncio.Task[None] | None = None
        loop: asyncio.AbstractEventLoop | None = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().startup(sockets)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            loop = self.loop
            if self.drain_task is not None or self.should_exit:
                if sig in (signal.SIGTERM, signal.SIGINT):
                    logging.getLogger("fasthub").warning("fasthub: exiting now (signal %d while stopping)", sig)
                    self.should_exit = self.force_exit = True
                return
            if sig != signal.SIGTERM or loop is None or not self.started:
                super().handle_exit(sig, frame)
                return
            self._captured_signals.append(sig)
            loop.call_soon_threadsafe(self._start_drain)

        def _start_drain(self) -> None:
            assert self.loop is not None
            self.drain_task = self.loop.create_task(self._drain())
            # a stop that outlives its drain by STUCK_REPORT seconds says what it waits on (a
            # supervisor kills it STOP_GRACE seconds after the drain's bound)
            self.loop.call_later(app.hub.config.drain_timeout + STUCK_REPORT, self._report_stuck)

        def _report_stuck(self) -> None:
            waiting = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            logging.getLogger("fasthub").warning(
                "fasthub: still stopping %.1f s after SIGTERM; waiting on: %s",
                app.hub.config.drain_timeout + STUCK_REPORT, "; ".join(where(t) for t in waiting) or "no task")

        async def _drain(self) -> None:
            try:
                if stop_listening:
                    for server in self.servers:
                        server.close()
                await app.drain()
            except Exception:
                logging.getLogger("fasthub").exception("fasthub: drain failed")
            self.should_exit = True

    return DrainingServer(config, io)
