"""What fasthub uses of uvicorn's internals, in one place.

uvicorn has no public API for a WebSocket protocol class: its own implementations receive
``(config, server_state, app_state)`` and reach into them. fasthub's protocols do the same
through ``Shared`` only, so an incompatible uvicorn release breaks this module and nothing
else. Tested with the uvicorn versions pinned in pyproject.toml; what is read:

- ``Config``: ``loaded``/``load()``, ``loaded_app`` (unwrapped from uvicorn's
  ``ProxyHeadersMiddleware`` and ``MessageLoggerMiddleware`` to find a fasthub app),
  ``root_path``, ``asgi_version``, ``ws_max_size``;
- ``ServerState``: ``connections`` (shutdown calls each protocol's ``shutdown()``), ``tasks``
  (shutdown waits for them), ``default_headers`` (``server``/``date``, kept fresh by uvicorn);
- ``uvicorn.protocols.utils.ClientDisconnected``, raised by ASGI ``send`` after a disconnect;
- ``HttpToolsProtocol`` (``uvicorn.protocols.http.httptools_impl``), which ``server/http.py``
  extends through its ``connection_made``, ``data_received``, ``on_message_begin``,
  ``on_headers_complete``, ``handle_websocket_upgrade`` and ``connection_lost`` and its
  ``transport`` and ``loop`` attributes, and to which ``server/listener.py`` hands plain HTTP
  requests (``Shared.http_protocol``).

``fasthub.server.uvicorn:HubProtocol`` (the documented ``--ws`` class) is an alias of
``fasthub.server.protocol.HubProtocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

if TYPE_CHECKING:
    from .asgi import FasthubApp
    from .protocol import HubProtocol

_WRAPPERS = ("ProxyHeadersMiddleware", "MessageLoggerMiddleware")


def find_hub_app(config: Any) -> FasthubApp | None:
    """The ``FasthubApp`` behind uvicorn's own wrappers, or None (found once per server).

    Behind uvicorn's ``ProxyHeadersMiddleware`` (``--proxy-headers``) the app is marked
    ``proxied``: its connections then open through the middleware, which rewrites the scope's
    ``client`` from ``X-Forwarded-For`` when the peer is in ``--forwarded-allow-ips``.

    Only a fasthub app is opened without an ASGI task (``FasthubApp.open_direct``) or run up to
    its first suspension inside ``data_received``; other apps may expect
    ``asyncio.current_task()`` (anyio does), so they always start in a task.
    """
    from .asgi import FasthubApp

    app = config.loaded_app
    proxied = False
    while type(app).__name__ in _WRAPPERS and hasattr(app, "app"):
        proxied = proxied or type(app).__name__ == "ProxyHeadersMiddleware"
        app = app.app
    if not isinstance(app, FasthubApp):
        return None
    if proxied:  # the client's address comes from X-Forwarded-For: every open needs the scope
        app.proxied = True
    return app


def client_disconnected() -> Exception:
    """What uvicorn's own protocols raise from ASGI ``send`` once the client is gone."""
    try:
        from uvicorn.protocols.utils import ClientDisconnected

        return ClientDisconnected()
    except ImportError:  # pragma: no cover - uvicorn always has it
        from ..exceptions import ConnectionClosed

        return ConnectionClosed("the client disconnected")


class Shared:
    """What every connection of one uvicorn server shares: one object, not seven slots each."""

    __slots__ = ("app_state", "config", "heads", "hub_app", "server_state")

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any]) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.heads: Any = None  # the listener's request-head deadlines (listener.HeadDeadlines)
        self.hub_app = find_hub_app(config)

    @classmethod
    def of(cls, config: Any, server_state: Any, app_state: dict[str, Any]) -> Shared:
        """The server's shared object, made by its first connection (kept on ``server_state``)."""
        if not config.loaded:
            config.load()
        shared = getattr(server_state, "_fasthub_shared", None)
        if shared is None or shared.config is not config or shared.app_state is not app_state:
            shared = cls(config, server_state, app_state)
            with contextlib.suppress(AttributeError):  # a server state without a __dict__
                server_state._fasthub_shared = shared
        return shared

    # -- ServerState ---------------------------------------------------------------------------

    def track(self, protocol: Any) -> None:
        """Count ``protocol`` among the server's connections (shutdown calls its ``shutdown``)."""
        self.server_state.connections.add(protocol)

    def untrack(self, protocol: Any) -> None:
        self.server_state.connections.discard(protocol)

    def keep_task(self, task: asyncio.Task[Any]) -> None:
        """Hold an ASGI task in the server's set: shutdown waits for it."""
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        """``server`` and ``date`` as uvicorn sends them (it refreshes ``date`` every second)."""
        return self.server_state.default_headers  # type: ignore[no-any-return]  # callers only read it

    # -- Config --------------------------------------------------------------------------------

    @property
    def app(self) -> Any:
        return self.config.loaded_app

    @property
    def root_path(self) -> str:
        return str(self.config.root_path)

    @property
    def asgi_version(self) -> str:
        return str(self.config.asgi_version)

    @property
    def per_message_deflate(self) -> bool:
        """``ws_per_message_deflate``: whether a generic ASGI app's connections may compress."""
        return bool(getattr(self.config, "ws_per_message_deflate", True))

    @property
    def max_size(self) -> int:
        """``ws_max_size``: the engine's message size limit (0: none)."""
        return int(self.config.ws_max_size or 0)

    def http_protocol(self, cls: type[Any], loop: asyncio.AbstractEventLoop) -> Any:
        """An instance of uvicorn's HTTP protocol class ``cls`` for a connection handed over."""
        return cls(config=self.config, server_state=self.server_state, app_state=self.app_state, _loop=loop)


def __getattr__(name: str) -> Any:
    if name == "HubProtocol":  # the documented ``--ws fasthub.server.uvicorn:HubProtocol``
        from .protocol import HubProtocol

        return HubProtocol
    raise AttributeError(name)


__all__ = ["HttpToolsProtocol", "HubProtocol", "Shared", "client_disconnected", "find_hub_app"]
