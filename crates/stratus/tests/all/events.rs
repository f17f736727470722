//! Event functions end to end: the node and python handler runtimes, the Lambda Runtime API with
//! the official Python client, async invocation (retries, dead letters, destinations, `kill -9`)
//! and timers, all against real processes.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{App, Server, eventually, http};

const LONG: Duration = Duration::from_secs(60);

/// An edit to a fixture before a deploy that must fail.
type Change = Box<dyn Fn(&App)>;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn logs(s: &Server, f: &str) -> Vec<String> {
    let r = s
        .api_req(
            reqwest::Method::GET,
            &format!("/functions/{f}/logs?tail=2000"),
        )
        .send()
        .await
        .unwrap();
    r.text()
        .await
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["line"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Waits until a log line contains every one of `parts`.
async fn log_with(s: &Server, f: &str, parts: &[&str]) -> String {
    eventually(Duration::from_secs(15), || async {
        logs(s, f)
            .await
            .into_iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no log line of {f} with {parts:?}: {:#?}",
            futures_logs(s, f)
        )
    })
}

fn futures_logs(s: &Server, f: &str) -> String {
    s.cli(&["logs", f, "--tail", "50"]).stdout()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The HTTP payload 2.0 mapping, `context`, errors and log tagging of one handler runtime.
async fn handler_runtime_behaves(s: &Server, f: &str, handler: &str, error_type: &str) {
    let r = http()
        .post(format!("{}/fn/{f}/items/7?a=1&a=2&b=x%20y", s.gw))
        .header("cookie", "s=1; t=2")
        .header("content-type", "application/json")
        .body(r#"{"k":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-handler"], handler);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    let e = &v["event"];
    assert_eq!(e["version"], "2.0");
    assert_eq!(e["rawPath"], "/items/7");
    assert_eq!(e["rawQueryString"], "a=1&a=2&b=x%20y");
    assert_eq!(e["queryStringParameters"], json!({"a": "1,2", "b": "x y"}));
    assert_eq!(e["cookies"], json!(["s=1", "t=2"]));
    assert_eq!(e["requestContext"]["http"]["method"], "POST");
    assert_eq!(e["requestContext"]["http"]["path"], "/items/7");
    assert_eq!(e["requestContext"]["http"]["sourceIp"], "127.0.0.1");
    assert_eq!(e["requestContext"]["requestId"], rid.as_str());
    assert_eq!(e["body"], r#"{"k":1}"#);
    assert_eq!(e["isBase64Encoded"], false);
    let c = &v["context"];
    assert_eq!(c["awsRequestId"], rid.as_str());
    assert_eq!(c["functionName"], f);
    assert_eq!(c["functionVersion"], "1");
    assert!(c["invokedFunctionArn"].as_str().unwrap().contains(f));
    let remaining = c["remaining"].as_i64().unwrap();
    assert!(remaining > 0 && remaining <= 10_000, "{remaining}");

    // Any other value is a 200 JSON body.
    let r = s.get(&format!("/fn/{f}/plain")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"hello": "world", "n": [1, 2]})
    );

    // A thrown error: 502 with type and message; the stack in the log, tagged.
    let r = s.get(&format!("/fn/{f}/fail")).await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-stratus-function-error"], error_type);
    let fail_rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_error");
    assert_eq!(v["error"]["error_type"], error_type);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("{error_type}: this handler always fails")),
        "{msg}"
    );
    log_with(s, f, &[&fail_rid, "this handler always fails"]).await;

    // Output is tagged with the request it belongs to.
    let r = s.get(&format!("/fn/{f}/log")).await;
    assert_eq!(r.status(), 201);
    let log_rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    log_with(s, f, &[&log_rid, "logged from /log"]).await;

    // The instance survives all of that.
    assert_eq!(s.get(&format!("/fn/{f}/plain")).await.status(), 200);
}

#[tokio::test]
async fn node_handlers_map_http_events_errors_and_logs() {
    let s = Server::start();
    let app = App::fixture("node-handler");
    s.deploy(&app.dir).ok();
    handler_runtime_behaves(&s, "nodefn", "node", "TypeError").await;
    let r = s.get("/fn/nodefn/circular").await;
    assert_eq!(r.status(), 502);
    assert_eq!(
        r.headers()["x-stratus-function-error"],
        "Runtime.MarshalError"
    );
}

#[tokio::test]
async fn python_handlers_map_http_events_errors_and_logs() {
    let s = Server::start();
    let app = App::fixture("python-handler");
    s.deploy(&app.dir).ok();
    handler_runtime_behaves(&s, "pyfn", "python", "ValueError").await;
    let (status, v) = s.get_json("/fn/pyfn/async").await;
    assert_eq!((status, v), (200, json!({"async": true})));
    let r = s.get("/fn/pyfn/unserialisable").await;
    assert_eq!(r.status(), 502);
    assert_eq!(
        r.headers()["x-stratus-function-error"],
        "Runtime.MarshalError"
    );
}

#[tokio::test]
async fn handler_load_failures_fail_the_deploy_with_the_reason() {
    let s = Server::start();
    let node = App::fixture("node-handler");
    let py = App::fixture("python-handler");
    let cases: Vec<(&App, Change, &str)> = vec![
        (
            &node,
            Box::new(|a: &App| a.edit_manifest("index.handler", "missing.handler")),
            "cannot find module \"missing\"",
        ),
        (
            &node,
            Box::new(|a: &App| a.edit_manifest("missing.handler", "index.nothere")),
            "does not export a function \"nothere\"",
        ),
        (
            &node,
            Box::new(|a: &App| {
                a.edit_manifest("index.nothere", "index.handler");
                a.write("index.js", "exports.handler = async (e) => {\n");
            }),
            "SyntaxError",
        ),
        (
            &py,
            Box::new(|a: &App| a.edit_manifest("main.handler", "nope.handler")),
            "cannot find module \"nope\"",
        ),
        (
            &py,
            Box::new(|a: &App| a.edit_manifest("nope.handler", "main.nothere")),
            "has no function \"nothere\"",
        ),
        (
            &py,
            Box::new(|a: &App| {
                a.edit_manifest("main.nothere", "main.handler");
                a.write("main.py", "def handler(event, context)\n    return 1\n");
            }),
            "Runtime.UserCodeSyntaxError",
        ),
    ];
    for (app, change, why) in cases {
        change(app);
        let out = s.deploy(&app.dir);
        assert_eq!(out.code(), 1, "{why}: {}", out.stderr());
        assert!(out.stderr().contains("did not start"), "{}", out.stderr());
        assert!(
            out.stderr().contains(why),
            "expected {why:?} in {}",
            out.stderr()
        );
    }
    let (_, list) = {
        let r = s
            .api_req(reqwest::Method::GET, "/functions")
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(list, json!([]), "failed deploys create nothing");
}

#[tokio::test]
async fn the_official_python_runtime_interface_client_runs_unchanged() {
    let s = Server::start();
    let app = App::fixture("lambda-ric");
    s.deploy(&app.dir).ok();
    let r = s.get("/fn/ric/hello?x=1").await;
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["event"]["rawPath"], "/hello");
    assert_eq!(v["event"]["queryStringParameters"], json!({"x": "1"}));
    assert_eq!(v["requestId"], rid.as_str());
    assert_eq!(v["functionName"], "ric");
    assert!(v["remaining"].as_i64().unwrap() > 0);
    log_with(&s, "ric", &[&rid, "ric handling /hello"]).await;

    let r = s.get("/fn/ric/fail").await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["error_type"], "ValueError");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ric handler failed")
    );
    // Keeps serving after a failed invocation.
    assert_eq!(s.get("/fn/ric/again").await.status(), 200);
}

