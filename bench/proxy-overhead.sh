#!/usr/bin/env bash
# Proxy overhead: the same hello-world Node server (bench/fixtures/hello) hit
#   (a) directly, (b) through the Stratus gateway, (c) through nginx as a reverse proxy,
# with the same load generator and settings, one after another, in one run of this script.
#
# Exactly one node process serves in each case: a standalone `node server.js` for (a) and (c),
# and Stratus's single instance (limits.concurrency = 100, scaling.min = max = 1) for (b).
#
# Env knobs (defaults in brackets):
#   STRATUS_BIN    [<repo>/target/release/stratus]
#   DURATION [10s] THREADS [1] CONNS [32] RUNS [3] WARMUP [3s]
#   NGINX_WORKERS  [auto]  (worker_processes; "auto" = one per core)
#   OTHER_MAX [25]  a run during which processes other than node, the proxy and wrk used more
#                   than this much CPU (% of one core) is discarded and repeated, up to RETRIES [4]
#                   times; before every run the script waits (up to IDLE_MAX_WAIT [900] s) for the
#                   machine to be idle (< IDLE_MAX_BUSY [20] % of one core busy).
#   RAW_DIR        if set, every raw wrk output is copied there
#   TOKIO_WORKER_THREADS is passed through to `stratus serve` (default: one per core).
# Everything binds 127.0.0.1; every load run is bounded by wrk -d.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
STRATUS_BIN=${STRATUS_BIN:-$REPO/target/release/stratus}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-1}
CONNS=${CONNS:-32}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-3s}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
OTHER_MAX=${OTHER_MAX:-25}
RETRIES=${RETRIES:-4}
IDLE_MAX_BUSY=${IDLE_MAX_BUSY:-20}
IDLE_MAX_WAIT=${IDLE_MAX_WAIT:-900}

# ---- dependencies -------------------------------------------------------------------------
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v node >/dev/null || missing+=(nodejs)
command -v curl >/dev/null || missing+=(curl)
[ -x /usr/bin/time ] || missing+=(time)
command -v pgrep >/dev/null || missing+=(procps)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$STRATUS_BIN" ] || { echo "no stratus binary at $STRATUS_BIN (set STRATUS_BIN)" >&2; exit 1; }

# ---- helpers ------------------------------------------------------------------------------
TMP=$(mktemp -d /tmp/stratus-bench-proxy.XXXXXX)
chmod 755 "$TMP" # nginx workers may run as nobody
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # port [timeout_s]
  python3 - "$1" "${2:-20}" <<'EOF'
import socket, sys, time
port, deadline = int(sys.argv[1]), time.time() + float(sys.argv[2])
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close(); sys.exit(0)
    except OSError:
        time.sleep(0.01)
sys.exit("port %d did not open" % port)
EOF
}

# CPU ticks (utime+stime) of a list of pids.
cpu_ticks() {
  local t=0 p
  for p in "$@"; do
    if [ -r "/proc/$p/stat" ]; then
      t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    fi
  done
  echo "$t"
}

# Busy (user+nice+system+steal) and total ticks of the whole machine (all cores). irq and
# softirq time is left out: it is mostly the loopback traffic of the benchmark itself, which the
# kernel does not charge to the processes.
sys_ticks() {
  awk '/^cpu /{print $2+$3+$4+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat
}

# Waits until the machine is idle: other work on these cores would skew the numbers.
wait_idle() {
  python3 - "$IDLE_MAX_BUSY" "$IDLE_MAX_WAIT" <<'EOF'
import os, sys, time
limit, max_wait = float(sys.argv[1]), float(sys.argv[2])
def snap():
    v = list(map(int, open("/proc/stat").readline().split()[1:9]))
    return sum(v), v[3] + v[4]
start = time.time()
while True:
    t0, i0 = snap(); time.sleep(0.5); t1, i1 = snap()
    busy = (1 - (i1 - i0) / max(1, t1 - t0)) * os.cpu_count() * 100
    if busy < limit:
        break
    if time.time() - start > max_wait:
        print(f"machine still busy ({busy:.0f}% of a core) after {max_wait:.0f}s; running anyway", file=sys.stderr)
        break
    time.sleep(1)
waited = time.time() - start
if waited > 2:
    print(f"(waited {waited:.0f}s for the machine to be idle)", file=sys.stderr)
EOF
}

