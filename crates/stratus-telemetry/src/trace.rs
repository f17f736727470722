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

/// One request the gateway served, handed over as it was timed; the exporter lays it out as
/// its spans (the server span; route, queue (when it queued for a slot) with the cold start
/// inside it, and invoke under it).
/// The request path so moves what it already holds into one box, and allocates nothing per
/// span or attribute.
#[derive(Debug, Clone)]
pub struct ServedRequest {
    pub trace_id: [u8; 16],
    /// The server span's id (the gateway's own span).
    pub span_id: [u8; 8],
    /// The caller's span, when it sent a `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    pub trace_state: String,
    pub function: String,
    pub version: u32,
    pub instance: String,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes_out: u64,
    /// The platform's error code (`error.type`), when the platform answered.
    pub error_type: Option<&'static str>,
    /// The server span's status message, when the request failed.
    pub error: Option<String>,
    /// Unix nanoseconds: the request's start, routing's end, the queue wait, the request's end.
    pub start: u64,
    pub routed: u64,
    pub queue: Option<(u64, u64)>,
    /// The cold start's length (inside the queue wait), when the request started an instance.
    pub init: Option<u64>,
    /// When the request was sent to the instance, and the span id the function was given as its
    /// parent.
    pub invoke: Option<(u64, [u8; 8])>,
    pub end: u64,
}

/// What travels to the exporter: one entry and one wake-up per request, not per span.
enum SpanGroup {
    Spans(Vec<SpanRecord>),
    Served(Box<ServedRequest>),
}

impl SpanGroup {
    fn len(&self) -> u64 {
        match self {
            SpanGroup::Spans(v) => v.len() as u64,
            SpanGroup::Served(r) => r.span_count(),
        }
    }
}

impl ServedRequest {
    fn span_count(&self) -> u64 {
        let queue = self.queue.map_or(0, |_| 1 + self.init.map_or(0, |_| 1));
        2 + queue + self.invoke.map_or(0, |_| 1)
    }
}

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

    /// Queues finished spans as one entry; never waits.
    pub fn submit_all(&self, spans: Vec<SpanRecord>) {
        self.queue(SpanGroup::Spans(spans));
    }

    /// Queues a served request's spans (laid out by the exporter); never waits.
    pub fn submit_served(&self, request: Box<ServedRequest>) {
        self.queue(SpanGroup::Served(request));
    }

    fn queue(&self, group: SpanGroup) {
        if let Err(e) = self.tx.try_send(group) {
            let group = match e {
                mpsc::error::TrySendError::Full(g) | mpsc::error::TrySendError::Closed(g) => g,
            };
            self.dropped.fetch_add(group.len(), Ordering::Relaxed);
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
        let n = groups.iter().map(SpanGroup::len).sum::<u64>();
        let body = Bytes::from(encode(&config.service_name, &groups));
        groups.clear();
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

/// A span as the encoder sees it, borrowed from a [`SpanRecord`] or laid out from a
/// [`ServedRequest`].
struct SpanView<'a> {
    trace_id: &'a [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    trace_state: &'a str,
    /// The name, in pieces written one after the other (`GET` ` ` `hello`).
    name: [&'a str; 3],
    kind: SpanKind,
    start: u64,
    end: u64,
    attributes: &'a [(&'static str, Val<'a>)],
    error: Option<&'a str>,
}

#[derive(Clone, Copy)]
enum Val<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
}

impl<'a> From<&'a AttrValue> for Val<'a> {
    fn from(v: &'a AttrValue) -> Self {
        match v {
            AttrValue::Str(s) => Val::Str(s),
            AttrValue::Int(i) => Val::Int(*i),
            AttrValue::Bool(b) => Val::Bool(*b),
        }
    }
}

