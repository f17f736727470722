#!/usr/bin/env python3
"""Burst from zero and scale-down to zero (issue 6), against a real `stratus serve`.

A node function with a 50 ms handler and per-instance concurrency 10:

1. Burst: idle at zero instances, then CLIENTS (200) concurrent wrk connections for DURATION
   (30s). Side by side with the ideal, the same function pre-scaled to a fixed pool
   (min = max = CLIENTS / 10). Reports the time until ready capacity (ready instances x 10)
   matched demand, errors (non-2xx + socket errors), p50/p99 and their ratios to the ideal.
   Targets: zero errors, p99 within 2x of the ideal, capacity in < 2 s. The floor for the
   capacity time is printed beside it: as many bare node processes started at once, no Stratus.
2. Scale-down: right after the burst, a trickle of TRICKLE (5) connections for IDLE (10s)
   + 5 s while the pool shrinks (errors counted), then nothing: the time from the last request
   to zero instances, against the function's idle_timeout (IDLE).

Latencies are per request: wrk's script (bench/fixtures/request-times.lua) writes each request's
send and receive time, and the bench prints them against the server's record of the same request.
wrk's own percentiles are printed beside them but are not the headline: before printing, wrk adds
made-up samples for every request slower than twice the mean interval (`stats_correct`, its
coordinated-omission correction for clients that send on a schedule), so the 200 requests that
wait for the first instances became thousands of samples and its p99 was 8-13x the ideal's while
no client saw more than 1 % of its requests that slow.

Env: STRATUS_BIN, CLIENTS (200), DURATION (30s), IDLE (10s), TRICKLE (5).
"""
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stratus_bench import (Stratus, client_latencies, client_times, ensure_wrk, free_port,  # noqa: E402
                           load_average, pct, wrk, REQUEST_TIMES_LUA)

CLIENTS = int(os.environ.get("CLIENTS", "200"))
DURATION = os.environ.get("DURATION", "30s")
IDLE = int(os.environ.get("IDLE", "10s").rstrip("s"))
TRICKLE = int(os.environ.get("TRICKLE", "5"))
PER_INSTANCE = 10

SERVER = """
const http = require("http");
http.createServer((req, res) => {
  setTimeout(() => { res.writeHead(200, {"content-type": "text/plain"}); res.end("ok\\n"); }, 50);
}).listen(Number(process.env.PORT), "127.0.0.1");
process.on("SIGTERM", () => process.exit(0));
"""


def manifest(name, min_, max_):
    return (f'name = "{name}"\nruntime = "process"\ncommand = ["node", "server.js"]\n'
            f'[limits]\nconcurrency = {PER_INSTANCE}\ntimeout = "30s"\n'
            f'[scaling]\nmin = {min_}\nmax = {max_}\nidle_timeout = "{IDLE}s"\nscale_down_delay = "{IDLE}s"\n'
            f'max_queue = 1000\n')


# Where Stratus puts instances' cgroups on a cgroup v1 or v2 host (see cgroup.rs).
CGROUP_PARENTS = ["/sys/fs/cgroup/cpu/stratus", "/sys/fs/cgroup/stratus"]


def bare_starts(n, tmp):
    """The floor for capacity: n bare `node server.js` started at once on this node, no Stratus;
    seconds until all of them accept connections. They run in a cgroup beside the instances'
    (when the host has one), so that the CPU they compete for is the same: a benchmark started at
    autogroup priority would otherwise give them a priority the instances do not have."""
    with open(os.path.join(tmp, "bare.js"), "w") as f:
        f.write(SERVER)
    ports = [free_port() for _ in range(n)]
    cg = next((p for p in CGROUP_PARENTS if os.path.isdir(p)), None)
    procs_file = None
    if cg:
        d = os.path.join(cg, f"bench-floor-{os.getpid()}")
        os.makedirs(d, exist_ok=True)
        procs_file = os.path.join(d, "cgroup.procs")

    def join():
        if procs_file:
            with open(procs_file, "w") as f:
                f.write("0")
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["node", "bare.js"], cwd=tmp, env=dict(os.environ, PORT=str(p)), preexec_fn=join)
             for p in ports]
    left = set(ports)
    try:
        while left and time.perf_counter() - t0 < 60:
            for p in list(left):
                try:
                    socket.create_connection(("127.0.0.1", p), 0.1).close()
                    left.discard(p)
                except OSError:
                    pass
            time.sleep(0.001)
        return time.perf_counter() - t0
    finally:
        for p in procs:
            p.kill()
            p.wait()
        if procs_file:
            try:
                os.rmdir(os.path.dirname(procs_file))
            except OSError:
                pass


