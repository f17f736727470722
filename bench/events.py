#!/usr/bin/env python3
"""Event functions benchmarks (BENCHMARKS.md, "Event functions").

1. Handler cold start, node and python: a handler deployed with scaling.min = 0 and
   idle_timeout = 1s; each round waits until the function has no instance, then times one request
   (connect to last byte). Beside it, the bare interpreter start (`node -e 0`, `python3 -c pass`),
   and the ratio of the medians.
2. Warm invocation overhead: sequential requests to a warm instance of the same handler, beside
   the handler called in a loop in-process (same interpreter, same event); the difference is what
   the platform adds (gateway, event mapping, Runtime API round trip).
3. Async: events accepted per second (202 after the durable enqueue), closed loop over every
   load connection for 10 s, against a handler that records each start; the backlog drained
   (one recorded start per accepted event); then a steady 1,000 events/s for 10 s on one global
   schedule, each payload carrying its submit time, and the delay from submit to handler start
   at p50/p99, with what the generator really offered (rate, and how late its sends left).

Env: STRATUS_BIN (default <repo>/target/release/stratus), ROUNDS (cold-start rounds, 10),
LOAD_PROCS (load processes, 2), CONNS (keep-alive connections per process, 32), ASYNC_ONLY=1
(skip the cold-start and warm sections).
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
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.environ.get("STRATUS_BIN", os.path.join(REPO, "target/release/stratus"))
ROUNDS = int(os.environ.get("ROUNDS", "10"))

NODE_HANDLER = """
exports.handler = async (event, context) => {
  if (event && process.env.OUT) require("fs").appendFileSync(process.env.OUT, JSON.stringify({t0: event.t0, start: Date.now()}) + "\\n");
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
            stdout=subprocess.DEVNULL, stderr=self.log,
            # Isolation off: the handler records its starts in a file on the host, which an
            # isolated instance (private /tmp, read-only filesystem) cannot write.
            env={**os.environ, "RUST_LOG": "warn", "STRATUS_ISOLATION": "off"},
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


# The load generator: LOAD_PROCS processes (not threads: one GIL cannot pace 1,000 requests/s
# on a loaded box), each an asyncio loop over CONNS raw keep-alive connections. Paced, the
# events follow one global schedule (event i due at start + i/rate, process p sends the i with
# i % procs == p); a due event waits for a free connection, and how late it left is reported.
# Each payload carries its submit time, taken when its request is written.
LOAD_PROCS = int(os.environ.get("LOAD_PROCS", "2"))
CONNS = int(os.environ.get("CONNS", "32"))
SECS = int(os.environ.get("SECS", "10"))


async def _load(port, token, name, secs, rate, idx, procs, conns, stamp, start):
    import asyncio
    head = (f"POST /api/v1/functions/{name}/invocations HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            f"authorization: Bearer {token}\r\nx-stratus-invocation-type: Event\r\n"
            "content-type: application/json\r\n").encode()
    slots = asyncio.Queue()
    res = {"sent": 0, "errors": 0, "late_ms": [], "accept_ms": [], "last": [], "first_t": [], "last_t": []}
    stop_at = start + secs

    async def pacer():
        i = idx
        while True:
            due = start + i / rate
            if due >= stop_at:
                break
            d = due - time.time()
            if d > 0:
                await asyncio.sleep(d)
            slots.put_nowait(due)
            i += procs
        for _ in range(conns):
            slots.put_nowait(None)

    async def conn():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        last = None
        await asyncio.sleep(max(0.0, start - time.time()))
        while True:
            if rate:
                due = await slots.get()
                if due is None:
                    break
            elif time.time() >= stop_at:
                break
            t = time.time()
            if not res["first_t"]:
                res["first_t"].append(t)
            if rate:
                res["late_ms"].append((t - due) * 1000)
            body = json.dumps({"t0": t * 1000} if stamp else {"n": 1}).encode()
            w.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
            status = int((await r.readline()).split()[1])
            length = 0
            while True:
                line = await r.readline()
                if line in (b"\r\n", b""):
                    break
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            reply = await r.readexactly(length)
            res["accept_ms"].append((time.time() - t) * 1000)
            res["last_t"][:] = [max(res["last_t"] + [t])]
            if status == 202:
                res["sent"] += 1
                last = json.loads(reply)["invocation_id"]
            else:
                res["errors"] += 1
        w.close()
        if last:
            res["last"].append(last)

    tasks = [asyncio.create_task(conn()) for _ in range(conns)]
    if rate:
        await pacer()
    await asyncio.gather(*tasks)
    return res


def load_worker(arg):
    """One load process (`events.py --load JSON`): prints its results as JSON."""
    import asyncio
    a = json.loads(arg)
    print(json.dumps(asyncio.run(_load(**a))))


def load(s, name, secs, rate=None, stamp=False):
    """Runs LOAD_PROCS load processes; returns their merged results."""
    # One schedule for all: every process starts at the same time, a second from now (room for
    # the interpreters to start on a loaded box).
    start = time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--load", json.dumps(dict(
        port=s.api, token=s.token, name=name, secs=secs, rate=rate, idx=i, procs=LOAD_PROCS,
        conns=CONNS, stamp=stamp, start=start))], stdout=subprocess.PIPE, text=True) for i in range(LOAD_PROCS)]
    out = {"sent": 0, "errors": 0, "late_ms": [], "accept_ms": [], "last": [], "first_t": [], "last_t": []}
    for p in procs:
        r = json.loads(p.communicate(timeout=secs + 120)[0])
        for k in out:
            out[k] += r[k]
    # The window the sends actually took (a late generator stretches it past `secs`).
    out["window"] = max(out["last_t"]) - min(out["first_t"]) if out["sent"] > 1 else secs
    return out