/// The workers below record what they got in a file on the host (`OUT`), which an isolated
/// instance (read-only filesystem, private /tmp) cannot write; their servers run without it.
const ISOLATION_OFF: &[(&str, &str)] = &[("STRATUS_ISOLATION", "off")];

fn worker(name: &str, out: &Path, extra_async: &str) -> App {
    let app = App::fixture("events-node");
    app.edit_manifest("name = \"worker\"", &format!("name = \"{name}\""));
    app.append_manifest(&format!(
        "{extra_async}\n[env]\nOUT = \"{}\"",
        out.display()
    ));
    app
}

async fn invocation(s: &Server, id: &str) -> Value {
    s.api_req(reqwest::Method::GET, &format!("/invocations/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn submit(s: &Server, f: &str, body: Value) -> String {
    let r = s
        .api_req(
            reqwest::Method::POST,
            &format!("/functions/{f}/invocations"),
        )
        .header("x-stratus-invocation-type", "Event")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["invocation_id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn state_of(s: &Server, id: &str, state: &str) -> Value {
    eventually(LONG, || async {
        let v = invocation(s, id).await;
        (v["state"] == state).then_some(v)
    })
    .await
    .unwrap_or_else(|| panic!("{id} never became {state}: {}", s.server_log()))
}

#[tokio::test]
async fn async_invocations_retry_dead_letter_destinations_and_redrive() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_in_with_env(&tmp.path().join("data"), ISOLATION_OFF);
    let (out, sink_out) = (
        tmp.path().join("worker.jsonl"),
        tmp.path().join("sink.jsonl"),
    );
    let sink = worker("sink", &sink_out, "");
    s.deploy(&sink.dir).ok();
    let w = worker("worker", &out, "on_failure = \"sink\"");
    s.deploy(&w.dir).ok();

    // Synchronous by default: the handler's result comes back.
    let r = s
        .api_req(reqwest::Method::POST, "/functions/worker/invocations")
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"ok": true, "got": {"n": 1}})
    );

    // Async success: recorded with its result; the handler saw the payload as the event.
    let id = submit(&s, "worker", json!({"n": 2})).await;
    let v = state_of(&s, &id, "succeeded").await;
    assert_eq!(v["result"], json!({"ok": true, "got": {"n": 2}}));
    assert_eq!(v["attempts"], 1);
    assert!(
        lines(&out)
            .iter()
            .any(|l| l["id"] == id.as_str() && l["event"] == json!({"n": 2}))
    );

    // Always failing: 1 + 1 retry, then the dead-letter list with both errors, and the
    // on_failure destination gets the record.
    let bad = submit(&s, "worker", json!({"fail": "x"})).await;
    let v = state_of(&s, &bad, "dead_lettered").await;
    assert_eq!(v["attempts"], 2);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{v}");
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("asked to fail: x"),
        "{v}"
    );
    assert_eq!(
        lines(&out)
            .iter()
            .filter(|l| l["id"] == bad.as_str())
            .count(),
        2
    );
    let record = eventually(LONG, || async {
        lines(&sink_out)
            .into_iter()
            .find(|l| l["event"]["requestContext"]["requestId"] == bad.as_str())
    })
    .await
    .expect("the on_failure destination got the record");
    assert_eq!(
        record["event"]["requestContext"]["condition"],
        "RetriesExhausted"
    );
    assert_eq!(record["event"]["requestPayload"], json!({"fail": "x"}));

    let dlq = s.cli(&["dlq", "list", "worker"]);
    dlq.ok();
    assert!(dlq.stdout().contains(&bad), "{}", dlq.stdout());
    assert!(dlq.stdout().contains("asked to fail"), "{}", dlq.stdout());
    let redrive = s.cli(&["dlq", "redrive", "worker", &bad]);
    redrive.ok();
    assert!(
        redrive.stdout().contains("redriven 1"),
        "{}",
        redrive.stdout()
    );
    eventually(LONG, || async {
        let v = invocation(&s, &bad).await;
        (v["state"] == "dead_lettered" && v["errors"].as_array().unwrap().len() == 4).then_some(())
    })
    .await
    .expect("the redriven invocation ran its attempts again");

    // The CLI.
    let out_sync = s.cli(&["invoke", "worker", "--data", r#"{"n":3}"#]);
    out_sync.ok();
    assert!(
        out_sync.stdout().contains(r#""n":3"#),
        "{}",
        out_sync.stdout()
    );
    let queued = s.cli(&[
        "invoke",
        "worker",
        "--async",
        "--data",
        r#"{"n":4}"#,
        "--json",
    ]);
    let id = queued.ok().json()["invocation_id"]
        .as_str()
        .unwrap()
        .to_string();
    state_of(&s, &id, "succeeded").await;
    let status = s.cli(&["invoke", "status", &id]);
    assert!(
        status.ok().stdout().contains("succeeded"),
        "{}",
        status.stdout()
    );
    assert_eq!(s.cli(&["invoke", "status", "inv-nope"]).code(), 3);
    assert_eq!(s.cli(&["invoke", "nosuchfn", "--async"]).code(), 3);
}

#[tokio::test]
async fn async_deliveries_wait_for_capacity_instead_of_spending_attempts() {
    // Eight async deliveries at once for one instance with a wait queue of one: most find the
    // queue full. They wait for room; none spends an attempt or reaches the dead-letter list.
    // Isolation off: the worker writes a file on the host.
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_in_with_env(&tmp.path().join("data"), ISOLATION_OFF);
    let out = tmp.path().join("worker.jsonl");
    let w = worker(
        "narrow",
        &out,
        "concurrency = 8\n\n[scaling]\nmax = 1\nmax_queue = 1",
    );
    s.deploy(&w.dir).ok();
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(submit(&s, "narrow", json!({"n": n, "sleep": 200})).await);
    }
    for id in &ids {
        let v = state_of(&s, id, "succeeded").await;
        assert_eq!(v["attempts"], 1, "{v}");
        assert!(v["errors"].as_array().is_none_or(|e| e.is_empty()), "{v}");
    }
    assert_eq!(lines(&out).len(), 6);
}

#[tokio::test]
async fn acknowledged_events_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("out.jsonl");
    let mut s = Server::start_in_with_env(&data, ISOLATION_OFF);
    let w = worker("worker", &out, "concurrency = 1");
    s.deploy(&w.dir).ok();
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(submit(&s, "worker", json!({"n": n, "sleep": 150})).await);
    }
    // Most are still queued (one at a time, 150 ms each) when the server dies.
    s.kill9();
    let delivered_before = lines(&out).len();
    assert!(
        delivered_before < 20,
        "the test must kill with events pending"
    );
    let s = Server::start_in_with_env(&data, ISOLATION_OFF);
    for id in &ids {
        state_of(&s, id, "succeeded").await;
    }
    let seen: std::collections::HashSet<String> = lines(&out)
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    for id in &ids {
        assert!(
            seen.contains(id),
            "{id} was acknowledged but never delivered"
        );
    }
}

