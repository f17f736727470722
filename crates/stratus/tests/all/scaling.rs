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
            let url = format!("{}/fn/echo/slow?ms=3000", s.gw);
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
async fn waiting_requests_are_served_in_arrival_order() {
    let s = Server::start();
    let app = App::fixture("echo");
    app.edit_manifest("concurrency = 10", "concurrency = 1");
    app.edit_manifest("max = 3", "max = 1");
    s.deploy(&app.dir).ok();
    // One request holds the only slot; four more queue behind it, 100 ms apart.
    let first = slow(&s, 1000).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut queued = Vec::new();
    for i in 0..4 {
        let url = format!("{}/fn/echo/slow?ms=100", s.gw);
        queued.push(tokio::spawn(async move {
            let r = http().get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            (std::time::Instant::now(), i)
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(first.await.unwrap().0, 200);
    let mut done = Vec::new();
    for q in queued {
        done.push(q.await.unwrap());
    }
    done.sort();
    let order: Vec<_> = done.iter().map(|(_, i)| *i).collect();
    assert_eq!(order, vec![0, 1, 2, 3], "first come, first served");
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

async fn slow(
    s: &Server,
    ms: u64,
) -> tokio::task::JoinHandle<(u16, Option<String>, serde_json::Value)> {
    let url = format!("{}/fn/echo/slow?ms={ms}", s.gw);
    tokio::spawn(async move {
        let r = http().get(url).send().await.unwrap();
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (status, retry, r.json().await.unwrap_or_default())
    })
}

#[tokio::test]
async fn overload_is_shed_with_429_and_503_never_piled_up() {
    let s = Server::start();
    let app = App::fixture("echo");
    app.edit_manifest("concurrency = 10", "concurrency = 1");
    app.edit_manifest("max = 3", "max = 1\nmax_queue = 1\nqueue_timeout = \"1s\"");
    s.deploy(&app.dir).ok();
    // One is served, one waits (and gives up after 400 ms: 503), one finds the queue full (429).
    let a = slow(&s, 4000).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = slow(&s, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = slow(&s, 10).await;
    let (c_status, c_retry, c_body) = c.await.unwrap();
    assert_eq!(c_status, 429, "{c_body}");
    assert_eq!(c_body["error"]["code"], "throttled");
    assert!(c_retry.is_some(), "429 carries Retry-After");
    let (b_status, b_retry, b_body) = b.await.unwrap();
    assert_eq!(b_status, 503, "{b_body}");
    assert_eq!(b_body["error"]["code"], "overloaded");
    assert!(b_retry.is_some());
    assert_eq!(a.await.unwrap().0, 200);
}

#[tokio::test]
async fn reserved_concurrency_caps_the_function() {
    let s = Server::start();
    let app = App::fixture("echo");
    app.edit_manifest("max = 3", "max = 3\nreserved_concurrency = 1");
    s.deploy(&app.dir).ok();
    let a = slow(&s, 2500).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, body) = slow(&s, 10).await.await.unwrap();
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reserved concurrency of 1"),
        "{body}"
    );
    assert_eq!(a.await.unwrap().0, 200);
    let (status, _, _) = slow(&s, 10).await.await.unwrap();
    assert_eq!(status, 200, "the slot is back once the first request ended");
}

#[tokio::test]
async fn the_autoscaler_drains_surplus_instances_without_failing_a_request() {
    let s = Server::start();
    let app = App::fixture("echo");
    app.edit_manifest("concurrency = 10", "concurrency = 1");
    app.edit_manifest(
        "idle_timeout = \"5m\"",
        "idle_timeout = \"1h\"\nscale_down_delay = \"1s\"",
    );
    s.deploy(&app.dir).ok();
    let burst: Vec<_> = futures_util::future::join_all((0..3).map(|_| slow(&s, 2000))).await;
    for b in burst {
        assert_eq!(b.await.unwrap().0, 200);
    }
    assert_eq!(instances(&s).await, 3);
    // Light, sequential load: one instance is enough; the other two drain while it is served.
    let statuses = std::sync::Mutex::new(Vec::new());
    let shrunk = eventually(Duration::from_secs(20), || async {
        let status = s.get("/fn/echo/").await.status().as_u16();
        statuses.lock().unwrap().push(status);
        (instances(&s).await == 1).then_some(())
    })
    .await;
    let statuses = statuses.into_inner().unwrap();
    assert!(
        shrunk.is_some(),
        "surplus instances were not removed (idle_timeout is 1h, so the autoscaler must have)"
    );
    assert!(
        statuses.iter().all(|s| *s == 200),
        "a request failed during scale-down: {statuses:?}"
    );
    let info = s.cli(&["info", "echo", "--json"]).ok().json();
    let events = info["pools"][0]["scale_events"].as_array().unwrap().clone();
    assert!(
        events.iter().any(|e| e["to"].as_u64() < e["from"].as_u64()),
        "the scale-down is recorded: {events:?}"
    );
    let text = s.cli(&["info", "echo"]).ok().stdout();
    assert!(text.contains("desired 1"), "{text}");
}

/// Ready instances of one version.
fn ready_of(info: &serde_json::Value, version: u64) -> usize {
    info["pools"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["version"] == version)
        .flat_map(|p| p["instances"].as_array().unwrap().iter())
        .filter(|i| i["state"] == "ready")
        .count()
}

#[tokio::test]
async fn an_app_is_always_on_and_deploys_roll_without_a_failed_request() {
    let s = Server::start();
    let app = App::fixture("echo");
    app.edit_manifest("name = \"echo\"", "name = \"echo\"\nkind = \"app\"");
    app.edit_manifest("min = 0", "min = 2");
    s.deploy(&app.dir).ok();
    // Both of `min` are ready when the deploy returns, not started afterwards.
    let info = s.cli(&["info", "echo", "--json"]).ok().json();
    assert_eq!(ready_of(&info, 1), 2, "{info}");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (gw, stop) = (s.gw.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed, mut v2) = (0, 0, 0);
            let c = http();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match c.get(format!("{gw}/fn/echo/")).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok += 1;
                        if r.headers()["x-stratus-version"] == "2" {
                            v2 += 1;
                        }
                    }
                    _ => failed += 1,
                }
            }
            (ok, failed, v2)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.write("VERSION", "2");
    s.deploy(&app.dir).ok();
    let info = s.cli(&["info", "echo", "--json"]).ok().json();
    assert_eq!(
        ready_of(&info, 2),
        2,
        "the new version took traffic before min were ready: {info}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, v2) = load.await.unwrap();
    assert_eq!(
        failed, 0,
        "{failed} requests failed during the rolling deploy ({ok} ok)"
    );
    assert!(v2 > 0, "no request reached version 2");

    // `min = 0` would make it a function: refused with its reason.
    app.edit_manifest("min = 2", "min = 0");
    let r = s.deploy(&app.dir);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(r.stderr().contains("an app is always on"), "{}", r.stderr());
}
