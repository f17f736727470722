//! Scaling on CPU and memory utilisation (`scaling.cpu_target`, `scaling.memory_target`), the way
//! Kubernetes' HPA and SAE do it: each instance's use as a share of its limit, averaged, against
//! a target; `desired = ceil(current × observed / target)`, held while the ratio is within a
//! tolerance of 1 so noise does not flap the size. The concurrency rule and these are combined
//! by `autoscale` (the largest wins) and share its scale-down delay, `min` and `max`.
//!
//! An instance counts once it has been sampled for a whole window (its rate then reflects the
//! current size, not the load it had before the last change: without that, the old instances'
//! windows still remember the overload the new ones were started for, and the size overshoots).
//! Instances that do not count yet (starting, or ready for less than a window) are taken as HPA
//! takes pods without metrics: as idle when the rule would scale up (they are about to take
//! load), as fully used when it would scale down (no capacity is removed on a guess). So a
//! resource-driven scale-out takes one step per window.
//! Pure: samples and times come in, numbers come out; the pool samples `Instance::usage`.

use std::collections::VecDeque;

use serde::Serialize;
use stratus_core::FunctionSpec;
use stratus_runtime::ResourceUsage;

/// How far back an instance's CPU rate looks.
pub const USAGE_WINDOW_MS: u64 = 5_000;
/// The shortest span of samples a CPU rate is computed over.
pub const MIN_RATE_SPAN_MS: u64 = 1_000;
/// The band around the target within which a rule holds the current size (HPA's default).
pub const TOLERANCE: f64 = 0.1;

/// One instance's recent usage samples.
#[derive(Debug, Clone, Default)]
pub struct UsageHistory {
    /// `(at_ms, cumulative cpu ns)`, oldest first, covering the window.
    cpu: VecDeque<(u64, u64)>,
    memory: Option<u64>,
    /// When the first and the last sample were taken.
    first_at: Option<u64>,
    last_at: u64,
}

impl UsageHistory {
    pub fn record(&mut self, at_ms: u64, usage: ResourceUsage) {
        self.first_at.get_or_insert(at_ms);
        self.last_at = at_ms;
        if let Some(cpu) = usage.cpu_time {
            self.cpu.push_back((at_ms, cpu.as_nanos() as u64));
            // Keep one sample at or before the window's start, so the rate spans the window.
            while self.cpu.len() > 2 && self.cpu[1].0 + USAGE_WINDOW_MS <= at_ms {
                self.cpu.pop_front();
            }
        }
        self.memory = usage.memory_bytes;
    }

    /// Cores used on average over the window; `None` until the samples span a second.
    pub fn cpu_cores(&self) -> Option<f64> {
        let (&(t0, c0), &(t1, c1)) = (self.cpu.front()?, self.cpu.back()?);
        let span = t1.checked_sub(t0)?;
        if span < MIN_RATE_SPAN_MS {
            return None;
        }
        Some(c1.saturating_sub(c0) as f64 / (span as f64 * 1e6))
    }

    /// Memory in use at the last sample.
    /// The latest use of `resource`: cores for CPU, bytes for memory.
    pub fn used(&self, resource: Resource) -> Option<f64> {
        match resource {
            Resource::Cpu => self.cpu_cores(),
            Resource::Memory => self.memory_bytes().map(|b| b as f64),
        }
    }

    pub fn memory_bytes(&self) -> Option<u64> {
        self.memory
    }

    /// Sampled for a whole window: its numbers describe the pool as it is now.
    pub fn settled(&self) -> bool {
        self.first_at
            .is_some_and(|f| self.last_at.saturating_sub(f) >= USAGE_WINDOW_MS)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    Cpu,
    Memory,
}

impl Resource {
    /// Its name in manifest keys (`scaling.<name>_target`) and reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
        }
    }
}

/// A utilisation rule: a target share of a per-instance limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResourceRule {
    pub resource: Resource,
    pub target: f64,
    /// The per-instance limit: cores or bytes.
    pub limit: f64,
}

