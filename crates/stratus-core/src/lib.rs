//! Domain types shared by every Stratus crate.
//!
//! This crate has no I/O and few dependencies: it is the vocabulary the manifest, the store, the
//! runtimes, the router and the API speak to each other.
#![forbid(unsafe_code)]

mod error;
mod events;
mod names;
mod spec;
pub mod traffic;

pub use error::{ErrorCode, PlatformError};
pub use events::{AsyncSpec, Destination, EventSpec, TriggerSpec};
pub use names::{AliasName, FunctionName, LATEST, NameError, Target, VersionNumber};
pub use spec::{
    Build, CaptureSpec, FunctionSpec, Health, HostPattern, Limits, ProvisionedSchedule, RouteSpec,
    RuntimeKind, Scaling, duration_serde,
};
pub use traffic::{
    MatchOp, MatchSource, Matcher, PolicyError, RouteRule, RuleTarget, Shadow, Sticky,
    TrafficPolicy, WeightedVersion,
};

/// Milliseconds since the Unix epoch, the one timestamp format of the store and the API.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
