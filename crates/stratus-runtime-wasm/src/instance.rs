//! A wasm "instance" as the scaler sees it: a loaded component that serves requests. Each
//! request gets a fresh `Store` and component instance (as `wasmtime serve` does), so requests
//! share nothing, a trap affects one request, and an idle function holds no guest memory.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::BodyExt;
use stratus_core::{ErrorCode, FunctionSpec, HostPattern, PlatformError};
use stratus_runtime::{Body, BoxError, Instance, InstanceHealth, LogSink, RuntimeError, full_body};
use stratus_store::LogStream;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

use crate::compile::Loaded;
use crate::engine::GuestHandle;
use crate::host::{Host, MemoryExceeded, MemoryLimit, Outbound};
use crate::output::{LogMeta, LogOutput};

/// How long past its deadline a guest blocked in the host (a sleep, a slow outbound call, where
/// no epoch check runs) is given before its task is dropped.
const BACKSTOP_GRACE: Duration = Duration::from_millis(100);

pub struct WasmInstance {
    id: String,
    engine: Engine,
    /// Where a guest that keeps computing is moved (see [`Offload`]); `None`: guests stay on
    /// the caller's runtime.
    guests: Option<GuestHandle>,
    loaded: Arc<Loaded>,
    report: Arc<Report>,
    env: Arc<Vec<(String, String)>>,
    allowed: Arc<Vec<HostPattern>>,
    health_tx: watch::Sender<InstanceHealth>,
}

/// Says what happened to a request: platform log lines and the caller's error.
struct Report {
    spec: Arc<FunctionSpec>,
    meta: Arc<LogMeta>,
    logs: Arc<dyn LogSink>,
}

/// The trap raised when a request runs past `limits.timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request ran past its timeout of {0:?} (limits.timeout)")]
struct DeadlineExceeded(Duration);

/// Why a request's guest did not finish normally.
enum Fault {
    Timeout,
    Memory(String),
    Overloaded(String),
    Trap {
        message: String,
        detail: Vec<String>,
        /// The response body had been dropped by the caller (a client that went away) when the
        /// guest trapped: its next write found the stream closed, and a guest that treats a
        /// failed write as fatal (Rust's `write_all(..).expect(..)`) traps on that.
        client_gone: bool,
    },
}

impl WasmInstance {
    pub fn new(
        id: String,
        engine: Engine,
        guests: Option<GuestHandle>,
        loaded: Arc<Loaded>,
        spec: Arc<FunctionSpec>,
        version: u32,
        logs: Arc<dyn LogSink>,
    ) -> Self {
        let mut env: Vec<(String, String)> = spec.env.clone().into_iter().collect();
        env.push(("STRATUS_FUNCTION".into(), spec.name.to_string()));
        env.push(("STRATUS_VERSION".into(), version.to_string()));
        env.push(("STRATUS_INSTANCE".into(), id.clone()));
        // Validated by the manifest; a pattern that no longer parses allows nothing.
        let allowed = spec
            .limits
            .allowed_outbound_hosts
            .iter()
            .filter_map(|h| HostPattern::parse(h).ok())
            .collect();
        let meta = Arc::new(LogMeta {
            function: spec.name.to_string(),
            version,
            instance: id.clone(),
            request_id: None,
        });
        Self {
            id,
            engine,
            guests,
            loaded,
            report: Arc::new(Report { spec, meta, logs }),
            env: Arc::new(env),
            allowed: Arc::new(allowed),
            health_tx: watch::channel(InstanceHealth::Running).0,
        }
    }

    /// The request's store. `busy` is set the first time the guest computes through an epoch
    /// tick.
    fn store(
        &self,
        deadline: Instant,
        request_id: Option<String>,
        busy: Arc<AtomicBool>,
    ) -> Store<Host> {
        let Report { spec, meta, logs } = &*self.report;
        // The request's output is its own: every line it writes carries its id.
        let meta = &Arc::new(LogMeta {
            request_id,
            ..(**meta).clone()
        });
        let mut wasi = WasiCtx::builder();
        wasi.envs(&self.env)
            .stdout(LogOutput::new(
                LogStream::Stdout,
                meta.clone(),
                logs.clone(),
            ))
            .stderr(LogOutput::new(
                LogStream::Stderr,
                meta.clone(),
                logs.clone(),
            ))
            // Outbound traffic goes through wasi:http and its allow-list, never raw sockets.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let max_bytes = spec
            .limits
            .memory_bytes
            .unwrap_or(stratus_core::Limits::WASM_MEMORY_BYTES) as usize;
        let host = Host {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limits: MemoryLimit {
                max_bytes,
                exceeded: None,
            },
            outbound: Outbound {
                allowed: self.allowed.clone(),
                meta: meta.clone(),
                logs: logs.clone(),
            },
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limits);
        // Every epoch tick the guest yields its thread (so a busy loop cannot starve the
        // gateway's other requests) and, past the deadline, traps.
        let timeout = spec.limits.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(wasmtime::Error::new(DeadlineExceeded(timeout)))
            } else {
                busy.store(true, Ordering::Relaxed);
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }
}