impl ResourceRule {
    /// The rules a version's manifest asks for.
    pub fn of(spec: &FunctionSpec) -> Vec<ResourceRule> {
        let mut out = Vec::new();
        if let (Some(target), Some(cores)) = (spec.scaling.cpu_target, spec.limits.cpu) {
            out.push(ResourceRule {
                resource: Resource::Cpu,
                target,
                limit: cores,
            });
        }
        if let (Some(target), Some(bytes)) = (spec.scaling.memory_target, spec.limits.memory_bytes)
        {
            out.push(ResourceRule {
                resource: Resource::Memory,
                target,
                limit: bytes as f64,
            });
        }
        out
    }

    /// An instance's use as a share of the limit, once it has a window of samples.
    pub fn utilization(&self, h: &UsageHistory) -> Option<f64> {
        if !h.settled() {
            return None;
        }
        Some(h.used(self.resource)? / self.limit)
    }

    fn limit_text(&self) -> String {
        match self.resource {
            Resource::Cpu => format!("{} cores", self.limit),
            Resource::Memory => format!("{} MiB", (self.limit / (1024.0 * 1024.0)).round()),
        }
    }
}

/// What one rule saw and wants, for the decision and for `stratus info`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleOutcome {
    pub resource: Resource,
    pub target: f64,
    /// Mean use of the instances that report it, as a share of the limit.
    pub observed: Option<f64>,
    /// How many instances reported it.
    pub reporting: u32,
    /// The size this rule wants; `None` when no instance reports its use.
    pub wants: Option<u32>,
    pub reason: String,
}

