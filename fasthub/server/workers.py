"""``fasthub serve --workers N``: N worker processes on one port, kept alive by a supervisor.

Each worker is a whole ``fasthub serve`` (its own hub, event loop and ``RedisBroker`` node)
bound with ``SO_REUSEPORT``, so the kernel spreads new connections over the workers and no
process hands sockets to another. The supervisor only starts, watches and stops them: a worker
that exits is logged and started again (after a pause that grows while it keeps dying young);
SIGINT or SIGTERM stops every worker (SIGTERM, then SIGKILL after ``STOP_GRACE`` seconds). A
first worker that exits 2 (a usage or configuration error) stops them all with exit code 2.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("fasthub")

#: seconds a stopping worker gets before SIGKILL
STOP_GRACE = 10.0
#: a worker that lived less than this is restarted after a growing pause (at most 5 s)
YOUNG = 5.0


class Supervisor:
    """Starts ``count`` workers running ``fasthub serve <argv>`` and restarts any that exits."""

    def __init__(self, count: int, argv: Sequence[str]) -> None:
        self.count = count
        self.argv = [sys.executable, "-m", "fasthub", "serve", *argv]
        self.workers: list[subprocess.Popen[bytes] | None] = [None] * count
        self.started_at = [0.0] * count
        self.pause = [0.0] * count  # monotonic time before which a dead worker is not restarted
        self.young_deaths = [0] * count  # deaths in a row, each within YOUNG seconds of its start
        self.restarts = 0
        self.stopping = False
        self.failed = 0  # the supervisor's exit code

    def spawn(self, index: int) -> None:
        env = dict(os.environ, FASTHUB_WORKER=str(index))
        self.workers[index] = subprocess.Popen(self.argv, env=env)
        self.started_at[index] = time.monotonic()

    def stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        self.stopping = True

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for i in range(self.count):
                self.spawn(i)
            log.info("fasthub: supervising %d workers (pids %s)", self.count, [w.pid for w in self.workers if w])
            while not self.stopping:
                self.check()
                time.sleep(0.1)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.shutdown()
        return self.failed

    def check(self) -> None:
        now = time.monotonic()
        for i, worker in enumerate(self.workers):
            if worker is None:
                if now >= self.pause[i]:
                    self.spawn(i)
                continue
            code = worker.poll()
            if code is None:
                continue
            lived = now - self.started_at[i]
            if code == 2 and not self.restarts and lived < YOUNG:
                # a usage or configuration error (fasthub serve exits 2): restarting cannot help
                log.error("fasthub: worker %d could not start (exit code 2); stopping", i)
                self.failed = 2
                self.stopping = True
                return
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            self.restarts += 1
            self.young_deaths[i] = 0 if lived >= YOUNG else self.young_deaths[i] + 1
            delay = 0.0 if not self.young_deaths[i] else min(5.0, 0.25 * 2 ** self.young_deaths[i])
            log.warning("fasthub: worker %d (pid %d) ended with %s after %.1f s; starting a new one%s",
                        i, worker.pid, how, lived, f" in {delay:.1f} s" if delay else "")
            self.workers[i] = None
            self.pause[i] = now + delay

    def shutdown(self) -> None:
        alive = [w for w in self.workers if w is not None and w.poll() is None]
        for worker in alive:
            worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for worker in alive:
            try:
                worker.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("fasthub: worker pid %d did not stop in %.0f s; killing it", worker.pid, STOP_GRACE)
                worker.kill()
                worker.wait()


def supervise(count: int, argv: Sequence[str]) -> int:
    """Run ``count`` workers of ``fasthub serve <argv>`` until SIGINT/SIGTERM."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-9s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    return Supervisor(count, argv).run()
