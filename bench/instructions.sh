#!/usr/bin/env bash
# Instructions per connect and per room message (callgrind), for one Python (default: .venv's):
#   bench/instructions.sh [PYTHON]
# Each figure is (run of N+3200 - run of N) / 3200, so interpreter start-up cancels out;
# PYTHONHASHSEED=0 keeps dict and set layouts, and so the counts, the same run to run.
set -euo pipefail
cd "$(dirname "$0")"
PY=${1:-../.venv/bin/python}
for what in connect ingress; do
  count() { PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null "$PY" instructions.py "$what" "$1" 2>&1 \
    | awk '/Collected/ {print $4}'; }
  short=$(count 160); long=$(count 3360)
  echo "$what: $(( (long - short) / 3200 )) instructions each"
done
