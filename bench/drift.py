#!/usr/bin/env python3
"""How much this machine's speed drifts between short windows (why bench/observability.py takes
its headline ratio from ABBA quartets). One `stratus serve --no-request-log` with the node hello
function, 8 back-to-back `wrk -t1 -c32 -d3s` runs; for each: req/s, how busy the machine was
(/proc/stat), steal ticks, and CPU time per request. Busy steady while CPU per request moves
means the host's speed moved, not the benchmark.

Env: STRATUS_BIN (default target/release/stratus). Binds 127.0.0.1 only.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import observability  # noqa: E402  (deploy_hello)
import traffic  # noqa: E402  (Stratus, ensure_wrk)


def stat():
    v = list(map(int, open("/proc/stat").readline().split()[1:9]))
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v), v[7]


def main():
    traffic.ensure_wrk()
    s = traffic.Stratus(["--no-request-log"])
    try:
        observability.deploy_hello(s)
        url = f"http://127.0.0.1:{s.gw}/fn/hello/"
        traffic.wrk(url, "3s")  # warm-up
        tick = os.sysconf("SC_CLK_TCK")
        for _ in range(8):
            b0, t0, st0 = stat()
            rps = traffic.wrk(url, "3s")[0]
            b1, t1, st1 = stat()
            busy = (b1 - b0) / (t1 - t0)
            per_req = (b1 - b0) / tick / (rps * 3) * 1e6
            print(f"{rps:8.0f} req/s  busy {busy * 100:5.1f}%  steal {st1 - st0:3d} ticks  "
                  f"cpu/request {per_req:6.1f} us")
    finally:
        s.stop()


if __name__ == "__main__":
    main()
