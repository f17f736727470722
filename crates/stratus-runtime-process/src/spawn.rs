use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stratus_core::{VersionNumber, now_ms};
use stratus_runtime::{
    CpuClass, ExitCause, InstanceHealth, LogSink, PreparedVersion, RuntimeError,
};
use stratus_store::{LogLine, LogStream};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::confine::Confinement;
use crate::instance::ProcessInstance;

const TAIL_LINES: usize = 20;

/// The last lines an instance wrote, quoted in start errors so a failed deploy says why.
#[derive(Clone, Default)]
pub struct OutputTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    /// Requests the instance is serving now, so output can be attributed to the request.
    requests: Arc<Mutex<Vec<String>>>,
}

/// A request in flight on an instance; dropping it ends it.
pub struct RequestScope {
    requests: Arc<Mutex<Vec<String>>>,
    id: String,
}

impl Drop for RequestScope {
    fn drop(&mut self) {
        let mut r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = r.iter().position(|x| *x == self.id) {
            r.swap_remove(i);
        }
    }
}

impl OutputTail {
    /// Marks `request_id` in flight until the scope is dropped.
    pub fn enter(&self, request_id: &str) -> RequestScope {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(request_id.to_string());
        RequestScope {
            requests: self.requests.clone(),
            id: request_id.to_string(),
        }
    }

    /// The request a line written now belongs to: the one in flight, if exactly one is (with
    /// several at once, a line cannot be told apart and is left unattributed).
    fn sole_request(&self) -> Option<String> {
        let r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        match r.as_slice() {
            [only] => Some(only.clone()),
            _ => None,
        }
    }

    fn push(&self, line: &str) {
        let mut q = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == TAIL_LINES {
            q.pop_front();
        }
        q.push_back(line.to_string());
    }
    pub fn text(&self) -> String {
        let q = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if q.is_empty() {
            return "(no output)".into();
        }
        q.iter()
            .map(|l| format!("  | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The start error for a program that is not on `PATH`.
pub fn not_found(program: &str) -> RuntimeError {
    RuntimeError::StartFailed(format!(
        "command `{program}` not found: install it or fix `command` in stratus.toml"
    ))
}

/// Relative programs with a slash (`./server`) are looked up in the version's folder; bare names
/// on the server's `PATH`, here rather than in the child, which may run as a user that cannot
/// search every `PATH` entry (and would then report "permission denied" for a missing program).
pub fn resolve_program(dir: &Path, program: &str) -> PathBuf {
    let p = Path::new(program);
    if p.is_relative() && program.contains('/') {
        return dir.join(p);
    }
    if !program.contains('/') {
        use std::os::unix::fs::PermissionsExt;
        let found = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(program))
                .find(|c| {
                    std::fs::metadata(c)
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                })
        });
        if let Some(f) = found {
            return f;
        }
    }
    p.to_path_buf()
}

fn reader_task(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    stream: LogStream,
    meta: (String, u32, String),
    logs: Arc<dyn LogSink>,
    tail: OutputTail,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        // Lines that are not UTF-8 end the capture; the instance keeps running.
        while let Ok(Some(line)) = lines.next_line().await {
            tail.push(&line);
            let request_id = tail.sole_request();
            logs.emit(LogLine {
                id: 0,
                at: now_ms(),
                function: meta.0.clone(),
                version: meta.1,
                instance: meta.2.clone(),
                stream,
                line,
                request_id,
            });
        }
    })
}

