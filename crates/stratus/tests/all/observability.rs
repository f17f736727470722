//! Observability as an operator sees it: request records searched from the CLI and the API,
//! `/metrics` as Prometheus reads it, traces as an OTLP collector receives them, and the
//! global view.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::harness::{App, Server, eventually, http};

fn entries(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn requests_of(v: &[Value]) -> Vec<&Value> {
    v.iter().filter(|e| e["kind"] == "request").collect()
}

async fn records(s: &Server, args: &[&str], want: usize) -> Vec<Value> {
    let mut all = vec!["logs", "echo", "--json"];
    all.extend_from_slice(args);
    eventually(Duration::from_secs(10), || async {
        let out = s.cli(&all).ok().stdout();
        let e = entries(&out);
        (requests_of(&e).len() == want).then_some(e)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "expected {want} records for {args:?}, got:\n{}",
            s.cli(&all).stdout()
        )
    })
}

#[tokio::test]
async fn request_records_metrics_and_the_global_view() {
    let s = Server::start();
    let app = App::fixture("echo");
    app.edit_manifest("timeout = \"10s\"", "timeout = \"3s\"");
    app.edit_manifest("concurrency = 10", "concurrency = 1");
    s.deploy(&app.dir).ok();

    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = http()
        .get(format!("{}/fn/echo/hello", s.gw))
        .header("x-request-id", "obs-1")
        .header("traceparent", incoming)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body_len = r.bytes().await.unwrap().len() as u64;
    for _ in 0..3 {
        assert_eq!(s.get("/fn/echo/").await.status(), 200);
    }
    // Two at once on a concurrency-1 function: the second waits for a new instance to start
    // (a freed slot goes to a waiting request at once, so the first must outlast that start, on
    // a loaded machine too, for the second to be the one that pays for it).
    let (a, b) = tokio::join!(
        s.get("/fn/echo/slow?ms=1500"),
        s.get("/fn/echo/slow?ms=1500")
    );
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    // Past the 3 s timeout: a 504 from the platform.
    assert_eq!(s.get("/fn/echo/slow?ms=5000").await.status(), 504);

    // One request by id, with every field of its record.
    let e = records(&s, &["--request-id", "obs-1"], 1).await;
    let r = requests_of(&e)[0];
    assert_eq!(r["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        (r["function"].as_str(), r["version"].as_u64()),
        (Some("echo"), Some(1))
    );
    assert_eq!(
        (r["method"].as_str(), r["path"].as_str()),
        (Some("GET"), Some("/fn/echo/hello"))
    );
    assert_eq!(
        (r["status"].as_u64(), r["trigger"].as_str()),
        (Some(200), Some("http"))
    );
    assert_eq!(r["bytes_out"].as_u64(), Some(body_len));
    assert!(r["duration_us"].as_u64().unwrap() > 0);
    assert!(
        r["instance"].as_str().unwrap().starts_with("echo-v1-"),
        "{r}"
    );
    assert!(r.get("error").is_none(), "{r}");

    // Errors by status class: only the timeout, named as such.
    let e = records(&s, &["--status", "5xx"], 1).await;
    let t = requests_of(&e)[0];
    assert_eq!(
        (t["status"].as_u64(), t["error"].as_str()),
        (Some(504), Some("timeout"))
    );
    // By trace id, by text, by time.
    records(&s, &["--trace-id", "4bf92f3577b34da6a3ce929d0e0e4736"], 1).await;
    let slow = records(&s, &["--grep", "SLOW"], 3).await;
    let cold: Vec<_> = requests_of(&slow)
        .into_iter()
        .filter(|r| r["init_us"].as_u64().is_some_and(|i| i > 0))
        .collect();
    assert_eq!(
        cold.len(),
        1,
        "exactly one request paid for a start: {slow:?}"
    );
    assert!(cold[0]["queue_us"].as_u64().unwrap() >= cold[0]["init_us"].as_u64().unwrap() / 2);
    records(&s, &["--since", "1h", "--status", "2xx"], 6).await;
    records(&s, &["--until", "1h", "--status", "2xx"], 0).await;
    // Human output: one line per request with its ids.
    let human = s.cli(&["logs", "echo", "--status", "504"]).ok().stdout();
    assert!(
        human.contains(" 504 ") && human.contains("error=timeout"),
        "{human}"
    );

    // The API: one record with its lines, and a clear 404 / 400.
    let (code, rec) = s.api_json("/requests/obs-1").await;
    assert_eq!(code, 200, "{rec}");
    assert_eq!(rec["request_id"], "obs-1");
    assert!(rec["lines"].is_array());
    let (code, _) = s.api_json("/requests/nope").await;
    assert_eq!(code, 404);
    let (code, body) = s.api_json("/requests?status=7xx").await;
    assert_eq!(code, 400, "{body}");
    let bad = s.cli(&["logs", "echo", "--since", "yesterday"]);
    assert_ne!(bad.code(), 0);
    assert!(bad.stderr().contains("since"), "{}", bad.stderr());

    // Metrics: Prometheus text with the counts of what happened, no token needed.
    let m = http()
        .get(format!("{}/metrics", s.api))
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    assert!(
        m.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = m.text().await.unwrap();
    for want in [
        r#"faas_invocations_total{faas_name="echo",faas_version="1",status_class="2xx"} 6"#,
        r#"faas_invocations_total{faas_name="echo",faas_version="1",status_class="5xx"} 1"#,
        r#"faas_timeouts_total{faas_name="echo",faas_version="1"} 1"#,
        r#"faas_coldstarts_total{faas_name="echo",faas_version="1"} 1"#,
        r#"faas_invoke_duration_seconds_count{faas_name="echo",faas_version="1"} 7"#,
        r#"stratus_instances{faas_name="echo",faas_version="1",state="ready"}"#,
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // The global view: the same numbers for a window, per function and overall.
    let (code, sum) = s.api_json("/summary?window=5m").await;
    assert_eq!(code, 200, "{sum}");
    let echo = &sum["functions"][0];
    assert_eq!(echo["function"], "echo");
    assert_eq!(
        (echo["requests"].as_u64(), echo["errors"].as_u64()),
        (Some(7), Some(1))
    );
    assert_eq!(echo["cold_starts"].as_u64(), Some(1));
    assert!(echo["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(
        echo["p99_ms"].as_f64().unwrap() >= 1000.0,
        "the timeout is the slowest: {echo}"
    );
    assert_eq!(sum["overall"]["requests"].as_u64(), Some(7));
    let (code, _) = s.api_json("/summary?window=soon").await;
    assert_eq!(code, 400);
    let top = s.cli(&["top", "--once", "--window", "5m"]).ok().stdout();
    let row = top
        .lines()
        .find(|l| l.starts_with("echo "))
        .unwrap_or_else(|| panic!("{top}"));
    assert!(row.contains("14.3%"), "1 error in 7: {row}");
    assert!(top.lines().any(|l| l.starts_with("TOTAL")), "{top}");
}

#[tokio::test]
async fn metrics_can_require_the_token() {
    let s = Server::start_with(&["--metrics-require-token"]);
    let open = http()
        .get(format!("{}/metrics", s.api))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 401);
    let with = http()
        .get(format!("{}/metrics", s.api))
        .bearer_auth(s.token())
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 200);
}

/// A stand-in OTLP/HTTP collector: it decodes what it receives with the official messages.
async fn collector() -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("valid OTLP protobuf");
                let _ = tx.send(req);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), rx)
}

