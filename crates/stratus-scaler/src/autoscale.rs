//! The concurrency autoscaler: how many instances a version should have, from the demand
//! (requests in flight plus waiting) it saw over two windows.
//!
//! Like Knative's KPA there is a long *stable* window that sizes capacity steadily and a short
//! *panic* window that catches bursts; unlike it the panic window is 1 s (Knative: 6 s) and the
//! request path itself starts instances the moment requests queue (see `decide`), so reaction
//! to a burst is bounded by instance start time, not by the autoscaler's tick. Scale-down waits
//! until demand stayed low for `scale_down_delay` (OpenFaaS-style), and never happens in panic.
//! The CPU and memory rules (`utilization`) are weighed here too: the size is the largest any
//! rule wants, and the reason names the rule that set it. Pure: state and time come in, a
//! decision comes out.

use std::collections::VecDeque;

use stratus_core::Scaling;

use crate::utilization::{ResourceRule, RuleOutcome, evaluate};

pub const STABLE_WINDOW_MS: u64 = 60_000;
pub const PANIC_WINDOW_MS: u64 = 1_000;
/// Panic when the panic window wants this many times the instances there are.
pub const PANIC_THRESHOLD: f64 = 2.0;
/// How long panic mode holds after its last trigger.
pub const PANIC_HOLD_MS: u64 = 10_000;

#[derive(Debug, Clone, Default)]
pub struct AutoscalerState {
    /// The demand samples covering the stable window, oldest first, as runs of equal demand:
    /// an idle pool (most of them, with thousands of functions deployed) holds one run instead
    /// of the 300 samples of a minute of 200 ms ticks.
    samples: VecDeque<Run>,
    panic_until: u64,
    /// Since when the wanted size has stayed below the current one.
    low_since: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
pub struct AutoscaleInput<'a> {
    pub now_ms: u64,
    /// Requests in flight plus waiting.
    pub demand: u32,
    /// Ready plus starting instances.
    pub current: u32,
    pub concurrency: u32,
    pub scaling: &'a Scaling,
    pub routable: bool,
    /// The warm floor now (`floor_at`: `max(min, provisioned)`, the schedule's when one is in
    /// force), and why, for the reason when the floor sets the size.
    pub floor: u32,
    pub floor_why: &'a str,
    /// The CPU and memory rules, each with the utilisation of every instance that reports it.
    pub resources: &'a [ResourceObservation],
}

/// One utilisation rule and what the instances report for it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceObservation {
    pub rule: ResourceRule,
    /// Each reporting instance's use, as a share of its limit.
    pub utilization: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleDecision {
    pub desired: u32,
    pub panic: bool,
    /// Whether the decision may remove instances now (scale-down delay served).
    pub may_scale_down: bool,
    pub reason: String,
    /// What the CPU and memory rules saw and wanted.
    pub rules: Vec<RuleOutcome>,
    /// The largest size a CPU or memory rule wants (0 without one): idle instances it holds are
    /// not reaped, and it starts instances without request demand.
    pub resource_desired: u32,
}

/// `n` consecutive samples of the same demand, from `first` to `last`. The samples inside are
/// taken as evenly spaced (the fleet's tick is), which is exact for the ends and within one
/// sample of the truth where a window's edge cuts a run whose tick jittered.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    first: u64,
    last: u64,
    demand: u32,
    n: u32,
}

impl Run {
    /// The time of sample `i`.
    fn at(&self, i: u32) -> u64 {
        if self.n <= 1 {
            return self.first;
        }
        let span = u128::from(self.last - self.first);
        self.first + (span * u128::from(i) / u128::from(self.n - 1)) as u64
    }

