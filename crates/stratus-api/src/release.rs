//! Progressive delivery: an alias moves from its stable version to a target version step by
//! step, and the controller promotes or rolls back by itself from the target's live error rate
//! and p99 latency (compared with the stable version's). Releases live in the store, so a
//! restarted server resumes them; the observation window restarts with it, so a resumed step
//! holds a full interval before it moves on (it never advances on evidence it lost).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use stratus_core::{
    AliasName, ErrorCode, FunctionName, PlatformError, TrafficPolicy, VersionNumber,
    WeightedVersion, now_ms,
};
use stratus_store::{ChangeReason, Release, ReleaseEvent, ReleaseState};
use stratus_telemetry::stats::StatsSnapshot;

use crate::ControlPlane;

pub const CONTROLLER: &str = "release-controller";
/// Fewer requests than this in a window prove nothing either way.
pub const MIN_SAMPLES: u64 = 10;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRelease {
    #[serde(default = "default_alias")]
    pub alias: String,
    pub to: u32,
    #[serde(default = "default_steps")]
    pub steps: Vec<u32>,
    /// humantime, e.g. "1m".
    #[serde(default = "default_interval")]
    pub interval: String,
    /// Fraction or percentage string: 0.01 or "1%".
    #[serde(default = "default_error_rate")]
    pub max_error_rate: serde_json::Value,
    /// humantime, e.g. "500ms".
    pub max_p99: Option<String>,
}

