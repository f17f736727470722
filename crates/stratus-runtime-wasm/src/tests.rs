//! The runtime against the committed test component (`crates/stratus/tests/fixtures/wasm-hello`,
//! source beside it in `wasm-guest`): compile and cache, per-request instances, limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use stratus_core::{
    Build, FunctionName, FunctionSpec, Health, Limits, RuntimeKind, Scaling, VersionNumber,
};
use stratus_runtime::{Body, CodeCache, Instance, LogSink, Runtime, RuntimeError, full_body};
use stratus_store::{LogLine, LogStream};

use crate::{EngineOptions, WasmConfig, WasmRuntime};

pub const HELLO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../stratus/tests/fixtures/wasm-hello/hello.wasm"
);

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
            .map(|l| format!("[{}] {}", l.stream.as_str(), l.line))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

struct Rig {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    code: Arc<CodeCache>,
    logs: Arc<Captured>,
    rt: WasmRuntime,
}

impl Rig {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().to_path_buf();
        let (code, logs, rt) = Self::parts(&data);
        Self {
            _tmp: tmp,
            data,
            code,
            logs,
            rt,
        }
    }

    fn parts(data: &Path) -> (Arc<CodeCache>, Arc<Captured>, WasmRuntime) {
        let blobs =
            Arc::new(stratus_store_embedded::LocalBlobStore::open(data.join("blobs")).unwrap());
        let code = Arc::new(CodeCache::new(data.join("code"), blobs, Default::default()).unwrap());
        let logs = Arc::new(Captured::default());
        let rt = WasmRuntime::new(
            code.clone(),
            logs.clone(),
            WasmConfig {
                cache_dir: data.join("wasm-cache"),
                engine: EngineOptions::default(),
            },
        )
        .unwrap();
        (code, logs, rt)
    }

    /// A fresh runtime on the same data dir, as after a restart.
    fn restart(&mut self) {
        let (code, logs, rt) = Self::parts(&self.data);
        (self.code, self.logs, self.rt) = (code, logs, rt);
    }

    /// An "unpacked artifact" holding `bytes` as `hello.wasm`.
    fn artifact(&self, digest: &str, bytes: &[u8]) -> String {
        let digest = format!("sha256:{digest:0>64}");
        let dir = self.code.dir_of(&digest);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hello.wasm"), bytes).unwrap();
        digest
    }

    async fn instance(&self, limits: Limits, env: &[(&str, &str)]) -> Arc<dyn Instance> {
        let digest = self.artifact("1", &std::fs::read(HELLO).unwrap());
        let p = self
            .rt
            .prepare(Arc::new(spec(limits, env)), VersionNumber(1), &digest)
            .await
            .unwrap();
        self.rt.start(&p, "hello-v1-test").await.unwrap()
    }
}

fn spec(limits: Limits, env: &[(&str, &str)]) -> FunctionSpec {
    FunctionSpec {
        name: FunctionName::new("hello").unwrap(),
        runtime: RuntimeKind::Wasm,
        command: vec!["hello.wasm".into()],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        limits,
        scaling: Scaling::default(),
        health: Health::default(),
        routes: vec![],
        build: Build::default(),
        events: Default::default(),
        capture: None,
    }
}

fn wasm_limits() -> Limits {
    Limits {
        concurrency: Limits::WASM_CONCURRENCY,
        memory_bytes: Some(64 * 1024 * 1024),
        timeout: Duration::from_secs(5),
        ..Limits::default()
    }
}

fn get(path: &str) -> http::Request<Body> {
    http::Request::get(path)
        .header("host", "example.test")
        .header("x-request-id", "req-1")
        .body(full_body(Bytes::new()))
        .unwrap()
}

