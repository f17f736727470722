//! Live request statistics per version and per shadowed alias, read by the release controller
//! (and, later, the metrics endpoint and the console). Recording is a few relaxed atomic adds;
//! readers take snapshots and subtract them to get any window they want.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;

/// Upper bounds of the latency buckets, in milliseconds (the last bucket is everything above).
pub const BUCKETS_MS: &[u64] = &[
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000,
    5000, 10_000, 30_000, 60_000,
];

#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; 26],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let ms = d.as_millis() as u64;
        let i = BUCKETS_MS
            .iter()
            .position(|b| ms < *b)
            .unwrap_or(BUCKETS_MS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The sum of every recorded duration.
    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_us.load(Ordering::Relaxed))
    }

    pub fn snapshot(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// A quantile of a bucket snapshot, as the upper bound of the bucket it falls in.
pub fn quantile(buckets: &[u64], q: f64) -> Option<Duration> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut acc = 0;
    for (i, c) in buckets.iter().enumerate() {
        acc += c;
        if acc >= rank {
            let ms = BUCKETS_MS.get(i).copied().unwrap_or(120_000);
            return Some(Duration::from_millis(ms));
        }
    }
    None
}

#[derive(Default)]
pub struct VersionStats {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: Histogram,
    /// Responses by status class, 1xx..5xx.
    classes: [AtomicU64; 5],
    cold_starts: AtomicU64,
    init: Histogram,
    timeouts: AtomicU64,
    /// Platform 429s (queue full, reserved concurrency).
    throttled: AtomicU64,
    /// Platform 503s (no slot within the queue timeout).
    overloaded: AtomicU64,
}

/// What the platform knows about one finished invocation, for the counters.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    pub function: &'a str,
    pub version: u32,
    pub status: u16,
    /// To the response's headers.
    pub elapsed: Duration,
    /// The instance start the request waited for.
    pub init: Option<Duration>,
    /// The platform's error code, when the platform answered.
    pub error: Option<&'a str>,
}

/// Every counter of one version, for the metrics endpoint.
#[derive(Debug, Clone, Default)]
pub struct VersionCounters {
    pub function: String,
    pub version: u32,
    pub classes: [u64; 5],
    pub errors: u64,
    pub latency: Vec<u64>,
    pub latency_sum: Duration,
    pub cold_starts: u64,
    pub init: Vec<u64>,
    pub init_sum: Duration,
    pub timeouts: u64,
    pub throttled: u64,
    pub overloaded: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatsSnapshot {
    pub requests: u64,
    /// Responses with a 5xx status (the function's or the platform's).
    pub errors: u64,
    pub buckets: Vec<u64>,
}

/// Bucket counts between two snapshots of one histogram (`later - earlier`).
pub fn bucket_diff(later: &[u64], earlier: &[u64]) -> Vec<u64> {
    later
        .iter()
        .enumerate()
        .map(|(i, c)| c.saturating_sub(earlier.get(i).copied().unwrap_or(0)))
        .collect()
}

impl StatsSnapshot {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: bucket_diff(&self.buckets, &earlier.buckets),
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    pub fn p99(&self) -> Option<Duration> {
        quantile(&self.buckets, 0.99)
    }
}

type ByVersion = HashMap<u32, Arc<VersionStats>>;

/// Request outcomes by function and version.
#[derive(Default)]
pub struct TrafficStats {
    by_function: RwLock<HashMap<String, ByVersion>>,
}

impl TrafficStats {
    fn get(&self, function: &str, version: u32) -> Arc<VersionStats> {
        if let Some(s) = self
            .by_function
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(function)
            .and_then(|m| m.get(&version))
        {
            return s.clone();
        }
        let mut w = self.by_function.write().unwrap_or_else(|p| p.into_inner());
        w.entry(function.to_string())
            .or_default()
            .entry(version)
            .or_default()
            .clone()
    }

    pub fn record(&self, function: &str, version: u32, status: u16, elapsed: Duration) {
        self.record_outcome(&Outcome {
            function,
            version,
            status,
            elapsed,
            init: None,
            error: None,
        });
    }