/// An `ExportTraceServiceRequest`, written straight from the spans: no intermediate message
/// structs and no per-span buffers. Each span is written once, in one pass (its length is
/// widened after it, see `wire::Out for Vec<u8>`), then copied once behind the few bytes of
/// envelope, whose lengths are counted by a dry run ([`wire::Len`]) of its small parts.
fn encode(service: &str, groups: &[SpanGroup]) -> Vec<u8> {
    let mut spans = Vec::with_capacity(groups.len() * 5 * 200);
    for g in groups {
        match g {
            SpanGroup::Spans(records) => {
                for r in records {
                    let attributes: Vec<(&'static str, Val<'_>)> =
                        r.attributes.iter().map(|(k, v)| (*k, v.into())).collect();
                    let view = SpanView {
                        trace_id: &r.trace_id,
                        span_id: r.span_id,
                        parent: r.parent_span_id,
                        trace_state: &r.trace_state,
                        name: [&r.name, "", ""],
                        kind: r.kind,
                        start: r.start_unix_nanos,
                        end: r.end_unix_nanos,
                        attributes: &attributes,
                        error: r.error.as_deref(),
                    };
                    wire::message(&mut spans, 2, &view);
                }
            }
            SpanGroup::Served(r) => served_spans(r, |view| wire::message(&mut spans, 2, view)),
        }
    }
    // ScopeSpans { scope = 1: InstrumentationScope { name = 1, version = 2 }, spans = 2 }
    let scope = Scope;
    let scope_len = wire::len_of(&scope);
    let scope_spans_len = wire::field_len(scope_len) + spans.len();
    // ResourceSpans { resource = 1: Resource { attributes = 1 }, scope_spans = 2 }
    let resource = Resource(service);
    let resource_spans_len =
        wire::field_len(wire::len_of(&resource)) + wire::field_len(scope_spans_len);
    // ExportTraceServiceRequest { resource_spans = 1 }
    let mut out = Vec::with_capacity(wire::field_len(resource_spans_len));
    wire::header(&mut out, 1, resource_spans_len);
    wire::message(&mut out, 1, &resource);
    wire::header(&mut out, 2, scope_spans_len);
    wire::message(&mut out, 1, &scope);
    out.extend_from_slice(&spans);
    out
}

/// A served request's spans: the server span, then route, queue and cold start (when the
/// request waited for an instance) and invoke (when it reached one).
fn served_spans(r: &ServedRequest, mut emit: impl FnMut(&SpanView<'_>)) {
    let mut digits = [0u8; 10];
    let version = decimal(r.version, &mut digits);
    let mut server_attrs = [
        ("faas.name", Val::Str(&r.function)),
        ("faas.version", Val::Str(version)),
        ("faas.instance", Val::Str(&r.instance)),
        ("faas.trigger", Val::Str("http")),
        ("faas.invocation_id", Val::Str(&r.request_id)),
        ("faas.coldstart", Val::Bool(r.init.is_some())),
        ("http.request.method", Val::Str(&r.method)),
        ("url.path", Val::Str(&r.path)),
        ("http.response.status_code", Val::Int(r.status as i64)),
        ("http.response.body.size", Val::Int(r.bytes_out as i64)),
        ("error.type", Val::Str("")),
    ];
    let n_attrs = match r.error_type {
        Some(code) => {
            server_attrs[10].1 = Val::Str(code);
            11
        }
        None => 10,
    };
    let child = |name: &'static str, kind, start, end, span_id| SpanView {
        trace_id: &r.trace_id,
        span_id,
        parent: Some(r.span_id),
        trace_state: &r.trace_state,
        name: [name, "", ""],
        kind,
        start,
        end,
        attributes: &[],
        error: None,
    };
    emit(&SpanView {
        trace_id: &r.trace_id,
        span_id: r.span_id,
        parent: r.parent_span_id,
        trace_state: &r.trace_state,
        name: [&r.method, " ", &r.function],
        kind: SpanKind::Server,
        start: r.start,
        end: r.end,
        attributes: &server_attrs[..n_attrs],
        error: r.error.as_deref(),
    });
    emit(&child(
        "route",
        SpanKind::Internal,
        r.start,
        r.routed,
        rand::random(),
    ));
    let instance = [("faas.instance", Val::Str(&r.instance))];
    if let Some((a, b)) = r.queue {
        let queue_id: [u8; 8] = rand::random();
        emit(&child("queue", SpanKind::Internal, a, b, queue_id));
        if let Some(init) = r.init {
            let mut cold = child(
                "cold_start",
                SpanKind::Internal,
                b.saturating_sub(init).max(a),
                b,
                rand::random(),
            );
            cold.parent = Some(queue_id);
            cold.attributes = &instance;
            emit(&cold);
        }
    }
    if let Some((sent, span_id)) = r.invoke {
        let mut invoke = child("", SpanKind::Client, sent, r.end, span_id);
        invoke.name = ["invoke ", &r.function, ""];
        invoke.attributes = &instance;
        emit(&invoke);
    }
}

