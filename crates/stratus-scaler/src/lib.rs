//! Instance pools, one per (function, version), and the scale decisions that drive them.
//!
//! [`decide`] is the policy: a pure function of a [`Observation`] and the manifest's
//! [`Scaling`](stratus_core::Scaling), unit-tested without clocks or processes. [`InstancePool`]
//! and [`Fleet`] are the thin driver that observes, applies decisions (start, drain, stop) and
//! hands out [`Lease`]s: a lease is one of an instance's `concurrency` slots, held until the
//! response body has been sent. The real autoscaler (issue 6) replaces [`decide`] and the tick;
//! the lease/pool interface the gateway uses stays.

mod autoscale;
mod decide;
mod fleet;
mod pool;

pub use autoscale::{AutoscaleDecision, AutoscaleInput, AutoscalerState, autoscale, starts_now};
pub use decide::{Observation, ScaleDecision, decide, restart_backoff};
pub use fleet::{Fleet, FleetConfig, VersionKey};
pub use pool::{ExitReport, InstancePool, InstanceStatus, Lease, PoolStatus, ScaleEvent};

#[derive(Debug, Clone, thiserror::Error)]
pub enum AcquireError {
    /// No instance could be started; carries the runtime's reason.
    #[error("{0}")]
    StartFailed(String),
    /// No slot became free before the request's deadline.
    #[error("no instance became available within the timeout")]
    Timeout,
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The version's wait queue is full (429).
    #[error("{0}")]
    QueueFull(String),
    /// The function is at its reserved concurrency (429).
    #[error("{0}")]
    Throttled(String),
}
