"""``send_some`` (direct socket writes of the fast path), compiled and pure."""

from __future__ import annotations

import importlib
import socket
from types import ModuleType

import pytest

from fasthub import _ext


@pytest.fixture(params=["py", "c"])
def sockio(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "c":
        if _ext.NO_EXTENSIONS:
            pytest.skip("compiled twin not used with FASTHUB_NO_EXTENSIONS")
        try:
            return importlib.import_module("fasthub._core.sockio_c")
        except ImportError:
            pytest.skip("fasthub._core.sockio_c is not built")
    return importlib.import_module("fasthub._core.sockio_py")


def test_send_some_writes_reports_would_block_and_errors(sockio: ModuleType) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        assert sockio.send_some(a.fileno(), b"hello") == 5
        assert b.recv(16) == b"hello"
        total = 0
        chunk = b"x" * 65536
        for _ in range(1000):  # fill the socket until it would block
            n = sockio.send_some(a.fileno(), chunk)
            assert 0 <= n <= len(chunk)
            total += n
            if n == 0:
                break
        else:
            raise AssertionError("the socket never filled up")
        assert total > 0
        b.close()
        results = {sockio.send_some(a.fileno(), b"after close") for _ in range(3)}
        assert -1 in results  # EPIPE/ECONNRESET, no SIGPIPE, no exception
    finally:
        a.close()
        b.close()


def test_send_some_never_raises(sockio: ModuleType) -> None:
    """The flush calls it once per member without an exception check: errors are -1."""
    a, b = socket.socketpair()
    try:
        assert sockio.send_some(a.fileno(), None) == -1  # type: ignore[arg-type]
        assert sockio.send_some(-1, b"x") == -1  # EBADF
        assert b"x" not in _drain(b)
    finally:
        a.close()
        b.close()


def _drain(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    try:
        return sock.recv(16)
    except BlockingIOError:
        return b""