    /// How many of its samples are later than `since`.
    fn after(&self, since: u64) -> u32 {
        if self.first > since {
            return self.n;
        }
        if self.last <= since {
            return 0;
        }
        // The first sample past `since`, by binary search over the evenly spaced times.
        let (mut lo, mut hi) = (0, self.n - 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.at(mid) > since {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        self.n - lo
    }
}

fn average(samples: &VecDeque<Run>, since: u64) -> f64 {
    let (sum, n) = samples.iter().fold((0u64, 0u64), |(s, n), r| {
        let k = u64::from(r.after(since));
        (s + k * u64::from(r.demand), n + k)
    });
    if n == 0 { 0.0 } else { sum as f64 / n as f64 }
}

/// Adds a sample and forgets those older than the stable window.
fn record(samples: &mut VecDeque<Run>, now: u64, demand: u32) {
    match samples.back_mut() {
        Some(r) if r.demand == demand && r.n < u32::MAX => {
            r.last = now;
            r.n += 1;
        }
        _ => samples.push_back(Run {
            first: now,
            last: now,
            demand,
            n: 1,
        }),
    }
    if let Some(cutoff) = now.checked_sub(STABLE_WINDOW_MS + 1) {
        while let Some(r) = samples.front_mut() {
            let keep = r.after(cutoff);
            if keep == 0 {
                samples.pop_front();
                continue;
            }
            if keep < r.n {
                r.first = r.at(r.n - keep);
                r.n = keep;
            }
            break;
        }
    }
    // A busy spell leaves a long queue's capacity behind; give it back once demand settles.
    if samples.capacity() > 16 && samples.len() * 4 < samples.capacity() {
        samples.shrink_to(samples.len() * 2);
    }
}

pub fn autoscale(state: &mut AutoscalerState, input: AutoscaleInput<'_>) -> AutoscaleDecision {
    let now = input.now_ms;
    record(&mut state.samples, now, input.demand);
    let per_instance = (input.concurrency as f64 * input.scaling.target_utilization).max(1.0);
    let stable = average(&state.samples, now.saturating_sub(STABLE_WINDOW_MS));
    let burst = average(&state.samples, now.saturating_sub(PANIC_WINDOW_MS));
    let want_stable = (stable / per_instance).ceil() as u32;
    let want_panic = (burst / per_instance).ceil() as u32;
    if want_panic as f64 >= PANIC_THRESHOLD * input.current.max(1) as f64
        && want_panic > input.current
    {
        state.panic_until = now + PANIC_HOLD_MS;
    }
    let panic = now < state.panic_until;
    let floor = if input.routable {
        input.scaling.min.max(input.floor)
    } else {
        0
    };
    let (mut raw, mut reason) = if panic {
        let d = want_panic.max(input.current);
        (
            d,
            format!(
                "panic: {burst:.1} in flight over 1s wants {want_panic} (holding >= {})",
                input.current
            ),
        )
    } else {
        // The burst window still lifts the stable size, so a rising load is met early.
        let d = want_stable.max(want_panic);
        (
            d,
            format!(
                "stable: {stable:.1} in flight over 60s, {burst:.1} over 1s, {per_instance:.1} per instance"
            ),
        )
    };
    // The largest want wins; on a tie the concurrency rule's reason stands.
    let rules: Vec<RuleOutcome> = input
        .resources
        .iter()
        .map(|r| evaluate(&r.rule, &r.utilization, input.current))
        .collect();
    let mut resource_desired = 0;
    for o in &rules {
        if let Some(w) = o.wants {
            resource_desired = resource_desired.max(w);
            if w > raw {
                raw = w;
                reason = o.reason.clone();
            }
        }
    }
    // Scaling to zero is the idle reaper's call (after `idle_timeout`), not this one's.
    let keep_one = if input.current > 0 && input.demand == 0 && raw == 0 {
        input.current.min(1)
    } else {
        0
    };
    if floor > raw.max(keep_one) {
        reason = format!("floor {floor}: {}", input.floor_why);
    }
    let desired = raw.max(floor).max(keep_one).min(input.scaling.max);
    let may_scale_down = if desired < input.current && !panic {
        let since = *state.low_since.get_or_insert(now);
        now.saturating_sub(since) >= input.scaling.scale_down_delay.as_millis() as u64
    } else {
        state.low_since = None;
        false
    };
    AutoscaleDecision {
        desired,
        panic,
        may_scale_down,
        reason,
        rules,
        resource_desired: resource_desired.min(input.scaling.max),
    }
}

/// How many instances a tick starts: what the queued and in-flight requests need at full
/// concurrency (`need_now`, from `decide`) at once, and the autoscaler's headroom above that
/// (`desired`, sized at `target_utilization`) only once no start is under way or due. Instances
/// starting together share the node's CPU, so on a small node 29 starts take half again as long
/// as 20 and every waiting request would wait for the slowest: demand first, headroom next.
/// No headroom without demand: the windows remember a burst for a minute, and restarting what
/// `idle_timeout` just stopped kept pools from reaching zero. A CPU or memory rule that wants
/// more than there are (`resource_desired`, from use measured now) is demand of its own: an
/// app's load may be background work with no request in flight.
pub fn starts_now(
    need_now: u32,
    desired: u32,
    ready: u32,
    starting: u32,
    demand: u32,
    in_backoff: bool,
    resource_desired: u32,
) -> u32 {
    if in_backoff {
        return 0;
    }
    let wanted = demand > 0 || resource_desired > ready;
    let headroom = if wanted && starting == 0 && need_now == 0 {
        desired.saturating_sub(ready)
    } else {
        0
    };
    need_now.max(headroom)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn scaling() -> Scaling {
        Scaling {
            min: 0,
            max: 20,
            target_utilization: 0.5,
            scale_down_delay: Duration::from_secs(30),
            ..Scaling::default()
        }
    }

    /// Feeds `demand` every 100 ms for `ms` and returns the last decision.
    fn run(
        state: &mut AutoscalerState,
        from: u64,
        ms: u64,
        demand: u32,
        current: &mut u32,
        s: &Scaling,
    ) -> (u64, AutoscaleDecision) {
        let mut last = None;
        let mut t = from;
        while t < from + ms {
            let d = autoscale(
                state,
                AutoscaleInput {
                    now_ms: t,
                    demand,
                    current: *current,
                    concurrency: 10,
                    scaling: s,
                    routable: true,
                    floor: 0,
                    floor_why: "min",
                    resources: &[],
                },
            );
            if d.desired > *current || d.may_scale_down {
                *current = d.desired;
            }
            last = Some(d);
            t += 100;
        }
        (t, last.unwrap())
    }

    #[test]
    fn a_burst_panics_within_a_second_and_holds() {
        let s = scaling();
        let mut st = AutoscalerState::default();
        let mut current = 1;
        let (t, d) = run(&mut st, 0, 10_000, 4, &mut current, &s);
        assert_eq!(
            (d.desired, d.panic),
            (1, false),
            "4 in flight fits one instance at 5 per instance"
        );
        // 100 in flight: 20 instances at 5 each, capped by max = 20.
        let (t, d) = run(&mut st, t, 1_000, 100, &mut current, &s);
        assert!(d.panic, "{d:?}");
        assert_eq!(current, 20, "capacity within a second of the burst");
        // The burst ends; panic holds the capacity instead of dropping it at once.
        let (_, d) = run(&mut st, t, 2_000, 5, &mut current, &s);
        assert!(d.panic);
        assert_eq!(current, 20);
    }

    #[test]
    fn scale_down_waits_for_the_delay_and_never_cuts_to_zero() {
        let s = scaling();
        let mut st = AutoscalerState::default();
        let mut current = 1;
        let (t, _) = run(&mut st, 0, 70_000, 30, &mut current, &s);
        assert_eq!(current, 6);
        // Load drops to 5: one instance is enough, but only after demand stayed low for 30 s
        // (and the 60 s stable window has caught up).
        let (t, d) = run(&mut st, t, 20_000, 5, &mut current, &s);
        assert_eq!(current, 6, "too early: {d:?}");
        let (t, _) = run(&mut st, t, 90_000, 5, &mut current, &s);
        assert_eq!(current, 1);
        // No demand at all: the autoscaler keeps one; the idle reaper decides about zero.
        let (_, d) = run(&mut st, t, 120_000, 0, &mut current, &s);
        assert_eq!((current, d.desired), (1, 1));
    }

    /// The window averages of the plain list of samples the runs stand for.
    fn naive(samples: &[(u64, u32)], now: u64) -> (f64, f64) {
        let avg = |since: u64| {
            let w: Vec<_> = samples
                .iter()
                .filter(|(t, _)| *t > since && *t + STABLE_WINDOW_MS >= now)
                .collect();
            if w.is_empty() {
                0.0
            } else {
                w.iter().map(|(_, d)| f64::from(*d)).sum::<f64>() / w.len() as f64
            }
        };
        (
            avg(now.saturating_sub(STABLE_WINDOW_MS)),
            avg(now.saturating_sub(PANIC_WINDOW_MS)),
        )
    }

    #[test]
    fn runs_of_samples_average_like_the_samples_and_stay_small_when_idle() {
        let mut runs = VecDeque::new();
        let mut plain = Vec::new();
        let mut seed = 7u64;
        let mut t = 0;
        // Four minutes of bursty demand on an even 200 ms tick, then ten idle minutes.
        for step in 0..(20 * 60 * 5) {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let demand = if step < 4 * 60 * 5 {
                [0, 0, 3, 3, 3, 17][(seed >> 33) as usize % 6]
            } else {
                0
            };
            record(&mut runs, t, demand);
            plain.push((t, demand));
            let (stable, burst) = naive(&plain, t);
            assert!(
                (average(&runs, t.saturating_sub(STABLE_WINDOW_MS)) - stable).abs() < 1e-9
                    && (average(&runs, t.saturating_sub(PANIC_WINDOW_MS)) - burst).abs() < 1e-9,
                "at {t} ms"
            );
            t += 200;
        }
        assert_eq!(runs.len(), 1, "an idle minute is one run: {runs:?}");
        assert!(runs.capacity() <= 16, "capacity {}", runs.capacity());
    }

    #[test]
    fn runs_of_jittered_ticks_stay_within_a_sample_of_the_truth() {
        let mut runs = VecDeque::new();
        let mut plain = Vec::new();
        let mut t = 0;
        for step in 0..3000u64 {
            // Ticks late by up to 30 ms (a busy executor), demand changing now and then.
            t += 200 + (step * 7919 % 31);
            let demand = [0, 5, 5, 9][(step / 40 % 4) as usize];
            record(&mut runs, t, demand);
            plain.push((t, demand));
            let (stable, _) = naive(&plain, t);
            let got = average(&runs, t.saturating_sub(STABLE_WINDOW_MS));
            // A sample of 9 more or less at each end of a window of about 280.
            assert!(
                (got - stable).abs() <= 18.0 / 250.0,
                "at {t} ms: {got} vs {stable}"
            );
        }
    }

    #[test]
    fn respects_min_and_max() {
        let s = Scaling {
            min: 3,
            max: 5,
            ..scaling()
        };
        let mut st = AutoscalerState::default();
        let d = autoscale(
            &mut st,
            AutoscaleInput {
                now_ms: 0,
                demand: 0,
                current: 0,
                concurrency: 10,
                scaling: &s,
                routable: true,
                floor: 0,
                floor_why: "min",
                resources: &[],
            },
        );
        assert_eq!(d.desired, 3);
        let d = autoscale(
            &mut st,
            AutoscaleInput {
                now_ms: 100,
                demand: 500,
                current: 3,
                concurrency: 10,
                scaling: &s,
                routable: true,
                floor: 0,
                floor_why: "min",
                resources: &[],
            },
        );
        assert_eq!(d.desired, 5);
        let d = autoscale(
            &mut AutoscalerState::default(),
            AutoscaleInput {
                now_ms: 0,
                demand: 0,
                current: 0,
                concurrency: 10,
                scaling: &s,
                routable: false,
                floor: 0,
                floor_why: "min",
                resources: &[],
            },
        );
        assert_eq!(d.desired, 0, "versions nobody routes to keep no minimum");
    }

    #[test]
    fn starts_what_demand_needs_at_once_and_headroom_after() {
        // 200 requests at concurrency 10: 20 at once; the 0.7 headroom (29) waits for them.
        assert_eq!(starts_now(20, 29, 0, 0, 200, false, 0), 20);
        assert_eq!(
            starts_now(0, 29, 0, 20, 200, false, 0),
            0,
            "starts under way"
        );
        assert_eq!(
            starts_now(0, 29, 20, 0, 200, false, 0),
            9,
            "then the headroom"
        );
        assert_eq!(
            starts_now(3, 29, 0, 0, 200, true, 0),
            0,
            "backoff holds everything"
        );
        assert_eq!(
            starts_now(0, 5, 2, 0, 0, false, 0),
            0,
            "no demand, no headroom"
        );
        assert_eq!(starts_now(0, 5, 7, 0, 30, false, 0), 0, "never negative");
    }

    /// A burst from zero against a simulated pool whose starts take 600 ms: every tick (200 ms)
    /// runs `decide` and `autoscale` as the pool does, and the request path's `decide` runs as
    /// the requests queue. All 20 instances the 200 requests need start in the first tick, the
    /// headroom only once they are ready, and after the burst the pool reaches zero at
    /// `idle_timeout` with no restart.
    #[test]
    fn a_burst_from_zero_starts_its_need_at_once_and_goes_back_to_zero() {
        use crate::decide::{Observation, decide};
        let s = Scaling {
            min: 0,
            max: 40,
            idle_timeout: Duration::from_secs(10),
            scale_down_delay: Duration::from_secs(10),
            ..Scaling::default()
        };
        let mut st = AutoscalerState::default();
        let mut starting: Vec<u64> = Vec::new(); // ready-at times
        let mut ready = 0u32;
        let mut ready_at_20 = None;
        let mut idle_since = None;
        let mut starts = Vec::new();
        for t in (0..60_000u64).step_by(100) {
            ready += starting.iter().filter(|r| **r <= t).count() as u32;
            starting.retain(|r| *r > t);
            let demand = if t < 30_000 { 200 } else { 0 };
            if ready >= 20 && ready_at_20.is_none() {
                ready_at_20 = Some(t);
            }
            if demand == 0 && idle_since.is_none() {
                idle_since = Some(t);
            }
            let served = demand.min(ready * 10);
            let idle_for = Duration::from_millis(t - idle_since.unwrap_or(t));
            let obs = Observation {
                ready,
                starting: starting.len() as u32,
                in_flight: served,
                waiting: demand - served,
                concurrency: 10,
                idle: if demand == 0 {
                    (0..ready).map(|i| (i.to_string(), idle_for)).collect()
                } else {
                    vec![]
                },
                routable: true,
                in_backoff: false,
                floor: 0,
                hold: 0,
            };
            let d = decide(&obs, &s);
            let mut n = d.start;
            if t % 200 == 0 {
                let a = autoscale(
                    &mut st,
                    AutoscaleInput {
                        now_ms: t,
                        demand,
                        current: ready + starting.len() as u32,
                        concurrency: 10,
                        scaling: &s,
                        routable: true,
                        floor: 0,
                        floor_why: "min",
                        resources: &[],
                    },
                );
                n = starts_now(n, a.desired, ready, starting.len() as u32, demand, false, 0);
            }
            ready -= d.stop.len() as u32;
            if n > 0 {
                starts.push((t, n));
            }
            starting.extend((0..n).map(|_| t + 600));
        }
        assert_eq!(starts[0], (0, 20), "the whole need at once: {starts:?}");
        assert_eq!(
            starts[1],
            (600, 9),
            "headroom once they were ready: {starts:?}"
        );
        assert_eq!(starts.len(), 2, "{starts:?}");
        assert_eq!(ready_at_20, Some(600), "capacity = one start time");
        assert_eq!(ready, 0, "back to zero after the burst");
    }

    /// An app capped at 0.5 core per instance with `cpu_target = 0.6`, driven as the pool
    /// drives it (200 ms ticks, samples of each instance's CPU counter, starts taking 1 s,
    /// `starts_now`, draining on `may_scale_down`): 1.8 cores of CPU-bound work for two minutes
    /// with two requests in flight (the concurrency rule alone wants one instance), then
    /// 0.1 core. It settles at 6 (0.3 core each, 60%), holds there without flapping, and
    /// after the load drops shrinks only once `scale_down_delay` has passed.
    #[test]
    fn a_cpu_rule_scales_out_holds_and_scales_in_after_the_delay() {
        use crate::utilization::{Resource, ResourceRule, UsageHistory};
        use stratus_runtime::ResourceUsage;
        let s = Scaling {
            min: 1,
            max: 10,
            scale_down_delay: Duration::from_secs(20),
            cpu_target: Some(0.6),
            ..Scaling::default()
        };
        let rule = ResourceRule {
            resource: Resource::Cpu,
            target: 0.6,
            limit: 0.5,
        };
        let mut st = AutoscalerState::default();
        let mut ready: Vec<(UsageHistory, u64)> = vec![(UsageHistory::default(), 0)];
        let mut starting: Vec<u64> = Vec::new();
        let mut events: Vec<(u64, u32, u32, String)> = Vec::new();
        for t in (0..240_000u64).step_by(200) {
            for _ in starting.iter().filter(|r| **r <= t) {
                ready.push((UsageHistory::default(), 0));
            }
            starting.retain(|r| *r > t);
            let load = if t < 120_000 { 1.8 } else { 0.1 };
            let share = (load / ready.len() as f64).min(0.5);
            for (h, ns) in ready.iter_mut() {
                *ns += (share * 200.0 * 1e6) as u64;
                h.record(
                    t,
                    ResourceUsage {
                        cpu_time: Some(Duration::from_nanos(*ns)),
                        memory_bytes: None,
                    },
                );
            }
            let obs = [ResourceObservation {
                rule,
                utilization: ready
                    .iter()
                    .filter_map(|(h, _)| rule.utilization(h))
                    .collect(),
            }];
            let current = (ready.len() + starting.len()) as u32;
            let a = autoscale(
                &mut st,
                AutoscaleInput {
                    now_ms: t,
                    demand: 2,
                    current,
                    concurrency: 50,
                    scaling: &s,
                    routable: true,
                    floor: 1,
                    floor_why: "min 1",
                    resources: &obs,
                },
            );
            let n = starts_now(
                0,
                a.desired,
                ready.len() as u32,
                starting.len() as u32,
                2,
                false,
                a.resource_desired,
            );
            starting.extend((0..n).map(|_| t + 1000));
            let mut to = current + n;
            if a.may_scale_down && starting.is_empty() {
                ready.truncate(a.desired as usize);
                to = a.desired;
            }
            if to != current {
                events.push((t, current, to, a.reason.clone()));
            }
        }
        let ups: Vec<_> = events.iter().filter(|e| e.2 > e.1).collect();
        assert!(
            ups.iter()
                .all(|e| e.3.starts_with("cpu ") && e.3.contains("of 0.5 cores")),
            "scale-outs are the CPU rule's: {events:?}"
        );
        assert_eq!(
            ups.first().map(|e| e.3.as_str()),
            Some("cpu 100% of 0.5 cores (mean of 1) > target 60%: wants 2")
        );
        let at_load_end: Vec<_> = events.iter().filter(|e| e.0 < 120_000).collect();
        assert_eq!(at_load_end.last().unwrap().2, 6, "{events:?}");
        assert!(
            at_load_end.iter().all(|e| e.2 > e.1),
            "no scale-in while loaded: {events:?}"
        );
        assert!(
            at_load_end.last().unwrap().0 < 40_000,
            "settled within 40 s: {events:?}"
        );
        let downs: Vec<_> = events.iter().filter(|e| e.2 < e.1).collect();
        assert!(!downs.is_empty(), "{events:?}");
        assert!(
            downs[0].0 >= 120_000 + 20_000,
            "not before scale_down_delay: {events:?}"
        );
        // 0.1 core at 60% of 0.5 core: one instance, the floor.
        assert_eq!(ready.len(), 1, "{events:?}");
    }

    #[test]
    fn the_floor_sets_the_size_and_says_so() {
        let s = scaling();
        let d = autoscale(
            &mut AutoscalerState::default(),
            AutoscaleInput {
                now_ms: 0,
                demand: 0,
                current: 0,
                concurrency: 10,
                scaling: &s,
                routable: true,
                floor: 20,
                floor_why: "provisioned 20 by schedule \"0 0 9 * * *\" (UTC)",
                resources: &[],
            },
        );
        assert_eq!(d.desired, 20);
        assert_eq!(
            d.reason,
            "floor 20: provisioned 20 by schedule \"0 0 9 * * *\" (UTC)"
        );
    }
}