/// `v` in decimal, in `buf`.
fn decimal(mut v: u32, buf: &mut [u8; 10]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("ASCII digits")
}

struct Scope;

impl wire::Msg for Scope {
    fn write<O: wire::Out>(&self, o: &mut O) {
        wire::string(o, 1, "stratus-gateway");
        wire::string(o, 2, env!("CARGO_PKG_VERSION"));
    }
}

struct Resource<'a>(&'a str);

impl wire::Msg for Resource<'_> {
    fn write<O: wire::Out>(&self, o: &mut O) {
        for (k, v) in [("service.name", self.0), ("cloud.provider", "stratus")] {
            wire::message(o, 1, &KeyValue(k, Val::Str(v)));
        }
    }
}

/// `KeyValue { key = 1, value = 2: AnyValue { string = 1 | bool = 2 | int = 3 } }`.
struct KeyValue<'a>(&'a str, Val<'a>);

impl wire::Msg for KeyValue<'_> {
    fn write<O: wire::Out>(&self, o: &mut O) {
        wire::string(o, 1, self.0);
        match self.1 {
            Val::Str(s) => {
                // Written even when empty: it says which variant the value is.
                wire::header(o, 2, wire::field_len(s.len()));
                wire::header(o, 1, s.len());
                o.put(s.as_bytes());
            }
            Val::Bool(b) => {
                wire::header(o, 2, 2);
                wire::uint(o, 2, b as u64);
            }
            Val::Int(i) => {
                wire::header(o, 2, 1 + wire::varint_len(i as u64));
                wire::uint(o, 3, i as u64);
            }
        }
    }
}

/// `Status { message = 2, code = 3 }`: always present (UNSET when the span did not fail).
struct Status<'a>(Option<&'a str>);

impl wire::Msg for Status<'_> {
    fn write<O: wire::Out>(&self, o: &mut O) {
        if let Some(why) = self.0 {
            wire::string(o, 2, why);
            wire::uint(o, 3, 2);
        }
    }
}

/// `Span` (opentelemetry/proto/trace/v1), the fields we write.
impl wire::Msg for SpanView<'_> {
    fn write<O: wire::Out>(&self, o: &mut O) {
        wire::bytes(o, 1, self.trace_id);
        wire::bytes(o, 2, &self.span_id);
        wire::string(o, 3, self.trace_state);
        if let Some(p) = &self.parent {
            wire::bytes(o, 4, p);
        }
        let name_len: usize = self.name.iter().map(|p| p.len()).sum();
        if name_len > 0 {
            wire::header(o, 5, name_len);
            for p in self.name {
                o.put(p.as_bytes());
            }
        }
        wire::uint(o, 6, self.kind as u64);
        wire::fixed64(o, 7, self.start);
        wire::fixed64(o, 8, self.end);
        for (k, v) in self.attributes {
            wire::message(o, 9, &KeyValue(k, *v));
        }
        wire::message(o, 15, &Status(self.error));
    }
}

/// Protocol buffers' wire format, the pieces OTLP's messages need, written to a buffer or
/// counted ([`Len`]) so that a nested message's length is known before it is written.
mod wire {
    const VARINT: u64 = 0;
    const FIXED64: u64 = 1;
    const LEN: u64 = 2;

    pub trait Out: Sized {
        fn put(&mut self, b: &[u8]);
        fn varint(&mut self, v: u64);
        /// An embedded message: its key, its length, then its fields.
        fn message<M: Msg>(&mut self, tag: u32, m: &M);
    }

