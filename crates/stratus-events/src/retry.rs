//! The retry policy, as pure functions: how long to wait before attempt n+1, and what a failed
//! attempt leads to (a retry, or the dead-letter list and why).

use std::time::Duration;

use stratus_core::AsyncSpec;
use stratus_store::Outcome;

/// The longest wait between two attempts, however many failed.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Delay after the `failed`-th failed attempt (1-based): `base`, then doubling, capped.
pub fn backoff(base: Duration, failed: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failed.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.checked_mul(factor)
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF)
}

/// Why an invocation ended where it did, as Lambda's destination records name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Success,
    RetriesExhausted,
    EventAgeExceeded,
}

impl Condition {
    pub fn as_str(&self) -> &'static str {
        match self {
            Condition::Success => "Success",
            Condition::RetriesExhausted => "RetriesExhausted",
            Condition::EventAgeExceeded => "EventAgeExceeded",
        }
    }
}

/// Whether an event is too old to be attempted at all.
pub fn expired(spec: &AsyncSpec, created_at: i64, now: i64) -> bool {
    now - created_at > spec.max_event_age.as_millis() as i64
}

/// What the `attempt`-th attempt (1-based), failed with `error` at `now`, leads to.
pub fn after_failure(
    spec: &AsyncSpec,
    attempt: u32,
    created_at: i64,
    now: i64,
    error: String,
) -> (Outcome, Option<Condition>) {
    if attempt > spec.retries {
        return (
            Outcome::DeadLetter { error },
            Some(Condition::RetriesExhausted),
        );
    }
    let at = now + backoff(spec.backoff, attempt).as_millis() as i64;
    if expired(spec, created_at, at) {
        return (
            Outcome::DeadLetter { error },
            Some(Condition::EventAgeExceeded),
        );
    }
    (Outcome::Retry { error, at }, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs(1);
        let got: Vec<u64> = (1..=6).map(|n| backoff(s, n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32]);
        assert_eq!(backoff(s, 20), MAX_BACKOFF);
        assert_eq!(backoff(s, 200), MAX_BACKOFF);
        assert_eq!(
            backoff(Duration::from_millis(100), 2),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn retries_then_dead_letter() {
        let spec = AsyncSpec {
            retries: 2,
            backoff: Duration::from_secs(1),
            ..AsyncSpec::default()
        };
        let (o, c) = after_failure(&spec, 1, 0, 10_000, "e".into());
        assert_eq!(
            (o, c),
            (
                Outcome::Retry {
                    error: "e".into(),
                    at: 11_000
                },
                None
            )
        );
        let (o, _) = after_failure(&spec, 2, 0, 20_000, "e".into());
        assert_eq!(
            o,
            Outcome::Retry {
                error: "e".into(),
                at: 22_000
            }
        );
        let (o, c) = after_failure(&spec, 3, 0, 30_000, "e".into());
        assert_eq!(o, Outcome::DeadLetter { error: "e".into() });
        assert_eq!(c, Some(Condition::RetriesExhausted));
        // No retries at all.
        let none = AsyncSpec {
            retries: 0,
            ..spec.clone()
        };
        assert!(matches!(
            after_failure(&none, 1, 0, 0, "e".into()).0,
            Outcome::DeadLetter { .. }
        ));
    }

    #[test]
    fn an_event_past_its_age_is_not_retried() {
        let spec = AsyncSpec {
            retries: 8,
            max_event_age: Duration::from_secs(60),
            backoff: Duration::from_secs(10),
            ..AsyncSpec::default()
        };
        assert!(!expired(&spec, 0, 60_000));
        assert!(expired(&spec, 0, 60_001));
        // The retry would be due after the event's age runs out.
        let (o, c) = after_failure(&spec, 1, 0, 55_000, "e".into());
        assert!(matches!(o, Outcome::DeadLetter { .. }));
        assert_eq!(c, Some(Condition::EventAgeExceeded));
    }
}
