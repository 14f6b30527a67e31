"""``fasthub serve --workers N``: N worker processes on one port, kept alive by a supervisor.

Each worker is a whole ``fasthub serve`` (its own hub, event loop and ``RedisBroker`` node)
bound with ``SO_REUSEPORT``, so the kernel spreads new connections over the workers and no
process hands sockets to another. The supervisor only starts, watches and stops them: a worker
that exits is logged and started again (after a pause that grows while it keeps dying young).

- SIGTERM (or SIGINT) stops every worker with SIGTERM, so each drains (1012 to its clients,
  which resume on the others or after the restart), then SIGKILL after ``drain_timeout`` plus
  ``STOP_GRACE`` seconds (SIGUSR1 first: the worker writes every thread's stack to stderr, so
  the log says where it was stuck). A second SIGTERM passes on and makes every worker exit at once.
- SIGUSR1 is passed on: each worker writes every thread's stack to stderr.
- SIGHUP restarts the workers one at a time without closing the port: a new worker starts,
  and once it serves (its first metrics snapshot is written: once its broker is up, or after
  ``asgi.BROKER_WAIT`` seconds) the old one drains and exits.
- The workers' ``/metrics`` add up through a folder they share (``FASTHUB_METRICS_DIR``, a
  temporary one unless set); an ended worker's counters are folded into its archive.

A first worker that exits 2 (a usage or configuration error) stops them all with exit code 2.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import FrameType

from .. import metrics

log = logging.getLogger("fasthub")

#: seconds a stopping worker gets beyond its drain timeout before SIGKILL
STOP_GRACE = 10.0
#: seconds given to a worker that does not stop to write its stacks (SIGUSR1) before SIGKILL
DUMP_WAIT = 0.5
#: seconds a new worker of a rolling restart may take to start serving
START_TIMEOUT = 30.0
#: a worker that lived less than this is restarted after a growing pause (at most 5 s)
YOUNG = 5.0


class Supervisor:
    """Starts ``count`` workers running ``fasthub serve <argv>`` and restarts any that exits."""

    def __init__(self, count: int, argv: Sequence[str], drain_timeout: float = 30.0) -> None:
        self.count = count
        self.drain_timeout = drain_timeout
        self.argv = [sys.executable, "-m", "fasthub", "serve", *argv]
        self.own_dir = not os.environ.get("FASTHUB_METRICS_DIR")
        self.metrics_dir = os.environ.get("FASTHUB_METRICS_DIR") or tempfile.mkdtemp(prefix="fasthub-metrics-")
        self.rolling = False  # SIGHUP: a rolling restart is due
        self.stop_signals = 0
        self.workers: list[subprocess.Popen[bytes] | None] = [None] * count
        self.started_at = [0.0] * count
        self.pause = [0.0] * count  # monotonic time before which a dead worker is not restarted
        self.young_deaths = [0] * count  # deaths in a row, each within YOUNG seconds of its start
        self.restarts = 0
        self.stopping = False
        self.failed = 0  # the supervisor's exit code

    def spawn(self, index: int) -> subprocess.Popen[bytes]:
        env = dict(os.environ, FASTHUB_WORKER=str(index), FASTHUB_METRICS_DIR=self.metrics_dir)
        worker = self.workers[index] = subprocess.Popen(self.argv, env=env)
        self.started_at[index] = time.monotonic()
        return worker

    def stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        self.stopping = True
        self.stop_signals += 1
        if self.stop_signals > 1:  # the second: every worker exits at once
            for worker in self.workers:
                if worker is not None and worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)

    def hang_up(self, signum: int = signal.SIGHUP, frame: FrameType | None = None) -> None:
        self.rolling = True

    def pass_on(self, signum: int = signal.SIGUSR1, frame: FrameType | None = None) -> None:
        """SIGUSR1: every worker writes its stacks to stderr (the supervisor itself goes on)."""
        for worker in self.workers:
            if worker is not None and worker.poll() is None:
                with contextlib.suppress(OSError):
                    worker.send_signal(signum)

    def run(self) -> int:
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.stop) for sig in handled}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self.hang_up)
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self.pass_on)
        try:
            for i in range(self.count):
                self.spawn(i)
            log.info("fasthub: supervising %d workers (pids %s)", self.count, [w.pid for w in self.workers if w])
            while not self.stopping:
                if self.rolling:
                    self.rolling = False
                    self.roll()
                self.check()
                time.sleep(0.1)
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.own_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return self.failed

    def roll(self) -> None:
        """Replace every worker, one at a time: start the new one, then drain the old one."""
        log.info("fasthub: rolling restart of %d workers", self.count)
        for i in range(self.count):
            old = self.workers[i]
            if self.stopping:
                return
            new = self.spawn(i)
            ready = os.path.join(self.metrics_dir, f"{new.pid}.json")
            deadline = time.monotonic() + START_TIMEOUT
            while not os.path.exists(ready) and new.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if not os.path.exists(ready):
                log.error("fasthub: rolling restart: the new worker %d (pid %d) did not start; stopping the roll",
                          i, new.pid)
                if old is not None and old.poll() is None:
                    self.workers[i] = old  # keep the old one serving
                    new.kill()
                    new.wait()
                return
            started = time.monotonic() - self.started_at[i]
            stop_began = time.monotonic()
            if old is not None and old.poll() is None:
                old.send_signal(signal.SIGTERM)
                self._wait([old])
            if old is not None:
                metrics.archive(self.metrics_dir, old.pid)
            log.info("fasthub: rolling restart: worker %d is pid %d (started in %.1f s; pid %s stopped in %.1f s)",
                     i, new.pid, started, old.pid if old is not None else "-", time.monotonic() - stop_began)
        log.info("fasthub: rolling restart done")

    def _wait(self, workers: list[subprocess.Popen[bytes]]) -> None:
        deadline = time.monotonic() + self.drain_timeout + STOP_GRACE
        for worker in workers:
            try:
                worker.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("fasthub: worker pid %d did not stop in %.0f s; its stacks follow, then it is killed",
                            worker.pid, self.drain_timeout + STOP_GRACE)
                with contextlib.suppress(OSError):
                    worker.send_signal(signal.SIGUSR1)  # faulthandler: every thread's stack to stderr
                    time.sleep(DUMP_WAIT)
                worker.kill()
                worker.wait()

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
            metrics.archive(self.metrics_dir, worker.pid)

    def shutdown(self) -> None:
        alive = [w for w in self.workers if w is not None and w.poll() is None]
        for worker in alive:
            worker.send_signal(signal.SIGTERM)
        self._wait(alive)


def supervise(count: int, argv: Sequence[str], drain_timeout: float = 30.0) -> int:
    """Run ``count`` workers of ``fasthub serve <argv>`` until SIGINT/SIGTERM (SIGHUP: restart them
    one by one)."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-9s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    return Supervisor(count, argv, drain_timeout).run()
