//! Resource limits on real processes in real cgroups: memory (OOM kill, reported), pids (a fork
//! bomb is held), cpu (throttled, read from the cgroup's stats), and stop killing processes that
//! left the process group; the background CPU class yields a core to a serving instance. Each test needs the controller it checks; without it (not root, no
//! cgroups) it says so and returns.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use stratus_core::{
    Build, FunctionName, FunctionSpec, Health, Limits, RuntimeKind, Scaling, VersionNumber,
};
use stratus_runtime::{
    CpuClass, ExitCause, Instance, InstanceHealth, LogSink, PreparedVersion, empty_body,
};
use stratus_runtime_process::{ProcessInstance, ProcessRuntime, enforcement};
use stratus_store::LogLine;

#[derive(Default)]
struct Captured(Mutex<Vec<LogLine>>);
impl LogSink for Captured {
    fn emit(&self, line: LogLine) {
        self.0.lock().unwrap().push(line);
    }
}

impl Captured {
    fn text(&self) -> String {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .map(|l| l.line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A server whose paths misbehave on request: `/alloc` allocates (and touches) 256 MiB, `/fork`
/// forks sleepers until refused, `/spin` starts a busy thread, `/escape` double-forks a sleeper
/// into its own session (out of the process group).
const SERVER: &str = r#"
import http.server, os, subprocess, sys, threading, time
def spin():
    while True: pass
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/alloc":
            hog = b"x" * (256 << 20)
            body = str(len(hog)).encode()
        elif self.path == "/fork":
            n = 0
            for _ in range(200):
                try:
                    pid = os.fork()
                except OSError:
                    break
                if pid == 0:
                    time.sleep(300); os._exit(0)
                n += 1
            body = str(n).encode()
        elif self.path == "/spin":
            threading.Thread(target=spin, daemon=True).start()
            body = b"spinning"
        elif self.path == "/spin-on-cpu0":
            def pinned():
                os.sched_setaffinity(0, {0})
                spin()
            threading.Thread(target=pinned, daemon=True).start()
            body = b"spinning"
        elif self.path == "/escape":
            p = subprocess.Popen(["setsid", "sh", "-c", "sleep 300 & echo $! > escaped.pid"])
            p.wait()
            body = b"escaped"
        else:
            body = b"ok"
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn prepared(dir: &std::path::Path, limits: Limits) -> PreparedVersion {
    std::fs::write(dir.join("server.py"), SERVER).unwrap();
    let spec = FunctionSpec {
        name: FunctionName::new("limited").unwrap(),
        runtime: RuntimeKind::Process,
        command: vec!["python3".into(), "server.py".into()],
        env: BTreeMap::new(),
        limits,
        scaling: Scaling::default(),
        health: Health {
            path: None,
            startup_timeout: Duration::from_secs(10),
        },
        routes: vec![],
        build: Build::default(),
        events: Default::default(),
        capture: None,
    };
    PreparedVersion {
        spec: Arc::new(spec),
        version: VersionNumber(1),
        dir: dir.to_path_buf(),
    }
}

async fn start(p: &PreparedVersion, id: &str, logs: Arc<Captured>) -> ProcessInstance {
    start_as(p, id, logs, CpuClass::Serving).await
}

async fn start_as(
    p: &PreparedVersion,
    id: &str,
    logs: Arc<Captured>,
    class: CpuClass,
) -> ProcessInstance {
    let blobs =
        Arc::new(stratus_store_embedded::LocalBlobStore::open(p.dir.join(".blobs")).unwrap());
    let code = Arc::new(
        stratus_runtime::CodeCache::new(p.dir.join(".code"), blobs, Default::default()).unwrap(),
    );
    ProcessRuntime::new(code, logs)
        .start_process_as(p, id, class)
        .await
        .unwrap()
}

fn instance_id(what: &str) -> String {
    format!("test-{what}-{}", std::process::id())
}

/// The controller's enforcement, or `None` (and a note on stderr) when this host has none.
fn requires(controller: &str) -> bool {
    let e = enforcement();
    let how = match controller {
        "memory" => &e.memory,
        "cpu" => &e.cpu,
        "pids" => &e.pids,
        _ => &e.stop,
    };
    if !e.mechanism.starts_with("cgroup") || how.starts_with("not enforced") {
        eprintln!(
            "skipping: no cgroup {controller} controller here ({}: {how})",
            e.mechanism
        );
        return false;
    }
    true
}

async fn get(inst: &ProcessInstance, path: &str) -> Result<(u16, String), String> {
    let resp = inst
        .handle(http::Request::get(path).body(empty_body()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn allocating_past_limits_memory_is_an_oom_kill_reported_as_such() {
    if !requires("memory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = prepared(
        dir.path(),
        Limits {
            memory_bytes: Some(64 * 1024 * 1024),
            ..Limits::default()
        },
    );
    let logs = Arc::new(Captured::default());
    let inst = start(&p, &instance_id("oom"), logs.clone()).await;
    assert_eq!(get(&inst, "/").await.unwrap().0, 200);
    // The kernel kills the server in the middle of the request.
    assert!(get(&inst, "/alloc").await.is_err());
    let mut health = inst.health();
    until("the exit", Duration::from_secs(10), || {
        matches!(*health.borrow_and_update(), InstanceHealth::Exited { .. })
    })
    .await;
    let h = *inst.health().borrow();
    assert!(
        matches!(
            h,
            InstanceHealth::Exited {
                cause: ExitCause::OutOfMemory,
                signal: Some(9),
                ..
            }
        ),
        "{h:?}"
    );
    assert!(
        logs.text().contains("killed: out of memory (limit 64 MiB)"),
        "{}",
        logs.text()
    );
    inst.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_fork_bomb_is_held_by_limits_pids_and_stop_kills_all_of_it() {
    if !requires("pids") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = prepared(
        dir.path(),
        Limits {
            pids: Some(16),
            ..Limits::default()
        },
    );
    let logs = Arc::new(Captured::default());
    let inst = start(&p, &instance_id("forks"), logs.clone()).await;
    let (status, forked) = get(&inst, "/fork").await.unwrap();
    assert_eq!(status, 200);
    let forked: u32 = forked.parse().unwrap();
    // The server itself and its handler threads count too, so fewer than 16 forks succeed.
    assert!(forked < 16, "{forked} forks succeeded under pids = 16");
    let conf = inst.confinement().clone();
    let current = conf.with_cgroup(|c| c.pids_current()).flatten().unwrap();
    assert!(current <= 16, "pids.current = {current}");
    let refused = conf.with_cgroup(|c| c.pids_refused()).flatten().unwrap();
    assert!(refused > 0, "no fork was refused");
    let procs = conf.with_cgroup(|c| c.procs()).unwrap();
    assert!(procs.len() > 1, "{procs:?}");
    inst.stop(Duration::from_secs(1)).await;
    for pid in procs {
        assert!(!alive(pid), "process {pid} of the fork bomb survived stop");
    }
    assert!(
        conf.with_cgroup(|_| ()).is_none(),
        "the cgroup was not removed"
    );
}

#[tokio::test]
async fn a_cpu_spinner_is_throttled_to_limits_cpu() {
    if !requires("cpu") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let limited = prepared(
        dir.path(),
        Limits {
            cpu: Some(0.2),
            ..Limits::default()
        },
    );
    let inst = start(&limited, &instance_id("cpu"), Arc::default()).await;
    let conf = inst.confinement().clone();
    let before = conf.with_cgroup(|c| c.cpu_stats()).flatten().unwrap();
    assert_eq!(get(&inst, "/spin").await.unwrap().1, "spinning");
    // A spinner wants the whole core; with a 2 ms quota per 10 ms period it is throttled in
    // nearly every period. Wait for the kernel's counters, not for a duration.
    until("throttling", Duration::from_secs(20), || {
        let s = conf.with_cgroup(|c| c.cpu_stats()).flatten().unwrap();
        s.nr_throttled >= before.nr_throttled + 5 && s.throttled > before.throttled
    })
    .await;
    inst.stop(Duration::from_secs(1)).await;

    // The same spinner without `limits.cpu` is never throttled.
    let dir = tempfile::tempdir().unwrap();
    let free = prepared(dir.path(), Limits::default());
    let inst = start(&free, &instance_id("cpu-free"), Arc::default()).await;
    let conf = inst.confinement().clone();
    assert_eq!(get(&inst, "/spin").await.unwrap().1, "spinning");
    let pids_seen = conf.with_cgroup(|c| c.procs()).unwrap();
    assert!(!pids_seen.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = conf.with_cgroup(|c| c.cpu_stats()).flatten().unwrap();
    assert_eq!(s.nr_throttled, 0, "{s:?}");
    inst.stop(Duration::from_secs(1)).await;
}

/// `Instance::usage` counts the CPU time of everything in the cgroup: a spinner capped at 0.3
/// core uses about 0.3 core-seconds per second (never more), and its memory is reported.
#[tokio::test]
async fn usage_counts_a_spinners_cpu_time_at_its_quota() {
    let e = enforcement();
    if e.usage.starts_with("not observed") || e.usage.contains("cpu not observed") {
        eprintln!("skipping: this node cannot observe CPU use ({})", e.usage);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let limited = prepared(
        dir.path(),
        Limits {
            cpu: Some(0.3),
            memory_bytes: Some(256 << 20),
            ..Limits::default()
        },
    );
    let inst = start(&limited, &instance_id("usage"), Arc::default()).await;
    let idle = inst.usage().expect("a cgroup instance reports its use");
    let mem = idle.memory_bytes.expect("memory is observed");
    assert!(mem > 1 << 20 && mem < 256 << 20, "{mem}");
    assert_eq!(get(&inst, "/spin").await.unwrap().1, "spinning");
    let t0 = std::time::Instant::now();
    let c0 = inst.usage().unwrap().cpu_time.unwrap();
    // Wait until the spinner has used a full core-second, then compare with the wall time.
    until("a core-second of CPU", Duration::from_secs(60), || {
        inst.usage().unwrap().cpu_time.unwrap() >= c0 + Duration::from_secs(1)
    })
    .await;
    let used = (inst.usage().unwrap().cpu_time.unwrap() - c0).as_secs_f64();
    let rate = used / t0.elapsed().as_secs_f64();
    assert!(rate <= 0.3 * 1.1, "{rate} cores, over the 0.3 quota");
    assert!(
        rate > 0.05,
        "{rate} cores: the spinner's CPU was not counted"
    );
    inst.stop(Duration::from_secs(1)).await;
}

/// CPU time of two instances over `wait`.
async fn cpu_over(a: &ProcessInstance, b: &ProcessInstance, wait: Duration) -> (f64, f64) {
    let cpu = |i: &ProcessInstance| i.usage().unwrap().cpu_time.unwrap();
    let (a0, b0) = (cpu(a), cpu(b));
    tokio::time::sleep(wait).await;
    ((cpu(a) - a0).as_secs_f64(), (cpu(b) - b0).as_secs_f64())
}

#[tokio::test]
async fn a_background_instance_yields_the_cpu_to_a_serving_one() {
    let e = enforcement();
    if e.cpu_class.starts_with("not enforced") || e.usage.contains("cpu not observed") {
        eprintln!("skipping: no background CPU class here ({})", e.cpu_class);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = prepared(dir.path(), Limits::default());
    let serving = start_as(
        &p,
        &instance_id("serving"),
        Arc::default(),
        CpuClass::Serving,
    )
    .await;
    let background = start_as(
        &p,
        &instance_id("background"),
        Arc::default(),
        CpuClass::Background,
    )
    .await;
    // Started in its class, and the class reads back from the cgroup.
    assert_eq!(serving.cpu_class(), Some(CpuClass::Serving));
    assert_eq!(background.cpu_class(), Some(CpuClass::Background));

    // Both spin on the same core: the serving one gets it, the background one what is left
    // (next to nothing: whatever else runs on that core also comes first).
    for i in [&serving, &background] {
        assert_eq!(get(i, "/spin-on-cpu0").await.unwrap().1, "spinning");
    }
    let (a, b) = cpu_over(&serving, &background, Duration::from_millis(1500)).await;
    assert!(a > 0.3, "the serving spinner ran only {a:.3} s");
    assert!(
        a > 10.0 * b,
        "serving {a:.3} s against background {b:.3} s of CPU: the background class did not yield"
    );

    // Moved back, it shares the core as an equal.
    assert!(background.set_cpu_class(CpuClass::Serving));
    assert_eq!(background.cpu_class(), Some(CpuClass::Serving));
    let (a, b) = cpu_over(&serving, &background, Duration::from_millis(1500)).await;
    assert!(
        b > a / 3.0 && a > b / 3.0,
        "two serving spinners on one core should share it: {a:.3} s and {b:.3} s"
    );

    // Parked, it is frozen where the host has a freezer (it runs nothing), else it gets a
    // twentieth of a core, even with the core to itself.
    serving.stop(Duration::from_secs(1)).await;
    assert!(background.set_cpu_class(CpuClass::Parked));
    assert_eq!(background.cpu_class(), Some(CpuClass::Parked));
    let frozen = e.cpu_class.contains("frozen");
    // Past the moment the kernel takes to stop the spinning threads.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, b) = cpu_over(&background, &background, Duration::from_secs(2)).await;
    let allowed = if frozen {
        0.002
    } else {
        stratus_runtime_process::PARKED_CORES * 1.5
    };
    assert!(
        b / 2.0 <= allowed,
        "a parked spinner used {:.3} cores ({})",
        b / 2.0,
        e.cpu_class
    );

    // Leased again, it runs (and answers) at once.
    assert!(background.set_cpu_class(CpuClass::Serving));
    assert_eq!(background.cpu_class(), Some(CpuClass::Serving));
    assert_eq!(get(&background, "/").await.unwrap().1, "ok");
    let (_, b) = cpu_over(&background, &background, Duration::from_millis(1000)).await;
    assert!(b > 0.3, "the thawed spinner ran only {b:.3} s");

    // A parked instance stops as promptly as any (a stopped or frozen process would not see
    // SIGTERM until thawed).
    assert!(background.set_cpu_class(CpuClass::Parked));
    let pid = background.confinement().pid();
    let t = Instant::now();
    background.stop(Duration::from_secs(10)).await;
    assert!(!alive(pid), "the parked instance survived its stop");
    assert!(background.confinement().with_cgroup(|_| ()).is_none());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stopping a parked instance took {:?} of its 10 s grace: it did not see SIGTERM",
        t.elapsed()
    );
}

#[tokio::test]
async fn stop_kills_a_double_forked_process_that_left_the_group() {
    if !requires("stop") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = prepared(dir.path(), Limits::default());
    let inst = start(&p, &instance_id("escape"), Arc::default()).await;
    assert_eq!(get(&inst, "/escape").await.unwrap().1, "escaped");
    let file = dir.path().join("escaped.pid");
    until("escaped.pid", Duration::from_secs(5), || {
        std::fs::read_to_string(&file).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    let pid: i32 = std::fs::read_to_string(&file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid));
    // It is in its own session and process group: signalling the instance's group misses it.
    let pgid = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let pgid: i32 = pgid
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(
        pgid,
        inst.confinement().pid(),
        "the sleeper did not leave the group"
    );
    inst.stop(Duration::from_secs(1)).await;
    until("the escaped sleeper to die", Duration::from_secs(5), || {
        !alive(pid)
    })
    .await;
}
