//! `runtime = "wasm"` end to end: the committed test component (`fixtures/wasm-hello`, source in
//! `fixtures/wasm-guest`) deployed to a real server and called through the gateway.

use std::time::{Duration, Instant};

use crate::harness::{App, Server, eventually};

/// A server with the fixture deployed as version 1.
async fn deployed() -> (Server, App) {
    let s = Server::start();
    let app = App::fixture("wasm-hello");
    s.deploy(&app.dir).ok();
    (s, app)
}

async fn logs_contain(s: &Server, needle: &str) -> String {
    eventually(Duration::from_secs(10), || async {
        let out = s.cli(&["logs", "hello-wasm", "--tail", "500"]).stdout();
        out.contains(needle).then_some(out)
    })
    .await
    .unwrap_or_else(|| {
        let out = s.cli(&["logs", "hello-wasm", "--tail", "500"]).stdout();
        panic!("no log line with {needle:?}; logs:\n{out}")
    })
}

#[tokio::test]
async fn a_component_deploys_and_serves_with_its_env_and_logs() {
    let (s, _app) = deployed().await;
    let r = s.get("/fn/hello-wasm/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-stratus-version"], "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["message"], "hello from wasm");

    let (status, env) = s.get_json("/fn/hello-wasm/env").await;
    assert_eq!(status, 200);
    assert_eq!(env["GREETING"], "hi");
    assert_eq!(env["STRATUS_FUNCTION"], "hello-wasm");

    let echoed = crate::harness::http()
        .post(format!("{}/fn/hello-wasm/echo", s.gw))
        .body("x".repeat(100_000))
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.text().await.unwrap().len(), 100_000);

    assert_eq!(s.get("/fn/hello-wasm/log").await.status(), 200);
    logs_contain(&s, "hello on stdout").await;
    let info = s.cli(&["info", "hello-wasm", "--json"]).json();
    assert_eq!(info["versions"][0]["runtime"], "wasm", "{info}");
}

#[tokio::test]
async fn outbound_http_is_denied_unless_the_host_is_allowed() {
    let (s, app) = deployed().await;
    // The server's own API as the upstream: any answer (401 here) proves the call went out.
    let url = format!("/fn/hello-wasm/outbound?url={}/api/v1/functions", s.api);
    let (status, body) = s.get_json(&url).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("HttpRequestDenied"),
        "{body}"
    );
    logs_contain(&s, "denied: not in allowed_outbound_hosts").await;

    app.edit_manifest(
        "runtime = \"wasm\"",
        &format!(
            "runtime = \"wasm\"\nallowed_outbound_hosts = [\"{}\"]",
            s.api
        ),
    );
    s.deploy(&app.dir).ok();
    let (status, body) = s.get_json(&url).await;
    assert_eq!(
        (status, body["status"].as_u64()),
        (200, Some(401)),
        "{body}"
    );
}

#[tokio::test]
async fn a_guest_past_its_timeout_is_a_504_and_the_gateway_keeps_serving() {
    let (s, _app) = deployed().await;
    let started = Instant::now();
    let spinning: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("{}/fn/hello-wasm/loop", s.gw);
            tokio::spawn(async move { crate::harness::http().get(url).send().await.unwrap() })
        })
        .collect();
    // Four guests spin on two cores; other requests are still answered, long before the
    // spinning ones hit their 2 s timeout (a bound loose enough for a loaded CI machine).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(s.get("/fn/hello-wasm/").await.status(), 200);
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
    }
    assert!(
        spinning.iter().all(|t| !t.is_finished()),
        "the spinning requests ended early"
    );
    for r in spinning {
        let r = r.await.unwrap();
        assert_eq!(r.status(), 504);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "timeout", "{body}");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(3500),
        "timeout is 2s, took {took:?}"
    );
    assert_eq!(s.get("/fn/hello-wasm/").await.status(), 200);
}