fn classify(err: wasmtime::Error, store: &Store<Host>) -> Fault {
    if err.downcast_ref::<DeadlineExceeded>().is_some() {
        return Fault::Timeout;
    }
    if let Some(m) = err.downcast_ref::<MemoryExceeded>() {
        return Fault::Memory(m.to_string());
    }
    if let Some(desired) = store.data().limits.exceeded {
        // The guest's allocator saw the failed grow first and trapped on its own.
        return Fault::Memory(
            MemoryExceeded {
                desired,
                limit: store.data().limits.max_bytes,
            }
            .to_string(),
        );
    }
    if err.is::<wasmtime::PoolConcurrencyLimitError>() {
        return Fault::Overloaded(err.to_string());
    }
    let message = err.root_cause().to_string();
    let detail = err
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|bt| bt.to_string().lines().map(str::to_string).collect())
        .unwrap_or_default();
    Fault::Trap {
        message,
        detail,
        client_gone: false,
    }
}

impl Report {
    fn line(&self, line: String) {
        self.logs.emit(self.meta.line(LogStream::Platform, line));
    }

    fn fault(&self, rid: &str, fault: &Fault) {
        let (_, message) = self.describe(fault);
        self.line(format!("request {rid} failed: {message}"));
        if let Fault::Trap { detail, .. } = fault {
            for frame in detail {
                self.line(format!("  {frame}"));
            }
        }
    }

    fn describe(&self, fault: &Fault) -> (ErrorCode, String) {
        let name = &self.spec.name;
        match fault {
            Fault::Timeout => (
                ErrorCode::Timeout,
                format!(
                    "`{name}` did not respond within its timeout of {:?}",
                    self.spec.limits.timeout
                ),
            ),
            Fault::Memory(m) => (ErrorCode::Internal, format!("`{name}` failed: {m}")),
            Fault::Overloaded(m) => (
                ErrorCode::Overloaded,
                format!("no wasm instance slot is free for `{name}` ({m})"),
            ),
            Fault::Trap {
                message,
                client_gone: false,
                ..
            } => (ErrorCode::Internal, format!("`{name}` trapped: {message}")),
            Fault::Trap {
                message,
                client_gone: true,
                ..
            } => (
                ErrorCode::Internal,
                format!(
                    "`{name}` trapped after the client went away (its response body was closed, so a write to it failed): {message}"
                ),
            ),
        }
    }
}

fn platform_response(code: ErrorCode, message: String) -> http::Response<Body> {
    let body = PlatformError::new(code, message).to_json().to_string();
    let mut resp = http::Response::new(full_body(body));
    *resp.status_mut() = http::StatusCode::from_u16(code.http_status())
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if code == ErrorCode::Overloaded {
        resp.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
    }
    resp
}

type GuestFuture = Pin<Box<dyn Future<Output = Result<(), Fault>> + Send>>;

/// A request's guest, run where it was spawned (the gateway's thread: no thread hop, no wake-up
/// of another thread, for the usual request that answers well within one epoch tick) until it
/// computes through an epoch tick; then it is moved to the guest threads, so a busy guest holds
/// a gateway thread for at most one tick and then delays only other guests.
struct Offload {
    guest: Option<GuestFuture>,
    /// Set by the store's epoch callback when the guest yields.
    busy: Arc<AtomicBool>,
    guests: GuestHandle,
    moved: Option<tokio::task::JoinHandle<Result<(), Fault>>>,
}

