//! `driftd sync PRODUCER`: one keyframe, then the work it left open carried out by the daemon's own workers, for a scheduler (cron, a CronJob) instead of the daemon.
//!
//! Nothing here decides what a keyframe or a worker does: the keyframe is
//! [`Keyframer::run`], the work is [`Workers::run_producer`], the loop the
//! daemon runs, stopped once every item open after the keyframe is closed,
//! at the timeout, or on SIGINT/SIGTERM. Stopping it the daemon's way ends
//! in a recorded state: a keyframe cut short records itself `failed` and
//! releases its lease; an `http` call cut short returns its item to the
//! queue at once; an `apply` batch under way commits first.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Action, Producer};
use crate::keyframe::run::{Keyframer, Summary};
use crate::metrics::Metrics;
use crate::state::{RunState, WorkState};
use crate::store::Store;
use crate::work::Workers;

/// How often the items' states are read while the workers carry them out.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// How the work part of a sync ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Ended {
    /// Every item is done, dead or cancelled.
    Closed,
    /// `none`: the items are the application's to carry out.
    LeftForApplication,
    TimedOut,
    Interrupted,
}

/// The items that were open after the keyframe, and what became of them.
#[derive(Debug, Clone, Serialize)]
struct WorkOutcome {
    items: u64,
    corrected: u64,
    failed: u64,
    cancelled: u64,
    left_open: u64,
    ended: Ended,
}

impl WorkOutcome {
    fn new(items: usize, states: &BTreeMap<WorkState, u64>, ended: Ended) -> Self {
        let n = |s: WorkState| states.get(&s).copied().unwrap_or(0);
        Self {
            items: items as u64,
            corrected: n(WorkState::Done),
            failed: n(WorkState::Dead),
            cancelled: n(WorkState::Cancelled),
            left_open: n(WorkState::Pending) + n(WorkState::Running),
            ended,
        }
    }
}

/// What `driftd sync --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    producer: String,
    action: &'static str,
    keyframe: Summary,
    /// Absent when the keyframe failed or was guarded (nothing was emitted).
    work: Option<WorkOutcome>,
}

/// Runs the sync of `p` until done, `timeout`, or `shutdown`; prints the
/// report and returns the exit status: 0 when every item closed (or, for
/// `none`, was handed to the application), 3 when the keyframe was
/// guarded, 1 when it failed or any item failed or was left open.
pub(super) async fn sync(
    store: Store,
    p: &Producer,
    timeout: Duration,
    json: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let client = crate::client::http_client()?;
    let metrics = Metrics::new();
    let wake = Arc::new(tokio::sync::Notify::new());
    let keyframer = Keyframer::new(store.clone(), client.clone(), metrics.clone())
        .with_shutdown(shutdown.clone())
        .with_wake(wake.clone());
    let summary = keyframer.run(p, false).await?;
    let work = match summary.state {
        RunState::Ok | RunState::Approved => {
            let workers = Workers {
                store: store.clone(),
                client,
                metrics,
                wake,
                id: crate::keyframe::holder::Holder::current().to_string(),
            };
            Some(carry_out(&workers, p, timeout, &shutdown).await?)
        }
        RunState::Failed | RunState::Guarded | RunState::Running => None,
    };
    let report = Report {
        producer: p.name.clone(),
        action: p.work.action.as_str(),
        keyframe: summary,
        work,
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report, timeout);
    }
    Ok(exit_code(report.keyframe.state, report.work.as_ref()))
}

