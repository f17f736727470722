#!/usr/bin/env python3
"""Noisy neighbour (issue 6): a well-behaved function's p99 under load, alone and with a bad
neighbour deployed on the same node, as a ratio (target <= 1.2x).

The good function is the bench `hello` node server (min = max = 1, concurrency 100), loaded by
wrk for DURATION (10s) two ways (LOADS): `saturated`, CONNS (16) connections with no pause (the
node's CPU all taken), and `paced`, PACED_CONNS (32) connections that each wait THINK_MS (10)
after an answer (the node with CPU to spare, as nodes are run). Each neighbour runs with limits.memory =
64MiB, limits.cpu = 0.5, limits.pids = 64, min = max = 1, and is *called* all along (a request
every CALL_EVERY, 0.25 s, from one client, besides the good function's load): a function that
is called is in the serving CPU class, not parked (frozen) as an idle one is, and its first
request sets off its misbehaviour:

- fork bomb: forks without end (held by limits.pids);
- memory hog: allocates 8 MiB every 10 ms (OOM-killed, restarted when called again: a crash loop);
- cpu spinner: two busy threads (throttled to half a core);
- never answers: accepts requests and never responds, while 32 connections keep calling it
  (each gets a 504 after limits.timeout = 2s);
- crash on start: exits 0.3 s after it is ready, every time (restart backoff);
- cpu spinner without limits: the same spinner with no `limits.cpu`, to show what the limit buys;
- idle spinner: the unlimited spinner, called once and then not at all: parked, so frozen.

Rows are interleaved with a fresh baseline before each neighbour (the machine is shared); the
ratio is against the baseline measured just before. p99 is over the requests as wrk's clients
timed them one by one (bench/fixtures/request-times.lua, as in burst.py); wrk's own p99 is printed
beside it: it adds made-up samples for every request slower than twice the mean interval (its
coordinated-omission correction), which weighs each stall several times over.
A single 10-s p99 moves by 10-25 % between identical runs here (the `quiet` control row shows
it), so REPEAT=N runs every row N times and prints each neighbour's median ratio. Env:
STRATUS_BIN, CONNS, DURATION, REPEAT (1), CALL_EVERY, CALLED (1; 0: each neighbour is called
once, then parked while it misbehaves), LOADS, PACED_CONNS, THINK_MS, ONLY (a comma-separated
list of the neighbours by key, e.g. ONLY=fork-bomb,cpu-spinner).
"""
import http.client
import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stratus_bench import BIN, Stratus, ensure_wrk, load_average, wrk, wrk_timed  # noqa: E402

CONNS = int(os.environ.get("CONNS", "16"))
DURATION = os.environ.get("DURATION", "10s")
REPEAT = int(os.environ.get("REPEAT", "1"))
CALL_EVERY = float(os.environ.get("CALL_EVERY", "0.25"))
# CALLED=0: no neighbour is called after its deploy's start (each misbehaves from its own first
# request, sent once), so every one is parked (frozen) while the good function is measured.
CALLED = os.environ.get("CALLED", "1") != "0"

LIMITS = '[limits]\nmemory = "64MiB"\ncpu = 0.5\npids = 64\ntimeout = "2s"\n'
SCALING = '[scaling]\nmin = 1\nmax = 1\n'


def serves_then(misbehaviour):
    """A Python server whose first request starts `misbehaviour` (indented body) in a thread."""
    return """
import http.server, os, sys, threading, time
def misbehave():
""" + misbehaviour + """
once = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if once.acquire(blocking=False):
            threading.Thread(target=misbehave, daemon=True).start()
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


SPIN = """
    def spin():
        while True: pass
    for _ in range(2): threading.Thread(target=spin, daemon=True).start()
"""

# key: (label, limits, code, called all along)
NEIGHBOURS = {
    # The control: a well-behaved neighbour, called like the others. Its ratio is the noise.
    "quiet": ("quiet (control)", LIMITS, serves_then("    pass\n"), True),
    "fork-bomb": ("fork bomb", LIMITS, serves_then("""
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.01)
"""), True),
    "memory-hog": ("memory hog", LIMITS, serves_then("""
    hog = []
    while True:
        hog.append(b"x" * (8 << 20)); time.sleep(0.01)
"""), True),
    "cpu-spinner": ("cpu spinner", LIMITS, serves_then(SPIN), True),
    "never-answers": ("never answers", LIMITS, """
import os, socket, threading, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen(1024)
held = []
while True:
    c, _ = s.accept(); held.append(c)
""", True),
    # It must start once for its deploy to succeed (a version that never starts is refused).
    "crash-on-start": ("crash on start", LIMITS, """