def records(s, name, since_ms, until_ms, step_ms=250):
    """The function's request records (the server's own, from its log store, through the API)
    that started in [since_ms, until_ms), fetched in windows the API's 10,000 limit covers."""
    import datetime
    import urllib.parse

    def rfc(ms):
        return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    time.sleep(1.5)  # the log writer flushes every 200 ms
    out = {}
    t = since_ms
    while t < until_ms:
        q = urllib.parse.urlencode({"function": name, "since": rfc(t), "until": rfc(min(t + step_ms, until_ms)), "limit": 10000})
        for r in s.get(f"/api/v1/requests?{q}"):
            out[r["request_id"]] = r
        t += step_ms
    return sorted(out.values(), key=lambda r: (r["start_ms"], r["request_id"]))


def timeline(recs, step_ms=500, rows=12):
    """Where the slow requests are: request records in STEP ms bins of their start, with each
    bin's count, p99 of the request's time in the server, p99 of the wait for a slot, and cold
    starts. Printed after the burst."""
    if not recs:
        print("  (no request records)")
        return
    t0 = recs[0]["start_ms"]
    bins = {}
    for r in recs:
        bins.setdefault((r["start_ms"] - t0) // step_ms, []).append((r["duration_us"], r["queue_us"], r.get("init_us") is not None))

    def p99(v):
        v = sorted(v)
        return v[min(len(v) - 1, int(len(v) * 0.99))] / 1000
    slow = sorted(d for d, _, _ in (x for b in bins.values() for x in b))[int(len(recs) * 0.99)]
    print(f"  request records: {len(recs)}; overall p99 {slow / 1000:.1f} ms; "
          f"{sum(1 for r in recs if r['duration_us'] >= slow)} at or over it, by start:")
    print(f"  {'from s':>6} {'requests':>8} {'p99 ms':>8} {'p99 wait ms':>11} {'cold':>5} {'>= p99':>6}")
    keys = sorted(bins)
    shown = keys[:rows] + ([k for k in keys[rows:] if any(d >= slow for d, _, _ in bins[k])][:6])
    for k in shown:
        b = bins[k]
        print(f"  {k * step_ms / 1000:>6.1f} {len(b):>8} {p99([d for d, _, _ in b]):>8.1f} "
              f"{p99([q for _, q, _ in b]):>11.1f} {sum(c for _, _, c in b):>5} {sum(1 for d, _, _ in b if d >= slow):>6}")


def client_vs_server(times_prefix, recs, step_ms=500, rows=8):
    """Each request as wrk saw it (sent, answered; from bench/fixtures/request-times.lua) next to
    the server's record of it, matched by request id: how much of the client's latency the
    server did not see, before its record starts and after it ends, by when it was sent."""
    byid = {r["request_id"]: r for r in recs}
    client = sorted(client_times(times_prefix), key=lambda c: c[1])
    if not client:
        print("  (no client times)")
        return
    t0 = client[0][1]
    bins = {}
    unmatched = 0
    for rid, sent, got in client:
        r = byid.get(rid)
        if r is None:
            unmatched += 1
            continue
        lat = (got - sent) / 1000
        before = r["start_ms"] - sent / 1000  # ms, the record's start has ms resolution
        inside = r["duration_us"] / 1000
        bins.setdefault((sent - t0) // (step_ms * 1000), []).append((lat, before, inside, lat - before - inside))
    lats = sorted(l for b in bins.values() for l, *_ in b)
    print(f"  client times: {len(client)} answered requests written by wrk, {unmatched} without a server record; "
          f"client p99 of these {lats[int(len(lats) * 0.99)]:.1f} ms")
    print(f"  {'sent s':>6} {'requests':>8} {'client p99':>10} {'server p99':>10} {'before p99':>10} {'after p99':>9} {'> 100 ms':>8}")

    def p99(v):
        v = sorted(v)
        return v[min(len(v) - 1, int(len(v) * 0.99))]
    for k in sorted(bins)[:rows]:
        b = bins[k]
        print(f"  {k * step_ms / 1000:>6.1f} {len(b):>8} {p99([x[0] for x in b]):>10.1f} {p99([x[2] for x in b]):>10.1f} "
              f"{p99([x[1] for x in b]):>10.1f} {p99([x[3] for x in b]):>9.1f} {sum(1 for x in b if x[0] > 100):>8}")


class Probe(threading.Thread):
    """A request every 20 ms to the warm fixed pool while the burst starts: whether the gateway
    itself stalls (the probe's function has all the capacity it needs). Latency from the
    client, against the server's own measure of the same requests."""

    def __init__(self, s, path, seconds=5.0):
        super().__init__(daemon=True)
        self.s, self.path, self.seconds = s, path, seconds
        self.samples = []

    def run(self):
        import http.client
        t0 = time.perf_counter()
        c = http.client.HTTPConnection("127.0.0.1", self.s.gw, timeout=10)
        while time.perf_counter() - t0 < self.seconds:
            a = time.perf_counter()
            c.request("GET", self.path)
            r = c.getresponse()
            r.read()
            self.samples.append((a - t0, (time.perf_counter() - a) * 1000))
            time.sleep(0.02)
        c.close()

    def report(self):
        lat = sorted(ms for _, ms in self.samples)
        worst = sorted(self.samples, key=lambda x: -x[1])[:5]
        print(f"  probe to the warm fixed pool during the burst's first {self.seconds:.0f} s: {len(lat)} requests, "
              f"p50 {lat[len(lat) // 2]:.1f} ms, max {lat[-1]:.1f} ms; worst at "
              + ", ".join(f"{t:.2f} s: {ms:.0f} ms" for t, ms in worst))


class Capacity(threading.Thread):
    """Polls ready instances every 50 ms; notes when ready x concurrency first covered demand."""

    def __init__(self, s, name, demand):
        super().__init__(daemon=True)
        self.s, self.name, self.demand = s, name, demand
        self.start_at = None
        self.matched = None
        self.peak = 0
        self.stop_flag = False

    def run(self):
        while not self.stop_flag:
            n = self.s.instances(self.name)
            self.peak = max(self.peak, n)
            if self.start_at and self.matched is None and n * PER_INSTANCE >= self.demand:
                self.matched = time.perf_counter() - self.start_at
            time.sleep(0.05)


def main():
    ensure_wrk()
    need = (CLIENTS + PER_INSTANCE - 1) // PER_INSTANCE
    s = Stratus("burst")
    try:
        s.deploy("ideal", manifest("ideal", need, need), {"server.js": SERVER})
        s.deploy("burst", manifest("burst", 0, need * 2), {"server.js": SERVER})
        # The deploy's proving instance idles out: wait for a true zero.
        deadline = time.time() + IDLE + 30
        while s.instances("burst") > 0 and time.time() < deadline:
            time.sleep(0.2)
        assert s.instances("burst") == 0, "the burst function never went to zero"
        while s.instances("ideal") < need and time.time() < deadline:
            time.sleep(0.2)
        print(f"load average before: {' '.join(load_average())}")
        script = REQUEST_TIMES_LUA
        os.environ["REQUEST_TIMES"] = ideal_times = os.path.join(s.tmp, "ideal-times")
        ideal = wrk(s.url("/fn/ideal/"), CLIENTS, DURATION, script=script)
        # Right before the burst, so that both see the same machine.
        floor = bare_starts(need, s.tmp)
        floor_cg = any(os.path.isdir(p) for p in CGROUP_PARENTS)
        time.sleep(1)
        cap = Capacity(s, "burst", CLIENTS)
        cap.start()
        cap.start_at = time.perf_counter()
        burst_from = int(time.time() * 1000)
        probe = Probe(s, "/fn/ideal/")
        probe.start()
        os.environ["REQUEST_TIMES"] = times = os.path.join(s.tmp, "burst-times")
        burst = wrk(s.url("/fn/burst/"), CLIENTS, DURATION, script=script)
        burst_until = int(time.time() * 1000)
        cap.stop_flag = True
        cap.join()
        ideal_rq, burst_rq = client_latencies(ideal_times), client_latencies(times)
        print(f"burst from zero: {CLIENTS} wrk connections for {DURATION}, 50 ms handler, concurrency {PER_INSTANCE}/instance")
        print("p50/p99 per request, as the clients timed each one (bench/fixtures/request-times.lua); beside them, wrk's "
              "own p99, which adds made-up samples for every request slower than twice the mean (its coordinated-omission "
              "correction: it models clients that keep sending on a schedule, which these 200 do not)")
        print(f"{'pool':<28} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'wrk p99 ms':>11}")
        print(f"{'fixed pool of ' + str(need) + ' (ideal)':<28} {ideal[0]:>9} {ideal[3]:>7} {pct(ideal_rq, 50):>8.1f} {pct(ideal_rq, 99):>8.1f} {ideal[2]:>11.1f}")
        print(f"{'from zero (max ' + str(need * 2) + ')':<28} {burst[0]:>9} {burst[3]:>7} {pct(burst_rq, 50):>8.1f} {pct(burst_rq, 99):>8.1f} {burst[2]:>11.1f}")
        matched = f"{cap.matched:.2f} s" if cap.matched is not None else "never"
        p99r = pct(burst_rq, 99) / pct(ideal_rq, 99)
        print(f"capacity matched demand ({need} ready instances) after: {matched} "
              f"(target < 2 s: {'MET' if cap.matched is not None and cap.matched < 2 else 'MISSED'}); peak {cap.peak} ready")
        ratio = f"{cap.matched / floor:.2f}x" if cap.matched is not None else "-"
        print(f"floor: {need} bare node processes started at once on this node ({'in a cgroup beside the instances' if floor_cg else 'no cgroup'}) listen after {floor:.2f} s "
              f"(capacity / floor: {ratio})")
        print(f"p50 ratio {pct(burst_rq, 50) / pct(ideal_rq, 50):.2f}, p99 ratio {p99r:.2f} (target <= 2: {'MET' if p99r <= 2 else 'MISSED'}; "
              f"by wrk's corrected p99: {burst[2] / ideal[2]:.2f}); errors {burst[3]} (target 0: {'MET' if burst[3] == 0 else 'MISSED'})")
        recs = records(s, "burst", burst_from, burst_until)
        lat = sorted(r["duration_us"] for r in recs)
        if lat:
            print(f"server's records of the burst: {len(recs)} requests (wrk: {burst[0]}), p50 {lat[len(lat) // 2] / 1000:.1f} ms, "
                  f"p99 {lat[int(len(lat) * 0.99)] / 1000:.1f} ms")
        timeline(recs)
        client_vs_server(times, recs)
        probe.join()
        probe.report()
        print()

        before = s.instances("burst")
        trickle = wrk(s.url("/fn/burst/"), TRICKLE, f"{IDLE + 5}s", threads=1)
        during = s.instances("burst")
        last = time.perf_counter()
        zero_after = None
        while time.perf_counter() - last < IDLE * 3 + 30:
            if s.instances("burst") == 0 and s.instances("burst", "draining") == 0:
                zero_after = time.perf_counter() - last
                break
            time.sleep(0.1)
        print(f"scale-down: {before} ready after the burst; {TRICKLE} connections for {IDLE + 5}s: "
              f"{trickle[0]} requests, {trickle[3]} errors (target 0: {'MET' if trickle[3] == 0 else 'MISSED'}), "
              f"{during} ready at its end")
        z = f"{zero_after:.2f} s" if zero_after is not None else "never"
        print(f"last request -> zero instances: {z} (idle_timeout {IDLE} s; ratio "
              f"{(zero_after / IDLE) if zero_after else float('nan'):.2f})")
        print(f"load average after: {' '.join(load_average())}")
    finally:
        s.stop()


if __name__ == "__main__":
    main()
