#!/usr/bin/env bash
# A benchmark series: the speed issue's rows, ROUNDS rounds, limit_server and fasthub alternating
# within each round (and an optional second fasthub command, e.g. an older commit, in the same
# rounds), results appended to $RESULTS. Run nothing else heavy meanwhile.
#   bench/series.sh                                     3 rounds, limit + fasthub of this checkout
#   BASE_CMD="/tmp/oldvenv/bin/python -m fasthub" bench/series.sh   + that build as "base"
#   ROUNDS=1 ROWS="fanout_w1 ingress" bench/series.sh   fewer
#   FASTHUB_LOADGEN_ARGS=--deflate BASE_CMD=".venv/bin/python -m fasthub" BASE_ARGS=--no-compression \
#     bench/series.sh                                   compression negotiated vs off, same rounds
#   PEERS="bun socketify" bench/series.sh               + those peers of bench/peers/ in the same rounds
#                                                       (bun: npm install --prefix bench/peers)
# Then: python3 bench/series_ratios.py $RESULTS
set -euo pipefail
cd "$(dirname "$0")/.."
S=${LOADGEN:-bench/loadgen}   # LOADGEN=../shared/loadgen: the referee's own copy
export RESULTS=${RESULTS:-/tmp/fasthub-loadgen/series.jsonl}
ROUNDS=${ROUNDS:-3}
ROWS=${ROWS:-"fanout_w1 fanout_w8 fanout1k_w8 ingress idle latency scale"}
FASTHUB="${FASTHUB_CMD:-.venv/bin/python -m fasthub}"
LIMIT=${LOADGEN_BUILD:-${TMPDIR:-/tmp}/fasthub-loadgen}/limit_server   # where run.sh builds it

one() {  # one NAME ROW SERVER-COMMAND...
  local name=$1 row=$2; shift 2
  local -a wl extra=()
  case $row in
    latency) wl=(custom:fanout -n 10 -m 5000 --rate 1000) ;;
    p99_1k) wl=(custom:fanout -n 1000 -m 3000 --rate 100) ;;  # 100,000 deliveries/s offered
    scale) wl=(custom:idle -n 19000 -t 5) ;;
    *) wl=("$row") ;;
  esac
  if [ "$name" != limit ] && [ "$row" = ingress ]; then extra=(--rate-limit 0); fi
  # extra `serve` options and load-generator options per server (e.g. --no-compression, --deflate)
  local -a sargs=() largs=()
  if [ "$name" = fasthub ]; then
    read -ra sargs <<< "${FASTHUB_ARGS:-}"; read -ra largs <<< "${FASTHUB_LOADGEN_ARGS:-}"
  elif [ "$name" = base ]; then
    read -ra sargs <<< "${BASE_ARGS:-}"; read -ra largs <<< "${BASE_LOADGEN_ARGS:-}"
  fi
  if [ "$name" = limit ] || [ -n "${RAW:-}" ]; then  # a command as it is (limit_server, a peer)
    NOTE="round $r $row" "$S/run.sh" "$name-$row" "${wl[@]}" -- "$@" >/dev/null
  else
    NOTE="round $r $row" "$S/run.sh" "$name-$row" "${wl[@]}" "${largs[@]}" -- "$@" serve --port '{PORT}' --log-level warning "${extra[@]}" "${sargs[@]}" >/dev/null
  fi
}

peer_cmd() {  # the command of a peer of bench/peers/ (its port as {PORT})
  case $1 in
    bun) echo "bench/peers/node_modules/.bin/bun bench/peers/bun_hub.js --port {PORT}" ;;
    *) echo ".venv/bin/python bench/peers/$1_hub.py --port {PORT}" ;;
  esac
}

[ -x "$LIMIT" ] || "$S/run.sh" limit idle -n 10 -t 1 -- "$LIMIT" '{PORT}' >/dev/null 2>&1 || true  # builds it
for r in $(seq 1 "$ROUNDS"); do
  for row in $ROWS; do
    echo "round $r: $row" >&2
    if [ "$row" != scale ]; then one limit "$row" "$LIMIT" '{PORT}'; fi
    # shellcheck disable=SC2086
    one fasthub "$row" $FASTHUB
    if [ -n "${BASE_CMD:-}" ] && [ "$row" != scale ]; then
      # shellcheck disable=SC2086
      one base "$row" $BASE_CMD
    fi
    if [ "$row" != scale ]; then
      for peer in ${PEERS:-}; do
        read -ra pcmd <<< "$(peer_cmd "$peer")"
        RAW=1 one "$peer" "$row" "${pcmd[@]}"
      done
    fi
  done
done
echo "results: $RESULTS" >&2
