//! What the scaler needs from a runtime, and nothing more.
//!
//! A [`Runtime`] turns a version into a [`PreparedVersion`] (code on disk, installed or
//! compiled: done once, cached) and starts [`Instance`]s of it. An instance serves HTTP requests
//! concurrently until it is stopped or exits. The process runtime's instance is a child process
//! on `$PORT`; the wasm runtime's will be a pre-instantiated component. Both speak the same
//! streaming [`Body`], so the gateway never buffers.
#![forbid(unsafe_code)]

mod code;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use stratus_core::{FunctionSpec, VersionNumber};
use stratus_store::{LogLine, RequestRecord};

pub use code::CodeCache;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The data plane's body type: streamed, never collected.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full_body(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty_body() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// The instance could not be started or never became ready. The message names the cause and
    /// carries the last lines of its stderr.
    #[error("{0}")]
    StartFailed(String),
    /// The artifact is not an acceptable archive (unsafe paths, links out of the tree, too big).
    #[error("{0}")]
    InvalidArtifact(String),
    /// Preparing the version's code failed (unpack, install, compile).
    #[error("{0}")]
    PrepareFailed(String),
    /// The instance failed while handling a request (connection refused or reset, crash).
    #[error("{0}")]
    Upstream(String),
}

/// Marks a request the events engine built for an async, timer or direct invocation: its body is
/// the event payload itself. Handler runtimes hand that payload to the handler as the event
/// (rather than mapping an HTTP request into one) and answer with the handler's raw result;
/// HTTP-server runtimes ignore the marker and serve the request (a CloudEvents POST) as any other.
#[derive(Debug, Clone)]
pub struct DirectEvent {
    /// The invocation id, used as the request id.
    pub id: String,
}

/// Where captured output goes. Implementations must never block: the runtime calls this from its
/// output readers.
pub trait LogSink: Send + Sync + 'static {
    fn emit(&self, line: LogLine);
}

/// Where finished invocations go (the telemetry writer). Like [`LogSink`], it must never block
/// the request path: implementations queue with `try_send` and count what they drop.
pub trait RequestSink: Send + Sync + 'static {
    fn record(&self, record: RequestRecord);
    /// A captured request and its response (the manifest's `[capture]`), already redacted.
    fn capture(&self, capture: stratus_store::CaptureRecord) {
        drop(capture);
    }
}

/// A version made ready to start instances from.
#[derive(Debug, Clone)]
pub struct PreparedVersion {
    pub spec: Arc<FunctionSpec>,
    pub version: VersionNumber,
    /// The unpacked (and installed) code.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceHealth {
    Running,
    /// Exited; `code` is the exit code or `None` when killed by a signal, `cause` says why.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        cause: ExitCause,
    },
}

/// Why an instance went away, as far as the platform knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCause {
    /// It exited or crashed by itself.
    Crashed,
    /// The kernel killed it for going over `limits.memory`.
    OutOfMemory,
    /// The platform killed it because an invocation ran past `limits.timeout`.
    Timeout,
    /// The platform stopped it (scale-down, replacement, shutdown).
    Stopped,
}

impl ExitCause {
    /// Stable name for status output and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitCause::Crashed => "crashed",
            ExitCause::OutOfMemory => "out_of_memory",
            ExitCause::Timeout => "timeout",
            ExitCause::Stopped => "stopped",
        }
    }
}

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Makes a version's code ready. Idempotent and cached: a second call is cheap.
    async fn prepare(
        &self,
        spec: Arc<FunctionSpec>,
        version: VersionNumber,
        artifact: &str,
    ) -> Result<PreparedVersion, RuntimeError>;

    /// Starts an instance and returns once it is ready to serve.
    async fn start(
        &self,
        prepared: &PreparedVersion,
        instance_id: &str,
    ) -> Result<Arc<dyn Instance>, RuntimeError>;

    /// Starts an instance as [`Self::start`] does, in `class` from its first instruction: the
    /// scaler starts instances that no request waits for as [`CpuClass::Background`].
    /// Runtimes without a per-instance CPU class start as `start` does.
    async fn start_as(
        &self,
        prepared: &PreparedVersion,
        instance_id: &str,
        class: CpuClass,
    ) -> Result<Arc<dyn Instance>, RuntimeError> {
        let _ = class;
        self.start(prepared, instance_id).await
    }
}

/// How an instance's processes compete for the node's CPU with everything else on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuClass {
    /// Serving requests (or about to serve one that waits): the function's normal share.
    #[default]
    Serving,
    /// Starting ahead of demand (the floor, headroom, a crash loop's restart), or an app serving
    /// nothing: runs on CPU that nothing serving wants (the process runtimes: cgroup `cpu.idle`,
    /// else the smallest CPU weight), within its own `limits.cpu`.
    Background,
    /// A function's instance serving nothing: frozen (the process runtimes: cgroup v2's
    /// `cgroup.freeze`, SIGSTOP on v1, else background priority and at most a twentieth of a
    /// core), as Function Compute and
    /// Lambda freeze an instance between requests. A spinner or a fork loop with no request to
    /// serve cannot slow the node's other functions. Its next request moves it back to
    /// `Serving` (thawed) before it reaches the instance; work it does between requests waits
    /// until then (an app's instance is never parked).
    Parked,
}

impl CpuClass {
    pub fn as_str(self) -> &'static str {
        match self {
            CpuClass::Serving => "serving",
            CpuClass::Background => "background",
            CpuClass::Parked => "parked",
        }
    }
}

/// What an instance uses of the node, as far as its runtime can count it (the process runtimes
/// read the instance's cgroup). Either part is `None` when this node cannot observe it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceUsage {
    /// CPU time used since the instance started, over all its processes (a counter: the
    /// scaler turns it into a rate).
    pub cpu_time: Option<Duration>,
    /// Memory in use now (the working set: resident plus active page cache).
    pub memory_bytes: Option<u64>,
}

#[async_trait]
pub trait Instance: Send + Sync + 'static {
    fn id(&self) -> &str;
    /// Serves one request; many may run at once. The request's URI is the path and query the
    /// function sees.
    async fn handle(&self, req: http::Request<Body>) -> Result<http::Response<Body>, RuntimeError>;
    /// A receiver that changes when the instance exits on its own.
    fn health(&self) -> tokio::sync::watch::Receiver<InstanceHealth>;
    /// Asks the instance to stop (SIGTERM for processes) and forces it after `grace`.
    async fn stop(&self, grace: Duration);
    /// Its CPU and memory use now, for utilisation scaling and `stratus info`; `None` when the
    /// runtime has no per-instance accounting (wasm instances share the server's). Cheap: the
    /// scaler's tick calls it for every instance of pools that scale on it.
    fn usage(&self) -> Option<ResourceUsage> {
        None
    }
    /// Moves the instance to `class` (see [`CpuClass`]); false where its runtime cannot (wasm
    /// instances share the server's threads; a node without the cgroup CPU controller). Cheap
    /// enough for the lease path, which calls it only when the class changes.
    fn set_cpu_class(&self, class: CpuClass) -> bool {
        let _ = class;
        false
    }
    /// The class it is in now, read back from where it is enforced; `None` where its runtime
    /// has no per-instance class.
    fn cpu_class(&self) -> Option<CpuClass> {
        None
    }
}
