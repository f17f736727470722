//! Capture and replay as a developer uses them: a function with `[capture]` keeps its requests
//! (redacted), `stratus replay` re-sends one to another version and to a local dev server, and
//! shows both responses.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::harness::{App, Server, eventually, http};

/// A stand-in for a developer's local server: answers 201 and reports what it received.
async fn dev_server() -> (
    String,
    mpsc::UnboundedReceiver<(String, String, Vec<(String, String)>, Vec<u8>)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let tx = tx.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let headers = parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            let _ = tx.send((
                parts.method.to_string(),
                parts.uri.to_string(),
                headers,
                body.to_vec(),
            ));
            (axum::http::StatusCode::CREATED, "from the dev server")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), rx)
}

fn header<'a>(pairs: &'a Value, name: &str) -> Option<&'a str> {
    pairs
        .as_array()?
        .iter()
        .find(|p| p[0] == name)
        .and_then(|p| p[1].as_str())
}

// Multi-threaded: the dev server must answer while the test thread waits for the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_requests_are_redacted_and_replay_to_a_version_and_a_local_server() {
    let s = Server::start();
    let app = App::fixture("echo");
    app.append_manifest(
        "[capture]\nsample_rate = 1.0\nredact_headers = [\"x-api-key\"]\nredact_fields = [\"password\", \"token\"]",
    );
    s.deploy(&app.dir).ok();

    let body = r#"{"user":"ann","password":"hunter2"}"#;
    let r = http()
        .post(format!("{}/fn/echo/upload?token=abc&x=1", s.gw))
        .header("content-type", "application/json")
        .header("authorization", "Bearer s3cret")
        .header("x-api-key", "k-123")
        .header("x-kept", "yes")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let original: Value = r.json().await.unwrap();
    assert_eq!(original["bytes"], body.len());

    // The capture: redacted before it was stored, with the response beside it.
    let cap = eventually(Duration::from_secs(10), || async {
        let (code, cap) = s.api_json(&format!("/requests/{id}/capture")).await;
        (code == 200).then_some(cap)
    })
    .await
    .expect("the request was captured");
    let req = &cap["request"];
    assert_eq!(cap["function"], "echo");
    assert_eq!(cap["version"], 1);
    assert_eq!(req["method"], "POST");
    assert_eq!(req["uri"], "/fn/echo/upload?token=%5BREDACTED%5D&x=1");
    assert_eq!(req["forward_uri"], "/upload?token=%5BREDACTED%5D&x=1");
    assert_eq!(header(&req["headers"], "authorization"), Some("[REDACTED]"));
    assert_eq!(header(&req["headers"], "x-api-key"), Some("[REDACTED]"));
    assert_eq!(header(&req["headers"], "x-kept"), Some("yes"));
    let kept: Value = serde_json::from_str(req["body"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(kept["user"], "ann");
    assert_eq!(kept["password"], "[REDACTED]");
    assert_eq!(req["body"]["size"], body.len());
    assert_eq!(cap["response"]["status"], 200);
    let captured_resp: Value =
        serde_json::from_str(cap["response"]["body"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(captured_resp, original);
    // Nothing secret anywhere in what the store holds.
    let raw = cap.to_string();
    for secret in ["hunter2", "s3cret", "k-123", "token=abc"] {
        assert!(!raw.contains(secret), "{secret} leaked into {raw}");
    }

    // Version 2 fails every request: replaying to it shows the difference.
    app.edit_manifest("GREETING = \"hi\"", "GREETING = \"hi\"\nFAIL = \"1\"");
    s.deploy(&app.dir).ok();
    let out = s
        .cli(&[
            "replay",
            &id,
            "--version",
            "2",
            "--gateway",
            &s.gw,
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(out["captured"]["status"], 200);
    assert_eq!(out["captured"]["version"], 1);
    assert_eq!(out["replay"]["status"], 500);
    assert_eq!(out["replay"]["target"], "version 2");
    assert_eq!(out["same_status"], false);
    let replay_body: Value =
        serde_json::from_str(out["replay"]["body"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(replay_body["version"], "2");
    // The replay is a request of its own, with a new id, and its record says it reached v2.
    let replay_id = out["replay"]["request_id"].as_str().unwrap().to_string();
    assert_ne!(replay_id, id);
    let rec = eventually(Duration::from_secs(10), || async {
        let (code, rec) = s.api_json(&format!("/requests/{replay_id}")).await;
        (code == 200).then_some(rec)
    })
    .await
    .expect("the replay has a record");
    assert_eq!(rec["version"], 2);
    assert_eq!(rec["status"], 500);

    // Replayed to the same version by default, the table view says what matches.
    let text = s.cli(&["replay", &id, "--gateway", &s.gw]).ok().stdout();
    assert!(text.contains("CAPTURED (version 1)"), "{text}");
    assert!(text.contains("REPLAY (version 1)"), "{text}");
    // The redacted password makes the body shorter than the original, so the count differs.
    assert!(text.contains("status: same · body: differs"), "{text}");

    // To a local dev server: the path the function saw, the headers, the kept body, and an
    // override for a redacted credential.
    let (local, mut received) = dev_server().await;
    let out = s
        .cli(&[
            "replay",
            &id,
            "--local",
            &local,
            "-H",
            "Authorization: Bearer dev",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(out["replay"]["status"], 201);
    assert_eq!(out["replay"]["body"]["text"], "from the dev server");
    let (method, uri, headers, got) = received.recv().await.unwrap();
    assert_eq!(method, "POST");
    assert_eq!(uri, "/upload?token=%5BREDACTED%5D&x=1");
    let h = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(h("authorization"), Some("Bearer dev"));
    assert_eq!(h("x-kept"), Some("yes"));
    assert_eq!(h("x-stratus-replay-of"), Some(id.as_str()));
    assert_eq!(h("content-type"), Some("application/json"));
    assert_eq!(h("x-forwarded-prefix"), None);
    let sent: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(sent["password"], "[REDACTED]");
}

#[tokio::test]
async fn replay_says_why_when_there_is_no_capture() {
    let s = Server::start();
    let app = App::fixture("echo");
    s.deploy(&app.dir).ok();
    let r = http()
        .get(format!("{}/fn/echo/", s.gw))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    // Its record exists, its capture does not: the function has no [capture].
    eventually(Duration::from_secs(10), || async {
        (s.api_json(&format!("/requests/{id}")).await.0 == 200).then_some(())
    })
    .await
    .expect("a record");
    let out = s.cli(&["replay", &id, "--gateway", &s.gw]);
    assert_eq!(out.code(), 3, "{}", out.stderr());
    assert!(out.stderr().contains("[capture]"), "{}", out.stderr());
    assert!(
        out.stderr().contains("capture_not_found"),
        "{}",
        out.stderr()
    );
    // Bad flags are usage errors.
    let bad = s.cli(&["replay", &id, "--local", "localhost:3000"]);
    assert_eq!(bad.code(), 2);
    let bad = s.cli(&[
        "replay",
        &id,
        "--version",
        "2",
        "--local",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(bad.code(), 2, "{}", bad.stderr());
}
