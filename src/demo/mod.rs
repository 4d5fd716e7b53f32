//! `driftd demo`: the real daemon against an in-process vendor whose webhooks get lost, duplicated and reordered, until keyframes bring drift back to zero.
//!
//! Everything runs in this process and talks only over loopback:
//! - a demo **vendor** (an axum server on `127.0.0.1:0`) holds mortgage-platform
//!   orders and serves them with cursor pagination; a **churn** task changes a
//!   few dozen orders a second and sends driftd a signed Standard Webhooks
//!   delta per change, dropping `--loss` of them, duplicating and reordering
//!   some;
//! - the daemon itself (`App::build` + `App::run`) from a config written to
//!   `<dir>/driftd-demo.toml`, with SQLite in the same directory.
//!
//! The story printed on stdout: a bootstrap keyframe fills the empty table
//! (the guard never trips on an empty table) before the daemon starts; then
//! scheduled keyframes find the drift the lost deltas left and `apply` work
//! corrects it; at the end a final keyframe and a record-for-record comparison
//! with the vendor decide the exit status (0 only when equal).
//!
//! Files: `vendor.rs` (the orders and their endpoint), `churn.rs` (changes and
//! their webhooks), `setup.rs` (directory, config, secrets), `reporter.rs`
//! (the story on stdout), `run.rs` (starting, watching and stopping it all),
//! `verdict.rs` (the final comparison).

mod churn;
mod reporter;
mod run;
mod setup;
#[cfg(test)]
mod tests;
mod vendor;
mod verdict;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The producer's name in the demo config.
/// The demo's `/v1` read token (a loopback demo; real configs take it from the environment).
const DEMO_READ_TOKEN: &str = "demo-read-token";
const PRODUCER: &str = "demo";
/// File names inside the demo directory.
const CONFIG_FILE: &str = "driftd-demo.toml";
const DB_FILE: &str = "driftd-demo.db";
/// Share of delivered webhooks sent twice, and held back to arrive after a later one.
const DUPLICATE: f64 = 0.05;
const REORDER: f64 = 0.05;
/// Snapshot page size the config asks for.
const PAGE: usize = 500;
/// Per-request timeout of a webhook delivery.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds on the waits of the final phase.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
const KEYFRAME_TIMEOUT: Duration = Duration::from_secs(120);
/// How long each shutdown step may take.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Seconds between catch-ups with `--catchup`.
const CATCHUP_EVERY_SECS: u64 = 5;
/// Keyframes the final phase runs at most before comparing.
const FINAL_ROUNDS: usize = 3;

/// Arguments of `driftd demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Seconds the vendor keeps changing before the final keyframe.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Share of webhooks the vendor drops, from 0 to 1.
    #[arg(long, default_value_t = 0.1)]
    pub loss: f64,
    /// Orders the vendor holds at the start.
    #[arg(long, default_value_t = 3000)]
    pub records: u64,
    /// Seconds between scheduled keyframes (1-59, or whole minutes).
    #[arg(long, default_value_t = 10)]
    pub keyframe_every: u64,
    /// Vendor changes per second, each one a webhook.
    #[arg(long, default_value_t = 30)]
    pub rate: u32,
    /// Directory for the config and the SQLite database, kept afterwards
    /// (default: a new temporary directory). A previous demo database there is replaced.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Loopback address driftd listens on (webhooks, /metrics).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Seed of the vendor's random choices (default: random; printed at the start).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also pull what changed every few seconds between keyframes
    /// (`[producer.catchup]`): lost webhooks come back within seconds.
    #[arg(long)]
    pub catchup: bool,
    /// Pace keyframes by the drift they find (`schedule = "adaptive"`,
    /// between a fifth of --keyframe-every and twice it), while the vendor
    /// loses a hundredth of --loss for the first third of the run, --loss for
    /// the second, and a hundredth again for the last.
    #[arg(long)]
    pub adaptive: bool,
}

/// Runs the demo; exit 0 only when the local rows equal the vendor's records at the end.
pub fn main(args: DemoArgs) -> ExitCode {
    if let Err(problem) = validate_args(&args) {
        eprintln!("driftd demo: {problem}");
        return ExitCode::from(crate::cli::EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(args)) {
        Ok(Outcome::Equal) => ExitCode::SUCCESS,
        Ok(Outcome::Different) => ExitCode::FAILURE,
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("driftd demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate_args(a: &DemoArgs) -> Result<(), String> {
    if !(0.0..=1.0).contains(&a.loss) {
        return Err(format!("--loss {} must be between 0 and 1", a.loss));
    }
    if !(1..=100_000).contains(&a.records) {
        return Err(format!(
            "--records {} must be between 1 and 100000",
            a.records
        ));
    }
    if !(1..=86_400).contains(&a.duration) {
        return Err(format!(
            "--duration {} must be between 1 and 86400 seconds",
            a.duration
        ));
    }
    if !(1..=1000).contains(&a.rate) {
        return Err(format!("--rate {} must be between 1 and 1000", a.rate));
    }
    schedule_for(a.keyframe_every)?;
    if !a.listen.ip().is_loopback() {
        return Err(format!(
            "--listen {} must be a loopback address: the demo talks only to itself",
            a.listen
        ));
    }
    Ok(())
}

/// The cron expression (with seconds) of a keyframe every `secs` seconds.
pub fn schedule_for(secs: u64) -> Result<String, String> {
    match secs {
        1..=59 => Ok(format!("*/{secs} * * * * *")),
        s if s % 60 == 0 && (1..=59).contains(&(s / 60)) => Ok(format!("0 */{} * * * *", s / 60)),
        s => Err(format!(
            "--keyframe-every {s} must be 1-59 seconds or 1-59 whole minutes"
        )),
    }
}

enum Outcome {
    Equal,
    Different,
    Interrupted,
}
