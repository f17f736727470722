//! `[scaling]` and `[[scaling.schedule]]`: instance counts, the concurrency target, the CPU and
//! memory targets, and provisioned instances (static or scheduled).

use std::time::Duration;

use serde::Deserialize;
use stratus_core::{Limits, ProvisionedSchedule, RuntimeKind, Scaling};

use crate::schedule::Schedule;
use crate::schema::{Invalid, Kind, Manifest, count, duration, invalid};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingToml {
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub idle_timeout: Option<String>,
    pub target_utilization: Option<f64>,
    pub max_queue: Option<i64>,
    pub queue_timeout: Option<String>,
    pub scale_down_delay: Option<String>,
    pub reserved_concurrency: Option<i64>,
    /// Instances kept ready with no traffic (when no schedule entry has fired).
    pub provisioned: Option<i64>,
    /// A share of `limits.cpu` per instance.
    pub cpu_target: Option<f64>,
    /// A share of `limits.memory` per instance.
    pub memory_target: Option<f64>,
    #[serde(default)]
    pub schedule: Vec<ScheduleToml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleToml {
    pub cron: String,
    pub timezone: Option<String>,
    pub provisioned: i64,
}

/// The range of `cpu_target` and `memory_target`. A throttled instance uses at most its whole
/// `limits.cpu` (and one past `limits.memory` is killed), so a target above 0.9 could never be
/// exceeded by the autoscaler's 10% tolerance and would never scale out.
const TARGET_RANGE: (f64, f64) = (0.1, 0.9);

/// `cpu_target` / `memory_target`: a share of a limit the function sets.
fn resource_target(
    m: &Manifest,
    key: &str,
    v: Option<f64>,
    limit_key: &str,
    limit_set: bool,
    example: &str,
) -> Result<Option<f64>, Invalid> {
    let Some(t) = v else { return Ok(None) };
    let short = key.trim_start_matches("scaling.");
    if m.runtime == RuntimeKind::Wasm {
        return Err(invalid(
            key,
            format!(
                "{short} is for process instances; wasm instances share the server's CPU and memory, which are not accounted per instance"
            ),
        ));
    }
    if !limit_set {
        return Err(invalid(
            key,
            format!(
                "{short} is a share of `{limit_key}` per instance: set `{limit_key}` too (like {example})"
            ),
        ));
    }
    let (lo, hi) = TARGET_RANGE;
    if !(t.is_finite() && (lo..=hi).contains(&t)) {
        return Err(invalid(
            key,
            format!(
                "{t} is out of range: allowed {lo} to {hi} (a share of `{limit_key}`; an instance never uses more than its limit, so a higher target could never be exceeded)"
            ),
        ));
    }
    Ok(Some(t))
}

pub fn validate(m: &Manifest, limits: &Limits) -> Result<Scaling, Invalid> {
    let t = &m.scaling;
    let sd = Scaling::default();
    let target_utilization = t.target_utilization.unwrap_or(sd.target_utilization);
    if !(0.1..=1.0).contains(&target_utilization) {
        return Err(invalid(
            "scaling.target_utilization",
            format!(
                "{target_utilization} is out of range: allowed 0.1 to 1.0 (a share of `limits.concurrency`)"
            ),
        ));
    }
    let app = m.kind == Some(Kind::App);
    if app && m.runtime != RuntimeKind::Process {
        return Err(invalid(
            "kind",
            format!(
                "kind \"app\" is a long-running service: it needs runtime \"process\", not \"{}\"",
                m.runtime.as_str()
            ),
        ));
    }
    if app && t.min == Some(0) {
        return Err(invalid(
            "scaling.min",
            "an app is always on: scaling.min must be at least 1 (or use kind = \"function\" to scale to zero)",
        ));
    }
    // An app keeps one instance unless the manifest asks for more.
    let min_default = if app { 1 } else { sd.min };
    let max = count("scaling.max", t.max, sd.max, 1, 1000)?;
    let at_most_max = |key: &str, what: &str, n: u32| {
        if n > max {
            Err(invalid(
                key,
                format!("{what} ({n}) is greater than max ({max}): it must be at most max"),
            ))
        } else {
            Ok(n)
        }
    };
    let min = count("scaling.min", t.min, min_default, 0, 1000)?;
    if min > max {
        return Err(invalid(
            "scaling.min",
            format!("min ({min}) is greater than max ({max}): min must be at most max"),
        ));
    }
    let provisioned = count("scaling.provisioned", t.provisioned, 0, 0, 1000)?;
    at_most_max("scaling.provisioned", "provisioned", provisioned)?;
    let mut schedule = Vec::new();
    for (i, e) in t.schedule.iter().enumerate() {
        let key = |k: &str| format!("scaling.schedule[{i}].{k}");
        let timezone = e.timezone.clone().unwrap_or_else(|| "UTC".into());
        if let Err(why) = Schedule::parse(&e.cron, &timezone) {
            let k = if why.starts_with("unknown time zone") {
                "timezone"
            } else {
                "cron"
            };
            return Err(invalid(&key(k), why));
        }
        let n = count(&key("provisioned"), Some(e.provisioned), 0, 0, 1000)?;
        at_most_max(&key("provisioned"), "provisioned", n)?;
        schedule.push(ProvisionedSchedule {
            cron: e.cron.clone(),
            timezone,
            provisioned: n,
        });
    }
    Ok(Scaling {
        app,
        min,
        max,
        idle_timeout: duration("scaling.idle_timeout", &t.idle_timeout, sd.idle_timeout)?,
        target_utilization,
        max_queue: count("scaling.max_queue", t.max_queue, sd.max_queue, 0, 1_000_000)?,
        queue_timeout: match &t.queue_timeout {
            None => None,
            Some(_) => Some(duration(
                "scaling.queue_timeout",
                &t.queue_timeout,
                Duration::ZERO,
            )?),
        },
        scale_down_delay: duration(
            "scaling.scale_down_delay",
            &t.scale_down_delay,
            sd.scale_down_delay,
        )?,
        reserved_concurrency: match t.reserved_concurrency {
            None => None,
            Some(n) => Some(count(
                "scaling.reserved_concurrency",
                Some(n),
                0,
                1,
                1_000_000,
            )?),
        },
        provisioned,
        schedule,
        cpu_target: resource_target(
            m,
            "scaling.cpu_target",
            t.cpu_target,
            "limits.cpu",
            limits.cpu.is_some(),
            "cpu = 0.5",
        )?,
        memory_target: resource_target(
            m,
            "scaling.memory_target",
            t.memory_target,
            "limits.memory",
            // A process has no memory limit unless the manifest sets one.
            m.limits.memory.is_some(),
            "memory = \"256MiB\"",
        )?,
    })
}
