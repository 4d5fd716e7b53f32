//! Adaptive pacing end to end: a loopback vendor whose delta loss steps 0.1% → 10% → 0.1%, one producer paced by its drift beside one on a fixed interval tuned for the worst case.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::support::{config, differing, Daemon, TestDb};

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Records of each vendor: a key changes again only every five seconds,
/// five longest intervals, so a lost delta stays lost until a keyframe
/// finds it; few enough that a keyframe takes a few tens of milliseconds
/// even on a busy machine, well within the floor.
const RECORDS: usize = 200;
/// Changes a second, each with its webhook (sent, or lost on purpose).
const PER_SEC: u64 = 40;
/// `(seconds, one webhook in N lost)`: 0.1%, then 10%, then 0.1%. The burst
/// spans 25 longest intervals, so the wait for the first keyframe after the
/// step up (up to one longest interval) is small against what the burst
/// saves; the quiet phases are eight times longer, so the pulls halve.
const PHASES: [(u64, u64); 3] = [(100, 1000), (25, 10), (100, 1000)];
/// The fixed schedule tuned for the worst case, and the adaptive bounds: the
/// ratios of the simulation in `pacing::tests` (60 s against 30..240 s). In
/// the burst the fixed schedule keeps each lost delta an eighth of a second
/// on average; the adaptive one may pull twice as often there (its floor)
/// and four times less often when the channel is quiet (its ceiling).
const FIXED_SECS: f64 = 0.25;
const MIN_SECS: f64 = 0.125;
const MAX_SECS: f64 = 1.0;
/// How long the test may run: four minutes of churn, more if the machine
/// lags, and the setup around it.
const LIMIT: Duration = Duration::from_secs(360);

/// Whether change `n` loses its webhook: exactly one in each block of
/// `one_in` changes, at the place the golden-ratio (Weyl) sequence gives the
/// block. The places spread evenly over the blocks and never fall in step
/// with a keyframe schedule (the ratio is irrational), so a fixed
/// schedule's drift-seconds hardly depend on where its keyframes fall, and
/// the count of lost deltas is exact.
fn lost(n: u64, one_in: u64) -> bool {
    let golden = (5f64.sqrt() - 1.0) / 2.0;
    let at = ((n / one_in) as f64 * golden).fract() * one_in as f64;
    at as u64 == n % one_in
}

#[derive(Clone, Default)]
struct Orders {
    records: Arc<Mutex<BTreeMap<String, Value>>>,
}

impl Orders {
    async fn start() -> (Self, SocketAddr) {
        let o = Self::default();
        let app = Router::new()
            .route("/orders", get(list))
            .with_state(o.clone());
        (o.clone(), crate::support::serve_loopback(app).await)
    }

    fn put(&self, key: &str, version: i64) -> Value {
        let doc = json!({"id": key, "status": format!("s{version}"), "version": version});
        self.records
            .lock()
            .unwrap()
            .insert(key.to_string(), doc.clone());
        doc
    }
}

async fn list(State(o): State<Orders>) -> Response {
    let data: Vec<Value> = o.records.lock().unwrap().values().cloned().collect();
    Json(json!({ "data": data })).into_response()
}

fn producer(name: &str, addr: SocketAddr, min: f64, max: f64, target: f64) -> String {
    format!(
        r#"
[[producer]]
name = "{name}"
schedule = "adaptive"
max_drift_ratio = 1.0
[producer.adaptive]
min_interval_secs = {min}
max_interval_secs = {max}
target_drift_seconds = {target}
[producer.snapshot]
url = "http://{addr}/orders"
items = "/data"
key = "/id"
version = "/version"
[producer.webhook]
scheme = "standard-webhooks"
secret = "{SW_SECRET}"
key = "/id"
version = "/version"
"#
    )
}

/// What a schedule made of the lost deltas.
#[derive(Debug)]
struct Outcome {
    pulls: usize,
    /// From each lost delta to the start of the first keyframe after it,
    /// whose pull finds the drift.
    drift_seconds: f64,
    /// How late the keyframes started on average (ms after their due time).
    late_ms: f64,
}

