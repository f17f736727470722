#!/usr/bin/env bash
# Runs every benchmark in turn and tees each one's output into bench/out/ (gitignored).
# Pass STRATUS_BIN (default <repo>/target/release/stratus) and the knobs of each script.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
export STRATUS_BIN=${STRATUS_BIN:-$REPO/target/release/stratus}
OUT="$HERE/out"
mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
status=0
for b in proxy-overhead deploy-to-serving cold-start; do
  log="$OUT/$b-$STAMP.txt"
  echo "=== $b ($(date -u +%FT%TZ), $STRATUS_BIN) ===" | tee "$log"
  if ! "$HERE/$b.sh" 2>&1 | tee -a "$log"; then
    echo "!!! $b failed" | tee -a "$log"
    status=1
  fi
  cp "$log" "$OUT/$b-latest.txt"
  echo
done
echo "outputs in $OUT"
exit $status
