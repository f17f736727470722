//! The HTTP payload 2.0 mapping of Lambda function URLs and API Gateway HTTP APIs: a request
//! becomes an event, the handler's result becomes a response. Pure functions, so the mapping is
//! tested without a process.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::header::{COOKIE, HeaderName, HeaderValue, SET_COOKIE};
use serde_json::{Map, Value, json};

/// What the event says about where and when the request came in.
pub struct RequestInfo<'a> {
    pub request_id: &'a str,
    pub now_ms: i64,
}

/// Bodies of these types travel as text; anything else (or anything not UTF-8) as base64.
fn is_text(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return true };
    let ct = ct.to_ascii_lowercase();
    ct.starts_with("text/")
        || [
            "json",
            "xml",
            "javascript",
            "x-www-form-urlencoded",
            "yaml",
            "graphql",
        ]
        .iter()
        .any(|t| ct.contains(t))
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The request as a payload 2.0 event. Repeated headers and query parameters are joined with
/// commas and cookies get their own array, as API Gateway does.
pub fn http_event(parts: &http::request::Parts, body: &[u8], info: &RequestInfo<'_>) -> Value {
    let mut headers = Map::new();
    let mut cookies = Vec::new();
    for (name, value) in &parts.headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == COOKIE {
            cookies.extend(
                v.split(';')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty()),
            );
            continue;
        }
        match headers.get_mut(name.as_str()) {
            Some(Value::String(prev)) => {
                prev.push(',');
                prev.push_str(&v);
            }
            _ => {
                headers.insert(name.as_str().to_string(), Value::String(v));
            }
        }
    }
    let raw_query = parts.uri.query().unwrap_or("");
    let mut query = Map::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k), decode(v));
        match query.get_mut(&k) {
            Some(Value::String(prev)) => {
                prev.push(',');
                prev.push_str(&v);
            }
            _ => {
                query.insert(k, Value::String(v));
            }
        }
    }
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    // The gateway appends the peer to x-forwarded-for, so the last entry is who connected.
    let source_ip = header("x-forwarded-for")
        .and_then(|x| x.rsplit(',').next())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let domain = header("host").unwrap_or("localhost");
    let time = chrono::DateTime::from_timestamp_millis(info.now_ms)
        .unwrap_or_default()
        .format("%d/%b/%Y:%H:%M:%S +0000")
        .to_string();
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": parts.uri.path(),
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "stratus",
            "domainName": domain,
            "domainPrefix": domain.split('.').next().unwrap_or(domain),
            "http": {
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "protocol": format!("{:?}", parts.version),
                "sourceIp": source_ip,
                "userAgent": header("user-agent").unwrap_or(""),
            },
            "requestId": info.request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": time,
            "timeEpoch": info.now_ms,
        },
        "isBase64Encoded": false,
    });
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    if !query.is_empty() {
        event["queryStringParameters"] = Value::Object(query);
    }
    if !body.is_empty() {
        match std::str::from_utf8(body) {
            Ok(text) if is_text(header("content-type")) => event["body"] = json!(text),
            _ => {
                event["body"] = json!(B64.encode(body));
                event["isBase64Encoded"] = json!(true);
            }
        }
    }
    event
}

/// A response built from a handler's result.
#[derive(Debug)]
pub struct Mapped {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
}

fn header_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The handler's result (JSON text) as a response: `{statusCode, headers, multiValueHeaders,
/// cookies, body, isBase64Encoded}`, or any other JSON value as a 200 `application/json` body.
pub fn http_response(result: &[u8]) -> Result<Mapped, String> {
    let json_ct = || {
        (
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
    };
    let value: Value = serde_json::from_slice(result).map_err(|e| {
        format!(
            "the handler's response is not valid JSON ({e}); return an object or any JSON value"
        )
    })?;
    let Some(obj) = value.as_object().filter(|o| o.contains_key("statusCode")) else {
        return Ok(Mapped {
            status: 200,
            headers: vec![json_ct()],
            body: result.to_vec(),
        });
    };
    let status = obj["statusCode"]
        .as_u64()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| {
            format!(
                "the handler returned statusCode {}, which is not an HTTP status (100 to 599)",
                obj["statusCode"]
            )
        })? as u16;
    let mut headers = Vec::new();
    let mut push = |k: &str, v: &str| {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(k), HeaderValue::from_str(v)) {
            headers.push((n, v));
        }
    };
    if let Some(h) = obj.get("headers").and_then(Value::as_object) {
        for (k, v) in h {
            if let Some(v) = header_text(v) {
                push(k, &v);
            }
        }
    }
    if let Some(h) = obj.get("multiValueHeaders").and_then(Value::as_object) {
        for (k, vs) in h {
            for v in vs.as_array().into_iter().flatten().filter_map(header_text) {
                push(k, &v);
            }
        }
    }
    for c in obj
        .get("cookies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        push(SET_COOKIE.as_str(), c);
    }
    if !headers.iter().any(|(n, _)| n == http::header::CONTENT_TYPE) {
        headers.push(json_ct());
    }
    let body = match obj.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if obj.get("isBase64Encoded") == Some(&Value::Bool(true)) => {
            B64.decode(s).map_err(|e| {
                format!("the handler's body is marked isBase64Encoded but is not base64: {e}")
            })?
        }
        Some(Value::String(s)) => s.clone().into_bytes(),
        // API Gateway would refuse a non-string body; sending its JSON is kinder and unambiguous.
        Some(other) => other.to_string().into_bytes(),
    };
    Ok(Mapped {
        status,
        headers,
        body,
    })
}

