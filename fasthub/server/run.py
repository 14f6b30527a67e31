"""Run a hub app under uvicorn with uvloop and httptools."""

from __future__ import annotations

import gc
import logging
from typing import Any

from ..config import HubConfig
from ..hub import Hub
from .asgi import FasthubApp, create_app
from .listener import listener_protocol
from .uvicorn import HubProtocol


def uvicorn_config(app: Any, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info", **kw: Any) -> Any:
    """A ``uvicorn.Config`` for the fast path: our listener and HubProtocol on uvloop + httptools.

    Limits and timers come from the app's ``HubConfig`` (the defaults for a non-hub app).
    """
    import uvicorn

    hub = getattr(app, "hub", None)
    cfg = hub.config if isinstance(hub, Hub) else HubConfig()
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "loop": "uvloop",
        "http": listener_protocol(cfg.handshake_timeout, cfg.max_request_size),
        "ws": HubProtocol,
        "ws_max_size": cfg.max_message_size,
        "ws_ping_interval": cfg.ping_interval,
        "ws_ping_timeout": cfg.pong_timeout,
        "ws_per_message_deflate": False,
        "lifespan": "on",
        "access_log": False,
        "backlog": 4096,
        "timeout_graceful_shutdown": 5,
    }
    options.update(kw)
    return uvicorn.Config(app, **options)


def run(
    app: FasthubApp | Hub | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_level: str = "info",
    **uvicorn_options: Any,
) -> None:
    """Serve ``app`` (or a hub, or a new default hub) until interrupted."""
    import uvicorn

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
    uvicorn.Server(uvicorn_config(app, host, port, log_level, **uvicorn_options)).run()
