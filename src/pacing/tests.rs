//! The pacing rule case by case, and a simulation with a fake clock of a delta channel whose loss steps 0.1% → 10% → 0.1%.

use super::*;

fn cfg(min: f64, max: f64, target: f64) -> AdaptiveConfig {
    AdaptiveConfig {
        min_interval_secs: min,
        max_interval_secs: max,
        target_drift_seconds: target,
        max_pulls_per_day: None,
    }
}

fn compared(drift: u64, elapsed: f64) -> Observation {
    Observation::Compared {
        drift,
        elapsed_secs: Some(elapsed),
    }
}

#[test]
fn the_rule_case_by_case() {
    let c = cfg(10.0, 1000.0, 800.0);
    // First keyframe: no elapsed time to measure a rate over.
    let first = next(
        &c,
        None,
        Observation::Compared {
            drift: 5,
            elapsed_secs: None,
        },
        None,
    );
    assert_eq!((first.interval_secs, first.reason), (10.0, Reason::First));
    // 1 drift/s: √(2·800/1) = 40.
    let p = next(&c, Some(&first), compared(100, 100.0), None);
    assert_eq!(
        (p.interval_secs, p.rate, p.reason),
        (20.0, 1.0, Reason::GrowthLimit)
    );
    let p = next(&c, Some(&p), compared(40, 40.0), None);
    assert_eq!((p.interval_secs, p.reason), (40.0, Reason::DriftRate));
    // A higher rate is believed at once: 16/s → √100 = 10.
    let up = next(&c, Some(&p), compared(640, 40.0), None);
    assert_eq!(
        (up.interval_secs, up.rate, up.reason),
        (10.0, 16.0, Reason::DriftRate)
    );
    // And more than that hits the floor.
    let floor = next(&c, Some(&up), compared(10_000, 10.0), None);
    assert_eq!(
        (floor.interval_secs, floor.reason),
        (10.0, Reason::MinInterval)
    );
    // A lower one by half the gap: 16 → 8.5 (no drift at all) → 4.25.
    let down = next(&c, Some(&up), compared(10, 10.0), None);
    assert_eq!(down.rate, 8.5);
    let down = next(&c, Some(&down), compared(0, 10.0), None);
    assert_eq!(down.rate, 4.25);
    // No drift for long: the ceiling.
    let mut p = down;
    for _ in 0..30 {
        p = next(&c, Some(&p), compared(0, p.interval_secs), None);
    }
    assert_eq!((p.interval_secs, p.reason), (1000.0, Reason::MaxInterval));
    // Failed and guarded runs back off and keep the estimate.
    let failed = next(&c, Some(&up), Observation::Failed, None);
    assert_eq!(
        (failed.interval_secs, failed.rate, failed.reason),
        (20.0, 16.0, Reason::FailedBackoff)
    );
    let guarded = next(&c, Some(&failed), Observation::Guarded, None);
    assert_eq!(
        (guarded.interval_secs, guarded.reason),
        (40.0, Reason::GuardedBackoff)
    );
    let capped = next(&c, Some(&p), Observation::Failed, None);
    assert_eq!(capped.interval_secs, 1000.0);
    // A daily ceiling and the vendor's quota are floors too.
    let daily = AdaptiveConfig {
        max_pulls_per_day: Some(24),
        ..c.clone()
    };
    let p = next(&daily, Some(&up), compared(640, 40.0), None);
    assert_eq!((p.interval_secs, p.reason), (3600.0, Reason::PullsPerDay));
    let p = next(&c, Some(&up), compared(640, 40.0), Some(90.0));
    assert_eq!((p.interval_secs, p.reason), (90.0, Reason::Quota));
}

/// A delta channel on a fake clock: the vendor changes `per_sec` records a
/// second, each change's delta lost with the phase's probability; a
/// keyframe finds every lost one at once.
struct Channel {
    per_sec: f64,
    /// `(until_secs, loss)`, in order.
    phases: Vec<(f64, f64)>,
    seed: u64,
}

#[derive(Debug, Default)]
struct Run {
    pulls: u64,
    drift_seconds: f64,
    lost: u64,
    /// `(time, interval chosen)` after each keyframe.
    intervals: Vec<(f64, f64)>,
}

impl Channel {
    fn loss_at(&self, t: f64) -> f64 {
        self.phases
            .iter()
            .find(|(until, _)| t < *until)
            .map_or(0.0, |(_, loss)| *loss)
    }

    fn end(&self) -> f64 {
        self.phases.last().map_or(0.0, |(until, _)| *until)
    }