fn default_alias() -> String {
    "release".into()
}
fn default_steps() -> Vec<u32> {
    vec![10, 25, 50, 100]
}
fn default_interval() -> String {
    "1m".into()
}
fn default_error_rate() -> serde_json::Value {
    serde_json::json!(0.01)
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepDecision {
    Hold,
    Advance,
    Promote,
    RollBack(String),
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn describe(w: &StatsSnapshot) -> String {
    let p99 = w
        .p99()
        .map(|d| format!("{} ms", d.as_millis()))
        .unwrap_or_else(|| "-".into());
    format!(
        "{} requests, {} errors, p99 {p99}",
        w.requests,
        pct(w.error_rate())
    )
}

/// The controller's judgement of the step in force: pure, over the two versions' windows.
pub fn judge(
    r: &Release,
    now: i64,
    target: &StatsSnapshot,
    stable: &StatsSnapshot,
) -> StepDecision {
    if target.requests >= MIN_SAMPLES {
        let rate = target.error_rate();
        if rate > r.max_error_rate && rate > stable.error_rate() {
            return StepDecision::RollBack(format!(
                "error rate {} is over the limit of {} (stable: {})",
                pct(rate),
                pct(r.max_error_rate),
                pct(stable.error_rate())
            ));
        }
        if let (Some(max), Some(p99)) = (r.max_p99_ms, target.p99())
            && p99.as_millis() as u64 > max
        {
            return StepDecision::RollBack(format!(
                "p99 {} ms is over the limit of {max} ms",
                p99.as_millis()
            ));
        }
    }
    if now - r.step_started_at < r.interval_ms as i64 {
        return StepDecision::Hold;
    }
    if r.step + 1 >= r.steps.len() {
        StepDecision::Promote
    } else {
        StepDecision::Advance
    }
}

fn bad(msg: impl Into<String>) -> PlatformError {
    PlatformError::new(ErrorCode::BadRequest, msg)
}

fn parse_rate(v: &serde_json::Value) -> Result<f64, PlatformError> {
    let rate = match v {
        serde_json::Value::Number(n) => n.as_f64().unwrap_or(-1.0),
        serde_json::Value::String(s) => match s.strip_suffix('%') {
            Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0).unwrap_or(-1.0),
            None => s.trim().parse::<f64>().unwrap_or(-1.0),
        },
        _ => -1.0,
    };
    if !(0.0..=1.0).contains(&rate) {
        return Err(bad(format!(
            "max_error_rate {v} must be a fraction like 0.01 or a percentage like \"1%\""
        )));
    }
    Ok(rate)
}

/// The alias's policy with its weights replaced (rules, stickiness and shadow kept).
fn with_weights(
    mut p: TrafficPolicy,
    stable: VersionNumber,
    target: VersionNumber,
    weight: u32,
) -> TrafficPolicy {
    p.weights = if weight >= 100 {
        vec![WeightedVersion {
            version: target,
            weight: 100,
        }]
    } else if weight == 0 {
        vec![WeightedVersion {
            version: stable,
            weight: 100,
        }]
    } else {
        vec![
            WeightedVersion {
                version: stable,
                weight: 100 - weight,
            },
            WeightedVersion {
                version: target,
                weight,
            },
        ]
    };
    p
}

impl ControlPlane {
    pub async fn start_release(
        &self,
        function: &FunctionName,
        req: NewRelease,
    ) -> Result<Release, PlatformError> {
        let alias = AliasName::new(req.alias.clone()).map_err(|e| bad(e.to_string()))?;
        let target = VersionNumber(req.to);
        self.store.get_version(function, target).await?;
        let current = self.store.get_alias(function, &alias).await.map_err(|e| {
            let mut e: PlatformError = e.into();
            e.message = format!(
                "{}: create it first, e.g. `stratus alias set {function} {alias} <stable version>`",
                e.message
            );
            e
        })?;
        let stable = current.policy.primary();
        if stable == target {
            return Err(PlatformError::new(
                ErrorCode::Conflict,
                format!("`{alias}` already serves version {target}"),
            ));
        }
        let mut steps = req.steps.clone();
        if steps.is_empty()
            || steps.iter().any(|s| *s == 0 || *s > 100)
            || steps.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(bad(
                "steps must be increasing percentages from 1 to 100, like 10,25,50,100",
            ));
        }
        if steps.last() != Some(&100) {
            steps.push(100);
        }
        let interval = humantime::parse_duration(&req.interval)
            .map_err(|e| bad(format!("invalid interval {:?}: {e}", req.interval)))?;
        if interval < Duration::from_secs(1) {
            return Err(bad("the interval must be at least 1s"));
        }
        let max_p99_ms = match &req.max_p99 {
            None => None,
            Some(s) => Some(
                humantime::parse_duration(s)
                    .map_err(|e| bad(format!("invalid max_p99 {s:?}: {e}")))?
                    .as_millis() as u64,
            ),
        };
        let now = now_ms();
        let release = Release {
            id: 0,
            function: function.clone(),
            alias: alias.clone(),
            stable,
            target,
            steps,
            step: 0,
            interval_ms: interval.as_millis() as u64,
            max_error_rate: parse_rate(&req.max_error_rate)?,
            max_p99_ms,
            state: ReleaseState::Running,
            actor: "admin".into(),
            created_at: now,
            updated_at: now,
            step_started_at: now,
            events: vec![],
        };
        let mut release = self.store.create_release(release).await?;
        let first = release.steps[0];
        let msg = format!(
            "release {} started: {first}% to version {target}, {}% stays on {stable}",
            release.id,
            100 - first
        );
        self.apply_weight(&mut release, first, msg).await?;
        self.store.update_release(&release).await?;
        Ok(release)
    }

    /// Moves the alias to `weight`% on the target and records it, in the alias history and in the
    /// release's events.
    async fn apply_weight(
        &self,
        r: &mut Release,
        weight: u32,
        message: String,
    ) -> Result<(), PlatformError> {
        let current = self.store.get_alias(&r.function, &r.alias).await?;
        let policy = with_weights(current.policy, r.stable, r.target, weight);
        self.store
            .set_alias_policy(
                &r.function,
                &r.alias,
                policy,
                ChangeReason::Progressive,
                Some(message.clone()),
                CONTROLLER,
            )
            .await?;
        self.serving_now().await;
        let now = now_ms();
        r.events.push(ReleaseEvent {
            at: now,
            weight,
            message,
        });
        r.updated_at = now;
        r.step_started_at = now;
        Ok(())
    }

    pub async fn abort_release(
        &self,
        function: &FunctionName,
        id: i64,
    ) -> Result<Release, PlatformError> {
        let mut r = self
            .store
            .list_releases(function)
            .await?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| {
                PlatformError::new(
                    ErrorCode::BadRequest,
                    format!("`{function}` has no release {id}"),
                )
            })?;
        if r.state != ReleaseState::Running {
            return Err(PlatformError::new(
                ErrorCode::Conflict,
                format!("release {id} already ended ({})", r.state.as_str()),
            ));
        }
        let msg = format!(
            "release {id} aborted by admin: back to version {}",
            r.stable
        );
        self.apply_weight(&mut r, 0, msg).await?;
        r.state = ReleaseState::Aborted;
        self.store.update_release(&r).await?;
        Ok(r)
    }

    /// One pass over every running release. `baselines` holds each release's statistics at the
    /// start of its step (in memory: after a restart the window starts again).
    pub async fn drive_releases(
        &self,
        baselines: &mut HashMap<(i64, usize), (StatsSnapshot, StatsSnapshot)>,
    ) -> Result<(), PlatformError> {
        let running = self.store.running_releases().await?;
        baselines.retain(|(id, _), _| running.iter().any(|r| r.id == *id));
        for mut r in running {
            let f = r.function.as_str().to_string();
            let snap = |v: VersionNumber| self.stats.snapshot(&f, v.0);
            let key = (r.id, r.step);
            if let std::collections::hash_map::Entry::Vacant(e) = baselines.entry(key) {
                e.insert((snap(r.target), snap(r.stable)));
                if r.step_started_at < now_ms() - r.interval_ms as i64 {
                    // Resumed after a restart with the window lost: hold a full interval again.
                    r.step_started_at = now_ms();
                    self.store.update_release(&r).await?;
                }
                continue;
            }
            let (t0, s0) = &baselines[&key];
            let (tw, sw) = (snap(r.target).since(t0), snap(r.stable).since(s0));
            match judge(&r, now_ms(), &tw, &sw) {
                StepDecision::Hold => continue,
                StepDecision::RollBack(why) => {
                    let msg = format!(
                        "release {} rolled back at {}%: {why}; target: {}; stable: {}",
                        r.id,
                        r.steps[r.step],
                        describe(&tw),
                        describe(&sw)
                    );
                    tracing::warn!("{msg}");
                    self.apply_weight(&mut r, 0, msg).await?;
                    r.state = ReleaseState::RolledBack;
                }
                StepDecision::Advance => {
                    r.step += 1;
                    let w = r.steps[r.step];
                    let msg = format!(
                        "release {}: step {}/{} to {w}% on version {}; previous step: target {}; stable {}",
                        r.id,
                        r.step + 1,
                        r.steps.len(),
                        r.target,
                        describe(&tw),
                        describe(&sw)
                    );
                    self.apply_weight(&mut r, w, msg).await?;
                }
                StepDecision::Promote => {
                    let msg = format!(
                        "release {} promoted: 100% on version {}; last step: target {}; stable {}",
                        r.id,
                        r.target,
                        describe(&tw),
                        describe(&sw)
                    );
                    self.apply_weight(&mut r, 100, msg).await?;
                    r.state = ReleaseState::Promoted;
                }
            }
            self.store.update_release(&r).await?;
        }
        Ok(())
    }
}

