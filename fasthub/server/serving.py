"""``HubServer``: uvicorn's server with fasthub's own socket layer in place of uvloop's transports.

On the fast path (fasthub's listener as uvicorn's ``http`` class, plain TCP) the listening
sockets are served by ``_core.Reactor``: one epoll set per listening socket, watched by the
event loop as one reader, and a small ``SocketTransport`` per connection instead of a uvloop
transport, its libuv handle and its socket object (docs/design-notes.md, "fasthub's own
sockets"). Everything else (TLS, Unix sockets, a file descriptor, uvicorn's WebSocket
implementations, ``io="uvloop"``) is uvicorn's own ``startup``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import sys
from typing import Any

import uvicorn

from .._core import Reactor
from .listener import ListenerProtocol

#: the socket layers ``fasthub serve --io`` offers
IO_CHOICES = ("fasthub", "uvloop")

logger = logging.getLogger("uvicorn.error")


def reactor_serves(config: Any, io: str = "fasthub") -> bool:
    """Whether ``config`` is served by the ``Reactor``: the fast path over plain TCP."""
    if io not in IO_CHOICES:
        raise ValueError(f"io must be one of {IO_CHOICES}, not {io!r}")
    if io != "fasthub" or config.is_ssl or config.uds is not None or config.fd is not None:
        return False
    http = config.http_protocol_class if config.loaded else config.http
    return isinstance(http, type) and issubclass(http, ListenerProtocol)


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def bind_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket as ``loop.create_server`` makes one (``SO_REUSEADDR``, v6 only for v6)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        # uvicorn's wording, so the log reads the same on either socket layer
        reason = (exc.strerror or str(exc)).lower()
        raise OSError(exc.errno, f"error while attempting to bind on address {(host, port)!r}: {reason}") from None
    return sock


class HubServer(uvicorn.Server):
    """A ``uvicorn.Server`` whose fast path accepts and reads through ``_core.Reactor``.

    ``io="uvloop"`` keeps uvicorn's ``loop.create_server`` (uvloop transports), for comparison
    and as a fallback; other configurations use it anyway.
    """

    def __init__(self, config: Any, io: str = "fasthub") -> None:
        super().__init__(config)
        self.io = io
        if io not in IO_CHOICES:  # refused now, not at startup
            raise ValueError(f"io must be one of {IO_CHOICES}, not {io!r}")

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        config = self.config
        if not config.loaded:
            config.load()
        if not reactor_serves(config, self.io) or (sockets is None and not _ip_literal(config.host)):
            await super().startup(sockets)  # a host name may resolve to several addresses: uvicorn's
            return
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(3)  # uvicorn's STARTUP_FAILURE
        loop = asyncio.get_running_loop()
        state = self.server_state
        app_state = self.lifespan.state
        protocol_class: Any = config.http_protocol_class

        def create_protocol() -> asyncio.Protocol:
            return protocol_class(config=config, server_state=state, app_state=app_state, _loop=loop)  # type: ignore[no-any-return]

        if sockets is None:
            try:
                listeners = [bind_socket(config.host, config.port, config.backlog)]
            except OSError as exc:
                logger.error(exc)
                await self.lifespan.shutdown()
                sys.exit(3)
            self._log_started_message(listeners)
        else:
            listeners = sockets
        reactors: list[Any] = [Reactor(loop, sock, create_protocol, config.backlog) for sock in listeners]
        self.servers = reactors  # uvicorn calls close() and wait_closed() on each
        self.started = True


__all__ = ["IO_CHOICES", "HubServer", "bind_socket", "reactor_serves"]
