use std::time::Duration;

use stratus_core::Scaling;

/// What a pool looks like at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// Instances taking requests.
    pub ready: u32,
    /// Instances being started.
    pub starting: u32,
    /// Requests being served, over all ready instances.
    pub in_flight: u32,
    /// Requests waiting for a slot.
    pub waiting: u32,
    /// Slots per instance (`limits.concurrency`).
    pub concurrency: u32,
    /// Ready instances with no request in flight, with how long each has been idle.
    pub idle: Vec<(String, Duration)>,
    /// Whether the version is served by an alias; versions nobody routes to keep no minimum.
    pub routable: bool,
    /// Whether a restart backoff is in force (after crashes or failed starts).
    pub in_backoff: bool,
    /// The warm floor now (`floor_at`: provisioned instances, by schedule or not); at least
    /// `max(scaling.min, floor)` instances are kept for a routable version.
    pub floor: u32,
    /// Instances the CPU and memory rules want (the last tick's `resource_desired`): the idle
    /// reaper leaves them, since an instance with no request in flight may still be busy.
    pub hold: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScaleDecision {
    pub start: u32,
    /// Idle instances to drain and stop.
    pub stop: Vec<String>,
}

/// Enough instances for what is in flight and waiting (never more than `max`), the floor (`min`
/// or provisioned) for routable versions, and idle instances past `idle_timeout` stopped down
/// to that floor (or what the CPU and memory rules hold).
pub fn decide(obs: &Observation, scaling: &Scaling) -> ScaleDecision {
    let conc = obs.concurrency.max(1);
    let demand = obs.in_flight + obs.waiting;
    let floor = if obs.routable {
        scaling.min.max(obs.floor).min(scaling.max)
    } else {
        0
    };
    let needed = demand.div_ceil(conc).max(floor).min(scaling.max);
    let have = obs.ready + obs.starting;
    let start = if obs.in_backoff {
        0
    } else {
        needed.saturating_sub(have)
    };

    let mut stop = Vec::new();
    if obs.waiting == 0 {
        let mut idle: Vec<_> = obs
            .idle
            .iter()
            .filter(|(_, d)| *d >= scaling.idle_timeout)
            .collect();
        // Longest idle first.
        idle.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
        let keep = floor.max(obs.in_flight.div_ceil(conc)).max(obs.hold);
        let removable = obs.ready.saturating_sub(keep) as usize;
        stop = idle
            .into_iter()
            .take(removable)
            .map(|(id, _)| id.clone())
            .collect();
    }
    ScaleDecision { start, stop }
}

/// Delay before the next start after `failures` consecutive crashes or failed starts:
/// 100 ms doubling up to 30 s.
pub fn restart_backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let ms = 100u64.saturating_mul(1u64 << (failures - 1).min(20));
    Duration::from_millis(ms.min(30_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaling(min: u32, max: u32) -> Scaling {
        Scaling {
            min,
            max,
            idle_timeout: Duration::from_secs(60),
            ..Scaling::default()
        }
    }

    fn obs() -> Observation {
        Observation {
            concurrency: 10,
            routable: true,
            ..Default::default()
        }
    }

    #[test]
    fn starts_one_instance_from_zero_on_demand() {
        let o = Observation {
            waiting: 1,
            ..obs()
        };
        assert_eq!(decide(&o, &scaling(0, 4)).start, 1);
    }

    #[test]
    fn counts_starting_instances_as_capacity() {
        let o = Observation {
            waiting: 5,
            starting: 1,
            ..obs()
        };
        assert_eq!(decide(&o, &scaling(0, 4)).start, 0);
    }

    #[test]
    fn adds_instances_when_all_are_busy_up_to_max() {
        let o = Observation {
            ready: 2,
            in_flight: 20,
            waiting: 25,
            ..obs()
        };
        assert_eq!(decide(&o, &scaling(0, 4)).start, 2, "capped by max");
        let o = Observation {
            ready: 2,
            in_flight: 20,
            waiting: 3,
            ..obs()
        };
        assert_eq!(decide(&o, &scaling(0, 10)).start, 1);
    }

    #[test]
    fn keeps_min_for_routable_versions_only() {
        assert_eq!(decide(&obs(), &scaling(2, 4)).start, 2);
        let o = Observation {
            routable: false,
            ..obs()
        };
        assert_eq!(decide(&o, &scaling(2, 4)).start, 0);
    }

    #[test]
    fn backoff_holds_starts() {
        let o = Observation {
            waiting: 3,
            in_backoff: true,
            ..obs()
        };
        assert_eq!(decide(&o, &scaling(1, 4)).start, 0);
    }

    #[test]
    fn stops_idle_instances_past_timeout_down_to_min() {
        let idle = vec![
            ("a".to_string(), Duration::from_secs(61)),
            ("b".to_string(), Duration::from_secs(120)),
            ("c".to_string(), Duration::from_secs(5)),
        ];
        let o = Observation {
            ready: 3,
            idle: idle.clone(),
            ..obs()
        };
        assert_eq!(
            decide(&o, &scaling(0, 4)).stop,
            vec!["b".to_string(), "a".to_string()]
        );
        assert_eq!(decide(&o, &scaling(2, 4)).stop, vec!["b".to_string()]);
        let o = Observation {
            ready: 3,
            idle,
            waiting: 1,
            ..obs()
        };
        assert!(
            decide(&o, &scaling(0, 4)).stop.is_empty(),
            "never while requests wait"
        );
    }

    #[test]
    fn provisioned_instances_are_started_and_kept_idle() {
        // A provisioned floor of 3 above min 1: started with no demand, never reaped.
        let o = Observation { floor: 3, ..obs() };
        assert_eq!(decide(&o, &scaling(1, 4)).start, 3);
        let idle: Vec<_> = (0..4)
            .map(|i| (i.to_string(), Duration::from_secs(600)))
            .collect();
        let o = Observation {
            ready: 4,
            idle: idle.clone(),
            floor: 3,
            ..obs()
        };
        assert_eq!(
            decide(&o, &scaling(1, 4)).stop.len(),
            1,
            "down to 3, not to min"
        );
        // Capped by max; and a version nobody routes to keeps none.
        let o = Observation { floor: 9, ..obs() };
        assert_eq!(decide(&o, &scaling(0, 4)).start, 4);
        let o = Observation {
            floor: 3,
            routable: false,
            ..obs()
        };
        assert_eq!(decide(&o, &scaling(0, 4)).start, 0);
        // What the CPU rule holds is not reaped either.
        let o = Observation {
            ready: 4,
            idle,
            hold: 4,
            ..obs()
        };
        assert!(decide(&o, &scaling(0, 4)).stop.is_empty());
    }

    #[test]
    fn unroutable_versions_scale_to_zero() {
        let idle = vec![("a".to_string(), Duration::from_secs(61))];
        let o = Observation {
            ready: 1,
            idle,
            routable: false,
            ..obs()
        };
        assert_eq!(decide(&o, &scaling(1, 4)).stop, vec!["a".to_string()]);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(restart_backoff(0), Duration::ZERO);
        assert_eq!(restart_backoff(1), Duration::from_millis(100));
        assert_eq!(restart_backoff(4), Duration::from_millis(800));
        assert_eq!(restart_backoff(30), Duration::from_secs(30));
    }
}
