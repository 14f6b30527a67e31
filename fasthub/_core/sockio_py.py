"""Pure twin of ``sockio_c``: write to a non-blocking socket directly."""

from __future__ import annotations

import os


def send_some(fd: int, data: bytes) -> int:
    """Bytes the socket took now (0 if it would block); -1 on an error (the transport reports it).

    Never raises, as the compiled twin (``noexcept``); ``None`` is an error too."""
    if data is None:
        return -1
    while True:
        try:
            return os.write(fd, data)
        except InterruptedError:
            continue
        except BlockingIOError:
            return 0
        except OSError:
            return -1
