//! One bootstrap process and its Runtime API: `handle` hands one event to the bootstrap's `next`
//! and waits for its `response` or `error`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::BodyExt;
use stratus_core::{ErrorCode, PlatformError, now_ms};
use stratus_runtime::{
    Body, DirectEvent, Instance, InstanceHealth, LogSink, PreparedVersion, RuntimeError, full_body,
};
use stratus_runtime_process::Confinement;
use stratus_store::{LogLine, LogStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::api::{Invocation, Reply, RuntimeApi};
use crate::event::{RequestInfo, handler_error, http_event, http_response};

/// Set on a response whose handler failed (its value is the error type), so the events engine
/// can tell a handler error from a handler that answered 502 itself.
pub const FUNCTION_ERROR_HEADER: &str = "x-stratus-function-error";

pub struct LambdaInstance {
    id: String,
    conf: Arc<Confinement>,
    _api: RuntimeApi,
    queue: mpsc::Sender<Invocation>,
    health: watch::Receiver<InstanceHealth>,
    prepared: PreparedVersion,
    logs: Arc<dyn LogSink>,
    arn: String,
}

/// Kills the bootstrap if an invocation is abandoned (the caller timed out or went away): the
/// bootstrap would go on with the stale event and hand the next caller a late slot. Lambda does
/// the same with a runtime that times out. The kill is recorded as a timeout (or a stop, when
/// the caller left early), never as a crash, so it does not feed the restart backoff.
struct Abandon {
    conf: Arc<Confinement>,
    armed: bool,
    started: Instant,
    timeout: Duration,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if self.armed {
            // The gateway gives up at the timeout; allow it a little slack for scheduling.
            if self.started.elapsed() + Duration::from_millis(100) >= self.timeout {
                self.conf.mark_timeout();
            } else {
                self.conf.mark_stopping();
            }
            self.conf.kill_all();
        }
    }
}

