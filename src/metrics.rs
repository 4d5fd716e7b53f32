//! Prometheus metrics: every `driftd_*` family, created once at start-up and passed down (no global registry).
//!
//! Label values come only from bounded sets: producer names from the config,
//! and the fixed enums for channel, kind, outcome, state and action. A key,
//! an id or an error text never becomes a label.

use crate::keyframe::cause::Cause;
use crate::keyframe::compare::DriftKind;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::state::WorkState;

/// The `outcome` label values of `driftd_fetches_total`.
pub(crate) const FETCH_OUTCOMES: [&str; 6] = [
    "applied",
    "unchanged",
    "stale",
    "not_found",
    "failed",
    "gave_up",
];

/// All metric families; cheap to clone (each family is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub keyframe_runs: IntCounterVec,
    pub(crate) keyframe_duration: HistogramVec,
    pub(crate) keyframe_records: IntGaugeVec,
    pub(crate) first_sync_records: IntCounterVec,
    pub(crate) keyframe_last_success: GaugeVec,
    pub(crate) keyframe_expected_interval: GaugeVec,
    pub keyframe_guarded: IntGaugeVec,
    pub(crate) drift_detected: IntCounterVec,
    pub drift_open: IntGaugeVec,
    pub deltas: IntCounterVec,
    pub(crate) signature_failures: IntCounterVec,
    pub entities: IntGaugeVec,
    pub work_items: IntGaugeVec,
    pub(crate) work_completed: IntCounterVec,
    pub(crate) work_duration: HistogramVec,
    pub(crate) producer_state: IntGaugeVec,
    pub(crate) delta_loss_ratio: GaugeVec,
    pub fetches: IntCounterVec,
    pub(crate) fetch_backlog: IntGaugeVec,
    pub catchup_runs: IntCounterVec,
    pub(crate) catchup_records: IntCounterVec,
    pub(crate) catchup_running: IntGaugeVec,
    pub(crate) catchup_last_success: GaugeVec,
    pub(crate) keyframe_interval: GaugeVec,
    pub(crate) drift_rate: GaugeVec,
    pub(crate) pacing_reason: IntGaugeVec,
    pub(crate) build_info: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: T) -> T {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        // process_* (CPU seconds, resident memory, open files, start time)
        // of this process, read from /proc at each scrape.
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("the process collector registers once");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let igauge = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let hist = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            register(
                &r,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                    .expect("valid metric"),
            )
        };
        let keyframe_buckets = vec![
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ];
        let work_buckets = vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
        ];
        let m = Self {
            keyframe_runs: counter(
                "driftd_keyframe_runs_total",
                "Keyframe runs by outcome (ok, failed, guarded).",
                &["producer", "outcome"],
            ),
            keyframe_duration: hist(
                "driftd_keyframe_duration_seconds",
                "Wall time of keyframe runs.",
                &["producer"],
                keyframe_buckets,
            ),
            keyframe_records: igauge(
                "driftd_keyframe_records",
                "Records in the last successful snapshot.",
                &["producer"],
            ),
            first_sync_records: counter(
                "driftd_first_sync_records_total",
                "Records a first sync wrote into an empty mirror instead of queueing work.",
                &["producer"],
            ),
            keyframe_last_success: register(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "driftd_keyframe_last_success_timestamp_seconds",
                        "Unix time of the last successful keyframe (from the database, so a \
                         restart keeps it); for a producer that never succeeded, when its first \
                         run began, else when this process started.",
                    ),
                    &["producer"],
                )
                .expect("valid metric"),
            ),
            keyframe_expected_interval: register(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "driftd_keyframe_expected_interval_seconds",
                        "The longest time the producer's schedule lets pass between keyframes \
                         (a cron's longest gap between ticks; adaptive: max_interval_secs, or a \
                         day over max_pulls_per_day if longer).",
                    ),
                    &["producer"],
                )
                .expect("valid metric"),
            ),
            keyframe_guarded: igauge(
                "driftd_keyframe_guarded",
                "1 while the producer's latest keyframe is guarded, awaiting `driftd approve`.",
                &["producer"],
            ),
            drift_detected: counter(
                "driftd_drift_detected_total",
                "Drifted entities found by keyframes, by kind and cause (lost_delta, late_delta, \
                 rejected_delta, silent_change, deleted_upstream, created_upstream).",
                &["producer", "kind", "cause"],
            ),
            drift_open: igauge(
                "driftd_drift_open",
                "Entities with an open correction.",
                &["producer"],
            ),
            deltas: counter(
                "driftd_deltas_total",
                "Deltas received, by channel and outcome.",
                &["producer", "channel", "outcome"],
            ),
            signature_failures: counter(
                "driftd_webhook_signature_failures_total",
                "Webhooks refused for a bad or missing signature.",
                &["producer"],
            ),
            entities: igauge("driftd_entities", "Live entities stored.", &["producer"]),
            work_items: igauge(
                "driftd_work_items",
                "Work items by producer and state (pending, running, dead).",
                &["producer", "state"],
            ),
            work_completed: counter(
                "driftd_work_completed_total",
                "Work attempts finished, by producer, action and outcome (done, retry, dead).",
                &["producer", "action", "outcome"],
            ),
            work_duration: hist(
                "driftd_work_duration_seconds",
                "Time to carry out one work attempt.",
                &["producer", "action"],
                work_buckets,
            ),
            producer_state: igauge(
                "driftd_producer_state",
                "1 for the producer's current health state.",
                &["producer", "state"],
            ),
            delta_loss_ratio: register(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "driftd_delta_loss_ratio",
                        "Share of the changes the last keyframe found that no delta had delivered.",
                    ),
                    &["producer"],
                )
                .expect("valid metric"),
            ),
            fetches: counter(
                "driftd_fetches_total",
                "Records fetched by key, by outcome (applied, unchanged, stale, not_found, failed, gave_up).",
                &["producer", "outcome"],
            ),
            fetch_backlog: igauge(
                "driftd_fetch_backlog",
                "Keys waiting to be fetched from the producer.",
                &["producer"],
            ),
            catchup_runs: counter(
                "driftd_catchup_runs_total",
                "Catch-up pulls by outcome (ok, failed).",
                &["producer", "outcome"],
            ),
            catchup_records: counter(
                "driftd_catchup_records_total",
                "Records catch-ups pulled, by what writing them did (applied, unchanged, stale).",
                &["producer", "outcome"],
            ),
            catchup_running: igauge(
                "driftd_catchup_running",
                "1 while a catch-up pull of the producer runs.",
                &["producer"],
            ),
            catchup_last_success: register(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "driftd_catchup_last_success_timestamp_seconds",
                        "Unix time of the last successful catch-up.",
                    ),
                    &["producer"],
                )
                .expect("valid metric"),
            ),
            keyframe_interval: register(
                &r,
                GaugeVec::new(Opts::new("driftd_keyframe_interval_seconds", "The interval adaptive pacing chose after the last keyframe."), &["producer"]).expect("valid metric"),
            ),
            drift_rate: register(
                &r,
                GaugeVec::new(Opts::new("driftd_keyframe_drift_rate", "Drifted records per second, as adaptive pacing estimates it."), &["producer"]).expect("valid metric"),
            ),
            pacing_reason: igauge(
                "driftd_keyframe_pacing_reason",
                "1 for why adaptive pacing chose its current interval.",
                &["producer", "reason"],
            ),
            build_info: register(
                &r,
                Gauge::with_opts(
                    Opts::new(
                        "driftd_build_info",
                        "Always 1; the version label names the build.",
                    )
                    .const_label("version", env!("CARGO_PKG_VERSION")),
                )
                .expect("valid metric"),
            ),
            registry: r,
        };
        m.build_info.set(1.0);
        m
    }

    /// Shows an adaptive producer's pacing: interval, estimated drift rate,
    /// and which reason holds (1) and which do not (0).
    pub(crate) fn set_pacing(&self, producer: &str, pace: &crate::pacing::Pace) {
        self.keyframe_interval
            .with_label_values(&[producer])
            .set(pace.interval_secs);
        self.drift_rate
            .with_label_values(&[producer])
            .set(pace.rate);
        for reason in crate::pacing::Reason::ALL {
            self.pacing_reason
                .with_label_values(&[producer, reason.as_str()])
                .set(i64::from(*reason == pace.reason));
        }
    }

    /// Creates every labelled series of a producer at zero so dashboards and
    /// alerts see it before the first event.
    pub fn init_producer(&self, producer: &str) {
        for outcome in ["ok", "failed", "guarded"] {
            self.keyframe_runs.with_label_values(&[producer, outcome]);
        }
        for kind in [DriftKind::Missing, DriftKind::Extra, DriftKind::Changed] {
            for cause in Cause::of_kind(kind) {
                self.drift_detected
                    .with_label_values(&[producer, kind.as_str(), cause.as_str()]);
            }
        }
        for channel in ["webhook", "email"] {
            for outcome in [
                "applied",
                "stale",
                "duplicate",
                "rejected",
                "unmatched",
                "fetched",
                "tie",
            ] {
                self.deltas.with_label_values(&[producer, channel, outcome]);
            }
        }
        self.signature_failures.with_label_values(&[producer]);
        self.drift_open.with_label_values(&[producer]);
        self.entities.with_label_values(&[producer]);
        self.keyframe_records.with_label_values(&[producer]);
        self.first_sync_records.with_label_values(&[producer]);
        self.keyframe_guarded.with_label_values(&[producer]);
        self.delta_loss_ratio.with_label_values(&[producer]);
        for outcome in FETCH_OUTCOMES {
            self.fetches.with_label_values(&[producer, outcome]);
        }
        self.fetch_backlog.with_label_values(&[producer]);
        for outcome in ["ok", "failed"] {
            self.catchup_runs.with_label_values(&[producer, outcome]);
        }
        for outcome in ["applied", "unchanged", "stale"] {
            self.catchup_records.with_label_values(&[producer, outcome]);
        }
        self.catchup_running.with_label_values(&[producer]);
        for state in [WorkState::Pending, WorkState::Running, WorkState::Dead] {
            self.work_items
                .with_label_values(&[producer, state.as_str()]);
        }
    }

    /// Creates the work series of a producer whose items driftd carries out
    /// (`apply`, `http`) at zero.
    pub(crate) fn init_action(&self, producer: &str, action: &str) {
        for outcome in ["done", "retry", "dead"] {
            self.work_completed
                .with_label_values(&[producer, action, outcome]);
        }
    }

    /// The text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}
