//! What the harness prints: progress notes on stderr, and the results (`Results`) as a Markdown table with the targets on stdout and as JSON.
//!
//! Each scenario's file writes its own section of the table and judges its
//! own targets; this file holds the document they fill and the frame around.

use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::BackendArg;
use crate::feed::{self, FeedReport};
use crate::ingest::{self, IngestReport};
use crate::keyframe::{self, KeyframeReport};
use crate::work::{self, WorkReport};

#[derive(Debug, Default, Serialize)]
pub(super) struct Results {
    machine: Machine,
    command: String,
    total_secs: f64,
    pub(super) keyframe: Vec<KeyframeReport>,
    pub(super) ingest: Vec<IngestReport>,
    pub(super) work: Vec<WorkReport>,
    pub(super) feed: Vec<FeedReport>,
    targets: Vec<Target>,
}

#[derive(Debug, Default, Serialize)]
struct Machine {
    nproc: usize,
    mem_total_mib: u64,
    cpu_model: String,
}

#[derive(Debug, Serialize)]
struct Target {
    backend: &'static str,
    name: String,
    measured: String,
    target: String,
    met: bool,
}

impl Results {
    pub(super) fn new() -> Self {
        Self {
            machine: machine(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            ..Default::default()
        }
    }

    pub(super) fn finish(mut self, json: Option<&std::path::Path>) -> Result<()> {
        self.total_secs = process_secs();
        self.targets = targets(&self);
        print!("{}", self.table());
        if let Some(path) = json {
            std::fs::write(path, serde_json::to_string_pretty(&self)?)
                .with_context(|| format!("write {}", path.display()))?;
            println!("\nJSON written to {}", path.display());
        }
        Ok(())
    }

    fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "\nmachine: {} cores, {} MiB, {}",
            m.nproc, m.mem_total_mib, m.cpu_model
        );
        keyframe::table(&self.keyframe, &mut s);
        ingest::table(&self.ingest, &mut s);
        work::table(&self.work, &mut s);
        feed::table(&self.feed, &mut s);
        if !self.targets.is_empty() {
            let _ = writeln!(s, "\n### Targets\n");
            let _ = writeln!(s, "| backend | target | measured | limit | |");
            let _ = writeln!(s, "|---|---|---:|---:|---|");
            for t in &self.targets {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    t.backend,
                    t.name,
                    t.measured,
                    t.target,
                    if t.met { "met" } else { "MISSED" }
                );
            }
        }
        let _ = writeln!(s, "\ntotal: {:.0} s", self.total_secs);
        s
    }
}

/// Seconds since `main` began.
pub(super) fn process_secs() -> f64 {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_secs_f64()
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total_mib = proc_kib(&meminfo, "MemTotal:").unwrap_or(0) / 1024;
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        mem_total_mib,
        cpu_model,
    }
}

/// A `Name:   123 kB` value from a /proc file, in KiB.
pub(super) fn proc_kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A progress line on stderr, stamped with the seconds since start.
pub(super) fn note(msg: impl AsRef<str>) {
    eprintln!("[{:7.1}s] {}", process_secs(), msg.as_ref());
}

/// `a / b`; NaN when `b` is not positive.
pub(super) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// Every scenario's targets, judged.
fn targets(r: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    let mut push =
        |backend: BackendArg, name: &str, value: f64, unit: &str, limit: f64, le: bool| {
            out.push(Target {
                backend: backend.name(),
                name: name.to_string(),
                measured: format!("{value:.2}{unit}"),
                target: format!("{}{limit}{unit}", if le { "≤ " } else { "≥ " }),
                met: if le { value <= limit } else { value >= limit },
            });
        };
    keyframe::targets(&r.keyframe, &mut push);
    ingest::targets(&r.ingest, &mut push);
    work::targets(&r.work, &mut push);
    feed::targets(&r.feed, &mut push);
    out
}
