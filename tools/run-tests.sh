#!/usr/bin/env bash
# `make test`: every tier, as two pytest runs side by side.
#
#   tests/e2e, tests/integration   the tests on the session's shared local cluster; output streamed
#   tests/unit, tests/trainer and   no shared cluster; output kept in a log, printed when both are
#   the own-cluster tests           done. The own-cluster tests (`make demo`, the scale bench's smoke
#                                   run) start a cluster of their own, so they run on this side.
#
# The cluster tiers spend much of their time waiting on the real control plane (node grace periods,
# Job backoff, a slow trainer's steps); the CPU tiers fill that time (README, Timings). Each run has
# its own --basetemp, so neither prunes the other's temporary directories. The exit code is
# non-zero when either run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/fto-tests.XXXXXX")"
pytest=("$python" -m pytest -p no:cacheprovider --durations=25)

own_cluster=(tests/e2e/test_demo.py tests/integration/test_scale_smoke.py)
ignore=("${own_cluster[@]/#/--ignore=}")

"${pytest[@]}" --basetemp="$tmp/cpu" tests/unit tests/trainer "${own_cluster[@]}" "$@" > "$tmp/cpu.log" 2>&1 &
cpu=$!
trap 'kill "$cpu" 2>/dev/null; wait "$cpu" 2>/dev/null' INT TERM

"${pytest[@]}" --basetemp="$tmp/cluster" tests/e2e tests/integration "${ignore[@]}" "$@"
cluster_rc=$?
wait "$cpu"
cpu_rc=$?
trap - INT TERM

echo
echo "========== tests/unit, tests/trainer, ${own_cluster[*]} (ran alongside the run above; exit $cpu_rc) =========="
cat "$tmp/cpu.log"
echo
echo "make test: cluster tiers exit $cluster_rc, CPU tiers exit $cpu_rc"
if [ "$cluster_rc" -eq 0 ] && [ "$cpu_rc" -eq 0 ]; then
  rm -rf "$tmp"
  exit 0
fi
echo "(temporary files kept in $tmp)"
exit 1
