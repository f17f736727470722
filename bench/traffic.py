#!/usr/bin/env python3
"""Traffic-management benchmarks (issue 7), against a real `stratus serve`:

1. Routing cost: wrk against an alias of 1 version vs an alias split over 5 versions with 10
   header rules (none matching, so every rule is evaluated on every request).
2. Alias switch: after the API call that moves an alias returns, how many requests (and how
   long) until every new request is served by the new target.
3. Stickiness: with a tenant header as stickiness key, the share of 5,000 tenants that change
   version when a split goes 90/10 -> 80/20 (ideal: 10%), and how many flip back.

Env: STRATUS_BIN (default target/release/stratus), DURATION (10s), CONNS (32), RUNS (3), PIN (0).
Binds 127.0.0.1 only; every load run is bounded by wrk's -d.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stratus_bench import ensure_wrk, free_port, wait_port  # noqa: E402,F401  (shared bench helpers)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("STRATUS_BIN", os.path.join(REPO, "target/release/stratus"))
DURATION = os.environ.get("DURATION", "10s")
CONNS = os.environ.get("CONNS", "32")
RUNS = int(os.environ.get("RUNS", "3"))
# PIN=1: the load generator on CPU 0, the servers (and the function processes they start, which
# inherit it) on CPU 1, so that where the scheduler happens to put each thread on the 2 cores
# does not move the result: it measures what the platform serves on one core.
PIN = os.environ.get("PIN") == "1"
LOAD_CPU = ["taskset", "-c", "0"] if PIN else []
SERVER_CPU = ["taskset", "-c", "1"] if PIN else []


def wrk(url, duration=None):
    out = subprocess.run([*LOAD_CPU, "wrk", "-t1", f"-c{CONNS}", f"-d{duration or DURATION}", "--latency", url], capture_output=True, text=True, check=True).stdout
    rps = float(next(l for l in out.splitlines() if l.startswith("Requests/sec")).split()[1])
    def pct(p):
        line = next(l for l in out.splitlines() if l.strip().startswith(p))
        v = line.split()[1]
        return float(v[:-2]) if v.endswith("ms") else float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-1]) * 1000
    non2xx = sum(int(l.split()[-1]) for l in out.splitlines() if "Non-2xx" in l)
    return rps, pct("50%"), pct("99%"), non2xx


class Stratus:
    def __init__(self, extra=()):
        self.tmp = tempfile.mkdtemp(prefix="stratus-bench-traffic.")
        self.gw, self.api = free_port(), free_port()
        self.env = dict(os.environ, STRATUS_DATA_DIR=f"{self.tmp}/data", STRATUS_API=f"http://127.0.0.1:{self.api}")
        self.proc = subprocess.Popen(
            [*SERVER_CPU, BIN, "serve", "--listen", f"127.0.0.1:{self.gw}", "--api-listen", f"127.0.0.1:{self.api}", "--data-dir", f"{self.tmp}/data", *extra],
            stdout=subprocess.DEVNULL, stderr=open(f"{self.tmp}/serve.log", "w"), env=self.env)
        wait_port(self.api)
        wait_port(self.gw)
        self.token = open(f"{self.tmp}/data/admin.token").read().strip()

    def cli(self, *args):
        r = subprocess.run([BIN, *args], capture_output=True, text=True, env=self.env)
        if r.returncode != 0:
            raise SystemExit(f"stratus {' '.join(args)} failed: {r.stderr}")
        return r.stdout

    def put_alias(self, alias, policy):
        c = http.client.HTTPConnection("127.0.0.1", self.api)
        c.request("PUT", f"/api/v1/functions/hello/aliases/{alias}", json.dumps(policy), {"authorization": f"Bearer {self.token}", "content-type": "application/json"})
        r = c.getresponse()
        body = r.read()
        assert r.status == 200, body
        c.close()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        shutil.rmtree(self.tmp, ignore_errors=True)


def weights(*pairs):
    return [{"version": v, "weight": w} for v, w in pairs]


def main():
    ensure_wrk()
    s = Stratus()
    try:
        app = os.path.join(s.tmp, "app")
        shutil.copytree(os.path.join(REPO, "bench/fixtures/hello"), app)
        manifest = os.path.join(app, "stratus.toml")
        with open(manifest, "w") as f:
            f.write('name = "hello"\nruntime = "process"\ncommand = ["node", "server.js"]\n'
                    '[limits]\nconcurrency = 100\n[scaling]\nmin = 1\nmax = 1\n')
        for i in range(5):
            with open(os.path.join(app, "VERSION"), "w") as f:
                f.write(str(i + 1))
            s.cli("deploy", app)
        gw = f"http://127.0.0.1:{s.gw}"

        # 1. Routing cost.
        s.put_alias("one", {"weights": weights((1, 100))})
        rules = [{"match": {"kind": "value", "source": "header", "name": f"x-rule-{i}", "op": "equals", "value": "never"}, "target": {"version": 5}} for i in range(10)]
        s.put_alias("many", {"weights": weights((1, 20), (2, 20), (3, 20), (4, 20), (5, 20)), "rules": rules})
        for alias in ("one", "many"):
            wrk_warm = subprocess.run(["wrk", "-t1", f"-c{CONNS}", "-d3s", f"{gw}/fn/hello@{alias}/"], capture_output=True)
            assert wrk_warm.returncode == 0
        res = {"one": [], "many": []}
        for _ in range(RUNS):
            for alias in ("one", "many"):
                res[alias].append(wrk(f"{gw}/fn/hello@{alias}/"))
        med = {a: tuple(statistics.median(r[i] for r in v) for i in range(4)) for a, v in res.items()}
        print(f"routing cost: wrk -t1 -c{CONNS} -d{DURATION} --latency, median of {RUNS} interleaved runs")
        print(f"{'alias':<34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
        for a, label in (("one", "1 version"), ("many", "5 weighted versions + 10 header rules")):
            rps, p50, p99, bad = med[a]
            print(f"{label:<34} {rps:>9.0f} {p50:>8.3f} {p99:>8.3f} {bad:>8.0f}")
        ratio = med["many"][0] / med["one"][0]
        print(f"throughput ratio many/one: {ratio:.3f} (target >= 0.95: {'MET' if ratio >= 0.95 else 'MISSED'}); "
              f"p99 ratio many/one: {med['many'][2] / med['one'][2]:.2f}")
        print()

        # 2. Alias switch.
        c = http.client.HTTPConnection("127.0.0.1", s.gw)
        stale_total, delays = 0, []
        for i in range(20):
            old, new = (1, 2) if i % 2 == 0 else (2, 1)
            s.put_alias("switch", {"weights": weights((old, 100))})
            s.put_alias("switch", {"weights": weights((new, 100))})
            returned = time.perf_counter()
            stale = 0
            while True:
                c.request("GET", "/fn/hello@switch/")
                r = c.getresponse()
                r.read()
                if r.getheader("x-stratus-version") == str(new):
                    delays.append((time.perf_counter() - returned) * 1000)
                    break
                stale += 1
            stale_total += stale
        print("alias switch: 20 switches; requests sent right after the API call returned")
        print(f"requests served by the old target after the call returned: {stale_total}")
        print(f"call returned -> first response from the new target: p50 {statistics.median(delays):.2f} ms, max {max(delays):.2f} ms (one request's round trip)")
        print()

        # 3. Stickiness.
        tenants = [f"tenant-{i}" for i in range(5000)]
        def assign():
            out = {}
            for t in tenants:
                c.request("GET", "/fn/hello@sticky/", headers={"x-tenant-id": t})
                r = c.getresponse()
                r.read()
                out[t] = r.getheader("x-stratus-version")
            return out
        sticky = {"source": "header", "name": "x-tenant-id"}
        s.put_alias("sticky", {"weights": weights((1, 90), (2, 10)), "sticky": sticky})
        before = assign()
        again = assign()
        s.put_alias("sticky", {"weights": weights((1, 80), (2, 20)), "sticky": sticky})
        after = assign()
        moved = sum(before[t] != after[t] for t in tenants) / len(tenants)
        back = sum(before[t] == "2" and after[t] == "1" for t in tenants)
        flips = sum(before[t] != again[t] for t in tenants)
        share_new = sum(v == "2" for v in after.values()) / len(tenants)
        print(f"stickiness: {len(tenants)} tenants (x-tenant-id), split 90/10 -> 80/20")
        print(f"tenants that changed version: {moved * 100:.2f}% (target ~10%); flipped back to the old version: {back}; "
              f"changed between two reads at the same split: {flips}; share on version 2 after: {share_new * 100:.1f}%")
    finally:
        s.stop()


if __name__ == "__main__":
    sys.exit(main())
