//! Keyframe schedules: a cron expression with seconds read in an IANA time zone, and its next fire time (pure).
//!
//! Next times are computed with `croner` in the producer's zone on every
//! call, so daylight-saving changes move the wall-clock schedule correctly.
//! Fire times are whole seconds, so every replica aims at the same instant.

use chrono::{DateTime, DurationRound, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

/// A cron expression with seconds, read in an IANA time zone; or adaptive
/// pacing, whose times come from the measured drift (`crate::pacing`).
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    cron: Option<(croner::Cron, Tz)>,
}

impl Schedule {
    pub(super) fn new(cron: croner::Cron, tz: Tz) -> Self {
        Self {
            cron: Some((cron, tz)),
        }
    }

    pub(super) fn adaptive() -> Self {
        Self { cron: None }
    }

    /// Whether keyframes are paced by the drift found rather than a cron.
    pub(crate) fn is_adaptive(&self) -> bool {
        self.cron.is_none()
    }

    /// The first fire time strictly after `after`, on a whole second; `None`
    /// when the expression has no later time (or the schedule is adaptive). Whole seconds give every
    /// replica the same instant (croner keeps the sub-second part of its
    /// start, which would give each replica its own phase).
    pub(crate) fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (cron, tz) = self.cron.as_ref()?;
        let second = TimeDelta::seconds(1);
        let after = after.duration_trunc(second).ok()?;
        let local = tz.from_utc_datetime(&after.naive_utc());
        cron.find_next_occurrence(&local, false)
            .ok()
            .and_then(|t| t.with_timezone(&Utc).duration_trunc(second).ok())
            .filter(|t| *t > after)
    }
}

/// Parses a cron expression with seconds, as the scheduler reads it.
pub(crate) fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(expr: &str) -> croner::Cron {
        parse_cron(expr).unwrap()
    }

    fn fire(cron: &croner::Cron, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        Schedule::new(cron.clone(), tz).next_after(after)
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_fire_in_utc() {
        let cron = parsed("0 */5 * * * *");
        assert_eq!(
            fire(&cron, chrono_tz::UTC, at("2026-03-01T10:02:30Z")),
            Some(at("2026-03-01T10:05:00Z"))
        );
        // Strictly after: a fire time exactly now is not repeated.
        assert_eq!(
            fire(&cron, chrono_tz::UTC, at("2026-03-01T10:05:00Z")),
            Some(at("2026-03-01T10:10:00Z"))
        );
    }

    #[test]
    fn fire_times_are_whole_seconds_whatever_the_phase_of_now() {
        let every = parsed("* * * * * *");
        let every2 = parsed("*/2 * * * * *");
        let cases = [
            (&every, "2026-03-01T10:00:00.000Z", "2026-03-01T10:00:01Z"),
            (&every, "2026-03-01T10:00:00.001Z", "2026-03-01T10:00:01Z"),
            (&every, "2026-03-01T10:00:00.999Z", "2026-03-01T10:00:01Z"),
            (&every2, "2026-03-01T10:00:00.250Z", "2026-03-01T10:00:02Z"),
            (&every2, "2026-03-01T10:00:01.750Z", "2026-03-01T10:00:02Z"),
            (&every2, "2026-03-01T10:00:02.000Z", "2026-03-01T10:00:04Z"),
        ];
        for (cron, now, expected) in cases {
            assert_eq!(
                fire(cron, chrono_tz::UTC, at(now)),
                Some(at(expected)),
                "after {now}"
            );
        }
    }

    #[test]
    fn daily_schedule_follows_wall_clock_across_dst() {
        // 02:30 local every day in New York. On 2026-03-08 clocks jump from 02:00 to 03:00.
        let cron = parsed("0 30 2 * * *");
        let ny = chrono_tz::America::New_York;
        // The day before: 02:30 EST = 07:30 UTC.
        assert_eq!(
            fire(&cron, ny, at("2026-03-07T00:00:00Z")),
            Some(at("2026-03-07T07:30:00Z"))
        );
        // The days after the change: 02:30 EDT = 06:30 UTC, one hour earlier in UTC.
        let after_change = fire(&cron, ny, at("2026-03-08T12:00:00Z")).unwrap();
        assert_eq!(after_change, at("2026-03-09T06:30:00Z"));
        // 09:00 local every day keeps 09:00 local on both sides of the change.
        let nine = parsed("0 0 9 * * *");
        assert_eq!(
            fire(&nine, ny, at("2026-03-07T00:00:00Z")),
            Some(at("2026-03-07T14:00:00Z"))
        );
        assert_eq!(
            fire(&nine, ny, at("2026-03-08T00:00:00Z")),
            Some(at("2026-03-08T13:00:00Z"))
        );
    }

    #[test]
    fn fall_back_runs_once() {
        // On 2026-11-01 New York repeats 01:00-02:00. A 01:30 daily job fires once that day.
        let cron = parsed("0 30 1 * * *");
        let ny = chrono_tz::America::New_York;
        let first = fire(&cron, ny, at("2026-11-01T00:00:00Z")).unwrap();
        assert_eq!(first, at("2026-11-01T05:30:00Z"));
        let second = fire(&cron, ny, first).unwrap();
        assert_eq!(second, at("2026-11-02T06:30:00Z"));
    }
}
