//! The story on stdout: what each keyframe found and how the corrections went.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::churn::Stats;
use super::PRODUCER;
use crate::metrics::Metrics;
use crate::state::RunState;
use crate::store::{RunRow, Store};

/// Prints the story: permanent lines, and a status line that refreshes in place on a terminal.
pub(super) struct Console {
    pub(super) start: Instant,
    pub(super) tty: bool,
    /// A refreshing line is on screen and must be cleared before the next permanent one.
    pub(super) dirty: bool,
}

impl Console {
    pub(super) fn new() -> Self {
        Self {
            start: Instant::now(),
            tty: std::io::stdout().is_terminal(),
            dirty: false,
        }
    }

    pub(super) fn stamp(&self) -> String {
        format!("[{:>5.1}s]", self.start.elapsed().as_secs_f64())
    }

    pub(super) fn say(&mut self, line: impl AsRef<str>) {
        let mut out = std::io::stdout().lock();
        let clear = if self.dirty { "\r\x1b[K" } else { "" };
        let _ = writeln!(out, "{clear}{} {}", self.stamp(), line.as_ref());
        let _ = out.flush();
        self.dirty = false;
    }

    /// A progress or status line: refreshed in place on a terminal, printed when `always` otherwise.
    pub(super) fn status(&mut self, line: impl AsRef<str>, always: bool) {
        if self.tty {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[K{} {}", self.stamp(), line.as_ref());
            let _ = out.flush();
            self.dirty = true;
        } else if always {
            self.say(line);
        }
    }

    pub(super) fn done(&mut self) {
        if self.dirty {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out);
            self.dirty = false;
        }
    }
}

/// Which keyframe a run was, for the printout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Bootstrap,
    Scheduled,
    Final,
    Check,
}

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Bootstrap => "bootstrap",
            Kind::Scheduled => "scheduled",
            Kind::Final => "final",
            Kind::Check => "check",
        }
    }
}

/// Drift found by the keyframes after the bootstrap.
#[derive(Debug, Default)]
pub(super) struct Totals {
    pub(super) keyframes: u64,
    pub(super) bootstrap_missing: u64,
    pub(super) missing: u64,
    pub(super) extra: u64,
    pub(super) changed: u64,
    pub(super) guarded: u64,
    pub(super) failed: u64,
    /// Orders catch-ups applied that no delta had brought (`--catchup`).
    pub(super) catchup_applied: u64,
}

/// A keyframe run whose corrections the reporter waits to see applied.
#[derive(Debug, Clone, Copy)]
pub(super) struct Correcting {
    pub(super) run: i64,
    pub(super) drift: u64,
    pub(super) since: Instant,
    /// Open drift was seen above zero: the run's work has been emitted.
    pub(super) seen_open: bool,
}

/// A run is recorded finished just before its work is emitted; after this long
/// an open drift of zero means the work was emitted and carried out.
pub(super) const EMIT_GRACE: Duration = Duration::from_secs(1);

/// Watches the store and the metrics and prints what happened.
pub(super) struct Reporter {
    pub(super) console: Console,
    pub(super) store: Store,
    pub(super) metrics: Metrics,
    pub(super) stats: Arc<Stats>,
    pub(super) config_path: PathBuf,
    pub(super) last_run: i64,
    pub(super) kinds: BTreeMap<i64, Kind>,
    pub(super) totals: Totals,
    pub(super) warned_not_found: bool,
    /// A keyframe whose corrections may still be open.
    pub(super) correcting: Option<Correcting>,
    /// When the last catch-up printed finished (`--catchup`).
    pub(super) last_catchup: Option<i64>,
    /// `--adaptive`: keyframes paced by their drift.
    pub(super) adaptive: bool,
    /// When the vendor's loss changes, and to what; how many were announced.
    pub(super) loss_steps: Vec<(Instant, f64)>,
    pub(super) loss_shown: usize,
    /// The pacing last printed (its `updated_at`).
    pub(super) last_paced: Option<i64>,
}

