//! Storage interfaces of the platform.
//!
//! * [`Metastore`]: functions, immutable versions, aliases and their history. The embedded
//!   default is SQLite (`stratus-store-embedded`); a PostgreSQL backend for cluster mode
//!   implements the same trait and must pass the same [`conformance`] suite.
//! * [`BlobStore`]: content-addressed artifacts (sha256), deduplicated.
//! * [`LogStore`]: captured instance output and platform log lines.
//!
//! Every mutating call is one transaction in the backend, so concurrent control planes (cluster
//! mode) cannot interleave half-done changes. Changes are announced on [`Metastore::changes`], the
//! feed the router rebuilds its table from.
#![forbid(unsafe_code)]

mod capture;
pub mod conformance;
pub mod events;
mod records;

use std::path::PathBuf;

use async_trait::async_trait;
use stratus_core::{
    AliasName, ErrorCode, FunctionName, FunctionSpec, PlatformError, TrafficPolicy, VersionNumber,
};
use tokio::io::AsyncRead;

pub use capture::{CaptureRecord, CapturedBody, CapturedRequest, CapturedResponse};
pub use events::{AttemptError, EventStore, Invocation, InvocationState, NewInvocation, Outcome};
pub use records::*;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("function `{0}` does not exist")]
    FunctionNotFound(String),
    #[error("function `{0}` has no version {1}")]
    VersionNotFound(String, VersionNumber),
    #[error("function `{0}` has no alias `{1}`")]
    AliasNotFound(String, String),
    #[error(
        "version {version} of `{function}` is in use by alias(es) {aliases}: point them elsewhere first"
    )]
    AliasInUse {
        function: String,
        version: VersionNumber,
        aliases: String,
    },
    #[error("alias `{1}` of `{0}` has no earlier target to roll back to")]
    NoHistory(String, String),
    #[error("{0}")]
    Conflict(String),
    /// A traffic policy that cannot be applied (unknown alias in a rule, a rule pointing at its
    /// own alias).
    #[error("{0}")]
    InvalidPolicy(String),
    #[error("there is no alarm `{0}`")]
    AlarmNotFound(String),
    #[error("blob {0} does not exist")]
    BlobNotFound(String),
    #[error("storage backend failed: {0}")]
    Backend(String),
}

impl From<StoreError> for PlatformError {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::FunctionNotFound(_) => ErrorCode::FunctionNotFound,
            StoreError::VersionNotFound(..) => ErrorCode::VersionNotFound,
            StoreError::AliasNotFound(..) => ErrorCode::AliasNotFound,
            StoreError::AliasInUse { .. } => ErrorCode::AliasInUse,
            StoreError::NoHistory(..) => ErrorCode::NoHistory,
            StoreError::Conflict(_) => ErrorCode::Conflict,
            StoreError::InvalidPolicy(_) => ErrorCode::BadRequest,
            StoreError::AlarmNotFound(_) => ErrorCode::AlarmNotFound,
            StoreError::BlobNotFound(_) | StoreError::Backend(_) => ErrorCode::Internal,
        };
        PlatformError::new(code, e.to_string())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A new version to record.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub spec: FunctionSpec,
    /// Digest of the artifact in the blob store (`sha256:<hex>`).
    pub artifact: String,
    pub artifact_size: u64,
    /// The number the caller prepared the version under; the store refuses it with
    /// [`StoreError::Conflict`] if another deploy took it first.
    pub number: VersionNumber,
    pub actor: String,
}