# Context switches (voluntary + involuntary, all threads) of a list of pids.
ctx_switches() {
  local t=0 p n
  for p in "$@"; do
    for f in /proc/"$p"/task/*/status; do
      [ -r "$f" ] || continue
      n=$(awk '/ctxt_switches/{s+=$2} END{print s+0}' "$f")
      t=$((t + n))
    done
  done
  echo "$t"
}

# ---- the three targets --------------------------------------------------------------------
# (a) standalone node
NODE_PORT=$(free_port)
(cd "$HERE/fixtures/hello" && PORT=$NODE_PORT exec node server.js) &
NODE_PID=$!
PIDS+=("$NODE_PID")
wait_port "$NODE_PORT"

# (b) Stratus, with the fixture deployed as one instance
GW_PORT=$(free_port)
API_PORT=$(free_port)
"$STRATUS_BIN" serve --data-dir "$TMP/data" --listen "127.0.0.1:$GW_PORT" \
  --api-listen "127.0.0.1:$API_PORT" >"$TMP/stratus.log" 2>&1 &
STRATUS_PID=$!
PIDS+=("$STRATUS_PID")
wait_port "$API_PORT"
mkdir -p "$TMP/app"
cp "$HERE/fixtures/hello/server.js" "$TMP/app/"
cat >"$TMP/app/stratus.toml" <<'EOF'
name = "bench-hello"
runtime = "process"
command = ["node", "server.js"]

[limits]
timeout = "30s"
concurrency = 100

[scaling]
min = 1
max = 1
idle_timeout = "10m"
EOF
export STRATUS_DATA_DIR="$TMP/data" STRATUS_API="http://127.0.0.1:$API_PORT"
"$STRATUS_BIN" deploy "$TMP/app"
STRATUS_URL="http://127.0.0.1:$GW_PORT/fn/bench-hello/"
body=$(curl -fsS "$STRATUS_URL")
[ "$body" = "hello world" ] || { echo "unexpected body from Stratus: $body" >&2; exit 1; }
INSTANCE_PID=$(pgrep -P "$STRATUS_PID" -x node | head -1 || true)
[ -n "$INSTANCE_PID" ] || INSTANCE_PID=$(pgrep -f -n "node server.js" || true)

# (c) nginx in front of the standalone node
NGINX_PORT=$(free_port)
mkdir -p "$TMP/nginx/logs"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/client_body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  upstream hello {
    server 127.0.0.1:$NODE_PORT;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://hello;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
"$NGINX" -e "$TMP/nginx/logs/error.log" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_port "$NGINX_PORT"
sleep 0.2
NGINX_PIDS=("$NGINX_PID" $(pgrep -P "$NGINX_PID" || true))
body=$(curl -fsS "http://127.0.0.1:$NGINX_PORT/")
[ "$body" = "hello world" ] || { echo "unexpected body from nginx: $body" >&2; exit 1; }

declare -A URL=(
  [direct]="http://127.0.0.1:$NODE_PORT/"
  [stratus]="$STRATUS_URL"
  [nginx]="http://127.0.0.1:$NGINX_PORT/"
)
# Which processes to account CPU to, per target: "<node pids>|<proxy pids>".
declare -A CPU_NODE=([direct]="$NODE_PID" [stratus]="$INSTANCE_PID" [nginx]="$NODE_PID")
declare -A CPU_PROXY=([direct]="" [stratus]="$STRATUS_PID" [nginx]="${NGINX_PIDS[*]}")
TARGETS=(direct stratus nginx)
CLK=$(getconf CLK_TCK)

echo
echo "machine: $(nproc) cores, $(uname -sr), $(node --version), $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2), $("$NGINX" -v 2>&1 | cut -d' ' -f3)"
echo "load: wrk -t$THREADS -c$CONNS -d$DURATION --latency; $RUNS runs per target, interleaved; nginx worker_processes $NGINX_WORKERS"
echo "warm-up: wrk -d$WARMUP per target, not counted"
for t in "${TARGETS[@]}"; do
  wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "${URL[$t]}" >/dev/null
done

RESULTS="$TMP/results.tsv"
: >"$RESULTS"
for run in $(seq 1 "$RUNS"); do
  for t in "${TARGETS[@]}"; do
    for attempt in $(seq 0 "$RETRIES"); do
      wait_idle
      out="$TMP/wrk-$t-$run.txt"
      # shellcheck disable=SC2086
      n0=$(cpu_ticks ${CPU_NODE[$t]}); p0=$(cpu_ticks ${CPU_PROXY[$t]}); c0=$(ctx_switches ${CPU_PROXY[$t]}); read -r b0 a0 < <(sys_ticks); s0=$(date +%s.%N)
      /usr/bin/env time -f "wrk_cpu %U %S" -o "$out.time" \
        wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "${URL[$t]}" >"$out" 2>&1 || true
      # shellcheck disable=SC2086
      n1=$(cpu_ticks ${CPU_NODE[$t]}); p1=$(cpu_ticks ${CPU_PROXY[$t]}); read -r b1 a1 < <(sys_ticks); s1=$(date +%s.%N); c1=$(ctx_switches ${CPU_PROXY[$t]})
      row=$(python3 - "$t" "$run" "$out" "$n0" "$n1" "$p0" "$p1" "$s0" "$s1" "$CLK" "$b0" "$b1" "$c0" "$c1" <<'EOF'
import re, sys
t, run, path, n0, n1, p0, p1, s0, s1, clk, b0, b1, c0, c1 = sys.argv[1:]
text = open(path).read()
def ms(v, unit):
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]
lat = {m.group(1): ms(m.group(2), m.group(3))
       for m in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)}
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
wall = float(s1) - float(s0)
clk = float(clk)
node = (int(n1) - int(n0)) / clk / wall * 100
proxy = (int(p1) - int(p0)) / clk / wall * 100
try:
    u, s = open(path + ".time").read().split("wrk_cpu")[1].split()
    wrk = (float(u) + float(s)) / wall * 100
except Exception:
    wrk = 0.0
busy = (int(b1) - int(b0)) / clk / wall * 100
other = max(0.0, busy - node - proxy - wrk)
total = int(re.search(r"(\d+) requests in", text).group(1))
ctx = (int(c1) - int(c0)) / max(1, total)
print("\t".join(map(str, [t, run, rps, lat["50"], lat["99"], errors, node, proxy, wrk, other, ctx, lat["90"]])))
EOF
)
      other=$(echo "$row" | cut -f10)
      if [ -n "${RAW_DIR:-}" ]; then
        mkdir -p "$RAW_DIR" && cp "$out" "$RAW_DIR/wrk-$t-run$run-attempt$attempt.txt"
      fi
      line=$(echo "$row" | awk -F'\t' '{printf "run %s %-8s %10.0f req/s  p50 %6.3f ms  p90 %6.3f ms  p99 %6.3f ms  errors %s  cpu%% node %.0f proxy %.0f wrk %.0f other %.0f  proxy ctx-switches/req %.2f", $2, $1, $3, $4, $12, $5, $6, $7, $8, $9, $10, $11}')
      if python3 -c "import sys; sys.exit(0 if float('$other') <= $OTHER_MAX else 1)" || [ "$attempt" -ge "$RETRIES" ]; then
        echo "$row" >>"$RESULTS"
        echo "$line"
        break
      fi
      echo "$line  -> discarded (other processes used ${other%.*}% CPU), repeating"
    done
  done
done

echo
python3 - "$RESULTS" <<'EOF'
import statistics as st, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r[0], []).append([float(x) for x in r[2:]])
med = {t: [st.median(col) for col in zip(*v)] for t, v in by.items()}
n = len(next(iter(by.values())))
print(f"median of {n} runs per metric")
# CPU time per request (median over runs): the most contention-proof number here.
us = {t: (st.median(r[4] / 100 / r[0] * 1e6 for r in by[t]), st.median(r[5] / 100 / r[0] * 1e6 for r in by[t]))
      for t in by}
print(f"{'target':<8} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>7}   {'cpu% node/proxy/wrk/other':<26} {'CPU us/req node/proxy'}")
for t in ["direct", "stratus", "nginx"]:
    rps, p50, p99, err, node, proxy, wrk, other, ctx, p90 = med[t]
    errs = int(sum(r[3] for r in by[t]))
    cpu = f"{node:.0f}/{proxy:.0f}/{wrk:.0f}/{other:.0f}"
    print(f"{t:<8} {rps:>9.0f} {p50:>8.3f} {p90:>8.3f} {p99:>8.3f} {errs:>7}   {cpu:<26} {us[t][0]:.1f}/{us[t][1]:.1f}")
ratio = med["stratus"][0] / med["nginx"][0]
delta = med["stratus"][2] - med["direct"][2]
print()
print(f"Stratus/nginx throughput: {ratio:.3f}  (target >= 0.9: {'MET' if ratio >= 0.9 else 'MISSED'})")
print(f"Stratus p99 - direct p99: {delta:.3f} ms  (target <= 1 ms: {'MET' if delta <= 1.0 else 'MISSED'})")
print(f"(p99 is fragile on 2 shared cores; p90 for comparison: Stratus - direct {med['stratus'][9] - med['direct'][9]:.3f} ms, "
      f"nginx - direct {med['nginx'][9] - med['direct'][9]:.3f} ms)")
print(f"proxy CPU per request: Stratus {us['stratus'][1]:.1f} us, nginx {us['nginx'][1]:.1f} us "
      f"({us['stratus'][1] / us['nginx'][1]:.2f}x); proxy context switches per request: "
      f"Stratus {med['stratus'][8]:.2f}, nginx {med['nginx'][8]:.2f}")
print(f"(for reference) Stratus/direct throughput: {med['stratus'][0] / med['direct'][0]:.3f}, "
      f"nginx/direct: {med['nginx'][0] / med['direct'][0]:.3f}, "
      f"nginx p99 - direct p99: {med['nginx'][2] - med['direct'][2]:.3f} ms")
EOF
