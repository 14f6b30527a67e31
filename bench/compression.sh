#!/usr/bin/env bash
# Issue 14's compression figures, ROUNDS rounds, every server in each round, results appended to
# $RESULTS (then: python3 bench/series_ratios.py $RESULTS, or bench/loadgen/summarize.py):
#   fanout  fanout -n 10000 -m 200 -w 1 --payload 400: 10,000 subscribers, messages of about
#           500 bytes (compressed above the 256-byte threshold), with and without --deflate
#           (every connection offers permessage-deflate), fasthub and websockets (its default
#           per-connection compression, bench/peers/websockets_hub.py --compression);
#           wire_bytes_per_delivery in each result is the bytes on the wire per delivery
#   idle    idle -n 10000 -t 5 with --deflate: memory per connection with compression negotiated
# Run nothing else heavy meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
S=bench/loadgen
export RESULTS=${RESULTS:-/tmp/fasthub-loadgen/compression.jsonl}
ROUNDS=${ROUNDS:-3}
ROWS=${ROWS:-"fanout idle"}
PY=${PYTHON:-.venv/bin/python}
LIMIT=${LOADGEN_BUILD:-${TMPDIR:-/tmp}/fasthub-loadgen}/limit_server
FANOUT=(custom:fanout -n 10000 -m 200 -w 1 --payload 400)
IDLE=(custom:idle -n 10000 -t 5)

run() {  # NAME LOADGEN-ARGS... -- SERVER...
  local name=$1; shift
  NOTE="round $r" "$S/run.sh" "$name" "$@" >/dev/null || echo "compression.sh: $name failed" >&2
}

[ -x "$LIMIT" ] || "$S/run.sh" limit idle -n 10 -t 1 -- "$LIMIT" '{PORT}' >/dev/null 2>&1 || true  # builds it
for r in $(seq 1 "$ROUNDS"); do
  for row in $ROWS; do
    echo "round $r: $row" >&2
    if [ "$row" = fanout ]; then
      run limit-fanout500 "${FANOUT[@]}" -- "$LIMIT" '{PORT}'
      run fasthub-fanout500-plain "${FANOUT[@]}" -- $PY -m fasthub serve --port '{PORT}' --log-level warning
      run fasthub-fanout500-deflate "${FANOUT[@]}" --deflate -- $PY -m fasthub serve --port '{PORT}' --log-level warning
      run websockets-fanout500-plain "${FANOUT[@]}" -- $PY bench/peers/websockets_hub.py --port '{PORT}'
      run websockets-fanout500-deflate "${FANOUT[@]}" --deflate -- $PY bench/peers/websockets_hub.py --port '{PORT}' --compression
    else
      run fasthub-idle-deflate "${IDLE[@]}" --deflate -- $PY -m fasthub serve --port '{PORT}' --log-level warning
      run websockets-idle-deflate "${IDLE[@]}" --deflate -- $PY bench/peers/websockets_hub.py --port '{PORT}' --compression
    fi
  done
done
echo "results: $RESULTS" >&2
