//! The warm floor: how many instances a routable version keeps ready with no traffic at a given
//! wall-clock time, from `min`, `provisioned` and `[[scaling.schedule]]`.
//!
//! `min` never changes (it is also how many instances an app's deploy starts before traffic
//! moves); `provisioned` is FC's provisioned count, and a schedule entry replaces it from each
//! time its cron matches until another entry's next match. The floor is `max(min, provisioned
//! at t)`. Only the clock decides which entry is in force (the entry whose latest match at or
//! before `t` is the most recent), never when the server started or the version was deployed,
//! so a restart, a deploy or a second node all find the same floor. Pure: the time comes in.

use serde::Serialize;
use stratus_core::{ProvisionedSchedule, Scaling};
use stratus_manifest::schedule::Schedule;

/// The parsed `[[scaling.schedule]]` of a version (parsed once per pool).
#[derive(Debug, Clone, Default)]
pub struct FloorSchedule {
    entries: Vec<(Schedule, ProvisionedSchedule)>,
}

impl FloorSchedule {
    /// Parses the entries; one that does not parse (the manifest refuses those, so only a spec
    /// stored by another build could hold one) is left out and logged.
    pub fn new(scaling: &Scaling) -> Self {
        let entries = scaling
            .schedule
            .iter()
            .filter_map(|e| match Schedule::parse(&e.cron, &e.timezone) {
                Ok(s) => Some((s, e.clone())),
                Err(why) => {
                    tracing::warn!("scaling.schedule entry left out: {why}");
                    None
                }
            })
            .collect();
        Self { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The floor at one moment, and where it comes from (for `stratus info`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Floor {
    /// Instances kept ready: `max(min, provisioned)`.
    pub effective: u32,
    pub min: u32,
    /// The provisioned count in force: the schedule entry's, else `scaling.provisioned`.
    pub provisioned: u32,
    /// What sets `effective`: `min`, `provisioned` or `schedule`.
    pub source: &'static str,
    /// The schedule entry in force, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ActiveEntry>,
    /// The next time a schedule entry fires, and the provisioned count it sets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<FloorChange>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveEntry {
    /// Its position in `[[scaling.schedule]]`.
    pub index: usize,
    pub cron: String,
    pub timezone: String,
    /// When it last fired (ms since the epoch): the entry has been in force since then.
    pub since: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FloorChange {
    pub at: i64,
    pub provisioned: u32,
}

impl Floor {
    /// Why the floor is what it is, for scaling decisions' reasons.
    pub fn describe(&self) -> String {
        match (&self.schedule, self.source) {
            (Some(e), "schedule") => format!(
                "provisioned {} by schedule \"{}\" ({})",
                self.provisioned, e.cron, e.timezone
            ),
            (_, "provisioned") => format!("provisioned {}", self.provisioned),
            _ => format!("min {}", self.min),
        }
    }

    /// Until when (ms since the epoch) this floor holds: the next schedule fire, if any.
    pub fn valid_until(&self) -> Option<i64> {
        self.next.map(|n| n.at)
    }
}

/// The floor at `now_ms` (wall clock, ms since the epoch). Two entries matching the same instant
/// resolve to the later one in the file.
pub fn floor_at(scaling: &Scaling, schedule: &FloorSchedule, now_ms: i64) -> Floor {
    let mut active: Option<(i64, usize)> = None;
    let mut next: Option<FloorChange> = None;
    for (i, (s, e)) in schedule.entries.iter().enumerate() {
        if let Some(last) = s.last_at_or_before(now_ms)
            && active.is_none_or(|(t, _)| last >= t)
        {
            active = Some((last, i));
        }
        if let Some(at) = s.next_after(now_ms)
            && next.is_none_or(|n| at <= n.at)
        {
            next = Some(FloorChange {
                at,
                provisioned: e.provisioned,
            });
        }
    }
    let (provisioned, entry) = match active {
        Some((since, i)) => {
            let e = &schedule.entries[i].1;
            (
                e.provisioned,
                Some(ActiveEntry {
                    index: i,
                    cron: e.cron.clone(),
                    timezone: e.timezone.clone(),
                    since,
                }),
            )
        }
        None => (scaling.provisioned, None),
    };
    let source = if provisioned <= scaling.min {
        "min"
    } else if entry.is_some() {
        "schedule"
    } else {
        "provisioned"
    };
    Floor {
        effective: scaling.min.max(provisioned).min(scaling.max),
        min: scaling.min,
        provisioned,
        source,
        schedule: entry,
        next,
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn entry(cron: &str, tz: &str, n: u32) -> ProvisionedSchedule {
        ProvisionedSchedule {
            cron: cron.into(),
            timezone: tz.into(),
            provisioned: n,
        }
    }

    fn scaling(min: u32, provisioned: u32, schedule: Vec<ProvisionedSchedule>) -> Scaling {
        Scaling {
            min,
            max: 50,
            provisioned,
            schedule,
            ..Scaling::default()
        }
    }

    fn at(s: &Scaling, t: &str) -> Floor {
        floor_at(s, &FloorSchedule::new(s), ms(t))
    }

    #[test]
    fn without_a_schedule_the_floor_is_the_larger_of_min_and_provisioned() {
        let f = at(&scaling(1, 0, vec![]), "2026-03-02T10:00:00Z");
        assert_eq!((f.effective, f.source, f.next), (1, "min", None));
        let f = at(&scaling(1, 3, vec![]), "2026-03-02T10:00:00Z");
        assert_eq!((f.effective, f.source), (3, "provisioned"));
        assert_eq!(f.describe(), "provisioned 3");
        let f = at(&scaling(4, 3, vec![]), "2026-03-02T10:00:00Z");
        assert_eq!((f.effective, f.source), (4, "min"));
        // Never above max (the manifest refuses that, a stored spec might not).
        let s = Scaling {
            max: 2,
            ..scaling(0, 3, vec![])
        };
        assert_eq!(at(&s, "2026-03-02T10:00:00Z").effective, 2);
    }

    /// A member day: 20 from 09:00, back to 2 from 21:00, every day; the clock alone decides.
    #[test]
    fn a_daily_schedule_holds_each_entry_until_the_next_one_fires() {
        let s = scaling(
            1,
            5,
            vec![
                entry("0 0 9 * * *", "UTC", 20),
                entry("0 0 21 * * *", "UTC", 2),
            ],
        );
        let f = at(&s, "2026-03-02T08:59:59Z");
        assert_eq!(
            (f.effective, f.source),
            (2, "schedule"),
            "before 09:00 yesterday's 21:00 entry is in force, not the static 5: {f:?}"
        );
        assert_eq!(
            f.next,
            Some(FloorChange {
                at: ms("2026-03-02T09:00:00Z"),
                provisioned: 20
            })
        );
        assert_eq!(f.valid_until(), Some(ms("2026-03-02T09:00:00Z")));
        let f = at(&s, "2026-03-02T09:00:00Z");
        assert_eq!(f.effective, 20, "in force from the fire time itself");
        assert_eq!(f.schedule.as_ref().unwrap().index, 0);
        assert_eq!(
            f.schedule.as_ref().unwrap().since,
            ms("2026-03-02T09:00:00Z")
        );
        assert_eq!(
            f.describe(),
            "provisioned 20 by schedule \"0 0 9 * * *\" (UTC)"
        );
        assert_eq!(at(&s, "2026-03-02T20:59:59.999Z").effective, 20);
        let f = at(&s, "2026-03-02T21:00:00Z");
        assert_eq!((f.effective, f.provisioned), (2, 2));
        // Below min the floor is min, whatever the schedule says.
        let s = scaling(3, 0, vec![entry("0 0 21 * * *", "UTC", 2)]);
        let f = at(&s, "2026-03-02T22:00:00Z");
        assert_eq!((f.effective, f.source, f.provisioned), (3, "min", 2));
    }

    #[test]
    fn the_static_count_applies_until_an_entry_has_ever_fired() {
        // Only on 1 June 2026: before it the static provisioned count, after it the entry's.
        let s = scaling(0, 4, vec![entry("0 0 0 1 6 * 2026", "UTC", 9)]);
        let f = at(&s, "2026-05-31T23:59:59Z");
        assert_eq!((f.effective, f.source), (4, "provisioned"));
        assert_eq!(f.next.unwrap().at, ms("2026-06-01T00:00:00Z"));
        let f = at(&s, "2026-07-01T00:00:00Z");
        assert_eq!((f.effective, f.next), (9, None));
    }

    #[test]
    fn entries_follow_their_time_zone_like_timer_triggers() {
        // 09:00 in Shanghai is 01:00 UTC.
        let s = scaling(
            0,
            0,
            vec![
                entry("0 0 9 * * *", "Asia/Shanghai", 20),
                entry("0 0 18 * * *", "Asia/Shanghai", 0),
            ],
        );
        assert_eq!(at(&s, "2026-03-02T00:59:59Z").effective, 0);
        assert_eq!(at(&s, "2026-03-02T01:00:00Z").effective, 20);
        assert_eq!(at(&s, "2026-03-02T09:59:59Z").effective, 20);
        assert_eq!(at(&s, "2026-03-02T10:00:00Z").effective, 0);
    }

    #[test]
    fn entries_firing_together_resolve_to_the_later_one() {
        let s = scaling(
            0,
            0,
            vec![
                entry("0 0 9 * * *", "UTC", 20),
                entry("0 0 9 * * 1", "UTC", 30),
            ],
        );
        // 2 March 2026 is a Monday: both match 09:00; the Monday entry is later in the file.
        assert_eq!(at(&s, "2026-03-02T09:30:00Z").effective, 30);
        // Tuesday: only the daily one fired at 09:00, which is later than Monday's.
        assert_eq!(at(&s, "2026-03-03T09:30:00Z").effective, 20);
    }

    /// Simulated time: a minute-by-minute walk over two days sees the floor change exactly at
    /// the fire times, and each cached floor holds until its `valid_until`.
    #[test]
    fn a_cached_floor_holds_until_its_next_change() {
        let s = scaling(
            1,
            0,
            vec![
                entry("0 0 9 * * *", "UTC", 20),
                entry("0 0 21 * * *", "UTC", 2),
            ],
        );
        let sched = FloorSchedule::new(&s);
        let start = ms("2026-03-02T00:00:00Z");
        let mut cached = floor_at(&s, &sched, start);
        let mut changes = Vec::new();
        for minute in 0..(48 * 60) {
            let now = start + minute * 60_000;
            if cached.valid_until().is_some_and(|t| now >= t) {
                let next = floor_at(&s, &sched, now);
                if next.effective != cached.effective {
                    changes.push((now, next.effective));
                }
                cached = next;
            }
            assert_eq!(cached, floor_at(&s, &sched, now), "at minute {minute}");
        }
        assert_eq!(
            changes,
            vec![
                (ms("2026-03-02T09:00:00Z"), 20),
                (ms("2026-03-02T21:00:00Z"), 2),
                (ms("2026-03-03T09:00:00Z"), 20),
                (ms("2026-03-03T21:00:00Z"), 2),
            ]
        );
    }
}
