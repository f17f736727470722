#!/usr/bin/env python3
"""Observability overhead (issue 8): gateway throughput on the same hello function with request
records + metrics + tracing ON (the default, plus --otlp-endpoint to a local OTLP sink) vs OFF
(--no-request-log, no OTLP endpoint; the counters behind /metrics are atomics and always on),
and records + metrics alone (the default) in between.
Both servers run side by side in this one run; load runs alternate between them.

Env: STRATUS_BIN (default target/release/stratus), DURATION (10s), CONNS (32), RUNS (3).
Binds 127.0.0.1 only; every load run is bounded by wrk's -d.
"""
import http.server
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traffic  # noqa: E402  (free_port, wait_port, ensure_wrk, wrk)

REPO = traffic.REPO
BIN = traffic.BIN
RUNS = traffic.RUNS


class Sink(http.server.BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP posts and counts the bytes, like a collector that keeps up."""
    received = 0

    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        self.rfile.read(n)
        Sink.received += n
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


def deploy_hello(s):
    app = os.path.join(s.tmp, "app")
    shutil.copytree(os.path.join(REPO, "bench/fixtures/hello"), app)
    with open(os.path.join(app, "stratus.toml"), "w") as f:
        f.write('name = "hello"\nruntime = "process"\ncommand = ["node", "server.js"]\n'
                '[limits]\nconcurrency = 100\n[scaling]\nmin = 1\nmax = 1\n')
    s.cli("deploy", app)


def main():
    traffic.ensure_wrk()
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    otlp = f"http://127.0.0.1:{sink.server_address[1]}"
    servers = {
        "off": traffic.Stratus(["--no-request-log"]),
        "records": traffic.Stratus([]),
        "on": traffic.Stratus(["--otlp-endpoint", otlp]),
        "sampled": traffic.Stratus(["--otlp-endpoint", otlp, "--trace-sample-ratio", "0.1"]),
    }
    try:
        for s in servers.values():
            deploy_hello(s)
        for s in servers.values():
            subprocess.run(["wrk", "-t1", f"-c{traffic.CONNS}", "-d3s", f"http://127.0.0.1:{s.gw}/fn/hello/"], capture_output=True, check=True)
        res = {k: [] for k in servers}
        for _ in range(RUNS):
            for k, s in servers.items():
                res[k].append(traffic.wrk(f"http://127.0.0.1:{s.gw}/fn/hello/"))
        med = {k: tuple(statistics.median(r[i] for r in v) for i in range(4)) for k, v in res.items()}
        load = os.getloadavg()[0]
        print(f"observability overhead: wrk -t1 -c{traffic.CONNS} -d{traffic.DURATION} --latency, median of {RUNS} interleaved runs, load avg {load:.1f}")
        print(f"{'telemetry':<46} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
        for k, label in (("off", "off (--no-request-log, no OTLP)"), ("records", "request records + metrics (the default)"), ("on", "on (request records + metrics + OTLP traces)"), ("sampled", "on, 10% of new traces sampled")):
            rps, p50, p99, bad = med[k]
            print(f"{label:<46} {rps:>9.0f} {p50:>8.3f} {p99:>8.3f} {bad:>8.0f}")
        ratio = med["on"][0] / med["off"][0]
        print(f"throughput ratio on/off: {ratio:.3f} (target >= 0.95: {'MET' if ratio >= 0.95 else 'MISSED'}); "
              f"records only/off: {med['records'][0] / med['off'][0]:.3f}; 10% sampled/off: {med['sampled'][0] / med['off'][0]:.3f}; "
              f"OTLP bytes received: {Sink.received}")
        # Nothing was dropped on the way (or say how much).
        m = subprocess.run(["curl", "-s", f"http://127.0.0.1:{servers['on'].api}/metrics"], capture_output=True, text=True).stdout
        for name in ("stratus_request_records_dropped_total", "stratus_spans_dropped_total", "stratus_spans_exported_total"):
            v = next((l.split()[-1] for l in m.splitlines() if l.startswith(name + " ")), "?")
            print(f"  {name} = {v}")
    finally:
        for s in servers.values():
            s.stop()
        sink.shutdown()


if __name__ == "__main__":
    main()
