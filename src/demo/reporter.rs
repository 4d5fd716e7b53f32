//! The story on stdout: what each keyframe found and how the corrections went.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::churn::Stats;
use super::PRODUCER;
use crate::metrics::Metrics;
use crate::state::RunState;
use crate::store::{RunRow, Store};

/// Every line the demo prints fits this many columns.
pub(super) const WIDTH: usize = 100;

/// Where a story line continues when it is wrapped: under its text, past the stamp.
const STORY_INDENT: &str = "           ";

/// `text` broken at spaces into lines of at most `width` columns, each after
/// the first starting with `indent`; leading spaces are kept. A single word
/// longer than a line (a long path) stands on a line of its own, unbroken.
pub(super) fn wrap(text: &str, width: usize, indent: &str) -> Vec<String> {
    let cols = |s: &str| s.chars().count();
    let body = text.trim_start_matches(' ');
    let mut line = text[..text.len() - body.len()].to_string();
    let mut has_word = false;
    let mut lines = Vec::new();
    for word in body.split(' ') {
        if has_word && cols(&line) + 1 + cols(word) > width {
            lines.push(std::mem::replace(&mut line, indent.to_string()));
            has_word = false;
            if word.is_empty() {
                continue;
            }
        }
        if has_word {
            line.push(' ');
        }
        line.push_str(word);
        has_word = true;
    }
    lines.push(line);
    lines
}

/// Prints `text` (no stamp) wrapped to [`WIDTH`], continuing under `indent`.
pub(super) fn print_wrapped(text: &str, indent: &str) {
    for line in wrap(text, WIDTH, indent) {
        println!("{line}");
    }
}

/// How to run this same driftd from the directory the demo was started in:
/// the executable's path, relative when it lies below that directory
/// (`./target/release/driftd` after `cargo run --release`), quoted when it
/// holds a character the shell would split or expand.
pub(super) fn driftd_command() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "driftd".into();
    };
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| {
            exe.strip_prefix(cwd)
                .ok()
                .map(|rel| Path::new(".").join(rel))
        })
        .unwrap_or_else(|| exe.clone());
    let shown = shown.display().to_string();
    if shown
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        shown
    } else {
        format!("'{}'", shown.replace('\'', r"'\''"))
    }
}