    /// Runs keyframes at the times `schedule` picks (given the drift and
    /// elapsed time of the keyframe just run) until the end.
    fn run(&self, mut schedule: impl FnMut(u64, Option<f64>) -> f64) -> Run {
        let mut rng = self.seed;
        let mut random = move || {
            // xorshift64*: deterministic, good enough for a coin.
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            (rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut out = Run::default();
        let step = 1.0 / self.per_sec;
        let (mut t, mut last_pull, mut next_pull) = (0.0, None::<f64>, 0.0);
        let mut open: Vec<f64> = Vec::new();
        let end = self.end();
        while t < end {
            while next_pull <= t && next_pull < end {
                let now = next_pull;
                out.pulls += 1;
                out.drift_seconds += open.iter().map(|lost_at| now - lost_at).sum::<f64>();
                let drift = open.len() as u64;
                open.clear();
                let interval = schedule(drift, last_pull.map(|l| now - l));
                out.intervals.push((now, interval));
                last_pull = Some(now);
                next_pull = now + interval;
            }
            if random() < self.loss_at(t) {
                out.lost += 1;
                open.push(t);
            }
            t += step;
        }
        out.drift_seconds += open.iter().map(|lost_at| end - lost_at).sum::<f64>();
        out
    }
}

#[test]
fn adaptive_pacing_follows_a_loss_step_with_fewer_pulls_and_no_more_drift() {
    // 20 changes a second; 0.1% lost for 20,000 s, 10% for 5,000 s, 0.1% again.
    let channel = Channel {
        per_sec: 20.0,
        phases: vec![(20_000.0, 0.001), (25_000.0, 0.10), (45_000.0, 0.001)],
        seed: 0x5eed_cafe,
    };
    // The fixed schedule tuned for the worst case: every 60 s.
    let fixed = channel.run(|_, _| 60.0);
    // Adaptive: never faster than 30 s nor slower than 240 s, 900 drift-seconds an interval.
    let c = cfg(30.0, 240.0, 900.0);
    let mut pace: Option<Pace> = None;
    let adaptive = channel.run(|drift, elapsed| {
        let p = next(
            &c,
            pace.as_ref(),
            Observation::Compared {
                drift,
                elapsed_secs: elapsed,
            },
            None,
        );
        pace = Some(p);
        p.interval_secs
    });
    eprintln!(
        "fixed 60 s: {} pulls, {:.0} drift-seconds, {} lost; adaptive 30..240 s: {} pulls, {:.0} drift-seconds, {} lost",
        fixed.pulls, fixed.drift_seconds, fixed.lost, adaptive.pulls, adaptive.drift_seconds, adaptive.lost
    );
    assert_eq!(fixed.lost, adaptive.lost, "the same channel for both");

    // Before the step up the interval is at (or near) the ceiling.
    let before = adaptive
        .intervals
        .iter()
        .rev()
        .find(|(t, _)| *t < 20_000.0)
        .unwrap();
    assert!(before.1 >= 200.0, "quiet channel, interval {}", before.1);
    // Within three keyframes of the step up it is at the floor's neighbourhood.
    let after_up: Vec<f64> = adaptive
        .intervals
        .iter()
        .filter(|(t, _)| *t >= 20_000.0)
        .take(3)
        .map(|(_, i)| *i)
        .collect();
    assert!(after_up[2] <= 45.0, "after the step up: {after_up:?}");
    // After the step down it climbs back to the ceiling, never shrinking.
    let after_down: Vec<f64> = adaptive
        .intervals
        .iter()
        .filter(|(t, _)| *t >= 25_000.0)
        .take(12)
        .map(|(_, i)| *i)
        .collect();
    assert!(
        after_down.windows(2).all(|w| w[1] >= w[0] * 0.8),
        "after the step down: {after_down:?}"
    );
    assert!(
        *after_down.last().unwrap() >= 200.0,
        "after the step down: {after_down:?}"
    );
    // Over the whole run: no more drift-seconds, at most half the pulls.
    assert!(
        adaptive.drift_seconds <= fixed.drift_seconds,
        "drift-seconds: adaptive {:.0} > fixed {:.0}",
        adaptive.drift_seconds,
        fixed.drift_seconds
    );
    assert!(
        adaptive.pulls * 2 <= fixed.pulls,
        "pulls: adaptive {} > half of fixed {}",
        adaptive.pulls,
        fixed.pulls
    );
}

#[test]
fn a_late_start_does_not_stretch_the_interval() {
    let pace = Pace {
        interval_secs: 0.25,
        rate: 2.0,
        reason: Reason::DriftRate,
    };
    // Due at 10,000 ms, started 40 ms late: the next is due 250 ms after 10,000.
    assert_eq!(next_at(Some(10_000), 10_040, &pace), 10_250);
    // On time.
    assert_eq!(next_at(Some(10_000), 10_000, &pace), 10_250);
    // More than an interval late (the process was down): from the start.
    assert_eq!(next_at(Some(10_000), 10_250, &pace), 10_500);
    assert_eq!(next_at(Some(10_000), 70_000, &pace), 70_250);
    // By hand, or a start before its due time (another replica's clock): from the start.
    assert_eq!(next_at(None, 10_040, &pace), 10_290);
    assert_eq!(next_at(Some(10_100), 10_040, &pace), 10_290);
}
