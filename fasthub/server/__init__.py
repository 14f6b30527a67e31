"""Server layer: the ASGI app (portable path) and the uvicorn protocol (fast path)."""

from .asgi import FasthubApp, create_app

__all__ = ["FasthubApp", "create_app"]