fn attr(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.clone())
}

#[tokio::test]
async fn traces_are_exported_over_otlp_with_faas_attributes() {
    let (endpoint, mut rx) = collector().await;
    let s = Server::start_with(&["--otlp-endpoint", &endpoint]);
    let app = App::fixture("echo");
    s.deploy(&app.dir).ok();
    let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = http()
        .get(format!("{}/fn/echo/x", s.gw))
        .header("traceparent", incoming)
        .header("tracestate", "congo=t61rcWkgMzE")
        .header("x-request-id", "traced-1")
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    let seen_by_function = body["headers"]["traceparent"].as_str().unwrap().to_string();
    assert_eq!(body["headers"]["tracestate"], "congo=t61rcWkgMzE");

    let mut spans: Vec<Span> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while spans.iter().all(|s| s.kind != 2) {
        let req = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("spans within 10 s")
            .unwrap();
        let rs = &req.resource_spans[0];
        let service = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        spans.extend(rs.scope_spans.iter().flat_map(|s| s.spans.clone()));
    }
    let trace_id = hex::decode("0af7651916cd43dd8448eb211c80319c").unwrap();
    assert!(spans.iter().all(|s| s.trace_id == trace_id), "one trace");
    let server = spans.iter().find(|s| s.kind == 2).unwrap();
    assert_eq!(
        server.parent_span_id,
        hex::decode("b7ad6b7169203331").unwrap(),
        "continues the caller's span"
    );
    assert_eq!(server.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(
        attr(server, "faas.name"),
        Some(AnyValue::StringValue("echo".into()))
    );
    assert_eq!(
        attr(server, "faas.version"),
        Some(AnyValue::StringValue("1".into()))
    );
    assert_eq!(
        attr(server, "faas.trigger"),
        Some(AnyValue::StringValue("http".into()))
    );
    assert_eq!(
        attr(server, "faas.invocation_id"),
        Some(AnyValue::StringValue("traced-1".into()))
    );
    assert_eq!(
        attr(server, "faas.coldstart"),
        Some(AnyValue::BoolValue(false))
    );
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(AnyValue::IntValue(200))
    );
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for want in ["route", "invoke echo"] {
        assert!(names.contains(&want), "{names:?}");
    }
    for child in spans
        .iter()
        .filter(|s| ["route", "invoke echo"].contains(&s.name.as_str()))
    {
        assert_eq!(
            child.parent_span_id, server.span_id,
            "{} under the server span",
            child.name
        );
        assert!(child.start_time_unix_nano >= server.start_time_unix_nano);
        assert!(child.end_time_unix_nano <= server.end_time_unix_nano);
    }
    // The function's parent is the invoke span, so its own spans nest under it.
    let invoke = spans.iter().find(|s| s.name == "invoke echo").unwrap();
    let parent_seen = seen_by_function.split('-').nth(2).unwrap();
    assert_eq!(hex::encode(&invoke.span_id), parent_seen);

    // The exporter's own counters (counted once the collector's answer is read).
    let want = spans.len() as u64;
    let exported = eventually(Duration::from_secs(5), || async {
        let text = http()
            .get(format!("{}/metrics", s.api))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let n: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("stratus_spans_exported_total "))?
            .parse()
            .ok()?;
        (n >= want).then_some(n)
    })
    .await;
    assert!(
        exported.is_some(),
        "fewer than {want} spans counted as exported"
    );

    // That request found a free slot: no queue span. Requests that wait for one (12 at once
    // against the warm instance's 10 slots, each held 2 s) show the wait, with any cold start
    // inside it: the 11th, and the 12th unless a new instance was ready when it came.
    assert!(!names.contains(&"queue"), "{names:?}");
    let burst: Vec<_> = (0..12)
        .map(|_| {
            let url = format!("{}/fn/echo/slow?ms=2000", s.gw);
            tokio::spawn(async move { http().get(url).send().await.unwrap().status() })
        })
        .collect();
    for r in burst {
        assert_eq!(r.await.unwrap(), 200);
    }
    let mut spans: Vec<Span> = Vec::new();
    while spans.iter().filter(|s| s.kind == 2).count() < 12 {
        let req = tokio::time::timeout_at(deadline + Duration::from_secs(10), rx.recv())
            .await
            .expect("the burst's spans")
            .unwrap();
        spans.extend(
            req.resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|s| s.spans.clone()),
        );
    }
    let by_id = |id: &[u8]| spans.iter().find(|s| s.span_id == id);
    let queues: Vec<&Span> = spans.iter().filter(|s| s.name == "queue").collect();
    assert!(
        (1..=2).contains(&queues.len()),
        "{} of 12 requests show a queue span",
        queues.len()
    );
    for q in &queues {
        assert_eq!(by_id(&q.parent_span_id).map(|p| p.kind), Some(2));
    }
    for cold in spans.iter().filter(|s| s.name == "cold_start") {
        let parent = by_id(&cold.parent_span_id).expect("the cold start's parent");
        assert_eq!(parent.name, "queue");
    }
}

