//! Trace export over OTLP/HTTP (protobuf), off the request path.
//!
//! The gateway builds finished spans from the timings it already takes (no tracing machinery on
//! the hot path) and hands them to [`Tracer::submit`], which never blocks: a bounded channel with
//! `try_send`, dropped and counted when full. One task batches spans into
//! `ExportTraceServiceRequest`s and POSTs them to `<endpoint>/v1/traces`, retrying a failed
//! batch a few times before counting it as dropped.
//!
//! `encode` writes the subset of `opentelemetry/proto/trace/v1` and `common/v1` that we use,
//! with the field numbers of the published `.proto` files; the test decodes our bytes with the
//! official generated types (`opentelemetry-proto`), so a wrong tag fails it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

/// `Span.SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// A finished span, as the gateway knows it.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub trace_state: String,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// Set for spans that failed, with the reason.
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// The collector's base URL (`http://host:4318`); `/v1/traces` is added unless the URL
    /// already ends with it.
    pub endpoint: String,
    pub service_name: String,
    /// Requests whose spans may wait for export (each request's spans are one entry).
    pub buffer: usize,
    /// Requests' spans per export POST.
    pub batch: usize,
    pub flush_every: Duration,
}

impl TraceConfig {
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            service_name: "stratus".into(),
            buffer: 8192,
            batch: 512,
            flush_every: Duration::from_millis(500),
        }
    }

    fn url(&self) -> String {
        let e = self.endpoint.trim_end_matches('/');
        if e.ends_with("/v1/traces") {
            e.to_string()
        } else {
            format!("{e}/v1/traces")
        }
    }
}

/// A request's spans travel together: one queue entry and one wake-up per request, not per span.
type SpanGroup = Vec<SpanRecord>;

pub struct Tracer {
    tx: mpsc::Sender<SpanGroup>,
    dropped: Arc<AtomicU64>,
    exported: Arc<AtomicU64>,
}

impl Tracer {
    /// Starts the exporter task.
    pub fn start(config: TraceConfig) -> Result<Arc<Self>, String> {
        let url: http::Uri = config
            .url()
            .parse()
            .map_err(|e| format!("invalid OTLP endpoint {:?}: {e}", config.endpoint))?;
        if url.scheme_str() != Some("http") {
            return Err(format!(
                "OTLP endpoint {:?}: only http:// is supported (put a collector beside the node for TLS)",
                config.endpoint
            ));
        }
        let (tx, rx) = mpsc::channel(config.buffer);
        let dropped = Arc::new(AtomicU64::new(0));
        let exported = Arc::new(AtomicU64::new(0));
        tokio::spawn(export(config, url, rx, dropped.clone(), exported.clone()));
        Ok(Arc::new(Self {
            tx,
            dropped,
            exported,
        }))
    }

    /// Queues a finished span; never waits.
    pub fn submit(&self, span: SpanRecord) {
        self.submit_all(vec![span]);
    }

