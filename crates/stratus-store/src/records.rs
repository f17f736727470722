use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stratus_core::{AliasName, FunctionName, FunctionSpec, TrafficPolicy, VersionNumber};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionRecord {
    pub name: FunctionName,
    pub created_at: i64,
    pub updated_at: i64,
    pub latest_version: Option<VersionNumber>,
    pub version_count: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub function: FunctionName,
    pub number: VersionNumber,
    pub spec: FunctionSpec,
    pub artifact: String,
    pub artifact_size: u64,
    pub created_at: i64,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRecord {
    pub function: FunctionName,
    pub name: AliasName,
    /// The policy's primary version (the one with the largest weight).
    pub version: VersionNumber,
    pub policy: TrafficPolicy,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeReason {
    Deploy,
    Manual,
    Rollback,
    /// A step of a progressive release (or its promotion, rollback or abort).
    Progressive,
}

impl ChangeReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            ChangeReason::Deploy => "deploy",
            ChangeReason::Manual => "manual",
            ChangeReason::Rollback => "rollback",
            ChangeReason::Progressive => "progressive",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "deploy" => ChangeReason::Deploy,
            "manual" => ChangeReason::Manual,
            "rollback" => ChangeReason::Rollback,
            "progressive" => ChangeReason::Progressive,
            _ => return None,
        })
    }
}

/// One entry of an alias's history: who moved it, when, from where to where, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasChange {
    pub seq: i64,
    pub function: FunctionName,
    pub alias: AliasName,
    pub from: Option<VersionNumber>,
    pub to: VersionNumber,
    pub from_policy: Option<TrafficPolicy>,
    pub to_policy: TrafficPolicy,
    pub reason: ChangeReason,
    /// Why, in words, when there is more to say than the reason (a release step's metrics).
    pub note: Option<String>,
    pub actor: String,
    pub at: i64,
}

/// Where an alias should go if rolled back now, derived from its history: the history is an undo
/// stack where every change pushes and rollbacks pop. Pure, so every backend shares it.
pub fn rollback_target(history: &[AliasChange]) -> Option<TrafficPolicy> {
    let mut stack: Vec<&TrafficPolicy> = Vec::new();
    for c in history {
        match c.reason {
            ChangeReason::Rollback => {
                stack.pop();
            }
            _ => stack.push(&c.to_policy),
        }
    }
    stack.pop()?;
    stack.last().map(|p| (*p).clone())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseState {
    Running,
    Promoted,
    RolledBack,
    Aborted,
}

impl ReleaseState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReleaseState::Running => "running",
            ReleaseState::Promoted => "promoted",
            ReleaseState::RolledBack => "rolled_back",
            ReleaseState::Aborted => "aborted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseEvent {
    pub at: i64,
    /// The new version's weight after this event.
    pub weight: u32,
    pub message: String,
}

/// A progressive release: an alias moves from `stable` to `target` over `steps` (percentages of
/// traffic to the target), one step per `interval`, while the target stays within its thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// Assigned by the store; 0 before.
    pub id: i64,
    pub function: FunctionName,
    pub alias: AliasName,
    pub stable: VersionNumber,
    pub target: VersionNumber,
    pub steps: Vec<u32>,
    /// Index into `steps` of the step in force.
    pub step: usize,
    pub interval_ms: u64,
    /// Fraction (0.01 = 1%).
    pub max_error_rate: f64,
    pub max_p99_ms: Option<u64>,
    pub state: ReleaseState,
    pub actor: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub step_started_at: i64,
    pub events: Vec<ReleaseEvent>,
}

/// The routable state of the platform at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingSnapshot {
    pub generation: u64,
    pub functions: Vec<RoutableFunction>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoutableFunction {
    pub name: FunctionName,
    pub aliases: Vec<AliasRecord>,
    /// Shared, not copied: versions never change, so a backend may hand out the same record
    /// for every snapshot (the router reads one after every change).
    pub versions: Vec<Arc<VersionRecord>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Lines the platform writes about an instance (started, exited, killed).
    Platform,
}

impl LogStream {
    pub fn as_str(&self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Platform => "platform",
        }
    }
    pub fn parse(s: &str) -> Self {
        match s {
            "stdout" => LogStream::Stdout,
            "stderr" => LogStream::Stderr,
            _ => LogStream::Platform,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Assigned by the store; 0 before.
    #[serde(default)]
    pub id: i64,
    pub at: i64,
    pub function: String,
    pub version: u32,
    pub instance: String,
    pub stream: LogStream,
    pub line: String,
    /// The request the line was written during, when the runtime can tell (a wasm or handler
    /// instance always can; a process serving one request at a time can).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub function: Option<String>,
    pub version: Option<u32>,
    /// Only lines with an id greater than this (for tailing).
    pub after_id: Option<i64>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only the lines of these requests.
    pub request_ids: Vec<String>,
    /// Only lines containing this text (case-insensitive for ASCII).
    pub grep: Option<String>,
    /// The newest `limit` lines are returned, oldest first.
    pub limit: u32,
}

/// What started an invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Http,
    Async,
    Timer,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Http => "http",
            Trigger::Async => "async",
            Trigger::Timer => "timer",
        }
    }
    pub fn parse(s: &str) -> Self {
        match s {
            "async" => Trigger::Async,
            "timer" => Trigger::Timer,
            _ => Trigger::Http,
        }
    }
}

