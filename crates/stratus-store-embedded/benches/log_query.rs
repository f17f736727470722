//! Log query benchmark (issue 8): how long it takes to find one request among millions of
//! stored request records, and a `--grep` over the last hour of them, through the real
//! `SqliteStore` (the queries `stratus logs` and `GET /api/v1/requests` run).
//!
//! `RECORDS` (default 10,000,000) records are spread over the last 24 hours, each with one log
//! line; one record in 50,000 has the needle "connection reset" in its line. Half the request
//! ids are the platform's own (UUIDv7, time-ordered), half as a caller might send them (random
//! hex); trace ids start with the time, as the roots Stratus starts do.
//! `cargo bench -p stratus-store-embedded --bench log_query` (`DB=path` keeps the database for
//! a second run, which then skips the fill).

use std::time::{Duration, Instant};

use stratus_core::now_ms;
use stratus_store::{
    LogLine, LogQuery, LogStore, LogStream, RequestQuery, RequestRecord, StatusFilter, Trigger,
};
use stratus_store_embedded::SqliteStore;

fn record(i: u64, now: i64, span_ms: i64, n: u64) -> (RequestRecord, LogLine) {
    // Oldest first, evenly over the span.
    let at_of = |i: u64| now - span_ms + (i as i64 * span_ms) / n as i64;
    let at = at_of(i);
    let rid = if i.is_multiple_of(2) {
        let r = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        format!(
            "{:08x}-{:04x}-7{:03x}-8{:03x}-{:012x}",
            at >> 16,
            at & 0xffff,
            r & 0xfff,
            (r >> 12) & 0xfff,
            i
        )
    } else {
        format!("{:016x}{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i)
    };
    let needle = i % 50_000 == 7;
    let status = if i % 100 == 3 { 503 } else { 200 };
    let r = RequestRecord {
        id: 0,
        request_id: rid.clone(),
        trace_id: format!("{:012x}{:020x}", at_of(i / 3 * 3), i / 3),
        function: format!("fn-{}", i % 20),
        version: 1 + (i % 3) as u32,
        instance: format!("fn-{}-v1-abcdef{:02}", i % 20, i % 7),
        trigger: Trigger::Http,
        method: "GET".into(),
        path: format!("/fn/fn-{}/orders/{}", i % 20, i % 1000),
        start_ms: at,
        duration_us: 800 + i % 5000,
        queue_us: i % 50,
        init_us: None,
        status,
        error: (status == 503).then(|| "overloaded".to_string()),
        bytes_in: 0,
        bytes_out: 120,
    };
    let l = LogLine {
        id: 0,
        at,
        function: r.function.clone(),
        version: r.version,
        instance: r.instance.clone(),
        stream: LogStream::Stdout,
        line: if needle {
            format!("upstream error: connection reset by peer (order {i})")
        } else {
            format!(
                "handled order {} for tenant t-{} in {}us",
                i % 1000,
                i % 997,
                r.duration_us
            )
        },
        request_id: Some(rid),
    };
    (r, l)
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::var("RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let path = std::env::var("DB")
        .map(Into::into)
        .unwrap_or_else(|_| tmp.path().join("logs.db"));
    // The log store's page cache as `stratus serve` opens it.
    let store = SqliteStore::open(&path)
        .and_then(|s| s.with_cache_kib(32 * 1024))
        .unwrap();
    let now = now_ms();
    let span = 24 * 3600 * 1000;
    let have = store
        .query_requests(RequestQuery {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .last()
        .map(|r| r.id)
        .unwrap_or(0) as u64;
    let fill = Instant::now();
    if have < n {
        let batch = 10_000;
        let mut i = have;
        while i < n {
            let end = (i + batch).min(n);
            let (rs, ls): (Vec<_>, Vec<_>) = (i..end).map(|j| record(j, now, span, n)).unzip();
            store.append_requests(rs).await.unwrap();
            store.append(ls).await.unwrap();
            i = end;
            if i.is_multiple_of(1_000_000) {
                eprintln!("  {} records in {:.0}s", i, fill.elapsed().as_secs_f64());
            }
        }
    }
    let filled = fill.elapsed();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(path.with_extension("db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);

    // By request id: 101 different ids of each kind, p50 and worst.
    let mut by_id = Vec::new();
    let mut by_caller_id = Vec::new();
    for k in 0..202u64 {
        let i = (k * 98_765_431) % n;
        let (want, _) = record(i, now, span, n);
        let t = Instant::now();
        let got = store
            .query_requests(RequestQuery {
                request_id: Some(want.request_id.clone()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        if i.is_multiple_of(2) {
            by_id.push(t.elapsed());
        } else {
            by_caller_id.push(t.elapsed());
        }
        assert_eq!(got.len(), 1, "record {i}");
        assert_eq!(got[0].request_id, want.request_id);
    }
    let worst_id = *by_id.iter().max().unwrap();
    let worst_caller_id = *by_caller_id.iter().max().unwrap();
    let mut with_lines = Vec::new();
    for k in 0..21u64 {
        let (want, _) = record((k * 7_654_321) % n, now, span, n);
        let t = Instant::now();
        let got = store
            .query(LogQuery {
                request_ids: vec![want.request_id.clone()],
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        with_lines.push(t.elapsed());
        assert_eq!(got.len(), 1);
    }
    let (trace, _) = record(n / 2, now, span, n);
    let t = Instant::now();
    let traced = store
        .query_requests(RequestQuery {
            trace_id: Some(trace.trace_id),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let by_trace = t.elapsed();
    let hour_ago = now - 3600 * 1000;
    let t = Instant::now();
    let grep = store
        .query_requests(RequestQuery {
            since_ms: Some(hour_ago),
            grep: Some("connection reset".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let grep_hour = t.elapsed();
    let expected = (0..n)
        .filter(|i| i % 50_000 == 7)
        .filter(|i| record(*i, now, span, n).0.start_ms >= hour_ago)
        .count();
    assert_eq!(
        grep.len(),
        expected.min(100),
        "grep finds exactly the needles of the hour"
    );
    let t = Instant::now();
    let errors = store
        .query_requests(RequestQuery {
            function: Some("fn-3".into()),
            since_ms: Some(hour_ago),
            status: StatusFilter::parse("5xx"),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let status_hour = t.elapsed();

    let in_hour = n as f64 / 24.0;
    println!(
        "log query: {n} request records + {n} log lines over 24 h in SQLite ({:.2} GiB on disk), release build",
        size as f64 / (1u64 << 30) as f64
    );
    if have < n {
        println!(
            "fill: {:.0} s ({:.0} records+lines/s, batches of 10,000 through append_requests/append)",
            filled.as_secs_f64(),
            (n - have) as f64 / filled.as_secs_f64()
        );
    }
    println!("{:<62} {:>10}", "query", "time");
    let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1000.0);
    println!(
        "{:<62} {:>10}",
        format!("one request by its UUIDv7 id (p50 of {})", by_id.len()),
        ms(p50(by_id.clone()))
    );
    println!(
        "{:<62} {:>10}",
        "one request by its UUIDv7 id (worst)",
        ms(worst_id)
    );
    println!(
        "{:<62} {:>10}",
        format!(
            "one request by a caller's random id (p50 of {})",
            by_caller_id.len()
        ),
        ms(p50(by_caller_id.clone()))
    );
    println!(
        "{:<62} {:>10}",
        "one request by a caller's random id (worst)",
        ms(worst_caller_id)
    );
    println!(
        "{:<62} {:>10}",
        "that request's log lines (p50 of 21)",
        ms(p50(with_lines))
    );
    println!(
        "{:<62} {:>10}",
        format!("one trace's requests ({} found)", traced.len()),
        ms(by_trace)
    );
    println!(
        "{:<62} {:>10}",
        format!(
            "--grep over the last hour (~{in_hour:.0} records, {} found)",
            grep.len()
        ),
        ms(grep_hour)
    );
    println!(
        "{:<62} {:>10}",
        format!(
            "--status 5xx of one function, last hour ({} found)",
            errors.len()
        ),
        ms(status_hour)
    );
}
