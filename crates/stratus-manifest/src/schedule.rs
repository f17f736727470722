//! Timer schedules: a cron expression in a time zone, and the pure policy deciding which fire is
//! due. Parsing lives here so an invalid expression is a manifest error with file:line:key; the
//! events crate uses the same [`Schedule`] to run the timers.
//!
//! Cron parsing is `croner` (five fields, or six with seconds first, `L`/`W`/`#`, aliases such as
//! `@hourly`); time zones are `chrono-tz`, so a fire follows the zone's wall clock across DST.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

/// What a timer should do now, given when it last fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireDecision {
    /// Never seen before: record `now` as the point fires are counted from, fire nothing (a new
    /// trigger does not make up for fires from before it existed).
    Baseline(i64),
    /// Nothing due; the next fire is at this time (ms), if the schedule has one.
    Wait(Option<i64>),
    /// Fire once for the scheduled time `at`; `missed` earlier fires since the last one were
    /// skipped (downtime): they are folded into this one rather than run as a flood.
    Fire { at: i64, missed: u64 },
}

impl Schedule {
    pub fn parse(cron: &str, timezone: &str) -> Result<Self, String> {
        let tz = Tz::from_str(timezone).map_err(|_| {
            format!(
                "unknown time zone \"{timezone}\": use an IANA name like \"UTC\", \"Asia/Shanghai\" or \"Europe/Berlin\""
            )
        })?;
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(cron)
            .map_err(|e| {
                format!(
                    "invalid cron expression \"{cron}\" ({e}): write five fields (minute hour day month weekday) or six with seconds first, like \"0 */5 * * * *\""
                )
            })?;
        Ok(Self { cron, tz })
    }

    fn at(&self, ms: i64) -> DateTime<Tz> {
        Utc.timestamp_millis_opt(ms)
            .single()
            .unwrap_or_default()
            .with_timezone(&self.tz)
    }

    /// The first scheduled time strictly after `ms`.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        self.cron
            .find_next_occurrence(&self.at(ms), false)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// The last scheduled time at or before `ms`.
    pub fn last_at_or_before(&self, ms: i64) -> Option<i64> {
        self.cron
            .find_previous_occurrence(&self.at(ms), true)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// The missed-fire policy: with the last fire at `last` and the clock at `now`, fire the most
    /// recent scheduled time not yet fired, once, however many were missed.
    pub fn decide(&self, last: Option<i64>, now: i64) -> FireDecision {
        let Some(last) = last else {
            return FireDecision::Baseline(now);
        };
        let Some(next) = self.next_after(last) else {
            return FireDecision::Wait(None);
        };
        if next > now {
            return FireDecision::Wait(Some(next));
        }
        let at = self.last_at_or_before(now).unwrap_or(next).max(next);
        FireDecision::Fire {
            at,
            missed: self.count_between(next, at),
        }
    }

    /// Scheduled times in `[from, to)`, counted up to a bound (only reported, never run).
    fn count_between(&self, from: i64, to: i64) -> u64 {
        let mut n = 0;
        let mut t = from;
        while t < to && n < 10_000 {
            n += 1;
            match self.next_after(t) {
                Some(next) => t = next,
                None => break,
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn five_and_six_fields_and_time_zones() {
        let s = Schedule::parse("0 */5 * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(ms("2026-01-01T00:01:00Z")),
            Some(ms("2026-01-01T00:05:00Z"))
        );
        // Five fields: minute granularity.
        let s = Schedule::parse("30 9 * * *", "Asia/Shanghai").unwrap();
        // 09:30 in Shanghai is 01:30 UTC.
        assert_eq!(
            s.next_after(ms("2026-01-01T00:00:00Z")),
            Some(ms("2026-01-01T01:30:00Z"))
        );
        let s = Schedule::parse("* * * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(ms("2026-01-01T00:00:00.500Z")),
            Some(ms("2026-01-01T00:00:01Z"))
        );
    }

    #[test]
    fn bad_input_says_why() {
        let e = Schedule::parse("61 * * * *", "UTC").unwrap_err();
        assert!(e.contains("invalid cron expression"), "{e}");
        let e = Schedule::parse("every minute", "UTC").unwrap_err();
        assert!(e.contains("five fields"), "{e}");
        let e = Schedule::parse("* * * * *", "Mars/Olympus").unwrap_err();
        assert!(e.contains("unknown time zone"), "{e}");
    }

    #[test]
    fn missed_fires_run_once_with_the_latest_time() {
        let s = Schedule::parse("0 * * * * *", "UTC").unwrap();
        let t0 = ms("2026-01-01T00:00:00Z");
        assert_eq!(s.decide(None, t0 + 5), FireDecision::Baseline(t0 + 5));
        assert_eq!(
            s.decide(Some(t0), t0 + 30_000),
            FireDecision::Wait(Some(t0 + 60_000))
        );
        assert_eq!(
            s.decide(Some(t0), t0 + 60_000),
            FireDecision::Fire {
                at: t0 + 60_000,
                missed: 0
            }
        );
        // Down for ten minutes and a half: one fire, for 00:10, nine folded into it.
        assert_eq!(
            s.decide(Some(t0), t0 + 630_000),
            FireDecision::Fire {
                at: t0 + 600_000,
                missed: 9
            }
        );
        // After firing 00:10 nothing more is due until 00:11.
        assert_eq!(
            s.decide(Some(t0 + 600_000), t0 + 630_000),
            FireDecision::Wait(Some(t0 + 660_000))
        );
    }
}