    impl Out for Vec<u8> {
        fn put(&mut self, b: &[u8]) {
            self.extend_from_slice(b);
        }
        fn varint(&mut self, v: u64) {
            prost::encoding::encode_varint(v, self);
        }
        /// Written in one pass: the fields go behind a one-byte length, which is widened
        /// afterwards when the message came out longer than 127 bytes (a span: its fields move
        /// up by a byte or two). A dry run for the length first would walk every field twice,
        /// and each attribute inside a span four times.
        fn message<M: Msg>(&mut self, tag: u32, m: &M) {
            key(self, tag, LEN);
            let at = self.len();
            self.push(0);
            m.write(self);
            let len = self.len() - at - 1;
            let mut digits = [0u8; 10];
            let n = varint_len(len as u64);
            prost::encoding::encode_varint(len as u64, &mut &mut digits[..]);
            if n > 1 {
                self.splice(at..at + 1, digits[..n].iter().copied());
            } else {
                self[at] = digits[0];
            }
        }
    }

    /// Counts the bytes a writer would write.
    pub struct Len(pub usize);

    impl Out for Len {
        fn put(&mut self, b: &[u8]) {
            self.0 += b.len();
        }
        fn varint(&mut self, v: u64) {
            self.0 += varint_len(v);
        }
        fn message<M: Msg>(&mut self, tag: u32, m: &M) {
            let len = len_of(m);
            header(self, tag, len);
            self.0 += len;
        }
    }

    /// A message's fields, written to any [`Out`].
    pub trait Msg {
        fn write<O: Out>(&self, o: &mut O);
    }

    pub fn varint_len(v: u64) -> usize {
        prost::encoding::encoded_len_varint(v)
    }

    pub fn len_of<M: Msg>(m: &M) -> usize {
        let mut n = Len(0);
        m.write(&mut n);
        n.0
    }

    /// The size of a length-delimited field with a one-byte key (tags below 16) and `len`
    /// bytes of payload.
    pub fn field_len(len: usize) -> usize {
        1 + varint_len(len as u64) + len
    }

    fn key<O: Out>(o: &mut O, tag: u32, wire_type: u64) {
        o.varint(((tag as u64) << 3) | wire_type);
    }

    /// The key and length of a length-delimited field whose payload follows.
    pub fn header<O: Out>(o: &mut O, tag: u32, len: usize) {
        key(o, tag, LEN);
        o.varint(len as u64);
    }

    pub fn uint<O: Out>(o: &mut O, tag: u32, v: u64) {
        key(o, tag, VARINT);
        o.varint(v);
    }

    pub fn fixed64<O: Out>(o: &mut O, tag: u32, v: u64) {
        key(o, tag, FIXED64);
        o.put(&v.to_le_bytes());
    }

    /// A length-delimited field; empty ones are left out (proto3 default).
    pub fn bytes<O: Out>(o: &mut O, tag: u32, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        header(o, tag, b.len());
        o.put(b);
    }

    pub fn string<O: Out>(o: &mut O, tag: u32, s: &str) {
        bytes(o, tag, s.as_bytes());
    }