    pub fn record_outcome(&self, o: &Outcome<'_>) {
        let s = self.get(o.function, o.version);
        s.requests.fetch_add(1, Ordering::Relaxed);
        if o.status >= 500 {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        let class = (o.status / 100).clamp(1, 5) as usize - 1;
        s.classes[class].fetch_add(1, Ordering::Relaxed);
        s.latency.record(o.elapsed);
        if let Some(init) = o.init {
            s.cold_starts.fetch_add(1, Ordering::Relaxed);
            s.init.record(init);
        }
        let counter = match o.error {
            Some("timeout") => Some(&s.timeouts),
            Some("throttled") => Some(&s.throttled),
            Some("overloaded") => Some(&s.overloaded),
            _ => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every version's counters, sorted by function and version.
    pub fn counters(&self) -> Vec<VersionCounters> {
        let r = self.by_function.read().unwrap_or_else(|p| p.into_inner());
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out: Vec<VersionCounters> = r
            .iter()
            .flat_map(|(f, m)| {
                m.iter().map(move |(v, s)| VersionCounters {
                    function: f.clone(),
                    version: *v,
                    classes: std::array::from_fn(|i| l(&s.classes[i])),
                    errors: l(&s.errors),
                    latency: s.latency.snapshot(),
                    latency_sum: s.latency.sum(),
                    cold_starts: l(&s.cold_starts),
                    init: s.init.snapshot(),
                    init_sum: s.init.sum(),
                    timeouts: l(&s.timeouts),
                    throttled: l(&s.throttled),
                    overloaded: l(&s.overloaded),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.function, a.version).cmp(&(&b.function, b.version)));
        out
    }

    /// Forgets a function's counters (when it is deleted), so label sets stay bounded by what
    /// is deployed.
    pub fn forget(&self, function: &str) {
        self.by_function
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(function);
    }

    pub fn snapshot(&self, function: &str, version: u32) -> StatsSnapshot {
        let s = self.get(function, version);
        StatsSnapshot {
            requests: s.requests.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            buckets: s.latency.snapshot(),
        }
    }
}

/// What mirroring an alias's traffic to its shadow version found.
#[derive(Default)]
pub struct ShadowStats {
    pub mirrored: AtomicU64,
    /// Mirrors skipped because the mirror path was saturated (or its body could not keep up).
    pub dropped: AtomicU64,
    pub mirror_errors: AtomicU64,
    pub status_matches: AtomicU64,
    pub status_mismatches: AtomicU64,
    pub body_matches: AtomicU64,
    pub body_mismatches: AtomicU64,
    pub primary_latency: Histogram,
    pub mirror_latency: Histogram,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShadowSummary {
    pub shadow_version: Option<u32>,
    pub mirrored: u64,
    pub dropped: u64,
    pub mirror_errors: u64,
    pub status_matches: u64,
    pub status_mismatches: u64,
    pub body_matches: u64,
    pub body_mismatches: u64,
    pub primary_p50_ms: Option<u64>,
    pub primary_p99_ms: Option<u64>,
    pub mirror_p50_ms: Option<u64>,
    pub mirror_p99_ms: Option<u64>,
}

#[derive(Default)]
pub struct ShadowRegistry {
    by_alias: RwLock<HashMap<(String, String, u32), Arc<ShadowStats>>>,
}

impl ShadowRegistry {
    pub fn get(&self, function: &str, alias: &str, shadow_version: u32) -> Arc<ShadowStats> {
        let key = (function.to_string(), alias.to_string(), shadow_version);
        if let Some(s) = self
            .by_alias
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return s.clone();
        }
        self.by_alias
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }

    /// Summaries of every shadow version mirrored for an alias so far.
    pub fn summaries(&self, function: &str, alias: &str) -> Vec<ShadowSummary> {
        let r = self.by_alias.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = r
            .iter()
            .filter(|((f, a, _), _)| f == function && a == alias)
            .map(|((_, _, v), s)| {
                let ms =
                    |h: &Histogram, q| quantile(&h.snapshot(), q).map(|d| d.as_millis() as u64);
                let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
                ShadowSummary {
                    shadow_version: Some(*v),
                    mirrored: l(&s.mirrored),
                    dropped: l(&s.dropped),
                    mirror_errors: l(&s.mirror_errors),
                    status_matches: l(&s.status_matches),
                    status_mismatches: l(&s.status_mismatches),
                    body_matches: l(&s.body_matches),
                    body_mismatches: l(&s.body_mismatches),
                    primary_p50_ms: ms(&s.primary_latency, 0.5),
                    primary_p99_ms: ms(&s.primary_latency, 0.99),
                    mirror_p50_ms: ms(&s.mirror_latency, 0.5),
                    mirror_p99_ms: ms(&s.mirror_latency, 0.99),
                }
            })
            .collect();
        out.sort_by_key(|s| s.shadow_version);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_differences_of_snapshots() {
        let s = TrafficStats::default();
        for i in 0..90 {
            s.record("f", 1, 200, Duration::from_millis(4 + i % 3));
        }
        let start = s.snapshot("f", 1);
        for _ in 0..95 {
            s.record("f", 1, 200, Duration::from_millis(8));
        }
        for _ in 0..5 {
            s.record("f", 1, 503, Duration::from_millis(400));
        }
        let w = s.snapshot("f", 1).since(&start);
        assert_eq!((w.requests, w.errors), (100, 5));
        assert!((w.error_rate() - 0.05).abs() < 1e-9);
        assert_eq!(
            w.p99(),
            Some(Duration::from_millis(500)),
            "p99 falls in the 300-500ms bucket"
        );
        assert_eq!(quantile(&w.buckets, 0.5), Some(Duration::from_millis(10)));
        assert_eq!(s.snapshot("f", 2).requests, 0, "versions are apart");
    }
}
