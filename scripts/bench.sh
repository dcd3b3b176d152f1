#!/usr/bin/env bash
# Run the benchmark suite (benchmarks/, pytest-benchmark) and print benchmarks/results.md.
#
# Uses the project venv in .venv (or $VENV) when present, else creates it with the test
# extras. Starts nothing by hand: the fixtures generate the data and spawn a private
# redis-server on a free loopback port. Extra arguments go to pytest (e.g. -k online).
# Smaller data for a quick look: FS_BENCH_ENTITIES=20000 FS_BENCH_SPINE=100000 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/pip" install -q -e ".[test]"
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server is missing: install Redis 7 (e.g. 'apt-get install redis-server'); scripts/test.sh does it" >&2
  exit 1
fi

stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT
status=0
"$VENV/bin/python" -m pytest benchmarks -p no:cacheprovider --benchmark-enable \
  --benchmark-sort=name --benchmark-columns=min,median,mean,max,rounds -q "$@" || status=$?
echo
if [ benchmarks/results.md -nt "$stamp" ]; then
  cat benchmarks/results.md
else
  echo "no results written (see the pytest output above)" >&2
fi
exit "$status"
