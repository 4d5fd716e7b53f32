//! `driftd-bench`: the benchmark harness (keyframe vs fetch-only and naive compare, durable webhook ingest, work queue, change feed) on SQLite and PostgreSQL; see BENCHMARKS.md.
//!
//! Every ratio is against a baseline measured in the same run: the keyframe
//! against a fetch-only pull of the same pages, the naive compare against the
//! keyframe at the same drift, webhook ingest through the real daemon against
//! single-row durable `INSERT`s, the work queue against a raw claim loop.
//! Keyframe-shaped scenarios each run in a child process of this binary
//! (`probe`) so their peak RSS (`VmHWM`) is their own. Traffic goes to
//! 127.0.0.1 only; every load loop stops at a request count or a deadline,
//! whichever comes first.
//!
//! The baselines hold raw SQL on purpose (they are what driftd is compared
//! with); driftd's own side goes through `Store`, `Keyframer` and `App` only.
//!
//! # Layout
//!
//! `main` parses the command line (`cli.rs`) and runs the scenarios it
//! names, each on a throwaway database (`db.rs`). A scenario file holds its
//! knobs (flattened into the commands), its run, its report type, its
//! section of the table and its targets: `keyframe.rs` (with the child
//! `probe` and the loopback vendor of `vendor.rs`), `ingest.rs` and
//! `work.rs` (driving requests through `load.rs`), `feed.rs`. Every report
//! goes into one `Results` (`report.rs`), printed as a table with the
//! targets and written as JSON; `report::note` prints progress on stderr.

mod cli;
mod db;
mod feed;
mod ingest;
mod keyframe;
mod load;
mod report;
mod vendor;
mod work;

use anyhow::{Context, Result};
use clap::Parser;

use crate::cli::{AllArgs, BackendArg, Cli, Cmd};
use crate::report::{process_secs, Results};

fn main() -> Result<()> {
    process_secs();
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(feed::StatementCounter),
        )
        .context("install the statement counter")?;
    }
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("build the tokio runtime")?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Probe(a) => keyframe::probe(a).await,
            Cmd::All(a) => all(a).await,
            Cmd::Keyframe(a) => {
                let mut r = Results::new();
                r.keyframe
                    .push(keyframe::scenario(a.backend, a.knobs.records, &a.knobs.kf).await?);
                r.finish(a.json.as_deref())
            }
            Cmd::Ingest(a) => {
                let mut r = Results::new();
                r.ingest.push(ingest::scenario(a.backend, &a.knobs).await?);
                r.finish(a.json.as_deref())
            }
            Cmd::Work(a) => {
                let mut r = Results::new();
                r.work.push(work::scenario(a.backend, &a.knobs).await?);
                r.finish(a.json.as_deref())
            }
            Cmd::Feed(a) => {
                let mut r = Results::new();
                r.feed.push(feed::scenario(a.backend, &a.knobs).await?);
                r.finish(a.json.as_deref())
            }
        }
    })
}

/// Every scenario on each chosen backend, in one `Results`.
async fn all(a: AllArgs) -> Result<()> {
    let mut r = Results::new();
    for &backend in &a.backends {
        let n = match backend {
            BackendArg::Sqlite => a.records,
            BackendArg::Postgres => a.pg_records.min(a.records),
        };
        r.keyframe
            .push(keyframe::scenario(backend, n, &a.kf).await?);
        r.ingest.push(ingest::scenario(backend, &a.ingest).await?);
        r.work.push(work::scenario(backend, &a.work).await?);
        r.feed.push(feed::scenario(backend, &a.feed).await?);
    }
    r.finish(a.json.as_deref())
}
