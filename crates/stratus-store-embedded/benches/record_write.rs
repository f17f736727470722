//! Request-record write benchmark (issue 8's overhead): what one request record costs the log
//! store's writer, through the real `SqliteStore::append_requests` in the batches `LogHub`
//! writes (4,096), on a fresh database opened the way `stratus serve` opens it.
//!
//! Two id schemes side by side, in one run: fully random request and trace ids (UUIDv4-style),
//! and time-ordered ones (UUIDv7 request ids, trace ids that start with the time). A random key
//! lands each insert on a random page of its index, so every batch dirties (and the WAL copies)
//! a page per record once the index outgrows the cache; an ordered key appends at the right edge.
//!
//! `cargo bench -p stratus-store-embedded --bench record_write` (`RECORDS`, default 2,000,000:
//! about a minute of the hello benchmark's rate).

use std::time::Instant;

use stratus_core::now_ms;
use stratus_store::{LogStore, RequestRecord, Trigger};
use stratus_store_embedded::SqliteStore;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A request id and a trace id, random or time-ordered.
fn ids(ordered: bool, i: u64, at_ms: i64) -> (String, String) {
    let r: [u8; 16] = rand_bytes(i);
    if ordered {
        let mut rid = r;
        rid[..6].copy_from_slice(&(at_ms as u64).to_be_bytes()[2..]);
        let mut tid = rand_bytes(i ^ 0x5555);
        tid[..6].copy_from_slice(&(at_ms as u64).to_be_bytes()[2..]);
        (hex(&rid), hex(&tid))
    } else {
        (hex(&r), hex(&rand_bytes(i ^ 0x5555)))
    }
}

/// splitmix64: reproducible bytes without a dependency.
fn rand_bytes(seed: u64) -> [u8; 16] {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut out = [0u8; 16];
    for chunk in out.chunks_mut(8) {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes());
    }
    out
}

fn record(ordered: bool, i: u64, at: i64) -> RequestRecord {
    let (request_id, trace_id) = ids(ordered, i, at);
    RequestRecord {
        id: 0,
        request_id,
        trace_id,
        function: "hello".into(),
        version: 1,
        instance: "hello-v1-3f9a2c".into(),
        trigger: Trigger::Http,
        method: "GET".into(),
        path: "/".into(),
        start_ms: at,
        duration_us: 400 + i % 300,
        queue_us: 0,
        init_us: None,
        status: 200,
        error: None,
        bytes_in: 0,
        bytes_out: 12,
    }
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::var("RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let batch = 4096u64;
    println!(
        "record write: {n} request records in batches of {batch}, fresh SQLite log store (32 MiB cache), release build"
    );
    println!("| ids | records/s | µs/record | last 10 % µs/record | on disk MiB |");
    println!("|---|---:|---:|---:|---:|");
    for ordered in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("logs.db");
        let store = SqliteStore::open(&path)
            .and_then(|s| s.with_cache_kib(32 * 1024))
            .unwrap();
        // Records 38,000 a second apart in time, as the hello benchmark writes them.
        // Only the store's call is timed: making up the records is the gateway's cost.
        let t0 = now_ms();
        let mut all = 0.0;
        let mut tail = 0.0;
        let mut i = 0;
        while i < n {
            let end = (i + batch).min(n);
            let rs = (i..end)
                .map(|j| record(ordered, j, t0 + (j * 1000 / 38_000) as i64))
                .collect();
            let start = Instant::now();
            store.append_requests(rs).await.unwrap();
            let took = start.elapsed().as_secs_f64();
            all += took;
            if i >= n * 9 / 10 {
                tail += took;
            }
            i = end;
        }
        let tail_us = tail * 1e6 / (n - n * 9 / 10) as f64;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
            + std::fs::metadata(path.with_extension("db-wal"))
                .map(|m| m.len())
                .unwrap_or(0);
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.0} |",
            if ordered { "time-ordered" } else { "random" },
            n as f64 / all,
            all * 1e6 / n as f64,
            tail_us,
            size as f64 / (1 << 20) as f64
        );
    }
}
