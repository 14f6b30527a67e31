"""bench/series_ratios.py: the medians it prints are the ones the README's tables quote."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

spec = importlib.util.spec_from_file_location(
    "series_ratios", Path(__file__).parent.parent / "bench" / "series_ratios.py"
)
assert spec is not None and spec.loader is not None
series_ratios = importlib.util.module_from_spec(spec)
spec.loader.exec_module(series_ratios)


def _write(path: Path, rounds: list[tuple[float, float]], row: str = "fanout_w1") -> None:
    """One series: per round (limit's deliveries/s, fasthub's)."""
    with path.open("w") as f:
        for i, (limit, ours) in enumerate(rounds, 1):
            for name, rate in (("limit", limit), ("fasthub", ours)):
                result: dict[str, Any] = {"deliveries_per_s": rate, "lost": 0, "gaps": 0, "dup_or_ooo": 0, "failed": 0}
                f.write(json.dumps({"server": f"{name}-{row}", "note": f"round {i} {row}", "result": result}) + "\n")


def _median_cell(text: str, server: str = "fasthub") -> str:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[1] == server:
            return cells[2]
    raise AssertionError(f"no row for {server} in:\n{text}")


def test_odd_rounds_give_the_middle_round(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    _write(path, [(100.0, 90.0), (100.0, 120.0), (100.0, 100.0)])
    assert _median_cell(series_ratios.table([str(path)])) == "1.00 x"


def test_even_rounds_give_the_mean_of_the_middle_two(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    _write(path, [(100.0, 83.0), (100.0, 101.0), (100.0, 44.0), (100.0, 155.0)])
    assert _median_cell(series_ratios.table([str(path)])) == "0.92 x (mean of the middle two)"


def test_several_files_keep_their_rounds_apart(tmp_path: Path) -> None:
    """Round 1 of one series is paired with that series' limit_server, not the other's."""
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write(first, [(100.0, 50.0)])
    _write(second, [(200.0, 300.0), (200.0, 100.0)])
    text = series_ratios.table([str(first), str(second)])
    line = next(x for x in text.splitlines() if "| fasthub |" in x)
    assert "0.50 x, 1.50 x, 0.50 x" in line
    assert _median_cell(text) == "0.50 x"


def test_p99_and_idle_medians_keep_their_units(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with path.open("w") as f:
        for i, (limit_p99, ours_p99, rss) in enumerate([(10.0, 8.0, 930), (10.0, 12.0, 934)], 1):
            for name, p99 in (("limit", limit_p99), ("fasthub", ours_p99)):
                result = {"lat_p50_ms": 4.0, "lat_p99_ms": p99}
                f.write(json.dumps({"server": f"{name}-p99_1k", "note": f"round {i} p99_1k", "result": result}) + "\n")
            idle = {"rss_per_conn_bytes": rss, "connect_s": 0.5}
            f.write(json.dumps({"server": "limit-idle", "note": f"round {i} idle", "result": idle}) + "\n")
            f.write(json.dumps({"server": "fasthub-idle", "note": f"round {i} idle", "result": idle}) + "\n")
    lines = series_ratios.table([str(path)]).splitlines()
    assert any("| p99_1k | fasthub | p99 1.00 x (mean of the middle two) |" in x for x in lines)
    assert any("| idle | fasthub | 932 B (mean of the middle two) |" in x for x in lines)
    assert any("| connect | fasthub | 1.00 x (mean of the middle two) |" in x for x in lines)
