//! Traffic management: weights, rules, stickiness, shadow traffic, progressive delivery.

use std::collections::HashMap;
use std::time::Duration;

use crate::harness::{App, Server, eventually, http};

/// Deploys the echo fixture `n` times: versions 1..=n.
fn versions(s: &Server, n: usize) -> App {
    let app = App::fixture("echo");
    for i in 0..n {
        app.write("VERSION", &i.to_string());
        s.deploy(&app.dir).ok();
    }
    app
}

async fn served_by(s: &Server, path: &str, headers: &[(&str, &str)]) -> String {
    let mut req = http().get(format!("{}{path}", s.gw));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.headers()["x-stratus-version"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn weighted_split_rules_and_sticky_tenants() {
    let s = Server::start();
    versions(&s, 4);
    s.cli(&["alias", "set", "echo", "release", "1=50", "2=30", "3=20"])
        .ok();
    let mut counts: HashMap<String, u32> = HashMap::new();
    let n = 1000;
    for _ in 0..n {
        *counts
            .entry(served_by(&s, "/fn/echo@release/", &[]).await)
            .or_default() += 1;
    }
    // Within 4 standard deviations of the expected share (binomial), per version.
    for (v, p) in [("1", 0.5), ("2", 0.3), ("3", 0.2)] {
        let got = counts.get(v).copied().unwrap_or(0) as f64 / n as f64;
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (got - p).abs() < 4.0 * sd,
            "version {v}: {got} of traffic, expected {p} ({counts:?})"
        );
    }
    assert!(!counts.contains_key("4"));

    // Rules win over weights, first match first; stickiness pins tenants.
    let out = s.cli(&[
        "alias",
        "set",
        "echo",
        "release",
        "1=90",
        "2=10",
        "--rule",
        "header:x-tenant-id in t1,t7 -> 4",
        "--rule",
        "cookie:beta=yes -> 3",
        "--rule",
        "query:canary=1 -> 3",
        "--sticky",
        "header:x-tenant-id",
    ]);
    out.ok();
    assert!(
        out.stdout()
            .contains("1=90 2=10 +3 rules sticky:x-tenant-id"),
        "{}",
        out.stdout()
    );
    assert_eq!(
        served_by(&s, "/fn/echo@release/", &[("x-tenant-id", "t7")]).await,
        "4"
    );
    assert_eq!(
        served_by(&s, "/fn/echo@release/", &[("cookie", "a=b; beta=yes")]).await,
        "3"
    );
    assert_eq!(served_by(&s, "/fn/echo@release/?canary=1", &[]).await, "3");
    let mut per_tenant = HashMap::new();
    for round in 0..3 {
        for t in 0..40 {
            let tenant = format!("tenant-{t}");
            let v = served_by(&s, "/fn/echo@release/", &[("x-tenant-id", &tenant)]).await;
            if round == 0 {
                per_tenant.insert(tenant, v);
            } else {
                assert_eq!(per_tenant[&tenant], v, "{tenant} flipped between versions");
            }
        }
    }
    // Rules may point at another alias (its weights decide).
    s.cli(&["alias", "set", "echo", "canary", "2"]).ok();
    s.cli(&[
        "alias",
        "set",
        "echo",
        "release",
        "1",
        "--rule",
        "header:x-beta=1 -> canary",
    ])
    .ok();
    assert_eq!(
        served_by(&s, "/fn/echo@release/", &[("x-beta", "1")]).await,
        "2"
    );
    assert_eq!(served_by(&s, "/fn/echo@release/", &[]).await, "1");
    // The source address counts too (tests call from loopback).
    s.cli(&[
        "alias",
        "set",
        "echo",
        "release",
        "1",
        "--rule",
        "cidr:127.0.0.0/8 -> 3",
    ])
    .ok();
    assert_eq!(served_by(&s, "/fn/echo@release/", &[]).await, "3");
}

#[tokio::test]
async fn bad_policies_are_refused_and_change_nothing() {
    let s = Server::start();
    versions(&s, 2);
    s.cli(&["alias", "set", "echo", "release", "1"]).ok();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["1=90", "2=20"], 2, "add up to 110"),
        (&["1=50", "9=50"], 3, "no version 9"),
        (
            &["1", "--rule", "header:bad header=1 -> 2"],
            2,
            "not a valid header name",
        ),
        (&["1", "--rule", "query:x ~ ( -> 2"], 2, "invalid pattern"),
        (
            &["1", "--rule", "header:x=1 -> nosuchalias"],
            3,
            "no alias `nosuchalias`",
        ),
        (&["1", "--rule", "header:x=1"], 2, "CONDITION -> TARGET"),
        (&["1", "--shadow", "7:10%"], 3, "no version 7"),
    ];
    for (args, code, msg) in cases {
        let mut full = vec!["alias", "set", "echo", "release"];
        full.extend_from_slice(args);
        let r = s.cli(&full);
        assert_eq!(r.code(), *code, "{args:?}: {}", r.stderr());
        assert!(r.stderr().contains(msg), "{args:?}: {}", r.stderr());
    }
    let history = s
        .cli(&["alias", "history", "echo", "release", "--json"])
        .ok()
        .json();
    assert_eq!(
        history.as_array().unwrap().len(),
        1,
        "no refused change was recorded"
    );
}

