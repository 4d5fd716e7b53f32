//! A typed consumer of driftd's change feed: follows one producer by long polling, applies each change, and resumes after a restart from the position it saved.
//!
//! ```sh
//! DRIFTD_READ_TOKEN=… cargo run --example follow_changes -- orders ./orders.position
//! ```
//!
//! The position is saved after each page is applied. A crash between the
//! two applies that page again on restart, so the apply step must be
//! idempotent (an upsert by key, guarded by `version` or `hash`), or, for
//! exactly once, store the position in the same transaction as your rows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// One change of the feed (`GET /v1/changes`).
#[derive(Debug, Deserialize)]
struct Change {
    seq: i64,
    key: String,
    /// `put` or `delete`.
    op: String,
    version: Option<i64>,
    source: String,
    /// The record (with `docs=1`) while it is current; absent when
    /// `superseded`, in which case a later change of the key follows.
    doc: Option<serde_json::Value>,
    #[serde(default)]
    superseded: bool,
}

#[derive(Debug, Deserialize)]
struct Page {
    changes: Vec<Change>,
    /// Where to resume: the last change's `seq`, or the position asked for.
    next: i64,
}

fn load_position(path: &Path) -> i64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Writes the position atomically: a crash leaves the old one or the new one.
fn save_position(path: &Path, position: i64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{position}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Your application's side: here, print what a real consumer would upsert or delete.
fn apply(producer: &str, c: &Change) {
    match (c.op.as_str(), &c.doc) {
        ("delete", _) => println!(
            "{producer}/{}: deleted (v{:?}, {})",
            c.key, c.version, c.source
        ),
        (_, Some(doc)) => println!(
            "{producer}/{}: {doc} (v{:?}, {})",
            c.key, c.version, c.source
        ),
        _ if c.superseded => println!("{producer}/{}: superseded, a newer change follows", c.key),
        _ => println!(
            "{producer}/{}: changed (v{:?}, {})",
            c.key, c.version, c.source
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let producer = args
        .next()
        .ok_or("usage: follow_changes PRODUCER POSITION_FILE")?;
    let position_file = PathBuf::from(
        args.next()
            .ok_or("usage: follow_changes PRODUCER POSITION_FILE")?,
    );
    let base = std::env::var("DRIFTD_URL").unwrap_or_else(|_| "http://127.0.0.1:7070".into());
    let token = std::env::var("DRIFTD_READ_TOKEN").map_err(|_| "set DRIFTD_READ_TOKEN")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut after = load_position(&position_file);
    eprintln!("following {producer} after position {after}");
    let mut backoff = Duration::from_millis(200);
    loop {
        let url = format!("{base}/v1/changes?producer={producer}&after={after}&wait=30&docs=1");
        let page = match client.get(&url).bearer_auth(&token).send().await {
            Ok(resp) if resp.status().is_success() => resp.json::<Page>().await,
            Ok(resp) if resp.status().is_client_error() => {
                return Err(format!("driftd refused the request: {}", resp.text().await?).into());
            }
            Ok(resp) => Err(resp.error_for_status().unwrap_err()),
            Err(e) => Err(e),
        };
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                eprintln!("feed unavailable ({e}); retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        for c in &page.changes {
            debug_assert_eq!(c.seq, after + 1, "the feed has no gaps");
            apply(&producer, c);
            after = c.seq;
        }
        if page.next != after {
            return Err(format!("feed answered next = {} after {after}", page.next).into());
        }
        save_position(&position_file, after)?;
    }
}
