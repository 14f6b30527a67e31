"""Entry of a client process: ``python -m fasthub.benchmark._spawn FD``.

Why not ``multiprocessing``: its spawn start method re-imports the caller's main module, which
breaks any script without an ``if __name__ == "__main__"`` guard, and fork is unsafe when the
caller runs threads (a test server, rich's refresh thread). A fresh interpreter talking over an
inherited socket has neither problem. Nothing imports this module; it only runs.
"""

from __future__ import annotations

import sys

from .worker import worker_main

if __name__ == "__main__":
    worker_main(int(sys.argv[1]))