async fn call(i: &Arc<dyn Instance>, req: http::Request<Body>) -> (u16, String) {
    let resp = i.handle(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Pooled slots are reset in place between requests (dirty pages restored, not decommitted):
/// every request must still start from the component's initial memory, however its slot was
/// used before (one after another, side by side, after a request that grew memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_starts_from_the_components_initial_state() {
    let rig = Rig::new();
    let i = rig.instance(wasm_limits(), &[]).await;
    let fresh = (200, r#"{"hits":1,"dirty":0}"#.to_string());
    for _ in 0..20 {
        assert_eq!(call(&i, get("/state")).await, fresh);
    }
    for _ in 0..3 {
        let side_by_side: Vec<_> = (0..16)
            .map(|_| {
                let i = i.clone();
                tokio::spawn(async move { call(&i, get("/state")).await })
            })
            .collect();
        for r in side_by_side {
            assert_eq!(r.await.unwrap(), fresh);
        }
        assert_eq!(call(&i, get("/alloc?mb=8")).await.0, 200);
    }
    assert_eq!(call(&i, get("/state")).await, fresh);
}

#[tokio::test]
async fn serves_env_and_logs_per_request() {
    let rig = Rig::new();
    let i = rig.instance(wasm_limits(), &[("GREETING", "hi")]).await;
    assert_eq!(
        call(&i, get("/")).await,
        (200, r#"{"message":"hello from wasm"}"#.into())
    );
    let (status, env) = call(&i, get("/env")).await;
    let env: serde_json::Value = serde_json::from_str(&env).unwrap();
    assert_eq!(status, 200);
    assert_eq!(env["GREETING"], "hi");
    assert_eq!(env["STRATUS_FUNCTION"], "hello");
    assert_eq!(env["STRATUS_VERSION"], "1");
    assert_eq!(call(&i, get("/log")).await.0, 200);
    let lines = rig.logs.0.lock().unwrap();
    let out = lines
        .iter()
        .find(|l| l.line == "hello on stdout")
        .expect("stdout line");
    assert_eq!(
        (out.stream, out.instance.as_str()),
        (LogStream::Stdout, "hello-v1-test")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.line == "hello on stderr" && l.stream == LogStream::Stderr)
    );
}

#[tokio::test]
async fn compiles_once_and_reuses_the_cache_after_a_restart() {
    let mut rig = Rig::new();
    let i = rig.instance(wasm_limits(), &[]).await;
    assert_eq!(call(&i, get("/")).await.0, 200);
    assert!(
        rig.logs.text().contains("compiled hello.wasm"),
        "{}",
        rig.logs.text()
    );
    let files: Vec<_> = std::fs::read_dir(rig.data.join("wasm-cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mtime = std::fs::metadata(&files[0]).unwrap().modified().unwrap();
    drop(i);

    rig.restart();
    let i = rig.instance(wasm_limits(), &[]).await;
    assert_eq!(call(&i, get("/")).await.0, 200);
    let text = rig.logs.text();
    assert!(
        !text.contains("compiled hello.wasm"),
        "recompiled after restart:\n{text}"
    );
    assert!(text.contains("loaded from cache"), "{text}");
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().modified().unwrap(),
        mtime
    );

    // A file wasmtime does not accept (another version's, or damaged) is compiled again rather
    // than trusted. Replaced by rename, as the runtime itself writes: truncating a mapped file in
    // place would fault whoever still runs code from it.
    drop(i);
    let tmp = files[0].with_extension("tmp");
    std::fs::write(&tmp, b"garbage").unwrap();
    std::fs::rename(&tmp, &files[0]).unwrap();
    rig.restart();
    let i = rig.instance(wasm_limits(), &[]).await;
    assert_eq!(call(&i, get("/")).await.0, 200);
    assert!(
        rig.logs.text().contains("compiling again"),
        "{}",
        rig.logs.text()
    );
}

#[tokio::test]
async fn the_same_component_in_many_functions_is_compiled_and_loaded_once() {
    let rig = Rig::new();
    let bytes = std::fs::read(HELLO).unwrap();
    let mut instances = Vec::new();
    for (n, digest) in ["a1", "b2", "c3"].iter().enumerate() {
        // Different artifacts (each function's own folder and manifest), the same component.
        let digest = rig.artifact(digest, &bytes);
        let mut s = spec(wasm_limits(), &[]);
        s.name = FunctionName::new(format!("f{n}")).unwrap();
        let p = rig
            .rt
            .prepare(Arc::new(s), VersionNumber(1), &digest)
            .await
            .unwrap();
        let i = rig.rt.start(&p, &format!("f{n}-v1")).await.unwrap();
        assert_eq!(call(&i, get("/")).await.0, 200);
        instances.push(i);
    }
    let text = rig.logs.text();
    assert_eq!(text.matches("compiled hello.wasm").count(), 1, "{text}");
    assert_eq!(text.matches("loaded from cache").count(), 1, "{text}");
    assert_eq!(rig.rt.loaded_components(), 1);
    assert_eq!(
        std::fs::read_dir(rig.data.join("wasm-cache"))
            .unwrap()
            .count(),
        1
    );
    // A different component is its own compile.
    let mut other = bytes.clone();
    // A trailing custom section named "xtra", empty.
    other.extend_from_slice(b"\x00\x05\x04xtra");
    let digest = rig.artifact("d4", &other);
    let p = rig
        .rt
        .prepare(
            Arc::new(spec(wasm_limits(), &[])),
            VersionNumber(2),
            &digest,
        )
        .await
        .unwrap();
    let i = rig.rt.start(&p, "hello-v2").await.unwrap();
    assert_eq!(call(&i, get("/")).await.0, 200);
    assert_eq!(rig.logs.text().matches("compiled hello.wasm").count(), 2);
    assert_eq!(rig.rt.loaded_components(), 2);

    // Idle (no instance), a recently used component stays loaded: the next start only
    // instantiates.
    drop((instances, i));
    assert_eq!(rig.rt.loaded_components(), 2);
    let i = rig.rt.start(&p, "hello-v2-again").await.unwrap();
    assert_eq!(call(&i, get("/")).await.0, 200);
    assert_eq!(rig.logs.text().matches("loaded from cache").count(), 2);
}

#[tokio::test]
async fn refuses_what_is_not_a_wasi_http_component() {
    let rig = Rig::new();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "a",
            b"#!/bin/sh\necho hi\n".to_vec(),
            "not a WebAssembly binary",
        ),
        (
            "b",
            wat::parse_str("(module)").unwrap(),
            "core WebAssembly module, not a component",
        ),
        (
            "c",
            wat::parse_str("(component)").unwrap(),
            "does not export wasi:http/incoming-handler; it exports nothing",
        ),
        (
            "d",
            wat::parse_str(r#"(component (import "acme:db/query" (func)))"#).unwrap(),
            "does not export wasi:http/incoming-handler",
        ),
    ];
    for (digest, bytes, expected) in cases {
        let digest = rig.artifact(digest, &bytes);
        let err = rig
            .rt
            .prepare(
                Arc::new(spec(wasm_limits(), &[])),
                VersionNumber(1),
                &digest,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, RuntimeError::PrepareFailed(m) if m.contains(expected)),
            "{digest}: {err}"
        );
    }
    let mut missing = spec(wasm_limits(), &[]);
    missing.command = vec!["nope.wasm".into()];
    let digest = rig.artifact("e", b"");
    let err = rig
        .rt
        .prepare(Arc::new(missing), VersionNumber(1), &digest)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not in the deployed folder"),
        "{err}"
    );
}

