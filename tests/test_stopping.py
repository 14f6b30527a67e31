"""fasthub.stopping: every wait of a shutdown ends within its bound, even on a task that
swallows cancels, and what is left behind is logged with where it waits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from fasthub.stopping import bounded, stop_tasks, where
from tests.conftest import run


async def _swallows(times: int, log: list[str]) -> str:
    """Swallows the first ``times`` cancels (as redis-py's connect can), then ends on the next."""
    left = times
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            log.append("cancel")
            if left == 0:
                raise
            left -= 1


async def _deaf() -> None:
    while True:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)


def test_stop_tasks_cancels_again_until_a_swallowing_task_ends() -> None:
    async def scenario() -> None:
        seen: list[str] = []
        task = asyncio.create_task(_swallows(2, seen))
        plain = asyncio.create_task(asyncio.sleep(3600))
        await asyncio.sleep(0)
        left = await stop_tasks([task, plain], 5.0, "test")
        assert left == []
        assert task.cancelled() and plain.cancelled()
        assert seen == ["cancel", "cancel", "cancel"]

    run(scenario())


def test_stop_tasks_leaves_a_deaf_task_behind_within_the_bound_and_says_where(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        task = asyncio.create_task(_deaf(), name="deaf-one")
        await asyncio.sleep(0)
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="fasthub"):
            left = await stop_tasks([task], 0.6, "test stop")
        took = time.monotonic() - t0
        assert left == [task] and not task.done()
        assert 0.5 <= took < 2.0, took
        text = caplog.text
        assert "test stop: 1 task(s) still running after 0.6 s" in text
        assert "deaf-one at tests/test_stopping.py:" in text and "(_deaf) > asyncio/tasks.py:" in text
        task.get_coro().close()  # ends it without a cancel

    run(scenario())


def test_stop_tasks_retrieves_errors_of_ended_tasks() -> None:
    async def scenario() -> None:
        async def fails() -> None:
            raise RuntimeError("boom")

        task = asyncio.create_task(fails())
        await asyncio.sleep(0)
        assert await stop_tasks([task], 1.0, "test") == []
        assert isinstance(task.exception(), RuntimeError)

    run(scenario())


def test_bounded_says_whether_it_finished_in_time(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async def fails() -> None:
            raise RuntimeError("boom")

        assert await bounded(asyncio.sleep(0.01), 1.0, "quick") is True
        assert await bounded(fails(), 1.0, "fails") is True  # done in time; its error is not raised
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="fasthub"):
            assert await bounded(asyncio.sleep(3600), 0.3, "slow step") is False
        assert time.monotonic() - t0 < 1.5
        assert "slow step: not done after 0.3 s" in caplog.text

        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="fasthub"):
            assert await bounded(_deaf(), 0.3, "deaf step") is False  # left behind after one more try
        assert time.monotonic() - t0 < 1.5
        assert "deaf step: 1 task(s) still running" in caplog.text
        for task in asyncio.all_tasks():
            coro = task.get_coro()
            if getattr(coro, "__name__", "") == "_deaf":
                coro.close()  # asyncio.run would wait for it for ever

    run(scenario())


def test_where_names_the_innermost_wait() -> None:
    async def scenario() -> None:
        task = asyncio.create_task(asyncio.sleep(3600), name="sleeper")
        await asyncio.sleep(0)
        assert where(task).startswith("sleeper at asyncio/tasks.py:") and where(task).endswith("(sleep)")
        nested = asyncio.create_task(_swallows(0, []), name="nested")
        await asyncio.sleep(0)
        assert where(nested).startswith("nested at tests/test_stopping.py:")
        assert "(_swallows) > asyncio/tasks.py:" in where(nested)
        assert where(nested, depth=1).startswith("nested at asyncio/tasks.py:")
        nested.cancel()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert where(task) == "sleeper"  # ended: no stack

    run(scenario())


def test_a_stop_that_outlives_its_drain_says_what_it_waits_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``fasthub serve``'s first SIGTERM drains; if the process still runs STUCK_REPORT seconds
    past ``drain_timeout``, it logs every task it waits on (before a supervisor kills it)."""
    from fasthub import Hub, HubConfig
    from fasthub.server import run as run_module
    from fasthub.server.asgi import create_app

    app = create_app(Hub(HubConfig(drain_timeout=0.1)))

    async def never_drains(rate: float | None = None, timeout: float | None = None) -> bool:
        await asyncio.sleep(3600)
        return True

    monkeypatch.setattr(app, "drain", never_drains)
    monkeypatch.setattr(run_module, "STUCK_REPORT", 0.2)
    server = run_module.draining_server(run_module.uvicorn_config(app, "127.0.0.1", 1, "warning"), app, False)

    async def scenario() -> None:
        server.loop = asyncio.get_running_loop()
        with caplog.at_level(logging.WARNING, logger="fasthub"):
            server._start_drain()
            await asyncio.sleep(0.1)
            assert "still stopping" not in caplog.text
            await asyncio.sleep(0.4)
        assert "fasthub: still stopping 0.3 s after SIGTERM; waiting on:" in caplog.text
        assert "tests/test_stopping.py:" in caplog.text and "(never_drains)" in caplog.text  # the drain, where it waits
        server.drain_task.cancel()

    run(scenario())


def test_dump_stacks_on_leaves_an_application_handler_alone() -> None:
    import faulthandler
    import signal

    from fasthub.server.run import dump_stacks_on

    previous = signal.signal(signal.SIGUSR2, lambda *_: None)
    try:
        assert dump_stacks_on(signal.SIGUSR2) is False  # the application's own handler stays
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
        assert dump_stacks_on(signal.SIGUSR2) is True
        assert faulthandler.unregister(signal.SIGUSR2) is True  # it was registered
    finally:
        signal.signal(signal.SIGUSR2, previous)