pub fn capture_output(
    child: &mut Child,
    function: &str,
    version: VersionNumber,
    instance: &str,
    logs: Arc<dyn LogSink>,
    tail: OutputTail,
) -> Vec<tokio::task::JoinHandle<()>> {
    let meta = (function.to_string(), version.0, instance.to_string());
    let mut tasks = Vec::new();
    if let Some(out) = child.stdout.take() {
        tasks.push(reader_task(
            out,
            LogStream::Stdout,
            meta.clone(),
            logs.clone(),
            tail.clone(),
        ));
    }
    if let Some(err) = child.stderr.take() {
        tasks.push(reader_task(err, LogStream::Stderr, meta, logs, tail));
    }
    tasks
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// Threads that fork instances. Not tokio's blocking pool: its idle threads exit, and
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked a child exits, which would kill the
/// instance. These live as long as the server; two, so one slow start does not hold the rest.
fn spawner() -> &'static Mutex<std::sync::mpsc::Sender<SpawnJob>> {
    static SPAWNER: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<SpawnJob>>> =
        std::sync::OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..2 {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("stratus-spawn-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            // A panicking job loses its own answer, not the thread.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            Err(_) => return,
                        }
                    }
                })
                .expect("cannot start the instance spawner thread");
        }
        Mutex::new(tx)
    })
}

/// Runs `f` on a spawner thread, inside the caller's tokio runtime (a child's reaper registers
/// with it).
pub async fn on_spawner<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RuntimeError> {
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: SpawnJob = Box::new(move || {
        let _rt = handle.enter();
        let _ = tx.send(f());
    });
    spawner()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| RuntimeError::StartFailed("the instance spawner is gone".into()))?;
    rx.await
        .map_err(|_| RuntimeError::StartFailed("the instance spawner failed".into()))
}

fn free_port() -> std::io::Result<u16> {
    // The kernel picks a free ephemeral port; the child binds it right after. The window in which
    // another process could take it is tiny, and losing it shows as a failed start, not a hang.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Reaps the child when it exits, logs how (and why: out of memory, timeout), and publishes it
/// on `health`; `on_exit` runs last. Shared by every runtime that runs instances as child
/// processes.
pub fn watch_exit(
    mut child: Child,
    logs: Arc<dyn LogSink>,
    p: PreparedVersion,
    id: String,
    health: watch::Sender<InstanceHealth>,
    conf: Arc<Confinement>,
    on_exit: impl FnOnce() + Send + 'static,
) {
    tokio::spawn(async move {
        let status = child.wait().await;
        let (code, signal) = match &status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                (s.code(), s.signal())
            }
            Err(_) => (None, None),
        };
        let cause = conf.cause();
        platform_line(&*logs, &p, &id, conf.exit_line(&id, code, signal));
        let _ = health.send(InstanceHealth::Exited {
            code,
            signal,
            cause,
        });
        on_exit();
    });
}

/// A line the platform writes about an instance (started, exited, killed).
pub fn platform_line(logs: &dyn LogSink, p: &PreparedVersion, instance: &str, line: String) {
    logs.emit(LogLine {
        id: 0,
        at: now_ms(),
        function: p.spec.name.to_string(),
        version: p.version.0,
        instance: instance.to_string(),
        stream: LogStream::Platform,
        line,
        request_id: None,
    });
}