#[tokio::test]
async fn a_busy_loop_times_out_without_blocking_other_requests() {
    let rig = Rig::new();
    let limits = Limits {
        timeout: Duration::from_millis(500),
        ..wasm_limits()
    };
    let i = rig.instance(limits, &[]).await;
    let started = Instant::now();
    let looping = tokio::spawn({
        let i = i.clone();
        async move { call(&i, get("/loop")).await }
    });
    // While the guest spins, the same (multi-threaded or not) executor keeps serving.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    assert_eq!(call(&i, get("/")).await.0, 200);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    let (status, body) = looping.await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains(r#""code":"timeout""#), "{body}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(900),
        "{took:?}"
    );
    // A guest waiting in the host (no wasm running, so no epoch check) is cut too.
    let t = Instant::now();
    assert_eq!(call(&i, get("/sleep?ms=60000")).await.0, 504);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(
        rig.logs
            .text()
            .contains("request req-1 failed: `hello` did not respond within")
    );
}

#[tokio::test]
async fn guests_stay_on_the_callers_thread_until_they_compute_through_an_epoch_tick() {
    let rig = Rig::new();
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..wasm_limits()
    };
    let i = rig.instance(limits, &[]).await;
    for _ in 0..20 {
        assert_eq!(call(&i, get("/")).await.0, 200);
    }
    // A quick request that spans a tick by chance (a preempted thread) is moved too; most are not.
    let quick = rig.rt.offloaded_requests();
    assert!(quick < 10, "{quick} of 20 quick requests were moved");
    let (status, body) = call(&i, get("/loop")).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(
        rig.rt.offloaded_requests(),
        quick + 1,
        "the spinning guest moved to the guest threads once"
    );
}

