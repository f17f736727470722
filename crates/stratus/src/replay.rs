//! `stratus replay`: re-sends a captured request (the manifest's `[capture]`) to any version of
//! its function, through the gateway, or to a local dev server, and shows the captured response
//! beside the new one.
//!
//! The request goes out as it was captured (method, the path and query the function received,
//! headers, body), except for what identifies the original (its request id and trace context,
//! which the replay gets new) and what describes a hop (host, length, `x-forwarded-*`).
//! Redacted values are sent as `[REDACTED]`; `--header` puts a real one back.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use stratus_store::{CaptureRecord, CapturedBody};

use crate::cli::ClientArgs;
use crate::client::{Client, Connection, InvalidInput, Unreachable};

pub const ENV_GATEWAY: &str = "STRATUS_GATEWAY";
/// Tells the function (and its logs) which request this one replays.
pub const REPLAY_OF: &str = "x-stratus-replay-of";

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The captured request's id (its `x-request-id`).
    pub request_id: String,
    /// Send it to this version (or alias) of the function; default: the version that served it.
    #[arg(long, conflicts_with = "local")]
    pub version: Option<String>,
    /// Send it to a local dev server instead (e.g. http://127.0.0.1:3000); the path and query
    /// the function received are appended.
    #[arg(long)]
    pub local: Option<String>,
    /// The gateway (data plane) to send it through.
    #[arg(long, env = ENV_GATEWAY, default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    /// A header to set on the replayed request, `name: value` (repeatable), e.g. a credential
    /// that was redacted in the capture.
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// How long to wait for the response.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Headers not replayed: the original's identity, and hop-by-hop or per-connection ones.
const NOT_REPLAYED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-prefix",
];

/// Response headers left out of the comparison: they differ on every response.
const NOT_COMPARED: &[&str] = &[
    "date",
    "x-request-id",
    "content-length",
    "connection",
    "keep-alive",
];

struct Replayed {
    target: String,
    url: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    request_id: Option<String>,
}

fn parse_header(h: &str) -> Result<(String, String)> {
    let (k, v) = h
        .split_once(':')
        .ok_or_else(|| InvalidInput(format!("--header {h:?}: write it as `name: value`")))?;
    let k = k.trim();
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(InvalidInput(format!("--header {h:?}: {k:?} is not a header name")).into());
    }
    Ok((k.to_ascii_lowercase(), v.trim().to_string()))
}

pub async fn run(args: ReplayArgs, c: &ClientArgs) -> Result<()> {
    let overrides = args
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>>>()?;
    if let Some(local) = &args.local
        && !(local.starts_with("http://") || local.starts_with("https://"))
    {
        return Err(InvalidInput(format!(
            "--local {local:?}: give a URL such as http://127.0.0.1:3000"
        ))
        .into());
    }
    let client = Client::new(Connection::resolve(c)?)?;
    let id = &args.request_id;
    let capture: CaptureRecord = serde_json::from_value(
        client
            .get(&format!(
                "/requests/{}/capture",
                utf8_percent_encode(id, NON_ALPHANUMERIC)
            ))
            .await?,
    )
    .context("the API answered with a capture this CLI cannot read")?;

    let (target, base) = match &args.local {
        Some(local) => {
            let local = local.trim_end_matches('/');
            (format!("local {local}"), local.to_string())
        }
        None => {
            let target = args
                .version
                .clone()
                .unwrap_or_else(|| capture.version.to_string());
            let gw = args.gateway.trim_end_matches('/');
            (
                format!("version {target}"),
                format!("{gw}/fn/{}@{target}", capture.function),
            )
        }
    };
    let req = &capture.request;
    let url = format!("{base}{}", req.forward_uri);
    let method = reqwest::Method::from_bytes(req.method.as_bytes())
        .with_context(|| format!("the captured method {:?} is not valid", req.method))?;
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in &req.headers {
        if NOT_REPLAYED.contains(&k.as_str()) || overrides.iter().any(|(o, _)| o == k) {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            reqwest::header::HeaderName::from_bytes(k.as_bytes()),
            reqwest::header::HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    for (k, v) in &overrides {
        let value = reqwest::header::HeaderValue::from_str(v).map_err(|_| {
            InvalidInput(format!(
                "--header {k}: the value is not a valid header value"
            ))
        })?;
        headers.insert(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("checked above"),
            value,
        );
    }
    headers.insert(
        REPLAY_OF,
        reqwest::header::HeaderValue::from_str(id)
            .unwrap_or(reqwest::header::HeaderValue::from_static("-")),
    );
    for warning in body_warnings("request", &req.body) {
        eprintln!("warning: {warning}; replaying what was kept");
    }

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(args.timeout)
        .build()
        .context("failed to build the HTTP client")?;
    let resp = http
        .request(method, &url)
        .headers(headers)
        .body(req.body.bytes.clone())
        .send()
        .await
        .map_err(|e| Unreachable(format!("replaying to {url} failed: {e}")))?;
    let status = resp.status().as_u16();
    let resp_headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("reading the replay's response from {url}"))?
        .to_vec();
    let replayed = Replayed {
        target,
        url,
        status,
        headers: resp_headers,
        body,
        request_id,
    };
    if c.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&as_json(&capture, &replayed))?
        );
    } else {
        print!("{}", side_by_side(&capture, &replayed, columns()));
    }
    Ok(())
}

