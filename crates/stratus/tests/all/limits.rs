//! Resource limits and fault reporting through the real server: an out-of-memory kill and a
//! timeout kill are reported as such in `stratus info` and the logs, and a timeout is not counted
//! as a crash. Needs a cgroup memory controller (root here); says so and returns without one.

use std::time::Duration;

use crate::harness::{App, Server, eventually};

const HANDLER: &str = r#"
import time

def handler(event, context):
    path = event.get("rawPath")
    if path == "/hog":
        hog = b"x" * (256 << 20)
        return {"len": len(hog)}
    if path == "/sleep":
        time.sleep(5)
    return {"ok": True}
"#;

fn app(limits: &str) -> App {
    let app = App::fixture("python-handler");
    app.write("main.py", HANDLER);
    app.edit_manifest("timeout = \"10s\"", limits);
    app
}

fn info(s: &Server, name: &str) -> serde_json::Value {
    s.cli(&["info", name, "--json"]).ok().json()
}

/// Log lines reach the store in batches: wait for the line.
async fn assert_logs_contain(s: &Server, what: &str) {
    let found = eventually(Duration::from_secs(10), || async {
        s.cli(&["logs", "pyfn"])
            .ok()
            .stdout()
            .contains(what)
            .then_some(())
    })
    .await;
    assert!(
        found.is_some(),
        "{what:?} not in the logs:\n{}",
        s.cli(&["logs", "pyfn"]).ok().stdout()
    );
}

#[tokio::test]
async fn an_oom_kill_is_reported_in_info_and_logs() {
    let s = Server::start();
    let app = app("timeout = \"10s\"\nmemory = \"64MiB\"\npids = 64\ncpu = 0.5");
    s.deploy(&app.dir).ok();
    let i = info(&s, "pyfn");
    let e = &i["limits"]["enforcement"];
    if !e["mechanism"].as_str().unwrap().starts_with("cgroup")
        || e["memory"].as_str().unwrap().starts_with("not enforced")
    {
        eprintln!("skipping: no cgroup memory controller on this host: {e}");
        return;
    }
    assert_eq!(i["limits"]["memory_bytes"], 64 * 1024 * 1024);
    assert_eq!(i["limits"]["pids"], 64);
    assert_eq!(i["limits"]["cpu"], 0.5);
    assert!(
        s.server_log().contains("process limits: cgroup"),
        "{}",
        s.server_log()
    );
    assert_eq!(s.get("/fn/pyfn/").await.status(), 200);
    let r = s.get("/fn/pyfn/hog").await;
    assert_eq!(r.status(), 502, "{:?}", r.text().await);
    let i = eventually(Duration::from_secs(10), || async {
        let i = info(&s, "pyfn");
        (i["pools"][0]["oom_kills"] == 1).then_some(i)
    })
    .await
    .expect("no OOM kill reported");
    let p = &i["pools"][0];
    assert_eq!(p["last_exit"]["reason"], "out_of_memory", "{p}");
    assert_eq!(p["crashes"], 1, "{p}");
    assert!(
        p["last_error"]
            .as_str()
            .unwrap()
            .contains("killed: out of memory (limit 64 MiB)"),
        "{p}"
    );
    let text = s.cli(&["info", "pyfn"]).ok().stdout();
    assert!(text.contains("out of memory"), "{text}");
    assert!(
        text.contains("limits: memory 64.0 MiB, cpu 0.5 cores, pids 64 (enforced by cgroup"),
        "{text}"
    );
    assert_logs_contain(&s, "killed: out of memory (limit 64 MiB)").await;
    // A new instance serves the next request.
    let ok = eventually(Duration::from_secs(10), || async {
        (s.get("/fn/pyfn/").await.status() == 200).then_some(())
    })
    .await;
    assert!(ok.is_some());
}

#[tokio::test]
async fn a_timeout_kill_is_reported_and_not_counted_as_a_crash() {
    let s = Server::start();
    let app = app("timeout = \"1s\"");
    s.deploy(&app.dir).ok();
    let r = s.get("/fn/pyfn/sleep").await;
    assert_eq!(r.status(), 504);
    let i = eventually(Duration::from_secs(10), || async {
        let i = info(&s, "pyfn");
        (i["pools"][0]["timeouts"] == 1).then_some(i)
    })
    .await
    .expect("no timeout kill reported");
    let p = &i["pools"][0];
    assert_eq!(p["last_exit"]["reason"], "timeout", "{p}");
    assert_eq!(p["crashes"], 0, "a timeout counted as a crash: {p}");
    assert_logs_contain(&s, "killed: invocation timed out after 1s").await;
    // A new instance serves again (the first try may meet a 503 on a loaded machine: the new
    // bootstrap must start within the 1 s queue timeout), and no crash was recorded for it.
    let ok = eventually(Duration::from_secs(10), || async {
        (s.get("/fn/pyfn/").await.status() == 200).then_some(())
    })
    .await;
    assert!(ok.is_some(), "no instance served after the timeout kill");
    assert_eq!(info(&s, "pyfn")["pools"][0]["crashes"], 0);
}

