//! Alarm rules: `stratus alarm create --fn hello --metric error_rate --op '>' --threshold 0.05
//! --for 1m --webhook URL`.
//!
//! The decision is pure ([`metric_value`] over a window, [`step`] for the state machine
//! ok → pending → firing → ok) and unit-tested with simulated time; the driver
//! ([`spawn_evaluator`]) samples the live counters once a second, keeps an hour of samples to
//! cut any window from, evaluates every alarm, stores state changes, and hands notifications
//! to a delivery task that retries with backoff and reports back. The evaluator is the only
//! writer of alarm state, and its writes never bring a deleted alarm back.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use stratus_core::now_ms;
use stratus_store::{AlarmMetric, AlarmNotification, AlarmOp, AlarmRecord, AlarmState, StoreError};
use stratus_telemetry::stats::{TrafficStats, bucket_diff};
use tokio::sync::mpsc;

use crate::handlers::function;
use crate::{ApiError, ApiRoutes, AppState, ControlPlane, bad_request};

/// Counters of one function, summed over its versions, at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub throttled: u64,
    pub cold_starts: u64,
    pub buckets: Vec<u64>,
}

impl Totals {
    fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            throttled: self.throttled.saturating_sub(earlier.throttled),
            cold_starts: self.cold_starts.saturating_sub(earlier.cold_starts),
            buckets: bucket_diff(&self.buckets, &earlier.buckets),
        }
    }
}

/// Every function's counters (a function missing from a sample had no traffic yet: zero).
fn totals(stats: &TrafficStats) -> HashMap<String, Totals> {
    let mut out: HashMap<String, Totals> = HashMap::new();
    for v in stats.counters() {
        let t = out.entry(v.function.clone()).or_default();
        t.requests += v.classes.iter().sum::<u64>();
        t.errors += v.errors;
        t.throttled += v.throttled + v.overloaded;
        t.cold_starts += v.cold_starts;
        if t.buckets.len() < v.latency.len() {
            t.buckets.resize(v.latency.len(), 0);
        }
        for (a, b) in t.buckets.iter_mut().zip(&v.latency) {
            *a += b;
        }
    }
    out
}

/// A quantile as the upper bound of its bucket, in ms.
fn quantile_ms(buckets: &[u64], q: f64) -> Option<f64> {
    stratus_telemetry::stats::quantile(buckets, q).map(|d| d.as_secs_f64() * 1000.0)
}

/// The metric over a window of `secs` seconds; `None` where it is undefined (no requests).
pub fn metric_value(metric: AlarmMetric, w: &Totals, secs: f64) -> Option<f64> {
    let secs = secs.max(1e-3);
    match metric {
        AlarmMetric::ErrorRate => (w.requests > 0).then(|| w.errors as f64 / w.requests as f64),
        AlarmMetric::RequestRate => Some(w.requests as f64 / secs),
        AlarmMetric::ThrottleRate => Some(w.throttled as f64 / secs),
        AlarmMetric::ColdStarts => Some(w.cold_starts as f64),
        AlarmMetric::P50Ms => quantile_ms(&w.buckets, 0.5),
        AlarmMetric::P99Ms => quantile_ms(&w.buckets, 0.99),
    }
}

/// A state change that is notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Fired,
    Resolved,
}

/// Advances an alarm's state with this evaluation's value at `now` (Unix ms). A value that is
/// undefined counts as the condition not holding.
pub fn step(a: &mut AlarmRecord, value: Option<f64>, now: i64) -> Option<Transition> {
    let holds = value.is_some_and(|v| a.op.holds(v, a.threshold));
    a.last_value = value;
    a.last_evaluated = now;
    let (next, transition) = match (a.state, holds) {
        (AlarmState::Ok, true) if a.for_ms == 0 => (AlarmState::Firing, Some(Transition::Fired)),
        (AlarmState::Ok, true) => (AlarmState::Pending, None),
        (AlarmState::Pending, true) if now - a.state_since >= a.for_ms as i64 => {
            (AlarmState::Firing, Some(Transition::Fired))
        }
        (AlarmState::Firing, false) => (AlarmState::Ok, Some(Transition::Resolved)),
        (AlarmState::Pending, false) => (AlarmState::Ok, None),
        (s, _) => (s, None),
    };
    if next != a.state {
        a.state = next;
        a.state_since = now;
    }
    transition
}

/// Samples kept to cut windows from: one a second for an hour.
const HISTORY: usize = 3600;
/// Notifications kept per alarm.
const NOTIFICATIONS_KEPT: usize = 20;
const ATTEMPTS: u32 = 5;

