//! The `driftd` command line (clap): parses arguments, loads config, dispatches to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, ConfigError, Loaded};
use crate::store::Store;

/// Exit status for a command-line or config error (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "driftd",
    version,
    about = "Keeps a local copy of vendor-owned state correct"
)]
pub struct Cli {
    /// Log format: human on a terminal, or one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "DRIFTD_LOG_FORMAT",
        default_value = "human"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
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
    /// Validate the config; list every problem with its TOML path (exit 64 on error).
    Check(ConfigArg),
    /// Apply database migrations.
    Migrate(ConfigArg),
    /// Walk the hash-chained `changes` log and report the first broken link.
    Verify(ConfigArg),
    /// Show per producer the stored entities.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command line and returns the process exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check(args) => check(&args.config),
        Command::Migrate(args) => with_store(&args.config, |_, store| async move {
            store.migrate().await?;
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
                    eprintln!(
                        "changes log broken at row id {} (producer {:?}, seq {}): {}; {checked} rows before it verified",
                        b.id, b.producer, b.seq, b.reason
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }),
        Command::Status { config, json } => {
            with_store(&config.config, move |loaded, store| async move {
                let mut producers = Vec::new();
                for p in &loaded.config.producers {
                    let entities = store.count_entities(&p.name).await?;
                    producers.push(serde_json::json!({"producer": p.name, "entities": entities}));
                }
                if json {
                    println!("{}", serde_json::json!({ "producers": producers }));
                } else {
                    for p in &producers {
                        println!(
                            "{:<24} entities {}",
                            p["producer"].as_str().unwrap_or_default(),
                            p["entities"]
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(path: &Path) -> Result<Loaded, ExitCode> {
    Config::load(path).map_err(|e: ConfigError| {
        eprintln!("{e}");
        ExitCode::from(EXIT_USAGE)
    })
}

fn check(path: &Path) -> ExitCode {
    match load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
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

/// Loads the config, opens (and migrates) the store, and runs `f` on a tokio runtime.
fn with_store<F, Fut>(path: &Path, f: F) -> ExitCode
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
        let store = match Store::open(db.url.expose(), db.max_connections).await {
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
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}
