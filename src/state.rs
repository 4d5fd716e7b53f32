//! The state machines: keyframe runs, work items, entity sync state, producer health. One enum and one transition table each.
//!
//! An invalid transition is an error ([`TransitionError`]), never a silent write.

use std::fmt;

/// A refused transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {machine} transition from {from:?} to {to:?}")]
pub struct TransitionError {
    pub machine: &'static str,
    pub from: &'static str,
    pub to: &'static str,
}

macro_rules! state_machine {
    (
        $(#[$meta:meta])*
        $name:ident, $machine:literal {
            $($variant:ident = $text:literal),+ $(,)?
        }
        transitions { $($from:ident => [$($to:ident),*]),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every state; the transition tests walk it for each machine.
            #[allow(dead_code, reason = "generated for every machine; some use it only in tests")]
            pub(crate) const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }

            /// The transition table.
            pub(crate) fn can_become(self, next: Self) -> bool {
                match self { $($name::$from => [$($name::$to),*].contains(&next),)+ }
            }

            pub fn check(self, next: Self) -> Result<(), TransitionError> {
                if self.can_become(next) {
                    Ok(())
                } else {
                    Err(TransitionError { machine: $machine, from: self.as_str(), to: next.as_str() })
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

state_machine! {
    /// A keyframe run. `approved` is a guarded run an operator let through.
    RunState, "keyframe run" {
        Running = "running",
        Ok = "ok",
        Failed = "failed",
        Guarded = "guarded",
        Approved = "approved",
    }
    transitions {
        Running => [Ok, Failed, Guarded],
        Ok => [],
        Failed => [],
        Guarded => [Approved],
        Approved => [],
    }
}

impl RunState {
    /// The states of a run that compared the producer with the local rows.
    pub(crate) const COMPARED: [RunState; 3] =
        [RunState::Ok, RunState::Guarded, RunState::Approved];
}

state_machine! {
    /// A work item. A retry goes back to `pending` with a later `run_at`.
    /// `dead → done`: a call that outlived its lease answered 2xx after the
    /// reclaim had run the item out of attempts.
    WorkState, "work item" {
        Pending = "pending",
        Running = "running",
        Done = "done",
        Dead = "dead",
        Cancelled = "cancelled",
    }
    transitions {
        Pending => [Running, Done, Cancelled],
        Running => [Done, Pending, Dead, Cancelled],
        Done => [],
        Dead => [Pending, Done],
        Cancelled => [],
    }
}

/// What an operator or the application asks of one work item: `driftd
/// work retry|done|cancel`, `POST /v1/work/{id}/done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Steer {
    /// A dead item back in the queue, or a pending one due now; attempts start again.
    Retry,
    /// Carried out elsewhere: the mirror then holds its record.
    Done,
    Cancel,
}

impl Steer {
    #[cfg(test)]
    pub(crate) const ALL: [Steer; 3] = [Steer::Retry, Steer::Done, Steer::Cancel];

    /// The steer that moves an item to `next`, if any does.
    pub(crate) fn to(next: WorkState) -> Option<Self> {
        match next {
            WorkState::Pending => Some(Self::Retry),
            WorkState::Done => Some(Self::Done),
            WorkState::Cancelled => Some(Self::Cancel),
            WorkState::Running | WorkState::Dead => None,
        }
    }

    #[cfg(test)]
    pub(crate) fn target(self) -> WorkState {
        match self {
            Self::Retry => WorkState::Pending,
            Self::Done => WorkState::Done,
            Self::Cancel => WorkState::Cancelled,
        }
    }

    /// `None` when item `id`, now in `state`, may be steered so; otherwise
    /// the sentence that tells its user why not. Allows only what the
    /// transition table allows, and a retry of a pending item (due now).
    pub(crate) fn refusal(self, id: i64, state: WorkState) -> Option<String> {
        use WorkState::{Cancelled, Dead, Done, Pending, Running};
        let item = format!("work item {id}");
        let why = match (self, state) {
            (Self::Retry, Dead | Pending)
            | (Self::Done, Pending | Running | Dead)
            | (Self::Cancel, Pending | Running) => return None,
            (Self::Retry, Running) => format!(
                "{item} is running: it is being carried out now; wait for its outcome, or cancel it"
            ),
            (Self::Retry, Done) => format!("{item} is done: only dead or pending items can be retried"),
            (Self::Retry, Cancelled) => {
                format!("{item} was cancelled: only dead or pending items can be retried")
            }
            (Self::Done, Done) => format!("{item} is already done"),
            (Self::Done, Cancelled) => format!(
                "{item} was cancelled: only pending, running or dead items can be marked done"
            ),
            (Self::Cancel, Done) => {
                format!("{item} is done: only pending or running items can be cancelled")
            }
            (Self::Cancel, Dead) => format!(
                "{item} is dead: only pending or running items can be cancelled; `driftd work retry {id}` puts it back in the queue"
            ),
            (Self::Cancel, Cancelled) => format!("{item} is already cancelled"),
        };
        Some(why)
    }
}

state_machine! {
    /// An entity's sync state.
    SyncState, "entity sync" {
        InSync = "in_sync",
        Drifted = "drifted",
        Correcting = "correcting",
    }
    transitions {
        InSync => [Drifted],
        Drifted => [Correcting, InSync],
        Correcting => [InSync, Drifted],
    }
}

state_machine! {
    /// A producer's health, driven by keyframe outcomes.
    Health, "producer health" {
        Healthy = "healthy",
        Uncertain = "uncertain",
        Unavailable = "unavailable",
    }
    transitions {
        Healthy => [Uncertain, Unavailable],
        Uncertain => [Healthy, Unavailable],
        Unavailable => [Healthy],
    }
}

impl Health {
    /// The health after a keyframe, given the failures in a row including this one.
    pub(crate) fn after_keyframe(
        succeeded: bool,
        failures_in_a_row: u32,
        unhealthy_after: u32,
    ) -> Self {
        if succeeded {
            Self::Healthy
        } else if failures_in_a_row >= unhealthy_after {
            Self::Unavailable
        } else {
            Self::Uncertain
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pair of states, checked against an explicit list of allowed moves.
    fn assert_table<S: Copy + PartialEq + fmt::Debug>(
        all: &[S],
        can: impl Fn(S, S) -> bool,
        allowed: &[(S, S)],
    ) {
        for &a in all {
            for &b in all {
                assert_eq!(can(a, b), allowed.contains(&(a, b)), "{a:?} -> {b:?}");
            }
        }
    }

    #[test]
    fn run_transitions() {
        use RunState::*;
        assert_table(
            RunState::ALL,
            RunState::can_become,
            &[
                (Running, Ok),
                (Running, Failed),
                (Running, Guarded),
                (Guarded, Approved),
            ],
        );
        let err = Ok.check(Approved).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid keyframe run transition from \"ok\" to \"approved\""
        );
    }

    #[test]
    fn work_transitions() {
        use WorkState::*;
        assert_table(
            WorkState::ALL,
            WorkState::can_become,
            &[
                (Pending, Running),
                (Pending, Done),
                (Pending, Cancelled),
                (Running, Done),
                (Running, Pending),
                (Running, Dead),
                (Running, Cancelled),
                (Dead, Pending),
                (Dead, Done),
            ],
        );
    }

    /// Every steer from every state: allowed only where the table allows
    /// it (or a retry of a pending item), refused with a sentence about the
    /// item, never the machine's words.
    #[test]
    fn steering_work_items() {
        let mut allowed = Vec::new();
        for &steer in &Steer::ALL {
            assert_eq!(Steer::to(steer.target()), Some(steer));
            for &state in WorkState::ALL {
                match steer.refusal(7, state) {
                    None => {
                        assert!(
                            state.can_become(steer.target())
                                || (steer, state) == (Steer::Retry, WorkState::Pending),
                            "{steer:?} from {state:?}"
                        );
                        allowed.push((steer, state));
                    }
                    Some(why) => {
                        assert!(why.starts_with("work item 7 "), "{why}");
                        assert!(why.contains(state.as_str()), "{why}");
                        assert!(!why.contains("transition"), "{why}");
                    }
                }
            }
        }
        assert_eq!(allowed.len(), 7, "{allowed:?}");
        assert_eq!(
            Steer::Retry.refusal(7, WorkState::Done).as_deref(),
            Some("work item 7 is done: only dead or pending items can be retried")
        );
        assert_eq!(Steer::to(WorkState::Dead), None);
    }

    #[test]
    fn sync_and_health_transitions() {
        use Health::*;
        use SyncState::*;
        assert_table(
            SyncState::ALL,
            SyncState::can_become,
            &[
                (InSync, Drifted),
                (Drifted, Correcting),
                (Drifted, InSync),
                (Correcting, InSync),
                (Correcting, Drifted),
            ],
        );
        assert_table(
            Health::ALL,
            Health::can_become,
            &[
                (Healthy, Uncertain),
                (Healthy, Unavailable),
                (Uncertain, Healthy),
                (Uncertain, Unavailable),
                (Unavailable, Healthy),
            ],
        );
        assert_eq!(Health::after_keyframe(false, 1, 3), Uncertain);
        assert_eq!(Health::after_keyframe(false, 3, 3), Unavailable);
        assert_eq!(Health::after_keyframe(true, 0, 3), Healthy);
        assert_eq!(Health::after_keyframe(false, 1, 1), Unavailable);
    }

    #[test]
    fn names_round_trip() {
        for s in WorkState::ALL {
            assert_eq!(WorkState::parse(s.as_str()), Some(*s));
        }
        for s in RunState::ALL {
            assert_eq!(RunState::parse(s.as_str()), Some(*s));
        }
        assert_eq!(Health::parse("sick"), None);
    }
}