impl Reporter {
    /// Prints every keyframe run that finished since the last call, oldest first.
    pub(super) async fn runs(&mut self) -> anyhow::Result<()> {
        let mut runs: Vec<RunRow> = self
            .store
            .runs(PRODUCER, 20)
            .await?
            .into_iter()
            .filter(|r| r.id > self.last_run && r.finished_at.is_some())
            .collect();
        runs.sort_by_key(|r| r.id);
        self.loss_steps_passed();
        for r in runs {
            self.last_run = r.id;
            let kind = self.kinds.get(&r.id).copied().unwrap_or(Kind::Scheduled);
            let causes = self.store.drift_causes(r.id).await?;
            self.print_run(&r, kind, &causes);
            self.pacing().await?;
        }
        self.catchups().await?;
        if let Some(mut c) = self.correcting {
            let open = self.open_drift().await?;
            c.seen_open |= open > 0;
            self.correcting = Some(c);
            if open == 0 && (c.seen_open || c.since.elapsed() >= EMIT_GRACE) {
                self.correcting = None;
                self.console.say(format!(
                    "  run {}: the workers applied its {} corrections within {:.1}s; open drift 0",
                    c.run,
                    c.drift,
                    c.since.elapsed().as_secs_f64()
                ));
            }
        }
        Ok(())
    }

    /// Announces each change of the vendor's loss once it takes effect
    /// (`--adaptive`; the first is the one the run starts with).
    fn loss_steps_passed(&mut self) {
        let now = Instant::now();
        while self.loss_shown < self.loss_steps.len() && self.loss_steps[self.loss_shown].0 <= now {
            let loss = self.loss_steps[self.loss_shown].1;
            if self.loss_shown > 0 {
                self.console
                    .say(format!("vendor: now {} of webhooks lost", fmt_share(loss)));
            }
            self.loss_shown += 1;
        }
    }

    /// Prints the interval adaptive pacing chose after the last keyframe.
    async fn pacing(&mut self) -> anyhow::Result<()> {
        if !self.adaptive {
            return Ok(());
        }
        let Some(p) = self.store.pacing(PRODUCER).await? else {
            return Ok(());
        };
        if self.last_paced == Some(p.updated_at) {
            return Ok(());
        }
        self.last_paced = Some(p.updated_at);
        self.console.say(format!(
            "  pacing: next keyframe in {:.1}s ({}, drift rate {:.2}/s)",
            p.pace.interval_secs,
            p.pace.reason.as_str().replace('_', " "),
            p.pace.rate
        ));
        Ok(())
    }

    /// Prints the last catch-up if it finished since the last call and
    /// found something (or failed).
    async fn catchups(&mut self) -> anyhow::Result<()> {
        let Some(c) = self.store.catchup_state(PRODUCER).await? else {
            return Ok(());
        };
        let Some(at) = c.last_at else { return Ok(()) };
        if self.last_catchup == Some(at) {
            return Ok(());
        }
        self.last_catchup = Some(at);
        self.totals.catchup_applied += u64::try_from(c.applied).unwrap_or(0);
        if let Some(e) = c.last_error.as_deref() {
            self.console
                .say(format!("catch-up FAILED, retried at the next tick: {e}"));
        } else if c.applied > 0 {
            self.console.say(format!(
                "catch-up: {} orders changed since the last, {} missing here (webhook lost) -> applied",
                c.records, c.applied
            ));
        }
        Ok(())
    }

