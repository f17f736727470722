#!/usr/bin/env bash
# Runs every benchmark in turn and tees each one's output into bench/out/ (gitignored).
# Pass STRATUS_BIN (default <repo>/target/release/stratus) and the knobs of each script.
# WAIT_QUIET=1: before each benchmark, wait (up to QUIET_MAX s, default 1800) until no cargo,
# rustc or cc1 has run for QUIET_SECS (default 20) seconds; the benchmarks share the cores.
# On a box shared with builds you cannot wait out, run it at high priority in its own session
# (with sched_autogroup, nice only counts within a session), and turn off the idle gates:
#   setsid bash -c 'echo -19 >/proc/self/autogroup; IDLE_MAX_BUSY=201 exec nice -n -19 bench/run-all.sh'
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
export STRATUS_BIN=${STRATUS_BIN:-$REPO/target/release/stratus}
OUT="$HERE/out"
mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
status=0
busy_now() { pgrep -x rustc >/dev/null || pgrep -x cc1 >/dev/null || pgrep -x cargo >/dev/null; }
# The benchmarks share the machine's cores with anything else running: note builds and test runs seen.
BUSY="$OUT/.busy-$STAMP"
: >"$BUSY"
( while :; do
    if busy_now; then date -u +%T >>"$BUSY"; fi
    sleep 1
  done ) &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true; rm -f "$BUSY"' EXIT
wait_quiet() {
  local quiet=0 waited=0
  while [ "$quiet" -lt "${QUIET_SECS:-20}" ]; do
    if busy_now; then quiet=0; else quiet=$((quiet + 1)); fi
    sleep 1
    waited=$((waited + 1))
    if [ "$waited" -ge "${QUIET_MAX:-1800}" ]; then
      echo "machine still busy after ${waited}s; running anyway" >&2
      return
    fi
  done
  [ "$waited" -gt "${QUIET_SECS:-20}" ] && echo "(waited ${waited}s for other builds to finish)" >&2 || true
}
echo "priority: nice $(nice), autogroup $(cat /proc/self/autogroup 2>/dev/null || echo n/a)"
for b in proxy-overhead deploy-to-serving cold-start; do
  [ "${WAIT_QUIET:-0}" = 1 ] && wait_quiet
  : >"$BUSY"
  log="$OUT/$b-$STAMP.txt"
  export RAW_DIR="$OUT/raw-$STAMP"
  echo "=== $b ($(date -u +%FT%TZ), $STRATUS_BIN) ===" | tee "$log"
  if ! "$HERE/$b.sh" 2>&1 | tee -a "$log"; then
    echo "!!! $b failed" | tee -a "$log"
    status=1
  fi
  if [ -s "$BUSY" ]; then
    echo "WARNING: cargo/rustc/cc1 (another build or test run) was running during this benchmark at $(sort -u "$BUSY" | wc -l) sampled seconds; numbers are contaminated" | tee -a "$log"
    : >"$BUSY"
  fi
  cp "$log" "$OUT/$b-latest.txt"
  echo
done
echo "outputs in $OUT"
exit $status
