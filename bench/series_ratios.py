"""Per-round ratios to limit_server of a series (bench/series.sh) and their medians, as markdown.

Each round's figure is fasthub's (or base's) result divided by limit_server's result of the same
round and row; the table gives the median round and every round. Idle memory is absolute (bytes
per connection), latency (and p99_1k) is p50 and the p99 ratio, connect is limit's connect time / ours.
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any


def main(path: str) -> None:
    runs: dict[tuple[str, str, str], dict[str, Any]] = {}
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    for rec in records:
        name, _, row = rec["server"].partition("-")
        round_ = rec.get("note", "").split()[1] if rec.get("note", "").startswith("round") else "?"
        runs[(name, row, round_)] = rec["result"]
        if row == "idle":  # the connect rate is measured by the idle workload
            runs[(name, "connect", round_)] = rec["result"]
    servers = sorted({k[0] for k in runs if k[0] != "limit"})
    rows = list(dict.fromkeys(k[1] for k in runs))
    print("| row | server | median | rounds | lost/gaps/dup/failed |")
    print("|---|---|---|---|---|")
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
            median = statistics.median_low(figures)[1]  # the median round (the lower of two middles)
            print(f"| {row} | {name} | {median} | {', '.join(t for _, t in figures)} | {'/'.join(map(str, bad))} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fasthub-loadgen/series.jsonl")
