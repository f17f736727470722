use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use stratus_core::{ErrorCode, PlatformError};
use stratus_router::{Router, ShadowTarget};
use stratus_runtime::{Body, full_body};
use stratus_scaler::{AcquireError, Fleet};
use stratus_store::VersionRecord;
use stratus_telemetry::stats::{Outcome, ShadowRegistry, TrafficStats};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::body::{Leased, Limited};
use crate::capture::Capture;
use crate::observe::{Finished, Observers, Report, Timeline};
use crate::shadow::{Hashed, PrimaryOutcome, Tee, run_mirror};
use crate::view::HttpView;
use stratus_telemetry::context::TraceContext;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_STRATUS_VERSION: HeaderName = HeaderName::from_static("x-stratus-version");
static X_STRATUS_FUNCTION: HeaderName = HeaderName::from_static("x-stratus-function");

/// Headers that describe one hop's connection and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers named by `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
}

fn request_id(h: &HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(&X_REQUEST_ID)
        && !v.is_empty()
        && v.len() <= 128
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    // Time-ordered (UUIDv7), so the log store's request-id index is appended to.
    HeaderValue::from_str(&stratus_telemetry::context::time_ordered_hex())
        .expect("hex is a valid header")
}

pub(crate) fn error_response(err: &PlatformError, request_id: &HeaderValue) -> Response<Body> {
    let status =
        StatusCode::from_u16(err.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::new(full_body(err.to_json().to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    if matches!(
        err.code,
        ErrorCode::Overloaded | ErrorCode::Throttled | ErrorCode::ShuttingDown
    ) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

fn host_of<B>(req: &Request<B>) -> Option<String> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    let host = match raw.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => raw.split(':').next().unwrap_or(raw),
    };
    Some(host.to_ascii_lowercase())
}

/// Mirrors in flight at once on this node; past it, mirrors are dropped and counted.
const MIRROR_SLOTS: usize = 256;
/// Request-body chunks buffered for a mirror before it is abandoned.
const MIRROR_BUFFER: usize = 64;

/// The data plane's request handler. Cheap to clone; shared by every connection.
#[derive(Clone)]
pub struct Gateway {
    router: Arc<Router>,
    fleet: Arc<Fleet>,
    stats: Arc<TrafficStats>,
    shadows: Arc<ShadowRegistry>,
    mirror_slots: Arc<Semaphore>,
    observers: Observers,
}

fn platform_error(e: PlatformError, rid: &HeaderValue) -> (Response<Body>, Option<Served>) {
    (error_response(&e, rid), None)
}

/// What served a request, for the statistics.
struct Served {
    version: Arc<VersionRecord>,
    mirror: Option<oneshot::Sender<PrimaryOutcome>>,
    compare_body: bool,
    timeline: Timeline,
}

/// A platform error answered after routing: counted and recorded against the version.
fn failed(
    err: PlatformError,
    rid: &HeaderValue,
    mut served: Served,
) -> (Response<Body>, Option<Served>) {
    served.timeline.error = Some(err.code.as_str());
    (error_response(&err, rid), Some(served))
}

impl Gateway {
    pub fn new(
        router: Arc<Router>,
        fleet: Arc<Fleet>,
        stats: Arc<TrafficStats>,
        shadows: Arc<ShadowRegistry>,
    ) -> Self {
        Self {
            router,
            fleet,
            stats,
            shadows,
            mirror_slots: Arc::new(Semaphore::new(MIRROR_SLOTS)),
            observers: Observers::default(),
        }
    }

    /// Sends request records and trace spans to these sinks.
    pub fn with_observers(mut self, observers: Observers) -> Self {
        self.observers = observers;
        self
    }

    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<stratus_runtime::BoxError>,
    {
        let started = Instant::now();
        let (resp, served) = self.serve(req, peer).await;
        let Some(mut served) = served else {
            return resp;
        };
        let status = resp.status().as_u16();
        let elapsed = started.elapsed();
        self.stats.record_outcome(&Outcome {
            function: served.version.function.as_str(),
            version: served.version.number.0,
            status,
            elapsed,
            init: served.timeline.init,
            error: served.timeline.error,
        });
        if let Some(c) = served.timeline.capture.as_mut() {
            c.respond(status, resp.headers());
        }
        let resp = if self.observers.any() {
            resp.map(|inner| {
                Finished {
                    inner,
                    report: Some(Report {
                        observers: self.observers.clone(),
                        timeline: served.timeline,
                        version: served.version.clone(),
                        status,
                    }),
                    bytes_out: 0,
                    ended: false,
                }
                .boxed_unsync()
            })
        } else {
            resp
        };
        match served.mirror {
            None => resp,
            Some(tx) if !served.compare_body => {
                let _ = tx.send((status, None, elapsed));
                resp
            }
            Some(tx) => resp.map(|inner| {
                Hashed {
                    inner,
                    hasher: Some(Default::default()),
                    done: Some(tx),
                    status,
                    elapsed,
                }
                .boxed_unsync()
            }),
        }
    }

    async fn serve<B>(&self, req: Request<B>, peer: SocketAddr) -> (Response<Body>, Option<Served>)
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<stratus_runtime::BoxError>,
    {
        // 1. Identity.
        let started = Instant::now();
        let wall = SystemTime::now();
        let rid = request_id(req.headers());
        let incoming = req
            .headers()
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse);
        let trace = incoming.as_ref().map(|t| t.child()).unwrap_or_else(|| {
            let mut root = TraceContext::new_root();
            if !crate::observe::sampled(&root.trace_id, self.observers.root_sample_ratio) {
                root.flags &= !1;
            }
            root
        });
        let invoke_span: [u8; 8] = rand::random();

        // 2. Routing: the alias's rules, then its weights (sticky or random).
        let host = host_of(&req);
        let random: u32 = rand::random();
        let resolved = {
            let table = self.router.table();
            let view = HttpView {
                headers: req.headers(),
                query: req.uri().query(),
                peer: peer.ip(),
            };
            match table.resolve(host.as_deref(), req.uri().path(), &view, random) {
                Ok(r) => r,
                Err(e) => return platform_error(e.into(), &rid),
            }
        };
        let version = resolved.version.clone();
        let spec = &version.spec;
        let bytes_in = Arc::new(AtomicU64::new(0));
        let mut served = Served {
            version: version.clone(),
            mirror: None,
            compare_body: false,
            timeline: Timeline {
                request_id: rid.to_str().unwrap_or_default().to_string(),
                trace: trace.clone(),
                parent: incoming.map(|t| t.span_id),
                invoke_span,
                trace_state: req
                    .headers()
                    .get(&TRACESTATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                method: req.method().as_str().to_string(),
                path: req.uri().path().to_string(),
                wall,
                started,
                routed: Some(Instant::now()),
                queue: None,
                init: None,
                sent: None,
                instance: String::new(),
                error: None,
                bytes_in: bytes_in.clone(),
                capture: None,
            },
        };

        // 3. Body limit, up front where the length is declared.
        let limit = spec.limits.max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = || {
            PlatformError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "request body is larger than the limit of {limit} bytes of `{}`",
                    spec.name
                ),
            )
        };
        if declared.is_some_and(|n| n > limit) {
            return failed(too_large(), &rid, served);
        }

        // 4. A slot on an instance, within the function's timeout.
        let timeout = spec.limits.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let pool = self.fleet.pool(spec, version.number, &version.artifact);
        // Waiting for a slot is bounded by the queue timeout (503 past it), the call by the timeout.
        let queue_timeout = spec.scaling.queue_timeout.unwrap_or(timeout).min(timeout);
        let queue_deadline = tokio::time::Instant::now() + queue_timeout;
        let queued_at = Instant::now();
        let acquired = pool.acquire(queue_deadline).await;
        if acquired.as_ref().map_or(true, |l| l.queued()) {
            served.timeline.queue = Some((queued_at, Instant::now()));
        }
        let lease = match acquired {
            Ok(l) => l,
            Err(e) => {
                let err = match e {
                    AcquireError::StartFailed(why) => PlatformError::new(
                        ErrorCode::InstanceStartFailed,
                        format!(
                            "`{}` version {} could not start: {why}",
                            spec.name, version.number
                        ),
                    ),
                    AcquireError::Timeout => PlatformError::new(
                        ErrorCode::Overloaded,
                        format!(
                            "no instance of `{}` had a free slot within {queue_timeout:?}",
                            spec.name
                        ),
                    ),
                    AcquireError::QueueFull(why) | AcquireError::Throttled(why) => {
                        PlatformError::new(ErrorCode::Throttled, why)
                    }
                    AcquireError::ShuttingDown => {
                        PlatformError::new(ErrorCode::ShuttingDown, "the server is shutting down")
                    }
                };
                return failed(err, &rid, served);
            }
        };
        served.timeline.init = lease.cold_start();
        served.timeline.instance = lease.instance().id().to_string();

        // 5. Forward.
        let (mut parts, body) = req.into_parts();
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let original_uri = std::mem::take(&mut parts.uri);
        parts.uri = match format!("{}{query}", resolved.path).parse() {
            Ok(u) => u,
            Err(e) => {
                return failed(
                    PlatformError::new(ErrorCode::BadRequest, format!("bad path: {e}")),
                    &rid,
                    served,
                );
            }
        };
        let h = &mut parts.headers;
        strip_hop_by_hop(h);
        // The request as the client sent it, before the platform's own headers are added.
        if let Some(cs) = spec.capture.as_ref()
            && self.observers.records.is_some()
            && rand::random::<f64>() < cs.sample_rate
        {
            let uri = original_uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            served.timeline.capture = Some(Box::new(Capture::start(
                cs,
                parts.method.as_str(),
                uri,
                format!("{}{query}", resolved.path),
                h,
            )));
        }
        if let Some(host) = &host
            && let Ok(v) = HeaderValue::from_str(host)
        {
            h.insert(X_FORWARDED_HOST.clone(), v);
        }
        let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert(X_FORWARDED_FOR.clone(), v);
        }
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        if !resolved.stripped_prefix.is_empty()
            && let Ok(v) = HeaderValue::from_str(&resolved.stripped_prefix)
        {
            h.insert(X_FORWARDED_PREFIX.clone(), v);
        }
        h.insert(X_REQUEST_ID.clone(), rid.clone());
        // The function's parent is the gateway's invoke span, so its own spans nest under it.
        let upstream_trace = TraceContext {
            span_id: invoke_span,
            ..trace
        };
        h.insert(
            TRACEPARENT.clone(),
            HeaderValue::try_from(upstream_trace.header()).expect("ascii"),
        );
        if h.get(header::HOST).is_none()
            && let Some(host) = &host
            && let Ok(v) = HeaderValue::from_str(host)
        {
            h.insert(header::HOST, v);
        }
        let exceeded = Arc::new(AtomicBool::new(false));
        let mut body = Limited {
            inner: body,
            remaining: limit,
            exceeded: exceeded.clone(),
            counted: bytes_in,
            copy: served.timeline.capture.as_ref().map(|c| c.request_copy()),
        }
        .boxed_unsync();
        if let Some(target) = resolved.shadow.filter(|s| random / 7 % 100 < s.percent) {
            body = self.start_mirror(target, &parts, body, &mut served);
        }
        let upstream = Request::from_parts(parts, body);
        let remaining = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_millis(1));
        served.timeline.sent = Some(Instant::now());
        let result = tokio::time::timeout(remaining, lease.instance().handle(upstream)).await;

        // 6. Respond.
        let mut resp = match result {
            Err(_) => {
                let e = PlatformError::new(
                    ErrorCode::Timeout,
                    format!(
                        "`{}` did not respond within its timeout of {timeout:?}",
                        spec.name
                    ),
                );
                return failed(e, &rid, served);
            }
            Ok(Err(_)) if exceeded.load(Ordering::Relaxed) => {
                return failed(too_large(), &rid, served);
            }
            Ok(Err(why)) => {
                tracing::warn!(function = %spec.name, version = %version.number, "upstream error: {why}");
                let e = PlatformError::new(
                    ErrorCode::UpstreamError,
                    format!(
                        "`{}` version {} failed to answer: {why}",
                        spec.name, version.number
                    ),
                );
                return failed(e, &rid, served);
            }
            Ok(Ok(resp)) => resp,
        };
        let h = resp.headers_mut();
        strip_hop_by_hop(h);
        h.insert(X_REQUEST_ID.clone(), rid);
        h.insert(
            X_STRATUS_VERSION.clone(),
            HeaderValue::from(version.number.0),
        );
        if let Ok(v) = HeaderValue::from_str(spec.name.as_str()) {
            h.insert(X_STRATUS_FUNCTION.clone(), v);
        }
        (
            resp.map(|inner| {
                Leased {
                    inner,
                    _lease: lease,
                }
                .boxed_unsync()
            }),
            Some(served),
        )
    }

    /// Starts mirroring this request to the alias's shadow version (if the mirror budget allows)
    /// and returns the body to send to the primary.
    fn start_mirror(
        &self,
        target: ShadowTarget,
        parts: &http::request::Parts,
        body: Body,
        served: &mut Served,
    ) -> Body {
        let stats = self.shadows.get(
            target.version.function.as_str(),
            target.alias.as_str(),
            target.version.number.0,
        );
        let Ok(permit) = self.mirror_slots.clone().try_acquire_owned() else {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            return body;
        };
        let mut mirror_parts = Request::new(()).into_parts().0;
        mirror_parts.method = parts.method.clone();
        mirror_parts.uri = parts.uri.clone();
        mirror_parts.headers = parts.headers.clone();
        mirror_parts
            .headers
            .insert("x-stratus-shadow", HeaderValue::from_static("1"));
        let has_body = !http_body::Body::is_end_stream(&body);
        let (body, body_rx) = if has_body {
            let (tx, rx) = mpsc::channel(MIRROR_BUFFER);
            let aborted = Arc::new(AtomicBool::new(false));
            (
                Tee {
                    inner: body,
                    tx: Some(tx),
                    aborted: aborted.clone(),
                }
                .boxed_unsync(),
                Some((rx, aborted)),
            )
        } else {
            (body, None)
        };
        let (tx, rx) = oneshot::channel();
        served.mirror = Some(tx);
        served.compare_body = target.compare_body;
        tokio::spawn(run_mirror(
            self.fleet.clone(),
            target,
            mirror_parts,
            body_rx,
            rx,
            stats,
            permit,
        ));
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn request_ids_are_kept_when_sane() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
        assert_eq!(request_id(&HeaderMap::new()).len(), 32);
    }

    #[test]
    fn hosts_lose_their_port() {
        let req = |h: &'static str| Request::get("/").header("host", h).body(()).unwrap();
        assert_eq!(
            host_of(&req("Example.com:8080")).as_deref(),
            Some("example.com")
        );
        assert_eq!(host_of(&req("example.com")).as_deref(), Some("example.com"));
        assert_eq!(host_of(&req("[::1]:8080")).as_deref(), Some("::1"));
    }
}