    pub(super) fn print_run(&mut self, r: &RunRow, kind: Kind, causes: &BTreeMap<String, u64>) {
        let c = &r.counts;
        let t = &mut self.totals;
        t.keyframes += 1;
        let head = format!(
            "keyframe run {} ({}): {} records",
            r.id,
            kind.name(),
            c.records
        );
        let drift = c.missing + c.extra + c.changed;
        let races = if c.skipped_races > 0 {
            format!(
                "; {} changed during the pull, left for the next keyframe",
                c.skipped_races
            )
        } else {
            String::new()
        };
        let line = match r.state {
            RunState::Failed => {
                t.failed += 1;
                format!(
                    "{head}: FAILED, nothing corrected: {}",
                    r.error.as_deref().unwrap_or("unknown error")
                )
            }
            RunState::Guarded => {
                t.guarded += 1;
                format!(
                    "{head}, drift found {drift} (missing {}, extra {}, changed {}): GUARDED, more than \
                     max_drift_ratio allows; nothing corrected until `driftd approve {} --config {}`",
                    c.missing,
                    c.extra,
                    c.changed,
                    r.id,
                    self.config_path.display()
                )
            }
            _ if drift == 0 => format!("{head}, no drift{races}"),
            _ if kind == Kind::Bootstrap => format!(
                "{head}, drift found {drift} (missing {}) -> loaded into the empty table in bulk \
                 (a first sync writes the records itself instead of queueing one work item each)",
                c.missing
            ),
            _ => format!(
                "{head}, drift found {drift} (missing {}, extra {}, changed {}) -> queued as apply work{races}",
                c.missing, c.extra, c.changed
            ),
        };
        if r.state == RunState::Ok && drift > 0 && kind != Kind::Bootstrap {
            self.correcting = Some(Correcting {
                run: r.id,
                drift,
                since: Instant::now(),
                seen_open: false,
            });
        }
        if r.state != RunState::Failed {
            if kind == Kind::Bootstrap {
                t.bootstrap_missing += c.missing;
            } else {
                t.missing += c.missing;
                t.extra += c.extra;
                t.changed += c.changed;
            }
        }
        self.console.say(line);
        if drift > 0 && kind != Kind::Bootstrap && !causes.is_empty() {
            let why: Vec<String> = causes
                .iter()
                .map(|(cause, n)| format!("{n} {}", cause.replace('_', " ")))
                .collect();
            self.console.say(format!("  why: {}", why.join(", ")));
        }
    }

    pub(super) fn delta_outcome(&self, outcome: &str) -> u64 {
        self.metrics
            .deltas
            .with_label_values(&[PRODUCER, "webhook", outcome])
            .get()
    }

    pub(super) fn webhook_line(&self) -> String {
        let s = &self.stats;
        format!(
            "webhooks sent {}, lost {}, duplicated {}, reordered {}",
            Stats::get(&s.sent),
            Stats::get(&s.lost),
            Stats::get(&s.duplicated),
            Stats::get(&s.reordered)
        )
    }

    pub(super) fn driftd_deltas(&self) -> String {
        let s = &self.stats;
        if Stats::get(&s.accepted) == 0 && Stats::get(&s.not_found) > 0 {
            return "webhooks refused: 404".into();
        }
        let mut parts = vec![format!(
            "deltas applied {}, stale {}, duplicate {}",
            self.delta_outcome("applied"),
            self.delta_outcome("stale"),
            self.delta_outcome("duplicate")
        )];
        let refused = Stats::get(&s.refused) + Stats::get(&s.not_found);
        if refused > 0 {
            let status = match Stats::get(&s.refused) {
                0 => 404,
                _ => Stats::get(&s.last_refusal),
            };
            parts.push(format!("refused {refused} (last HTTP {status})"));
        }
        if Stats::get(&s.failed) > 0 {
            parts.push(format!("unanswered {}", Stats::get(&s.failed)));
        }
        parts.join(", ")
    }

    pub(super) async fn open_drift(&self) -> anyhow::Result<i64> {
        Ok(self
            .store
            .open_work_by_producer()
            .await?
            .get(PRODUCER)
            .copied()
            .unwrap_or(0))
    }

    /// The status line: what the vendor sent, what driftd holds, the open drift.
    ///
    /// A permanent line, not one refreshed in place: it is wider than many
    /// terminals, and a wrapped line cannot be redrawn with `\r`.
    pub(super) async fn status(&mut self) -> anyhow::Result<()> {
        let entities = self.store.count_entities(PRODUCER).await?;
        let open = self.open_drift().await?;
        let line = format!(
            "{} | driftd: {entities} orders, open drift {open}, {}",
            self.webhook_line(),
            self.driftd_deltas()
        );
        self.console.say(line);
        if !self.warned_not_found && Stats::get(&self.stats.not_found) > 0 {
            self.warned_not_found = true;
            self.console.say(
                "note: driftd answered 404 to POST /hooks/demo: this build has no webhook endpoint yet, \
                 so no delta is applied and keyframes alone correct the drift",
            );
        }
        Ok(())
    }
}

/// A share as a percentage, with as many decimals as it needs (0.1%, 10%).
fn fmt_share(share: f64) -> String {
    let pct = share * 100.0;
    if pct >= 1.0 || pct == 0.0 {
        format!("{pct:.0}%")
    } else {
        format!("{pct:.1}%")
    }
}
