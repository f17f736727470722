//! The `/metrics` exposition: OpenTelemetry's FaaS conventions (`faas.invocations`,
//! `faas.errors`, `faas.invoke_duration`, `faas.init_duration`, `faas.coldstarts`,
//! `faas.timeouts`, with `faas.name` / `faas.version` attributes) mapped to Prometheus names,
//! plus the scaler's gauges and the node's process metrics, in the Prometheus text format 0.0.4.
//!
//! Why a small encoder of our own: `prometheus-client` writes only OpenMetrics, whose counter
//! families are named without `_total`, and `promtool check metrics` (the reference linter the
//! issue names) reads the classic text format and rejects that. The format is a few lines of
//! `# HELP`, `# TYPE` and samples; escaping is the only subtle part and is tested.
//!
//! Nothing here runs on the request path: the counters are `TrafficStats`' atomics, read and
//! encoded at scrape time. Label values are function names, version numbers, status classes
//! and instance states — bounded by what is deployed, never by what clients send.

use std::fmt::Write as _;
use std::time::Duration;

use crate::stats::{BUCKETS_MS, VersionCounters};

/// One version's pool, as the scaler sees it at scrape time.
#[derive(Debug, Clone, Default)]
pub struct PoolGauges {
    pub function: String,
    pub version: u32,
    pub starting: u32,
    pub ready: u32,
    pub draining: u32,
    pub in_flight: u32,
    pub queued: u32,
    pub desired: u32,
}

/// Counters of the telemetry pipeline itself: what it had to drop to stay off the request path.
#[derive(Debug, Clone, Default)]
pub struct PipelineCounters {
    pub log_lines_dropped: u64,
    pub records_dropped: u64,
    pub spans_dropped: u64,
    pub spans_exported: u64,
}

/// Writes families in the Prometheus text format.
struct Encoder {
    out: String,
}

