"""``fasthub plan`` checked against measurements: predict four workloads, then run them.

    python bench/plan_check.py [--costs costs.json] [--json out.json]

Calibrates (``fasthub plan --calibrate``'s runs) unless ``--costs`` names a saved file, then
for each workload starts a fresh ``fasthub serve``, holds its connections with ``fasthub
bench``'s ``latency`` scenario (N members of one room, a publisher at a fixed rate) and reads
the server's CPU time over the measured phase and its RSS at the end from /proc (the server on
CPU 0, the load generator on the others, as in the calibration). The room sizes
lie between (or below) the calibration's fanout sizes (11, 101, 1,001, 10,001), not on them. The
prediction is ``plan``'s CPU (core-seconds per second) and memory for the same workload; the
table gives both and their ratio. Run nothing else heavy meanwhile: both cores are used.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fasthub.benchmark import BenchConfig, run_bench
from fasthub.plan import Costs, Workload, _server, calibrate, client_cpus, costs_from_bench, plan

#: (name, members of the room, messages per second, seconds)
WORKLOADS = (
    ("chat room, 300 members, 400 msg/s", 300, 400.0, 10.0),
    ("big room, 2,500 members, 40 msg/s", 2500, 40.0, 10.0),
    ("bigger room, 7,000 members, 14 msg/s", 7000, 14.0, 10.0),
    ("busy small room, 50 members, 2,000 msg/s", 50, 2000.0, 10.0),
)


def measure(members: int, rate: float, seconds: float) -> dict[str, Any]:
    with _server([]) as (port, pid):
        cfg = BenchConfig(f"ws://127.0.0.1:{port}/ws", "latency", connections=members, rate=rate,
                          duration=seconds, pid=pid, client_cpus=client_cpus())
        res = run_bench(cfg)
    measured_s = float(res.get("duration_s") or seconds)
    return {
        "ok": res.get("ok"),
        "problems": res.get("problems"),
        "msgs_per_s": float(res.get("msgs_per_s") or rate),
        "cpu_core_s_per_s": (res.get("server_cpu_s") or 0.0) / measured_s,
        "rss_bytes": (res.get("rss_end_kb") or 0) * 1024,
        "delivered": res.get("received"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--costs", help="a fasthub plan --save file (default: calibrate now)")
    p.add_argument("--json", help="write the table here too")
    args = p.parse_args(argv)
    if args.costs:
        with open(args.costs) as f:
            doc = json.load(f)
    else:
        doc = calibrate(quiet=True)
    costs: Costs = costs_from_bench(doc, args.costs or "calibration")
    rows = []
    for name, members, rate, seconds in WORKLOADS:
        got = measure(members, rate, seconds)
        # the rate the publisher achieved (the offered one, unless the server fell behind)
        predicted = plan(costs, Workload(members, 1, members, got["msgs_per_s"], 60, headroom=0.0))
        row = {
            "workload": name,
            "msgs_per_s": round(got["msgs_per_s"], 1),
            "predicted_cpu": predicted["cpu_core_seconds_per_s"],
            "measured_cpu": round(got["cpu_core_s_per_s"], 3),
            "cpu_ratio": round(got["cpu_core_s_per_s"] / predicted["cpu_core_seconds_per_s"], 3),
            "predicted_rss_mib": round(predicted["memory_used_bytes"] / 2**20, 1),
            "measured_rss_mib": round(got["rss_bytes"] / 2**20, 1),
            "rss_ratio": round(got["rss_bytes"] / predicted["memory_used_bytes"], 3),
            "ok": got["ok"],
            "problems": got["problems"],
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    out = {"costs": costs.__dict__, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    print("| workload | CPU predicted | CPU measured | ratio | RSS predicted | RSS measured | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workload']} | {r['predicted_cpu']} | {r['measured_cpu']} | {r['cpu_ratio']} | "
              f"{r['predicted_rss_mib']} MiB | {r['measured_rss_mib']} MiB | {r['rss_ratio']} |")
    return 0 if all(r["ok"] and 0.75 <= r["cpu_ratio"] <= 1.25 and 0.75 <= r["rss_ratio"] <= 1.25 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
