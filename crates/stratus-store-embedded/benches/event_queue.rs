//! Event queue benchmark (issue 5): what the durable async queue sustains through the real
//! `SqliteStore` on a file (WAL, `synchronous = NORMAL`), without HTTP or functions in the way.
//!
//! 1. Accept: `C` tasks enqueueing as fast as they can for `SECS` seconds (each enqueue answered
//!    only once committed), for C = 1, 16, 64: enqueues per second and p50/p99 latency.
//! 2. Cycle: 64 enqueuing tasks, one claimer (batches of 64, like the dispatcher) and a
//!    completion per claimed invocation, for `SECS` seconds: events accepted, claimed and
//!    completed per second, and enqueue → claim delay.
//!
//! `cargo bench -p stratus-store-embedded --bench event_queue` (`SECS`, default 3).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use stratus_core::now_ms;
use stratus_store::{EventStore, NewInvocation, Outcome};
use stratus_store_embedded::SqliteStore;

fn inv(id: String) -> NewInvocation {
    let now = now_ms();
    NewInvocation {
        id,
        function: "sink".into(),
        target: "latest".into(),
        webhook: None,
        payload: br#"{"t0":1733140000000.123}"#.to_vec(),
        content_type: Some("application/json".into()),
        event_type: "stratus.invoke".into(),
        source: "stratus/api".into(),
        created_at: now,
        not_before: now,
        traceparent: None,
    }
}

fn pct(xs: &mut [f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[((p / 100.0) * (xs.len() - 1) as f64).round() as usize]
}

async fn accept(store: Arc<SqliteStore>, tasks: usize, secs: u64, tag: &str) -> (f64, f64, f64) {
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        let tag = tag.to_string();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            while Instant::now() < stop {
                let t0 = Instant::now();
                store.enqueue(inv(format!("{tag}-{t}-{n}"))).await.unwrap();
                lat.push(t0.elapsed().as_secs_f64() * 1e3);
                n += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let rate = all.len() as f64 / secs as f64;
    (rate, pct(&mut all, 50.0), pct(&mut all, 99.0))
}

async fn cycle(store: Arc<SqliteStore>, secs: u64) -> (f64, f64, f64, f64, f64) {
    let done = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for t in 0..64 {
        let (store, done, accepted) = (store.clone(), done.clone(), accepted.clone());
        producers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                store.enqueue(inv(format!("cy-{t}-{n}"))).await.unwrap();
                accepted.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    let claimer = {
        let (store, done, completed) = (store.clone(), done.clone(), completed.clone());
        tokio::spawn(async move {
            let mut claimed = 0u64;
            let mut delays = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let batch = store.claim_due("bench", now_ms(), 64, &[]).await.unwrap();
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let now = now_ms();
                for i in batch {
                    claimed += 1;
                    delays.push((now - i.created_at) as f64);
                    let (store, completed) = (store.clone(), completed.clone());
                    tokio::spawn(async move {
                        let ok = Outcome::Succeeded {
                            status: Some(200),
                            result: Some("{}".into()),
                        };
                        assert!(store.complete(&i.id, "bench", ok, None).await.unwrap());
                        completed.fetch_add(1, Ordering::Relaxed);
                    });
                }
            }
            (claimed, delays)
        })
    };
    tokio::time::sleep(Duration::from_secs(secs)).await;
    done.store(true, Ordering::Relaxed);
    let completed_n = completed.load(Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let (claimed, mut delays) = claimer.await.unwrap();
    let s = secs as f64;
    (
        accepted.load(Ordering::Relaxed) as f64 / s,
        claimed as f64 / s,
        completed_n as f64 / s,
        pct(&mut delays, 50.0),
        pct(&mut delays, 99.0),
    )
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::var("SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("events.db")).unwrap());
    println!("| enqueuing tasks | enqueues/s | p50 | p99 |\n|---:|---:|---:|---:|");
    for c in [1usize, 16, 64] {
        let (rate, p50, p99) = accept(store.clone(), c, secs, &format!("a{c}")).await;
        println!("| {c} | {rate:.0} | {p50:.2} ms | {p99:.2} ms |");
    }
    // A fresh queue: the backlog above would be claimed first.
    let store = Arc::new(SqliteStore::open(&dir.path().join("cycle.db")).unwrap());
    let (acc, cl, co, p50, p99) = cycle(store, secs).await;
    println!(
        "\n| cycle (64 enqueuers, claim 64, complete each) | accepted/s | claimed/s | completed/s | enqueue→claim p50 | p99 |\n|---|---:|---:|---:|---:|---:|"
    );
    println!("| | {acc:.0} | {cl:.0} | {co:.0} | {p50:.0} ms | {p99:.0} ms |");
}
