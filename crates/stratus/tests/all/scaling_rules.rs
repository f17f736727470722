//! Scaling on CPU use (`scaling.cpu_target`) and provisioned instances (`scaling.provisioned`,
//! `[[scaling.schedule]]`) through the real server: real node processes in real cgroups.
//! Every wait polls for a state with a generous deadline (the box is small and shared).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::harness::{App, Server, eventually, http};

fn info(s: &Server) -> serde_json::Value {
    s.cli(&["info", "echo", "--json"]).ok().json()
}

fn ready(info: &serde_json::Value) -> usize {
    info["pools"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["instances"].as_array().unwrap().iter())
        .filter(|i| i["state"] == "ready")
        .count()
}

fn events(info: &serde_json::Value) -> Vec<serde_json::Value> {
    info["pools"][0]["scale_events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Clients calling `path` back to back until stopped; returns every status they saw.
fn load(
    s: &Server,
    clients: usize,
    path: &str,
) -> (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<Vec<u16>>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = (0..clients)
        .map(|_| {
            let (url, stop) = (format!("{}{path}", s.gw), stop.clone());
            tokio::spawn(async move {
                let c = http();
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    seen.push(match c.get(&url).send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    });
                }
                seen
            })
        })
        .collect();
    (stop, tasks)
}

#[tokio::test]
async fn an_app_scales_out_on_cpu_use_and_back_in_when_the_load_ends() {
    let s = Server::start();
    let app = App::fixture("echo");
    app.edit_manifest("name = \"echo\"", "name = \"echo\"\nkind = \"app\"");
    app.edit_manifest("concurrency = 10", "concurrency = 50\ncpu = 0.5");
    app.edit_manifest("min = 0", "min = 1");
    // A target well below the half core a spinning instance takes, so a box busy with other
    // work still shows the instance over it; concurrency 50 means the concurrency rule alone
    // never wants a second instance for three clients.
    app.edit_manifest(
        "max = 3",
        "max = 2\ncpu_target = 0.3\nscale_down_delay = \"3s\"",
    );
    s.deploy(&app.dir).ok();
    let i = info(&s);
    let usage = i["limits"]["enforcement"]["usage"]
        .as_str()
        .unwrap()
        .to_string();
    if usage.starts_with("not observed") || usage.contains("cpu not observed") {
        eprintln!("skipping: this node cannot observe CPU use ({usage})");
        assert!(s.server_log().contains("instance CPU and memory use: "));
        return;
    }
    assert!(
        s.server_log()
            .contains(&format!("instance CPU and memory use: {usage}")),
        "the serve log says how use is observed"
    );
    assert_eq!(ready(&i), 1, "{i}");

    let (stop, clients) = load(&s, 3, "/fn/echo/spin?ms=50");
    let out = eventually(Duration::from_secs(90), || async {
        let i = info(&s);
        (ready(&i) == 2).then_some(i)
    })
    .await;
    let scaled = out.unwrap_or_else(|| {
        panic!(
            "no second instance under CPU load: {}",
            serde_json::to_string_pretty(&info(&s)).unwrap()
        )
    });
    let up = events(&scaled)
        .into_iter()
        .find(|e| e["to"].as_u64() > e["from"].as_u64())
        .expect("the scale-out is recorded");
    let why = up["reason"].as_str().unwrap();
    assert!(
        why.starts_with("cpu ") && why.contains("of 0.5 cores") && why.contains("> target 30%"),
        "the CPU rule decided: {why}"
    );
    // Each instance's CPU use is shown once it has a rate, and the rule with it.
    let shown = eventually(Duration::from_secs(30), || async {
        let i = info(&s);
        let cores: Vec<f64> = i["pools"][0]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x["cpu_cores"].as_f64())
            .collect();
        (cores.iter().any(|c| *c > 0.05)).then_some(i)
    })
    .await
    .expect("no instance reports its CPU use");
    let inst = &shown["pools"][0]["instances"][0];
    assert!(
        inst["memory_bytes"].as_u64().unwrap() > 1024 * 1024,
        "{inst}"
    );
    let rule = &shown["pools"][0]["rules"][0];
    assert_eq!(rule["resource"], "cpu", "{rule}");
    assert_eq!(rule["target"], 0.3);
    let text = s.cli(&["info", "echo"]).ok().stdout();
    assert!(text.contains("rule cpu "), "{text}");
    assert!(text.contains("CPU") && text.contains("MEMORY"), "{text}");

    stop.store(true, Ordering::Relaxed);
    let mut statuses = Vec::new();
    for c in clients {
        statuses.extend(c.await.unwrap());
    }
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "a request failed: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    // Idle CPU: back to `min` once scale_down_delay has passed (idle_timeout is 5 minutes,
    // so the autoscaler did it, not the idle reaper).
    let back = eventually(Duration::from_secs(60), || async {
        let i = info(&s);
        (ready(&i) == 1 && i["pools"][0]["instances"].as_array().unwrap().len() == 1).then_some(i)
    })
    .await;
    let back = back.expect("the CPU-driven instance was not removed after the load");
    assert!(
        events(&back)
            .iter()
            .any(|e| e["to"].as_u64() < e["from"].as_u64()),
        "{back}"
    );
}