struct Delivered {
    alarm: String,
    at: i64,
    attempts: u32,
    error: Option<String>,
}

/// Runs the evaluator every `every` until the returned task is aborted.
pub fn spawn_evaluator(cp: &Arc<ControlPlane>, every: Duration) -> tokio::task::JoinHandle<()> {
    let cp = cp.clone();
    tokio::spawn(async move {
        let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Delivered>();
        let mut history: VecDeque<(i64, HashMap<String, Totals>)> = VecDeque::new();
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(d) = done_rx.recv() => {
                    record_delivery(&cp, d).await;
                    continue;
                }
            }
            let alarms = match cp.store.list_alarms().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("alarms: cannot list: {e}");
                    continue;
                }
            };
            let now = now_ms();
            history.push_back((now, totals(&cp.stats)));
            // Kept only as far back as the longest window needs (an hour at most): samples of
            // every function, so their memory grows with functions times that window.
            let keep_ms = alarms.iter().map(|a| a.window_ms as i64).max().unwrap_or(0)
                + 2 * every.as_millis() as i64;
            while history.len() > HISTORY || (history.len() > 1 && history[1].0 <= now - keep_ms) {
                history.pop_front();
            }
            let (_, current) = history.back().expect("just pushed");
            for mut alarm in alarms {
                let from = now - alarm.window_ms as i64;
                // The newest sample at or before the window's start (else the oldest we have).
                let (at, earlier) = history
                    .iter()
                    .rev()
                    .find(|(t, _)| *t <= from)
                    .or(history.front())
                    .expect("not empty");
                let empty = Totals::default();
                let window = current
                    .get(&alarm.function)
                    .unwrap_or(&empty)
                    .since(earlier.get(&alarm.function).unwrap_or(&empty));
                let secs = ((now - at) as f64 / 1000.0).max(every.as_secs_f64());
                let value = metric_value(alarm.metric, &window, secs);
                let before = alarm.clone();
                let transition = step(&mut alarm, value, now);
                if let Some(t) = transition {
                    let kind = match t {
                        Transition::Fired => "firing",
                        Transition::Resolved => "resolved",
                    };
                    tracing::info!(
                        "alarm {} on {}: {kind} ({:?} = {value:?}, threshold {} {})",
                        alarm.id,
                        alarm.function,
                        alarm.metric,
                        op_str(alarm.op),
                        alarm.threshold
                    );
                    alarm.notifications.push(AlarmNotification {
                        kind: kind.into(),
                        at: now,
                        value,
                        delivered: false,
                        attempts: 0,
                        error: None,
                    });
                    let excess = alarm.notifications.len().saturating_sub(NOTIFICATIONS_KEPT);
                    alarm.notifications.drain(..excess);
                    tokio::spawn(deliver(
                        client.clone(),
                        alarm.clone(),
                        kind,
                        now,
                        done_tx.clone(),
                    ));
                }
                // Only state and notifications are persisted each time they change; the value is
                // written along (it is what `alarm list` shows).
                if alarm.state != before.state
                    || alarm.notifications != before.notifications
                    || alarm.last_value != before.last_value
                {
                    match cp.store.update_alarm(&alarm).await {
                        Ok(()) | Err(StoreError::AlarmNotFound(_)) => {}
                        Err(e) => tracing::warn!("alarm {}: cannot store its state: {e}", alarm.id),
                    }
                }
            }
        }
    })
}

fn op_str(op: AlarmOp) -> &'static str {
    match op {
        AlarmOp::Gt => ">",
        AlarmOp::Ge => ">=",
        AlarmOp::Lt => "<",
        AlarmOp::Le => "<=",
    }
}

