//! Keyframe schedules: the next fire time of a cron expression in a time zone (pure), and the per-producer loop that sleeps until it.
//!
//! Next times are computed with `croner` in the producer's IANA zone on every
//! iteration, so daylight-saving changes move the wall-clock schedule
//! correctly. Fire times are whole seconds, so every replica aims at the same
//! instant, and each run claims the tick it serves (`Keyframer::run_scheduled`):
//! one tick is one run across replicas. After a run the next time is computed
//! from the current time: a tick missed while the daemon was busy or down is
//! skipped, never run twice.

use chrono::{DateTime, DurationRound, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{parse_cron, ProducerConfig};
use crate::keyframe::run::{KeyframeError, Keyframer};

/// The first fire time of `cron` strictly after `after`, read in `tz`, on a whole second.
pub(crate) fn next_fire(
    cron: &croner::Cron,
    tz: Tz,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let second = TimeDelta::seconds(1);
    // From the whole second: croner keeps the sub-second part of its start,
    // which would give each replica its own phase.
    let after = after.duration_trunc(second).ok()?;
    let local = tz.from_utc_datetime(&after.naive_utc());
    cron.find_next_occurrence(&local, false)
        .ok()
        .and_then(|t| t.with_timezone(&Utc).duration_trunc(second).ok())
        .filter(|t| *t > after)
}

/// Runs `p`'s keyframes on its schedule until `cancel`. A run under way when
/// `cancel` fires is interrupted by the keyframer (recorded `failed`, its
/// lease released), not dropped.
pub(crate) async fn run_schedule(
    keyframer: Keyframer,
    p: ProducerConfig,
    cancel: CancellationToken,
) {
    let cron = match parse_cron(&p.schedule) {
        Ok(c) => c,
        Err(e) => {
            // The config was validated; this cannot happen with a checked config.
            warn!(producer = %p.name, error = %e, "invalid schedule; keyframes disabled");
            return;
        }
    };
    let tz = p.timezone();
    let mut served: Option<DateTime<Utc>> = None;
    loop {
        let now = Utc::now();
        // Never a tick at or before the last one, even if the clock stepped back.
        let after = served.map_or(now, |t| t.max(now));
        let Some(next) = next_fire(&cron, tz, after) else {
            warn!(producer = %p.name, schedule = %p.schedule, "schedule has no future fire time");
            return;
        };
        let wait = (next - now).to_std().unwrap_or_default();
        debug!(producer = %p.name, next = %next, "next keyframe");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match keyframer.run_scheduled(&p, next.timestamp_millis()).await {
            Ok(_) => {}
            Err(KeyframeError::Busy(_)) => {
                info!(producer = %p.name, "keyframe skipped: another replica or process is running one");
            }
            Err(KeyframeError::TickServed { .. }) => {
                debug!(producer = %p.name, tick = %next, "keyframe skipped: another replica served this tick");
            }
            Err(e) => warn!(producer = %p.name, error = %e, "keyframe could not run"),
        }
        served = Some(next);
        if cancel.is_cancelled() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_fire_in_utc() {
        let cron = parse_cron("0 */5 * * * *").unwrap();
        assert_eq!(
            next_fire(&cron, chrono_tz::UTC, at("2026-03-01T10:02:30Z")),
            Some(at("2026-03-01T10:05:00Z"))
        );
        // Strictly after: a fire time exactly now is not repeated.
        assert_eq!(
            next_fire(&cron, chrono_tz::UTC, at("2026-03-01T10:05:00Z")),
            Some(at("2026-03-01T10:10:00Z"))
        );
    }

    #[test]
    fn fire_times_are_whole_seconds_whatever_the_phase_of_now() {
        let every = parse_cron("* * * * * *").unwrap();
        let every2 = parse_cron("*/2 * * * * *").unwrap();
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
                next_fire(cron, chrono_tz::UTC, at(now)),
                Some(at(expected)),
                "after {now}"
            );
        }
    }

    #[test]
    fn daily_schedule_follows_wall_clock_across_dst() {
        // 02:30 local every day in New York. On 2026-03-08 clocks jump from 02:00 to 03:00.
        let cron = parse_cron("0 30 2 * * *").unwrap();
        let ny = chrono_tz::America::New_York;
        // The day before: 02:30 EST = 07:30 UTC.
        assert_eq!(
            next_fire(&cron, ny, at("2026-03-07T00:00:00Z")),
            Some(at("2026-03-07T07:30:00Z"))
        );
        // The days after the change: 02:30 EDT = 06:30 UTC, one hour earlier in UTC.
        let after_change = next_fire(&cron, ny, at("2026-03-08T12:00:00Z")).unwrap();
        assert_eq!(after_change, at("2026-03-09T06:30:00Z"));
        // 09:00 local every day keeps 09:00 local on both sides of the change.
        let nine = parse_cron("0 0 9 * * *").unwrap();
        assert_eq!(
            next_fire(&nine, ny, at("2026-03-07T00:00:00Z")),
            Some(at("2026-03-07T14:00:00Z"))
        );
        assert_eq!(
            next_fire(&nine, ny, at("2026-03-08T00:00:00Z")),
            Some(at("2026-03-08T13:00:00Z"))
        );
    }

    #[test]
    fn fall_back_runs_once() {
        // On 2026-11-01 New York repeats 01:00-02:00. A 01:30 daily job fires once that day.
        let cron = parse_cron("0 30 1 * * *").unwrap();
        let ny = chrono_tz::America::New_York;
        let first = next_fire(&cron, ny, at("2026-11-01T00:00:00Z")).unwrap();
        assert_eq!(first, at("2026-11-01T05:30:00Z"));
        let second = next_fire(&cron, ny, first).unwrap();
        assert_eq!(second, at("2026-11-02T06:30:00Z"));
    }
}