#[tokio::test]
async fn memory_past_the_limit_is_a_500_and_a_log_line() {
    let rig = Rig::new();
    let i = rig.instance(wasm_limits(), &[]).await;
    let (status, body) = call(&i, get("/alloc?mb=8")).await;
    assert_eq!((status, body.as_str()), (200, "allocated 8388608 bytes"));
    let (status, body) = call(&i, get("/alloc?mb=100")).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("memory limit exceeded"), "{body}");
    let logs = rig.logs.text();
    assert!(
        logs.contains("request req-1 failed: `hello` failed: memory limit exceeded")
            && logs.contains("the limit is 67108864 bytes"),
        "{logs}"
    );
    // The next request has a fresh store.
    assert_eq!(call(&i, get("/")).await.0, 200);
}

#[tokio::test]
async fn a_trap_is_a_500_with_the_message_logged() {
    let rig = Rig::new();
    let i = rig.instance(wasm_limits(), &[]).await;
    let (status, body) = call(&i, get("/trap")).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains(r#""code":"internal""#) && body.contains("trapped"),
        "{body}"
    );
    let logs = rig.logs.text();
    assert!(
        logs.contains("[stderr] the guest panicked on purpose"),
        "{logs}"
    );
    assert!(
        logs.contains("request req-1 failed: `hello` trapped: "),
        "{logs}"
    );
    assert!(logs.contains("unreachable"), "{logs}");
}

#[tokio::test]
async fn a_trap_after_the_client_went_away_says_so() {
    let rig = Rig::new();
    let i = rig.instance(wasm_limits(), &[]).await;
    // The guest writes a chunk every 20 ms and panics when a write fails; the caller reads the
    // first chunk and goes away.
    let mut body = i.handle(get("/stream?n=100")).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "chunk 0\n");
    drop(body);
    let mut waited = 0;
    while !rig.logs.text().contains("request req-1 failed") && waited < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    let logs = rig.logs.text();
    assert!(
        logs.contains("request req-1 failed: `hello` trapped after the client went away"),
        "{logs}"
    );
    // A guest that traps on its own while the client waits is still a plain trap.
    assert_eq!(call(&i, get("/trap")).await.0, 500);
    let logs = rig.logs.text();
    assert_eq!(
        logs.matches("trapped after the client went away").count(),
        1,
        "{logs}"
    );
}

#[tokio::test]
async fn outbound_http_is_denied_unless_allowed() {
    // A local upstream to call.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(full_body("from upstream")))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(wasmtime_wasi_http::io::TokioIo::new(s), svc),
            );
        }
    });
    let url = format!("/outbound?url=http://127.0.0.1:{port}/x");

    let rig = Rig::new();
    let denied = rig.instance(wasm_limits(), &[]).await;
    let (status, body) = call(&denied, get(&url)).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    assert!(
        rig.logs
            .text()
            .contains("denied: not in allowed_outbound_hosts")
    );

    let rig = Rig::new();
    let limits = Limits {
        allowed_outbound_hosts: vec![format!("http://127.0.0.1:{port}")],
        ..wasm_limits()
    };
    let allowed = rig.instance(limits, &[]).await;
    let (status, body) = call(&allowed, get(&url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, r#"{"status":200,"body":"from upstream"}"#);
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let rig = Rig::new();
    let i = rig.instance(wasm_limits(), &[]).await;
    // A request body that arrives in pieces, the last one only after the first came back.
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, stratus_runtime::BoxError>>(4);
    let body = http_body_util::StreamBody::new(tokio_stream(rx)).boxed_unsync();
    let req = http::Request::post("/echo")
        .header("host", "x")
        .header("content-type", "text/plain")
        .body(body)
        .unwrap();
    tx.send(Ok(http_body::Frame::data(Bytes::from("first "))))
        .await
        .unwrap();
    let resp = i.handle(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/plain");
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first ");
    tx.send(Ok(http_body::Frame::data(Bytes::from("second"))))
        .await
        .unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");

    // A response written over time arrives as it is written.
    let t = Instant::now();
    let mut body = i.handle(get("/stream?n=10")).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "chunk 0\n");
    assert!(
        t.elapsed() < Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(rest.ends_with(b"chunk 9\n"));
}

/// An mpsc receiver as a `Stream` (without pulling in tokio-stream).
fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn a_body_with_a_length_echoes_whole() {
    let rig = Rig::new();
    let i = rig.instance(wasm_limits(), &[]).await;
    let req = http::Request::post("/echo")
        .header("host", "x")
        .header("content-length", "100000")
        .body(full_body(vec![b'x'; 100_000]))
        .unwrap();
    let (status, body) = call(&i, req).await;
    assert_eq!((status, body.len()), (200, 100_000), "{}", rig.logs.text());
}