async fn outcome(d: &Daemon, name: &str, since_run: i64, lost_at: &[i64]) -> Outcome {
    let runs: Vec<_> = d
        .store
        .runs(name, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.id > since_run)
        .collect();
    let mut starts: Vec<i64> = runs.iter().map(|r| r.started_at).collect();
    starts.sort_unstable();
    let drift_seconds = lost_at
        .iter()
        .map(|&at| {
            let found = starts
                .iter()
                .find(|s| **s > at)
                .copied()
                .unwrap_or_else(driftd::store::now_ms);
            (found - at) as f64 / 1000.0
        })
        .sum();
    let late: Vec<i64> = runs
        .iter()
        .filter_map(|r| Some(r.started_at - r.scheduled_for?))
        .collect();
    Outcome {
        pulls: runs.len(),
        drift_seconds,
        late_ms: late.iter().sum::<i64>() as f64 / late.len().max(1) as f64,
    }
}

async fn adaptive_pacing_follows_the_loss_rate(db: &TestDb) {
    let (adaptive, a_addr) = Orders::start().await;
    let (fixed, f_addr) = Orders::start().await;
    for i in 0..RECORDS {
        let key = format!("o-{i:04}");
        adaptive.put(&key, 1);
        fixed.put(&key, 1);
    }
    // 10% of the changes lost is the worst drift rate. The target asks for
    // `floor / √2` at that rate (`rate × (floor / √2)² / 2` drift-seconds an
    // interval), so in the burst the interval stays on the floor even after
    // an empty keyframe halves the estimate (the burst loses one delta in
    // two floors, so most of its keyframes find nothing).
    let worst_rate = PER_SEC as f64 / 10.0;
    let target = worst_rate * MIN_SECS * MIN_SECS / 4.0;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{}\"\n{}{}",
        db.url,
        producer("adaptive", a_addr, MIN_SECS, MAX_SECS, target),
        // A fixed interval: the same pacing with its bounds pinned.
        producer("fixed", f_addr, FIXED_SECS, FIXED_SECS, 1.0),
    );
    let d = Daemon::start(config(&text)).await;
    crate::support::eventually("both mirrors loaded", || async {
        let a = differing(&d.store, "adaptive", &adaptive.records).await;
        let f = differing(&d.store, "fixed", &fixed.records).await;
        (a.is_empty() && f.is_empty()).then_some(())
    })
    .await;
    let last_run = |name: &'static str| {
        let store = d.store.clone();
        async move {
            store
                .runs(name, 1)
                .await
                .unwrap()
                .first()
                .map_or(0, |r| r.id)
        }
    };
    let (a0, f0) = (last_run("adaptive").await, last_run("fixed").await);

    // The churn: the same changes, the same webhooks lost, for both; change
    // `n` is due `n / PER_SEC` seconds in and its phase is the one of that
    // time, so the losses are the same whatever the machine's speed.
    let mut phase_ends = Vec::new();
    let mut end = 0;
    for (secs, _) in PHASES {
        end += secs;
        phase_ends.push(end as f64);
    }
    let started = Instant::now();
    // `(seconds since the churn began, interval chosen)` per adaptive
    // keyframe, read every 50 ms (the floor is 125 ms), so the test's own
    // reads stay light beside the daemon's.
    let mut paced: Vec<(f64, f64)> = Vec::new();
    let mut last_update = None;
    let mut polled = Instant::now();
    let mut lost_at: Vec<i64> = Vec::new();
    // When each phase began, by the clock (later than due if the machine lags).
    let mut phase_began: Vec<f64> = Vec::new();
    for change in 1..=end * PER_SEC {
        let due = Duration::from_secs_f64((change - 1) as f64 / PER_SEC as f64);
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + due)).await;
        let t = due.as_secs_f64();
        let phase = phase_ends.iter().position(|e| t < *e).unwrap();
        if phase_began.len() == phase {
            phase_began.push(started.elapsed().as_secs_f64());
        }
        let lose_one_in = PHASES[phase].1;
        let key = format!("o-{:04}", (change * 7919) as usize % RECORDS);
        let version = 1 + change as i64;
        let a = adaptive.put(&key, version);
        let f = fixed.put(&key, version);
        if lost(change, lose_one_in) {
            lost_at.push(driftd::store::now_ms());
        } else {
            let id = format!("chg-{change}");
            assert_eq!(d.send("adaptive", &a, &id).await.0, 200);
            assert_eq!(d.send("fixed", &f, &id).await.0, 200);
        }
        if polled.elapsed() >= Duration::from_millis(50) {
            polled = Instant::now();
            if let Some(p) = d.store.pacing("adaptive").await.unwrap() {
                if last_update != Some(p.updated_at) {
                    last_update = Some(p.updated_at);
                    paced.push((started.elapsed().as_secs_f64(), p.pace.interval_secs));
                }
            }
        }
    }
    let churn_secs = started.elapsed().as_secs_f64();
    let a_out = outcome(&d, "adaptive", a0, &lost_at).await;
    let f_out = outcome(&d, "fixed", f0, &lost_at).await;
    eprintln!(
        "{} deltas lost over {churn_secs:.0} s; fixed {FIXED_SECS} s: {} pulls, {:.2} drift-seconds until found, \
         keyframes {:.1} ms late; adaptive {MIN_SECS}..{MAX_SECS} s: {} pulls ({:.2}×), \
         {:.2} until found ({:.2}×), keyframes {:.1} ms late",
        lost_at.len(),
        f_out.pulls,
        f_out.drift_seconds,
        f_out.late_ms,
        a_out.pulls,
        a_out.pulls as f64 / f_out.pulls as f64,
        a_out.drift_seconds,
        a_out.drift_seconds / f_out.drift_seconds,
        a_out.late_ms,
    );
    let (up, down) = (phase_began[1], phase_began[2]);
    // Quiet before the step up: near the ceiling.
    let before: Vec<f64> = paced.iter().filter(|(t, _)| *t < up).map(|p| p.1).collect();
    assert!(
        *before.last().unwrap() >= MAX_SECS / 2.0,
        "before the step up: {before:?}"
    );
    // Within three keyframes of the step up (the first of which may come a
    // whole quiet interval later): at most twice the floor.
    let after_up: Vec<f64> = paced
        .iter()
        .filter(|(t, _)| *t >= up)
        .map(|p| p.1)
        .take(3)
        .collect();
    assert!(
        after_up.iter().any(|i| *i <= 2.0 * MIN_SECS),
        "after the step up: {after_up:?}"
    );
    // After the step down: back up to the ceiling (×√2 a keyframe as the
    // estimate halves), and back again after each dip that one lost delta
    // in a thousand brings (never more than 8 keyframes below it, unless
    // the churn ends in one), so the ceiling is most of the quiet phase.
    let after_down: Vec<f64> = paced
        .iter()
        .filter(|(t, _)| *t >= down)
        .map(|p| p.1)
        .collect();
    let back = after_down.iter().position(|i| *i >= MAX_SECS);
    let dips: Vec<usize> = back
        .map(|at| {
            let rest = &after_down[at..];
            let mut dips: Vec<usize> = rest.split(|i| *i >= MAX_SECS).map(<[f64]>::len).collect();
            dips.pop(); // the churn may end in a dip
            dips
        })
        .unwrap_or_default();
    let at_ceiling = after_down.iter().filter(|i| **i >= MAX_SECS).count();
    assert!(
        back.is_some() && dips.iter().all(|n| *n <= 8) && at_ceiling * 2 >= after_down.len(),
        "after the step down: {after_down:?}"
    );
    // The whole run: half the pulls or fewer, and no more drift-seconds
    // than the fixed schedule.
    assert!(
        a_out.pulls * 2 <= f_out.pulls,
        "pulls: adaptive {}, fixed {}",
        a_out.pulls,
        f_out.pulls
    );
    assert!(
        a_out.drift_seconds <= f_out.drift_seconds,
        "drift-seconds until found: adaptive {:.2}, fixed {:.2}",
        a_out.drift_seconds,
        f_out.drift_seconds
    );
    d.stop().await;
}

#[test]
fn adaptive_pacing_follows_the_loss_rate_on_sqlite() {
    crate::support::run_limited_for(
        "pacing::adaptive_pacing_follows_the_loss_rate_on_sqlite",
        LIMIT.max(crate::support::test_limit()),
        async { adaptive_pacing_follows_the_loss_rate(&TestDb::sqlite()).await },
    );
}