/// A webhook that fails its first call and records every body it gets.
async fn flaky_webhook() -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (tx, calls) = (tx.clone(), calls.clone());
            async move {
                let _ = tx.send(serde_json::from_slice::<Value>(&body).unwrap());
                if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

#[tokio::test]
async fn alarms_fire_and_resolve_through_the_webhook_with_retries() {
    let (hook, mut calls) = flaky_webhook().await;
    let s = Server::start();
    let app = App::fixture("echo");
    app.edit_manifest("GREETING = \"hi\"", "GREETING = \"hi\"\nFAIL = \"1\"");
    s.deploy(&app.dir).ok();

    // Bad rules are refused with the reason, and nothing is created.
    for (args, why) in [
        (
            vec!["--metric", "nope", "--webhook", &hook],
            "unknown metric",
        ),
        (
            vec!["--metric", "error_rate", "--webhook", "https://x/"],
            "http://",
        ),
        (
            vec![
                "--metric",
                "error_rate",
                "--for",
                "soon",
                "--webhook",
                &hook,
            ],
            "invalid `for`",
        ),
    ] {
        let mut a = vec![
            "alarm",
            "create",
            "--fn",
            "echo",
            "--op",
            ">",
            "--threshold",
            "0.5",
        ];
        a.extend(args);
        let out = s.cli(&a);
        assert_ne!(out.code(), 0);
        assert!(out.stderr().contains(why), "{a:?}: {}", out.stderr());
    }
    let missing = s.cli(&[
        "alarm",
        "create",
        "--fn",
        "nope",
        "--metric",
        "error_rate",
        "--op",
        ">",
        "--threshold",
        "0.5",
        "--webhook",
        &hook,
    ]);
    assert!(missing.stderr().contains("nope"), "{}", missing.stderr());
    assert_eq!(
        s.cli(&["alarm", "list", "--json"]).ok().json(),
        serde_json::json!([])
    );

    s.cli(&[
        "alarm",
        "create",
        "--fn",
        "echo",
        "--metric",
        "error_rate",
        "--op",
        ">",
        "--threshold",
        "0.5",
        "--for",
        "1s",
        "--window",
        "3s",
        "--webhook",
        &hook,
        "--id",
        "errs",
    ])
    .ok();
    for _ in 0..5 {
        assert_eq!(s.get("/fn/echo/").await.status(), 500);
    }
    // Fired after holding for 1 s; the first delivery fails and is retried.
    let first = tokio::time::timeout(Duration::from_secs(10), calls.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first["alarm"].as_str(), first["state"].as_str()),
        (Some("errs"), Some("firing"))
    );
    assert_eq!(first["value"].as_f64(), Some(1.0));
    let retry = tokio::time::timeout(Duration::from_secs(10), calls.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retry, first, "the same notification, retried");
    let got = eventually(Duration::from_secs(5), || async {
        let a = s.cli(&["alarm", "get", "errs", "--json"]).ok().json();
        (a["notifications"][0]["delivered"] == true).then_some(a)
    })
    .await
    .expect("delivery recorded");
    assert_eq!(got["state"], "firing");
    assert_eq!(got["notifications"][0]["attempts"], 2);
    let human = s.cli(&["alarm", "list"]).ok().stdout();
    assert!(
        human.contains("errs") && human.contains("firing"),
        "{human}"
    );

    // No more errors in the 3 s window: resolved, once.
    let resolved = tokio::time::timeout(Duration::from_secs(10), calls.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resolved["state"], "resolved");
    let a = eventually(Duration::from_secs(5), || async {
        let a = s.cli(&["alarm", "get", "errs", "--json"]).ok().json();
        (a["state"] == "ok" && a["notifications"][1]["delivered"] == true).then_some(a)
    })
    .await
    .expect("resolved and delivered");
    assert_eq!(a["notifications"].as_array().unwrap().len(), 2);

    s.cli(&["alarm", "delete", "errs"]).ok();
    let gone = s.cli(&["alarm", "get", "errs"]);
    assert_ne!(gone.code(), 0);
    assert!(gone.stderr().contains("no alarm"), "{}", gone.stderr());
}

