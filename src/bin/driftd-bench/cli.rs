//! The command line: subcommands, their arguments and the backend choice; each scenario's knobs live in its own file.

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::feed::FeedKnobs;
use crate::ingest::IngestKnobs;
use crate::keyframe::KeyframeKnobs;
use crate::work::WorkKnobs;

#[derive(Parser)]
#[command(
    name = "driftd-bench",
    about = "Benchmarks driftd against side-by-side baselines (see BENCHMARKS.md)"
)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) cmd: Cmd,
}

#[derive(Subcommand)]
pub(super) enum Cmd {
    /// Every scenario on both backends; prints a table and writes JSON.
    All(AllArgs),
    /// Keyframe vs fetch-only vs naive on one backend (seeds, then one child per measurement).
    Keyframe(OneBackend<KeyframeRun>),
    /// Durable webhook ingest through the daemon vs single-row INSERTs, on one backend.
    Ingest(OneBackend<IngestKnobs>),
    /// Work queue claim/finish vs a raw SQL claim loop, on one backend.
    Work(OneBackend<WorkKnobs>),
    /// Change feed: commit-to-delivery latency to waiting consumers and what idle consumers cost, on one backend.
    Feed(OneBackend<FeedKnobs>),
    /// (internal) One measurement against an already seeded database; prints one JSON line.
    #[command(hide = true)]
    Probe(ProbeArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum BackendArg {
    Sqlite,
    Postgres,
}

impl BackendArg {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

#[derive(Args, Clone)]
pub(super) struct AllArgs {
    /// Records of the keyframe scenarios on SQLite.
    #[arg(long, default_value_t = 1_000_000)]
    pub(super) records: u64,
    /// Records of the keyframe scenarios on PostgreSQL.
    #[arg(long, default_value_t = 1_000_000)]
    pub(super) pg_records: u64,
    /// Where to write the results as JSON.
    #[arg(long)]
    pub(super) json: Option<std::path::PathBuf>,
    /// Backends to run.
    #[arg(long, value_delimiter = ',', default_values = ["sqlite", "postgres"])]
    pub(super) backends: Vec<BackendArg>,
    #[command(flatten)]
    pub(super) kf: KeyframeKnobs,
    #[command(flatten)]
    pub(super) ingest: IngestKnobs,
    #[command(flatten)]
    pub(super) work: WorkKnobs,
    #[command(flatten)]
    pub(super) feed: FeedKnobs,
}

/// `keyframe`'s knobs: the records to seed, then the knobs `all` has too.
#[derive(Args, Clone)]
pub(super) struct KeyframeRun {
    #[arg(long, default_value_t = 1_000_000)]
    pub(super) records: u64,
    #[command(flatten)]
    pub(super) kf: KeyframeKnobs,
}

/// The arguments of a scenario run on one backend: its knobs `K`.
#[derive(Args, Clone)]
pub(super) struct OneBackend<K: Args> {
    #[arg(long, value_enum, default_value = "sqlite")]
    pub(super) backend: BackendArg,
    #[command(flatten)]
    pub(super) knobs: K,
    #[arg(long)]
    pub(super) json: Option<std::path::PathBuf>,
}

#[derive(Args, Clone)]
pub(super) struct ProbeArgs {
    #[arg(long)]
    pub(super) url: String,
    #[arg(long)]
    pub(super) records: u64,
    /// Records whose index is a multiple of this are at revision 1 (0: none);
    /// in a catch-up, at revision 2 (changed after the seeding and the corrections).
    #[arg(long, default_value_t = 0)]
    pub(super) drift_every: u64,
    #[arg(long, value_enum)]
    pub(super) mode: ProbeMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum ProbeMode {
    /// `fetch::pull` only: the same pages pulled, parsed and hashed, nothing compared.
    Fetch,
    /// A real keyframe run (`Keyframer::run`, not dry: records the run and emits work).
    Keyframe,
    /// A keyframe of an `apply` producer into the empty mirror: the bulk load.
    FirstSync,
    /// Pull, then load every local row with `Store::entities` and compare documents.
    Naive,
    /// A keyframe of an `apply` producer, then its corrections carried out by
    /// driftd's workers, then the same documents inserted into a plain table.
    Corrections,
    /// One catch-up (`catchup::catch_up`) from the version every seeded row
    /// has, pulling and applying only the records changed since.
    Catchup,
}
