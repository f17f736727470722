//! What the gateway tells telemetry about each request, built from timings it takes anyway:
//! the counters (at response headers), and the request record and trace spans (when the
//! response body ends or the client goes away). Nothing here waits: the sinks queue with
//! `try_send` and count what they drop.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use stratus_runtime::{Body, BoxError, RequestSink};
use stratus_store::{RequestRecord, Trigger, VersionRecord};
use stratus_telemetry::trace::{ServedRequest, Tracer};

use crate::capture::Capture;
use stratus_telemetry::context::TraceContext;

/// The request's identity and its timeline through the gateway's stages.
pub(crate) struct Timeline {
    pub request_id: String,
    /// The gateway's own span (its id is the server span's).
    pub trace: TraceContext,
    /// The caller's span, when it sent a `traceparent`.
    pub parent: Option<[u8; 8]>,
    /// The span the function sees as its parent (`traceparent` sent upstream).
    pub invoke_span: [u8; 8],
    pub trace_state: String,
    pub method: String,
    pub path: String,
    pub wall: SystemTime,
    pub started: Instant,
    pub routed: Option<Instant>,
    /// The wait for a slot, when the request queued for one (a request that found a slot free
    /// has none: no queue span, a queue time of 0 in its record).
    pub queue: Option<(Instant, Instant)>,
    pub init: Option<Duration>,
    pub sent: Option<Instant>,
    pub instance: String,
    /// The platform's error code, when the platform answered.
    pub error: Option<&'static str>,
    pub bytes_in: Arc<AtomicU64>,
    /// The request being captured for replay, when the function captures and this one was
    /// sampled.
    pub capture: Option<Box<Capture>>,
}

/// Where the gateway's request records and spans go.
#[derive(Clone)]
pub struct Observers {
    pub records: Option<Arc<dyn RequestSink>>,
    pub tracer: Option<Arc<Tracer>>,
    /// The share of new traces (requests without a `traceparent`) that are sampled, decided
    /// from the trace id like OTel's `traceidratio`; a caller's decision is always kept.
    pub root_sample_ratio: f64,
}

impl Default for Observers {
    fn default() -> Self {
        Self {
            records: None,
            tracer: None,
            root_sample_ratio: 1.0,
        }
    }
}

/// `traceidratio`: sampled when the trace id's low 8 bytes fall under the ratio.
pub(crate) fn sampled(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
    (low as f64) < ratio.max(0.0) * u64::MAX as f64
}

impl Observers {
    pub(crate) fn any(&self) -> bool {
        self.records.is_some() || self.tracer.is_some()
    }
}

/// A response body that reports the finished request when it ends or is dropped.
pub(crate) struct Finished {
    pub inner: Body,
    pub report: Option<Report>,
    pub bytes_out: u64,
    pub ended: bool,
}

pub(crate) struct Report {
    pub observers: Observers,
    pub timeline: Timeline,
    pub version: Arc<VersionRecord>,
    pub status: u16,
}

impl HttpBody for Finished {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.bytes_out += d.len() as u64;
                    if let Some(c) = self
                        .report
                        .as_mut()
                        .and_then(|r| r.timeline.capture.as_mut())
                    {
                        c.response_data(d);
                    }
                }
            }
            Poll::Ready(None) => {
                self.ended = true;
                self.finish();
            }
            _ => {}
        }
        poll
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        self.ended |= self.inner.is_end_stream();
        self.finish();
    }
}

impl Finished {
    fn finish(&mut self) {
        if let Some(r) = self.report.take() {
            r.emit(Instant::now(), self.bytes_out, self.ended);
        }
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

impl Report {
    pub(crate) fn emit(mut self, end: Instant, bytes_out: u64, ended: bool) {
        let capture = self.timeline.capture.take();
        let t = &self.timeline;
        let start_ms = (nanos(t.wall) / 1_000_000) as i64;
        if let (Some(sink), Some(c)) = (&self.observers.records, capture) {
            sink.capture(c.finish(
                &t.request_id,
                self.version.function.as_str(),
                self.version.number.0,
                start_ms,
            ));
        }
        let error = match t.error {
            Some(code) => Some(code.to_string()),
            None if !ended => Some("client_closed".to_string()),
            None if self.status >= 500 => Some("function_error".to_string()),
            None => None,
        };
        let queue_wait = t.queue.map(|(a, b)| b - a).unwrap_or_default();
        let traced = self.observers.tracer.is_some() && t.trace.flags & 1 == 1;
        // The server span fails with the record's error when the platform or the function did.
        let span_error = error
            .as_ref()
            .filter(|_| traced && (self.status >= 500 || t.error.is_some()))
            .cloned();
        if let Some(sink) = &self.observers.records {
            sink.record(RequestRecord {
                id: 0,
                request_id: t.request_id.clone(),
                trace_id: t.trace.trace_id_hex(),
                function: self.version.function.to_string(),
                version: self.version.number.0,
                instance: t.instance.clone(),
                trigger: Trigger::Http,
                method: t.method.clone(),
                path: t.path.clone(),
                start_ms,
                duration_us: us(end - t.started),
                queue_us: us(queue_wait),
                init_us: t.init.map(us),
                status: self.status,
                error,
                bytes_in: t.bytes_in.load(Ordering::Relaxed),
                bytes_out,
            });
        }
        if traced && let Some(tracer) = self.observers.tracer.clone() {
            let served = self.served(end, bytes_out, span_error);
            tracer.submit_served(served);
        }
    }

    /// The request as its spans will show it: the timeline moves over (the record took
    /// copies), and the exporter lays out the server span and its children.
    fn served(self, end: Instant, bytes_out: u64, error: Option<String>) -> Box<ServedRequest> {
        let t = self.timeline;
        let wall = nanos(t.wall);
        let at = |i: Instant| wall + (i - t.started).as_nanos() as u64;
        Box::new(ServedRequest {
            trace_id: t.trace.trace_id,
            span_id: t.trace.span_id,
            parent_span_id: t.parent,
            function: self.version.function.to_string(),
            version: self.version.number.0,
            status: self.status,
            bytes_out,
            error_type: t.error,
            error,
            start: at(t.started),
            routed: at(t.routed.unwrap_or(t.started)),
            queue: t.queue.map(|(a, b)| (at(a), at(b))),
            init: t.init.map(|d| d.as_nanos() as u64),
            invoke: t.sent.map(|sent| (at(sent), t.invoke_span)),
            end: at(end),
            trace_state: t.trace_state,
            instance: t.instance,
            request_id: t.request_id,
            method: t.method,
            path: t.path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_ratio_sampling_keeps_about_the_ratio() {
        let n = 10_000u64;
        let kept = (0..n)
            .filter(|i| {
                let mut id = [0u8; 16];
                id[8..].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
                sampled(&id, 0.1)
            })
            .count();
        assert!((900..1100).contains(&kept), "{kept}");
        assert!(sampled(&[0xff; 16], 1.0));
        assert!(!sampled(&[0xff; 16], 0.0));
    }
}
