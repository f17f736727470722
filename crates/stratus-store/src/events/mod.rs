//! [`EventStore`]: the durable queue of async invocations and the state of timer triggers.
//!
//! The embedded default keeps both in the SQLite database; a message-queue backend (RocketMQ
//! protocol, NATS JetStream) implements the same trait, so delivery (retries, destinations,
//! dead letters) stays one code path above it. Every call is atomic and durable when it returns,
//! and [`conformance`] holds each backend to the same contract. A backend may commit several
//! concurrent calls together (the SQLite one groups the enqueues, claims and completions waiting
//! for its connection into one transaction), as long as each call answers only after its own
//! writes are committed and a failing call undoes only itself.
//!
//! Delivery is at least once: an invocation is *claimed* by one owner (a node) before it runs and
//! *completed* after; a node that died with claims (`kill -9`) gets them back with
//! [`EventStore::release_owned`] when it starts again, so nothing acknowledged is lost.

pub mod conformance;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvocationState {
    /// Waiting for its first attempt, or for a retry at `next_at`.
    Pending,
    /// Claimed by a node and being delivered.
    Running,
    Succeeded,
    /// Out of retries or too old: kept in the dead-letter list until redriven.
    DeadLettered,
}

impl InvocationState {
    pub fn as_str(&self) -> &'static str {
        match self {
            InvocationState::Pending => "pending",
            InvocationState::Running => "running",
            InvocationState::Succeeded => "succeeded",
            InvocationState::DeadLettered => "dead_lettered",
        }
    }
    pub fn parse(s: &str) -> Self {
        match s {
            "running" => InvocationState::Running,
            "succeeded" => InvocationState::Succeeded,
            "dead_lettered" => InvocationState::DeadLettered,
            _ => InvocationState::Pending,
        }
    }
}

/// An invocation to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInvocation {
    /// Chosen by the caller (unique), so a caller can retry an enqueue without doubling it.
    pub id: String,
    /// The function the invocation belongs to: its dead-letter list, its async concurrency.
    pub function: String,
    /// The alias or version number to run (`latest`, `release`, `3`).
    pub target: String,
    /// When set, the invocation is delivered by POSTing the payload to this URL (a destination
    /// webhook) instead of running the function.
    pub webhook: Option<String>,
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
    /// The CloudEvents `type` (`stratus.invoke`, `stratus.timer`, `stratus.destination`).
    pub event_type: String,
    /// The CloudEvents `source` (who asked: `stratus/api`, `stratus/timer/<function>`).
    pub source: String,
    pub created_at: i64,
    /// Not attempted before this time (ms).
    pub not_before: i64,
    /// The W3C `traceparent` of whoever asked (the submitting request, the invocation a
    /// destination record comes from), so every attempt continues that trace.
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    pub attempt: u32,
    pub at: i64,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    pub id: String,
    pub function: String,
    pub target: String,
    pub webhook: Option<String>,
    #[serde(skip)]
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
    pub event_type: String,
    pub source: String,
    pub state: InvocationState,
    /// Attempts started so far.
    pub attempts: u32,
    pub created_at: i64,
    pub updated_at: i64,
    /// When a pending invocation is due.
    pub next_at: i64,
    /// The response of the successful attempt (its body; status for HTTP functions).
    pub result: Option<String>,
    pub status: Option<u16>,
    /// Every failed attempt, oldest first.
    pub errors: Vec<AttemptError>,
    /// The node holding the claim while running.
    pub owner: Option<String>,
    /// The trace every attempt continues (see [`NewInvocation::traceparent`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded {
        status: Option<u16>,
        result: Option<String>,
    },
    /// Failed; try again at `at`.
    Retry { error: String, at: i64 },
    /// Failed for the last time (out of retries, too old): to the dead-letter list.
    DeadLetter { error: String },
}

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Stores an invocation durably; when this returns, a crash does not lose it. An id that
    /// exists already is a [`crate::StoreError::Conflict`].
    async fn enqueue(&self, inv: NewInvocation) -> Result<()>;

    /// Claims up to `limit` due invocations (pending with `next_at <= now`), oldest due first,
    /// skipping the functions in `exclude` (at their concurrency cap). Each claim counts an
    /// attempt and is owned by `owner` until completed.
    async fn claim_due(
        &self,
        owner: &str,
        now: i64,
        limit: u32,
        exclude: &[String],
    ) -> Result<Vec<Invocation>>;

    /// Records how a claimed attempt ended, and in the same transaction enqueues `then` (the
    /// record for a destination), so a crash cannot keep one without the other. Returns false
    /// (and changes nothing) if `owner` does not hold the claim.
    async fn complete(
        &self,
        id: &str,
        owner: &str,
        outcome: Outcome,
        then: Option<NewInvocation>,
    ) -> Result<bool>;

    /// Returns every invocation `owner` still holds to pending (a restarted node's claims from
    /// before its crash). The attempt they were in is counted, not recorded as an error.
    async fn release_owned(&self, owner: &str) -> Result<u64>;

    async fn get_invocation(&self, id: &str) -> Result<Option<Invocation>>;

    /// The earliest `next_at` of any pending invocation.
    async fn next_due(&self) -> Result<Option<i64>>;

    /// A function's dead letters, oldest first.
    async fn dead_letters(&self, function: &str, limit: u32) -> Result<Vec<Invocation>>;

    /// Returns dead letters of `function` (one by id, or all) to pending, due at `now`, with their
    /// attempt count reset (their errors are kept). Returns how many moved.
    async fn redrive(&self, function: &str, id: Option<&str>, now: i64) -> Result<u64>;

    /// Removes succeeded invocations updated before `before_ms` (dead letters stay until redriven).
    async fn prune_invocations(&self, before_ms: i64) -> Result<u64>;

    /// The scheduled time of a timer trigger's last fire (or baseline), if it has one.
    async fn timer_last_fire(&self, key: &str) -> Result<Option<i64>>;

    /// Moves a timer from `expected` (its last fire as read) to `fire_at` and enqueues `inv` (the
    /// fire's invocation; none for a baseline) in one transaction. False if another claim moved
    /// the timer first: a fire is never doubled, whoever races for it.
    async fn claim_fire(
        &self,
        key: &str,
        expected: Option<i64>,
        fire_at: i64,
        inv: Option<NewInvocation>,
    ) -> Result<bool>;
}
