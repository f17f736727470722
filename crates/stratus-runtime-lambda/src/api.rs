//! The Lambda Runtime API (`2018-06-01`) for one instance, on its own loopback port: the
//! bootstrap long-polls `invocation/next`, posts `invocation/{id}/response` or `/error`, or
//! `init/error` if it cannot load the handler. A port per instance (rather than a path prefix on a
//! shared port) is what lets the official clients work unchanged: they take
//! `AWS_LAMBDA_RUNTIME_API` as `host:port`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

/// Largest response or error body a bootstrap may post (Lambda's synchronous limit is 6 MB; ours
/// is the gateway's default body limit).
const MAX_REPLY: usize = 32 * 1024 * 1024;

/// One event handed to the bootstrap.
pub struct Invocation {
    pub id: String,
    pub payload: Bytes,
    pub deadline_ms: i64,
    pub function_arn: String,
    pub trace_id: Option<String>,
    pub client_context: Option<String>,
    pub cognito_identity: Option<String>,
    pub reply: oneshot::Sender<Reply>,
}

#[derive(Debug)]
pub enum Reply {
    Response(Bytes),
    Error {
        type_header: Option<String>,
        body: Bytes,
    },
}

/// How the bootstrap's start went.
#[derive(Debug, Clone, PartialEq)]
pub enum StartState {
    Starting,
    /// It asked for its first invocation: the handler is loaded.
    Ready,
    /// It reported `init/error`, with the body it sent.
    InitFailed {
        type_header: Option<String>,
        body: Bytes,
    },
}

struct Shared {
    queue: tokio::sync::Mutex<mpsc::Receiver<Invocation>>,
    inflight: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
    start: watch::Sender<StartState>,
    /// The request id in flight (or last in flight), for tagging output lines.
    current: Arc<Mutex<Option<String>>>,
}

/// A running Runtime API endpoint. Dropping it stops the listener.
pub struct RuntimeApi {
    pub addr: std::net::SocketAddr,
    pub start: watch::Receiver<StartState>,
    pub current: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid response")
}

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl RuntimeApi {
    /// Binds a fresh loopback port. Invocations sent on the returned sender are handed out by
    /// `next`, one at a time.
    pub async fn start() -> std::io::Result<(Self, mpsc::Sender<Invocation>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(16);
        let (start_tx, start_rx) = watch::channel(StartState::Starting);
        let current = Arc::new(Mutex::new(None));
        let shared = Arc::new(Shared {
            queue: tokio::sync::Mutex::new(rx),
            inflight: Mutex::new(HashMap::new()),
            start: start_tx,
            current: current.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(route(&shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok((
            Self {
                addr,
                start: start_rx,
                current,
                task,
            },
            tx,
        ))
    }
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let Some(rest) = path.strip_prefix("/2018-06-01/runtime/") else {
        return text(
            StatusCode::NOT_FOUND,
            r#"{"errorMessage":"unknown path","errorType":"InvalidRequest"}"#,
        );
    };
    match (req.method(), rest) {
        (&Method::GET, "invocation/next") => next(shared).await,
        (&Method::POST, "init/error") => {
            let type_header = header(&req, "lambda-runtime-function-error-type");
            let body = read(req).await;
            shared
                .start
                .send_replace(StartState::InitFailed { type_header, body });
            text(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
        }
        (&Method::POST, r) => {
            let Some((id, kind)) = r
                .strip_prefix("invocation/")
                .and_then(|r| r.rsplit_once('/'))
                .map(|(i, k)| (i.to_string(), k.to_string()))
            else {
                return text(
                    StatusCode::NOT_FOUND,
                    r#"{"errorMessage":"unknown path","errorType":"InvalidRequest"}"#,
                );
            };
            let type_header = header(&req, "lambda-runtime-function-error-type");
            let reply = match kind.as_str() {
                "response" => Reply::Response(read(req).await),
                "error" => Reply::Error {
                    type_header,
                    body: read(req).await,
                },
                _ => {
                    return text(
                        StatusCode::NOT_FOUND,
                        r#"{"errorMessage":"unknown path","errorType":"InvalidRequest"}"#,
                    );
                }
            };
            let waiter = shared
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            // `current` keeps this id until the next event is handed out: output is read from
            // the pipe asynchronously and may arrive after the response.
            match waiter {
                Some(w) => {
                    let _ = w.send(reply);
                    text(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
                }
                None => text(
                    StatusCode::BAD_REQUEST,
                    r#"{"errorMessage":"no invocation in flight with this request id","errorType":"InvalidRequestID"}"#,
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            r#"{"errorMessage":"unknown path","errorType":"InvalidRequest"}"#,
        ),
    }
}

async fn read(req: Request<Incoming>) -> Bytes {
    match Limited::new(req.into_body(), MAX_REPLY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::from_static(br#"{"errorType":"Runtime.ResponseTooLarge","errorMessage":"the response was larger than the limit"}"#),
    }
}

async fn next(shared: &Shared) -> Response<Full<Bytes>> {
    shared.start.send_if_modified(|s| {
        let first = *s == StartState::Starting;
        if first {
            *s = StartState::Ready;
        }
        first
    });
    // Only one poller at a time gets an event; concurrency is one per instance.
    let inv = {
        let mut q = shared.queue.lock().await;
        match q.recv().await {
            Some(inv) => inv,
            None => {
                return text(
                    StatusCode::GONE,
                    r#"{"errorMessage":"the instance is stopping","errorType":"Runtime.Stopping"}"#,
                );
            }
        }
    };
    shared
        .inflight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(inv.id.clone(), inv.reply);
    *shared.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(inv.id.clone());
    let mut b = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("lambda-runtime-aws-request-id", &inv.id)
        .header("lambda-runtime-deadline-ms", inv.deadline_ms.to_string())
        .header("lambda-runtime-invoked-function-arn", &inv.function_arn);
    if let Some(t) = &inv.trace_id {
        b = b.header("lambda-runtime-trace-id", t);
    }
    if let Some(c) = &inv.client_context {
        b = b.header("lambda-runtime-client-context", c);
    }
    if let Some(c) = &inv.cognito_identity {
        b = b.header("lambda-runtime-cognito-identity", c);
    }
    b.body(Full::new(inv.payload)).unwrap_or_else(|_| {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"errorMessage":"bad invocation headers","errorType":"Runtime.Internal"}"#,
        )
    })
}
