"""One worker against ``--workers 2`` with Redis, and where each core's time went.

For each round and row: ``limit_server`` (pinned to CPU 0, the load generator to CPU 1, as
``run.sh``), then ``fasthub serve --redis URL --workers N`` for each N on both cores (the
kernel spreads the connections over the workers' ``SO_REUSEPORT`` sockets), with a fresh
``redis-server`` per run. The CPU seconds of every process (each worker, the supervisor,
redis-server, the load generator) are read from their CPU clocks before and after the load, so
a run says where the second core's time went. One JSON line per run to ``--out``, a table at
the end. Run nothing else heavy meanwhile::

    python bench/redis_workers.py --loadgen ../shared/loadgen --build /tmp/shared-lg --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fasthub.benchmark.sysinfo import proc_cpu_s

ROWS = {
    "ingress": ["ingress", "-n", "100", "-w", "16", "-t", "5", "-m", "2000000"],
    "fanout_w1": ["fanout", "-n", "10000", "-m", "200", "-w", "1"],
    "fanout1k_w8": ["fanout", "-n", "1000", "-m", "2000", "-w", "8"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: proc_cpu_s(pid) or 0.0 for name, pid in pids.items()}


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(loadgen: str, row: str, server: list[str], server_cpus: str, redis: bool) -> dict[str, Any]:
    """One run: start redis (if asked) and the server, load it, read every process's CPU."""
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    pids: dict[str, int] = {}
    try:
        cmd = [a.replace("{PORT}", str(port)) for a in server]
        if redis:
            rport = free_port()
            rs = subprocess.Popen(
                ["taskset", "-c", server_cpus, "redis-server", "--port", str(rport), "--save", ""],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(rs)
            pids["redis"] = rs.pid
            time.sleep(0.3)
            cmd = [a.replace("{REDIS}", f"redis://127.0.0.1:{rport}") for a in cmd]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        srv = subprocess.Popen(["taskset", "-c", server_cpus, *cmd], **quiet)  # type: ignore[call-overload]
        procs.append(srv)
        ok = subprocess.run([loadgen, "wait", "--port", str(port), "-t", "30"], capture_output=True).returncode == 0
        if not ok:
            return {"row": row, "error": "server not ready"}
        time.sleep(1.0)  # workers up, broker connected
        pids["server"] = srv.pid
        for i, child in enumerate(children(srv.pid)):
            pids[f"worker{i + 1}"] = child
        before = cpu(pids)
        t0 = time.monotonic()
        lg = subprocess.Popen(
            ["taskset", "-c", "1", loadgen, *ROWS[row][:1], "--port", str(port), *ROWS[row][1:], "--deadline", "90"],
            stdout=subprocess.PIPE,
        )
        out, _ = lg.communicate(timeout=120)
        wall = time.monotonic() - t0
        after = cpu(pids)
        result = json.loads(out.decode().strip().splitlines()[-1])
        spent = {name: round(after[name] - before[name], 3) for name in pids}
        spent["loadgen"] = float(result.get("loadgen_cpu_s") or 0.0)  # its own count
        return {"row": row, "cmd": " ".join(cmd), "wall_s": round(wall, 2), "cpu_s": spent, "result": result}
    finally:
        for p in reversed(procs):
            stop(p)


def rate(result: dict[str, Any]) -> float:
    if result.get("mode") == "ingress":
        return float(result["msgs_per_s"])
    return float(result["deliveries_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loadgen", default="bench/loadgen", help="the loadgen folder (for run.sh's build)")
    ap.add_argument("--build", default="/tmp/fasthub-loadgen", help="where loadgen and limit_server are built")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", default="ingress,fanout_w1")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--out", default="/tmp/fasthub-redis-workers.jsonl")
    args = ap.parse_args()
    loadgen = os.path.join(args.build, "loadgen")
    limit = os.path.join(args.build, "limit_server")
    if not (os.access(loadgen, os.X_OK) and os.access(limit, os.X_OK)):
        build = [os.path.join(args.loadgen, "run.sh"), "limit", "idle", "-n", "10", "-t", "1", "--", limit, "{PORT}"]
        subprocess.run(build, env={**os.environ, "LOADGEN_BUILD": args.build}, capture_output=True)
    py = sys.executable
    runs: list[dict[str, Any]] = []
    with open(args.out, "a") as out:
        for r in range(1, args.rounds + 1):
            for row in args.rows.split(","):
                plans: list[tuple[str, list[str], str, bool]] = [("limit", [limit, "{PORT}"], "0", False)]
                for n in args.workers.split(","):
                    cmd = [py, "-m", "fasthub", "serve", "--port", "{PORT}", "--log-level", "warning",
                           "--redis", "{REDIS}", "--workers", n]
                    if row == "ingress":
                        cmd += ["--rate-limit", "0"]
                    plans.append((f"workers{n}", cmd, "0,1", True))
                for name, cmd, cpus, redis in plans:
                    print(f"round {r}: {row} {name}", file=sys.stderr)
                    rec = measure(loadgen, row, cmd, cpus, redis)
                    rec.update(name=name, round=r)
                    out.write(json.dumps(rec) + "\n")
                    out.flush()
                    runs.append(rec)
    table(runs)


def table(runs: list[dict[str, Any]]) -> None:
    print("| row | server | rate (median) | x limit | lost | CPU s per process (median run) |")
    print("|---|---|---|---|---|---|")
    rows = sorted({r["row"] for r in runs}, key=list(ROWS).index)
    for row in rows:
        limit_runs = [r for r in runs if r["row"] == row and r["name"] == "limit" and "result" in r]
        limits = {r["round"]: rate(r["result"]) for r in limit_runs}
        for name in sorted({r["name"] for r in runs if r["row"] == row}, key=lambda n: (n != "limit", n)):
            mine = [r for r in runs if r["row"] == row and r["name"] == name and "result" in r]
            if not mine:
                continue
            rates = [rate(r["result"]) for r in mine]
            ratios = [rate(r["result"]) / limits[r["round"]] for r in mine if r["round"] in limits]
            lost = sum(int(r["result"].get("lost", 0)) for r in mine)
            med = sorted(mine, key=lambda r: rate(r["result"]))[len(mine) // 2]
            spent = ", ".join(f"{k} {v:.2f}" for k, v in med["cpu_s"].items())
            ratio = statistics.median(ratios)
            print(f"| {row} | {name} | {statistics.median(rates):,.0f}/s | {ratio:.2f} x | {lost} | "
                  f"{spent} (wall {med['wall_s']} s) |")


if __name__ == "__main__":
    main()
