"""Unit costs measured from process CPU time against the hub's counters.

CPU spent over an interval is modelled as ``idle_per_s * seconds + per_connect * connects +
per_message_in * messages_in + per_delivery * deliveries (+ per_publish * broker publishes)``.
Given intervals whose mix differs (a ``fasthub bench`` run's idle, ingress and fanout
scenarios, or the windows a live hub samples while its traffic changes), least squares gives
each cost. When the mix never varied, costs that cannot be told apart are reported as None
rather than guessed: ``fit`` refuses an ill-conditioned system.
"""

from __future__ import annotations

import collections
import itertools
import os
from collections.abc import Sequence
from typing import Any

#: the model's terms, in order: (cost name, counter it multiplies)
TERMS = (
    ("cpu_idle_per_s", "seconds"),
    ("cpu_per_connect_s", "connects"),
    ("cpu_per_message_in_s", "messages_in"),
    ("cpu_per_delivery_s", "deliveries"),
    ("cpu_per_broker_publish_s", "broker_published"),
)
#: counters sampled per window (the model's plus the CPU it explains)
COUNTERS = ("cpu_s", *(counter for _, counter in TERMS))


def cpu_seconds() -> float:
    """User plus system CPU time of this process."""
    t = os.times()
    return t.user + t.system


def solve(rows: Sequence[Sequence[float]], values: Sequence[float], ridge: float = 0.0) -> list[float] | None:
    """Least squares ``rows @ x ~ values`` through the normal equations; None when singular.

    Columns are scaled to unit norm first, so a pivot below 1e-9 means two terms moved together
    in every interval (their costs cannot be separated from these data).
    """
    n = len(rows[0]) if rows else 0
    if not n or len(rows) < n:
        return None
    norms = [sum(r[j] * r[j] for r in rows) ** 0.5 for j in range(n)]
    if any(v == 0 for v in norms):
        return None
    a = [[sum(r[i] * r[j] for r in rows) / (norms[i] * norms[j]) + (ridge if i == j else 0.0) for j in range(n)]
         for i in range(n)]
    b = [sum(r[i] * v for r, v in zip(rows, values, strict=True)) / norms[i] for i in range(n)]
    for col in range(n):  # Gauss-Jordan with partial pivoting
        pivot = max(range(col, n), key=lambda k: abs(a[k][col]))
        if abs(a[pivot][col]) < 1e-9:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        b[col], b[pivot] = b[pivot], b[col]
        for k in range(n):
            if k != col and a[k][col]:
                f = a[k][col] / a[col][col]
                for j in range(col, n):
                    a[k][j] -= f * a[col][j]
                b[k] -= f * b[col]
    return [b[i] / a[i][i] / norms[i] for i in range(n)]


def fit(intervals: Sequence[dict[str, float]], terms: Sequence[tuple[str, str]] = TERMS) -> dict[str, float | None]:
    """Costs from intervals of counter deltas (``COUNTERS`` keys; ``cpu_s`` is explained).

    Terms whose counter never moved are left out (None); if the rest cannot be separated,
    every cost is None. A negative solution (noise around a tiny cost) is reported as 0.
    """
    used = [(name, counter) for name, counter in terms if any(i.get(counter, 0) for i in intervals)]
    out: dict[str, float | None] = {name: None for name, _ in terms}
    if not used:
        return out
    rows = [[float(i.get(counter, 0)) for _, counter in used] for i in intervals]
    x = solve(rows, [float(i["cpu_s"]) for i in intervals])
    if x is None:
        return out
    for (name, _), value in zip(used, x, strict=True):
        out[name] = max(0.0, value)
    return out


class CostMeter:
    """A live hub's windows: counters sampled at each stats sweep, costs fitted on demand."""

    def __init__(self, keep: int = 120) -> None:
        self.samples: collections.deque[dict[str, float]] = collections.deque(maxlen=keep)

    def sample(self, now: float, counters: dict[str, float]) -> None:
        self.samples.append({"seconds": now, **counters})

    def intervals(self) -> list[dict[str, float]]:
        s = list(self.samples)
        return [{k: b[k] - a[k] for k in b} for a, b in itertools.pairwise(s)]

    def costs(self) -> dict[str, Any]:
        """The fitted costs over the kept windows, with the window they cover."""
        intervals = [i for i in self.intervals() if i["seconds"] > 0]
        out: dict[str, Any] = {"window_s": round(sum(i["seconds"] for i in intervals), 1), "intervals": len(intervals)}
        fitted = fit(intervals) if len(intervals) >= len(TERMS) else {name: None for name, _ in TERMS}
        out.update({k: (None if v is None else float(f"{v:.3g}")) for k, v in fitted.items()})
        return out
