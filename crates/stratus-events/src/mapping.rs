//! Pure mappings: an invocation as a CloudEvents (HTTP binary mode) request, the record sent to
//! a destination, and an attempt's response as a result or an error.

use serde_json::{Value, json};
use stratus_runtime::{Body, DirectEvent, full_body};
use stratus_store::Invocation;
use stratus_telemetry::context::TraceContext;

use crate::retry::Condition;

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The trace an attempt of `inv` runs in, as (the `traceparent` sent to the function, its trace
/// id): the stored trace with a new span id, or, for an invocation nobody traced (a timer fire),
/// a trace named after the invocation, so all its attempts share one trace.
pub fn attempt_trace(inv: &Invocation) -> (String, String) {
    let parent = inv
        .traceparent
        .as_deref()
        .and_then(TraceContext::parse)
        .or_else(|| {
            // `inv-` and 32 hex digits: the invocation's uuid is its trace id.
            let id = inv.id.strip_prefix("inv-")?;
            TraceContext::parse(&format!("00-{id}-0000000000000001-01"))
        })
        .unwrap_or_else(TraceContext::new_root);
    let attempt = parent.child();
    (attempt.header(), attempt.trace_id_hex())
}

/// `POST /` with the payload as the body and the event's attributes as `ce-*` headers (and the
/// attempt's `traceparent`, CloudEvents' distributed tracing extension); marked [`DirectEvent`]
/// so handler runtimes pass the payload to the handler as the event.
pub fn cloud_event(inv: &Invocation, traceparent: &str) -> http::Request<Body> {
    let mut b = http::Request::post("/")
        .header("host", "localhost")
        .header("ce-specversion", "1.0")
        .header("ce-id", &inv.id)
        .header("ce-type", &inv.event_type)
        .header("ce-source", &inv.source)
        .header("ce-time", rfc3339(inv.created_at))
        .header("x-request-id", &inv.id)
        .header("traceparent", traceparent);
    if let Some(ct) = &inv.content_type {
        b = b.header("content-type", ct);
    }
    let mut req = b
        .body(full_body(inv.payload.clone()))
        .unwrap_or_else(|_| http::Request::new(full_body(inv.payload.clone())));
    req.extensions_mut()
        .insert(DirectEvent { id: inv.id.clone() });
    req
}

/// The payload as JSON for records: JSON as is, other text as a string.
pub fn payload_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(bytes)))
}

/// What a destination receives, in the shape of Lambda's destination records.
pub fn destination_record(
    inv: &Invocation,
    condition: Condition,
    response: Option<&str>,
    error: Option<&str>,
    now: i64,
) -> Value {
    let mut rec = json!({
        "version": "1.0",
        "timestamp": rfc3339(now),
        "requestContext": {
            "requestId": inv.id,
            "function": inv.function,
            "target": inv.target,
            "condition": condition.as_str(),
            "approximateInvokeCount": inv.attempts,
        },
        "requestPayload": payload_json(&inv.payload),
        "responseContext": { "errors": inv.errors.len() + usize::from(error.is_some()) },
    });
    if let Some(r) = response {
        rec["responsePayload"] = payload_json(r.as_bytes());
    }
    if let Some(e) = error {
        rec["responseContext"]["lastError"] = json!(e);
    }
    rec
}

/// Describes a failed attempt's response in one line: a handler's `errorType: errorMessage`, or
/// the status and the start of the body.
pub fn failure_text(status: u16, body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if let Some(t) = v.get("errorType").and_then(Value::as_str) {
        let msg = v.get("errorMessage").and_then(Value::as_str).unwrap_or("");
        return format!("{t}: {msg}");
    }
    if let Some(m) = v.pointer("/error/message").and_then(Value::as_str) {
        return format!("HTTP {status}: {m}");
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.chars().take(300).collect();
    format!("HTTP {status}: {}", text.trim())
}

#[cfg(test)]
mod tests {
    use stratus_store::InvocationState;

    use super::*;

    fn inv() -> Invocation {
        Invocation {
            id: "inv-1".into(),
            function: "f".into(),
            target: "latest".into(),
            webhook: None,
            payload: br#"{"a":1}"#.to_vec(),
            content_type: Some("application/json".into()),
            event_type: "stratus.timer".into(),
            source: "stratus/timer/f".into(),
            state: InvocationState::Running,
            attempts: 3,
            created_at: 1_700_000_000_000,
            updated_at: 0,
            next_at: 0,
            result: None,
            status: None,
            errors: vec![],
            owner: None,
            traceparent: None,
        }
    }

    #[test]
    fn invocations_are_binary_mode_cloud_events() {
        let r = cloud_event(
            &inv(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let h = |n: &str| r.headers()[n].to_str().unwrap().to_string();
        assert_eq!(r.method(), http::Method::POST);
        assert_eq!(h("ce-specversion"), "1.0");
        assert_eq!(h("ce-id"), "inv-1");
        assert_eq!(h("ce-type"), "stratus.timer");
        assert_eq!(h("ce-source"), "stratus/timer/f");
        assert_eq!(h("ce-time"), "2023-11-14T22:13:20.000Z");
        assert_eq!(h("content-type"), "application/json");
        assert_eq!(
            h("traceparent"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert!(r.extensions().get::<DirectEvent>().is_some());
    }

    #[test]
    fn attempts_continue_the_stored_trace_with_a_new_span() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let traced = Invocation {
            traceparent: Some(tp.into()),
            ..inv()
        };
        let (a, trace) = attempt_trace(&traced);
        let (b, _) = attempt_trace(&traced);
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(a.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && a.ends_with("-01"));
        assert_ne!(a, b, "each attempt is a span of its own");
        assert_ne!(&a[36..52], "00f067aa0ba902b7");
        assert_eq!(
            TraceContext::parse(&a).map(|t| t.header()).as_deref(),
            Some(a.as_str())
        );
        // Untraced: the invocation names its trace, the same for every attempt.
        let named = Invocation {
            id: "inv-0123456789abcdef0123456789abcdef".into(),
            ..inv()
        };
        assert_eq!(attempt_trace(&named).1, "0123456789abcdef0123456789abcdef");
        assert_eq!(attempt_trace(&named).1, attempt_trace(&named).1);
        assert_eq!(attempt_trace(&inv()).1.len(), 32);
    }

    #[test]
    fn records_and_failures() {
        let rec = destination_record(&inv(), Condition::RetriesExhausted, None, Some("E: x"), 0);
        assert_eq!(rec["requestContext"]["condition"], "RetriesExhausted");
        assert_eq!(rec["requestContext"]["approximateInvokeCount"], 3);
        assert_eq!(rec["requestPayload"], json!({"a": 1}));
        assert_eq!(rec["responseContext"]["lastError"], "E: x");
        let ok = destination_record(&inv(), Condition::Success, Some("\"hi\""), None, 0);
        assert_eq!(ok["responsePayload"], "hi");
        assert_eq!(
            failure_text(502, br#"{"errorType":"ValueError","errorMessage":"bad"}"#),
            "ValueError: bad"
        );
        assert_eq!(
            failure_text(503, br#"{"error":{"code":"overloaded","message":"busy"}}"#),
            "HTTP 503: busy"
        );
        assert_eq!(failure_text(500, b"oops\n"), "HTTP 500: oops");
    }
}
