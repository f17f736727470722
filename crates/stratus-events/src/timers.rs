//! Timer triggers: every second, each trigger of each function's `latest` version is checked
//! against its schedule and its last fire (kept in the [`EventStore`]).
//!
//! Policy, decided by [`Schedule::decide`]: a new trigger starts counting from when it is first
//! seen (no fires from before it existed); after downtime the missed fires run **once**, for the
//! most recent scheduled time at or before the first tick after the restart (so that one fire's
//! scheduled time usually lies inside the downtime, up to one period before the node came back),
//! not as a flood; a fire is claimed in the store together with its invocation, against the last
//! fire as read, so a restart (or a second node) never doubles it. A fire claimed before a crash
//! but not yet delivered is delivered after the restart with the same id (at least once).
//! The trigger's key names the function, the trigger's position and its schedule, so editing a
//! cron starts that trigger afresh.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use stratus_core::{AliasName, Target, TriggerSpec, now_ms};
use stratus_manifest::schedule::{FireDecision, Schedule};
use stratus_store::NewInvocation;

use crate::{Engine, TYPE_TIMER};

const TICK: Duration = Duration::from_secs(1);

/// A short, stable hash for invocation ids (FNV-1a).
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

pub fn trigger_key(function: &str, index: usize, cron: &str, timezone: &str) -> String {
    format!("{function}/{index}/{cron}/{timezone}")
}

/// The invocation of one fire. Its id is derived from the trigger and the time, so even a
/// duplicate claim could not enqueue it twice.
pub fn fire_invocation(function: &str, key: &str, payload: &str, at: i64) -> NewInvocation {
    let is_json = serde_json::from_str::<serde_json::Value>(payload).is_ok();
    NewInvocation {
        id: format!("tmr-{:016x}-{at}", fnv(key)),
        function: function.to_string(),
        target: "latest".into(),
        webhook: None,
        payload: payload.as_bytes().to_vec(),
        content_type: Some(
            if is_json {
                "application/json"
            } else {
                "text/plain"
            }
            .into(),
        ),
        event_type: TYPE_TIMER.into(),
        source: format!("stratus/timer/{function}"),
        created_at: at,
        not_before: now_ms(),
        traceparent: None,
    }
}

async fn tick(engine: &Engine, schedules: &mut HashMap<String, Option<Schedule>>) {
    let table = engine.router.table();
    let now = now_ms();
    for function in table.function_names() {
        let Ok(v) = table.version_of(function.as_str(), &Target::Alias(AliasName::latest())) else {
            continue;
        };
        for (i, t) in v.spec.events.triggers.iter().enumerate() {
            let TriggerSpec::Timer {
                cron,
                timezone,
                payload,
            } = t;
            let key = trigger_key(function.as_str(), i, cron, timezone);
            let schedule = schedules
                .entry(key.clone())
                .or_insert_with(|| Schedule::parse(cron, timezone).ok());
            let Some(schedule) = schedule else { continue };
            let last = match engine.store.timer_last_fire(&key).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("reading timer {key} failed: {e}");
                    continue;
                }
            };
            let (fire_at, inv) = match schedule.decide(last, now) {
                FireDecision::Wait(_) => continue,
                FireDecision::Baseline(at) => (at, None),
                FireDecision::Fire { at, missed } => {
                    if missed > 0 {
                        tracing::info!(
                            "timer {key}: {missed} fires missed while down; running only the latest, at={at}"
                        );
                    }
                    (
                        at,
                        Some(fire_invocation(function.as_str(), &key, payload, at)),
                    )
                }
            };
            let fires = inv.is_some();
            match engine.store.claim_fire(&key, last, fire_at, inv).await {
                Ok(true) if fires => engine.wake(),
                Ok(_) => {}
                Err(e) => tracing::warn!("claiming a fire of timer {key} failed: {e}"),
            }
        }
    }
}

pub async fn run(engine: Arc<Engine>) {
    let mut schedules = HashMap::new();
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        tick(&engine, &mut schedules).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fire_ids_are_stable_per_trigger_and_time() {
        let k = trigger_key("f", 0, "* * * * * *", "UTC");
        let a = fire_invocation("f", &k, "{\"x\":1}", 1000);
        let b = fire_invocation("f", &k, "{\"x\":1}", 1000);
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, fire_invocation("f", &k, "{}", 2000).id);
        assert_eq!(a.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            fire_invocation("f", &k, "tick", 1).content_type.as_deref(),
            Some("text/plain")
        );
        assert_eq!(a.created_at, 1000);
    }
}