async fn deliver(
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    alarm: AlarmRecord,
    kind: &'static str,
    at: i64,
    done: mpsc::UnboundedSender<Delivered>,
) {
    let body = Bytes::from(
        serde_json::json!({
            "alarm": alarm.id,
            "state": kind,
            "function": alarm.function,
            "metric": alarm.metric,
            "op": op_str(alarm.op),
            "threshold": alarm.threshold,
            "value": alarm.last_value,
            "for_ms": alarm.for_ms,
            "window_ms": alarm.window_ms,
            "at": at,
        })
        .to_string(),
    );
    let mut error = None;
    for attempt in 1..=ATTEMPTS {
        let req = http::Request::post(alarm.webhook.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-stratus-alarm", alarm.id.as_str())
            .body(Full::new(body.clone()));
        let result = match req {
            Err(e) => Err(format!("invalid webhook request: {e}")),
            Ok(req) => {
                match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                    Err(_) => Err("timed out after 10s".to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Ok(Ok(resp)) => {
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        if status.is_success() {
                            Ok(())
                        } else {
                            Err(format!("HTTP {status}"))
                        }
                    }
                }
            }
        };
        match result {
            Ok(()) => {
                let _ = done.send(Delivered {
                    alarm: alarm.id,
                    at,
                    attempts: attempt,
                    error: None,
                });
                return;
            }
            Err(e) => {
                tracing::warn!("alarm {}: webhook attempt {attempt} failed: {e}", alarm.id);
                error = Some(e);
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt - 1))).await;
        }
    }
    let _ = done.send(Delivered {
        alarm: alarm.id,
        at,
        attempts: ATTEMPTS,
        error,
    });
}

async fn record_delivery(cp: &ControlPlane, d: Delivered) {
    let Ok(alarms) = cp.store.list_alarms().await else {
        return;
    };
    let Some(mut alarm) = alarms.into_iter().find(|a| a.id == d.alarm) else {
        return;
    };
    if let Some(n) = alarm.notifications.iter_mut().find(|n| n.at == d.at) {
        n.attempts = d.attempts;
        n.delivered = d.error.is_none();
        n.error = d.error;
    }
    if let Err(e) = cp.store.update_alarm(&alarm).await
        && !matches!(e, StoreError::AlarmNotFound(_))
    {
        tracing::warn!("alarm {}: cannot store the delivery: {e}", alarm.id);
    }
}

pub(crate) fn register(r: ApiRoutes) -> ApiRoutes {
    r.add("get", "/api/v1/alarms", get(list))
        .add("post", "/api/v1/alarms", post(create))
        .add("get", "/api/v1/alarms/{id}", get(one))
        .add("delete", "/api/v1/alarms/{id}", delete(remove))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAlarm {
    /// Defaults to a generated id.
    id: Option<String>,
    function: String,
    metric: String,
    op: String,
    threshold: f64,
    /// How long the condition must hold, like `1m` (default 0: fire at once).
    #[serde(rename = "for")]
    for_: Option<String>,
    /// The window the metric is computed over (default 1m, at most 1h).
    window: Option<String>,
    webhook: String,
}

fn duration(name: &str, v: &Option<String>, default: Duration) -> Result<Duration, ApiError> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s)
            .map_err(|e| bad_request(format!("invalid `{name}` {s:?}: {e}"))),
    }
}

async fn create(
    State(cp): State<AppState>,
    Json(n): Json<NewAlarm>,
) -> Result<(StatusCode, Json<AlarmRecord>), ApiError> {
    let f = function(&n.function)?;
    cp.store.get_function(&f).await?;
    let metric = AlarmMetric::parse(&n.metric).ok_or_else(|| {
        bad_request(format!(
            "unknown metric {:?}: one of {}",
            n.metric,
            AlarmMetric::ALL.join(", ")
        ))
    })?;
    let op = AlarmOp::parse(&n.op)
        .ok_or_else(|| bad_request(format!("unknown op {:?}: one of >, >=, <, <=", n.op)))?;
    if !n.threshold.is_finite() {
        return Err(bad_request("`threshold` must be a finite number"));
    }
    let for_ = duration("for", &n.for_, Duration::ZERO)?;
    let window = duration("window", &n.window, Duration::from_secs(60))?;
    if window < Duration::from_secs(1) || window > Duration::from_secs(HISTORY as u64) {
        return Err(bad_request("`window` must be between 1s and 1h"));
    }
    let uri: http::Uri = n
        .webhook
        .parse()
        .map_err(|e| bad_request(format!("invalid webhook {:?}: {e}", n.webhook)))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(bad_request(format!(
            "webhook {:?}: give an http:// URL (https is not supported yet; relay through a local proxy)",
            n.webhook
        )));
    }
    let id = match n.id {
        Some(id) => {
            if id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad_request(format!(
                    "invalid alarm id {id:?}: letters, digits, - and _, at most 64"
                )));
            }
            id
        }
        None => format!("alarm-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
    };
    let now = now_ms();
    let alarm = AlarmRecord {
        id,
        function: f.to_string(),
        metric,
        op,
        threshold: n.threshold,
        for_ms: for_.as_millis() as u64,
        window_ms: window.as_millis() as u64,
        webhook: n.webhook,
        created_at: now,
        state: AlarmState::Ok,
        state_since: now,
        last_value: None,
        last_evaluated: 0,
        notifications: vec![],
    };
    cp.store.create_alarm(&alarm).await?;
    Ok((StatusCode::CREATED, Json(alarm)))
}