fn body_warnings(what: &str, b: &CapturedBody) -> Vec<String> {
    let mut w = Vec::new();
    if let Some(why) = &b.dropped {
        w.push(format!(
            "the captured {what} body ({} bytes) was not kept: {why}",
            b.size
        ));
    } else if b.truncated {
        w.push(format!(
            "the captured {what} body was cut at {} of its {} bytes",
            b.bytes.len(),
            b.size
        ));
    }
    w
}

fn text_or_base64(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(t) => json!({ "text": t }),
        Err(_) => {
            use base64::Engine;
            json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) })
        }
    }
}

/// Whether the replay's body matches what was captured (only the captured part, when it was
/// cut).
fn same_body(captured: &CapturedBody, replayed: &[u8]) -> bool {
    if captured.dropped.is_some() {
        return false;
    }
    if captured.truncated {
        replayed.starts_with(&captured.bytes)
    } else {
        captured.bytes == replayed
    }
}

fn as_json(capture: &CaptureRecord, r: &Replayed) -> Value {
    let captured = capture.response.as_ref().map(|resp| {
        json!({
            "version": capture.version,
            "status": resp.status,
            "headers": resp.headers,
            "body": text_or_base64(&resp.body.bytes),
            "body_size": resp.body.size,
            "body_truncated": resp.body.truncated,
        })
    });
    json!({
        "request_id": capture.request_id,
        "function": capture.function,
        "request": {
            "method": capture.request.method,
            "uri": capture.request.forward_uri,
        },
        "captured": captured,
        "replay": {
            "target": r.target,
            "url": r.url,
            "request_id": r.request_id,
            "status": r.status,
            "headers": r.headers,
            "body": text_or_base64(&r.body),
        },
        "same_status": capture.response.as_ref().map(|c| c.status == r.status),
        "same_body": capture.response.as_ref().map(|c| same_body(&c.body, &r.body)),
    })
}

fn columns() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(120)
        .clamp(60, 400)
}

/// A body as lines to show: pretty JSON when it parses, else its text, else its size.
fn body_lines(bytes: &[u8]) -> Vec<String> {
    if bytes.is_empty() {
        return vec!["(empty)".into()];
    }
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return serde_json::to_string_pretty(&v)
            .expect("a JSON value serializes")
            .lines()
            .map(str::to_string)
            .collect();
    }
    match std::str::from_utf8(bytes) {
        Ok(t) => t.lines().map(str::to_string).collect(),
        Err(_) => vec![format!("({} bytes of binary data)", bytes.len())],
    }
}

fn cut(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        return s.to_string();
    }
    let mut out: String = s.chars().take(w.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Pairs equal lines of the two bodies (a longest common subsequence), so a line added or
/// removed on one side shows against a blank instead of shifting every row after it. Long
/// bodies are paired line by line.
fn align<'a>(a: &'a [String], b: &'a [String]) -> Vec<(Option<&'a str>, Option<&'a str>)> {
    const MAX: usize = 2000;
    if a.len() > MAX || b.len() > MAX {
        return (0..a.len().max(b.len()))
            .map(|i| (a.get(i).map(String::as_str), b.get(i).map(String::as_str)))
            .collect();
    }
    // lcs[i][j]: common lines of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // Walk the table: equal lines pair up; between them, the removed lines face the added ones.
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    let (mut gone, mut new): (Vec<&str>, Vec<&str>) = (vec![], vec![]);
    let flush = |out: &mut Vec<_>, gone: &mut Vec<&'a str>, new: &mut Vec<&'a str>| {
        for k in 0..gone.len().max(new.len()) {
            out.push((gone.get(k).copied(), new.get(k).copied()));
        }
        gone.clear();
        new.clear();
    };
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            flush(&mut out, &mut gone, &mut new);
            out.push((Some(a[i].as_str()), Some(b[j].as_str())));
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            gone.push(a[i].as_str());
            i += 1;
        } else {
            new.push(b[j].as_str());
            j += 1;
        }
    }
    flush(&mut out, &mut gone, &mut new);
    out
}

