"""Pure twin of ``sockio_c``: write to a non-blocking socket directly."""

from __future__ import annotations

import os
from typing import Any


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


#: how many sends a ``SendBatch`` holds (the compiled twin's io_uring depth)
BATCH = 64


def ring_state() -> str:
    """"send": the twin makes one ``send(2)`` per entry (the compiled one may use io_uring)."""
    return "send"


def ring_owner() -> int:
    """0: the twin has no ring."""
    return 0


class SendBatch:
    """Up to ``BATCH`` sends of the fast path, made together by ``run``; ``result(k)`` is what
    ``send_some`` answered for the ``k``-th. ``obs`` and ``datas`` hold each entry's owner and
    bytes until ``clear``. The compiled twin makes them in one io_uring call where it can."""

    def __init__(self) -> None:
        self.n = 0
        self.obs: list[Any] = []
        self.datas: list[bytes] = []
        self._fds: list[int] = []
        self._res: list[int] = []

    def add(self, ob: Any, fd: int, data: bytes) -> bool:
        """Queue ``data`` for ``fd``; True when the batch is full (``run`` it)."""
        if self.n >= BATCH:
            raise IndexError("SendBatch is full: run and clear it first")
        if data is None:
            raise TypeError("SendBatch.add: data is None")
        self._fds.append(fd)
        self.obs.append(ob)
        self.datas.append(data)
        self.n += 1
        return self.n >= BATCH

    def run(self) -> None:
        self._res = [send_some(fd, data) for fd, data in zip(self._fds, self.datas, strict=True)]

    def result(self, k: int) -> int:
        if not 0 <= k < self.n:
            raise IndexError("SendBatch.result: no such entry")
        return self._res[k]

    def clear(self) -> None:
        self.n = 0
        self.obs = []
        self.datas = []
        self._fds = []
        self._res = []
