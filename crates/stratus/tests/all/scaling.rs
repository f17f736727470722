//! On-demand starts, per-instance concurrency, scale to zero, crash restarts.

use std::time::Duration;

use crate::harness::{App, Server, eventually, http};

async fn instances(s: &Server) -> usize {
    let info = s.cli(&["info", "echo", "--json"]).ok().json();
    info["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["instances"].as_array().unwrap().len())
        .sum()
}

#[tokio::test]
async fn busy_instances_get_company_and_idle_ones_go_away() {
    let s = Server::start();
    let app = App::fixture("echo");
    app.edit_manifest("concurrency = 10", "concurrency = 1");
    app.edit_manifest("idle_timeout = \"5m\"", "idle_timeout = \"1s\"");
    s.deploy(&app.dir).ok();
    assert_eq!(
        instances(&s).await,
        1,
        "deploy proves the version with one instance"
    );

    // Three concurrent slow requests, one slot per instance, max 3: three instances serve them.
    let reqs: Vec<_> = (0..3)
        .map(|_| {
            let url = format!("{}/fn/echo/slow?ms=800", s.gw);
            tokio::spawn(async move {
                http()
                    .get(url)
                    .send()
                    .await
                    .unwrap()
                    .json::<serde_json::Value>()
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut served_by = std::collections::HashSet::new();
    for r in reqs {
        served_by.insert(r.await.unwrap()["instance"].as_str().unwrap().to_string());
    }
    assert_eq!(
        served_by.len(),
        3,
        "each request had its own instance: {served_by:?}"
    );

    // Idle past idle_timeout with min = 0: scaled to zero.
    let zero = eventually(Duration::from_secs(10), || async {
        (instances(&s).await == 0).then_some(())
    })
    .await;
    assert!(
        zero.is_some(),
        "instances were not stopped after idle_timeout"
    );
    // And started again on demand.
    let (status, _) = s.get_json("/fn/echo/").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn max_bounds_instances_and_extra_requests_wait_for_a_slot() {
    let s = Server::start();
    let app = App::fixture("echo");
    app.edit_manifest("concurrency = 10", "concurrency = 1");
    app.edit_manifest("max = 3", "max = 1");
    s.deploy(&app.dir).ok();
    let reqs: Vec<_> = (0..3)
        .map(|_| {
            let url = format!("{}/fn/echo/slow?ms=300", s.gw);
            tokio::spawn(async move {
                http()
                    .get(url)
                    .send()
                    .await
                    .unwrap()
                    .json::<serde_json::Value>()
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut served_by = std::collections::HashSet::new();
    for r in reqs {
        served_by.insert(r.await.unwrap()["instance"].as_str().unwrap().to_string());
    }
    assert_eq!(
        served_by.len(),
        1,
        "max = 1 means one instance: {served_by:?}"
    );
}

#[tokio::test]
async fn crashed_instances_are_replaced() {
    let s = Server::start();
    let app = App::fixture("echo");
    s.deploy(&app.dir).ok();
    let (_, before) = s.get_json("/fn/echo/").await;
    let r = s.get("/fn/echo/exit").await;
    assert_eq!(r.status(), 200);
    // The next requests are served by a new instance once the crash is noticed.
    let after = eventually(Duration::from_secs(10), || async {
        let (status, body) = s.get_json("/fn/echo/").await;
        (status == 200 && body["pid"] != before["pid"]).then_some(body)
    })
    .await;
    assert!(after.is_some(), "no new instance after a crash");
    let info = s.cli(&["info", "echo", "--json"]).ok().json();
    assert_eq!(info["pools"][0]["crashes"], 1);
    let logs = s.cli(&["logs", "echo"]).ok().stdout();
    assert!(logs.contains("exited with code 1"), "{logs}");
}
