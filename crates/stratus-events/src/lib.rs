//! Event delivery: async invocations and timer triggers.
//!
//! [`Engine::submit`] stores an invocation durably in the [`EventStore`] and returns its id; the
//! dispatcher ([`dispatch`]) claims due invocations, runs each once through the same fleet the
//! gateway uses (a CloudEvents POST, marked as a direct event for handler runtimes), and records
//! the outcome: success with the result, a retry with exponential backoff, or the dead-letter
//! list, enqueuing the destination record in the same transaction. [`timers`] turns cron
//! schedules into invocations, claiming each fire in the store so a restart never doubles one.
//!
//! Delivery is at least once: a node killed mid-delivery gets its claims back at the next start
//! and runs them again. Everything here goes through the trait, so a message-queue backend can
//! replace the SQLite queue without touching this crate.
#![forbid(unsafe_code)]

pub mod dispatch;
pub mod mapping;
pub mod retry;
pub mod timers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use stratus_core::{ErrorCode, FunctionName, PlatformError, Target, now_ms};
use stratus_router::Router;
use stratus_runtime::Body;
use stratus_scaler::Fleet;
use stratus_store::{EventStore, Invocation, InvocationState, NewInvocation, StoreError};
use tokio::sync::Notify;

/// Why one try of an invocation did not produce a response.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// No instance slot could be queued for right now; nothing ran.
    NoCapacity(PlatformError),
    Failed(PlatformError),
}

impl From<PlatformError> for Attempt {
    fn from(e: PlatformError) -> Self {
        Attempt::Failed(e)
    }
}

