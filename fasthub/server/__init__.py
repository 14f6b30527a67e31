"""Server layer: the ASGI app (portable path), the uvicorn protocols (fast path: listener + HubProtocol)."""

from .asgi import FasthubApp, create_app

__all__ = ["FasthubApp", "create_app"]