impl Future for Offload {
    type Output = Result<(), Fault>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            if let Some(moved) = &mut self.moved {
                return Pin::new(moved).poll(cx).map(|r| {
                    r.unwrap_or_else(|e| {
                        Err(Fault::Trap {
                            message: format!("the guest's task failed: {e}"),
                            detail: vec![],
                            client_gone: false,
                        })
                    })
                });
            }
            let guest = self.guest.as_mut().expect("polled after completion");
            match guest.as_mut().poll(cx) {
                Poll::Ready(r) => {
                    self.guest = None;
                    return Poll::Ready(r);
                }
                // Yielded at an epoch tick: it is computing, so it goes to the guest threads.
                Poll::Pending if self.busy.load(Ordering::Relaxed) => {
                    let guest = self.guest.take().expect("checked above");
                    self.guests.moved.fetch_add(1, Ordering::Relaxed);
                    self.moved = Some(self.guests.runtime.spawn(guest));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The guest's response body as the gateway reads it: notes when it is dropped before its end,
/// so a trap that follows is reported as what it is (the client went away), not a guest bug.
struct Watched {
    inner: Body,
    done: bool,
    gone: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.done = true;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if !self.done && !http_body::Body::is_end_stream(&self.inner) {
            self.gone.store(true, Ordering::Release);
        }
    }
}

#[async_trait]
impl Instance for WasmInstance {
    fn id(&self) -> &str {
        &self.id
    }

    async fn handle(&self, req: http::Request<Body>) -> Result<http::Response<Body>, RuntimeError> {
        let rid = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let request_id = rid.clone();
        let deadline = Instant::now() + self.report.spec.limits.timeout;
        let busy = Arc::new(AtomicBool::new(false));
        let mut store = self.store(deadline, (rid != "-").then(|| rid.clone()), busy.clone());
        let (mut parts, body) = req.into_parts();
        // wasi:http wants an authority; a request without a Host header still gets one.
        if !parts.headers.contains_key(http::header::HOST) {
            parts.headers.insert(
                http::header::HOST,
                http::HeaderValue::from_static("localhost"),
            );
        }
        // Streamed into the guest as it arrives; a body error (the gateway's size limit, a
        // client that went away) reaches the guest as a stream error.
        let body = body
            .map_err(|e: BoxError| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())));
        let req = http::Request::from_parts(parts, body);
        let (tx, rx) = oneshot::channel();
        let (wasi_req, out) = {
            let mut http = store.data_mut().http();
            let r = http.new_incoming_request(Scheme::Http, req);
            let o = http.new_response_outparam(tx);
            match (r, o) {
                (Ok(r), Ok(o)) => (r, o),
                (Err(e), _) | (_, Err(e)) => {
                    return Err(RuntimeError::Upstream(format!(
                        "bad request for the guest: {e:#}"
                    )));
                }
            }
        };
        let pre = self.loaded.pre.clone();
        let report = self.report.clone();
        let gone = Arc::new(AtomicBool::new(false));
        let client_gone = gone.clone();
        // The guest runs in its own task: it keeps writing the body after it has sent the head,
        // and its outcome is logged there, even when the caller has gone. The task starts on
        // the caller's thread and moves to the guest threads only if it keeps computing.
        let guest = async move {
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, wasi_req, out)
                    .await
            };
            let result = match tokio::time::timeout_at(deadline + BACKSTOP_GRACE, run).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(match classify(e, &store) {
                    Fault::Trap {
                        message, detail, ..
                    } => Fault::Trap {
                        message,
                        detail,
                        client_gone: client_gone.load(Ordering::Acquire),
                    },
                    f => f,
                }),
                Err(_) => Err(Fault::Timeout),
            };
            if let Err(fault) = &result {
                report.fault(&rid, fault);
            }
            result
        };
        let task = match &self.guests {
            Some(guests) => tokio::spawn(Offload {
                guest: Some(Box::pin(guest)),
                busy,
                guests: guests.clone(),
                moved: None,
            }),
            None => tokio::spawn(guest),
        };
        let why = match rx.await {
            Ok(Ok(resp)) => {
                return Ok(resp.map(|b| {
                    Watched {
                        inner: b.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
                        done: false,
                        gone,
                    }
                    .boxed_unsync()
                }));
            }
            Ok(Err(code)) => format!("the function answered with an error: {code:?}"),
            // No response: the guest returned without one, or failed before sending it.
            Err(_) => match task.await {
                Ok(Ok(())) => "the function returned without sending a response".into(),
                Ok(Err(fault)) => {
                    let (code, message) = self.report.describe(&fault);
                    return Ok(platform_response(code, message));
                }
                Err(e) => format!("the request's task failed: {e}"),
            },
        };
        self.report
            .line(format!("request {request_id} failed: {why}"));
        Ok(platform_response(
            ErrorCode::UpstreamError,
            format!("`{}` failed to answer: {why}", self.report.spec.name),
        ))
    }

    fn health(&self) -> watch::Receiver<InstanceHealth> {
        self.health_tx.subscribe()
    }

    async fn stop(&self, _grace: Duration) {
        // Nothing runs between requests; in-flight ones own their stores and finish (or hit
        // their deadline). Reporting an exit lets the pool forget this instance.
        self.health_tx.send_replace(InstanceHealth::Exited {
            code: Some(0),
            signal: None,
            cause: stratus_runtime::ExitCause::Stopped,
        });
    }
}