#[tokio::test]
async fn a_handler_request_record_comes_with_its_own_log_lines() {
    let s = Server::start();
    let app = App::fixture("node-handler");
    s.deploy(&app.dir).ok();
    let r = http()
        .get(format!("{}/fn/nodefn/log", s.gw))
        .header("x-request-id", "with-lines-1")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let rec = eventually(Duration::from_secs(10), || async {
        let (code, rec) = s.api_json("/requests/with-lines-1").await;
        (code == 200 && !rec["lines"].as_array().unwrap().is_empty()).then_some(rec)
    })
    .await
    .expect("the record and its line");
    let lines = rec["lines"].as_array().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l["line"].as_str().unwrap().contains("logged from /log")),
        "{rec}"
    );
    assert!(
        lines.iter().all(|l| l["request_id"] == "with-lines-1"),
        "{rec}"
    );
    // The CLI shows the record, then its lines.
    let out = s
        .cli(&["logs", "nodefn", "--request-id", "with-lines-1"])
        .ok()
        .stdout();
    let first = out.lines().next().unwrap_or_default();
    assert!(first.contains("req=with-lines-1"), "{out}");
    assert!(out.contains("logged from /log"), "{out}");
}

#[tokio::test]
async fn async_invocations_leave_records_too() {
    let s = Server::start();
    let app = App::fixture("echo");
    s.deploy(&app.dir).ok();
    let out = s
        .cli(&["invoke", "echo", "--async", "--data", "{\"n\":1}", "--json"])
        .ok()
        .json();
    let id = out["invocation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let rec = eventually(Duration::from_secs(10), || async {
        let (code, rec) = s.api_json(&format!("/requests/{id}")).await;
        (code == 200).then_some(rec)
    })
    .await
    .expect("a record of the delivery");
    assert_eq!(rec["trigger"], "async", "{rec}");
    assert_eq!(
        (rec["function"].as_str(), rec["status"].as_u64()),
        (Some("echo"), Some(200))
    );
    assert_eq!(rec["bytes_in"].as_u64(), Some(7));
    assert!(
        rec["instance"].as_str().unwrap().starts_with("echo-v1-"),
        "{rec}"
    );
    // Untraced, the delivery's trace is named after the invocation.
    assert_eq!(rec["trace_id"], id.strip_prefix("inv-").unwrap(), "{rec}");

    // A traced submit: the function sees the caller's trace (with a span of its own), and the
    // delivery's record is found by that trace id.
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = s
        .api_req(reqwest::Method::POST, "/functions/echo/invocations")
        .header("x-stratus-invocation-type", "Event")
        .header("traceparent", caller)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["invocation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = eventually(Duration::from_secs(10), || async {
        let (_, inv) = s.api_json(&format!("/invocations/{id}")).await;
        (inv["state"] == "succeeded").then_some(inv)
    })
    .await
    .expect("delivered");
    assert_eq!(done["traceparent"], caller, "{done}");
    let seen = done["result"]["headers"]["traceparent"].as_str().unwrap();
    assert!(
        seen.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && seen.ends_with("-01"),
        "{seen}"
    );
    assert_ne!(seen, caller, "the delivery is a span of its own");
    let traced = records(&s, &["--trace-id", "4bf92f3577b34da6a3ce929d0e0e4736"], 1).await;
    let rec = requests_of(&traced)[0];
    assert_eq!(rec["request_id"], id.as_str());
    assert_eq!(rec["trigger"], "async");
}