    /// Queues one request's finished spans as one entry; never waits.
    pub fn submit_all(&self, spans: Vec<SpanRecord>) {
        let n = spans.len() as u64;
        if self.tx.try_send(spans).is_err() {
            self.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }
}

async fn export(
    config: TraceConfig,
    url: http::Uri,
    mut rx: mpsc::Receiver<SpanGroup>,
    dropped: Arc<AtomicU64>,
    exported: Arc<AtomicU64>,
) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut groups: Vec<SpanGroup> = Vec::with_capacity(config.batch);
    loop {
        if rx.recv_many(&mut groups, config.batch).await == 0 {
            return;
        }
        crate::fill_batch(&mut rx, &mut groups, config.batch, config.flush_every).await;
        let batch: Vec<SpanRecord> = groups.drain(..).flatten().collect();
        let n = batch.len() as u64;
        let body = Bytes::from(encode(&config.service_name, batch));
        let mut sent = false;
        for attempt in 0..3u32 {
            let req = http::Request::post(url.clone())
                .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                .body(Full::new(body.clone()))
                .expect("valid request");
            match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    let _ = resp.into_body().collect().await;
                    sent = true;
                    break;
                }
                Ok(Ok(resp)) => {
                    tracing::warn!("OTLP export to {url}: HTTP {}", resp.status());
                    // 4xx other than 429 will not get better by retrying.
                    if resp.status().is_client_error()
                        && resp.status() != http::StatusCode::TOO_MANY_REQUESTS
                    {
                        break;
                    }
                }
                Ok(Err(e)) => tracing::warn!("OTLP export to {url}: {e}"),
                Err(_) => tracing::warn!("OTLP export to {url}: timed out"),
            }
            tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
        }
        if sent {
            exported.fetch_add(n, Ordering::Relaxed);
        } else {
            dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// An `ExportTraceServiceRequest`, written straight from the spans: no intermediate message
/// structs, so no per-attribute key or id allocations (this runs for every traced request).
/// Nested messages are length-prefixed, so each span is written to a scratch buffer first.
fn encode(service: &str, spans: Vec<SpanRecord>) -> Vec<u8> {
    let mut spans_buf = Vec::with_capacity(spans.len() * 320);
    let mut scratch = Vec::with_capacity(512);
    for s in &spans {
        scratch.clear();
        span(s, &mut scratch);
        wire::message(&mut spans_buf, 2, &scratch);
    }
    // ScopeSpans { scope = 1: InstrumentationScope { name = 1, version = 2 }, spans = 2 }
    let mut scope = Vec::new();
    wire::string(&mut scope, 1, "stratus-gateway");
    wire::string(&mut scope, 2, env!("CARGO_PKG_VERSION"));
    let mut scope_spans = Vec::with_capacity(spans_buf.len() + 64);
    wire::message(&mut scope_spans, 1, &scope);
    scope_spans.extend_from_slice(&spans_buf);
    // ResourceSpans { resource = 1: Resource { attributes = 1 }, scope_spans = 2 }
    let mut resource = Vec::new();
    for (k, v) in [("service.name", service), ("cloud.provider", "stratus")] {
        scratch.clear();
        key_value(&mut scratch, k, &AttrValue::Str(v.into()));
        wire::message(&mut resource, 1, &scratch);
    }
    let mut resource_spans = Vec::with_capacity(scope_spans.len() + 128);
    wire::message(&mut resource_spans, 1, &resource);
    wire::message(&mut resource_spans, 2, &scope_spans);
    // ExportTraceServiceRequest { resource_spans = 1 }
    let mut out = Vec::with_capacity(resource_spans.len() + 8);
    wire::message(&mut out, 1, &resource_spans);
    out
}

/// `KeyValue { key = 1, value = 2: AnyValue { string = 1 | bool = 2 | int = 3 } }`, the
/// AnyValue's length computed rather than buffered.
fn key_value(out: &mut Vec<u8>, key: &str, v: &AttrValue) {
    wire::string(out, 1, key);
    wire::key(out, 2, wire::LEN);
    match v {
        AttrValue::Str(s) => {
            wire::varint(out, (1 + wire::varint_len(s.len() as u64) + s.len()) as u64);
            // Written even when empty: it says which variant the value is.
            wire::message(out, 1, s.as_bytes());
        }
        AttrValue::Bool(b) => {
            wire::varint(out, 2);
            wire::key(out, 2, wire::VARINT);
            wire::varint(out, *b as u64);
        }
        AttrValue::Int(i) => {
            wire::varint(out, (1 + wire::varint_len(*i as u64)) as u64);
            wire::key(out, 3, wire::VARINT);
            wire::varint(out, *i as u64);
        }
    }
}

/// `Span` (opentelemetry/proto/trace/v1), the fields we write.
fn span(s: &SpanRecord, out: &mut Vec<u8>) {
    wire::bytes(out, 1, &s.trace_id);
    wire::bytes(out, 2, &s.span_id);
    wire::string(out, 3, &s.trace_state);
    if let Some(p) = &s.parent_span_id {
        wire::bytes(out, 4, p);
    }
    wire::string(out, 5, &s.name);
    wire::key(out, 6, wire::VARINT);
    wire::varint(out, s.kind as u64);
    wire::key(out, 7, wire::FIXED64);
    out.extend_from_slice(&s.start_unix_nanos.to_le_bytes());
    wire::key(out, 8, wire::FIXED64);
    out.extend_from_slice(&s.end_unix_nanos.to_le_bytes());
    let mut kv = Vec::with_capacity(64);
    for (k, v) in &s.attributes {
        kv.clear();
        key_value(&mut kv, k, v);
        wire::message(out, 9, &kv);
    }
    // Status { message = 2, code = 3 }: always present (UNSET when the span did not fail).
    let mut status = Vec::new();
    if let Some(why) = &s.error {
        wire::string(&mut status, 2, why);
        wire::key(&mut status, 3, wire::VARINT);
        wire::varint(&mut status, 2);
    }
    wire::message(out, 15, &status);
}

/// Protocol buffers' wire format, the four pieces OTLP's messages need (prost's `encoding`).
mod wire {
    pub const VARINT: prost::encoding::WireType = prost::encoding::WireType::Varint;
    pub const FIXED64: prost::encoding::WireType = prost::encoding::WireType::SixtyFourBit;
    pub const LEN: prost::encoding::WireType = prost::encoding::WireType::LengthDelimited;

    pub fn varint(out: &mut Vec<u8>, v: u64) {
        prost::encoding::encode_varint(v, out);
    }
    pub fn varint_len(v: u64) -> usize {
        prost::encoding::encoded_len_varint(v)
    }
    pub fn key(out: &mut Vec<u8>, tag: u32, wt: prost::encoding::WireType) {
        prost::encoding::encode_key(tag, wt, out);
    }
    /// A length-delimited field; empty ones are left out (proto3 default).
    pub fn bytes(out: &mut Vec<u8>, tag: u32, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        message(out, tag, b);
    }
    pub fn string(out: &mut Vec<u8>, tag: u32, s: &str) {
        bytes(out, tag, s.as_bytes());
    }
    /// An embedded message, already encoded (written even when empty: presence matters).
    pub fn message(out: &mut Vec<u8>, tag: u32, encoded: &[u8]) {
        key(out, tag, LEN);
        varint(out, encoded.len() as u64);
        out.extend_from_slice(encoded);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest as Official;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message as _;
    use tokio::net::TcpListener;

    use super::*;

    fn sample(error: Option<&str>) -> SpanRecord {
        SpanRecord {
            trace_id: [7; 16],
            span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            parent_span_id: Some([9; 8]),
            trace_state: "vendor=x".into(),
            name: "GET /fn/hello".into(),
            kind: SpanKind::Server,
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: 1_700_000_000_005_000_000,
            attributes: vec![
                ("faas.name", AttrValue::Str("hello".into())),
                ("faas.coldstart", AttrValue::Bool(true)),
                ("http.response.status_code", AttrValue::Int(503)),
            ],
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn our_bytes_decode_as_the_official_otlp_messages() {
        let bytes = encode("stratus", vec![sample(Some("overloaded"))]);
        let got = Official::decode(bytes.as_slice()).expect("valid OTLP");
        let rs = &got.resource_spans[0];
        let service = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        let span = &rs.scope_spans[0].spans[0];
        assert_eq!(span.trace_id, vec![7; 16]);
        assert_eq!(span.span_id, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(span.parent_span_id, vec![9; 8]);
        assert_eq!(span.trace_state, "vendor=x");
        assert_eq!(span.name, "GET /fn/hello");
        assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
        assert_eq!(
            span.end_time_unix_nano - span.start_time_unix_nano,
            5_000_000
        );
        let status = span.status.as_ref().unwrap();
        assert_eq!((status.code, status.message.as_str()), (2, "overloaded"));
        let attr = |k: &str| {
            span.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.as_ref()?.value.clone())
        };
        assert_eq!(attr("faas.name"), Some(Value::StringValue("hello".into())));
        assert_eq!(attr("faas.coldstart"), Some(Value::BoolValue(true)));
        assert_eq!(
            attr("http.response.status_code"),
            Some(Value::IntValue(503))
        );
    }

    #[test]
    fn edge_values_decode_too() {
        let mut plain = sample(None);
        plain.parent_span_id = None;
        plain.trace_state = String::new();
        plain.kind = SpanKind::Client;
        plain.attributes = vec![
            ("empty", AttrValue::Str(String::new())),
            ("negative", AttrValue::Int(-7)),
            ("big", AttrValue::Int(i64::MAX)),
            ("no", AttrValue::Bool(false)),
            ("long", AttrValue::Str("x".repeat(300))),
        ];
        let got = Official::decode(encode("svc", vec![sample(None), plain]).as_slice()).unwrap();
        let rs = &got.resource_spans[0];
        let resource = &rs.resource.as_ref().unwrap().attributes;
        assert_eq!(
            resource[0].value.as_ref().unwrap().value,
            Some(Value::StringValue("svc".into()))
        );
        assert_eq!(
            rs.scope_spans[0].scope.as_ref().unwrap().name,
            "stratus-gateway"
        );
        let spans = &rs.scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].status.as_ref().unwrap().code, 0, "UNSET");
        let s = &spans[1];
        assert!(s.parent_span_id.is_empty() && s.trace_state.is_empty());
        assert_eq!(s.kind, 3, "SPAN_KIND_CLIENT");
        let values: Vec<_> = s
            .attributes
            .iter()
            .map(|a| (a.key.as_str(), a.value.as_ref().unwrap().value.clone()))
            .collect();
        assert_eq!(
            values,
            vec![
                ("empty", Some(Value::StringValue(String::new()))),
                ("negative", Some(Value::IntValue(-7))),
                ("big", Some(Value::IntValue(i64::MAX))),
                ("no", Some(Value::BoolValue(false))),
                ("long", Some(Value::StringValue("x".repeat(300)))),
            ]
        );
    }

    type Posted = mpsc::UnboundedReceiver<(String, String, Bytes)>;

    /// An OTLP/HTTP collector that answers 200 and hands over what it was sent.
    async fn sink() -> (std::net::SocketAddr, Posted) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (got_tx, got_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let got_tx = got_tx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let got_tx = got_tx.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let ct = req.headers()[http::header::CONTENT_TYPE]
                                    .to_str()
                                    .unwrap()
                                    .to_string();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                got_tx.send((path, ct, body)).unwrap();
                                Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::new())))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, got_rx)
    }

    #[tokio::test]
    async fn a_full_batch_goes_out_without_waiting_for_the_flush_interval() {
        let (addr, mut got_rx) = sink().await;
        let mut config = TraceConfig::new(format!("http://{addr}"));
        config.flush_every = Duration::from_secs(60);
        config.batch = 2;
        let tracer = Tracer::start(config).unwrap();
        tracer.submit(sample(None));
        tracer.submit(sample(None));
        let (_, _, body) = tokio::time::timeout(Duration::from_secs(10), got_rx.recv())
            .await
            .expect("sent once the batch was full, not after flush_every")
            .unwrap();
        let req = Official::decode(body).unwrap();
        assert_eq!(req.resource_spans[0].scope_spans[0].spans.len(), 2);
    }

    #[tokio::test]
    async fn spans_are_posted_in_batches_and_counted() {
        let (addr, mut got_rx) = sink().await;
        let mut config = TraceConfig::new(format!("http://{addr}"));
        config.flush_every = Duration::from_millis(20);
        let tracer = Tracer::start(config).unwrap();
        for _ in 0..3 {
            tracer.submit(sample(None));
        }
        let (path, ct, body) = tokio::time::timeout(Duration::from_secs(5), got_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(path, "/v1/traces");
        assert_eq!(ct, "application/x-protobuf");
        let req = Official::decode(body).unwrap();
        assert_eq!(req.resource_spans[0].scope_spans[0].spans.len(), 3);
        for _ in 0..100 {
            if tracer.exported() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((tracer.exported(), tracer.dropped()), (3, 0));
    }

    #[test]
    fn only_plain_http_endpoints_are_taken() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(Tracer::start(TraceConfig::new("https://collector:4318")).is_err());
            assert!(Tracer::start(TraceConfig::new("not a url")).is_err());
            assert_eq!(
                TraceConfig::new("http://c:4318/v1/traces/").url(),
                "http://c:4318/v1/traces"
            );
        });
    }
}