/// How many handler runs each invocation id got, from the worker's file.
fn runs_by_id(out: &Path) -> std::collections::HashMap<String, u64> {
    let mut m = std::collections::HashMap::new();
    for l in lines(out) {
        *m.entry(l["id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    m
}

async fn burst(s: &Server, f: &str, n: u64, sleep: u64) -> Vec<String> {
    use futures_util::StreamExt;
    futures_util::stream::iter(0..n)
        .map(|n| submit(s, f, json!({"n": n, "sleep": sleep})))
        .buffer_unordered(32)
        .collect()
        .await
}

#[tokio::test]
async fn concurrent_submits_are_each_durable_and_delivered_once_per_attempt() {
    // 32 submits in flight at once share the store's group commits. Every acknowledged one is
    // delivered exactly once per attempt, and none is lost when the server is killed with a
    // burst still queued.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("out.jsonl");
    let mut s = Server::start_in_with_env(&data, ISOLATION_OFF);
    let w = worker("burst", &out, "concurrency = 16\n\n[scaling]\nmax = 4");
    s.deploy(&w.dir).ok();
    let ids = burst(&s, "burst", 300, 0).await;
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 300);
    for id in &ids {
        let v = state_of(&s, id, "succeeded").await;
        assert_eq!(v["attempts"], 1, "{v}");
    }
    let runs = runs_by_id(&out);
    for id in &ids {
        assert_eq!(runs.get(id), Some(&1), "{id} ran {:?} times", runs.get(id));
    }
    assert_eq!(runs.len(), 300);

    // A second burst, slow enough that most of it is queued when the server dies.
    std::fs::write(&out, "").unwrap();
    let ids = burst(&s, "burst", 200, 40).await;
    s.kill9();
    let before = lines(&out).len();
    assert!(before < 200, "the test must kill with events pending");
    let s = Server::start_in_with_env(&data, ISOLATION_OFF);
    for id in &ids {
        state_of(&s, id, "succeeded").await;
    }
    let runs = runs_by_id(&out);
    for id in &ids {
        let attempts = invocation(&s, id).await["attempts"].as_u64().unwrap();
        let n = runs.get(id).copied().unwrap_or(0);
        assert!(
            (1..=attempts).contains(&n),
            "{id}: {n} runs for {attempts} attempts"
        );
    }
}

#[tokio::test]
async fn timers_fire_cloud_events_once_per_schedule_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("ce.jsonl");
    let mut s = Server::start_in_with_env(&data, ISOLATION_OFF);
    let app = App::fixture("events-http");
    app.append_manifest(&format!(
        "[env]\nOUT = \"{}\"\n\n[[triggers]]\ntype = \"timer\"\ncron = \"* * * * * *\"\ntimezone = \"Asia/Shanghai\"\npayload = '{{\"tick\": true}}'",
        out.display()
    ));
    s.deploy(&app.dir).ok();
    eventually(LONG, || async { (lines(&out).len() >= 3).then_some(()) })
        .await
        .expect("the timer fired");
    let first = lines(&out);
    let ce = &first[0];
    assert_eq!(ce["method"], "POST");
    assert_eq!(ce["ce"]["ce-specversion"], "1.0");
    assert_eq!(ce["ce"]["ce-type"], "stratus.timer");
    assert_eq!(ce["ce"]["ce-source"], "stratus/timer/cehttp");
    assert!(ce["ce"]["ce-id"].as_str().unwrap().starts_with("tmr-"));
    assert_eq!(ce["body"], r#"{"tick": true}"#);
    assert_eq!(ce["contentType"], "application/json");

    // Down for a few seconds: the missed fires come as one, and nothing is doubled.
    s.kill9();
    let killed = now_ms();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = lines(&out).len();
    let restarted = now_ms();
    let s = Server::start_in_with_env(&data, ISOLATION_OFF);
    eventually(LONG, || async {
        (lines(&out).len() >= before + 3).then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the timer fired again after the restart: {}",
            s.server_log()
        )
    });
    // Four seconds down would be four fires; the policy runs one, for the latest scheduled time
    // at or before the restarted node's first tick, and logs it.
    let at = |l: &Value| -> i64 {
        let id = l["ce"]["ce-id"].as_str().unwrap();
        id.rsplit('-').next().unwrap().parse().unwrap()
    };
    let log = s.server_log();
    let (missed, catch_up): (u64, i64) = log
        .lines()
        .find_map(|l| {
            let rest = l.split("timer cehttp/0/").nth(1)?;
            let (_, rest) = rest.split_once(": ")?;
            let (missed, rest) = rest.split_once(" fires missed while down")?;
            let at = rest.split("at=").nth(1)?;
            let digits = at.find(|c: char| !c.is_ascii_digit()).unwrap_or(at.len());
            Some((missed.parse().ok()?, at[..digits].parse().ok()?))
        })
        .unwrap_or_else(|| panic!("no catch-up fire after the downtime: {log}"));
    assert!(
        missed >= 2,
        "4 s down should miss at least 2 fires: {missed}"
    );
    assert!(catch_up > killed, "{catch_up} <= {killed}");
    let all = eventually(LONG, || async {
        let all = lines(&out);
        all.iter().any(|l| at(l) == catch_up).then_some(all)
    })
    .await
    .expect("the catch-up fire was delivered");
    // At least once: a fire in flight at the kill is delivered again (same ce-id), but no
    // scheduled time ever gets two different invocations.
    let mut by_time: std::collections::HashMap<String, std::collections::HashSet<String>> =
        Default::default();
    for l in &all {
        by_time
            .entry(l["ce"]["ce-time"].as_str().unwrap().to_string())
            .or_default()
            .insert(l["ce"]["ce-id"].as_str().unwrap().to_string());
    }
    assert!(
        by_time.values().all(|ids| ids.len() == 1),
        "a fire was doubled: {by_time:?}"
    );
    // The catch-up fire's time may lie anywhere in the second before that first tick, so inside
    // the downtime; this counts fires instead of comparing times with how fast the machine
    // restarts. The dead node fires nothing after `killed`, and every regular fire of the new
    // node is scheduled after its first tick, so after `restarted`: only the catch-up fire may
    // lie in between, and it is delivered once.
    let inside: std::collections::BTreeSet<i64> = all
        .iter()
        .map(at)
        .filter(|t| *t > killed && *t < restarted)
        .collect();
    assert!(
        inside.iter().all(|t| *t == catch_up),
        "missed fires were run one by one: {inside:?} besides the catch-up fire {catch_up}"
    );
    assert_eq!(
        all.iter().filter(|l| at(l) == catch_up).count(),
        1,
        "the catch-up fire was not delivered exactly once"
    );
}

#[tokio::test]
async fn an_invalid_cron_is_a_manifest_error_with_its_place() {
    let s = Server::start();
    let app = App::fixture("events-http");
    app.append_manifest("[[triggers]]\ntype = \"timer\"\ncron = \"61 * * * *\"");
    let out = s.deploy(&app.dir);
    assert_eq!(out.code(), 2, "{}", out.stderr());
    assert!(
        out.stderr().contains(
            "stratus.toml:7:1: `triggers[0].cron`: invalid cron expression \"61 * * * *\""
        ),
        "{}",
        out.stderr()
    );
}
