"""Choose between a compiled module and its pure-Python twin.

``FASTHUB_NO_EXTENSIONS=1`` forces the twin; a missing or broken build falls back to it. Every
choice is recorded so ``fasthub.compiled()`` can say which implementation is live.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

NO_EXTENSIONS: bool = os.environ.get("FASTHUB_NO_EXTENSIONS", "") not in ("", "0")

#: module base name -> True when the compiled module is the live one
LIVE: dict[str, bool] = {}


def load(compiled: str, pure: str) -> ModuleType:
    """Import ``compiled`` unless disabled or unavailable, else ``pure`` (absolute names)."""
    if not NO_EXTENSIONS:
        try:
            module = importlib.import_module(compiled)
        except ImportError:
            pass
        else:
            LIVE[compiled] = True
            return module
    LIVE[compiled] = False
    return importlib.import_module(pure)
