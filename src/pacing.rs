//! Adaptive keyframe pacing: the next interval from the drift rate the keyframes measured (pure).
//!
//! The rule, after each keyframe of a `schedule = "adaptive"` producer:
//! - the measured drift rate is `r = drift / elapsed` (drifted records per
//!   second since the previous keyframe's pull began);
//! - the estimate follows it with a fast attack and a slow decay: an
//!   increase is taken at once, a decrease by half the gap (`r̂ += ½ (r − r̂)`);
//! - the interval is the one that lets `target_drift_seconds` accumulate
//!   before the next keyframe: drift grows as `r̂·t`, so the drift-seconds
//!   of an interval `I` are `r̂·I²/2`, and `I = √(2·target / r̂)` (with no
//!   drift, `max_interval`);
//! - it grows at most 2× a keyframe, and stays within
//!   `[max(min_interval, 1 day / max_pulls_per_day, the vendor's quota), max_interval]`;
//! - a failed or guarded run keeps the estimate and doubles the interval (a
//!   vendor in trouble or an operator deciding is not helped by more pulls);
//! - the next keyframe is due one interval after this one was due, or after
//!   it began if it was not scheduled or started an interval late
//!   ([`next_at`]).
//!
//! Why it is stable: the drift found in an interval is an unbiased measure
//! of the rate whatever the interval (each lost delta is found by the next
//! keyframe), so the interval does not feed back into the estimate. The
//! estimate is a first-order filter of the measurements with pole ½ on the
//! way down and 0 on the way up: it converges geometrically to a steady
//! rate, never oscillates, and the clamps bound every step. The square root
//! is the interval that minimises drift-seconds plus pulls priced at
//! `target_drift_seconds` each, so pulls go where the drift is.

use serde::Serialize;

use crate::config::AdaptiveConfig;

/// How fast a lower drift rate is believed: the share of the gap closed per keyframe.
const DECAY: f64 = 0.5;
/// The most an interval grows from one keyframe to the next.
const GROWTH: f64 = 2.0;
const DAY_SECS: f64 = 86_400.0;

/// Why the interval is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No keyframe measured a rate yet: start at `min_interval`.
    First,
    /// `√(2·target / rate)`, within the bounds.
    DriftRate,
    /// The rate asked for less; `min_interval` is the floor.
    MinInterval,
    /// The rate asked for more; `max_interval` is the ceiling.
    MaxInterval,
    /// The rate asked for more than twice the last interval.
    GrowthLimit,
    /// `max_pulls_per_day` is the floor.
    PullsPerDay,
    /// The vendor's rate-limit headers said to wait this long.
    Quota,
    /// The last run failed.
    FailedBackoff,
    /// The last run was guarded, waiting for an operator.
    GuardedBackoff,
}

impl Reason {
    pub const ALL: &'static [Reason] = &[
        Self::First,
        Self::DriftRate,
        Self::MinInterval,
        Self::MaxInterval,
        Self::GrowthLimit,
        Self::PullsPerDay,
        Self::Quota,
        Self::FailedBackoff,
        Self::GuardedBackoff,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::First => "first",
            Self::DriftRate => "drift_rate",
            Self::MinInterval => "min_interval",
            Self::MaxInterval => "max_interval",
            Self::GrowthLimit => "growth_limit",
            Self::PullsPerDay => "pulls_per_day",
            Self::Quota => "quota",
            Self::FailedBackoff => "failed_backoff",
            Self::GuardedBackoff => "guarded_backoff",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.as_str() == s)
    }
}

/// A producer's pacing: the interval chosen, the rate it came from, why.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Pace {
    pub interval_secs: f64,
    /// Drifted records per second, as estimated.
    pub rate: f64,
    pub reason: Reason,
}

/// What the last keyframe said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observation {
    /// A run that compared: the drift it found and the seconds since the
    /// previous keyframe's pull began (`None` for a producer's first).
    Compared {
        drift: u64,
        elapsed_secs: Option<f64>,
    },
    Failed,
    Guarded,
}

/// The next pace after `observed`, from the previous one (if any);
/// `quota_secs` is the wait the vendor's rate-limit headers asked for.
pub fn next(
    cfg: &AdaptiveConfig,
    previous: Option<&Pace>,
    observed: Observation,
    quota_secs: Option<f64>,
) -> Pace {
    let last = previous.map(|p| p.interval_secs);
    let (rate, wanted, mut reason) = match observed {
        Observation::Compared {
            drift,
            elapsed_secs: Some(elapsed),
        } if elapsed > 0.0 => {
            let measured = drift as f64 / elapsed;
            let rate = match previous {
                Some(p) if measured < p.rate => p.rate + DECAY * (measured - p.rate),
                _ => measured,
            };
            let ideal = if rate > 0.0 {
                (2.0 * cfg.target_drift_seconds / rate).sqrt()
            } else {
                f64::INFINITY
            };
            match last {
                Some(last) if ideal > GROWTH * last => (rate, GROWTH * last, Reason::GrowthLimit),
                _ => (rate, ideal, Reason::DriftRate),
            }
        }
        Observation::Compared { .. } => (0.0, cfg.min_interval_secs, Reason::First),
        Observation::Failed | Observation::Guarded => {
            let reason = if observed == Observation::Failed {
                Reason::FailedBackoff
            } else {
                Reason::GuardedBackoff
            };
            let wanted = last.map_or(cfg.min_interval_secs, |l| GROWTH * l);
            (previous.map_or(0.0, |p| p.rate), wanted, reason)
        }
    };
    let mut interval = wanted;
    if interval > cfg.max_interval_secs {
        interval = cfg.max_interval_secs;
        if matches!(reason, Reason::DriftRate | Reason::GrowthLimit) {
            reason = Reason::MaxInterval;
        }
    }
    let floors = [
        (cfg.min_interval_secs, Reason::MinInterval),
        (
            cfg.max_pulls_per_day
                .map_or(0.0, |n| DAY_SECS / f64::from(n.max(1))),
            Reason::PullsPerDay,
        ),
        (quota_secs.unwrap_or(0.0), Reason::Quota),
    ];
    for (floor, why) in floors {
        if interval < floor {
            interval = floor;
            if why != Reason::MinInterval || reason != Reason::First {
                reason = why;
            }
        }
    }
    Pace {
        interval_secs: interval,
        rate,
        reason,
    }
}

/// When the keyframe after one that began at `started_at_ms` (serving the
/// due time `due_ms`, if scheduled) is due, given the `pace` it set (ms).
///
/// A run that started late but within its interval is timed from when it
/// was due, so the time a busy process takes to start a run (the lease, the
/// tick claim, the layout check) does not stretch every interval: the
/// keyframes keep the cadence the pace asks for. A run by hand, or one that
/// started more than an interval late (the process was down or stalled), is
/// timed from its start, so it is never followed by a run at once.
pub(crate) fn next_at(due_ms: Option<i64>, started_at_ms: i64, pace: &Pace) -> i64 {
    let interval_ms = (pace.interval_secs * 1000.0).round() as i64;
    match due_ms {
        Some(due) if due <= started_at_ms && started_at_ms < due + interval_ms => due + interval_ms,
        _ => started_at_ms + interval_ms,
    }
}

#[cfg(test)]
mod tests;