    /// An embedded message (written even when empty: presence matters).
    pub fn message<O: Out, M: Msg>(o: &mut O, tag: u32, m: &M) {
        o.message(tag, m);
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
        let bytes = encode(
            "stratus",
            &[SpanGroup::Spans(vec![sample(Some("overloaded"))])],
        );
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
            // Lengths of two and three bytes, for the attribute and for the span around it.
            ("long", AttrValue::Str("x".repeat(300))),
            ("longer", AttrValue::Str("y".repeat(20_000))),
        ];
        let got = Official::decode(
            encode("svc", &[SpanGroup::Spans(vec![sample(None), plain])]).as_slice(),
        )
        .unwrap();
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
                ("longer", Some(Value::StringValue("y".repeat(20_000)))),
            ]
        );
    }

    fn served(cold: bool) -> ServedRequest {
        let t = 1_700_000_000_000_000_000u64;
        ServedRequest {
            trace_id: [3; 16],
            span_id: [4; 8],
            parent_span_id: None,
            trace_state: String::new(),
            function: "hello".into(),
            version: 12,
            instance: "hello-v12-a".into(),
            request_id: "req-1".into(),
            method: "POST".into(),
            path: "/fn/hello/x".into(),
            status: 503,
            bytes_out: 42,
            error_type: Some("overloaded"),
            error: Some("overloaded".into()),
            start: t,
            routed: t + 1_000,
            queue: Some((t + 1_000, t + 9_000)),
            init: cold.then_some(5_000),
            invoke: Some((t + 9_500, [5; 8])),
            end: t + 20_000,
        }
    }

    #[test]
    fn a_served_request_is_laid_out_as_its_spans() {
        let groups = [
            SpanGroup::Served(Box::new(served(true))),
            SpanGroup::Served(Box::new(served(false))),
        ];
        assert_eq!((groups[0].len(), groups[1].len()), (5, 4));
        let got = Official::decode(encode("svc", &groups).as_slice()).unwrap();
        let spans = &got.resource_spans[0].scope_spans[0].spans;
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "POST hello",
                "route",
                "queue",
                "cold_start",
                "invoke hello",
                "POST hello",
                "route",
                "queue",
                "invoke hello"
            ]
        );
        let (server, queue, cold, invoke) = (&spans[0], &spans[2], &spans[3], &spans[4]);
        assert!(server.parent_span_id.is_empty(), "a root span");
        assert_eq!(server.span_id, vec![4; 8]);
        assert_eq!(
            server.end_time_unix_nano - server.start_time_unix_nano,
            20_000
        );
        for child in [&spans[1], queue, invoke] {
            assert_eq!(child.parent_span_id, server.span_id);
            assert_eq!(child.trace_id, vec![3; 16]);
        }
        assert_eq!(
            cold.parent_span_id, queue.span_id,
            "the cold start is inside the wait"
        );
        assert_eq!(
            (cold.start_time_unix_nano, cold.end_time_unix_nano),
            (queue.end_time_unix_nano - 5_000, queue.end_time_unix_nano)
        );
        assert_eq!(invoke.span_id, vec![5; 8], "the id the function was given");
        assert_eq!(invoke.kind, 3, "SPAN_KIND_CLIENT");
        let status = server.status.as_ref().unwrap();
        assert_eq!((status.code, status.message.as_str()), (2, "overloaded"));
        let attr = |s: &opentelemetry_proto::tonic::trace::v1::Span, k: &str| {
            s.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.as_ref()?.value.clone())
        };
        assert_eq!(
            attr(server, "faas.version"),
            Some(Value::StringValue("12".into()))
        );
        assert_eq!(attr(server, "faas.coldstart"), Some(Value::BoolValue(true)));
        assert_eq!(
            attr(&spans[5], "faas.coldstart"),
            Some(Value::BoolValue(false))
        );
        assert_eq!(
            attr(server, "error.type"),
            Some(Value::StringValue("overloaded".into()))
        );
        assert_eq!(
            attr(server, "http.response.status_code"),
            Some(Value::IntValue(503))
        );
        assert_eq!(
            attr(server, "url.path"),
            Some(Value::StringValue("/fn/hello/x".into()))
        );
        assert_eq!(
            attr(invoke, "faas.instance"),
            Some(Value::StringValue("hello-v12-a".into()))
        );
        let mut ok = served(false);
        (ok.error_type, ok.error, ok.status) = (None, None, 200);
        let got =
            Official::decode(encode("svc", &[SpanGroup::Served(Box::new(ok))]).as_slice()).unwrap();
        let server = &got.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(server.status.as_ref().unwrap().code, 0, "UNSET");
        assert!(attr(server, "error.type").is_none());
        let mut buf = [0u8; 10];
        assert_eq!(
            [0, 7, 10, u32::MAX].map(|v| decimal(v, &mut buf).to_string()),
            ["0", "7", "10", "4294967295"]
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