#[tokio::test]
async fn provisioned_instances_stay_ready_with_no_traffic() {
    let s = Server::start();
    let app = App::fixture("echo");
    app.edit_manifest(
        "idle_timeout = \"5m\"",
        "idle_timeout = \"1s\"\nprovisioned = 2",
    );
    s.deploy(&app.dir).ok();
    let warm = eventually(Duration::from_secs(30), || async {
        let i = info(&s);
        (ready(&i) == 2).then_some(i)
    })
    .await
    .expect("provisioned instances were not started");
    let f = &warm["pools"][0]["floor"];
    assert_eq!(
        (&f["effective"], &f["min"], &f["provisioned"], &f["source"]),
        (&2.into(), &0.into(), &2.into(), &"provisioned".into()),
        "{f}"
    );
    assert!(
        events(&warm)
            .iter()
            .any(|e| e["reason"] == "floor 2: provisioned 2"),
        "{warm}"
    );
    // Well past idle_timeout with no request at all: both still ready, the same two.
    let ids = |i: &serde_json::Value| -> Vec<String> {
        let mut v: Vec<String> = i["pools"][0]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let before = ids(&warm);
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let i = info(&s);
        assert_eq!(ready(&i), 2, "a provisioned instance went away: {i}");
        assert_eq!(ids(&i), before, "instances were replaced: {i}");
    }
    let text = s.cli(&["info", "echo"]).ok().stdout();
    assert!(text.contains("floor 2 (min 0, provisioned 2)"), "{text}");
}

#[tokio::test]
async fn a_provisioning_schedule_moves_the_floor_with_the_clock() {
    let s = Server::start();
    let app = App::fixture("echo");
    app.edit_manifest("idle_timeout = \"5m\"", "idle_timeout = \"1s\"");
    // Two entries, each in force for ten seconds of every twenty: 2, then 1.
    app.append_manifest(
        "[[scaling.schedule]]\ncron = \"0,20,40 * * * * *\"\nprovisioned = 2\n\n\
         [[scaling.schedule]]\ncron = \"10,30,50 * * * * *\"\nprovisioned = 1",
    );
    s.deploy(&app.dir).ok();
    let entry = |i: &serde_json::Value| i["pools"][0]["floor"]["schedule"]["index"].as_u64();
    let high = eventually(Duration::from_secs(60), || async {
        let i = info(&s);
        (entry(&i) == Some(0) && ready(&i) == 2).then_some(i)
    })
    .await
    .expect("the first entry's 2 instances were never ready while it was in force");
    let f = &high["pools"][0]["floor"];
    assert_eq!(
        (&f["effective"], &f["source"]),
        (&2.into(), &"schedule".into()),
        "{f}"
    );
    assert_eq!(f["next"]["provisioned"], 1, "{f}");
    assert!(
        events(&high).iter().any(|e| e["reason"]
            .as_str()
            .unwrap()
            .starts_with("floor 2: provisioned 2 by schedule \"0,20,40 * * * * *\" (UTC)")),
        "{high}"
    );
    let low = eventually(Duration::from_secs(60), || async {
        let i = info(&s);
        (entry(&i) == Some(1)
            && ready(&i) == 1
            && i["pools"][0]["instances"].as_array().unwrap().len() == 1)
            .then_some(i)
    })
    .await
    .expect("the second entry's floor of 1 never took over");
    assert_eq!(low["pools"][0]["floor"]["effective"], 1);
    // The text shows the entry in force (polled: the entries take turns every ten seconds).
    let shown = eventually(Duration::from_secs(30), || async {
        let text = s.cli(&["info", "echo"]).ok().stdout();
        text.contains(
            "floor 1 (min 0, provisioned 1 by schedule \"10,30,50 * * * * *\" (UTC) since",
        )
        .then_some(())
    })
    .await;
    assert!(
        shown.is_some(),
        "{}",
        s.cli(&["info", "echo"]).ok().stdout()
    );
}
