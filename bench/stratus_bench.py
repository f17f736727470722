"""Shared plumbing for the autoscaling and limits benchmarks (burst.py, noisy-neighbour.py):
a real `stratus serve` on loopback ports in a temp dir, deploys through the CLI, `info` through
the API, and wrk runs parsed into (requests, p50 ms, p99 ms, errors).

Env: STRATUS_BIN (default target/release/stratus).
"""
import glob
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("STRATUS_BIN", os.path.join(REPO, "target/release/stratus"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"port {port} never opened")


def ensure_wrk():
    if shutil.which("wrk"):
        return
    subprocess.run("apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null",
                   shell=True, check=True)


def _ms(v):
    if v.endswith("us"):
        return float(v[:-2]) / 1000
    if v.endswith("ms"):
        return float(v[:-2])
    if v.endswith("s"):
        return float(v[:-1]) * 1000
    return float(v)


def wrk(url, conns, duration, threads=2, timeout="10s", script=None, env=None):
    """One wrk run: (requests, p50 ms, p99 ms, errors = non-2xx + socket errors)."""
    # WRK_RT=1 runs wrk at real-time priority (SCHED_FIFO 10): on a 2-core box whose cores a
    # burst of instance starts saturates, a load generator on the same box otherwise counts its
    # own scheduling delay as latency. wrk is I/O-bound, so it cannot starve the server.
    rt = ["chrt", "-f", "10"] if os.environ.get("WRK_RT") == "1" else []
    out = subprocess.run([*rt, "wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}", f"--timeout={timeout}", "--latency", *(["-s", script] if script else []), url],
                         capture_output=True, text=True, check=True, env=env).stdout
    lines = out.splitlines()
    reqs = int(next(l for l in lines if "requests in" in l).split()[0])

    def pct(p):
        return _ms(next(l for l in lines if l.strip().startswith(p)).split()[1])
    errors = sum(int(l.split()[-1]) for l in lines if "Non-2xx" in l)
    for l in lines:
        if l.strip().startswith("Socket errors"):
            # Socket errors: connect 0, read 0, write 0, timeout 0
            errors += sum(int(x.strip().split()[-1]) for x in l.split(":", 1)[1].split(","))
    return reqs, pct("50%"), pct("99%"), errors



def client_times(times_prefix):
    """Each answered request as wrk's script timed it: (request id, sent us, received us)."""
    out = []
    for path in glob.glob(times_prefix + ".*"):
        for line in open(path):
            parts = line.split()
            if len(parts) >= 3:
                out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def client_latencies(times_prefix):
    """Each answered request's latency in ms, sorted."""
    return sorted((got - sent) / 1000 for _, sent, got in client_times(times_prefix))


def pct(sorted_ms, p):
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * p / 100))] if sorted_ms else float("nan")



REQUEST_TIMES_LUA = os.path.join(REPO, "bench/fixtures/request-times.lua")


def wrk_timed(url, conns, duration, times_prefix, threads=2, think_ms=None):
    """A wrk run whose requests are timed one by one (bench/fixtures/request-times.lua):
    (requests, p50 ms, p99 ms, errors, wrk's own p99 ms), p50/p99 over the requests as sent and
    answered. wrk's own percentiles add made-up samples for every request slower than twice the
    mean interval (`stats_correct`, a coordinated-omission correction for clients that send on
    a schedule); they are returned beside, for comparison. `think_ms`: each connection waits
    this long after an answer before its next request (a load below saturation)."""
    for old in glob.glob(times_prefix + ".*"):
        os.remove(old)
    env = {k: v for k, v in os.environ.items() if k != "THINK_MS"}
    env["REQUEST_TIMES"] = times_prefix
    if think_ms is not None:
        env["THINK_MS"] = str(think_ms)
    reqs, _, wrk_p99, errors = wrk(url, conns, duration, threads=threads, script=REQUEST_TIMES_LUA, env=env)
    lat = client_latencies(times_prefix)
    return reqs, pct(lat, 50), pct(lat, 99), errors, wrk_p99


class Stratus:
    def __init__(self, name="bench"):
        self.tmp = tempfile.mkdtemp(prefix=f"stratus-bench-{name}.")
        # Instances run as `nobody` when their code is reachable to it (isolation is on as root).
        os.chmod(self.tmp, 0o755)
        self.gw, self.api = free_port(), free_port()
        self.env = dict(os.environ, STRATUS_DATA_DIR=f"{self.tmp}/data", STRATUS_API=f"http://127.0.0.1:{self.api}")
        self.log = f"{self.tmp}/serve.log"
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", f"127.0.0.1:{self.gw}", "--api-listen", f"127.0.0.1:{self.api}",
             "--data-dir", f"{self.tmp}/data"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), env=self.env)
        wait_port(self.api)
        wait_port(self.gw)
        self.token = open(f"{self.tmp}/data/admin.token").read().strip()

    def url(self, path):
        return f"http://127.0.0.1:{self.gw}{path}"

    def deploy(self, name, manifest, files):
        app = os.path.join(self.tmp, "apps", name)
        os.makedirs(app, exist_ok=True)
        with open(os.path.join(app, "stratus.toml"), "w") as f:
            f.write(manifest)
        for fname, text in files.items():
            with open(os.path.join(app, fname), "w") as f:
                f.write(text)
        r = subprocess.run([BIN, "deploy", app], capture_output=True, text=True, env=self.env)
        if r.returncode != 0:
            raise SystemExit(f"deploy {name} failed: {r.stderr}")

    def deploy_hello(self, name="good"):
        """The bench `hello` node server as function `name` (one instance, concurrency 100):
        the well-behaved function the limits benches load. Returns its URL."""
        hello = open(os.path.join(REPO, "bench/fixtures/hello/server.js")).read()
        self.deploy(name, f'name = "{name}"\nruntime = "process"\ncommand = ["node", "server.js"]\n'
                    '[limits]\nconcurrency = 100\n[scaling]\nmin = 1\nmax = 1\n', {"server.js": hello})
        return self.url(f"/fn/{name}/")

    def info(self, name):
        c = http.client.HTTPConnection("127.0.0.1", self.api, timeout=5)
        c.request("GET", f"/api/v1/functions/{name}", headers={"authorization": f"Bearer {self.token}"})
        r = c.getresponse()
        body = r.read()
        c.close()
        return json.loads(body)

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.api, timeout=30)
        c.request("GET", path, headers={"authorization": f"Bearer {self.token}"})
        r = c.getresponse()
        body = r.read()
        c.close()
        if r.status != 200:
            raise SystemExit(f"GET {path}: {r.status} {body[:300]!r}")
        return json.loads(body)

    def instances(self, name, state="ready"):
        return sum(1 for p in self.info(name)["pools"] for i in p["instances"] if i["state"] == state)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def load_average():
    return open("/proc/loadavg").read().split()[:3]