import http.server, os, threading, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
time.sleep(0.3)
os._exit(1)
""", True),
    "spinner-unlimited": ("cpu spinner, no limits", '[limits]\ntimeout = "2s"\n', serves_then(SPIN), True),
    "idle-spinner": ("idle spinner, no limits", '[limits]\ntimeout = "2s"\n', serves_then(SPIN), False),
}


class Caller(threading.Thread):
    """One client calling a neighbour every CALL_EVERY (and once for one that is not called all
    along); counts the answers by status."""

    def __init__(self, port, path, all_along):
        super().__init__(daemon=True)
        self.port, self.path, self.all_along = port, path, all_along
        self.stop = threading.Event()
        self.statuses = {}

    def run(self):
        while not self.stop.is_set():
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", self.path)
                status = c.getresponse().status
                c.close()
            except OSError:
                status = "error"
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if not self.all_along:
                return
            self.stop.wait(CALL_EVERY)

    def summary(self):
        return ", ".join(f"{k} x{v}" for k, v in sorted(self.statuses.items(), key=str))


LOADS = {
    # Closed loop, no think time: the good function (and so the node) saturated.
    "saturated": dict(conns=CONNS, think_ms=None),
    # PACED_CONNS users, each waiting THINK_MS after an answer: the node with CPU to spare, as
    # nodes are run (the neighbour's limits.cpu fits beside it).
    "paced": dict(conns=int(os.environ.get("PACED_CONNS", "32")), think_ms=int(os.environ.get("THINK_MS", "10"))),
}


def main():
    ensure_wrk()
    s = Stratus("noisy")
    try:
        good = s.deploy_hello()
        wrk(good, CONNS, "3s")  # warm-up
        loads = [l for l in os.environ.get("LOADS", "saturated,paced").split(",") if l]
        times = os.path.join(s.tmp, "good-times")

        def measure(load):
            return wrk_timed(good, LOADS[load]["conns"], DURATION, times, think_ms=LOADS[load]["think_ms"])

        print(f"load average before: {' '.join(load_average())}")
        for l in loads:
            r = measure(l)
            print(f"load '{l}': wrk -c{LOADS[l]['conns']} -d{DURATION}, think {LOADS[l]['think_ms'] or 0} ms: "
                  f"{r[0] / float(DURATION.rstrip('s')):.0f} req/s, p99 {r[2]:.2f} ms")
        print("each neighbour deployed beside the good function; per load: the good function's p99 without it, with it")
        print(f"{'neighbour':<26} {'load':<10} {'base p99':>9} {'with p99':>9} {'ratio':>6} {'wrk p99 ratio':>14} {'errors':>7}  neighbour status")
        only = [n for n in os.environ.get("ONLY", "").split(",") if n]
        ratios, wrk_ratios = {}, {}
        for _ in range(REPEAT):
            for name, (label, limits, code, all_along) in NEIGHBOURS.items():
                if only and name not in only:
                    continue
                # ABBA around the deploy: each load's two runs are as far from it on both sides.
                base = {l: measure(l) for l in loads}
                manifest = (f'name = "{name}"\nruntime = "process"\ncommand = ["python3", "server.py"]\n'
                            f'{limits}{SCALING}')
                s.deploy(name, manifest, {"server.py": code})
                calls = Caller(s.gw, f"/fn/{name}/", all_along and CALLED)
                calls.start()
                caller = None
                if name == "never-answers" and CALLED:
                    span = int(DURATION.rstrip('s')) * len(loads) + 5
                    caller = subprocess.Popen(["wrk", "-t1", "-c32", f"-d{span}s", "--timeout=5s",
                                               s.url(f"/fn/{name}/")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)  # let the misbehaviour start
                noisy = {l: measure(l) for l in reversed(loads)}
                calls.stop.set()
                if caller:
                    caller.wait()
                info = s.info(name)
                p = info["pools"][0] if info["pools"] else {}
                status = (f"crashes {p.get('crashes', 0)}, oom {p.get('oom_kills', 0)}, timeouts {p.get('timeouts', 0)}, "
                          f"last exit {(p.get('last_exit') or {}).get('reason', '-')}; "
                          f"its calls: {calls.summary()}")
                for l in loads:
                    b, n = base[l], noisy[l]
                    ratio, wrk_ratio = n[2] / b[2], n[4] / b[4]
                    ratios.setdefault((label, l), []).append(ratio)
                    wrk_ratios.setdefault((label, l), []).append(wrk_ratio)
                    print(f"{label:<26} {l:<10} {b[2]:>8.2f}m {n[2]:>8.2f}m {ratio:>6.2f} {wrk_ratio:>14.2f} {n[3]:>7}  "
                          f"{status if l == loads[-1] else ''}", flush=True)
                # Remove the neighbour before the next baseline.
                subprocess.run([BIN, "delete", name], env=s.env, capture_output=True, check=True)
                time.sleep(1)
        if REPEAT > 1:
            print(f"median p99 ratio over {REPEAT} rounds (target <= 1.2):")
            for (label, l), r in ratios.items():
                m = statistics.median(r)
                w = wrk_ratios[(label, l)]
                print(f"  {label:<26} {l:<10} {m:>5.2f} {'MET' if m <= 1.2 else 'MISSED':<7} ({', '.join(f'{x:.2f}' for x in r)}); "
                      f"by wrk's p99 {statistics.median(w):.2f} ({', '.join(f'{x:.2f}' for x in w)})")
        print(f"load average after: {' '.join(load_average())}")
    finally:
        s.stop()


if __name__ == "__main__":
    main()
