//! Instance pools, one per (function, version), and the scale decisions that drive them.
//!
//! [`decide`] is the policy: a pure function of a [`Observation`] and the manifest's
//! [`Scaling`](stratus_core::Scaling), unit-tested without clocks or processes. [`InstancePool`]
//! and [`Fleet`] are the thin driver that observes, applies decisions (start, drain, stop) and
//! hands out [`Lease`]s: a lease is one of an instance's `concurrency` slots, held until the
//! response body has been sent. On the fleet's tick, [`autoscale`] sizes each pool from its
//! concurrency windows and the CPU and memory rules ([`evaluate`]), above the warm floor
//! ([`floor_at`]: `min`, `provisioned`, `[[scaling.schedule]]`).

mod autoscale;
mod decide;
mod fleet;
mod floor;
mod pool;
mod utilization;

pub use autoscale::{
    AutoscaleDecision, AutoscaleInput, AutoscalerState, ResourceObservation, autoscale, starts_now,
};
pub use decide::{Observation, ScaleDecision, decide, restart_backoff};
pub use fleet::{Fleet, FleetConfig, VersionKey};
pub use floor::{ActiveEntry, Floor, FloorChange, FloorSchedule, floor_at};
pub use pool::{ExitReport, InstancePool, InstanceStatus, Lease, PoolStatus, ScaleEvent};
pub use utilization::{Resource, ResourceRule, RuleOutcome, UsageHistory, evaluate};

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
