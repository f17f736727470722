#!/usr/bin/env python3
"""CPU per request, by thread of the Stratus server (issue 8's overhead, looked at from inside).

Starts `stratus serve` with the given flags, deploys the hello function (as
bench/observability.py does), drives it with `wrk -t1 -c32 -d8s` after a warm-up, and prints each
server thread's CPU ticks over the run (from /proc/<pid>/task/*/stat) divided by the requests
served: the tokio workers (gateway, exporter) and the blocking-pool threads (the SQLite writer of
records and lines). Throughput on this shared 2-core box swings by 30 % between minutes; CPU per
request of one thread kind is steadier, and says where the telemetry's cost sits.

  python3 bench/thread-cpu.py                      # records + metrics (the default)
  python3 bench/thread-cpu.py --no-request-log     # off
  python3 bench/thread-cpu.py --otlp-endpoint URL  # records + traces

Env: STRATUS_BIN (default target/release/stratus). Binds 127.0.0.1 only.
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import observability  # noqa: E402  (deploy_hello)
import traffic  # noqa: E402  (Stratus, ensure_wrk)


def snap(pid):
    d = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            st = open(f"/proc/{pid}/task/{t}/stat").read()
        except OSError:
            continue
        name = st[st.index("(") + 1:st.rindex(")")]
        f = st.rsplit(")", 1)[1].split()
        d[t] = (name, int(f[11]) + int(f[12]))
    return d


def main():
    traffic.ensure_wrk()
    s = traffic.Stratus(sys.argv[1:])
    try:
        observability.deploy_hello(s)
        url = f"http://127.0.0.1:{s.gw}/fn/hello/"
        subprocess.run(["wrk", "-t1", "-c32", "-d3s", url], capture_output=True, check=True)
        a = snap(s.proc.pid)
        out = subprocess.run(["wrk", "-t1", "-c32", "-d8s", url], capture_output=True, text=True, check=True).stdout
        time.sleep(0.5)
        b = snap(s.proc.pid)
        rps = float([l for l in out.splitlines() if "Requests/sec" in l][0].split()[1])
        hz = os.sysconf("SC_CLK_TCK")
        print(f"flags: {' '.join(sys.argv[1:]) or '(default)'}; {rps:.0f} req/s over 8 s")
        print(f"{'thread':>8} {'name':<18} {'ticks':>6} {'us/request':>11}")
        for t, (n, c) in sorted(b.items(), key=lambda x: -(x[1][1] - a.get(x[0], ("", 0))[1])):
            d = c - a.get(t, ("", 0))[1]
            if d > 0:
                print(f"{t:>8} {n:<18} {d:>6} {d / hz / (rps * 8) * 1e6:>11.2f}")
    finally:
        s.stop()


if __name__ == "__main__":
    main()
