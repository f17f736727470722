#!/usr/bin/env python3
"""Does a CPU spinner's cost to a busy neighbour's p99 come from scheduling (which a lower
priority fixes) or from below the kernel's scheduler (the hypervisor, shared cores), which only
not running the spinner fixes? (issue 6, noisy neighbour)

The neighbour is the bench `hello` node function on a `stratus serve`, under a paced load
(PACED_CONNS (32) wrk connections, each waiting THINK_MS (10) after an answer: the node has CPU
to spare). Beside it, outside Stratus, a Python process with two spinning threads, run each of
these ways in turn; each row is the neighbour's per-request p99 with the spinner over its p99
just before, the median of ROUNDS (2) pairs of DURATION (6s) runs:

- none (the control);
- plain: normal priority, no limit;
- SCHED_IDLE (`chrt -i 0`): the lowest priority Linux has;
- a cgroup with `cpu.idle 1` (what Stratus gives a background instance) and a 0.5-core quota;
- a cgroup at normal priority with a 0.5-core quota (a serving instance with limits.cpu = 0.5);
- a cgroup with `cpu.idle 1` and a 0.1-core quota.

Needs root and the cgroup v1 cpu controller (/sys/fs/cgroup/cpu). Binds 127.0.0.1 only.
Env: STRATUS_BIN, DURATION, ROUNDS, PACED_CONNS, THINK_MS.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stratus_bench import Stratus, ensure_wrk, load_average, wrk_timed  # noqa: E402

DURATION = os.environ.get("DURATION", "6s")
ROUNDS = int(os.environ.get("ROUNDS", "2"))
CONNS = int(os.environ.get("PACED_CONNS", "32"))
THINK_MS = int(os.environ.get("THINK_MS", "10"))
CPU = "/sys/fs/cgroup/cpu"

SPIN = """
import threading, time
def spin():
    while True: pass
for _ in range(2): threading.Thread(target=spin, daemon=True).start()
while True: time.sleep(1)
"""


def main():
    if not os.path.isfile(os.path.join(CPU, "cpu.shares")):
        raise SystemExit(f"needs the cgroup v1 cpu controller at {CPU}")
    ensure_wrk()
    tmp = tempfile.mkdtemp(prefix="stratus-contention.")
    spinner = os.path.join(tmp, "spin.py")
    open(spinner, "w").write(SPIN)
    cg = os.path.join(CPU, f"stratus-contention-{os.getpid()}")
    os.makedirs(cg, exist_ok=True)
    s = Stratus("contention")
    try:
        good = s.deploy_hello()
        times = os.path.join(s.tmp, "times")
        wrk_timed(good, CONNS, "3s", times, think_ms=THINK_MS)  # warm-up

        def in_cgroup(idle, quota_us):
            def start():
                with open(os.path.join(cg, "cpu.idle"), "w") as f:
                    f.write(str(idle))
                with open(os.path.join(cg, "cpu.cfs_period_us"), "w") as f:
                    f.write("10000")
                with open(os.path.join(cg, "cpu.cfs_quota_us"), "w") as f:
                    f.write(str(quota_us))

                def join():
                    with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                        f.write("0")
                return subprocess.Popen(["python3", spinner], preexec_fn=join)
            return start

        ways = [
            ("none (control)", lambda: None),
            ("plain, no limit", lambda: subprocess.Popen(["python3", spinner])),
            ("SCHED_IDLE, no limit", lambda: subprocess.Popen(["chrt", "-i", "0", "python3", spinner])),
            ("cgroup cpu.idle 1, 0.5 core", in_cgroup(1, 5000)),
            ("cgroup normal, 0.5 core", in_cgroup(0, 5000)),
            ("cgroup cpu.idle 1, 0.1 core", in_cgroup(1, 1000)),
        ]
        print(f"load average before: {' '.join(load_average())}")
        print(f"neighbour: node hello under wrk -c{CONNS} -d{DURATION} with {THINK_MS} ms think time; "
              f"p99 with the spinner / p99 just before, median of {ROUNDS}")
        print(f"{'spinner':<30} {'p99 ratio':>9}  rounds")
        for label, start in ways:
            ratios = []
            for _ in range(ROUNDS):
                base = wrk_timed(good, CONNS, DURATION, times, think_ms=THINK_MS)[2]
                p = start()
                time.sleep(0.5)
                with_it = wrk_timed(good, CONNS, DURATION, times, think_ms=THINK_MS)[2]
                if p:
                    p.kill()
                    p.wait()
                ratios.append(with_it / base)
            print(f"{label:<30} {statistics.median(ratios):>9.2f}  {', '.join(f'{r:.2f}' for r in ratios)}", flush=True)
        print(f"load average after: {' '.join(load_average())}")
    finally:
        s.stop()
        time.sleep(0.2)
        try:
            os.rmdir(cg)
        except OSError:
            pass


if __name__ == "__main__":
    main()