impl Encoder {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.out,
            "# HELP {name} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        if value.is_infinite() {
            self.out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
        } else if value.fract() == 0.0 && value.abs() < 1e15 {
            let _ = write!(self.out, "{}", value as i64);
        } else {
            let _ = write!(self.out, "{value}");
        }
        self.out.push('\n');
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], buckets: &[u64], sum: Duration) {
        let mut acc = 0;
        for (i, c) in buckets.iter().enumerate() {
            acc += c;
            let le = match BUCKETS_MS.get(i) {
                Some(ms) => format!("{}", *ms as f64 / 1000.0),
                None => "+Inf".to_string(),
            };
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &with_le, acc as f64);
        }
        self.sample(&format!("{name}_sum"), labels, sum.as_secs_f64());
        self.sample(&format!("{name}_count"), labels, acc as f64);
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every family.
pub fn render(
    versions: Vec<VersionCounters>,
    pools: Vec<PoolGauges>,
    pipeline: PipelineCounters,
) -> String {
    let mut e = Encoder { out: String::new() };
    let vl: Vec<(String, String)> = versions
        .iter()
        .map(|v| (v.function.clone(), v.version.to_string()))
        .collect();
    let labels = |i: usize| {
        [
            ("faas_name", vl[i].0.as_str()),
            ("faas_version", vl[i].1.as_str()),
        ]
    };

    e.family(
        "faas_invocations_total",
        "counter",
        "Invocations of a function version, by response status class.",
    );
    for (i, v) in versions.iter().enumerate() {
        for (c, class) in CLASSES.iter().enumerate() {
            if v.classes[c] == 0 && c != 1 {
                continue;
            }
            let [a, b] = labels(i);
            e.sample(
                "faas_invocations_total",
                &[a, b, ("status_class", class)],
                v.classes[c] as f64,
            );
        }
    }
    type Pick = fn(&VersionCounters) -> u64;
    let simple: [(&str, &str, Pick); 3] = [
        (
            "faas_errors_total",
            "Invocations that ended in a 5xx (the function's or the platform's).",
            |v| v.errors,
        ),
        (
            "faas_coldstarts_total",
            "Invocations that waited for an instance to start.",
            |v| v.cold_starts,
        ),
        (
            "faas_timeouts_total",
            "Invocations cut at the function's timeout (504).",
            |v| v.timeouts,
        ),
    ];
    for (name, help, pick) in simple {
        e.family(name, "counter", help);
        for (i, v) in versions.iter().enumerate() {
            e.sample(name, &labels(i), pick(v) as f64);
        }
    }
    e.family(
        "stratus_throttles_total",
        "counter",
        "Requests refused for capacity: 429 (queue full, reserved concurrency) and 503 (no slot within the queue timeout).",
    );
    for (i, v) in versions.iter().enumerate() {
        for (status, n) in [("429", v.throttled), ("503", v.overloaded)] {
            let [a, b] = labels(i);
            e.sample(
                "stratus_throttles_total",
                &[a, b, ("status", status)],
                n as f64,
            );
        }
    }
    e.family(
        "faas_invoke_duration_seconds",
        "histogram",
        "Time from receiving an invocation to the function's response headers.",
    );
    for (i, v) in versions.iter().enumerate() {
        e.histogram(
            "faas_invoke_duration_seconds",
            &labels(i),
            &v.latency,
            v.latency_sum,
        );
    }
    e.family(
        "faas_init_duration_seconds",
        "histogram",
        "Instance start time paid by the invocations that waited for it.",
    );
    for (i, v) in versions.iter().enumerate() {
        e.histogram(
            "faas_init_duration_seconds",
            &labels(i),
            &v.init,
            v.init_sum,
        );
    }

    e.family(
        "stratus_instances",
        "gauge",
        "Instances of a function version by state.",
    );
    for p in &pools {
        let ver = p.version.to_string();
        for (state, n) in [
            ("starting", p.starting),
            ("ready", p.ready),
            ("draining", p.draining),
        ] {
            e.sample(
                "stratus_instances",
                &[
                    ("faas_name", &p.function),
                    ("faas_version", &ver),
                    ("state", state),
                ],
                n as f64,
            );
        }
    }
    type PoolPick = fn(&PoolGauges) -> u32;
    let pool_gauges: [(&str, &str, PoolPick); 3] = [
        (
            "stratus_inflight_requests",
            "Requests being served by a function version's instances (its concurrency).",
            |p| p.in_flight,
        ),
        (
            "stratus_queue_depth",
            "Requests waiting for a free slot of a function version.",
            |p| p.queued,
        ),
        (
            "stratus_desired_instances",
            "Instances the autoscaler wants for a function version.",
            |p| p.desired,
        ),
    ];
    for (name, help, pick) in pool_gauges {
        e.family(name, "gauge", help);
        for p in &pools {
            let ver = p.version.to_string();
            e.sample(
                name,
                &[("faas_name", &p.function), ("faas_version", &ver)],
                pick(p) as f64,
            );
        }
    }
    e.family(
        "http_server_active_requests",
        "gauge",
        "Requests the gateway is serving, over all functions.",
    );
    e.sample(
        "http_server_active_requests",
        &[],
        pools.iter().map(|p| p.in_flight as f64).sum(),
    );

    for (name, help, n) in [
        (
            "stratus_log_lines_dropped_total",
            "Function log lines dropped because the log writer was behind.",
            pipeline.log_lines_dropped,
        ),
        (
            "stratus_request_records_dropped_total",
            "Request records dropped because the log writer was behind.",
            pipeline.records_dropped,
        ),
        (
            "stratus_spans_dropped_total",
            "Trace spans dropped because the exporter was behind or failing.",
            pipeline.spans_dropped,
        ),
        (
            "stratus_spans_exported_total",
            "Trace spans accepted by the OTLP endpoint.",
            pipeline.spans_exported,
        ),
    ] {
        e.family(name, "counter", help);
        e.sample(name, &[], n as f64);
    }

    if let Some(p) = ProcessStats::read() {
        e.family(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the stratus process.",
        );
        e.sample("process_cpu_seconds_total", &[], p.cpu_seconds);
        for (name, help, v) in [
            (
                "process_resident_memory_bytes",
                "Resident memory of the stratus process.",
                p.rss_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory of the stratus process.",
                p.vsize_bytes as f64,
            ),
            (
                "process_open_fds",
                "Open file descriptors.",
                p.open_fds as f64,
            ),
            (
                "process_threads",
                "Threads of the stratus process.",
                p.threads as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch.",
                p.start_time_seconds,
            ),
        ] {
            e.family(name, "gauge", help);
            e.sample(name, &[], v);
        }
    }
    e.out
}

/// The node's own process, from `/proc/self` (Linux; absent elsewhere).
#[derive(Debug, Clone)]
struct ProcessStats {
    cpu_seconds: f64,
    rss_bytes: u64,
    vsize_bytes: u64,
    open_fds: u64,
    threads: u64,
    start_time_seconds: f64,
}