/// `ceil`, forgiving the float error of sums like 4 × 0.9 / 0.6 (which is 6.000000000000001).
fn ceil(x: f64) -> u32 {
    (x - 1e-9).ceil().max(0.0) as u32
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// One rule over the current instances: `observed` holds the utilisation of each instance that
/// reports it, `current` counts every instance (ready or starting, not draining).
pub fn evaluate(rule: &ResourceRule, observed: &[f64], current: u32) -> RuleOutcome {
    let name = rule.resource.as_str();
    let reporting = observed.len() as u32;
    let mut out = RuleOutcome {
        resource: rule.resource,
        target: rule.target,
        observed: None,
        reporting,
        wants: None,
        reason: format!("{name}: no instance reports its use yet"),
    };
    if observed.is_empty() {
        return out;
    }
    let sum: f64 = observed.iter().sum();
    let mean = sum / observed.len() as f64;
    out.observed = Some(mean);
    let missing = current.saturating_sub(reporting) as f64;
    let current = current.max(reporting);
    let head = format!(
        "{name} {} of {} (mean of {reporting})",
        pct(mean),
        rule.limit_text()
    );
    let ratio = mean / rule.target;
    let hold = |why: String| (current, why);
    let (wants, why) = if (ratio - 1.0).abs() <= TOLERANCE {
        hold(format!(
            "{head}, within {} of target {}: holds {current}",
            pct(TOLERANCE),
            pct(rule.target)
        ))
    } else if ratio > 1.0 {
        // Instances without a number yet are taken as idle: they are about to share the load.
        let filled = sum / (reporting as f64 + missing);
        if filled / rule.target <= 1.0 + TOLERANCE {
            hold(format!(
                "{head} > target {}, but {missing} starting instances will share it: holds {current}",
                pct(rule.target)
            ))
        } else {
            let n = ceil(sum / rule.target);
            (
                n.max(current),
                format!(
                    "{head} > target {}: wants {}",
                    pct(rule.target),
                    n.max(current)
                ),
            )
        }
    } else {
        // ... and as fully used on the way down: no capacity is removed on a guess.
        let filled = (sum + missing) / (reporting as f64 + missing);
        if filled / rule.target >= 1.0 - TOLERANCE {
            hold(format!(
                "{head} < target {}, but {missing} instances report nothing yet: holds {current}",
                pct(rule.target)
            ))
        } else {
            let n = ceil((sum + missing) / rule.target);
            (
                n.min(current),
                format!(
                    "{head} < target {}: wants {}",
                    pct(rule.target),
                    n.min(current)
                ),
            )
        }
    };
    out.wants = Some(wants);
    out.reason = why;
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cpu(target: f64, cores: f64) -> ResourceRule {
        ResourceRule {
            resource: Resource::Cpu,
            target,
            limit: cores,
        }
    }

    fn usage(cpu_ms: u64, mem: u64) -> ResourceUsage {
        ResourceUsage {
            cpu_time: Some(Duration::from_millis(cpu_ms)),
            memory_bytes: Some(mem),
        }
    }

    #[test]
    fn cpu_rate_spans_the_window_and_needs_a_second() {
        let mut h = UsageHistory::default();
        h.record(0, usage(0, 10));
        h.record(500, usage(250, 10));
        assert_eq!(h.cpu_cores(), None, "half a second is too short for a rate");
        // Half a core for 10 s, sampled every 200 ms.
        let mut t = 500;
        while t < 10_000 {
            t += 200;
            h.record(t, usage(t / 2, 20));
        }
        let c = h.cpu_cores().unwrap();
        assert!((c - 0.5).abs() < 1e-9, "{c}");
        assert!(
            h.cpu.len() <= (USAGE_WINDOW_MS / 200 + 2) as usize,
            "{}",
            h.cpu.len()
        );
        // It goes idle: the rate falls as the window moves past the busy part.
        let busy_until = t;
        while t < busy_until + USAGE_WINDOW_MS + 400 {
            t += 200;
            h.record(t, usage(busy_until / 2, 20));
        }
        assert_eq!(h.cpu_cores(), Some(0.0));
        assert_eq!(h.memory_bytes(), Some(20));
        // An instance whose node cannot count CPU reports none.
        let mut h = UsageHistory::default();
        h.record(
            0,
            ResourceUsage {
                cpu_time: None,
                memory_bytes: Some(5),
            },
        );
        h.record(
            2000,
            ResourceUsage {
                cpu_time: None,
                memory_bytes: Some(5),
            },
        );
        assert_eq!((h.cpu_cores(), h.memory_bytes()), (None, Some(5)));
    }

    #[test]
    fn over_target_scales_out_hpa_style() {
        // Two instances at 85% of half a core against a 60% target: ceil(2 × 0.85 / 0.6) = 3.
        let o = evaluate(&cpu(0.6, 0.5), &[0.85, 0.85], 2);
        assert_eq!(o.wants, Some(3));
        assert_eq!(
            o.reason,
            "cpu 85% of 0.5 cores (mean of 2) > target 60%: wants 3"
        );
        // Throttled at 100% with a 50% target: double.
        assert_eq!(evaluate(&cpu(0.5, 0.5), &[1.0, 1.0, 1.0], 3).wants, Some(6));
    }

    #[test]
    fn within_the_tolerance_it_holds() {
        for u in [0.55, 0.6, 0.65] {
            let o = evaluate(&cpu(0.6, 1.0), &[u, u, u], 3);
            assert_eq!(o.wants, Some(3), "{u}: {}", o.reason);
            assert!(
                o.reason.contains("within 10% of target 60%"),
                "{}",
                o.reason
            );
        }
    }

    #[test]
    fn under_target_scales_in_but_not_on_missing_numbers() {
        let o = evaluate(&cpu(0.6, 1.0), &[0.2, 0.2, 0.2], 3);
        assert_eq!(o.wants, Some(1), "{}", o.reason);
        assert!(o.reason.contains("< target 60%: wants 1"), "{}", o.reason);
        // One instance reports nothing yet: taken as fully used, (0.1 + 0.1 + 1) / 0.6 = 2.
        let o = evaluate(&cpu(0.6, 1.0), &[0.1, 0.1], 3);
        assert_eq!(o.wants, Some(2), "{}", o.reason);
        let o = evaluate(&cpu(0.6, 1.0), &[0.5, 0.5], 3);
        assert_eq!(o.wants, Some(3), "{}", o.reason);
        assert!(o.reason.contains("report nothing yet"), "{}", o.reason);
    }

    #[test]
    fn starting_instances_damp_a_scale_out() {
        // 2 busy, 2 starting: (0.9 + 0.9) / 4 = 45% < 60%: the new ones will take load.
        let o = evaluate(&cpu(0.6, 0.5), &[0.9, 0.9], 4);
        assert_eq!(o.wants, Some(4), "{}", o.reason);
        assert!(
            o.reason.contains("starting instances will share it"),
            "{}",
            o.reason
        );
        // 2 throttled, 1 starting, target 50%: 2 / 3 = 67% is still over: ceil(2 / 0.5) = 4.
        let o = evaluate(&cpu(0.5, 0.5), &[1.0, 1.0], 3);
        assert_eq!(o.wants, Some(4), "{}", o.reason);
    }

    #[test]
    fn nothing_reported_means_no_opinion() {
        let o = evaluate(&cpu(0.6, 0.5), &[], 2);
        assert_eq!((o.wants, o.observed), (None, None));
        assert!(o.reason.contains("no instance reports"), "{}", o.reason);
    }

    #[test]
    fn memory_rules_read_the_last_sample_against_the_limit() {
        let rule = ResourceRule {
            resource: Resource::Memory,
            target: 0.7,
            limit: 256.0 * 1024.0 * 1024.0,
        };
        let mut h = UsageHistory::default();
        h.record(0, usage(0, 100 * 1024 * 1024));
        assert_eq!(rule.utilization(&h), None, "not sampled for a window yet");
        h.record(USAGE_WINDOW_MS, usage(0, 230 * 1024 * 1024));
        let u = rule.utilization(&h).unwrap();
        let o = evaluate(&rule, &[u], 1);
        assert_eq!(o.wants, Some(2));
        assert!(
            o.reason
                .starts_with("memory 90% of 256 MiB (mean of 1) > target 70%"),
            "{}",
            o.reason
        );
    }

    /// Simulated time: a CPU-bound load of 1.8 cores over instances capped at 0.5 core, target
    /// 60%, instances taking 1 s to start and the load spread evenly over the ready ones. The
    /// size settles where each instance runs within the tolerance of the target and stays
    /// there, without flapping.
    #[test]
    fn a_steady_cpu_load_settles_without_flapping() {
        let rule = cpu(0.6, 0.5);
        let load = 1.8; // cores wanted
        let mut ready: Vec<UsageHistory> = vec![UsageHistory::default()];
        let mut cpu_ns: Vec<u64> = vec![0];
        let mut starting: Vec<u64> = Vec::new(); // ready-at times
        let mut sizes = Vec::new();
        for t in (0..120_000u64).step_by(200) {
            for _ in starting.iter().filter(|r| **r <= t) {
                ready.push(UsageHistory::default());
                cpu_ns.push(0);
            }
            starting.retain(|r| *r > t);
            // Each ready instance gets an even share, at most its 0.5 core.
            let share = (load / ready.len() as f64).min(0.5);
            for (h, c) in ready.iter_mut().zip(cpu_ns.iter_mut()) {
                *c += (share * 200.0 * 1e6) as u64;
                h.record(
                    t,
                    ResourceUsage {
                        cpu_time: Some(Duration::from_nanos(*c)),
                        memory_bytes: None,
                    },
                );
            }
            let observed: Vec<f64> = ready.iter().filter_map(|h| rule.utilization(h)).collect();
            let current = (ready.len() + starting.len()) as u32;
            let o = evaluate(&rule, &observed, current);
            if let Some(w) = o.wants
                && w > current
            {
                starting.extend((0..w - current).map(|_| t + 1000));
            }
            sizes.push(current);
        }
        let last = *sizes.last().unwrap();
        // 1.8 cores at 60% of 0.5 core: 6 instances (each at 0.3 core = 60%).
        assert_eq!(last, 6, "{sizes:?}");
        let settled = sizes.iter().rposition(|s| *s != last).unwrap_or(0);
        assert!(
            settled < 100,
            "settled only after {} ticks: {sizes:?}",
            settled
        );
    }
}