fn cpu_class(s: &Server) -> Option<String> {
    info(s, "echo")["pools"][0]["instances"][0]["cpu_class"]
        .as_str()
        .map(str::to_string)
}

/// A function's instance with nothing to serve is parked (frozen where the host has a freezer,
/// else background priority and a twentieth of a core), a request moves it back before it
/// reaches the instance, and it is parked again as soon as its request is done; `stratus info`
/// reads the class back from the instance's cgroup.
#[tokio::test]
async fn a_function_instance_serving_nothing_is_parked() {
    let s = Server::start();
    let app = App::fixture("echo");
    app.edit_manifest("min = 0", "min = 1");
    s.deploy(&app.dir).ok();
    let how = info(&s, "echo")["limits"]["enforcement"]["cpu_class"]
        .as_str()
        .unwrap()
        .to_string();
    if how.starts_with("not enforced") {
        eprintln!("skipping: no background CPU class here ({how})");
        return;
    }
    assert!(
        how.contains("cpu.idle") || how.contains("cpu.shares") || how.contains("cpu.weight"),
        "{how}"
    );
    assert!(
        how.contains("frozen: ") || how.contains("no freezer here"),
        "{how}"
    );
    // The deploy's instance was never leased: the next tick moves it.
    let moved = eventually(Duration::from_secs(5), || async {
        (cpu_class(&s).as_deref() == Some("parked")).then_some(())
    })
    .await;
    assert!(moved.is_some(), "still {:?}", cpu_class(&s));
    assert!(
        s.cli(&["info", "echo"])
            .ok()
            .stdout()
            .contains("ready (parked)"),
        "{}",
        s.cli(&["info", "echo"]).ok().stdout()
    );

    // While a request is in flight the instance serves.
    let slow = {
        let url = format!("{}/fn/echo/slow?ms=2500", s.gw);
        tokio::spawn(async move {
            crate::harness::http()
                .get(url)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let serving = eventually(Duration::from_secs(2), || async {
        (cpu_class(&s).as_deref() == Some("serving")).then_some(())
    })
    .await;
    assert!(
        serving.is_some(),
        "still {:?} with a request in flight",
        cpu_class(&s)
    );
    assert_eq!(slow.await.unwrap(), 200);
    let answered = std::time::Instant::now();
    // With none in flight it is parked again at once (25 ms on, at the next class tick).
    let back = eventually(Duration::from_millis(800), || async {
        (cpu_class(&s).as_deref() == Some("parked")).then_some(())
    })
    .await;
    assert!(
        back.is_some() && answered.elapsed() < Duration::from_secs(1),
        "still {:?} {:?} after its request",
        cpu_class(&s),
        answered.elapsed()
    );

    // Frozen for seconds, with the gateway's pooled connections to it closed when it was
    // parked: the next requests thaw it and succeed, on the same instance.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(answered.elapsed())).await;
    let before = info(&s, "echo")["pools"][0]["instances"].to_string();
    for i in 0..3 {
        let r = crate::harness::http()
            .get(format!("{}/fn/echo/slow?ms=1", s.gw))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i} after the instance thawed");
        let body: serde_json::Value = r.json().await.unwrap();
        let id = body["instance"].as_str().unwrap().to_string();
        assert!(before.contains(&id), "served by a new instance {id}");
    }
}

/// A server killed outright leaves no instance behind, a parked (frozen) one included: its
/// `PR_SET_PDEATHSIG` must still kill it (a task frozen by cgroup v1's freezer would never die).
#[tokio::test]
async fn a_killed_server_leaves_no_parked_instance_behind() {
    let mut s = Server::start();
    let app = App::fixture("echo");
    app.edit_manifest("min = 0", "min = 1");
    s.deploy(&app.dir).ok();
    let r = s.get("/fn/echo/").await;
    assert_eq!(r.status(), 200);
    let pid = r.json::<serde_json::Value>().await.unwrap()["pid"]
        .as_u64()
        .unwrap() as u32;
    let parked = eventually(Duration::from_secs(5), || async {
        (cpu_class(&s).as_deref() == Some("parked")).then_some(())
    })
    .await;
    if parked.is_none() {
        eprintln!(
            "skipping: instances are not parked here ({:?})",
            cpu_class(&s)
        );
        return;
    }
    assert!(crate::harness::pid_alive(pid));
    s.kill9();
    let gone = eventually(Duration::from_secs(5), || async {
        (!crate::harness::pid_alive(pid)).then_some(())
    })
    .await;
    assert!(gone.is_some(), "parked instance {pid} outlived its server");
}
