"""Stopping asyncio tasks within a bound, whatever the code inside them does with a cancel.

A shutdown that awaits a task for ever can keep a process alive for ever: redis-py can
swallow a cancel that lands in its connect, and its pub/sub teardown waits for a lock without
taking a cancel. A worker of ``fasthub serve --workers`` stuck so is killed by its supervisor
only after ``drain_timeout`` plus a grace, and nobody learns where it stuck. So every wait of
a shutdown is bounded: ``stop_tasks`` cancels again every quarter second up to its bound,
``bounded`` runs one awaitable for at most its bound, and what overruns is left behind and
logged with the place it waits in (``where``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from typing import Any

log = logging.getLogger("fasthub")

#: how often ``stop_tasks`` cancels a task that is still running
RECANCEL = 0.25


def where(task: asyncio.Task[Any], depth: int = 3) -> str:
    """The task's name and the ``depth`` innermost lines of its chain of awaits, outer to inner,
    e.g. ``Task-7 at broker/redis.py:401 (_disconnect) > asyncio/tasks.py:649 (sleep)``
    (``Task.get_stack`` gives only the outermost frame of a suspended task)."""
    frames = []
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    if not frames:
        return task.get_name()
    lines = []
    for frame in frames[-depth:]:
        code = frame.f_code
        path = "/".join(code.co_filename.rsplit("/", 2)[-2:])
        lines.append(f"{path}:{frame.f_lineno} ({code.co_name})")
    return f"{task.get_name()} at {' > '.join(lines)}"


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], timeout: float, what: str) -> list[asyncio.Task[Any]]:  # noqa: ASYNC109
    """Cancel ``tasks`` and wait at most ``timeout`` seconds for them to end, cancelling again
    every ``RECANCEL`` seconds (a cancel can be swallowed). Returns (and logs) the ones still
    running; the ended ones' exceptions are retrieved (not news at a stop)."""
    tasks = list(tasks)
    pending = [t for t in tasks if not t.done()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, still = await asyncio.wait(pending, timeout=min(RECANCEL, left))
        pending = list(still)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()
    if pending:
        log.warning("fasthub: %s: %d task(s) still running after %.1f s, left behind: %s",
                    what, len(pending), timeout, "; ".join(where(t) for t in pending))
    return pending


async def bounded(awaitable: Awaitable[Any], timeout: float, what: str) -> bool:  # noqa: ASYNC109
    """Await ``awaitable`` for at most ``timeout`` seconds (then stop it, as ``stop_tasks``).

    True when it finished in time, whether it returned or raised (its error is not raised:
    this is for the steps of a shutdown, each of which may fail without stopping the next)."""
    task = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait([task], timeout=timeout)
    except asyncio.CancelledError:
        await stop_tasks([task], RECANCEL, what)
        raise
    if task.done():
        if not task.cancelled():
            task.exception()
        return True
    log.warning("fasthub: %s: not done after %.1f s (%s); cancelled", what, timeout, where(task))
    await stop_tasks([task], RECANCEL, what)
    return False


__all__ = ["RECANCEL", "bounded", "stop_tasks", "where"]