/// A handler error as reported to `/response`'s sibling `/error`: type, message and stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    pub error_type: String,
    pub message: String,
    pub stack: Vec<String>,
}

/// Reads the error body of the Runtime API (`errorType`, `errorMessage`, and `stackTrace` as
/// the Python client sends it or `trace` as the Node one does), falling back to the
/// `Lambda-Runtime-Function-Error-Type` header and the raw text.
pub fn handler_error(type_header: Option<&str>, body: &[u8]) -> HandlerError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let stack = v
        .get("stackTrace")
        .or_else(|| v.get("trace"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|l| match l {
                    Value::String(s) => s.trim_end().to_string(),
                    // Python's client may send frames as [file, line, function, code].
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    HandlerError {
        error_type: text("errorType")
            .or_else(|| type_header.map(str::to_string))
            .unwrap_or_else(|| "Error".into()),
        message: text("errorMessage").unwrap_or_else(|| {
            if v.is_null() {
                String::from_utf8_lossy(body).into_owned()
            } else {
                String::new()
            }
        }),
        stack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::post(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn request_becomes_a_payload_2_event() {
        let p = parts(
            "/items/7?a=1&b=x%20y&a=2",
            &[
                ("host", "fn.example.com"),
                ("content-type", "application/json"),
                ("x-forwarded-for", "10.0.0.9, 127.0.0.1"),
                ("cookie", "s=1; t=2"),
                ("x-multi", "a"),
                ("x-multi", "b"),
            ],
        );
        let info = RequestInfo {
            request_id: "rid-1",
            now_ms: 1_700_000_000_000,
        };
        let e = http_event(&p, br#"{"k":1}"#, &info);
        assert_eq!(e["version"], "2.0");
        assert_eq!(e["rawPath"], "/items/7");
        assert_eq!(e["rawQueryString"], "a=1&b=x%20y&a=2");
        assert_eq!(e["queryStringParameters"], json!({"a": "1,2", "b": "x y"}));
        assert_eq!(e["cookies"], json!(["s=1", "t=2"]));
        assert_eq!(e["headers"]["x-multi"], "a,b");
        assert!(e["headers"].get("cookie").is_none());
        assert_eq!(e["requestContext"]["http"]["method"], "POST");
        assert_eq!(e["requestContext"]["http"]["path"], "/items/7");
        assert_eq!(e["requestContext"]["http"]["sourceIp"], "127.0.0.1");
        assert_eq!(e["requestContext"]["requestId"], "rid-1");
        assert_eq!(e["requestContext"]["time"], "14/Nov/2023:22:13:20 +0000");
        assert_eq!(e["body"], r#"{"k":1}"#);
        assert_eq!(e["isBase64Encoded"], false);
    }

    #[test]
    fn binary_bodies_are_base64_and_empty_ones_absent() {
        let info = RequestInfo {
            request_id: "r",
            now_ms: 0,
        };
        let p = parts("/", &[("content-type", "application/octet-stream")]);
        let e = http_event(&p, &[0xff, 0x00], &info);
        assert_eq!(
            (e["body"].as_str(), &e["isBase64Encoded"]),
            (Some("/wA="), &json!(true))
        );
        let e = http_event(&parts("/", &[]), b"", &info);
        assert!(e.get("body").is_none());
        assert!(e.get("queryStringParameters").is_none());
    }

    #[test]
    fn structured_results_become_responses() {
        let m = http_response(
            br#"{"statusCode": 201, "headers": {"x-a": "1", "x-n": 5}, "multiValueHeaders": {"x-m": ["p", "q"]},
                "cookies": ["a=1", "b=2"], "body": "aGk=", "isBase64Encoded": true}"#,
        )
        .unwrap();
        assert_eq!(m.status, 201);
        assert_eq!(m.body, b"hi");
        let get = |n: &str| -> Vec<&str> {
            m.headers
                .iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(get("x-a"), ["1"]);
        assert_eq!(get("x-n"), ["5"]);
        assert_eq!(get("x-m"), ["p", "q"]);
        assert_eq!(get("set-cookie"), ["a=1", "b=2"]);
        assert_eq!(get("content-type"), ["application/json"]);
    }

    #[test]
    fn other_values_are_200_json_and_bad_ones_say_why() {
        for v in [r#"{"ok": true}"#, "[1,2]", r#""text""#, "42", "null"] {
            let m = http_response(v.as_bytes()).unwrap();
            assert_eq!((m.status, m.body.as_slice()), (200, v.as_bytes()));
        }
        assert!(
            http_response(b"not json")
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(
            http_response(br#"{"statusCode": 99}"#)
                .unwrap_err()
                .contains("not an HTTP status")
        );
    }

    #[test]
    fn errors_from_either_client_shape() {
        let py = handler_error(
            Some("Unhandled"),
            br#"{"errorMessage": "bad", "errorType": "ValueError", "stackTrace": ["  File \"main.py\", line 3\n"]}"#,
        );
        assert_eq!(
            py,
            HandlerError {
                error_type: "ValueError".into(),
                message: "bad".into(),
                stack: vec!["  File \"main.py\", line 3".into()]
            }
        );
        let node = handler_error(None, br#"{"errorType": "TypeError", "errorMessage": "x", "trace": ["TypeError: x", "    at f"]}"#);
        assert_eq!(node.stack.len(), 2);
        let raw = handler_error(Some("Runtime.Crash"), b"oops");
        assert_eq!(
            (raw.error_type.as_str(), raw.message.as_str()),
            ("Runtime.Crash", "oops")
        );
    }
}
