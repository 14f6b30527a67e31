"""Connection: one client socket as the hub and the application see it.

The class lives in the compiled hub core (``fasthub._core.conn_c``, pure twin
``fasthub._core.conn_py``): a connection and its outbound queue are one object.
"""

from __future__ import annotations

from ._core import Connection

__all__ = ["Connection"]
