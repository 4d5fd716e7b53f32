//! The `driftd` command line (clap): parses arguments, loads config, dispatches to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod status;
mod sync;
mod table;

use crate::config::{Config, ConfigError, Loaded};
use crate::keyframe::run::{Keyframer, Summary};
use crate::metrics::Metrics;
use crate::state::{RunState, WorkState};
use crate::store::{now_ms, Store};

/// Exit status for a command-line or config error (EX_USAGE).
pub(crate) const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "driftd",
    version,
    about = "Keeps a local copy of vendor-owned state correct"
)]
pub struct Cli {
    /// Log format on stderr: `text` (coloured only on a terminal) or `json`
    /// (one object per line).
    #[arg(long, global = true, env = "DRIFTD_LOG_FORMAT", default_value = "text")]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    /// One line per event; coloured only when stderr is a terminal.
    #[value(alias = "human")]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The TOML config file.
    #[arg(long, short, env = "DRIFTD_CONFIG", default_value = "driftd.toml")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: HTTP server, keyframe schedules, workers, until SIGINT/SIGTERM.
    Run(ConfigArg),
    /// Validate the config; list every problem with its TOML path (exit 64 on error).
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Also fetch each producer's first snapshot page and check the
        /// pointers against it (network only; no database, no port).
        #[arg(long)]
        probe: bool,
    },
    /// Create the database if it is missing and apply every pending migration
    /// (`run` does the same on start).
    Migrate(ConfigArg),
    /// Walk the hash-chained `changes` log and report the first broken link.
    Verify(ConfigArg),
    /// Per producer: health, entities, open drift, the last keyframe runs; the work queue.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run one keyframe of PRODUCER now and print its summary (exit 0 ok, 1 failed, 3 guarded).
    Keyframe {
        #[command(flatten)]
        config: ConfigArg,
        /// The producer's name, as in the config.
        producer: String,
        /// Pull and compare, but record and emit nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Fetch records of PRODUCER by key through `[producer.fetch]` now and
    /// apply them (never older over newer); prints what each fetch did.
    Refresh {
        #[command(flatten)]
        config: ConfigArg,
        /// The producer's name, as in the config.
        producer: String,
        /// The records' keys.
        #[arg(required = true)]
        keys: Vec<String>,
        /// Print one JSON object per key.
        #[arg(long)]
        json: bool,
    },
    /// Run one catch-up of PRODUCER now (`[producer.catchup]`) and print what it applied.
    Catchup {
        #[command(flatten)]
        config: ConfigArg,
        /// The producer's name, as in the config (it needs `[producer.catchup]`).
        producer: String,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// One keyframe of PRODUCER and the work it left open carried out, for cron instead of the daemon (exit 0 all closed, 1 failed or left open, 3 guarded).
    ///
    /// `apply` items are written into the mirror, `http` items sent to the
    /// application as the daemon's workers send them, `none` items left for
    /// the application. Waits until every item is done, dead or cancelled,
    /// or the timeout. Migrates an existing database; creates none.
    Sync {
        #[command(flatten)]
        config: ConfigArg,
        /// The producer's name, as in the config.
        producer: String,
        /// Stop waiting for the work after this many seconds; the items
        /// still open stay in the queue for the next sync or the daemon.
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        timeout: u64,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Approve a guarded keyframe run: its drift becomes work.
    Approve {
        #[command(flatten)]
        config: ConfigArg,
        /// The guarded run's id, as `driftd keyframe` and `driftd status` print it.
        run_id: i64,
    },
    /// Re-apply stored deltas in id order (idempotent) and print the count per outcome.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        /// Only deltas of this producer.
        #[arg(long)]
        producer: Option<String>,
        /// Only deltas received at or after this time (RFC 3339, e.g. 2026-03-01T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only deltas with this outcome (pending, applied, stale, duplicate, rejected, unmatched).
        #[arg(long)]
        outcome: Option<String>,
    },
    /// Follow the change feed (every entity change, in order) on the terminal, resumable by position.
    Tail {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this producer (positions are per producer).
        #[arg(long)]
        producer: Option<String>,
        /// Start after this position, or at the current end (`now`).
        #[arg(long, default_value = "now")]
        from: crate::tail::From,
        /// One JSON object per change instead of columns.
        #[arg(long)]
        json: bool,
    },
    /// Inspect and steer the work queue.
    Work {
        #[command(subcommand)]
        command: WorkCommand,
    },
    /// See driftd work with nothing installed: a simulated vendor with lossy webhooks, keyframes that bring drift back to zero.
    Demo(crate::demo::DemoArgs),
}

#[derive(Debug, Subcommand)]
pub enum WorkCommand {
    /// List work items, newest first.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Only items in this state (pending, running, done, dead, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// At most this many items.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print one JSON array of the items, each spec as a JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Put a dead item back in the queue, or make a pending one due now.
    Retry {
        #[command(flatten)]
        config: ConfigArg,
        /// The work item's id, as `driftd work list` prints it.
        id: i64,
    },
    /// Mark an item done (your application carried it out): the mirror then holds the record it carried.
    Done {
        #[command(flatten)]
        config: ConfigArg,
        /// The work item's id, as `driftd work list` prints it.
        id: i64,
    },
    /// Cancel a pending or running item.
    Cancel {
        #[command(flatten)]
        config: ConfigArg,
        /// The work item's id, as `driftd work list` prints it.
        id: i64,
    },
}

/// Runs the command line and returns the process exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo tells its story on stdout; the daemon's info logs would drown it.
    let default_filter = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    init_logging(cli.log_format, default_filter);
    match cli.command {
        Command::Check { config, probe } => check(&config.config, probe),
        Command::Run(args) => run_daemon(&args.config),
        Command::Migrate(args) => with_store_migrated(&args.config, |_, store| async move {
            println!("migrations applied ({})", store.backend().name());
            Ok(ExitCode::SUCCESS)
        }),
        Command::Verify(args) => with_store(&args.config, |_, store| async move {
            let (checked, broken) = store.verify_chain().await?;
            match broken {
                None => {
                    println!("changes log intact: {checked} rows verified");
                    Ok(ExitCode::SUCCESS)
                }
                Some(b) => {
                    let at = match b.id {
                        Some(id) => format!("row id {id}"),
                        None => "the start".to_string(),
                    };
                    eprintln!(
                        "changes log broken at {at} (producer {:?}, seq {}): {}; {checked} rows before it verified",
                        b.producer, b.seq, b.reason
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }),
        Command::Status { config, json } => {
            with_store(&config.config, move |loaded, store| async move {
                status(&loaded.config, &store, json).await
            })
        }
        Command::Keyframe {
            config,
            producer,
            dry_run,
            json,
        } => with_store(&config.config, move |loaded, store| async move {
            let Some(p) = configured(&loaded.config, &producer) else {
                return Ok(ExitCode::from(EXIT_USAGE));
            };
            // SIGINT/SIGTERM interrupt the run: it is recorded `failed` and
            // its lease released before the process exits.
            let shutdown = tokio_util::sync::CancellationToken::new();
            let keyframer = Keyframer::new(store, crate::client::http_client()?, Metrics::new())
                .with_shutdown(shutdown.clone());
            let run = keyframer.run(p, dry_run);
            tokio::pin!(run);
            let summary = tokio::select! {
                s = &mut run => s?,
                _ = wait_for_signal() => {
                    shutdown.cancel();
                    run.await?
                }
            };
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print_summary(&summary);
            }
            Ok(match summary.state {
                RunState::Failed => ExitCode::FAILURE,
                RunState::Guarded => ExitCode::from(3),
                _ => ExitCode::SUCCESS,
            })
        }),
        Command::Refresh {
            config,
            producer,
            keys,
            json,
        } => with_store(&config.config, move |loaded, store| async move {
            let Some(p) = configured(&loaded.config, &producer) else {
                return Ok(ExitCode::from(EXIT_USAGE));
            };
            if p.fetch.is_none() {
                eprintln!("producer {producer:?} has no [producer.fetch]: there is no URL to fetch one record from");
                return Ok(ExitCode::from(EXIT_USAGE));
            }
            let refresher = crate::refresh::Refresher {
                store,
                client: crate::client::http_client()?,
                metrics: Metrics::new(),
                wake: Default::default(),
                id: crate::refresh::Refresher::holder_id(),
            };
            // SIGINT/SIGTERM release the keys being fetched, due at once.
            let shutdown = tokio_util::sync::CancellationToken::new();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let run = refresher.refresh(p, &keys, &shutdown);
            tokio::pin!(run);
            let done = tokio::select! {
                d = &mut run => d?,
                _ = wait_for_signal() => {
                    shutdown.cancel();
                    run.await?
                }
            };
            let mut failed = false;
            let mut t = table::Table::new(
                &["key", "outcome", "error"],
                &[table::Align::Left, table::Align::Left, table::Align::Left],
            );
            for r in &done {
                failed |= matches!(r.outcome, "failed" | "gave_up");
                if json {
                    println!("{}", serde_json::to_string(r)?);
                } else {
                    t.row(vec![
                        r.key.clone(),
                        r.outcome.to_string(),
                        r.error.clone().unwrap_or_else(|| "-".to_string()),
                    ]);
                }
            }
            const BUSY: &str = "another process is fetching it; it will apply the record";
            for key in keys.iter().filter(|k| !done.iter().any(|r| r.key == **k)) {
                failed = true;
                if json {
                    let busy = serde_json::json!({"key": key, "outcome": "busy", "error": BUSY});
                    println!("{busy}");
                } else {
                    t.row(vec![
                        (*key).to_string(),
                        "busy".to_string(),
                        BUSY.to_string(),
                    ]);
                }
            }
            if !json {
                for line in t.lines("") {
                    println!("{line}");
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }),
        Command::Catchup {
            config,
            producer,
            json,
        } => {
            with_store(&config.config, move |loaded, store| async move {
                let Some(p) = configured(&loaded.config, &producer) else {
                    return Ok(ExitCode::from(EXIT_USAGE));
                };
                if p.catchup.is_none() {
                    eprintln!("producer {producer:?} has no [producer.catchup]");
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
                let shutdown = tokio_util::sync::CancellationToken::new();
                let client = crate::client::http_client()?;
                let metrics = Metrics::new();
                let run = crate::catchup::catch_up(&store, &client, &metrics, p, &shutdown);
                tokio::pin!(run);
                let c = tokio::select! {
                    c = &mut run => c?,
                    _ = wait_for_signal() => {
                        shutdown.cancel();
                        run.await?
                    }
                };
                if json {
                    println!("{}", serde_json::to_string(&c)?);
                } else if let Some(why) = &c.skipped {
                    println!("catch-up of {:?} skipped: {why}", c.producer);
                } else {
                    println!(
                    "catch-up of {:?} since {}: records {}  applied {}  unchanged {}  stale {}{}",
                    c.producer,
                    c.since.map_or_else(|| "-".to_string(), |v| v.to_string()),
                    c.records,
                    c.applied,
                    c.unchanged,
                    c.stale,
                    c.error.as_deref().map(|e| format!("  error: {e}")).unwrap_or_default()
                );
                }
                Ok(if c.error.is_some() {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                })
            })
        }
        Command::Sync {
            config,
            producer,
            timeout,
            json,
        } => with_store_opened(
            &config.config,
            Open::Upgrade,
            move |loaded, store| async move {
                let Some(p) = configured(&loaded.config, &producer) else {
                    return Ok(ExitCode::from(EXIT_USAGE));
                };
                // SIGINT/SIGTERM stop the keyframe or the workers the
                // daemon's way; the report then says what is left open.
                let shutdown = tokio_util::sync::CancellationToken::new();
                let run = sync::sync(
                    store,
                    p,
                    std::time::Duration::from_secs(timeout),
                    json,
                    shutdown.clone(),
                );
                tokio::pin!(run);
                tokio::select! {
                    r = &mut run => r,
                    _ = wait_for_signal() => {
                        shutdown.cancel();
                        run.await
                    }
                }
            },
        ),
        Command::Approve { config, run_id } => {
            with_store(&config.config, move |loaded, store| async move {
                let keyframer =
                    Keyframer::new(store, crate::client::http_client()?, Metrics::new());
                let a = keyframer.approve(&loaded.config, run_id).await?;
                println!(
                    "approved keyframe run {run_id} of {:?}: {} work items emitted",
                    a.producer, a.work_emitted
                );
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Work { command } => work_command(command),
        Command::Tail {
            config,
            producer,
            from,
            json,
        } => with_store(&config.config, move |loaded, store| async move {
            let names: Vec<String> = match producer {
                Some(p) if configured(&loaded.config, &p).is_some() => vec![p],
                Some(_) => return Ok(ExitCode::from(EXIT_USAGE)),
                None => loaded
                    .config
                    .producers
                    .iter()
                    .map(|p| p.name.clone())
                    .collect(),
            };
            if names.len() > 1 && from != crate::tail::From::Now {
                eprintln!("--from POSITION needs --producer: positions are per producer");
                return Ok(ExitCode::from(EXIT_USAGE));
            }
            let cancel = tokio_util::sync::CancellationToken::new();
            let stop = cancel.clone();
            let follow = crate::tail::follow(&store, &names, from, json, cancel);
            tokio::pin!(follow);
            tokio::select! {
                r = &mut follow => r?,
                _ = wait_for_signal() => {
                    stop.cancel();
                    follow.await?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Demo(args) => crate::demo::main(args),
        Command::Replay {
            config,
            producer,
            since,
            outcome,
        } => replay(&config.config, producer, since, outcome),
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (else `default_filter`), in
/// colour only when stderr is a terminal and `NO_COLOR` is unset.
fn init_logging(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal;
    let asked = std::env::var("RUST_LOG").ok();
    let directives = log_directives(asked.as_deref(), default_filter);
    let filter = tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("RUST_LOG {asked:?} ignored: {e}");
        tracing_subscriber::EnvFilter::new(log_directives(None, default_filter))
    });
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !no_color);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The log filter: `RUST_LOG` when set, else `default_filter`; either way,
/// unless `RUST_LOG` names their target, two kinds of sqlx's own lines are
/// left out: PostgreSQL's notices to driftd's statements (`relation
/// "_sqlx_migrations" already exists, skipping`, at INFO; its warnings
/// stay), and statements, which sqlx logs at DEBUG, or at WARN with their
/// whole SQL text when one takes over a second (a large keyframe, a
/// migration of a large table): nothing an operator acts on, and the
/// metrics time what matters.
fn log_directives(rust_log: Option<&str>, default_filter: &str) -> String {
    let mut directives = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(default_filter)
        .to_string();
    for (target, level) in [(PG_NOTICE, "warn"), (SQLX_QUERY, "error")] {
        if !directives.contains(target) {
            directives.push_str(&format!(",{target}={level}"));
        }
    }
    directives
}

/// The `tracing` target of the notices a PostgreSQL server sends.
const PG_NOTICE: &str = "sqlx::postgres::notice";
/// The `tracing` target of sqlx's statement lines.
const SQLX_QUERY: &str = "sqlx::query";

fn load(path: &Path) -> Result<Loaded, ExitCode> {
    Config::load(path).map_err(|e: ConfigError| {
        eprint!("{}", e.render(colour_stderr()));
        ExitCode::from(EXIT_USAGE)
    })
}

/// Colour on stderr only for a terminal, and never with `NO_COLOR` set.
fn colour_stderr() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The config's warnings, as cargo prints them.
fn print_warnings(path: &Path, loaded: &Loaded) {
    let file = path.display().to_string();
    for w in &loaded.warnings {
        eprint!("{}", w.render("warning", &file, colour_stderr()));
    }
}

fn check(path: &Path, probe: bool) -> ExitCode {
    match load(path) {
        Ok(loaded) if probe => {
            print_warnings(path, &loaded);
            probe_producers(&loaded.config)
        }
        Ok(loaded) => {
            print_warnings(path, &loaded);
            println!(
                "{}: ok ({} producer{})",
                path.display(),
                loaded.config.producers.len(),
                if loaded.config.producers.len() == 1 {
                    ""
                } else {
                    "s"
                }
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Loads the config, opens the existing, migrated store (creating nothing),
/// and runs `f` on a tokio runtime.
fn with_store<F, Fut>(path: &Path, f: F) -> ExitCode
where
    F: FnOnce(Loaded, Store) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    with_store_opened(path, Open::Existing, f)
}

/// As [`with_store`], but creates the database if missing and migrates it.
fn with_store_migrated<F, Fut>(path: &Path, f: F) -> ExitCode
where
    F: FnOnce(Loaded, Store) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    with_store_opened(path, Open::Migrate, f)
}

/// How a command opens the store: only `run` and `migrate` create or
/// migrate; `sync` migrates an existing database but creates none.
#[derive(Debug, Clone, Copy)]
enum Open {
    Migrate,
    Upgrade,
    Existing,
}

fn with_store_opened<F, Fut>(path: &Path, open: Open, f: F) -> ExitCode
where
    F: FnOnce(Loaded, Store) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let loaded = match load(path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let db = &loaded.config.database;
        let opened = match open {
            Open::Migrate => Store::open(db.url.expose(), db.max_connections).await,
            Open::Upgrade => Store::open_and_upgrade(db.url.expose(), db.max_connections).await,
            Open::Existing => Store::open_existing(db.url.expose(), db.max_connections).await,
        };
        let store = match opened {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = f(loaded, store.clone()).await;
        store.close().await;
        match result {
            Ok(code) => code,
            Err(e) => {
                // Once, with each cause once: store errors already carry theirs.
                eprintln!("error: {}", crate::redact::error_chain(e.as_ref()));
                ExitCode::FAILURE
            }
        }
    })
}

/// The producer named `name`, or `None` after saying on stderr which
/// producers the config has.
fn configured<'a>(c: &'a Config, name: &str) -> Option<&'a crate::config::Producer> {
    let p = c.producer(name);
    if p.is_none() {
        eprintln!(
            "unknown producer {name:?}; configured: {}",
            producer_names(c)
        );
    }
    p
}

fn producer_names(c: &Config) -> String {
    c.producers
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_summary(s: &Summary) {
    let run = s.run_id.map_or("-".to_string(), |id| id.to_string());
    println!("run {run} of {}: {}", s.producer, s.state);
    println!(
        "  records {}  buckets compared {}  mismatched {}  rows read {}",
        s.records, s.buckets_compared, s.buckets_mismatched, s.rows_read
    );
    println!(
        "  missing {}  extra {}  changed {}  skipped (raced) {}  work emitted {}  duration {} ms",
        s.missing, s.extra, s.changed, s.skipped_races, s.work_emitted, s.duration_ms
    );
    if !s.causes.is_empty() {
        let causes: Vec<String> = s.causes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        println!("  why: {}", causes.join(", "));
    }
    if s.loaded > 0 {
        println!(
            "  first sync: {} records loaded into the empty mirror",
            s.loaded
        );
    }
    if let Some(e) = &s.error {
        println!("  error: {e}");
    }
    if s.state == RunState::Guarded {
        println!(
            "  guarded: more deletions/overwrites than max_drift_ratio/max_drift_rows allow; nothing was emitted. \
             Inspect, then `driftd approve {run}` to let it through."
        );
    }
}

async fn status(config: &Config, store: &Store, json: bool) -> anyhow::Result<ExitCode> {
    let report = crate::admin::status_report(config, store).await?;
    if json {
        println!("{report}");
        return Ok(ExitCode::SUCCESS);
    }
    let waiting = store.pending_fetches(None, 20).await?;
    print!("{}", status::render(&report, &waiting, now_ms()));
    Ok(ExitCode::SUCCESS)
}

fn work_command(command: WorkCommand) -> ExitCode {
    match command {
        WorkCommand::List {
            config,
            state,
            limit,
            json,
        } => {
            with_store(&config.config, move |_, store| async move {
                let state = match state.as_deref().map(|s| (s, WorkState::parse(s))) {
                    None => None,
                    Some((_, Some(s))) => Some(s),
                    Some((s, None)) => {
                        eprintln!("unknown work state {s:?}: use pending, running, done, dead or cancelled");
                        return Ok(ExitCode::from(EXIT_USAGE));
                    }
                };
                let items = store.list_work(state, limit).await?;
                if json {
                    // The spec is a JSON document: printed as one, not as a string.
                    let items: Vec<serde_json::Value> = items
                        .iter()
                        .map(|w| {
                            let mut v = serde_json::to_value(w).unwrap_or_default();
                            if let Ok(spec) = serde_json::from_str::<serde_json::Value>(&w.spec) {
                                v["spec"] = spec;
                            }
                            v
                        })
                        .collect();
                    println!("{}", serde_json::to_string(&items)?);
                } else if items.is_empty() {
                    println!("no work items");
                } else {
                    use table::{Align, Table};
                    let mut t = Table::new(
                        &["id", "state", "producer", "key", "attempts", "last error"],
                        &[
                            Align::Right,
                            Align::Left,
                            Align::Left,
                            Align::Left,
                            Align::Right,
                            Align::Left,
                        ],
                    );
                    for w in &items {
                        t.row(vec![
                            w.id.to_string(),
                            w.state.to_string(),
                            w.producer.clone(),
                            w.key.clone(),
                            format!("{}/{}", w.attempts, w.max_attempts),
                            w.last_error.clone().unwrap_or_else(|| "-".to_string()),
                        ]);
                    }
                    for line in t.lines("") {
                        println!("{line}");
                    }
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        WorkCommand::Retry { config, id } => {
            with_store(&config.config, move |_, store| async move {
                let w = store.set_work_state(id, WorkState::Pending).await?;
                println!("work item {} is {} again", w.id, w.state);
                Ok(ExitCode::SUCCESS)
            })
        }
        WorkCommand::Done { config, id } => {
            with_store(&config.config, move |loaded, store| async move {
                let w = crate::work::finish_by_hand(&store, &loaded.config, id).await?;
                println!(
                    "work item {} {}: the mirror holds the record it carried (unless a newer delta landed since)",
                    w.id, w.state
                );
                Ok(ExitCode::SUCCESS)
            })
        }
        WorkCommand::Cancel { config, id } => {
            with_store(&config.config, move |_, store| async move {
                let w = store.set_work_state(id, WorkState::Cancelled).await?;
                println!("work item {} {}", w.id, w.state);
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

fn run_daemon(path: &Path) -> ExitCode {
    let loaded = match load(path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    for w in &loaded.warnings {
        tracing::warn!("config: {w}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let app = match crate::app::App::build(loaded.config, None).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("cannot start: {}", crate::redact::error_chain(e.as_ref()));
                return ExitCode::FAILURE;
            }
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        let signals = shutdown.clone();
        let app_task = app.run(shutdown.clone());
        tokio::pin!(app_task);
        let result = tokio::select! {
            r = &mut app_task => r,
            _ = wait_for_signal() => {
                tracing::info!("shutting down");
                signals.cancel();
                app_task.await
            }
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{}", crate::redact::error_chain(e.as_ref()));
                ExitCode::FAILURE
            }
        }
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `driftd replay`: re-applies the inbox rows that match, through the ingest apply path.
fn replay(
    path: &Path,
    producer: Option<String>,
    since: Option<String>,
    outcome: Option<String>,
) -> ExitCode {
    use crate::store::{InboxFilter, InboxOutcome};
    let since_ms = match since.as_deref() {
        None => None,
        Some(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.timestamp_millis()),
            Err(e) => {
                eprintln!("invalid --since {s:?}: {e}; use RFC 3339 such as 2026-03-01T00:00:00Z");
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let outcome = match outcome.as_deref() {
        None => None,
        Some(o) => match InboxOutcome::parse(o) {
            Some(o) => Some(o),
            None => {
                eprintln!("unknown outcome {o:?}: use pending, applied, stale, duplicate, rejected or unmatched");
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    with_store(path, move |loaded, store| async move {
        if let Some(p) = &producer {
            if configured(&loaded.config, p).is_none() {
                return Ok(ExitCode::from(EXIT_USAGE));
            }
        }
        let filter = InboxFilter {
            producer,
            since_ms,
            outcome,
        };
        let report = crate::ingest::pipeline::replay(&store, &loaded.config, &filter).await?;
        println!(
            "replayed {} deltas; {} changed an entity",
            report.rows, report.changed
        );
        for o in InboxOutcome::ALL
            .iter()
            .filter(|o| **o != InboxOutcome::Pending)
        {
            let n = report.outcomes.get(o.as_str()).copied().unwrap_or(0);
            println!("  {:<10} {n}", o.as_str());
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn probe_producers(config: &Config) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let client = match crate::client::http_client() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot build the HTTP client: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut problems = 0;
        for (i, p) in config.producers.iter().enumerate() {
            println!("{}:", p.name);
            for f in crate::probe::probe(&client, i, p).await {
                if f.level == crate::probe::Level::Problem {
                    problems += 1;
                }
                println!("  {f}");
            }
        }
        if problems > 0 {
            eprintln!(
                "{problems} problem{} found",
                if problems == 1 { "" } else { "s" }
            );
            ExitCode::from(EXIT_USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })
}

#[cfg(test)]
mod tests;
