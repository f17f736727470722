//! Telemetry that must never slow the request path.
//!
//! [`LogHub`] takes log lines from runtimes (instance stdout/stderr, platform lines) and request
//! records from the gateway and the event dispatcher through one bounded channel with
//! `try_send`: when the writer falls behind, entries are dropped and counted, never waited for.
//! A single task batches them into the [`LogStore`] and prunes by age and size.
//! The console and `stratus logs --follow` read the store, so a tail works the same in cluster
//! mode.
#![forbid(unsafe_code)]

pub mod context;
pub mod metrics;
pub mod stats;
pub mod trace;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use stratus_core::now_ms;
use stratus_runtime::{LogSink, RequestSink};
use stratus_store::{CaptureRecord, LogLine, LogStore, RequestRecord};
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub buffer: usize,
    pub batch: usize,
    pub flush_every: Duration,
    pub retention: Duration,
    pub max_lines: u64,
    /// Bytes of captured requests kept (bodies and headers); the oldest go first.
    pub capture_max_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            // Large batches: a batch of request records is stored as one chunk, and a query
            // skips or decodes whole chunks.
            buffer: 32_768,
            batch: 4_096,
            flush_every: Duration::from_millis(200),
            retention: Duration::from_secs(7 * 24 * 3600),
            max_lines: 1_000_000,
            capture_max_bytes: 256 * 1024 * 1024,
        }
    }
}

enum Entry {
    Line(LogLine),
    Request(Box<RequestRecord>),
    Capture(Box<CaptureRecord>),
}

pub struct LogHub {
    tx: mpsc::Sender<Entry>,
    dropped: AtomicU64,
    dropped_records: AtomicU64,
    echo: bool,
    flush_every: Duration,
}

impl LogHub {
    /// Starts the writer task. With `echo`, lines are also printed to the server's stderr.
    pub fn start(store: Arc<dyn LogStore>, config: LogConfig, echo: bool) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(config.buffer);
        let flush_every = config.flush_every;
        tokio::spawn(writer(store, rx, config));
        Arc::new(Self {
            tx,
            dropped: AtomicU64::new(0),
            dropped_records: AtomicU64::new(0),
            echo,
            flush_every,
        })
    }

    /// Lines dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Request records dropped because the writer was behind.
    pub fn dropped_records(&self) -> u64 {
        self.dropped_records.load(Ordering::Relaxed)
    }

    /// Waits until everything sent so far has been written (for shutdown).
    pub async fn flush(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.tx.capacity() < self.tx.max_capacity() && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The writer may hold one batch in hand, waiting for more for `flush_every`.
        tokio::time::sleep(self.flush_every + Duration::from_millis(100)).await;
    }
}

impl LogSink for LogHub {
    fn emit(&self, line: LogLine) {
        if self.echo {
            eprintln!(
                "[{} v{} {}] {}",
                line.function, line.version, line.instance, line.line
            );
        }
        if self.tx.try_send(Entry::Line(line)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl RequestSink for LogHub {
    fn record(&self, record: RequestRecord) {
        if self.tx.try_send(Entry::Request(Box::new(record))).is_err() {
            self.dropped_records.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn capture(&self, capture: CaptureRecord) {
        if self.tx.try_send(Entry::Capture(Box::new(capture))).is_err() {
            self.dropped_records.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Tops `batch` up to `max` entries for at most `wait`, returning as soon as it is full. It
/// looks at the channel every 10 ms rather than waiting on it: a receiver woken per entry costs
/// a task wake-up per request, and a fixed sleep of `wait` let a fast producer overflow the
/// channel meanwhile.
pub(crate) async fn fill_batch<T>(
    rx: &mut mpsc::Receiver<T>,
    batch: &mut Vec<T>,
    max: usize,
    wait: Duration,
) {
    const LOOK_EVERY: Duration = Duration::from_millis(10);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        while batch.len() < max {
            match rx.try_recv() {
                Ok(x) => batch.push(x),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        let now = tokio::time::Instant::now();
        if batch.len() >= max || now >= deadline {
            return;
        }
        tokio::time::sleep(LOOK_EVERY.min(deadline - now)).await;
    }
}

async fn writer(store: Arc<dyn LogStore>, mut rx: mpsc::Receiver<Entry>, config: LogConfig) {
    let mut prune = tokio::time::interval(Duration::from_secs(600));
    let mut batch = Vec::with_capacity(config.batch);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, config.batch) => {
                if n == 0 {
                    return;
                }
                // Let a burst accumulate into one transaction.
                fill_batch(&mut rx, &mut batch, config.batch, config.flush_every).await;
                let mut lines = Vec::with_capacity(batch.len());
                let mut records = Vec::with_capacity(batch.len());
                let mut captures = Vec::new();
                for e in batch.drain(..) {
                    match e {
                        Entry::Line(l) => lines.push(l),
                        Entry::Request(r) => records.push(*r),
                        Entry::Capture(c) => captures.push(*c),
                    }
                }
                if !captures.is_empty()
                    && let Err(e) = store.append_captures(captures).await
                {
                    tracing::error!("dropping a batch of captured requests: {e}");
                }
                // Records first: a reader that finds a line by request id finds its record.
                if !records.is_empty()
                    && let Err(e) = store.append_requests(records).await
                {
                    tracing::error!("dropping a batch of request records: {e}");
                }
                if !lines.is_empty()
                    && let Err(e) = store.append(lines).await
                {
                    tracing::error!("dropping a batch of log lines: {e}");
                }
            }
            _ = prune.tick() => {
                let before = now_ms() - config.retention.as_millis() as i64;
                if let Err(e) = store.prune(before, config.max_lines).await {
                    tracing::warn!("log retention failed: {e}");
                }
                if let Err(e) = store.prune_captures(before, config.capture_max_bytes).await {
                    tracing::warn!("capture retention failed: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use stratus_store::{LogQuery, LogStream};
    use stratus_store_embedded::SqliteStore;

    use super::*;

    fn line(i: usize) -> LogLine {
        LogLine {
            id: 0,
            at: now_ms(),
            function: "f".into(),
            version: 1,
            instance: "i".into(),
            stream: LogStream::Stdout,
            line: format!("l{i}"),
            request_id: None,
        }
    }

    #[tokio::test]
    async fn lines_reach_the_store_in_order() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        let hub = LogHub::start(store.clone(), LogConfig::default(), false);
        for i in 0..1000 {
            hub.emit(line(i));
        }
        hub.flush().await;
        let got = store
            .query(LogQuery {
                function: Some("f".into()),
                limit: 5000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(got.len(), 1000);
        assert_eq!(got[999].line, "l999");
        assert_eq!(hub.dropped(), 0);
    }

    #[tokio::test]
    async fn overflow_is_counted_not_waited_for() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        let config = LogConfig {
            buffer: 8,
            flush_every: Duration::from_secs(3600),
            ..LogConfig::default()
        };
        let hub = LogHub::start(store, config, false);
        for i in 0..100 {
            hub.emit(line(i));
        }
        // At most one buffer's worth is queued and one taken by the writer; the rest is dropped.
        assert!(hub.dropped() >= 100 - 2 * 8, "got {}", hub.dropped());
    }
}
