#!/usr/bin/env bash
# Cross-node delivery: `fasthub serve --workers 2 --redis` against one process, same CPU budget.
# Subscribers are spread over both workers by the kernel (SO_REUSEPORT), the publisher is on one
# of them; every room message crosses Redis to the other worker. Rows: fanout_w8 (deliveries/s,
# 10,000 subscribers) and latency (1,000 subscribers, 1,000 messages/s offered, p50/p99).
# Both servers are pinned to SERVER_CPU (default 0), the load generator to CPU 1, Redis unpinned.
#   bench/cross_node.sh            3 rounds; results in $RESULTS
set -euo pipefail
cd "$(dirname "$0")/.."
S=${LOADGEN:-bench/loadgen}   # LOADGEN=../shared/loadgen: the referee's own copy
export RESULTS=${RESULTS:-/tmp/fasthub-loadgen/cross-node.jsonl}
ROUNDS=${ROUNDS:-3}
REDIS_PORT=${REDIS_PORT:-6398}
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --logfile /tmp/fasthub-redis-$REDIS_PORT.log --pidfile /tmp/fasthub-redis-$REDIS_PORT.pid
trap 'kill "$(cat /tmp/fasthub-redis-$REDIS_PORT.pid)" 2>/dev/null || true' EXIT
sleep 0.3
FASTHUB=".venv/bin/python -m fasthub"
for r in $(seq 1 "$ROUNDS"); do
  for row in fanout_w8 latency; do
    case $row in latency) wl=(custom:fanout -n 1000 -m 5000 --rate 1000) ;; *) wl=("$row") ;; esac
    echo "round $r: $row" >&2
    # shellcheck disable=SC2086
    NOTE="round $r $row" "$S/run.sh" "one-$row" "${wl[@]}" -- $FASTHUB serve --port '{PORT}' --log-level warning >/dev/null
    # shellcheck disable=SC2086
    NOTE="round $r $row" "$S/run.sh" "workers2-$row" "${wl[@]}" -- $FASTHUB serve --port '{PORT}' --log-level warning \
      --workers 2 --redis "redis://127.0.0.1:$REDIS_PORT/0" >/dev/null
  done
done
echo "results: $RESULTS" >&2
