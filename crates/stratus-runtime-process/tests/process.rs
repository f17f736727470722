//! The process runtime against real child processes (python3, sh).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use stratus_core::{
    Build, FunctionName, FunctionSpec, Health, Limits, RuntimeKind, Scaling, VersionNumber,
};
use stratus_runtime::{InstanceHealth, LogSink, PreparedVersion, empty_body};
use stratus_store::LogLine;

#[derive(Default)]
struct Captured(Mutex<Vec<LogLine>>);
impl LogSink for Captured {
    fn emit(&self, line: LogLine) {
        self.0.lock().unwrap().push(line);
    }
}

const SERVER: &str = r#"
import http.server, os, subprocess, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s %s %s" % (self.path, os.environ.get("GREETING"), os.environ.get("STRATUS_VERSION"))).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
if os.environ.get("FORK_CHILD"):
    child = subprocess.Popen(["sleep", "300"])
    open("child.pid", "w").write(str(child.pid))
print("starting on", os.environ["PORT"], flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn prepared(dir: &std::path::Path, command: &[&str], env: &[(&str, &str)]) -> PreparedVersion {
    let spec = FunctionSpec {
        name: FunctionName::new("t").unwrap(),
        runtime: RuntimeKind::Process,
        command: command.iter().map(|s| s.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        limits: Limits::default(),
        scaling: Scaling::default(),
        health: Health {
            path: None,
            startup_timeout: Duration::from_secs(5),
        },
        routes: vec![],
        build: Build::default(),
        events: Default::default(),
        capture: None,
    };
    PreparedVersion {
        spec: Arc::new(spec),
        version: VersionNumber(3),
        dir: dir.to_path_buf(),
    }
}

async fn start(
    p: &PreparedVersion,
    logs: Arc<Captured>,
) -> Result<Arc<dyn stratus_runtime::Instance>, stratus_runtime::RuntimeError> {
    use stratus_runtime::Runtime;
    let blobs =
        Arc::new(stratus_store_embedded::LocalBlobStore::open(p.dir.join(".blobs")).unwrap());
    let code = Arc::new(
        stratus_runtime::CodeCache::new(p.dir.join(".code"), blobs, Default::default()).unwrap(),
    );
    stratus_runtime_process::ProcessRuntime::new(code, logs)
        .start(p, "inst-1")
        .await
}

fn pid_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn serves_on_port_with_env_and_captures_output() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.py"), SERVER).unwrap();
    let logs = Arc::new(Captured::default());
    let p = prepared(dir.path(), &["python3", "server.py"], &[("GREETING", "hi")]);
    let inst = start(&p, logs.clone()).await.unwrap();
    let resp = inst
        .handle(http::Request::get("/a/b?x=1").body(empty_body()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"/a/b?x=1 hi 3");
    inst.stop(Duration::from_secs(2)).await;
    assert!(matches!(
        *inst.health().borrow(),
        InstanceHealth::Exited { .. }
    ));
    let lines = logs.0.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l.line.starts_with("starting on") && l.instance == "inst-1" && l.version == 3),
        "{lines:?}"
    );
}

#[tokio::test]
async fn stop_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.py"), SERVER).unwrap();
    let p = prepared(
        dir.path(),
        &["python3", "server.py"],
        &[("FORK_CHILD", "1")],
    );
    let inst = start(&p, Arc::default()).await.unwrap();
    let child: i32 = std::fs::read_to_string(dir.path().join("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pid_alive(child));
    inst.stop(Duration::from_secs(2)).await;
    let mut gone = false;
    for _ in 0..100 {
        if !pid_alive(child) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the instance's child process {child} outlived it");
}

#[tokio::test]
async fn missing_command_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = prepared(dir.path(), &["no-such-program-xyz"], &[]);
    let err = start(&p, Arc::default()).await.err().unwrap().to_string();
    assert!(err.contains("`no-such-program-xyz` not found"), "{err}");
}

#[tokio::test]
async fn exit_at_start_quotes_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let p = prepared(
        dir.path(),
        &["sh", "-c", "echo 'cannot find module express' >&2; exit 3"],
        &[],
    );
    let err = start(&p, Arc::default()).await.err().unwrap().to_string();
    assert!(err.contains("exited with code 3"), "{err}");
    assert!(err.contains("cannot find module express"), "{err}");
}

#[tokio::test]
async fn never_opening_the_port_times_out_and_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = prepared(
        dir.path(),
        &["sh", "-c", "echo waiting >&2; exec sleep 60"],
        &[],
    );
    Arc::make_mut(&mut p.spec).health.startup_timeout = Duration::from_millis(300);
    let err = start(&p, Arc::default()).await.err().unwrap().to_string();
    assert!(err.contains("did not open port"), "{err}");
    assert!(err.contains("waiting"), "{err}");
}