#[tokio::test]
async fn memory_limits_and_traps_are_500s_with_the_reason_logged() {
    let (s, _app) = deployed().await;
    // The body is read: a client that drops the response early closes the guest's body stream,
    // and this guest panics on a failed write (that case is logged as such, see the runtime's
    // tests), which would put a second trap in the logs.
    let r = s.get("/fn/hello-wasm/alloc?mb=16").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "allocated 16777216 bytes");
    let (status, body) = s.get_json("/fn/hello-wasm/alloc?mb=200").await;
    assert_eq!(status, 500, "{body}");
    logs_contain(&s, "memory limit exceeded").await;

    let (status, body) = s.get_json("/fn/hello-wasm/trap").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "internal");
    // The guest's panic text comes before the platform's line about the trap (same store, same
    // sink, in order).
    let logs = logs_contain(&s, "`hello-wasm` trapped: ").await;
    let panic_text = logs
        .find("the guest panicked on purpose")
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(
        panic_text < logs.find("`hello-wasm` trapped: ").unwrap(),
        "{logs}"
    );
    assert!(!logs.contains("WriteZero"), "{logs}");
    assert_eq!(s.get("/fn/hello-wasm/").await.status(), 200);
}

#[tokio::test]
async fn what_is_not_a_wasi_http_component_is_refused_at_deploy() {
    let (s, app) = deployed().await;
    let cases: [(&[u8], &str); 3] = [
        (b"#!/bin/sh\necho not wasm\n", "is not a WebAssembly binary"),
        // An empty core module: magic, version 1, layer 0.
        (
            b"\0asm\x01\0\0\0",
            "is a core WebAssembly module, not a component",
        ),
        // An empty component: magic, version 0x0d, layer 1.
        (
            b"\0asm\x0d\0\x01\0",
            "does not export wasi:http/incoming-handler",
        ),
    ];
    for (bytes, expected) in cases {
        std::fs::write(app.dir.join("hello.wasm"), bytes).unwrap();
        let r = s.deploy(&app.dir);
        assert_eq!(r.code(), 1, "{}", r.stderr());
        assert!(r.stderr().contains(expected), "{}", r.stderr());
        // The previous version keeps serving.
        let r = s.get("/fn/hello-wasm/").await;
        assert_eq!(
            (
                r.status().as_u16(),
                r.headers()["x-stratus-version"].to_str().unwrap()
            ),
            (200, "1")
        );
    }
    let versions: serde_json::Value = s
        .api_req(reqwest::Method::GET, "/functions/hello-wasm/versions")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(versions.as_array().map(Vec::len), Some(1), "{versions}");
}

#[tokio::test]
async fn the_compiled_component_is_reused_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = Server::start_in(&data);
    let app = App::fixture("wasm-hello");
    s.deploy(&app.dir).ok();
    assert_eq!(s.get("/fn/hello-wasm/").await.status(), 200);
    let cached: Vec<_> = std::fs::read_dir(data.join("wasm-cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let mtime = std::fs::metadata(&cached[0]).unwrap().modified().unwrap();
    assert_eq!(
        logs_contain(&s, "compiled hello.wasm")
            .await
            .matches("compiled hello.wasm")
            .count(),
        1
    );
    s.terminate(Duration::from_secs(10));

    let s = Server::start_in(&data);
    let t = Instant::now();
    assert_eq!(s.get("/fn/hello-wasm/").await.status(), 200);
    let first = t.elapsed();
    let logs = logs_contain(&s, "loaded from cache").await;
    assert_eq!(
        logs.matches("compiled hello.wasm").count(),
        1,
        "recompiled:\n{logs}"
    );
    assert_eq!(
        std::fs::metadata(&cached[0]).unwrap().modified().unwrap(),
        mtime
    );
    assert!(
        first < Duration::from_secs(1),
        "first request after restart took {first:?}"
    );
}

#[tokio::test]
async fn init_scaffolds_each_wasm_template() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start();
    for (template, marker) in [
        ("js-wasm", "build.mjs"),
        ("python-wasm", "app.py"),
        ("rust-wasm", "Cargo.toml"),
    ] {
        let dir = tmp.path().join(template);
        let r = s.cli(&["init", "--template", template, dir.to_str().unwrap()]);
        r.ok();
        assert!(dir.join(marker).is_file(), "{template}");
        let manifest = std::fs::read_to_string(dir.join("stratus.toml")).unwrap();
        assert!(
            manifest.contains(&format!("name = \"{template}\"")),
            "{manifest}"
        );
        assert!(manifest.contains("runtime = \"wasm\""), "{manifest}");
        // A second init never overwrites.
        let again = s.cli(&["init", "--template", template, dir.to_str().unwrap()]);
        assert_eq!(again.code(), 2, "{}", again.stderr());
    }
}