#[tokio::test]
async fn shadow_traffic_is_mirrored_compared_and_never_seen() {
    let s = Server::start();
    versions(&s, 2);
    s.cli(&[
        "alias",
        "set",
        "echo",
        "release",
        "1",
        "--shadow",
        "2:100%",
        "--compare-body",
    ])
    .ok();
    for _ in 0..20 {
        assert_eq!(
            served_by(&s, "/fn/echo@release/same", &[]).await,
            "1",
            "callers only see the primary"
        );
    }
    let summary = eventually(Duration::from_secs(10), || async {
        let v = s
            .cli(&["alias", "shadow", "echo", "release", "--json"])
            .ok()
            .json();
        (v["results"][0]["status_matches"].as_u64() == Some(20)).then_some(v)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "20 mirrored requests compared: {}",
            s.cli(&["alias", "shadow", "echo", "release", "--json"])
                .stdout()
        )
    });
    let r = &summary["results"][0];
    assert_eq!(r["shadow_version"], 2);
    assert_eq!(r["mirrored"], 20);
    // The echo body names its version, so bodies differ.
    assert_eq!(r["body_mismatches"], 20);
    assert_eq!(r["dropped"], 0);
    // Bodies are mirrored too.
    let resp = http()
        .post(format!("{}/fn/echo@release/upload", s.gw))
        .body(vec![7u8; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

async fn hit(s: &Server, n: usize) {
    for _ in 0..n {
        let _ = http()
            .get(format!("{}/fn/echo@release/", s.gw))
            .send()
            .await
            .unwrap();
    }
}

async fn release_state(s: &Server) -> serde_json::Value {
    s.cli(&["release", "status", "echo", "--json"]).ok().json()[0].clone()
}

#[tokio::test]
async fn progressive_release_promotes_a_healthy_version() {
    let s = Server::start();
    versions(&s, 2);
    s.cli(&["alias", "set", "echo", "release", "1"]).ok();
    let out = s.cli(&[
        "release",
        "echo",
        "--to",
        "2",
        "--steps",
        "50,100",
        "--interval",
        "1s",
        "--max-error-rate",
        "5%",
    ]);
    out.ok();
    assert!(
        out.stdout().contains("50% to version 2"),
        "{}",
        out.stdout()
    );
    let aliases = s.cli(&["alias", "list", "echo"]).ok().stdout();
    assert!(aliases.contains("1=50 2=50"), "{aliases}");
    let done = eventually(Duration::from_secs(20), || async {
        hit(&s, 10).await;
        let r = release_state(&s).await;
        (r["state"] == "promoted").then_some(r)
    })
    .await
    .expect("the release is promoted");
    assert_eq!(done["events"].as_array().unwrap().len(), 3, "{done}");
    assert_eq!(served_by(&s, "/fn/echo@release/", &[]).await, "2");
    let history = s
        .cli(&["alias", "history", "echo", "release", "--json"])
        .ok()
        .json();
    let progressive: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["reason"] == "progressive")
        .collect();
    assert_eq!(progressive.len(), 3, "every step is in the alias history");
    assert!(
        progressive[2]["note"]
            .as_str()
            .unwrap()
            .contains("promoted")
    );
    assert_eq!(progressive[2]["actor"], "release-controller");
}

#[tokio::test]
async fn progressive_release_rolls_back_a_failing_version() {
    let s = Server::start();
    let app = versions(&s, 1);
    app.edit_manifest("GREETING = \"hi\"", "GREETING = \"hi\"\nFAIL = \"1\"");
    s.deploy(&app.dir).ok();
    s.cli(&["alias", "set", "echo", "release", "1"]).ok();
    s.cli(&[
        "release",
        "echo",
        "--to",
        "2",
        "--steps",
        "50,100",
        "--interval",
        "1m",
        "--max-error-rate",
        "1%",
    ])
    .ok();
    let done = eventually(Duration::from_secs(20), || async {
        hit(&s, 10).await;
        let r = release_state(&s).await;
        (r["state"] == "rolled_back").then_some(r)
    })
    .await
    .expect("the failing version is rolled back long before the 1m interval");
    let last = done["events"].as_array().unwrap().last().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(last.contains("error rate"), "{last}");
    for _ in 0..10 {
        assert_eq!(served_by(&s, "/fn/echo@release/", &[]).await, "1");
    }
    // A second release may start now; abort stops it.
    s.cli(&[
        "release",
        "echo",
        "--to",
        "2",
        "--steps",
        "10,100",
        "--interval",
        "1m",
    ])
    .ok();
    let again = s.cli(&["release", "echo", "--to", "2"]);
    assert_eq!(again.code(), 4, "one release at a time: {}", again.stderr());
    s.cli(&["release", "abort", "echo"]).ok();
    assert_eq!(release_state(&s).await["state"], "aborted");
    assert_eq!(served_by(&s, "/fn/echo@release/", &[]).await, "1");
}

#[tokio::test]
async fn a_release_survives_a_server_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = Server::start_in(&data);
    versions(&s, 2);
    s.cli(&["alias", "set", "echo", "release", "1"]).ok();
    s.cli(&[
        "release",
        "echo",
        "--to",
        "2",
        "--steps",
        "50,100",
        "--interval",
        "2s",
    ])
    .ok();
    s.kill9();
    let s = Server::start_in(&data);
    let r = release_state(&s).await;
    assert_eq!(r["state"], "running", "still running after the restart");
    let aliases = s.cli(&["alias", "list", "echo"]).ok().stdout();
    assert!(
        aliases.contains("1=50 2=50"),
        "the step in force is kept: {aliases}"
    );
    let done = eventually(Duration::from_secs(30), || async {
        hit(&s, 5).await;
        let r = release_state(&s).await;
        (r["state"] == "promoted").then_some(r)
    })
    .await;
    assert!(done.is_some(), "the resumed release completes");
}