/// One invocation, as the platform saw it (an activation record): written once, when the
/// response ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Assigned by the store; 0 before.
    #[serde(default)]
    pub id: i64,
    pub request_id: String,
    pub trace_id: String,
    pub function: String,
    pub version: u32,
    /// Empty when no instance was reached (throttled, timed out in the queue).
    pub instance: String,
    pub trigger: Trigger,
    pub method: String,
    pub path: String,
    /// Unix milliseconds when the platform received it.
    pub start_ms: i64,
    /// Until the response body ended, in microseconds.
    pub duration_us: u64,
    /// Waiting for a slot.
    pub queue_us: u64,
    /// The instance start this request waited for (a cold start), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_us: Option<u64>,
    pub status: u16,
    /// The platform's error code (`timeout`, `throttled`, ...), or `function_error` for a 5xx
    /// the function answered itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A status class filter: `5xx` is 500..=599, `404` just that status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusFilter {
    pub min: u16,
    pub max: u16,
}

impl StatusFilter {
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        if let Some(c) = s.strip_suffix("xx") {
            let c: u16 = c.parse().ok().filter(|c| (1..=5).contains(c))?;
            return Some(Self {
                min: c * 100,
                max: c * 100 + 99,
            });
        }
        let n: u16 = s.parse().ok().filter(|n| (100..=599).contains(n))?;
        Some(Self { min: n, max: n })
    }
}

/// What an alarm watches, over its window, for one function (all its versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmMetric {
    /// 5xx responses / requests.
    ErrorRate,
    /// Requests per second.
    RequestRate,
    P50Ms,
    P99Ms,
    /// Requests that waited for an instance start.
    ColdStarts,
    /// 429s and 503s from the platform, per second.
    ThrottleRate,
}

impl AlarmMetric {
    pub const ALL: [&'static str; 6] = [
        "error_rate",
        "request_rate",
        "p50_ms",
        "p99_ms",
        "cold_starts",
        "throttle_rate",
    ];
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim() {
            "error_rate" => Self::ErrorRate,
            "request_rate" => Self::RequestRate,
            "p50_ms" => Self::P50Ms,
            "p99_ms" => Self::P99Ms,
            "cold_starts" => Self::ColdStarts,
            "throttle_rate" => Self::ThrottleRate,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmOp {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
}

impl AlarmOp {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim() {
            ">" => Self::Gt,
            ">=" => Self::Ge,
            "<" => Self::Lt,
            "<=" => Self::Le,
            _ => return None,
        })
    }
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            AlarmOp::Gt => value > threshold,
            AlarmOp::Ge => value >= threshold,
            AlarmOp::Lt => value < threshold,
            AlarmOp::Le => value <= threshold,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmState {
    /// The condition does not hold.
    Ok,
    /// It holds, not yet for the alarm's `for`.
    Pending,
    /// It has held for `for`; a fire notification was sent.
    Firing,
}

/// A notification sent (or being sent) to the alarm's webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmNotification {
    /// `firing` or `resolved`.
    pub kind: String,
    pub at: i64,
    pub value: Option<f64>,
    pub delivered: bool,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An alarm rule and its evaluation state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmRecord {
    pub id: String,
    pub function: String,
    pub metric: AlarmMetric,
    pub op: AlarmOp,
    pub threshold: f64,
    /// How long the condition must hold before the alarm fires.
    pub for_ms: u64,
    /// The window the metric is computed over.
    pub window_ms: u64,
    pub webhook: String,
    pub created_at: i64,
    pub state: AlarmState,
    pub state_since: i64,
    pub last_value: Option<f64>,
    pub last_evaluated: i64,
    /// The newest last.
    #[serde(default)]
    pub notifications: Vec<AlarmNotification>,
}

/// Request records of a time window, added up per function.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestSummary {
    pub function: String,
    pub requests: u64,
    /// Status 500 and above.
    pub errors: u64,
    pub cold_starts: u64,
    /// Refused by the platform for capacity (`throttled`, `overloaded`).
    pub throttled: u64,
    /// Counts of durations at or under each of the query's bounds, then the rest.
    pub buckets: Vec<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct SummaryQuery {
    pub since_ms: i64,
    pub until_ms: i64,
    pub function: Option<String>,
    /// Upper bounds, in microseconds, ascending, of the duration histogram to fill.
    pub bounds_us: Vec<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct RequestQuery {
    pub function: Option<String>,
    pub version: Option<u32>,
    pub status: Option<StatusFilter>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    /// Requests whose path, error or log lines contain this text (case-insensitive for ASCII).
    pub grep: Option<String>,
    /// Only records with an id greater than this (for tailing).
    pub after_id: Option<i64>,
    /// The newest `limit` records are returned, oldest first.
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(to: u32, reason: ChangeReason) -> AliasChange {
        AliasChange {
            seq: 0,
            function: FunctionName::new("f").unwrap(),
            alias: AliasName::latest(),
            from: None,
            to: VersionNumber(to),
            from_policy: None,
            to_policy: TrafficPolicy::single(VersionNumber(to)),
            reason,
            note: None,
            actor: "t".into(),
            at: 0,
        }
    }

    #[test]
    fn rollback_walks_back_one_step_at_a_time() {
        use ChangeReason::*;
        let single = |n| Some(TrafficPolicy::single(VersionNumber(n)));
        let mut h = vec![change(1, Deploy), change(2, Deploy), change(3, Manual)];
        assert_eq!(rollback_target(&h), single(2));
        h.push(change(2, Rollback));
        assert_eq!(rollback_target(&h), single(1));
        h.push(change(1, Rollback));
        assert_eq!(rollback_target(&h), None);
        assert_eq!(rollback_target(&[]), None);
    }
}
