#!/usr/bin/env python3
"""Event functions benchmarks (BENCHMARKS.md, "Event functions").

1. Handler cold start, node and python: a handler deployed with scaling.min = 0 and
   idle_timeout = 1s; each round waits until the function has no instance, then times one request
   (connect to last byte). Beside it, the bare interpreter start (`node -e 0`, `python3 -c pass`),
   and the ratio of the medians.
2. Warm invocation overhead: sequential requests to a warm instance of the same handler, beside
   the handler called in a loop in-process (same interpreter, same event); the difference is what
   the platform adds (gateway, event mapping, Runtime API round trip).
3. Async: events accepted per second (202 after the durable enqueue) from 16 keep-alive clients
   for 10 s, against a handler that does nothing; then a steady 1,000 events/s for 10 s with the
   delay from submit to handler start (the handler records its start time; the payload carries
   the submit time) at p50/p99.

Env: STRATUS_BIN (default <repo>/target/release/stratus), ROUNDS (cold-start rounds, 10).
Everything binds 127.0.0.1; every loop is bounded in count and time.
"""
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.environ.get("STRATUS_BIN", os.path.join(REPO, "target/release/stratus"))
ROUNDS = int(os.environ.get("ROUNDS", "10"))

NODE_HANDLER = """
exports.handler = async (event, context) => {
  if (event && event.t0) require("fs").appendFileSync(process.env.OUT, JSON.stringify({t0: event.t0, start: Date.now()}) + "\\n");
  return { ok: true };
};
"""
PY_HANDLER = """
def handler(event, context):
    return {"ok": True}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Server:
    def __init__(self, tmp):
        self.data = os.path.join(tmp, "data")
        self.gw, self.api = free_port(), free_port()
        self.log = open(os.path.join(tmp, "server.log"), "w")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", f"127.0.0.1:{self.gw}", "--api-listen", f"127.0.0.1:{self.api}", "--data-dir", self.data],
            stdout=subprocess.DEVNULL, stderr=self.log, env={**os.environ, "RUST_LOG": "warn"},
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.api), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        self.token = open(os.path.join(self.data, "admin.token")).read().strip()

    def cli(self, *args):
        env = {**os.environ, "STRATUS_API": f"http://127.0.0.1:{self.api}", "STRATUS_DATA_DIR": self.data}
        return subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=300)

    def deploy(self, folder):
        out = self.cli("deploy", folder)
        if out.returncode != 0:
            sys.exit(f"deploy failed: {out.stderr}")

    def instances(self, name):
        info = json.loads(self.cli("info", name, "--json").stdout)
        return sum(len(p["instances"]) + p["starting"] for p in info["pools"])

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def fn_folder(tmp, name, runtime, extra=""):
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    handler = "index.handler" if runtime == "node" else "main.handler"
    with open(os.path.join(d, "index.js" if runtime == "node" else "main.py"), "w") as f:
        f.write(NODE_HANDLER if runtime == "node" else PY_HANDLER)
    with open(os.path.join(d, "stratus.toml"), "w") as f:
        f.write(f'name = "{name}"\nruntime = "{runtime}"\nhandler = "{handler}"\n{extra}\n')
    return d


def timed_get(port, path):
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    c.close()
    assert r.status == 200, r.status
    return time.perf_counter() - t


def bare_start(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def cold_start(s, tmp):
    rows = []
    for rt, bare in (("node", ["node", "-e", "0"]), ("python", ["python3", "-c", "pass"])):
        name = f"cold-{rt}"
        s.deploy(fn_folder(tmp, name, rt, '[scaling]\nmin = 0\nidle_timeout = "1s"'))
        cold, base = [], []
        for i in range(ROUNDS + 1):
            deadline = time.time() + 30
            while s.instances(name) > 0 and time.time() < deadline:
                time.sleep(0.2)
            c = timed_get(s.gw, f"/fn/{name}/")
            b = bare_start(bare)
            if i > 0:  # the first round warms the page cache
                cold.append(c)
                base.append(b)
        rows.append((rt, statistics.median(cold), statistics.median(base)))
    return rows


def in_process(rt, tmp, n=2000):
    d = os.path.join(tmp, f"cold-{rt}")
    if rt == "node":
        code = (
            "const h=require('./index.js').handler;const ev={version:'2.0',rawPath:'/',headers:{}};"
            f"(async()=>{{for(let i=0;i<200;i++)await h(ev,{{}});const t=process.hrtime.bigint();for(let i=0;i<{n};i++)await h(ev,{{}});"
            f"console.log(Number(process.hrtime.bigint()-t)/1e9/{n});}})()"
        )
        out = subprocess.run(["node", "-e", code], cwd=d, capture_output=True, text=True, env={**os.environ, "OUT": "/dev/null"})
    else:
        code = (
            "import time,main;ev={'version':'2.0','rawPath':'/','headers':{}};\n"
            f"[main.handler(ev,None) for _ in range(200)];t=time.perf_counter();[main.handler(ev,None) for _ in range({n})];print((time.perf_counter()-t)/{n})"
        )
        out = subprocess.run(["python3", "-c", code], cwd=d, capture_output=True, text=True)
    return float(out.stdout.strip())


def warm(s, tmp, n=1000):
    rows = []
    for rt in ("node", "python"):
        name = f"cold-{rt}"
        c = http.client.HTTPConnection("127.0.0.1", s.gw, timeout=30)
        lat = []
        for i in range(n + 100):
            t = time.perf_counter()
            c.request("GET", f"/fn/{name}/")
            r = c.getresponse()
            r.read()
            if i >= 100:
                lat.append(time.perf_counter() - t)
        rows.append((rt, statistics.median(lat), pct(lat, 99), in_process(rt, tmp)))
    return rows


def submitter(s, name, stop_at, counts, lasts, payload_fn, rate=None, idx=0, nthreads=1):
    c = http.client.HTTPConnection("127.0.0.1", s.api, timeout=30)
    hdr = {"authorization": f"Bearer {s.token}", "x-stratus-invocation-type": "Event", "content-type": "application/json"}
    n = 0
    start = time.time()
    while time.time() < stop_at:
        if rate:
            # Paced: this thread's share of the steady rate.
            due = start + (n * nthreads + idx) / rate
            if due > time.time():
                time.sleep(due - time.time())
        c.request("POST", f"/api/v1/functions/{name}/invocations", body=json.dumps(payload_fn()), headers=hdr)
        r = c.getresponse()
        body = r.read()
        assert r.status == 202, r.status
        n += 1
        last = json.loads(body)["invocation_id"]
    counts.append(n)
    if n:
        lasts.append(last)


def run_threads(k, target):
    ts = [threading.Thread(target=target, args=(i,)) for i in range(k)]
    [t.start() for t in ts]
    [t.join() for t in ts]


def async_bench(s, tmp):
    out = os.path.join(tmp, "starts.jsonl")
    extra = f'[scaling]\nmax = 8\n\n[async]\nconcurrency = 64\n\n[env]\nOUT = "{out}"'
    s.deploy(fn_folder(tmp, "sink", "node", extra))
    # Accepted per second, durable: 16 clients as fast as they go for 10 s.
    counts, lasts = [], []
    stop = time.time() + 10
    run_threads(16, lambda i: submitter(s, "sink", stop, counts, lasts, lambda: {"n": 1}))
    accepted = sum(counts) / 10
    # Let the backlog drain before the steady run: every client's last event delivered (the
    # queue is claimed in order, so the rest are too).
    t_drain = time.time()
    deadline = time.time() + 300
    c = http.client.HTTPConnection("127.0.0.1", s.api, timeout=30)
    pending = list(lasts)
    while pending and time.time() < deadline:
        c.request("GET", f"/api/v1/invocations/{pending[-1]}", headers={"authorization": f"Bearer {s.token}"})
        state = json.loads(c.getresponse().read())["state"]
        if state in ("succeeded", "dead_lettered"):
            pending.pop()
        else:
            time.sleep(0.2)
    drained = time.time() - t_drain
    backlog = sum(counts)
    open(out, "w").close()
    # Steady 1,000 events/s for 10 s; the payload carries its submit time.
    counts, lasts = [], []
    stop = time.time() + 10
    run_threads(8, lambda i: submitter(s, "sink", stop, counts, lasts, lambda: {"t0": time.time() * 1000}, rate=1000, idx=i, nthreads=8))
    sent = sum(counts)
    deadline = time.time() + 60
    while time.time() < deadline:
        lines = open(out).read().splitlines()
        if len(lines) >= sent:
            break
        time.sleep(0.5)
    delays = [json.loads(l)["start"] - json.loads(l)["t0"] for l in lines]
    return accepted, backlog, drained, sent / 10, len(delays), statistics.median(delays), pct(delays, 99)


def main():
    if not os.access(BIN, os.X_OK):
        sys.exit(f"no stratus binary at {BIN} (set STRATUS_BIN)")
    tmp = tempfile.mkdtemp(prefix="stratus-bench-events.")
    s = Server(tmp)
    try:
        cold = cold_start(s, tmp)
        print("## Handler cold start (median of %d)\n" % ROUNDS)
        print("| runtime | cold request | bare interpreter start | ratio |\n|---|---|---|---|")
        for rt, c, b in cold:
            print(f"| {rt} | {c*1000:.0f} ms | {b*1000:.0f} ms | {c/b:.1f}x |")
        w = warm(s, tmp)
        print("\n## Warm invocation (sequential, keep-alive, 1000 requests)\n")
        print("| runtime | p50 | p99 | handler in-process | platform overhead (p50) |\n|---|---|---|---|---|")
        for rt, p50, p99, ip in w:
            print(f"| {rt} | {p50*1e6:.0f} µs | {p99*1e6:.0f} µs | {ip*1e6:.1f} µs | {(p50-ip)*1e6:.0f} µs |")
        accepted, backlog, drained, rate, n, p50, p99 = async_bench(s, tmp)
        print("\n## Async\n")
        print(f"- accepted (durable, 16 clients, 10 s): {accepted:.0f} events/s")
        print(f"- that backlog of {backlog} events was delivered {drained:.1f} s after the last accept")
        print(f"- steady {rate:.0f} events/s for 10 s: {n} handler starts; submit -> handler start p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    finally:
        s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
