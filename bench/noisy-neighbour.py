#!/usr/bin/env python3
"""Noisy neighbour (issue 6): a well-behaved function's p99 under load, alone and with a bad
neighbour deployed on the same node, as a ratio (target <= 1.2x).

The good function is the bench `hello` node server (min = max = 1, concurrency 100), loaded by
wrk with CONNS (16) connections for DURATION (10s). Each neighbour runs with limits.memory =
64MiB, limits.cpu = 0.5, limits.pids = 64 (and min = 1, so a crashing one keeps being
restarted):

- fork bomb: forks without end once serving (held by limits.pids);
- memory hog: allocates 8 MiB every 10 ms once serving (OOM-killed, restarted: a crash loop);
- cpu spinner: two busy threads (throttled to half a core);
- never answers: accepts requests and never responds, while 32 connections keep calling it
  (each gets a 504 after limits.timeout = 2s);
- crash on start: exits 200 ms after it is ready, every time (restart backoff);
- cpu spinner without limits: the same spinner with no `limits.cpu`, to show what the limit buys.

Rows are interleaved with a fresh baseline before each neighbour (the machine is shared); the
ratio is against the baseline measured just before. A single 10-s p99 moves by 10-25 % between
identical runs here (the `quiet` control row shows it), so REPEAT=N runs every row N times and
prints each neighbour's median ratio. Env: STRATUS_BIN, CONNS, DURATION, REPEAT (1), ONLY (a
comma-separated list of the neighbours above by key, e.g. ONLY=fork-bomb,cpu-spinner).
"""
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stratus_bench import BIN, REPO, Stratus, ensure_wrk, load_average, wrk  # noqa: E402

CONNS = int(os.environ.get("CONNS", "16"))
DURATION = os.environ.get("DURATION", "10s")
REPEAT = int(os.environ.get("REPEAT", "1"))

LIMITS = '[limits]\nmemory = "64MiB"\ncpu = 0.5\npids = 64\ntimeout = "2s"\n'
SCALING = '[scaling]\nmin = 1\nmax = 1\n'

PY_PREFIX = """
import http.server, os, sys, threading, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
time.sleep(0.3)
"""

NEIGHBOURS = {
    # The control: a well-behaved neighbour (it serves and idles). Its ratio is the bench's noise.
    "quiet": ("quiet (control)", LIMITS, PY_PREFIX + """
while True: time.sleep(1)
"""),
    "fork-bomb": ("fork bomb", LIMITS, PY_PREFIX + """
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.01)
"""),
    "memory-hog": ("memory hog", LIMITS, PY_PREFIX + """
hog = []
while True:
    hog.append(b"x" * (8 << 20)); time.sleep(0.01)
"""),
    "cpu-spinner": ("cpu spinner", LIMITS, PY_PREFIX + """
def spin():
    while True: pass
for _ in range(2): threading.Thread(target=spin, daemon=True).start()
while True: time.sleep(1)
"""),
    "never-answers": ("never answers", LIMITS, """
import os, socket, threading, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen(1024)
held = []
while True:
    c, _ = s.accept(); held.append(c)
"""),
    "crash-on-start": ("crash on start", LIMITS, PY_PREFIX + """
os._exit(1)
"""),
    "spinner-unlimited": ("cpu spinner, no limits", '[limits]\ntimeout = "2s"\n', PY_PREFIX + """
def spin():
    while True: pass
for _ in range(2): threading.Thread(target=spin, daemon=True).start()
while True: time.sleep(1)
"""),
}


def main():
    ensure_wrk()
    s = Stratus("noisy")
    try:
        hello = open(os.path.join(REPO, "bench/fixtures/hello/server.js")).read()
        s.deploy("good", 'name = "good"\nruntime = "process"\ncommand = ["node", "server.js"]\n'
                 '[limits]\nconcurrency = 100\n[scaling]\nmin = 1\nmax = 1\n', {"server.js": hello})
        good = s.url("/fn/good/")
        wrk(good, CONNS, "3s")  # warm-up
        print(f"load average before: {' '.join(load_average())}")
        print(f"noisy neighbour: good function under wrk -c{CONNS} -d{DURATION}; each neighbour deployed beside it")
        print(f"{'neighbour':<26} {'base p99':>9} {'with p99':>9} {'ratio':>6} {'errors':>7}  neighbour status")
        only = [n for n in os.environ.get("ONLY", "").split(",") if n]
        ratios = {}
        for _ in range(REPEAT):
            for name, (label, limits, code) in NEIGHBOURS.items():
                if only and name not in only:
                    continue
                base = wrk(good, CONNS, DURATION)
                manifest = (f'name = "{name}"\nruntime = "process"\ncommand = ["python3", "server.py"]\n'
                            f'{limits}{SCALING}')
                s.deploy(name, manifest, {"server.py": code})
                caller = None
                if name == "never-answers":
                    caller = subprocess.Popen(["wrk", "-t1", "-c32", f"-d{int(DURATION.rstrip('s')) + 5}s", "--timeout=5s",
                                               s.url(f"/fn/{name}/")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)  # let the misbehaviour start
                noisy = wrk(good, CONNS, DURATION)
                if caller:
                    caller.wait()
                info = s.info(name)
                p = info["pools"][0] if info["pools"] else {}
                status = (f"crashes {p.get('crashes', 0)}, oom {p.get('oom_kills', 0)}, timeouts {p.get('timeouts', 0)}, "
                          f"last exit {(p.get('last_exit') or {}).get('reason', '-')}, "
                          f"cpu class {','.join(sorted({i.get('cpu_class', '-') for i in p.get('instances', [])})) or '-'}")
                ratio = noisy[2] / base[2]
                ratios.setdefault(label, []).append(ratio)
                print(f"{label:<26} {base[2]:>8.2f}m {noisy[2]:>8.2f}m {ratio:>6.2f} {noisy[3]:>7}  {status}", flush=True)
                # Remove the neighbour before the next baseline.
                subprocess.run([BIN, "delete", name], env=s.env, capture_output=True, check=True)
                time.sleep(1)
        if REPEAT > 1:
            print(f"median p99 ratio over {REPEAT} rounds (target <= 1.2):")
            for label, r in ratios.items():
                m = statistics.median(r)
                print(f"  {label:<26} {m:>5.2f} {'MET' if m <= 1.2 else 'MISSED':<7} ({', '.join(f'{x:.2f}' for x in r)})")
        print(f"load average after: {' '.join(load_average())}")
    finally:
        s.stop()


if __name__ == "__main__":
    main()
