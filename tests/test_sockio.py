"""``send_some`` (direct socket writes of the fast path), compiled and pure."""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import subprocess
import sys
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


# -- SendBatch: a pass's direct sends made together ------------------------------------------------


def _kernel_has_io_uring() -> bool:
    """Whether this kernel lets the process make an io_uring that sends (io_uring_setup asked
    through ctypes, independent of sockio_c's own check, and Linux 5.6+ for IORING_OP_SEND)."""
    import ctypes
    import platform

    release = tuple(int(x) for x in platform.release().split("-")[0].split(".")[:2])
    if release < (5, 6):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)  # struct io_uring_params
    fd = libc.syscall(425, 4, params)  # __NR_io_uring_setup on x86-64 and arm64
    if fd < 0:
        return False
    os.close(fd)
    return True


def test_a_batch_answers_each_send_as_send_some_would(sockio: ModuleType) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    gone_a, gone_b = socket.socketpair()
    gone_b.close()
    try:
        batch = sockio.SendBatch()
        assert batch.n == 0 and batch.obs == [] and batch.datas == []
        entries = [
            ("first", a.fileno(), b"hello"),
            ("gone", gone_a.fileno(), b"to a closed peer"),
            ("bad fd", -1, b"z"),
            ("big", a.fileno(), b"q" * 10_000_000),  # takes what fits: a part
            ("after", a.fileno(), b"more"),  # the socket is full now: nothing
        ]
        for ob, fd, data in entries:
            assert not batch.add(ob, fd, data)
        assert batch.n == 5 and batch.obs == [e[0] for e in entries] and batch.datas == [e[2] for e in entries]
        batch.run()
        results = [batch.result(k) for k in range(batch.n)]
        assert results[0] == 5 and results[1] == -1 and results[2] == -1 and results[4] == 0
        assert 0 < results[3] < 10_000_000
        got = b""
        b.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while chunk := b.recv(1 << 20):
                got += chunk
        assert got == b"hello" + b"q" * results[3]  # in the order added, each once
        batch.clear()
        assert batch.n == 0 and batch.obs == [] and batch.datas == []
    finally:
        for s in (a, b, gone_a):
            s.close()


def test_a_batch_is_full_at_batch_size_and_sends_every_entry_in_order(sockio: ModuleType) -> None:
    a, b = socket.socketpair()
    try:
        batch = sockio.SendBatch()
        fulls = [batch.add(i, a.fileno(), b"%03d," % i) for i in range(sockio.BATCH)]
        assert fulls == [False] * (sockio.BATCH - 1) + [True]
        batch.run()
        assert all(batch.result(k) == 4 for k in range(sockio.BATCH))
        b.settimeout(2)
        want = b"".join(b"%03d," % i for i in range(sockio.BATCH))
        got = b""
        while len(got) < len(want):
            got += b.recv(65536)
        assert got == want
        with pytest.raises(IndexError):  # full: run and clear it first
            batch.add(0, a.fileno(), b"x")
        with pytest.raises(IndexError):
            batch.result(sockio.BATCH)
        batch.clear()
        with pytest.raises(IndexError):  # cleared: no entry
            batch.result(0)
        with pytest.raises(TypeError):
            batch.add(0, a.fileno(), None)
        assert batch.n == 0 and batch.obs == [] and batch.datas == []
        batch.run()  # empty: nothing happens
        assert batch.n == 0
    finally:
        a.close()
        b.close()


def test_the_compiled_batch_uses_io_uring_where_the_kernel_has_it(sockio: ModuleType) -> None:
    if sockio.__name__.endswith("_py"):
        assert sockio.ring_state() == "send"  # the twin: one send(2) per entry
        return
    assert sockio.ring_state() == ("io_uring" if _kernel_has_io_uring() else "send")


def test_fasthub_no_io_uring_makes_each_send_a_call_of_its_own(sockio: ModuleType) -> None:
    """``FASTHUB_NO_IO_URING=1`` (read once per process): no ring, the same answers."""
    name = sockio.__name__.rsplit(".", 1)[1]
    code = (
        f"import socket, sys; from fasthub._core import {name} as m\n"
        "a, b = socket.socketpair(); bt = m.SendBatch(); bt.add(0, a.fileno(), b'hi'); bt.run()\n"
        "print(m.ring_state(), bt.result(0), b.recv(8))\n"
    )
    for value, want in (("1", "send"), ("0", None)):
        env = dict(os.environ, FASTHUB_NO_IO_URING=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
        state, n, data = out.split(maxsplit=2)
        assert n == "2" and data.strip() == "b'hi'"
        if want is not None:
            assert state == want
        elif sockio.__name__.endswith("_c"):
            assert state == ("io_uring" if _kernel_has_io_uring() else "send")


def test_a_forked_child_makes_its_own_ring_and_the_parents_goes_on(sockio: ModuleType) -> None:
    """uvicorn's workers are forked: a child must not fill the parent's submission queue."""
    code = (
        f"import os, socket; from fasthub._core import {sockio.__name__.rsplit('.', 1)[1]} as m\n"
        "a, b = socket.socketpair(); before = m.ring_state()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    bt = m.SendBatch(); bt.add(0, a.fileno(), b'child'); bt.run()\n"
        "    os._exit(0 if m.ring_state() == before and bt.result(0) == 5 else 1)\n"
        "_, st = os.waitpid(pid, 0)\n"
        "bt = m.SendBatch(); bt.add(0, a.fileno(), b'parent'); bt.run()\n"
        "print(before, os.waitstatus_to_exitcode(st), bt.result(0), m.ring_owner() == os.getpid(), b.recv(64))\n"
    )
    # the child checks, after its batch, that the ring it used is its own (made after the fork)
    code = code.replace("bt.result(0) == 5", "bt.result(0) == 5 and m.ring_owner() in (0, os.getpid())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30).stdout
    before, child, n, owner, data = out.split(maxsplit=4)
    assert child == "0" and n == "6" and data.strip() == "b'childparent'"
    if sockio.__name__.endswith("_c") and _kernel_has_io_uring():
        assert before == "io_uring" and owner == "True"  # the parent's ring stays the parent's
    else:
        assert before == "send" and owner == "False"  # no ring: ring_owner() is 0