#[async_trait]
pub trait Metastore: Send + Sync + 'static {
    /// The number the next version of `function` will get (1 for a new function).
    async fn next_version_number(&self, function: &FunctionName) -> Result<VersionNumber>;

    /// Records an immutable version, creating the function if needed, and moves `latest` to it
    /// (recorded in the alias history with reason `deploy`). One transaction.
    async fn create_version(&self, new: NewVersion) -> Result<VersionRecord>;

    async fn get_function(&self, name: &FunctionName) -> Result<FunctionRecord>;
    async fn list_functions(&self) -> Result<Vec<FunctionRecord>>;
    /// Removes a function with its versions, aliases and history.
    async fn delete_function(&self, name: &FunctionName) -> Result<()>;

    async fn get_version(&self, name: &FunctionName, v: VersionNumber) -> Result<VersionRecord>;
    async fn list_versions(&self, name: &FunctionName) -> Result<Vec<VersionRecord>>;
    /// Refused with [`StoreError::AliasInUse`] while an alias points at the version.
    async fn delete_version(&self, name: &FunctionName, v: VersionNumber) -> Result<()>;

    async fn list_aliases(&self, name: &FunctionName) -> Result<Vec<AliasRecord>>;
    async fn get_alias(&self, name: &FunctionName, alias: &AliasName) -> Result<AliasRecord>;
    /// Points an alias at an existing version, creating the alias if needed.
    async fn set_alias(
        &self,
        name: &FunctionName,
        alias: &AliasName,
        version: VersionNumber,
        reason: ChangeReason,
        actor: &str,
    ) -> Result<AliasRecord> {
        self.set_alias_policy(
            name,
            alias,
            TrafficPolicy::single(version),
            reason,
            None,
            actor,
        )
        .await
    }
    /// Gives an alias a (validated) traffic policy. Every version it names must exist, and every
    /// alias its rules name must exist and not be this one. Recorded in the history, atomically.
    async fn set_alias_policy(
        &self,
        name: &FunctionName,
        alias: &AliasName,
        policy: TrafficPolicy,
        reason: ChangeReason,
        note: Option<String>,
        actor: &str,
    ) -> Result<AliasRecord>;
    /// Moves an alias back to the target it had before its current one. Rollbacks are history
    /// entries too, and undo one step each: two rollbacks go back two steps.
    async fn rollback_alias(
        &self,
        name: &FunctionName,
        alias: &AliasName,
        actor: &str,
    ) -> Result<AliasRecord>;
    /// Oldest first.
    async fn alias_history(
        &self,
        name: &FunctionName,
        alias: &AliasName,
    ) -> Result<Vec<AliasChange>>;

    /// Records a new progressive release; refused with [`StoreError::Conflict`] while another one
    /// runs on the same alias.
    async fn create_release(&self, release: Release) -> Result<Release>;
    /// Saves a release's progress (step, state, events).
    async fn update_release(&self, release: &Release) -> Result<()>;
    /// A function's releases, newest first.
    async fn list_releases(&self, name: &FunctionName) -> Result<Vec<Release>>;
    /// Releases still running, on every function (what a restarted controller resumes).
    async fn running_releases(&self) -> Result<Vec<Release>>;

    /// Everything the router needs, read consistently.
    async fn routing_snapshot(&self) -> Result<RoutingSnapshot>;

    /// Stores a new alarm; `Conflict` if its id is taken. Alarms are not routing changes.
    async fn create_alarm(&self, alarm: &AlarmRecord) -> Result<()>;
    /// Replaces an alarm's rule and state; `AlarmNotFound` if it was deleted meanwhile (so an
    /// evaluator's write never brings a deleted alarm back).
    async fn update_alarm(&self, alarm: &AlarmRecord) -> Result<()>;
    async fn list_alarms(&self) -> Result<Vec<AlarmRecord>>;
    /// `NotFound` when there is no such alarm.
    async fn delete_alarm(&self, id: &str) -> Result<()>;

    /// A counter that moves after every committed change. Watchers re-read what they need.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// An artifact's identity and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// `sha256:<hex>`
    pub digest: String,
    pub size: u64,
    /// False when an identical blob was already stored (deduplicated).
    pub created: bool,
}

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores the bytes of `reader`, at most `max_size` of them (larger input is refused and
    /// nothing is kept), and returns their digest. Idempotent for identical content.
    async fn put(
        &self,
        reader: Box<dyn AsyncRead + Send + Unpin>,
        max_size: u64,
    ) -> Result<BlobInfo, BlobPutError>;
    async fn open(&self, digest: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>>;
    async fn exists(&self, digest: &str) -> Result<bool>;
    /// A local file holding the blob, when the backend has one (the embedded store does).
    fn local_path(&self, digest: &str) -> Option<PathBuf>;
}

#[derive(Debug, thiserror::Error)]
pub enum BlobPutError {
    #[error("artifact is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("reading the upload failed: {0}")]
    Read(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    async fn append(&self, lines: Vec<LogLine>) -> Result<()>;
    async fn query(&self, q: LogQuery) -> Result<Vec<LogLine>>;
    /// Stores request records (written in batches by the telemetry writer).
    async fn append_requests(&self, records: Vec<RequestRecord>) -> Result<()>;
    async fn query_requests(&self, q: RequestQuery) -> Result<Vec<RequestRecord>>;
    /// Adds up the records that started in a window, per function.
    async fn summarize(&self, q: SummaryQuery) -> Result<Vec<RequestSummary>>;
    /// Deletes lines and request records older than `before_ms`, and the oldest of each beyond
    /// `max_lines`.
    async fn prune(&self, before_ms: i64, max_lines: u64) -> Result<u64>;
    /// Stores captured requests (written in batches by the telemetry writer).
    async fn append_captures(&self, captures: Vec<CaptureRecord>) -> Result<()>;
    /// The newest capture of this request id, if one was kept.
    async fn get_capture(&self, request_id: &str) -> Result<Option<CaptureRecord>>;
    /// Deletes captures older than `before_ms`, then the oldest until the rest hold at most
    /// `max_bytes` (bodies and headers). Returns how many went.
    async fn prune_captures(&self, before_ms: i64, max_bytes: u64) -> Result<u64>;
}
