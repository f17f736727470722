//! Trace export over OTLP/HTTP (protobuf), off the request path.
//!
//! The gateway builds finished spans from the timings it already takes (no tracing machinery on
//! the hot path) and hands them to [`Tracer::submit`], which never blocks: a bounded channel with
//! `try_send`, dropped and counted when full. One task batches spans into
//! `ExportTraceServiceRequest`s and POSTs them to `<endpoint>/v1/traces`, retrying a failed
//! batch a few times before counting it as dropped.
//!
//! The messages below are the subset of `opentelemetry/proto/trace/v1` and `common/v1` that we
//! write, with the field numbers of the published `.proto` files; the test decodes our bytes
//! with the official generated types (`opentelemetry-proto`), so a wrong tag fails it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
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
        if groups.len() < config.batch {
            tokio::time::sleep(config.flush_every).await;
            while groups.len() < config.batch {
                match rx.try_recv() {
                    Ok(g) => groups.push(g),
                    Err(_) => break,
                }
            }
        }
        let batch: Vec<SpanRecord> = groups.drain(..).flatten().collect();
        let n = batch.len() as u64;
        let body = Bytes::from(encode(&config.service_name, batch).encode_to_vec());
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

fn encode(service: &str, spans: Vec<SpanRecord>) -> pb::ExportTraceServiceRequest {
    pb::ExportTraceServiceRequest {
        resource_spans: vec![pb::ResourceSpans {
            resource: Some(pb::Resource {
                attributes: vec![
                    kv("service.name", AttrValue::Str(service.into())),
                    kv("cloud.provider", AttrValue::Str("stratus".into())),
                ],
            }),
            scope_spans: vec![pb::ScopeSpans {
                scope: Some(pb::InstrumentationScope {
                    name: "stratus-gateway".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans: spans.into_iter().map(span).collect(),
            }],
        }],
    }
}

fn kv(key: &str, v: AttrValue) -> pb::KeyValue {
    let value = match v {
        AttrValue::Str(s) => pb::any_value::Value::StringValue(s),
        AttrValue::Int(i) => pb::any_value::Value::IntValue(i),
        AttrValue::Bool(b) => pb::any_value::Value::BoolValue(b),
    };
    pb::KeyValue {
        key: key.into(),
        value: Some(pb::AnyValue { value: Some(value) }),
    }
}

/// Moves the span's strings into the message (no copies).
fn span(s: SpanRecord) -> pb::Span {
    pb::Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        trace_state: s.trace_state,
        parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        name: s.name,
        kind: s.kind as i32,
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos,
        attributes: s.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
        status: Some(match s.error {
            None => pb::Status {
                message: String::new(),
                code: 0,
            },
            Some(why) => pb::Status {
                message: why,
                code: 2,
            },
        }),
    }
}

/// OTLP messages (opentelemetry-proto v1), only the fields we write.
mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        pub trace_state: String,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(int32, tag = "3")]
        pub code: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "any_value::Value", tags = "1, 2, 3")]
        pub value: Option<any_value::Value>,
    }
    pub mod any_value {
        // The names of the .proto's oneof.
        #[allow(clippy::enum_variant_names)]
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(string, tag = "1")]
            StringValue(String),
            #[prost(bool, tag = "2")]
            BoolValue(bool),
            #[prost(int64, tag = "3")]
            IntValue(i64),
        }
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
        let bytes = encode("stratus", vec![sample(Some("overloaded"))]).encode_to_vec();
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

    #[tokio::test]
    async fn spans_are_posted_in_batches_and_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (got_tx, mut got_rx) = mpsc::unbounded_channel();
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
