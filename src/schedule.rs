//! The per-producer keyframe loop: sleeps until the schedule's next tick, runs it, repeats.
//!
//! Each run claims the tick it serves (`Keyframer::run_scheduled`): one tick
//! is one run across replicas. After a run the next time is computed from the
//! current time: a tick missed while the daemon was busy or down is skipped,
//! never run twice. An adaptive producer's next time is the one its last
//! keyframe stored (`pacing`), read again every few seconds so a replica
//! follows the pace another one set; a time already past (a restart after
//! it) runs at once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Producer;
use crate::keyframe::run::{KeyframeError, Keyframer};
use crate::store::now_ms;

/// How far ahead [`expected_interval_secs`] looks for a cron's longest gap:
/// a week and a day, so a schedule that skips weekends shows its weekend.
const GAP_HORIZON: chrono::TimeDelta = chrono::TimeDelta::days(8);

/// At most this many ticks are walked (a per-second cron stops after ~3 h).
const GAP_TICKS: usize = 10_000;

/// The longest time, in seconds, that `p`'s schedule lets pass between two
/// keyframes: an adaptive producer's `max_interval_secs` (or a day over
/// `max_pulls_per_day` when that floor is longer: pacing lets it win), or the longest gap
/// between a cron's ticks from `now` over the next eight days (at least one
/// gap, however far apart the first two ticks are). `None` for a cron with
/// fewer than two future ticks. Exported as
/// `driftd_keyframe_expected_interval_seconds`, against which the
/// `DriftdKeyframeStale` alert measures the last success.
pub(crate) fn expected_interval_secs(p: &Producer, now: DateTime<Utc>) -> Option<f64> {
    if let Some(a) = &p.adaptive {
        let per_day = a
            .max_pulls_per_day
            .map_or(0.0, |n| 86_400.0 / f64::from(n.max(1)));
        return Some(a.max_interval_secs.max(per_day));
    }
    let schedule = p.schedule();
    let horizon = now + GAP_HORIZON;
    let mut prev = schedule.next_after(now)?;
    let mut longest: Option<chrono::TimeDelta> = None;
    for _ in 0..GAP_TICKS {
        let Some(next) = schedule.next_after(prev) else {
            break;
        };
        longest = Some(longest.map_or(next - prev, |l| l.max(next - prev)));
        if next > horizon {
            break;
        }
        prev = next;
    }
    longest.map(|l| l.num_milliseconds() as f64 / 1000.0)
}

/// Runs `p`'s keyframes on its schedule until `cancel`. A run under way when
/// `cancel` fires is interrupted by the keyframer (recorded `failed`, its
/// lease released), not dropped.
pub(crate) async fn run_schedule(keyframer: Keyframer, p: Producer, cancel: CancellationToken) {
    if p.schedule().is_adaptive() {
        return run_adaptive(keyframer, p, cancel).await;
    }
    let mut served: Option<DateTime<Utc>> = None;
    loop {
        let now = Utc::now();
        // Never a tick at or before the last one, even if the clock stepped back.
        let after = served.map_or(now, |t| t.max(now));
        let Some(next) = p.schedule().next_after(after) else {
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

/// How often an adaptive producer's stored next time is read again.
const PACING_POLL: Duration = Duration::from_secs(5);

/// Runs an adaptive producer's keyframes at the times they pace themselves to.
async fn run_adaptive(keyframer: Keyframer, p: Producer, cancel: CancellationToken) {
    let min_ms = p
        .adaptive
        .as_ref()
        .map_or(1_000, |a| (a.min_interval_secs * 1000.0).round() as i64);
    let mut served: Option<i64> = None;
    loop {
        let due = match keyframer.show_pacing(&p).await {
            // Never a tick at or before the last one served here: if the
            // pace was not moved (the run could not record it), wait a
            // minimum interval past it.
            Ok(Some(s)) => match served {
                Some(last) if s.next_at <= last => last + min_ms,
                _ => s.next_at,
            },
            Ok(None) => served.map_or_else(now_ms, |last| last + min_ms),
            Err(e) => {
                warn!(producer = %p.name, error = %e, "cannot read the pacing; trying again");
                served
                    .map_or_else(now_ms, |last| last + min_ms)
                    .max(now_ms() + 1_000)
            }
        };
        let wait = Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0));
        if !wait.is_zero() {
            debug!(producer = %p.name, due, "next adaptive keyframe");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait.min(PACING_POLL)) => {}
            }
            if wait > PACING_POLL {
                continue;
            }
        }
        match keyframer.run_scheduled(&p, due).await {
            Ok(s) => {
                if let Some(pace) = s.pace {
                    debug!(producer = %p.name, interval_secs = pace.interval_secs, reason = pace.reason.as_str(), "paced");
                }
            }
            Err(KeyframeError::Busy(_)) => {
                info!(producer = %p.name, "keyframe skipped: another replica or process is running one");
            }
            Err(KeyframeError::TickServed { .. }) => {
                debug!(producer = %p.name, tick = due, "keyframe skipped: another replica served this time");
            }
            Err(e) => warn!(producer = %p.name, error = %e, "keyframe could not run"),
        }
        served = Some(due);
        if cancel.is_cancelled() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