/// Two columns, the captured response on the left, the replay's on the right; a `≠` between
/// them marks each row that differs.
fn side_by_side(capture: &CaptureRecord, r: &Replayed, width: usize) -> String {
    let col = (width - 3) / 2;
    let mut out = String::new();
    let req = &capture.request;
    out.push_str(&format!(
        "replay of request {} ({} version {}): {} {}\n",
        capture.request_id, capture.function, capture.version, req.method, req.forward_uri
    ));
    out.push_str(&format!(
        "sent to {} as request {}\n\n",
        r.url,
        r.request_id.as_deref().unwrap_or("-")
    ));
    out.push_str(&format!(
        "{:<col$} │ {}\n",
        cut(&format!("CAPTURED (version {})", capture.version), col),
        cut(&format!("REPLAY ({})", r.target), col)
    ));
    let mut row = |l: &str, r: &str| {
        let mark = if l == r { '│' } else { '≠' };
        out.push_str(&format!("{:<col$} {mark} {}\n", cut(l, col), cut(r, col)));
    };
    let Some(c) = &capture.response else {
        row(
            "(no response was captured)",
            &format!("status {}", r.status),
        );
        return out;
    };
    row(
        &format!("status {}", c.status),
        &format!("status {}", r.status),
    );
    let mut names: Vec<&str> = c
        .headers
        .iter()
        .chain(&r.headers)
        .map(|(k, _)| k.as_str())
        .filter(|k| !NOT_COMPARED.contains(k))
        .collect();
    names.sort_unstable();
    names.dedup();
    let value = |h: &[(String, String)], name: &str| {
        let v: Vec<&str> = h
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect();
        if v.is_empty() {
            format!("{name}: -")
        } else {
            format!("{name}: {}", v.join(", "))
        }
    };
    for name in names {
        row(&value(&c.headers, name), &value(&r.headers, name));
    }
    row("", "");
    let left = body_lines(&c.body.bytes);
    let right = body_lines(&r.body);
    for (l, r) in align(&left, &right) {
        row(l.unwrap_or(""), r.unwrap_or(""));
    }
    out.push('\n');
    for w in body_warnings("response", &c.body) {
        out.push_str(&format!("note: {w}\n"));
    }
    let same_status = c.status == r.status;
    let same = same_body(&c.body, &r.body);
    out.push_str(&format!(
        "status: {} · body: {}\n",
        if same_status { "same" } else { "differs" },
        if same { "same" } else { "differs" }
    ));
    out
}

#[cfg(test)]
mod tests {
    use stratus_store::{CapturedRequest, CapturedResponse};

    use super::*;

    fn capture(status: u16, body: &[u8]) -> CaptureRecord {
        CaptureRecord {
            request_id: "r1".into(),
            function: "f".into(),
            version: 1,
            at_ms: 0,
            request: CapturedRequest {
                method: "GET".into(),
                uri: "/fn/f/x".into(),
                forward_uri: "/x".into(),
                headers: vec![],
                body: CapturedBody::default(),
            },
            response: Some(CapturedResponse {
                status,
                headers: vec![("content-type".into(), "application/json".into())],
                body: CapturedBody {
                    bytes: body.to_vec(),
                    size: body.len() as u64,
                    truncated: false,
                    dropped: None,
                },
            }),
        }
    }

    fn replayed(status: u16, body: &[u8]) -> Replayed {
        Replayed {
            target: "version 2".into(),
            url: "http://gw/fn/f@2/x".into(),
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_vec(),
            request_id: Some("r2".into()),
        }
    }

    #[test]
    fn differing_rows_are_marked() {
        let out = side_by_side(
            &capture(200, br#"{"a":1,"b":2}"#),
            &replayed(500, br#"{"a":1,"b":3}"#),
            80,
        );
        let line = |needle: &str| {
            out.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle} in\n{out}"))
                .to_string()
        };
        assert!(line("status 200").contains('≠'));
        assert!(line("content-type").contains('│'));
        assert!(line("\"a\": 1").contains('│'));
        assert!(line("\"b\": 2").contains('≠'));
        assert!(out.ends_with("status: differs · body: differs\n"), "{out}");
        let same = side_by_side(&capture(200, b"ok"), &replayed(200, b"ok"), 80);
        assert!(same.ends_with("status: same · body: same\n"), "{same}");
    }

    #[test]
    fn an_added_line_does_not_shift_the_rest() {
        let v = |s: &[&str]| s.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        let a = v(&["{", "a", "b", "c", "}"]);
        let b = v(&["{", "a", "new", "b", "c2", "}"]);
        assert_eq!(
            align(&a, &b),
            [
                (Some("{"), Some("{")),
                (Some("a"), Some("a")),
                (None, Some("new")),
                (Some("b"), Some("b")),
                (Some("c"), Some("c2")),
                (Some("}"), Some("}")),
            ]
        );
    }

    #[test]
    fn a_cut_capture_compares_its_prefix() {
        let cut = CapturedBody {
            bytes: b"abc".to_vec(),
            size: 6,
            truncated: true,
            dropped: None,
        };
        assert!(same_body(&cut, b"abcdef"));
        assert!(!same_body(&cut, b"abx"));
    }

    #[test]
    fn headers_parse_as_name_colon_value() {
        assert_eq!(
            parse_header("Authorization: Bearer x").unwrap(),
            ("authorization".into(), "Bearer x".into())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": v").is_err());
    }
}