/// A W3C `traceparent` as the X-Ray style header Lambda passes (`Root=1-<8>-<24>;Parent=..`).
pub fn xray_trace_id(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.split('-');
    let (_, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if trace.len() != 32 || span.len() != 16 {
        return None;
    }
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1;
    Some(format!(
        "Root=1-{}-{};Parent={span};Sampled={sampled}",
        &trace[..8],
        &trace[8..]
    ))
}

fn respond(
    status: u16,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    body: Vec<u8>,
) -> http::Response<Body> {
    let mut r = http::Response::new(full_body(body));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    for (k, v) in headers {
        r.headers_mut().append(k, v);
    }
    r
}

impl LambdaInstance {
    pub(crate) fn new(
        id: String,
        conf: Arc<Confinement>,
        api: RuntimeApi,
        queue: mpsc::Sender<Invocation>,
        health: watch::Receiver<InstanceHealth>,
        prepared: PreparedVersion,
        logs: Arc<dyn LogSink>,
    ) -> Self {
        let arn = format!(
            "arn:aws:lambda:local:000000000000:function:{}:{}",
            prepared.spec.name, prepared.version
        );
        Self {
            id,
            conf,
            _api: api,
            queue,
            health,
            prepared,
            logs,
            arn,
        }
    }

    pub(crate) fn kill_now(&self) {
        self.conf.kill_now();
    }

    async fn release(&self) {
        self.conf.release_blocking().await;
    }

    fn running(&self) -> bool {
        matches!(*self.health.borrow(), InstanceHealth::Running)
    }

    fn log(&self, stream: LogStream, line: String) {
        self.logs.emit(LogLine {
            id: 0,
            at: now_ms(),
            function: self.prepared.spec.name.to_string(),
            version: self.prepared.version.0,
            instance: self.id.clone(),
            stream,
            line,
            request_id: None,
        });
    }

    /// Hands one event to the bootstrap and waits for its reply, the process's exit, or the
    /// function's timeout.
    async fn invoke(
        &self,
        inv: Invocation,
        rx: oneshot::Receiver<Reply>,
    ) -> Result<Reply, RuntimeError> {
        let timeout = self.prepared.spec.limits.timeout;
        let id = inv.id.clone();
        let mut guard = Abandon {
            conf: self.conf.clone(),
            armed: true,
            started: Instant::now(),
            timeout,
        };
        self.queue
            .send(inv)
            .await
            .map_err(|_| RuntimeError::Upstream("the instance is stopping".into()))?;
        let mut health = self.health.clone();
        let exited = async move {
            while matches!(*health.borrow_and_update(), InstanceHealth::Running) {
                if health.changed().await.is_err() {
                    break;
                }
            }
            *health.borrow()
        };
        // The gateway's own deadline is the timeout; this one is the backstop for other callers.
        let out = tokio::select! {
            r = rx => r.map_err(|_| RuntimeError::Upstream("the Runtime API dropped the invocation".into())),
            h = exited => Err(RuntimeError::Upstream(format!(
                "the bootstrap exited during invocation {id} ({h:?}): see the function's logs"
            ))),
            _ = tokio::time::sleep(timeout + Duration::from_secs(1)) => {
                self.log(LogStream::Platform, format!("{id} Task timed out after {:.2} seconds", timeout.as_secs_f64()));
                Err(RuntimeError::Upstream(format!("invocation {id} timed out after {timeout:?}")))
            }
        };
        guard.armed = out.is_err();
        out
    }
}

#[async_trait]
impl Instance for LambdaInstance {
    fn id(&self) -> &str {
        &self.id
    }

    async fn handle(&self, req: http::Request<Body>) -> Result<http::Response<Body>, RuntimeError> {
        let direct = req.extensions().get::<DirectEvent>().cloned();
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| RuntimeError::Upstream(format!("reading the request body failed: {e}")))?
            .to_bytes();
        let header = |n: &str| {
            parts
                .headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let id = match &direct {
            Some(d) => d.id.clone(),
            None => header("x-request-id").unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        };
        let now = now_ms();
        let payload = match &direct {
            // The payload is the event; text that is not JSON goes over as a JSON string.
            Some(_) if serde_json::from_slice::<serde_json::Value>(&body).is_ok() => body,
            Some(_) => {
                Bytes::from(serde_json::to_vec(&String::from_utf8_lossy(&body)).expect("string"))
            }
            None => {
                let info = RequestInfo {
                    request_id: &id,
                    now_ms: now,
                };
                Bytes::from(serde_json::to_vec(&http_event(&parts, &body, &info)).expect("event"))
            }
        };
        let (tx, rx) = oneshot::channel();
        let inv = Invocation {
            id: id.clone(),
            payload,
            deadline_ms: now + self.prepared.spec.limits.timeout.as_millis() as i64,
            function_arn: self.arn.clone(),
            trace_id: header("traceparent").as_deref().and_then(xray_trace_id),
            client_context: header("x-amz-client-context"),
            cognito_identity: header("x-amz-cognito-identity"),
            reply: tx,
        };
        let reply = self.invoke(inv, rx).await?;
        let json = || {
            (
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            )
        };
        match reply {
            Reply::Response(result) if direct.is_some() => {
                Ok(respond(200, vec![json()], result.to_vec()))
            }
            Reply::Response(result) => match http_response(&result) {
                Ok(m) => Ok(respond(m.status, m.headers, m.body)),
                Err(why) => {
                    self.log(LogStream::Platform, format!("{id} {why}"));
                    let e = PlatformError::new(ErrorCode::UpstreamError, why);
                    Ok(respond(
                        502,
                        vec![json()],
                        e.to_json().to_string().into_bytes(),
                    ))
                }
            },
            Reply::Error { type_header, body } => {
                let e = handler_error(type_header.as_deref(), &body);
                // The stack goes to the log, tagged with the request id; the caller gets the
                // type and message.
                self.log(
                    LogStream::Stderr,
                    format!("{id}\t{}: {}", e.error_type, e.message),
                );
                let summary = format!("{}: {}", e.error_type, e.message);
                // Node's stack starts with the summary line again.
                for l in e.stack.iter().filter(|l| l.trim() != summary) {
                    for part in l.lines() {
                        self.log(LogStream::Stderr, format!("{id}\t{part}"));
                    }
                }
                let kind = http::HeaderValue::from_str(&e.error_type)
                    .unwrap_or_else(|_| http::HeaderValue::from_static("Unhandled"));
                let headers = vec![
                    json(),
                    (http::HeaderName::from_static(FUNCTION_ERROR_HEADER), kind),
                ];
                let body = if direct.is_some() {
                    serde_json::json!({"errorType": e.error_type, "errorMessage": e.message, "stackTrace": e.stack})
                } else {
                    let mut v = PlatformError::new(
                        ErrorCode::UpstreamError,
                        format!("the handler failed: {}: {}", e.error_type, e.message),
                    )
                    .to_json();
                    v["error"]["error_type"] = serde_json::json!(e.error_type);
                    v["error"]["request_id"] = serde_json::json!(id);
                    v
                };
                Ok(respond(502, headers, body.to_string().into_bytes()))
            }
        }
    }

    fn health(&self) -> watch::Receiver<InstanceHealth> {
        self.health.clone()
    }

    fn usage(&self) -> Option<stratus_runtime::ResourceUsage> {
        self.conf.usage()
    }

    fn set_cpu_class(&self, class: stratus_runtime::CpuClass) -> bool {
        self.conf.set_cpu_class(class)
    }

    fn cpu_class(&self) -> Option<stratus_runtime::CpuClass> {
        self.conf.cpu_class()
    }

    async fn stop(&self, grace: Duration) {
        if !self.running() {
            self.release().await;
            return;
        }
        self.conf.mark_stopping();
        self.conf.signal(libc::SIGTERM);
        let mut health = self.health.clone();
        let wait = async {
            while matches!(*health.borrow_and_update(), InstanceHealth::Running) {
                if health.changed().await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(grace, wait).await;
        self.release().await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn traceparent_becomes_an_xray_header() {
        assert_eq!(
            super::xray_trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .as_deref(),
            Some("Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1")
        );
        assert_eq!(super::xray_trace_id("garbage"), None);
    }
}
