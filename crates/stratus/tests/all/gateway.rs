//! The data plane as a client sees it.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::harness::{App, Server, http};

async fn echo_server() -> (Server, App) {
    let s = Server::start();
    let app = App::fixture("echo");
    app.edit_manifest("timeout = \"10s\"", "timeout = \"1s\"");
    s.deploy(&app.dir).ok();
    (s, app)
}

#[tokio::test]
async fn request_ids_trace_context_and_platform_errors() {
    let (s, _app) = echo_server().await;

    // A request id is created, returned, and passed to the function.
    let r = s.get("/fn/echo/").await;
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["headers"]["x-request-id"], rid.as_str());
    // A trace is started and passed on.
    let tp = body["headers"]["traceparent"].as_str().unwrap();
    assert_eq!(tp.len(), 55, "{tp}");
    assert!(tp.starts_with("00-"));

    // The caller's id and trace are kept (the trace continued with the gateway's span).
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = http()
        .get(format!("{}/fn/echo/", s.gw))
        .header("x-request-id", "my-id-1")
        .header("traceparent", incoming)
        .header("tracestate", "vendor=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "my-id-1");
    let body: serde_json::Value = r.json().await.unwrap();
    let tp = body["headers"]["traceparent"].as_str().unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert_ne!(tp, incoming, "the gateway adds its own span");
    assert_eq!(body["headers"]["tracestate"], "vendor=1");
    assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1");

    // Platform errors: JSON with a stable code, and a request id.
    for (path, status, code) in [
        ("/fn/nope/", 404, "function_not_found"),
        ("/fn/echo@beta/", 404, "alias_not_found"),
        ("/fn/echo@7/", 404, "version_not_found"),
        ("/fn/echo@Bad!/", 400, "bad_request"),
        ("/nothing/here", 404, "route_not_found"),
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status().as_u16(), status, "{path}");
        assert!(r.headers().contains_key("x-request-id"));
        assert_eq!(r.headers()["content-type"], "application/json");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{path}");
        assert!(body["error"]["message"].as_str().unwrap().len() > 5);
    }
}

#[tokio::test]
async fn timeout_is_504_and_body_limit_is_413() {
    let (s, _app) = echo_server().await;
    let started = Instant::now();
    let r = s.get("/fn/echo/slow?ms=3000").await;
    assert_eq!(r.status(), 504);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the timeout of 1s is enforced"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "timeout");

    // Declared too large: refused from the headers alone, before any of the body is read (a raw
    // socket that sends none of it; an HTTP client still writing would see the close instead).
    let addr = s.gw.trim_start_matches("http://").to_string();
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"POST /fn/echo/upload HTTP/1.1\r\nhost: x\r\ncontent-length: 2097152\r\n\r\n")
            .unwrap();
        let mut out = vec![0u8; 4096];
        let n = c.read(&mut out).unwrap();
        String::from_utf8_lossy(&out[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Streamed (chunked, no length) past the limit: refused too. A raw socket, because the
    // gateway answers and closes while the client is still sending, which HTTP clients report
    // as a write error instead of reading the answer.
    let addr = s.gw.trim_start_matches("http://").to_string();
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(
            b"POST /fn/echo/upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .unwrap();
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..40 {
            let ok = c
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .and_then(|_| c.write_all(&chunk))
                .and_then(|_| c.write_all(b"\r\n"));
            if ok.is_err() {
                break;
            }
        }
        let _ = c.write_all(b"0\r\n\r\n");
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    // Within the limit, a streamed body arrives whole.
    let chunks =
        futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![1u8; 64 * 1024])));
    let r = http()
        .post(format!("{}/fn/echo/upload", s.gw))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["bytes"], 8 * 64 * 1024);
}

#[tokio::test]
async fn responses_stream_without_buffering() {
    let (s, _app) = echo_server().await;
    let started = Instant::now();
    let r = s.get("/fn/echo/stream?ms=2000").await;
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert_eq!(&first[..], b"first\n");
    let mut rest = Vec::new();
    while let Some(c) = stream.next().await {
        rest.extend_from_slice(&c.unwrap());
    }
    assert_eq!(rest, b"second\n");
    assert!(
        first_at < Duration::from_millis(600),
        "first chunk arrived after {first_at:?}: the body was buffered"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let (s, _app) = echo_server().await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = client
        .get(format!("{}/fn/echo/h2", s.gw))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["path"], "/h2");
}