/// Drives releases every `every` until the control plane is dropped.
pub fn spawn_controller(cp: &Arc<ControlPlane>, every: Duration) -> tokio::task::JoinHandle<()> {
    let cp = Arc::downgrade(cp);
    tokio::spawn(async move {
        let mut baselines = HashMap::new();
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some(cp) = cp.upgrade() else { return };
            if let Err(e) = cp.drive_releases(&mut baselines).await {
                tracing::error!("release controller: {}", e.message);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use stratus_telemetry::stats::TrafficStats;

    use super::*;

    fn release(step: usize, started: i64) -> Release {
        Release {
            id: 1,
            function: FunctionName::new("f").unwrap(),
            alias: AliasName::new("release").unwrap(),
            stable: VersionNumber(1),
            target: VersionNumber(2),
            steps: vec![10, 50, 100],
            step,
            interval_ms: 60_000,
            max_error_rate: 0.01,
            max_p99_ms: Some(500),
            state: ReleaseState::Running,
            actor: "t".into(),
            created_at: 0,
            updated_at: 0,
            step_started_at: started,
            events: vec![],
        }
    }

    fn window(requests: u64, errors: u64, ms: u64) -> StatsSnapshot {
        let s = TrafficStats::default();
        for i in 0..requests {
            s.record(
                "f",
                1,
                if i < errors { 500 } else { 200 },
                Duration::from_millis(ms),
            );
        }
        s.snapshot("f", 1)
    }

    #[test]
    fn holds_then_advances_then_promotes() {
        let healthy = window(100, 0, 5);
        assert_eq!(
            judge(&release(0, 0), 30_000, &healthy, &healthy),
            StepDecision::Hold
        );
        assert_eq!(
            judge(&release(0, 0), 60_000, &healthy, &healthy),
            StepDecision::Advance
        );
        assert_eq!(
            judge(&release(2, 0), 60_000, &healthy, &healthy),
            StepDecision::Promote
        );
        assert_eq!(
            judge(&release(0, 0), 60_000, &window(0, 0, 0), &healthy),
            StepDecision::Advance,
            "no traffic, no evidence against"
        );
    }

    #[test]
    fn rolls_back_on_errors_or_latency_without_waiting() {
        let stable = window(100, 0, 5);
        let failing = window(100, 5, 5);
        assert!(
            matches!(judge(&release(0, 0), 1_000, &failing, &stable), StepDecision::RollBack(m) if m.contains("error rate 5.0%"))
        );
        let slow = window(100, 0, 900);
        assert!(
            matches!(judge(&release(0, 0), 1_000, &slow, &stable), StepDecision::RollBack(m) if m.contains("p99"))
        );
        // Too few samples to judge, and not worse than a failing stable version.
        assert_eq!(
            judge(&release(0, 0), 1_000, &window(5, 5, 5), &stable),
            StepDecision::Hold
        );
        assert_eq!(
            judge(&release(0, 0), 1_000, &failing, &window(100, 10, 5)),
            StepDecision::Hold
        );
    }

    #[test]
    fn weights_keep_the_rest_of_the_policy() {
        let mut p = TrafficPolicy::single(VersionNumber(1));
        p.sticky = Some(stratus_core::traffic::syntax::sticky("header:x-tenant-id").unwrap());
        let q = with_weights(p, VersionNumber(1), VersionNumber(2), 25);
        assert_eq!(q.to_string(), "1=75 2=25 sticky:x-tenant-id");
        assert_eq!(
            with_weights(q.clone(), VersionNumber(1), VersionNumber(2), 100).to_string(),
            "2 sticky:x-tenant-id"
        );
        assert_eq!(parse_rate(&serde_json::json!("1%")).unwrap(), 0.01);
        assert!(parse_rate(&serde_json::json!("150%")).is_err());
    }
}
