"""Latency percentiles computed exactly as the C loadgen does, so figures line up.

loadgen sorts every sample and takes index ``int(p / 100 * n)`` (clamped): same here.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

__all__ = ["PERCENTILES", "merge_ns", "percentiles"]

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))


def merge_ns(chunks: Iterable[bytes]) -> array[int]:
    """One array of int64 nanoseconds from the workers' raw ``array('q').tobytes()`` chunks."""
    out: array[int] = array("q")
    for chunk in chunks:
        out.frombytes(chunk)
    return out


def percentiles(prefix: str, samples: array[int]) -> dict[str, float | int]:
    """``{prefix}_n``, ``_mean_ms``, ``_p50_ms`` … ``_p999_ms``, ``_min_ms``, ``_max_ms``."""
    n = len(samples)
    if not n:
        return {f"{prefix}_n": 0}
    ordered = sorted(samples)
    out: dict[str, float | int] = {f"{prefix}_n": n, f"{prefix}_mean_ms": round(sum(ordered) / n / 1e6, 4)}
    for name, p in PERCENTILES:
        k = min(int(p / 100.0 * n), n - 1)
        out[f"{prefix}_{name}_ms"] = round(ordered[k] / 1e6, 4)
    out[f"{prefix}_min_ms"] = round(ordered[0] / 1e6, 4)
    out[f"{prefix}_max_ms"] = round(ordered[-1] / 1e6, 4)
    return out