impl Attempt {
    fn into_error(self) -> PlatformError {
        match self {
            Attempt::NoCapacity(e) | Attempt::Failed(e) => e,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Platform(#[from] PlatformError),
}

impl From<EventsError> for PlatformError {
    fn from(e: EventsError) -> Self {
        match e {
            EventsError::Store(s) => s.into(),
            EventsError::Platform(p) => p,
        }
    }
}

/// The CloudEvents type of an invocation made through the API.
pub const TYPE_INVOKE: &str = "stratus.invoke";
pub const TYPE_TIMER: &str = "stratus.timer";
pub const TYPE_DESTINATION: &str = "stratus.destination";

/// Largest response body kept as an invocation's result.
const MAX_RESULT: usize = 256 * 1024;

/// The response of one attempt, collected.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// What an attempt got to, for its request record.
#[derive(Default)]
struct Seen {
    version: Option<u32>,
    instance: String,
    queue: std::time::Duration,
    init: Option<std::time::Duration>,
}

/// The caller's `traceparent`, normalized, if it is valid (an invalid one is ignored, never stored).
fn stored_trace(h: Option<&str>) -> Option<String> {
    h.and_then(stratus_telemetry::context::TraceContext::parse)
        .map(|t| t.header())
}

pub struct Engine {
    store: Arc<dyn EventStore>,
    router: Arc<Router>,
    fleet: Arc<Fleet>,
    /// This node's name in claims; a restarted node takes back its own.
    owner: String,
    wake: Notify,
    /// Async deliveries in flight, by function (the `[async] concurrency` cap).
    inflight: Mutex<HashMap<String, u32>>,
    /// Per-function semaphores sized to the cap (and the cap they were made for).
    slots: Mutex<HashMap<String, (u32, Arc<tokio::sync::Semaphore>)>>,
    webhooks: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Body,
    >,
    /// Where each attempt's request record goes (set once by the binary).
    records: std::sync::OnceLock<Arc<dyn stratus_runtime::RequestSink>>,
}

impl Engine {
    pub fn new(
        store: Arc<dyn EventStore>,
        router: Arc<Router>,
        fleet: Arc<Fleet>,
        owner: &str,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            router,
            fleet,
            owner: owner.to_string(),
            wake: Notify::new(),
            inflight: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            webhooks: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build_http(),
            records: std::sync::OnceLock::new(),
        })
    }

    /// Records every attempt (trigger `async` or `timer`) like the gateway records requests.
    pub fn record_into(&self, sink: Arc<dyn stratus_runtime::RequestSink>) {
        let _ = self.records.set(sink);
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Checks that `function@target` resolves now, so a typo is refused at submit rather than
    /// found in the dead-letter list.
    fn check_target(&self, function: &FunctionName, target: &str) -> Result<(), PlatformError> {
        let t = Target::parse(target)
            .map_err(|e| PlatformError::new(ErrorCode::BadRequest, e.to_string()))?;
        self.router
            .table()
            .version_of(function.as_str(), &t)
            .map(|_| ())
            .map_err(Into::into)
    }

    /// Stores an async invocation and returns its id once it is durable.
    pub async fn submit(
        &self,
        function: &FunctionName,
        target: &str,
        payload: Bytes,
        content_type: Option<String>,
        traceparent: Option<&str>,
    ) -> Result<String, EventsError> {
        self.check_target(function, target)?;
        let now = now_ms();
        let id = format!("inv-{}", stratus_telemetry::context::time_ordered_hex());
        self.store
            .enqueue(NewInvocation {
                id: id.clone(),
                function: function.to_string(),
                target: target.to_string(),
                webhook: None,
                payload: payload.to_vec(),
                content_type,
                event_type: TYPE_INVOKE.into(),
                source: "stratus/api".into(),
                created_at: now,
                not_before: now,
                traceparent: stored_trace(traceparent),
            })
            .await?;
        self.wake_for(function.as_str());
        Ok(id)
    }

    /// Runs an invocation once, now, and returns the function's response (the synchronous
    /// invocation API; also each attempt of an async one).
    pub async fn invoke_once(&self, inv: &Invocation) -> Result<Response, PlatformError> {
        self.try_invoke(inv).await.map_err(Attempt::into_error)
    }

    /// [`Self::invoke_once`], telling "no capacity right now" (the version's wait queue is full,
    /// or the function is at its reserved concurrency) apart from a failed run: an async
    /// delivery waits for capacity rather than spending an attempt on it.
    pub(crate) async fn try_invoke(&self, inv: &Invocation) -> Result<Response, Attempt> {
        let started = std::time::Instant::now();
        let start_ms = now_ms();
        let mut seen = Seen::default();
        let (traceparent, trace_id) = mapping::attempt_trace(inv);
        let result = self.try_invoke_seen(inv, &traceparent, &mut seen).await;
        if let (Some(sink), Some(version)) = (self.records.get(), seen.version) {
            let (status, error) = match &result {
                Ok(r) => (
                    r.status,
                    (r.status >= 500).then(|| "function_error".to_string()),
                ),
                Err(a) => {
                    let e = match a {
                        Attempt::Failed(e) | Attempt::NoCapacity(e) => e,
                    };
                    (e.code.http_status(), Some(e.code.as_str().to_string()))
                }
            };
            sink.record(stratus_store::RequestRecord {
                id: 0,
                request_id: inv.id.clone(),
                trace_id,
                function: inv.function.clone(),
                version,
                instance: seen.instance,
                trigger: if inv.event_type == TYPE_TIMER {
                    stratus_store::Trigger::Timer
                } else {
                    stratus_store::Trigger::Async
                },
                method: "POST".into(),
                path: "/".into(),
                start_ms,
                duration_us: started.elapsed().as_micros() as u64,
                queue_us: seen.queue.as_micros() as u64,
                init_us: seen.init.map(|d| d.as_micros() as u64),
                status,
                error,
                bytes_in: inv.payload.len() as u64,
                bytes_out: result.as_ref().map(|r| r.body.len() as u64).unwrap_or(0),
            });
        }
        result
    }

    async fn try_invoke_seen(
        &self,
        inv: &Invocation,
        traceparent: &str,
        seen: &mut Seen,
    ) -> Result<Response, Attempt> {
        let t = Target::parse(&inv.target)
            .map_err(|e| PlatformError::new(ErrorCode::BadRequest, e.to_string()))?;
        let version = self
            .router
            .table()
            .version_of(&inv.function, &t)
            .map_err(PlatformError::from)?;
        let spec = &version.spec;
        seen.version = Some(version.number.0);
        let timeout = spec.limits.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let pool = self.fleet.pool(spec, version.number, &version.artifact);
        let queued = std::time::Instant::now();
        let acquired = pool.acquire(deadline).await;
        seen.queue = queued.elapsed();
        let lease = acquired.map_err(|e| {
            let busy = matches!(
                e,
                stratus_scaler::AcquireError::QueueFull(_)
                    | stratus_scaler::AcquireError::Throttled(_)
            );
            let e = PlatformError::new(
                ErrorCode::Overloaded,
                format!("`{}` version {}: {e}", spec.name, version.number),
            );
            if busy {
                Attempt::NoCapacity(e)
            } else {
                Attempt::Failed(e)
            }
        })?;
        seen.init = lease.cold_start();
        seen.instance = lease.instance().id().to_string();
        let run = async {
            let resp = lease
                .instance()
                .handle(mapping::cloud_event(inv, traceparent))
                .await
                .map_err(|e| PlatformError::new(ErrorCode::UpstreamError, e.to_string()))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| {
                    PlatformError::new(
                        ErrorCode::UpstreamError,
                        format!("reading the response failed: {e}"),
                    )
                })?
                .to_bytes();
            Ok(Response {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout_at(deadline, run).await {
            Ok(r) => r.map_err(Attempt::Failed),
            Err(_) => Err(Attempt::Failed(PlatformError::new(
                ErrorCode::Timeout,
                format!(
                    "`{}` did not respond within its timeout of {timeout:?}",
                    spec.name
                ),
            ))),
        }
    }

    /// A synchronous invocation: the payload as the event, the function's response back.
    pub async fn invoke_sync(
        &self,
        function: &FunctionName,
        target: &str,
        payload: Bytes,
        content_type: Option<String>,
        traceparent: Option<&str>,
    ) -> Result<Response, PlatformError> {
        self.check_target(function, target)?;
        let now = now_ms();
        let inv = Invocation {
            id: format!("inv-{}", stratus_telemetry::context::time_ordered_hex()),
            function: function.to_string(),
            target: target.to_string(),
            webhook: None,
            payload: payload.to_vec(),
            content_type,
            event_type: TYPE_INVOKE.into(),
            source: "stratus/api".into(),
            state: InvocationState::Running,
            attempts: 1,
            created_at: now,
            updated_at: now,
            next_at: now,
            result: None,
            status: None,
            errors: vec![],
            owner: None,
            traceparent: stored_trace(traceparent),
        };
        self.invoke_once(&inv).await
    }

    pub async fn get(&self, id: &str) -> Result<Invocation, PlatformError> {
        self.store.get_invocation(id).await?.ok_or_else(|| {
            PlatformError::new(
                ErrorCode::InvocationNotFound,
                format!("no invocation `{id}`"),
            )
        })
    }

    pub async fn dead_letters(
        &self,
        function: &FunctionName,
    ) -> Result<Vec<Invocation>, PlatformError> {
        Ok(self.store.dead_letters(function.as_str(), 1000).await?)
    }

    /// Sends dead letters back to the queue; an unknown id is an error.
    pub async fn redrive(
        &self,
        function: &FunctionName,
        id: Option<&str>,
    ) -> Result<u64, PlatformError> {
        let n = self.store.redrive(function.as_str(), id, now_ms()).await?;
        if n == 0
            && let Some(id) = id
        {
            return Err(PlatformError::new(
                ErrorCode::InvocationNotFound,
                format!("`{function}` has no dead letter `{id}`"),
            ));
        }
        self.wake.notify_one();
        Ok(n)
    }

    /// Wakes the dispatcher (something became due).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Starts the dispatcher and the timers; first takes back this node's claims from before a
    /// crash.
    pub async fn spawn(self: &Arc<Self>) -> Result<Vec<tokio::task::JoinHandle<()>>, StoreError> {
        let n = self.store.release_owned(&self.owner).await?;
        if n > 0 {
            tracing::info!(
                "{n} async invocations were in flight at the last stop; delivering them again"
            );
        }
        Ok(vec![
            tokio::spawn(dispatch::run(self.clone())),
            tokio::spawn(timers::run(self.clone())),
        ])
    }
}

/// Truncated, lossy text of a response body, for the invocation record.
pub(crate) fn result_text(body: &[u8]) -> String {
    let cut = &body[..body.len().min(MAX_RESULT)];
    String::from_utf8_lossy(cut).into_owned()
}
