#!/usr/bin/env bash
# WebAssembly runtime benchmarks, side by side in one run:
#
# 1. Throughput and latency: `wasmtime serve` (wasmtime-cli of the same wasmtime version as
#    Stratus, installed here with cargo into a bench-local root) and Stratus on the same hello
#    component (crates/stratus/tests/fixtures/wasm-hello/hello.wasm, path `/`), the same load
#    generator (wrk, one thread, CONNS connections, DURATION each, after a warm-up), one after the
#    other. Prints req/s, p50 and p99 of both and the ratio. The same for the componentize-js and
#    componentize-py examples when their app.wasm is built (JS_WASM, PY_WASM), with the
#    deploy-to-serving time of each component (compile included).
# 2. Cold start: a function with no instance (scaled to zero after idle_timeout = 1s), to first
#    byte of a request: p50 and p99 over COLD_ROUNDS requests, beside the warm request right
#    after each (same client, same connection setup), and the difference. Two cases: the
#    component still resident (recently used: the start only instantiates), and a restarted
#    server (nothing in memory: the compiled code is mapped from the on-disk cache first).
# 3. Density: deploys DENSITY functions (the same component, each its own function and artifact,
#    so the compile is shared by content) with DEPLOY_CONC deploys in flight, straight through
#    the API (`POST /api/v1/deploy` with a gzip tar, as `stratus deploy` sends; no CLI process per
#    deploy), lets them go idle, then reports the server's resident memory (VmRSS) and the
#    latency of first requests to random ones.
#
# Env knobs: STRATUS_BIN [$CARGO_TARGET_DIR or <repo>/target]/release/stratus (built if missing),
#   WASMTIME_ROOT [bench/out/wasmtime-cli] (where wasmtime-cli is installed), CONNS [16],
#   DURATION [10s], COLD_ROUNDS [30], DENSITY [10000], DEPLOY_CONC [8], SKIP_WASMTIME [0],
#   WASMTIME_ARGS [] (extra `wasmtime serve` options, e.g. its -O pooling-* tuning).
# Everything binds 127.0.0.1; every loop is bounded.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
WASMTIME_VERSION=48.0.8
COMPONENT="$REPO/crates/stratus/tests/fixtures/wasm-hello/hello.wasm"
CONNS=${CONNS:-16}
DURATION=${DURATION:-10s}
COLD_ROUNDS=${COLD_ROUNDS:-30}
DENSITY=${DENSITY:-10000}
DEPLOY_CONC=${DEPLOY_CONC:-8}
WASMTIME_ROOT=${WASMTIME_ROOT:-$HERE/out/wasmtime-cli}

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null
fi

if [ -z "${STRATUS_BIN:-}" ]; then
  STRATUS_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/stratus"
  if [ ! -x "$STRATUS_BIN" ]; then
    echo "building stratus (release)" >&2
    (cd "$REPO" && cargo build --release --locked -p stratus)
  fi
fi
WASMTIME="$WASMTIME_ROOT/bin/wasmtime"
if [ "${SKIP_WASMTIME:-0}" != 1 ] && ! "$WASMTIME" --version 2>/dev/null | grep -q "$WASMTIME_VERSION"; then
  echo "installing wasmtime-cli $WASMTIME_VERSION into $WASMTIME_ROOT (a release build: minutes)" >&2
  cargo install --locked wasmtime-cli --version "$WASMTIME_VERSION" --root "$WASMTIME_ROOT"
fi