def cpu_seconds(root):
    """CPU time (user + system) of `root` and every process below it, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    stats, kids = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(d)] = (int(f[11]) + int(f[12])) / tick
        kids.setdefault(int(f[1]), []).append(int(d))
    total, todo = 0.0, [root]
    while todo:
        p = todo.pop()
        total += stats.get(p, 0.0)
        todo += kids.get(p, [])
    return total


def children_cpu():
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_lines(path, n, timeout):
    deadline = time.time() + timeout
    lines = []
    while time.time() < deadline:
        lines = open(path).read().splitlines()
        if len(lines) >= n:
            break
        time.sleep(0.2)
    return lines


def async_bench(s, tmp):
    out = os.path.join(tmp, "starts.jsonl")
    extra = f'[scaling]\nmax = 8\n\n[async]\nconcurrency = 64\n\n[env]\nOUT = "{out}"'
    s.deploy(fn_folder(tmp, "sink", "node", extra))
    open(out, "w").close()
    # Accepted per second, durable: every connection as fast as it goes for 10 s.
    acc = load(s, "sink", SECS)
    accepted = acc["sent"] / acc["window"]
    log(f"accept phase: {acc['sent']} accepted ({acc['errors']} errors) in {acc['window']:.1f} s")
    # The backlog drained: one handler start per accepted event (the handler records each).
    t_drain = time.time()
    got = len(wait_lines(out, acc["sent"], 300))
    drained = time.time() - t_drain
    log(f"backlog: {got} of {acc['sent']} handler starts after {drained:.1f} s")
    open(out, "w").close()
    # Steady 1,000 events/s for 10 s; the payload carries its submit time. CPU per event: the
    # server (API, store, dispatcher) apart from its function instances, and the generator.
    server_pid = s.proc.pid
    c0 = (cpu_seconds(server_pid), children_cpu())
    own0 = open(f"/proc/{server_pid}/stat").read().rsplit(")", 1)[1].split()
    st = load(s, "sink", SECS, rate=1000, stamp=True)
    sent = st["sent"]
    t_end = time.time()
    lines = wait_lines(out, sent, 120)
    tail = time.time() - t_end
    log(f"steady phase: {sent} accepted ({st['errors']} errors) in {st['window']:.1f} s, {len(lines)} handler starts")
    own1 = open(f"/proc/{server_pid}/stat").read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    server_cpu = (int(own1[11]) + int(own1[12]) - int(own0[11]) - int(own0[12])) / tick
    tree_cpu = cpu_seconds(server_pid) - c0[0]
    gen_cpu = children_cpu() - c0[1]
    starts = [json.loads(l) for l in lines]
    starts = [l for l in starts if "t0" in l]
    delays = [l["start"] - l["t0"] for l in starts]
    # Delivered rate: handler starts over the window in which they happened.
    span = (max(l["start"] for l in starts) - min(l["start"] for l in starts)) / 1000 if starts else 1
    return dict(
        accepted=accepted, accept_p50=pct(acc["accept_ms"], 50), accept_p99=pct(acc["accept_ms"], 99),
        accept_errors=acc["errors"], backlog=acc["sent"], backlog_delivered=got, drained=drained,
        offered=sent / st["window"], window=st["window"], steady_errors=st["errors"], late_p50=pct(st["late_ms"], 50),
        late_p99=pct(st["late_ms"], 99), late_max=max(st["late_ms"] or [0]),
        steady_accept_p50=pct(st["accept_ms"], 50), steady_accept_p99=pct(st["accept_ms"], 99),
        delivered=len(delays), delivered_rate=len(delays) / span, tail=tail,
        p50=statistics.median(delays), p99=pct(delays, 99),
        cpu_server_us=server_cpu / max(sent, 1) * 1e6, cpu_instances_us=(tree_cpu - server_cpu) / max(sent, 1) * 1e6,
        cpu_gen_us=gen_cpu / max(sent, 1) * 1e6)


def main():
    if sys.argv[1:2] == ["--load"]:
        return load_worker(sys.argv[2])
    if not os.access(BIN, os.X_OK):
        sys.exit(f"no stratus binary at {BIN} (set STRATUS_BIN)")
    tmp = tempfile.mkdtemp(prefix="stratus-bench-events.")
    s = Server(tmp)
    try:
        if os.environ.get("ASYNC_ONLY") == "1":
            return print_async(async_bench(s, tmp))
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
        print_async(async_bench(s, tmp))
    finally:
        s.stop()
        if os.environ.get("KEEP") == "1":
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def print_async(a):
    print(f"\n## Async (load: {LOAD_PROCS} processes x {CONNS} keep-alive connections)\n")
    print(f"- accepted (durable, closed loop, 10 s): {a['accepted']:.0f} events/s, accept latency p50 "
          f"{a['accept_p50']:.1f} ms, p99 {a['accept_p99']:.1f} ms, {a['accept_errors']} errors")
    print(f"- that backlog of {a['backlog']} events: {a['backlog_delivered']} handler starts, the last "
          f"{a['drained']:.1f} s after the last accept")
    print(f"- steady phase, 1,000 events/s asked for 10 s: offered {a['offered']:.0f} events/s "
          f"(sends spread over {a['window']:.2f} s, "
          f"{a['steady_errors']} errors; sends left late by p50 {a['late_p50']:.1f} ms, p99 "
          f"{a['late_p99']:.1f} ms, max {a['late_max']:.0f} ms; accept p50 {a['steady_accept_p50']:.1f} ms, "
          f"p99 {a['steady_accept_p99']:.1f} ms)")
    print(f"- delivered: {a['delivered']} handler starts at {a['delivered_rate']:.0f}/s (the last "
          f"{a['tail']:.1f} s after the last submit); submit -> handler start p50 {a['p50']:.1f} ms, "
          f"p99 {a['p99']:.1f} ms")
    print(f"- CPU per event in the steady phase: server {a['cpu_server_us']:.0f} µs, its function instances "
          f"{a['cpu_instances_us']:.0f} µs, the load generator {a['cpu_gen_us']:.0f} µs")



if __name__ == "__main__":
    main()
