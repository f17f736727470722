//! The shipped node and python bootstraps against the Runtime API, with real interpreters.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::{Value, json};
use stratus_core::{
    Build, EventSpec, FunctionName, FunctionSpec, Health, Limits, RuntimeKind, Scaling,
    VersionNumber,
};
use stratus_runtime::{
    Body, CodeCache, DirectEvent, Instance, LogSink, PreparedVersion, Runtime, full_body,
};
use stratus_runtime_lambda::LambdaRuntime;
use stratus_store::LogLine;
use stratus_store_embedded::LocalBlobStore;

#[derive(Default)]
struct Lines(Mutex<Vec<String>>);
impl LogSink for Lines {
    fn emit(&self, line: LogLine) {
        self.0.lock().unwrap().push(line.line);
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    runtime: LambdaRuntime,
    logs: Arc<Lines>,
    dir: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = Arc::new(LocalBlobStore::open(tmp.path().join("blobs")).unwrap());
    let code =
        Arc::new(CodeCache::new(tmp.path().join("code"), blobs, Default::default()).unwrap());
    let logs = Arc::new(Lines::default());
    let runtime = LambdaRuntime::new(code, logs.clone(), &tmp.path().join("bootstrap")).unwrap();
    let dir = tmp.path().join("fn");
    std::fs::create_dir_all(&dir).unwrap();
    Fixture {
        _tmp: tmp,
        runtime,
        logs,
        dir,
    }
}

fn prepared(f: &Fixture, runtime: RuntimeKind, handler: &str) -> PreparedVersion {
    let spec = FunctionSpec {
        name: FunctionName::new("t").unwrap(),
        runtime,
        command: vec![
            if runtime == RuntimeKind::Node {
                "node"
            } else {
                "python3"
            }
            .into(),
        ],
        env: BTreeMap::new(),
        limits: Limits {
            timeout: Duration::from_secs(5),
            concurrency: 1,
            ..Limits::default()
        },
        scaling: Scaling::default(),
        health: Health {
            path: None,
            startup_timeout: Duration::from_secs(20),
        },
        routes: vec![],
        build: Build::default(),
        events: EventSpec {
            handler: Some(handler.into()),
            ..EventSpec::default()
        },
        capture: None,
    };
    PreparedVersion {
        spec: Arc::new(spec),
        version: VersionNumber(1),
        dir: f.dir.clone(),
    }
}

async fn call(i: &Arc<dyn Instance>, req: http::Request<Body>) -> (u16, http::HeaderMap, Value) {
    let r = i.handle(req).await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

fn get(path: &str) -> http::Request<Body> {
    http::Request::get(path)
        .header("x-request-id", format!("rid{}", path.len()))
        .body(full_body(""))
        .unwrap()
}

#[tokio::test]
async fn node_bootstrap_serves_events_and_reports_errors() {
    let f = fixture();
    std::fs::write(
        f.dir.join("index.js"),
        r#"exports.handler = async (event, context) => {
            if (event.rawPath === "/fail") throw new RangeError("nope");
            console.log("seen", event.rawPath);
            return { path: event.rawPath, q: event.queryStringParameters, id: context.awsRequestId, event: event.rawPath ? undefined : event };
        };"#,
    )
    .unwrap();
    let i = f
        .runtime
        .start(&prepared(&f, RuntimeKind::Node, "index.handler"), "i1")
        .await
        .unwrap();
    let (s, _, v) = call(&i, get("/a?x=1")).await;
    assert_eq!(
        (s, &v),
        (200, &json!({"path": "/a", "q": {"x": "1"}, "id": "rid6"}))
    );
    let (s, h, v) = call(&i, get("/fail")).await;
    assert_eq!(s, 502);
    assert_eq!(h["x-stratus-function-error"], "RangeError");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("RangeError: nope"),
        "{v}"
    );
    // A direct event is the payload itself.
    let mut req = http::Request::post("/")
        .body(full_body(r#"{"k": 2}"#))
        .unwrap();
    req.extensions_mut()
        .insert(DirectEvent { id: "ev-1".into() });
    let (s, _, v) = call(&i, req).await;
    assert_eq!(
        (s, &v["event"], &v["id"]),
        (200, &json!({"k": 2}), &json!("ev-1"))
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = f.logs.0.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.starts_with("rid6\tINFO\tseen /a")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("rid5") && l.contains("at ")),
        "stack logged: {lines:#?}"
    );
    i.stop(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn python_bootstrap_serves_events_and_fails_to_start_with_the_reason() {
    let f = fixture();
    std::fs::write(
        f.dir.join("main.py"),
        "import asyncio\nasync def handler(event, context):\n    await asyncio.sleep(0)\n    print('seen', event.get('rawPath'))\n    return {'statusCode': 202, 'body': context.aws_request_id}\n",
    )
    .unwrap();
    let i = f
        .runtime
        .start(&prepared(&f, RuntimeKind::Python, "main.handler"), "i1")
        .await
        .unwrap();
    let r = i.handle(get("/p")).await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "rid2");
    i.stop(Duration::from_secs(2)).await;

    let err = f
        .runtime
        .start(&prepared(&f, RuntimeKind::Python, "main.nothere"), "i2")
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("has no function \"nothere\""),
        "{err}"
    );
    std::fs::write(f.dir.join("main.py"), "def handler(:\n").unwrap();
    let err = f
        .runtime
        .start(&prepared(&f, RuntimeKind::Python, "main.handler"), "i3")
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("Runtime.UserCodeSyntaxError"),
        "{err}"
    );
}
