//! Capture of sampled requests for replay (the manifest's `[capture]`). The gateway copies the
//! first `max_body` bytes of each body as they stream past (never holding a frame back: the
//! request's in `Limited`, the response's in `Finished`), and
//! when the response ends it redacts the copy and hands it to the request sink, which queues it
//! like a request record. Redaction happens here, before the store, so a credential is never
//! written anywhere.

use std::sync::{Arc, Mutex};

use http::HeaderMap;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde_json::Value;
use stratus_core::CaptureSpec;
use stratus_store::{CaptureRecord, CapturedBody, CapturedRequest, CapturedResponse};

/// The first `limit` bytes of a body, and how long the whole was.
#[derive(Debug, Default)]
pub(crate) struct BodyCopy {
    bytes: Vec<u8>,
    size: u64,
    limit: usize,
}

impl BodyCopy {
    fn new(limit: u64) -> Self {
        Self {
            bytes: Vec::new(),
            size: 0,
            limit: limit as usize,
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        self.size += data.len() as u64;
        let room = self.limit.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// A capture in progress: the request as it arrived, and the response once it starts.
pub(crate) struct Capture {
    spec: CaptureSpec,
    method: String,
    uri: String,
    forward_uri: String,
    headers: Vec<(String, String)>,
    request_body: Arc<Mutex<BodyCopy>>,
    response: Option<(u16, Vec<(String, String)>)>,
    response_body: BodyCopy,
}

pub(crate) fn header_pairs(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

impl Capture {
    pub(crate) fn start(
        spec: &CaptureSpec,
        method: &str,
        uri: String,
        forward_uri: String,
        headers: &HeaderMap,
    ) -> Self {
        Self {
            spec: spec.clone(),
            method: method.to_string(),
            uri,
            forward_uri,
            headers: header_pairs(headers),
            request_body: Arc::new(Mutex::new(BodyCopy::new(spec.max_body_bytes))),
            response: None,
            response_body: BodyCopy::new(spec.max_body_bytes),
        }
    }

    /// Where the request body's first bytes go as the function reads them.
    pub(crate) fn request_copy(&self) -> Arc<Mutex<BodyCopy>> {
        self.request_body.clone()
    }

    pub(crate) fn respond(&mut self, status: u16, headers: &HeaderMap) {
        self.response = Some((status, header_pairs(headers)));
    }

    pub(crate) fn response_data(&mut self, data: &[u8]) {
        self.response_body.push(data);
    }

    /// The redacted record.
    pub(crate) fn finish(
        self,
        request_id: &str,
        function: &str,
        version: u32,
        at_ms: i64,
    ) -> CaptureRecord {
        let spec = &self.spec;
        let request_body = std::mem::take(&mut *self.request_body.lock().expect("not poisoned"));
        let request = CapturedRequest {
            method: self.method,
            uri: redact_uri(spec, &self.uri),
            forward_uri: redact_uri(spec, &self.forward_uri),
            body: redact_body(spec, &self.headers, request_body),
            headers: redact_headers(spec, self.headers),
        };
        let response_body = self.response_body;
        let response = self.response.map(|(status, headers)| CapturedResponse {
            status,
            body: redact_body(spec, &headers, response_body),
            headers: redact_headers(spec, headers),
        });
        CaptureRecord {
            request_id: request_id.to_string(),
            function: function.to_string(),
            version,
            at_ms,
            request,
            response,
        }
    }
}

fn redact_headers(spec: &CaptureSpec, headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .map(|(k, v)| {
            if spec.redacts_header(&k) {
                (k, CaptureSpec::REDACTED.to_string())
            } else {
                (k, v)
            }
        })
        .collect()
}

/// What a redacted query or form value becomes: `[REDACTED]`, percent-encoded.
const QUERY_VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'&')
    .add(b'+')
    .add(b'=')
    .add(b'[')
    .add(b']');

fn redacts_field(spec: &CaptureSpec, name: &str) -> bool {
    spec.redact_fields.iter().any(|f| f == name)
}

/// `a=1&password=x` with `password` redacted; `None` when nothing had to change.
fn redact_pairs(spec: &CaptureSpec, pairs: &str) -> Option<String> {
    let mut changed = false;
    let out: Vec<String> = pairs
        .split('&')
        .map(|pair| {
            let (k, _) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode_str(&k.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned();
            if redacts_field(spec, &name) {
                changed = true;
                format!(
                    "{k}={}",
                    utf8_percent_encode(CaptureSpec::REDACTED, QUERY_VALUE)
                )
            } else {
                pair.to_string()
            }
        })
        .collect();
    changed.then(|| out.join("&"))
}

fn redact_uri(spec: &CaptureSpec, uri: &str) -> String {
    if spec.redact_fields.is_empty() {
        return uri.to_string();
    }
    match uri.split_once('?') {
        Some((path, query)) => match redact_pairs(spec, query) {
            Some(q) => format!("{path}?{q}"),
            None => uri.to_string(),
        },
        None => uri.to_string(),
    }
}

/// Replaces the value of every key named in `redact_fields`, at any depth.
fn redact_json(spec: &CaptureSpec, v: &mut Value) -> bool {
    match v {
        Value::Object(map) => {
            let mut changed = false;
            for (k, val) in map.iter_mut() {
                if redacts_field(spec, k) {
                    *val = Value::String(CaptureSpec::REDACTED.to_string());
                    changed = true;
                } else {
                    changed |= redact_json(spec, val);
                }
            }
            changed
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, i| redact_json(spec, i) | changed),
        _ => false,
    }
}

fn content_type(headers: &[(String, String)]) -> String {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.to_ascii_lowercase())
        .unwrap_or_default()
}

/// The body as it is kept: fields redacted in JSON and form bodies. A body that must be
/// redacted but cannot be read whole (cut at `max_body`, or not valid JSON) is not kept at all,
/// because a cut field could be a secret.
fn redact_body(spec: &CaptureSpec, headers: &[(String, String)], copy: BodyCopy) -> CapturedBody {
    let truncated = copy.size > copy.bytes.len() as u64;
    let mut body = CapturedBody {
        bytes: copy.bytes,
        size: copy.size,
        truncated,
        dropped: None,
    };
    if spec.redact_fields.is_empty() || body.bytes.is_empty() {
        return body;
    }
    let ct = content_type(headers);
    let drop = |body: &mut CapturedBody, why: String| {
        body.bytes.clear();
        body.dropped = Some(why);
    };
    if ct.contains("json") {
        if truncated {
            drop(
                &mut body,
                format!(
                    "a JSON body cut at {} bytes cannot be redacted",
                    spec.max_body_bytes
                ),
            );
            return body;
        }
        match serde_json::from_slice::<Value>(&body.bytes) {
            Ok(mut v) => {
                if redact_json(spec, &mut v) {
                    body.bytes = serde_json::to_vec(&v).expect("a JSON value serializes");
                }
            }
            Err(e) => drop(
                &mut body,
                format!("the body is not valid JSON ({e}), so it cannot be redacted"),
            ),
        }
    } else if ct.starts_with("application/x-www-form-urlencoded") {
        if truncated {
            drop(
                &mut body,
                format!(
                    "a form body cut at {} bytes cannot be redacted",
                    spec.max_body_bytes
                ),
            );
            return body;
        }
        let text = String::from_utf8_lossy(&body.bytes).into_owned();
        if let Some(r) = redact_pairs(spec, &text) {
            body.bytes = r.into_bytes();
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(fields: &[&str]) -> CaptureSpec {
        CaptureSpec {
            sample_rate: 1.0,
            max_body_bytes: 32,
            redact_headers: vec!["x-api-key".into()],
            redact_fields: fields.iter().map(|f| f.to_string()).collect(),
        }
    }

    fn copy_of(data: &[u8], limit: u64) -> BodyCopy {
        let mut c = BodyCopy::new(limit);
        for chunk in data.chunks(5) {
            c.push(chunk);
        }
        c
    }

    fn json_headers() -> Vec<(String, String)> {
        vec![(
            "Content-Type".into(),
            "application/json; charset=utf-8".into(),
        )]
    }

    #[test]
    fn bodies_are_cut_at_the_limit_and_the_size_kept() {
        let c = copy_of(b"0123456789abcdef", 10);
        assert_eq!(c.bytes, b"0123456789");
        assert_eq!(c.size, 16);
        let b = redact_body(&spec(&[]), &[], c);
        assert!(b.truncated);
        assert_eq!(b.bytes, b"0123456789");
    }

    #[test]
    fn credentials_and_configured_headers_are_redacted() {
        let h = redact_headers(
            &spec(&[]),
            vec![
                ("authorization".into(), "Bearer s3cret".into()),
                ("Cookie".into(), "sid=1".into()),
                ("x-api-key".into(), "k".into()),
                ("x-kept".into(), "v".into()),
            ],
        );
        let values: Vec<&str> = h.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, ["[REDACTED]", "[REDACTED]", "[REDACTED]", "v"]);
    }

    #[test]
    fn json_fields_are_redacted_at_any_depth() {
        let body = br#"{"user":"a","password":"p","cards":[{"number":"4111","cvv":1}]}"#;
        let b = redact_body(
            &CaptureSpec {
                max_body_bytes: 1024,
                ..spec(&["password", "number"])
            },
            &json_headers(),
            copy_of(body, 1024),
        );
        let v: Value = serde_json::from_slice(&b.bytes).unwrap();
        assert_eq!(v["password"], "[REDACTED]");
        assert_eq!(v["cards"][0]["number"], "[REDACTED]");
        assert_eq!(v["cards"][0]["cvv"], 1);
        assert_eq!(v["user"], "a");
        assert!(!b.truncated && b.dropped.is_none());
    }

    #[test]
    fn json_without_redacted_fields_keeps_its_bytes() {
        let body = b"{ \"a\" :  1 }";
        let b = redact_body(&spec(&["password"]), &json_headers(), copy_of(body, 1024));
        assert_eq!(b.bytes, body);
    }

    #[test]
    fn a_body_that_cannot_be_redacted_is_not_kept() {
        let cut = br#"{"padding":"xxxxxxxxxxxxxxxxxxxxxxx","password":"p"}"#;
        let b = redact_body(&spec(&["password"]), &json_headers(), copy_of(cut, 32));
        assert!(b.bytes.is_empty() && b.truncated);
        assert!(b.dropped.unwrap().contains("cut at 32 bytes"));
        let bad = redact_body(&spec(&["password"]), &json_headers(), copy_of(b"{nope", 32));
        assert!(bad.bytes.is_empty());
        assert!(bad.dropped.unwrap().contains("not valid JSON"));
        // Without fields to redact, nothing needs parsing.
        let kept = redact_body(&spec(&[]), &json_headers(), copy_of(b"{nope", 32));
        assert_eq!(kept.bytes, b"{nope");
    }

    #[test]
    fn query_and_form_fields_are_redacted() {
        let s = spec(&["token", "pass word"]);
        assert_eq!(
            redact_uri(&s, "/a?x=1&token=abc&pass+word=z&t=2"),
            "/a?x=1&token=%5BREDACTED%5D&pass+word=%5BREDACTED%5D&t=2"
        );
        assert_eq!(redact_uri(&s, "/a?x=1"), "/a?x=1");
        assert_eq!(redact_uri(&s, "/a"), "/a");
        let form = vec![(
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        )];
        let b = redact_body(&s, &form, copy_of(b"user=a&token=t0k", 32));
        assert_eq!(b.bytes, b"user=a&token=%5BREDACTED%5D");
    }
}