TMP=$(mktemp -d /tmp/stratus-bench-wasm.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
  for _ in $(seq 1 300); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listening on $1" >&2; return 1
}
# wrk --latency: prints "req/s p50 p99" (latencies in ms).
load() {
  wrk -t1 -c"$CONNS" -d2s "$1" >/dev/null
  wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$1" | python3 -c '
import re, sys
t = sys.stdin.read()
def ms(s):
    v, u = re.match(r"([\d.]+)(us|ms|s)", s).groups()
    return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms(re.search(r"50%\s+(\S+)", t).group(1)); p99 = ms(re.search(r"99%\s+(\S+)", t).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
errs = re.search(r"Socket errors: (.*)", t)
bad = non2xx.group(1) if non2xx else 0
errors = errs.group(1).replace(" ", "_") if errs else "none"
print(f"{rps:.0f} {p50:.3f} {p99:.3f} {bad} {errors}")'
}

echo "machine: $(nproc) cores, $(uname -r); wrk -t1 -c$CONNS -d$DURATION; component $(basename "$COMPONENT") ($(stat -c %s "$COMPONENT") bytes)"
echo "stratus: $STRATUS_BIN"
DEPLOYS=()

GW_PORT=$(free_port)
API_PORT=$(free_port)
RUST_LOG=warn "$STRATUS_BIN" serve --data-dir "$TMP/data" --listen "127.0.0.1:$GW_PORT" \
  --api-listen "127.0.0.1:$API_PORT" >"$TMP/stratus.log" 2>&1 &
STRATUS_PID=$!
PIDS+=("$STRATUS_PID")
wait_port "$API_PORT"
export STRATUS_DATA_DIR="$TMP/data" STRATUS_API="http://127.0.0.1:$API_PORT"
mkdir -p "$TMP/hello"
cp "$COMPONENT" "$TMP/hello/hello.wasm"

# --- 1. throughput, and deploy-to-serving of each guest ---------------------------------------
# The hello component always; the componentize-js and componentize-py examples when built
# (`stratus deploy examples/wasm-js` or their build command leaves app.wasm there).
GUESTS=("hello=$COMPONENT")
for g in js=${JS_WASM:-$REPO/examples/wasm-js/app.wasm} python=${PY_WASM:-$REPO/examples/wasm-python/app.wasm}; do
  [ -f "${g#*=}" ] && GUESTS+=("$g")
done
ROWS=()
for g in "${GUESTS[@]}"; do
  label=${g%%=*} file=${g#*=}
  if [ "${SKIP_WASMTIME:-0}" != 1 ]; then
    WT_PORT=$(free_port)
    # -S cli: the guests import wasi:cli (env, exit) besides the proxy world, as Stratus provides.
    # shellcheck disable=SC2086 # WASMTIME_ARGS is a list of options
    "$WASMTIME" serve -S cli ${WASMTIME_ARGS:-} --addr "127.0.0.1:$WT_PORT" "$file" >"$TMP/wasmtime-$label.log" 2>&1 &
    PIDS+=($!)
    wait_port "$WT_PORT"
    ROWS+=("$label wasmtime-serve $(load "http://127.0.0.1:$WT_PORT/")")
    kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
  fi
  mkdir -p "$TMP/guest-$label"
  cp "$file" "$TMP/guest-$label/app.wasm"
  printf 'name = "bench-%s"\nruntime = "wasm"\ncomponent = "app.wasm"\n' "$label" >"$TMP/guest-$label/stratus.toml"
  t0=$(date +%s.%N)
  "$STRATUS_BIN" deploy "$TMP/guest-$label" >/dev/null
  first=$(curl -s -o /dev/null -w '%{time_starttransfer}' "http://127.0.0.1:$GW_PORT/fn/bench-$label/")
  t1=$(date +%s.%N)
  DEPLOYS+=("$label $(stat -c %s "$file") $(python3 -c "print(f'{$t1 - $t0:.2f}')") $(python3 -c "print(f'{$first * 1000:.1f}')")")
  ROWS+=("$label stratus $(load "http://127.0.0.1:$GW_PORT/fn/bench-$label/")")
done

echo "wasmtime: $("$WASMTIME" --version 2>/dev/null || echo skipped); command: wasmtime serve -S cli ${WASMTIME_ARGS:+$WASMTIME_ARGS }--addr 127.0.0.1:PORT COMPONENT"
echo
echo "throughput and latency (wrk -t1 -c$CONNS -d$DURATION after a 2 s warm-up, path /):"
printf '  %-8s %-15s %9s %9s %9s %8s %s\n' guest server "req/s" "p50 ms" "p99 ms" "non-2xx" "socket errors"
for r in "${ROWS[@]}"; do
  # shellcheck disable=SC2086
  printf '  %-8s %-15s %9s %9s %9s %8s %s\n' $r
done
printf '%s\n' "${ROWS[@]}" | python3 -c '
import sys
rows = {}
for line in sys.stdin:
    g, server, rps, p50, p99, *_ = line.split()
    rows.setdefault(g, {})[server] = (float(rps), float(p99))
for g, r in rows.items():
    if "wasmtime-serve" in r and "stratus" in r:
        (srps, sp99), (wrps, wp99) = r["stratus"], r["wasmtime-serve"]
        print(f"  {g}: stratus / wasmtime serve = {srps / wrps:.2f}x req/s, p99 {sp99 / wp99:.2f}x")'
echo
echo "deploy to serving (stratus deploy of a folder holding the built component: upload, compile, prove, first response):"
for d in "${DEPLOYS[@]}"; do
  # shellcheck disable=SC2086
  set -- $d
  echo "  $1: $(( $2 / 1024 )) KiB component, deploy + first request $3 s (first request alone $4 ms)"
done

# --- 2 and 3. cold start, density --------------------------------------------------------------
# A second server for the "nothing in memory" cold start: STRATUS_WASM_RESIDENT=0 keeps no idle
# component loaded, so each cold start maps the compiled code from the cache and links it first.
GW2_PORT=$(free_port)
API2_PORT=$(free_port)
STRATUS_WASM_RESIDENT=0 RUST_LOG=warn "$STRATUS_BIN" serve --data-dir "$TMP/data2" \
  --listen "127.0.0.1:$GW2_PORT" --api-listen "127.0.0.1:$API2_PORT" >"$TMP/stratus2.log" 2>&1 &
PIDS+=($!)
wait_port "$API2_PORT"
python3 - "$TMP" "$STRATUS_PID" "$COLD_ROUNDS" "$DENSITY" "$DEPLOY_CONC" \
  "$GW_PORT:$API_PORT:data" "$GW2_PORT:$API2_PORT:data2" <<'EOF'
import concurrent.futures, io, json, os, random, socket, subprocess, sys, tarfile, time, urllib.request

tmp, pid = sys.argv[1], int(sys.argv[2])
rounds, density, conc = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
servers = []
for arg in sys.argv[6:]:
    gw, api, data = arg.split(":")
    token = open(os.path.join(tmp, data, "admin.token")).read().strip()
    servers.append((int(gw), int(api), token))
wasm = open(os.path.join(tmp, "hello", "hello.wasm"), "rb").read()

def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def first_byte(srv, name):
    """ms from connect to the first byte of the response to GET /fn/NAME/."""
    t = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", srv[0]), 30)
    s.sendall(f"GET /fn/{name}/ HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
    first = s.recv(1)
    dt = (time.perf_counter() - t) * 1000
    rest = first + b"".join(iter(lambda: s.recv(65536), b""))
    s.close()
    assert rest.startswith(b"HTTP/1.1 200"), rest[:200]
    return dt

def api(srv, method, path, data=None):
    req = urllib.request.Request(f"http://127.0.0.1:{srv[1]}/api/v1{path}", data=data, method=method,
                                 headers={"Authorization": f"Bearer {srv[2]}",
                                          "Content-Type": "application/gzip"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)

def instances(srv, name):
    info = api(srv, "GET", f"/functions/{name}")
    return sum(len(p["instances"]) + p["starting"] for p in info.get("pools", []))

def wait_idle(srv, name, limit=30):
    end = time.time() + limit
    while time.time() < end:
        if instances(srv, name) == 0:
            return
        time.sleep(0.05)
    raise SystemExit(f"{name} never scaled to zero")

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

def archive(name, idle):
    """The deploy upload: a gzip tar of the folder, as `stratus deploy` packs it."""
    manifest = (f'name = "{name}"\nruntime = "wasm"\ncomponent = "hello.wasm"\n'
                f'[scaling]\nmin = 0\nidle_timeout = "{idle}"\n').encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as t:
        for fname, data in (("stratus.toml", manifest), ("hello.wasm", wasm)):
            info = tarfile.TarInfo(fname)
            info.size, info.mode = len(data), 0o644
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()

def deploy(srv, name, idle="1s"):
    try:
        return api(srv, "POST", "/deploy", archive(name, idle))
    except urllib.error.HTTPError as e:
        raise SystemExit(f"deploy {name} failed: {e.code} {e.read()[:300]}")

if rounds == 0 and density == 0:
    sys.exit(0)

# 2. cold start: scaled to zero between requests.
cases = [("component resident (recently used)", servers[0]),
         ("nothing in memory (STRATUS_WASM_RESIDENT=0: map + link + instantiate)", servers[1])]
if rounds:
    print(f"\ncold start (no instance -> first byte of GET /, client: new TCP connection, {rounds} rounds):")
for label, srv in cases if rounds else []:
    deploy(srv, "bench-cold")
    first_byte(srv, "bench-cold")
    cold, warm = [], []
    for _ in range(rounds):
        wait_idle(srv, "bench-cold")
        cold.append(first_byte(srv, "bench-cold"))
        warm.append(first_byte(srv, "bench-cold"))
    diff = [c - w for c, w in zip(cold, warm)]
    print(f"  {label}:\n    cold p50 {pct(cold, 50):.3f} ms, p99 {pct(cold, 99):.3f} ms;"
          f" the warm request right after p50 {pct(warm, 50):.3f} ms;"
          f" cold - warm p50 {pct(diff, 50):.3f} ms, p99 {pct(diff, 99):.3f} ms")
if density == 0:
    sys.exit(0)

# 3. density, on the first server.
srv = servers[0]
rss0 = rss_mib()
names = [f"d{i:05d}" for i in range(density)]
t = time.time()
with concurrent.futures.ThreadPoolExecutor(conc) as ex:
    for i, _ in enumerate(ex.map(lambda n: deploy(srv, n, "2s"), names), 1):
        if i % 1000 == 0:
            print(f"  deployed {i}/{density} in {time.time() - t:.0f}s, server RSS {rss_mib():.0f} MiB", flush=True)
took = time.time() - t
# Let every proven instance go idle and be stopped.
time.sleep(5)
for n in random.sample(names, min(20, density)):
    wait_idle(srv, n)
rss_idle = rss_mib()
picks = random.sample(names, min(100, density))
lat = [first_byte(srv, n) for n in picks]
print(f"\ndensity: {density} wasm functions deployed in {took:.0f}s ({density / took:.1f}/s, {conc} at a time)")
print(f"  server RSS: {rss0:.0f} MiB before, {rss_idle:.0f} MiB with all {density} idle"
      f" ({(rss_idle - rss0) * 1024 / density:.1f} KiB per function)")
print(f"  first request to a random idle one ({len(lat)} samples): p50 {pct(lat, 50):.3f} ms,"
      f" p99 {pct(lat, 99):.3f} ms; RSS after {rss_mib():.0f} MiB")
cwasm = len(os.listdir(os.path.join(tmp, "data", "wasm-cache"))) if os.path.isdir(os.path.join(tmp, "data", "wasm-cache")) else "?"
du = subprocess.run(["du", "-sm", os.path.join(tmp, "data")], capture_output=True, text=True).stdout.split()[0]
print(f"  data dir: {du} MiB; compiled files in the cache: {cwasm}")
EOF