impl ProcessStats {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        // Linux reports times in clock ticks (USER_HZ, 100 on every mainstream architecture)
        // and RSS in pages.
        let ticks = 100.0;
        let page = 4096;
        let utime = num(11)?;
        let stime = num(12)?;
        let threads = num(17)?;
        let starttime = num(19)?;
        let vsize = num(20)?;
        let rss = num(21)?;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Some(Self {
            cpu_seconds: (utime + stime) as f64 / ticks,
            rss_bytes: rss * page,
            vsize_bytes: vsize,
            open_fds,
            threads,
            start_time_seconds: boot as f64 + starttime as f64 / ticks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Outcome, TrafficStats};

    pub(super) fn sample() -> String {
        let stats = TrafficStats::default();
        let o = |status, error, init| Outcome {
            function: "hello",
            version: 2,
            status,
            elapsed: Duration::from_millis(12),
            init,
            error,
        };
        stats.record_outcome(&o(200, None, Some(Duration::from_millis(80))));
        stats.record_outcome(&o(200, None, None));
        stats.record_outcome(&o(504, Some("timeout"), None));
        stats.record_outcome(&o(429, Some("throttled"), None));
        render(
            stats.counters(),
            vec![PoolGauges {
                function: "hello".into(),
                version: 2,
                ready: 3,
                in_flight: 4,
                queued: 1,
                desired: 3,
                ..Default::default()
            }],
            PipelineCounters::default(),
        )
    }

    #[test]
    fn counters_and_gauges_are_exposed_with_bounded_labels() {
        let text = sample();
        for want in [
            r#"faas_invocations_total{faas_name="hello",faas_version="2",status_class="2xx"} 2"#,
            r#"faas_invocations_total{faas_name="hello",faas_version="2",status_class="5xx"} 1"#,
            r#"faas_invocations_total{faas_name="hello",faas_version="2",status_class="4xx"} 1"#,
            r#"faas_errors_total{faas_name="hello",faas_version="2"} 1"#,
            r#"faas_coldstarts_total{faas_name="hello",faas_version="2"} 1"#,
            r#"faas_timeouts_total{faas_name="hello",faas_version="2"} 1"#,
            r#"stratus_throttles_total{faas_name="hello",faas_version="2",status="429"} 1"#,
            r#"faas_invoke_duration_seconds_count{faas_name="hello",faas_version="2"} 4"#,
            r#"faas_invoke_duration_seconds_bucket{faas_name="hello",faas_version="2",le="0.015"} 4"#,
            r#"faas_invoke_duration_seconds_bucket{faas_name="hello",faas_version="2",le="0.01"} 0"#,
            r#"faas_init_duration_seconds_count{faas_name="hello",faas_version="2"} 1"#,
            r#"stratus_instances{faas_name="hello",faas_version="2",state="ready"} 3"#,
            r#"stratus_inflight_requests{faas_name="hello",faas_version="2"} 4"#,
            r#"stratus_queue_depth{faas_name="hello",faas_version="2"} 1"#,
            "http_server_active_requests 4",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    /// `promtool check metrics` is the reference parser. CI installs it (`.ci/run`); elsewhere
    /// the check is skipped unless `STRATUS_REQUIRE_PROMTOOL` is set.
    #[test]
    fn promtool_accepts_the_exposition() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var_os("STRATUS_REQUIRE_PROMTOOL").is_none(),
                    "promtool is required but cannot run: {e}"
                );
                eprintln!("skipped: promtool not found ({e})");
                return;
            }
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sample().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The Grafana dashboard shipped in `deploy/grafana/stratus.json` must only query metrics that
/// `/metrics` exposes (a renamed metric would silently empty a panel).
#[cfg(test)]
mod dashboard {
    use super::tests::sample;

    #[test]
    fn every_metric_the_dashboard_queries_is_exposed() {
        let dash = include_str!("../../../deploy/grafana/stratus.json");
        let text = sample();
        let mut checked = 0;
        for expr in dash.split("\"expr\": \"").skip(1) {
            let expr = &expr[..expr.find('"').unwrap_or(expr.len())];
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                let is_label = text.contains(&format!("{word}=\""));
                let is_metric = !is_label
                    && ["faas_", "stratus_", "process_", "http_server_"]
                        .iter()
                        .any(|p| word.starts_with(p));
                if is_metric {
                    assert!(
                        text.lines().any(|l| l.starts_with(word)),
                        "the dashboard queries {word}, which /metrics does not expose"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 15, "only {checked} metric references found");
    }
}
