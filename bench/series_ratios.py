"""Per-round ratios to limit_server of a series (bench/series.sh) and their medians, as markdown.

Each round's figure is fasthub's (or base's) result divided by limit_server's result of the same
round and row; the table gives the median and every round. Idle memory is absolute (bytes per
connection), latency (and p99_1k) is p50 and the p99 ratio, connect is limit's connect time / ours.
Over an odd number of rounds the median is the middle round; over an even number, the mean of
the two middle figures (a table that showed the lower one read a tie as a win). Several results
files (several series) are read as one, each file's rounds kept apart.
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any


def _unit(row: str, value: float) -> str:
    if row == "idle":
        return f"{value:,.0f} B"
    if row in ("latency", "p99_1k"):
        return f"p99 {value:.2f} x"
    return f"{value:.2f} x"


def median_text(row: str, figures: list[tuple[float, str]]) -> str:
    """The middle round's text, or over an even count the mean of the two middle figures."""
    if len(figures) % 2 or row == "scale":  # scale's figure is a sentence: its middle round as it is
        return statistics.median_low(figures)[1]
    return f"{_unit(row, statistics.median(v for v, _ in figures))} (mean of the middle two)"


def table(paths: list[str]) -> str:
    runs: dict[tuple[str, str, str], dict[str, Any]] = {}
    for index, path in enumerate(paths):
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        for rec in records:
            name, _, row = rec["server"].partition("-")
            note = rec.get("note", "")
            round_ = note.split()[1] if note.startswith("round") else "?"
            if len(paths) > 1:
                round_ = f"{index}:{round_}"  # round 1 of two series are two rounds
            runs[(name, row, round_)] = rec["result"]
            if row == "idle":  # the connect rate is measured by the idle workload
                runs[(name, "connect", round_)] = rec["result"]
    servers = sorted({k[0] for k in runs if k[0] != "limit"})
    rows = list(dict.fromkeys(k[1] for k in runs))
    lines = ["| row | server | median | rounds | lost/gaps/dup/failed |", "|---|---|---|---|---|"]
    for row in rows:
        for name in servers:
            figures: list[tuple[float, str]] = []
            bad = [0, 0, 0, 0]
            for (n, r, rnd), res in sorted(runs.items()):
                if n != name or r != row:
                    continue
                base = runs.get(("limit", row, rnd))
                for i, key in enumerate(("lost", "gaps", "dup_or_ooo", "failed")):
                    bad[i] += int(res.get(key, 0) or 0)
                if row == "connect" and base:
                    ratio = base["connect_s"] / res["connect_s"]
                    figures.append((ratio, f"{ratio:.2f} x ({res['connect_s']:.3f} vs {base['connect_s']:.3f} s)"))
                elif row in ("idle", "scale"):
                    per = res.get("rss_per_conn_bytes") or 0
                    text = f"{per:,.0f} B"
                    if row == "scale":
                        text = f"{res.get('connected')} connected, {res.get('probe_members_reached')} got the probe"
                    figures.append((float(per), text))
                elif row in ("latency", "p99_1k") and base:
                    ratio = res["lat_p99_ms"] / base["lat_p99_ms"]
                    figures.append((ratio, f"p50 {res['lat_p50_ms']:.2f} ms, p99 {ratio:.2f} x"))
                elif base:
                    key = "deliveries_per_s" if row.startswith("fanout") else "msgs_per_s"
                    ratio = res[key] / base[key]
                    figures.append((ratio, f"{ratio:.2f} x"))
            if not figures:
                continue
            lines.append(
                f"| {row} | {name} | {median_text(row, figures)} | {', '.join(t for _, t in figures)} "
                f"| {'/'.join(map(str, bad))} |"
            )
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    print(table(paths))


if __name__ == "__main__":
    main(sys.argv[1:] or ["/tmp/fasthub-loadgen/series.jsonl"])