async fn list(State(cp): State<AppState>) -> Result<Json<Vec<AlarmRecord>>, ApiError> {
    Ok(Json(cp.store.list_alarms().await?))
}

async fn one(
    State(cp): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AlarmRecord>, ApiError> {
    cp.store
        .list_alarms()
        .await?
        .into_iter()
        .find(|a| a.id == id)
        .map(Json)
        .ok_or_else(|| StoreError::AlarmNotFound(id).into())
}

async fn remove(
    State(cp): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    cp.store.delete_alarm(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use stratus_telemetry::stats::BUCKETS_MS;

    use super::*;

    fn alarm(for_ms: u64) -> AlarmRecord {
        AlarmRecord {
            id: "a".into(),
            function: "f".into(),
            metric: AlarmMetric::ErrorRate,
            op: AlarmOp::Gt,
            threshold: 0.05,
            for_ms,
            window_ms: 60_000,
            webhook: "http://127.0.0.1:1/".into(),
            created_at: 0,
            state: AlarmState::Ok,
            state_since: 0,
            last_value: None,
            last_evaluated: 0,
            notifications: vec![],
        }
    }

    #[test]
    fn fires_after_holding_for_its_duration_and_resolves_once() {
        let mut a = alarm(60_000);
        assert_eq!(step(&mut a, Some(0.01), 1_000), None);
        assert_eq!(a.state, AlarmState::Ok);
        assert_eq!(step(&mut a, Some(0.2), 2_000), None);
        assert_eq!((a.state, a.state_since), (AlarmState::Pending, 2_000));
        assert_eq!(step(&mut a, Some(0.3), 61_999), None, "not yet a minute");
        assert_eq!(step(&mut a, Some(0.3), 62_000), Some(Transition::Fired));
        assert_eq!(a.state, AlarmState::Firing);
        assert_eq!(step(&mut a, Some(0.9), 63_000), None, "fires once");
        assert_eq!(step(&mut a, Some(0.0), 64_000), Some(Transition::Resolved));
        assert_eq!(step(&mut a, None, 65_000), None);
        assert_eq!(a.state, AlarmState::Ok);
    }

    #[test]
    fn a_blip_shorter_than_for_does_not_fire() {
        let mut a = alarm(10_000);
        step(&mut a, Some(1.0), 0);
        assert_eq!(step(&mut a, Some(0.0), 5_000), None);
        assert_eq!(a.state, AlarmState::Ok);
        assert_eq!(step(&mut a, Some(1.0), 9_000), None);
        assert_eq!(a.state_since, 9_000, "the clock restarts");
        assert_eq!(step(&mut a, Some(1.0), 18_999), None);
        assert_eq!(step(&mut a, Some(1.0), 19_000), Some(Transition::Fired));
    }

    #[test]
    fn zero_for_fires_at_once_and_no_data_is_not_an_error() {
        let mut a = alarm(0);
        assert_eq!(step(&mut a, None, 0), None, "no requests: no error rate");
        assert_eq!(step(&mut a, Some(0.5), 1), Some(Transition::Fired));
        assert_eq!(step(&mut a, None, 2), Some(Transition::Resolved));
    }

    #[test]
    fn metrics_over_a_window() {
        let w = Totals {
            requests: 100,
            errors: 7,
            throttled: 20,
            cold_starts: 3,
            buckets: {
                let mut b = vec![0; BUCKETS_MS.len() + 1];
                b[5] = 99; // under 10 ms
                b[16] = 1; // under 750 ms
                b
            },
        };
        let v = |m| metric_value(m, &w, 10.0);
        assert_eq!(v(AlarmMetric::ErrorRate), Some(0.07));
        assert_eq!(v(AlarmMetric::RequestRate), Some(10.0));
        assert_eq!(v(AlarmMetric::ThrottleRate), Some(2.0));
        assert_eq!(v(AlarmMetric::ColdStarts), Some(3.0));
        assert_eq!(v(AlarmMetric::P50Ms), Some(10.0));
        assert_eq!(v(AlarmMetric::P99Ms), Some(10.0));
        assert_eq!(
            metric_value(AlarmMetric::ErrorRate, &Totals::default(), 10.0),
            None
        );
        let later = Totals {
            requests: 150,
            errors: 8,
            ..w.clone()
        };
        assert_eq!(later.since(&w).requests, 50);
    }
}
