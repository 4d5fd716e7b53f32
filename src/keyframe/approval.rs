//! Whether a guarded keyframe run may still be approved: a pure decision over the run, the producer's newer runs and the time.
//!
//! A guarded run's drift list describes the producer and the local rows as
//! they were when it ran. Once a later run of the same producer has compared
//! them again (`ok`, `guarded` or `approved`), that list is stale: approving
//! it would replay old deletions and overwrites. A `failed` run compared
//! nothing, so it does not make a guarded run stale. A guarded run older than
//! the retention window has expired (it is pruned with the other history).

use crate::state::RunState;
use crate::store::RunRow;

/// Why a run cannot be approved: the rest of a sentence whose subject is
/// the run ("keyframe run 12 is already approved").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{}", not_guarded(*.0))]
    NotGuarded(RunState),
    #[error(
        "cannot be approved: its drift list is stale: run {newer} ({state}) of producer {producer:?} compared the producer since; \
         approve that run if it is guarded, or let the next keyframe find the drift again"
    )]
    Superseded {
        producer: String,
        newer: i64,
        state: RunState,
    },
    #[error("cannot be approved: it expired: it is older than retention_days ({days}); run a new keyframe")]
    Expired { days: u32 },
}

/// Why a run in `state` has nothing to approve.
fn not_guarded(state: RunState) -> &'static str {
    match state {
        RunState::Approved => "is already approved",
        RunState::Ok => "finished ok and was never guarded: nothing to approve",
        RunState::Failed => "failed and compared nothing: nothing to approve; run a new keyframe",
        RunState::Running => "is still running: only a guarded run can be approved",
        RunState::Guarded => "is guarded",
    }
}

/// Decides whether `run` may be approved now. `newer` is the producer's
/// latest run after it that compared (see [`RunState::COMPARED`]), if any;
/// `retention_days` 0 means runs never expire.
pub(crate) fn check(
    run: &RunRow,
    newer: Option<(i64, RunState)>,
    now_ms: i64,
    retention_days: u32,
) -> Result<(), Refusal> {
    if !run.state.can_become(RunState::Approved) {
        return Err(Refusal::NotGuarded(run.state));
    }
    if let Some((newer, state)) = newer {
        return Err(Refusal::Superseded {
            producer: run.producer.clone(),
            newer,
            state,
        });
    }
    let window_ms = i64::from(retention_days) * 86_400_000;
    if retention_days > 0 && run.started_at < now_ms - window_ms {
        return Err(Refusal::Expired {
            days: retention_days,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunCounts;

    const DAY: i64 = 86_400_000;

    /// `(name, run, newer compared run, retention_days, expected: Ok or a part of the refusal)`.
    type Case = (
        &'static str,
        RunRow,
        Option<(i64, RunState)>,
        u32,
        Result<(), &'static str>,
    );

    fn run(state: RunState, started_at: i64) -> RunRow {
        RunRow {
            id: 7,
            producer: "orders".into(),
            state,
            started_at,
            finished_at: Some(started_at + 1),
            counts: RunCounts::default(),
            error: None,
            approved_at: None,
            scheduled_for: None,
        }
    }

    #[test]
    fn approval_table() {
        let now = 100 * DAY;
        let recent = now - DAY;
        let cases: Vec<Case> = vec![
            (
                "latest guarded run",
                run(RunState::Guarded, recent),
                None,
                30,
                Ok(()),
            ),
            (
                "a later ok run",
                run(RunState::Guarded, recent),
                Some((9, RunState::Ok)),
                30,
                Err("cannot be approved: its drift list is stale: run 9 (ok)"),
            ),
            (
                "a later guarded run",
                run(RunState::Guarded, recent),
                Some((8, RunState::Guarded)),
                30,
                Err("run 8 (guarded)"),
            ),
            (
                "older than the retention window",
                run(RunState::Guarded, now - 31 * DAY),
                None,
                30,
                Err("expired"),
            ),
            (
                "retention 0 keeps runs approvable",
                run(RunState::Guarded, now - 400 * DAY),
                None,
                0,
                Ok(()),
            ),
            (
                "already approved",
                run(RunState::Approved, recent),
                None,
                30,
                Err("is already approved"),
            ),
            (
                "an ok run",
                run(RunState::Ok, recent),
                None,
                30,
                Err("finished ok and was never guarded: nothing to approve"),
            ),
            (
                "a failed run",
                run(RunState::Failed, recent),
                None,
                30,
                Err("failed and compared nothing: nothing to approve"),
            ),
            (
                "a running run",
                run(RunState::Running, recent),
                None,
                30,
                Err("is still running"),
            ),
        ];
        for (name, r, newer, days, expected) in cases {
            let got = check(&r, newer, now, days).map_err(|e| e.to_string());
            if let Err(got) = &got {
                assert!(!got.contains("transition"), "{name}: {got}");
            }
            match (got, expected) {
                (Ok(()), Ok(())) => {}
                (Err(got), Err(part)) => assert!(got.contains(part), "{name}: {got}"),
                (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
            }
        }
    }
}