pub async fn start(
    p: &PreparedVersion,
    instance_id: &str,
    class: CpuClass,
    logs: Arc<dyn LogSink>,
) -> Result<ProcessInstance, RuntimeError> {
    let spec = &p.spec;
    let port = free_port().map_err(|e| RuntimeError::StartFailed(format!("no free port: {e}")))?;
    let program = resolve_program(&p.dir, &spec.command[0]);
    if !program.is_absolute() {
        return Err(not_found(&spec.command[0]));
    }
    let mut cmd = Command::new(&program);
    cmd.args(&spec.command[1..])
        .current_dir(&p.dir)
        .envs(&spec.env)
        .env("PORT", port.to_string())
        .env("STRATUS_FUNCTION", spec.name.as_str())
        .env("STRATUS_VERSION", p.version.to_string())
        .env("STRATUS_INSTANCE", instance_id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    // The cgroup's files, and fork + exec, which blocks until the child has run its set-up
    // (namespace, mounts, cgroup join) and exec'd: off the gateway's worker threads (on a small
    // node one per core), so that twenty instances starting at once (a burst) or a neighbour's
    // crash loop do not stall requests.
    let (conf, spawned) = {
        let id = instance_id.to_string();
        let limits = spec.limits.clone();
        let dir = p.dir.clone();
        on_spawner(move || -> Result<_, RuntimeError> {
            let conf = Arc::new(Confinement::new(&id, &limits)?);
            // Before the child joins: its start-up (the costly part of a node or JVM start)
            // already runs in its class.
            if class != CpuClass::Serving {
                conf.set_cpu_class(class);
            }
            let join = conf.configure(&mut cmd, &[&dir], &program)?;
            let spawned = cmd.spawn();
            drop(join);
            Ok((conf, spawned))
        })
        .await??
    };
    let mut child = spawned.map_err(|e| {
        let what = if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "command `{}` not found: install it or fix `command` in stratus.toml",
                spec.command[0]
            )
        } else {
            format!("command `{}` could not start: {e}", spec.command[0])
        };
        RuntimeError::StartFailed(what)
    })?;
    let pid = child.id().unwrap_or(0) as i32;
    conf.set_pid(pid);
    let tail = OutputTail::default();
    capture_output(
        &mut child,
        spec.name.as_str(),
        p.version,
        instance_id,
        logs.clone(),
        tail.clone(),
    );
    let (health_tx, health_rx) = watch::channel(InstanceHealth::Running);
    let exited = Arc::new(tokio::sync::Notify::new());
    {
        let logs = logs.clone();
        let p = p.clone();
        let id = instance_id.to_string();
        let exited = exited.clone();
        watch_exit(child, logs, p, id, health_tx, conf.clone(), move || {
            exited.notify_waiters()
        });
    }
    let inst = ProcessInstance::new(
        instance_id.to_string(),
        conf,
        port,
        health_rx,
        exited,
        tail.clone(),
    );
    match wait_ready(
        &inst,
        port,
        spec.health.path.as_deref(),
        spec.health.startup_timeout,
    )
    .await
    {
        Ok(()) => {
            platform_line(
                &*logs,
                p,
                instance_id,
                format!(
                    "instance {instance_id} ready on port {port} in {} ms",
                    started.elapsed().as_millis()
                ),
            );
            Ok(inst)
        }
        Err(why) => {
            inst.kill_now();
            // Let the output readers drain what the process wrote before quoting it.
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(RuntimeError::StartFailed(format!(
                "{why}; last output:\n{}",
                tail.text()
            )))
        }
    }
}

async fn wait_ready(
    inst: &ProcessInstance,
    port: u16,
    health_path: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    let begun = Instant::now();
    let deadline = begun + timeout;
    let mut health = inst.health_rx();
    loop {
        if let InstanceHealth::Exited {
            code,
            signal,
            cause,
        } = *health.borrow_and_update()
        {
            if cause == ExitCause::OutOfMemory {
                return Err(format!(
                    "the process was killed for going over limits.memory ({} MiB) before it was ready",
                    inst.memory_limit_mib()
                ));
            }
            return Err(match (code, signal) {
                (Some(c), _) => format!("the process exited with code {c} before it was ready"),
                (_, Some(s)) => format!("the process was killed by signal {s} before it was ready"),
                _ => "the process exited before it was ready".into(),
            });
        }
        let ready = match health_path {
            None => tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok(),
            Some(path) => inst.probe(path).await,
        };
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(match health_path {
                None => format!(
                    "the process did not open port {port} ($PORT) within {timeout:?}: make it listen on the PORT environment variable"
                ),
                Some(p) => format!("GET {p} did not answer 2xx within {timeout:?}"),
            });
        }
        // Cold start time is dominated by how soon readiness is noticed, so poll fast at first,
        // then at a twentieth of the time waited so far (at most 10 ms): readiness is seen within
        // ~5% of the start time, and twenty instances starting together on a busy node (a burst)
        // do not spend its CPU on refused connects (1 ms polls were 20,000 connects a second).
        let pause =
            (begun.elapsed() / 20).clamp(Duration::from_millis(1), Duration::from_millis(10));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = health.changed() => {}
        }
    }
}
