//! Observability endpoints: `/metrics`, request records and logs (search and live tail), and
//! the summary behind `stratus top`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stratus_core::{ErrorCode, PlatformError, Target, now_ms};
use stratus_store::{
    LogLine, LogQuery, LogStore, RequestQuery, RequestRecord, StatusFilter, SummaryQuery,
};
use stratus_telemetry::metrics::{self, PipelineCounters, PoolGauges};
use stratus_telemetry::stats::BUCKETS_MS;

use crate::handlers::function;
use crate::{ApiError, ApiRoutes, AppState, bad_request};

pub(crate) fn register(r: ApiRoutes) -> ApiRoutes {
    r.add("get", "/metrics", get(metrics_text))
        .add("get", "/api/v1/functions/{name}/logs", get(logs))
        .add("get", "/api/v1/requests", get(requests))
        .add("get", "/api/v1/requests/{id}", get(request))
        .add("get", "/api/v1/requests/{id}/capture", get(capture))
        .add("get", "/api/v1/summary", get(summary))
}

async fn metrics_text(State(cp): State<AppState>) -> Response {
    let pools = cp
        .fleet
        .statuses()
        .into_iter()
        .map(|(f, p)| {
            let count =
                |state: &str| p.instances.iter().filter(|i| i.state == state).count() as u32;
            PoolGauges {
                function: f.to_string(),
                version: p.version.0,
                starting: p.starting,
                ready: count("ready"),
                draining: count("draining"),
                in_flight: p.instances.iter().map(|i| i.in_flight).sum(),
                queued: p.waiting,
                desired: p.desired,
            }
        })
        .collect();
    let pipeline = PipelineCounters {
        log_lines_dropped: cp.hub.as_ref().map(|h| h.dropped()).unwrap_or(0),
        records_dropped: cp.hub.as_ref().map(|h| h.dropped_records()).unwrap_or(0),
        spans_dropped: cp.tracer.as_ref().map(|t| t.dropped()).unwrap_or(0),
        spans_exported: cp.tracer.as_ref().map(|t| t.exported()).unwrap_or(0),
    };
    let text = metrics::render(cp.stats.counters(), pools, pipeline);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

/// A point in time given as a duration ago (`15m`, `1h`) or an RFC 3339 timestamp.
fn instant(name: &str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    if let Ok(d) = humantime::parse_duration(v) {
        return Ok(Some(now_ms() - d.as_millis() as i64));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(v) {
        return Ok(Some(
            t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64,
        ));
    }
    Err(bad_request(format!(
        "invalid `{name}` {v:?}: give a duration ago like 15m or 1h, or an RFC 3339 time like 2026-12-02T10:00:00Z"
    )))
}

fn status(v: &Option<String>) -> Result<Option<StatusFilter>, ApiError> {
    match v {
        None => Ok(None),
        Some(s) => StatusFilter::parse(s).map(Some).ok_or_else(|| {
            bad_request(format!(
                "invalid `status` {s:?}: give a class like 5xx or a status like 404"
            ))
        }),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    /// How many of the newest entries to return first (default 100).
    tail: Option<u32>,
    since: Option<String>,
    until: Option<String>,
    /// A version number or alias.
    version: Option<String>,
    /// Keep the response open and stream new entries as NDJSON.
    follow: Option<bool>,
    /// Only requests with this status class (`5xx`) or status (`404`).
    status: Option<String>,
    /// Only requests whose path, error or log lines contain this text.
    grep: Option<String>,
    request_id: Option<String>,
    trace_id: Option<String>,
}

/// One NDJSON entry of a log stream: a request record or a log line, told apart by `kind`.
fn entry<T: Serialize>(kind: &str, v: &T) -> String {
    let mut j = serde_json::to_value(v).expect("records serialize");
    if let Value::Object(m) = &mut j {
        m.insert("kind".into(), Value::String(kind.into()));
    }
    j.to_string() + "\n"
}

/// Records with their own lines right after each, in record order.
fn grouped(records: &[RequestRecord], lines: &[LogLine]) -> String {
    let mut by_request: HashMap<&str, Vec<&LogLine>> = HashMap::new();
    for l in lines {
        if let Some(r) = &l.request_id {
            by_request.entry(r.as_str()).or_default().push(l);
        }
    }
    let mut out = String::new();
    for r in records {
        out.push_str(&entry("request", r));
        for l in by_request.get(r.request_id.as_str()).into_iter().flatten() {
            out.push_str(&entry("line", l));
        }
    }
    out
}

/// Records and lines merged by time (a record at its start, so it precedes its lines).
fn merged(records: &[RequestRecord], lines: &[LogLine]) -> String {
    let mut items: Vec<(i64, u8, String)> = records
        .iter()
        .map(|r| (r.start_ms, 0, entry("request", r)))
        .chain(lines.iter().map(|l| (l.at, 1, entry("line", l))))
        .collect();
    items.sort_by_key(|(at, k, _)| (*at, *k));
    items.into_iter().map(|(_, _, s)| s).collect()
}

async fn lines_of(
    logs: &dyn LogStore,
    records: &[RequestRecord],
) -> Result<Vec<LogLine>, ApiError> {
    if records.is_empty() {
        return Ok(vec![]);
    }
    Ok(logs
        .query(LogQuery {
            request_ids: records.iter().map(|r| r.request_id.clone()).collect(),
            limit: 10_000,
            ..Default::default()
        })
        .await?)
}

async fn logs(
    State(cp): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let f = function(&name)?;
    cp.store.get_function(&f).await?;
    let version = match &q.version {
        None => None,
        Some(t) => {
            let target = Target::parse(t).map_err(|e| bad_request(e.to_string()))?;
            Some(cp.router.table().version_of(f.as_str(), &target)?.number.0)
        }
    };
    let since_ms = instant("since", &q.since)?;
    let until_ms = instant("until", &q.until)?;
    let limit = q.tail.unwrap_or(100).min(10_000);
    let rq = RequestQuery {
        function: Some(f.to_string()),
        version,
        status: status(&q.status)?,
        since_ms,
        until_ms,
        request_id: q.request_id.clone(),
        trace_id: q.trace_id.clone(),
        grep: q.grep.clone(),
        after_id: None,
        limit,
    };
    // With a request filter the answer is matching requests, each with its lines; without,
    // everything the function wrote (lines, platform lines, records) in time order.
    let by_request =
        q.status.is_some() || q.grep.is_some() || q.request_id.is_some() || q.trace_id.is_some();
    let lq = LogQuery {
        function: Some(f.to_string()),
        version,
        since_ms,
        until_ms,
        limit,
        ..Default::default()
    };
    let records = cp.logs.query_requests(rq.clone()).await?;
    let (head, last_line) = if by_request {
        let lines = lines_of(&*cp.logs, &records).await?;
        (grouped(&records, &lines), None)
    } else {
        let lines = cp.logs.query(lq.clone()).await?;
        let last = lines.last().map(|l| l.id).unwrap_or(0);
        (merged(&records, &lines), Some(last))
    };
    let resp =
        |body: Body| ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response();
    if !q.follow.unwrap_or(false) {
        return Ok(resp(Body::from(head)));
    }
    // Tail by polling the store: the same code works whichever node wrote the entries.
    let last_record = match records.last() {
        Some(r) => r.id,
        None => newest_record_id(&*cp.logs, &f.to_string()).await?,
    };
    let last_line = match last_line {
        Some(0) | None if !by_request => newest_line_id(&*cp.logs, &f.to_string()).await?,
        Some(l) => l,
        None => 0,
    };
    let logs = cp.logs.clone();
    let state = (logs, rq, lq, last_record, last_line);
    let tail =
        futures_util::stream::unfold(state, move |(logs, mut rq, mut lq, lr, ll)| async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                rq.after_id = Some(lr);
                rq.since_ms = None;
                rq.limit = 1000;
                let records = match logs.query_requests(rq.clone()).await {
                    Ok(r) => r,
                    Err(e) => {
                        let e = std::io::Error::other(e.to_string());
                        return Some((Err(e), (logs, rq, lq, lr, ll)));
                    }
                };
                let next_lr = records.last().map(|r| r.id).unwrap_or(lr);
                let (chunk, next_ll) = if by_request {
                    match lines_of(&*logs, &records).await {
                        Ok(lines) => (grouped(&records, &lines), ll),
                        Err(_) => (grouped(&records, &[]), ll),
                    }
                } else {
                    lq.after_id = Some(ll);
                    lq.since_ms = None;
                    lq.limit = 1000;
                    let lines = logs.query(lq.clone()).await.unwrap_or_default();
                    let next = lines.last().map(|l| l.id).unwrap_or(ll);
                    (merged(&records, &lines), next)
                };
                if !chunk.is_empty() {
                    return Some((
                        Ok::<_, std::io::Error>(chunk),
                        (logs, rq, lq, next_lr, next_ll),
                    ));
                }
            }
        });
    let stream =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(tail);
    Ok(resp(Body::from_stream(stream)))
}

async fn newest_record_id(logs: &dyn LogStore, function: &str) -> Result<i64, ApiError> {
    let r = logs
        .query_requests(RequestQuery {
            function: Some(function.into()),
            limit: 1,
            ..Default::default()
        })
        .await?;
    Ok(r.last().map(|r| r.id).unwrap_or(0))
}

async fn newest_line_id(logs: &dyn LogStore, function: &str) -> Result<i64, ApiError> {
    let l = logs
        .query(LogQuery {
            function: Some(function.into()),
            limit: 1,
            ..Default::default()
        })
        .await?;
    Ok(l.last().map(|l| l.id).unwrap_or(0))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RequestsQuery {
    function: Option<String>,
    version: Option<u32>,
    status: Option<String>,
    since: Option<String>,
    until: Option<String>,
    request_id: Option<String>,
    trace_id: Option<String>,
    grep: Option<String>,
    limit: Option<u32>,
}

async fn requests(
    State(cp): State<AppState>,
    Query(q): Query<RequestsQuery>,
) -> Result<Json<Vec<RequestRecord>>, ApiError> {
    if let Some(f) = &q.function {
        function(f)?;
    }
    let records = cp
        .logs
        .query_requests(RequestQuery {
            function: q.function,
            version: q.version,
            status: status(&q.status)?,
            since_ms: instant("since", &q.since)?,
            until_ms: instant("until", &q.until)?,
            request_id: q.request_id,
            trace_id: q.trace_id,
            grep: q.grep,
            after_id: None,
            limit: q.limit.unwrap_or(100).min(10_000),
        })
        .await?;
    Ok(Json(records))
}

#[derive(Serialize)]
struct RequestWithLines {
    #[serde(flatten)]
    record: RequestRecord,
    lines: Vec<LogLine>,
}

async fn request(
    State(cp): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RequestWithLines>, ApiError> {
    let mut found = cp
        .logs
        .query_requests(RequestQuery {
            request_id: Some(id.clone()),
            limit: 1,
            ..Default::default()
        })
        .await?;
    let Some(record) = found.pop() else {
        return Err(ApiError(PlatformError::new(
            ErrorCode::RouteNotFound,
            format!("no request record with id {id:?} (it may be older than the retention)"),
        )));
    };
    let lines = lines_of(&*cp.logs, std::slice::from_ref(&record)).await?;
    Ok(Json(RequestWithLines { record, lines }))
}

/// A request's capture, each kept body also as `text` when it is UTF-8 (what people read; the
/// base64 is what replay sends).
async fn capture(
    State(cp): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(capture) = cp.logs.get_capture(&id).await? else {
        return Err(ApiError(PlatformError::new(
            ErrorCode::CaptureNotFound,
            format!(
                "no capture of request {id:?}: its function has no [capture] in its manifest, \
                 the request was not sampled, or the capture is past retention"
            ),
        )));
    };
    let mut v = serde_json::to_value(&capture).expect("captures serialize");
    let texts = [
        ("request", Some(&capture.request.body)),
        ("response", capture.response.as_ref().map(|r| &r.body)),
    ];
    for (part, body) in texts {
        if let Some(b) = body
            && let Ok(text) = std::str::from_utf8(&b.bytes)
        {
            v[part]["body"]["text"] = serde_json::Value::String(text.to_string());
        }
    }
    Ok(Json(v))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SummaryParams {
    /// The window ending now (default 1m); or `since`/`until` for any other.
    window: Option<String>,
    since: Option<String>,
    until: Option<String>,
    function: Option<String>,
}

/// One row of the global view.
#[derive(Debug, Serialize, Default)]
pub struct FunctionSummary {
    pub function: String,
    pub requests: u64,
    /// Requests per second over the window.
    pub rate: f64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub cold_starts: u64,
    pub throttled: u64,
    /// Live, now (not over the window).
    pub instances: u32,
    pub in_flight: u32,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub since_ms: i64,
    pub until_ms: i64,
    pub functions: Vec<FunctionSummary>,
    pub overall: FunctionSummary,
}

/// A quantile of a histogram, interpolated linearly inside its bucket (in ms).
fn quantile_ms(bounds_ms: &[f64], buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total as f64 * q).max(1.0);
    let mut acc = 0.0;
    for (i, c) in buckets.iter().enumerate() {
        let c = *c as f64;
        if c > 0.0 && acc + c >= rank {
            let lo = if i == 0 { 0.0 } else { bounds_ms[i - 1] };
            let hi = bounds_ms.get(i).copied().unwrap_or(lo * 2.0);
            return Some(lo + (hi - lo) * ((rank - acc) / c));
        }
        acc += c;
    }
    None
}

fn row(
    function: String,
    s: &stratus_store::RequestSummary,
    secs: f64,
    bounds: &[f64],
) -> FunctionSummary {
    FunctionSummary {
        function,
        requests: s.requests,
        rate: s.requests as f64 / secs,
        errors: s.errors,
        error_rate: if s.requests == 0 {
            0.0
        } else {
            s.errors as f64 / s.requests as f64
        },
        p50_ms: quantile_ms(bounds, &s.buckets, 0.5),
        p99_ms: quantile_ms(bounds, &s.buckets, 0.99),
        cold_starts: s.cold_starts,
        throttled: s.throttled,
        instances: 0,
        in_flight: 0,
    }
}

async fn summary(
    State(cp): State<AppState>,
    Query(q): Query<SummaryParams>,
) -> Result<Json<Summary>, ApiError> {
    let now = now_ms();
    let until_ms = instant("until", &q.until)?.unwrap_or(now);
    let since_ms = match (&q.since, &q.window) {
        (Some(_), Some(_)) => return Err(bad_request("give `window` or `since`, not both")),
        (Some(_), None) => instant("since", &q.since)?.unwrap_or(now),
        (None, w) => {
            let w = w.as_deref().unwrap_or("1m");
            let d = humantime::parse_duration(w)
                .map_err(|e| bad_request(format!("invalid `window` {w:?}: {e}")))?;
            until_ms - d.as_millis() as i64
        }
    };
    if since_ms >= until_ms {
        return Err(bad_request(
            "the window is empty: `since` must be before `until`",
        ));
    }
    if let Some(f) = &q.function {
        function(f)?;
    }
    let bounds_ms: Vec<f64> = BUCKETS_MS.iter().map(|b| *b as f64).collect();
    let sums = cp
        .logs
        .summarize(SummaryQuery {
            since_ms,
            until_ms,
            function: q.function.clone(),
            bounds_us: BUCKETS_MS.iter().map(|b| b * 1000).collect(),
        })
        .await?;
    let secs = (until_ms - since_ms) as f64 / 1000.0;
    let mut by_fn: BTreeMap<String, stratus_store::RequestSummary> = BTreeMap::new();
    for f in cp.store.list_functions().await? {
        if q.function.as_deref().is_none_or(|w| w == f.name.as_str()) {
            by_fn.insert(
                f.name.to_string(),
                stratus_store::RequestSummary {
                    buckets: vec![0; BUCKETS_MS.len() + 1],
                    ..Default::default()
                },
            );
        }
    }
    for s in sums {
        by_fn.insert(s.function.clone(), s);
    }
    let mut live: HashMap<String, (u32, u32)> = HashMap::new();
    for (f, p) in cp.fleet.statuses() {
        let e = live.entry(f.to_string()).or_default();
        e.0 += p.instances.iter().filter(|i| i.state == "ready").count() as u32;
        e.1 += p.instances.iter().map(|i| i.in_flight).sum::<u32>();
    }
    let mut total = stratus_store::RequestSummary {
        buckets: vec![0; BUCKETS_MS.len() + 1],
        ..Default::default()
    };
    let mut functions = Vec::new();
    for (name, s) in &by_fn {
        total.requests += s.requests;
        total.errors += s.errors;
        total.cold_starts += s.cold_starts;
        total.throttled += s.throttled;
        for (t, b) in total.buckets.iter_mut().zip(&s.buckets) {
            *t += b;
        }
        let mut r = row(name.clone(), s, secs, &bounds_ms);
        if let Some((i, f)) = live.get(name) {
            (r.instances, r.in_flight) = (*i, *f);
        }
        functions.push(r);
    }
    let mut overall = row("*".into(), &total, secs, &bounds_ms);
    overall.instances = functions.iter().map(|f| f.instances).sum();
    overall.in_flight = functions.iter().map(|f| f.in_flight).sum();
    Ok(Json(Summary {
        since_ms,
        until_ms,
        functions,
        overall,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let bounds = [1.0, 2.0, 5.0];
        // 10 requests under 1 ms, 10 between 2 and 5 ms.
        let b = [10, 0, 10, 0];
        assert_eq!(quantile_ms(&bounds, &b, 0.5), Some(1.0));
        let p99 = quantile_ms(&bounds, &b, 0.99).unwrap();
        assert!((p99 - 4.94).abs() < 1e-9, "{p99}");
        assert_eq!(quantile_ms(&bounds, &[0, 0, 0, 0], 0.5), None);
    }
}