/// How many items were open at `now`, and the most open at once from
/// `since` to `now`, from each item's (opened, closed) times in ms. Items
/// that open and close within the same millisecond count as open then.
pub(super) fn open_and_peak(spans: &[(i64, Option<i64>)], since: i64, now: i64) -> (u64, u64) {
    let open_at = |t: i64| {
        spans
            .iter()
            .filter(|(o, c)| *o <= t && c.is_none_or(|c| c > t))
            .count() as u64
    };
    // Opens (0) before closes (1) at the same instant.
    let mut events: Vec<(i64, u8)> = Vec::new();
    for (o, c) in spans {
        if *o > since && *o <= now {
            events.push((*o, 0));
        }
        if let Some(c) = c {
            if *c > since && *c <= now {
                events.push((*c, 1));
            }
        }
    }
    events.sort_unstable();
    // Every close is of an item open at `since` or opened before it (opens
    // sort first), so the count never goes below zero.
    let mut count = open_at(since);
    let mut peak = count;
    for (_, kind) in events {
        count = if kind == 0 {
            count + 1
        } else {
            count.saturating_sub(1)
        };
        peak = peak.max(count);
    }
    (open_at(now), peak)
}

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

    /// A permanent line, stamped, wrapped to [`WIDTH`].
    pub(super) fn say(&mut self, line: impl AsRef<str>) {
        let mut out = std::io::stdout().lock();
        let clear = if self.dirty { "\r\x1b[K" } else { "" };
        let text = format!("{} {}", self.stamp(), line.as_ref());
        let _ = write!(out, "{clear}");
        for l in wrap(&text, WIDTH, STORY_INDENT) {
            let _ = writeln!(out, "{l}");
        }
        let _ = out.flush();
        self.dirty = false;
    }

    /// A progress or status line: refreshed in place on a terminal, printed when `always` otherwise.
    pub(super) fn status(&mut self, line: impl AsRef<str>, always: bool) {
        if self.tty {
            let mut out = std::io::stdout().lock();
            // Redrawn with `\r`, so never wrapped: cut to the width.
            let text: String = format!("{} {}", self.stamp(), line.as_ref())
                .chars()
                .take(WIDTH)
                .collect();
            let _ = write!(out, "\r\x1b[K{text}");
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
    /// When the run began (ms): its items opened after.
    pub(super) started_at: i64,
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
    /// How to run this driftd from where the demo started ([`driftd_command`]).
    pub(super) driftd: String,
    /// When the last status line was printed (ms): its open-drift peak starts there.
    pub(super) last_status_ms: i64,
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
            let spans = self.store.work_spans(PRODUCER, c.started_at).await?;
            let open = spans.iter().filter(|(_, closed)| closed.is_none()).count();
            c.seen_open |= !spans.is_empty();
            self.correcting = Some(c);
            if open == 0 && (c.seen_open || c.since.elapsed() >= EMIT_GRACE) {
                self.correcting = None;
                // From the first item queued to the last one done, as the work rows record it.
                let first = spans.iter().map(|(o, _)| *o).min();
                let last = spans.iter().filter_map(|(_, closed)| *closed).max();
                let line = match (first, last) {
                    (Some(first), Some(last)) => format!(
                        "  run {}: the workers applied its {} corrections {:.2}s after they were \
                         queued; open drift 0",
                        c.run,
                        c.drift,
                        (last - first).max(0) as f64 / 1000.0
                    ),
                    _ => format!(
                        "  run {}: its {} corrections are applied; open drift 0",
                        c.run, c.drift
                    ),
                };
                self.console.say(line);
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
                     max_drift_ratio allows; nothing corrected until `{} approve {} --config {}`",
                    c.missing,
                    c.extra,
                    c.changed,
                    self.driftd,
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
                started_at: r.started_at,
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

    /// Webhooks sent and lost so far (duplicates and reorders are in the summary).
    pub(super) fn webhook_line(&self) -> String {
        let s = &self.stats;
        format!(
            "webhooks sent {}, lost {}",
            Stats::get(&s.sent),
            Stats::get(&s.lost),
        )
    }

    /// What driftd did with the deltas, for the summary.
    pub(super) fn driftd_deltas(&self) -> String {
        self.deltas_line(format!(
            "deltas applied {}, stale {}, duplicate {}",
            self.delta_outcome("applied"),
            self.delta_outcome("stale"),
            self.delta_outcome("duplicate")
        ))
    }

    /// The status line's shorter part: the duplicates are in the summary.
    fn status_deltas(&self) -> String {
        self.deltas_line(format!(
            "applied {}, stale {}",
            self.delta_outcome("applied"),
            self.delta_outcome("stale")
        ))
    }

    /// `counts`, and the webhooks driftd refused or never answered, if any.
    fn deltas_line(&self, counts: String) -> String {
        let s = &self.stats;
        if Stats::get(&s.accepted) == 0 && Stats::get(&s.not_found) > 0 {
            return "webhooks refused: 404".into();
        }
        let mut parts = vec![counts];
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

    /// The status line: what the vendor sent, what driftd applied, and the
    /// open drift (corrections queued and not yet carried out) now and at
    /// most since the previous status line, from the work rows' times: a
    /// keyframe's corrections are usually carried out before the next line,
    /// so the number open at that moment alone would nearly always be 0.
    ///
    /// A permanent line, not one refreshed in place: a line that wraps on a
    /// narrow terminal cannot be redrawn with `\r`.
    pub(super) async fn status(&mut self) -> anyhow::Result<()> {
        let now = crate::store::now_ms();
        let since = self.last_status_ms;
        let spans = self.store.work_spans(PRODUCER, since).await?;
        let (open, peak) = open_and_peak(&spans, since, now);
        self.last_status_ms = now;
        let line = format!(
            "{} | driftd: {} | open drift {open} (peak {peak})",
            self.webhook_line(),
            self.status_deltas()
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