/// Carries out the producer's open items with the daemon's worker loop
/// until each is closed, `timeout`, or `shutdown`; then stops the loop the
/// way the daemon does and reads what became of them.
async fn carry_out(
    workers: &Workers,
    p: &Producer,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<WorkOutcome> {
    let store = &workers.store;
    let ids = store.open_work_ids(&p.name).await?;
    if ids.is_empty() || p.work.action == Action::None {
        let states = store.work_states(&ids).await?;
        let ended = if ids.is_empty() {
            Ended::Closed
        } else {
            Ended::LeftForApplication
        };
        return Ok(WorkOutcome::new(ids.len(), &states, ended));
    }
    let stop = CancellationToken::new();
    let run = workers.run_producer(p.clone(), stop.clone());
    tokio::pin!(run);
    let deadline = tokio::time::Instant::now() + timeout;
    let watched: anyhow::Result<Ended> = async {
        loop {
            // A database that does not answer for a moment is waited out, as
            // the worker loop beside it does; the deadline still holds.
            match store.work_states(&ids).await {
                Ok(states) => {
                    if WorkOutcome::new(ids.len(), &states, Ended::Closed).left_open == 0 {
                        return Ok(Ended::Closed);
                    }
                }
                Err(e) => {
                    tracing::warn!(producer = %p.name, error = %e, "cannot read the items' states; trying again");
                }
            }
            tokio::select! {
                () = &mut run => anyhow::bail!("the worker loop of {:?} stopped by itself", p.name),
                () = shutdown.cancelled() => return Ok(Ended::Interrupted),
                () = tokio::time::sleep_until(deadline) => return Ok(Ended::TimedOut),
                () = tokio::time::sleep(CHECK_EVERY) => {}
            }
        }
    }
    .await;
    // Whatever ended the wait, the loop stops as in the daemon: calls in
    // flight are cut short and their items returned to the queue at once.
    stop.cancel();
    run.await;
    let ended = watched?;
    let states = store.work_states(&ids).await?;
    Ok(WorkOutcome::new(ids.len(), &states, ended))
}

/// 3 for a guarded keyframe; 1 for a failed one, or any item failed or
/// left open (unless handed to the application); else 0.
fn exit_code(keyframe: RunState, work: Option<&WorkOutcome>) -> ExitCode {
    match keyframe {
        RunState::Guarded => return ExitCode::from(3),
        RunState::Failed | RunState::Running => return ExitCode::FAILURE,
        RunState::Ok | RunState::Approved => {}
    }
    match work {
        Some(w) if w.failed > 0 => ExitCode::FAILURE,
        Some(w) if w.left_open > 0 && w.ended != Ended::LeftForApplication => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

fn print_report(r: &Report, timeout: Duration) {
    super::print_summary(&r.keyframe);
    let Some(w) = &r.work else {
        if r.keyframe.state == RunState::Failed {
            println!("  nothing was emitted, so nothing was carried out");
        }
        return;
    };
    println!(
        "  work ({}): {} items  corrected {}  failed {}  cancelled {}  left open {}",
        r.action, w.items, w.corrected, w.failed, w.cancelled, w.left_open
    );
    match w.ended {
        Ended::Closed if w.failed > 0 => println!(
            "  {} items failed: `driftd work list --state dead` shows why",
            w.failed
        ),
        Ended::Closed => {}
        Ended::LeftForApplication => println!(
            "  action \"none\": the {} open items are left for your application's workers (`driftd work list`)",
            w.left_open
        ),
        Ended::TimedOut => println!(
            "  timed out after {}s with {} items open; the next sync or the daemon carries them on",
            timeout.as_secs(),
            w.left_open
        ),
        Ended::Interrupted => println!(
            "  interrupted: {} items left open, back in the queue",
            w.left_open
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_closed_is_success_anything_else_is_not() {
        let states = |done, dead, pending| {
            BTreeMap::from([
                (WorkState::Done, done),
                (WorkState::Dead, dead),
                (WorkState::Pending, pending),
            ])
        };
        let o = WorkOutcome::new(6, &states(4, 1, 1), Ended::TimedOut);
        assert_eq!(
            (o.items, o.corrected, o.failed, o.cancelled, o.left_open),
            (6, 4, 1, 0, 1)
        );
        let code = |w: Option<WorkOutcome>, state| format!("{:?}", exit_code(state, w.as_ref()));
        let ok = format!("{:?}", ExitCode::SUCCESS);
        let one = format!("{:?}", ExitCode::FAILURE);
        let three = format!("{:?}", ExitCode::from(3));
        let all = |n| Some(WorkOutcome::new(n, &states(n as u64, 0, 0), Ended::Closed));
        assert_eq!(code(all(3), RunState::Ok), ok);
        assert_eq!(code(all(0), RunState::Ok), ok);
        let dead = Some(WorkOutcome::new(3, &states(2, 1, 0), Ended::Closed));
        assert_eq!(code(dead, RunState::Ok), one);
        let open = Some(WorkOutcome::new(3, &states(2, 0, 1), Ended::TimedOut));
        assert_eq!(code(open, RunState::Ok), one);
        let handed = Some(WorkOutcome::new(
            3,
            &states(0, 0, 3),
            Ended::LeftForApplication,
        ));
        assert_eq!(code(handed, RunState::Ok), ok);
        assert_eq!(code(None, RunState::Guarded), three);
        assert_eq!(code(None, RunState::Failed), one);
    }
}
