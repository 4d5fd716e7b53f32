//! `driftd tail`: follows the change feed on a terminal, straight from the database, resumable from a position.
//!
//! It reads the same `changes` log the `/v1/changes` API serves. On
//! PostgreSQL it is woken by the daemons' `NOTIFY driftd_changes`; on
//! SQLite, another process's commits cannot signal it, so it reads again
//! every [`SQLITE_POLL`] while caught up.

use std::io::Write;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{Backend, FeedChange, Store, StoreError};

/// How often a caught-up tail reads again on SQLite.
const SQLITE_POLL: Duration = Duration::from_millis(500);
/// A caught-up tail on PostgreSQL reads again this often even without a
/// notification (one lost while its LISTEN connection was down).
const PG_POLL: Duration = Duration::from_secs(5);
const PAGE: i64 = 500;

/// Where to start: after a position, or at the current head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    After(i64),
    Now,
}

impl std::str::FromStr for From {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "now" {
            return Ok(Self::Now);
        }
        s.parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Self::After)
            .ok_or_else(|| format!("--from {s:?} must be a feed position (0, 1, …) or `now`"))
    }
}

/// One line of output: JSON, or columns for a person.
pub(crate) fn line(c: &FeedChange, json: bool) -> String {
    if json {
        return serde_json::to_string(c).expect("a change serializes");
    }
    let at = chrono::DateTime::from_timestamp_millis(c.at)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| c.at.to_string());
    let version = c.version.map_or("-".to_string(), |v| v.to_string());
    let hash = c.hash.as_deref().map_or("-", |h| &h[..h.len().min(12)]);
    format!(
        "{producer}:{seq}\t{at}\t{op:<6}\t{key}\tv{version}\t{source}\t{hash}",
        producer = c.producer,
        seq = c.seq,
        op = c.op,
        key = c.key,
        source = c.source,
    )
}

/// Prints `producers`' changes from `from` on, until `cancel`.
pub(crate) async fn follow(
    store: &Store,
    producers: &[String],
    from: From,
    json: bool,
    cancel: CancellationToken,
) -> Result<(), StoreError> {
    let mut positions = Vec::with_capacity(producers.len());
    let mut signals = Vec::with_capacity(producers.len());
    for p in producers {
        signals.push(store.subscribe_changes(p));
        positions.push(match from {
            From::After(n) => n,
            From::Now => store.feed_head(p).await?,
        });
    }
    for (p, pos) in producers.iter().zip(&positions) {
        eprintln!("following {p} after position {pos} (resume with --from POSITION)");
    }
    let poll = match store.backend() {
        Backend::Sqlite => SQLITE_POLL,
        Backend::Postgres => PG_POLL,
    };
    // Runs beside the loop (returns at once on SQLite), polled by its selects.
    let listener = futures::FutureExt::fuse(store.listen_changes(cancel.clone()));
    tokio::pin!(listener);
    let mut out = std::io::stdout().lock();
    loop {
        let mut caught_up = true;
        for (i, p) in producers.iter().enumerate() {
            let found = store.changes_after(p, positions[i], PAGE, false).await?;
            if i64::try_from(found.len()).unwrap_or(i64::MAX) == PAGE {
                caught_up = false;
            }
            for c in &found {
                if writeln!(out, "{}", line(c, json)).is_err() {
                    // The reader went away (a closed pipe): stop quietly.
                    return Ok(());
                }
                positions[i] = c.seq;
            }
            let _ = out.flush();
        }
        if caught_up {
            let woken =
                futures::future::select_all(signals.iter_mut().map(|s| Box::pin(s.changed())));
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = &mut listener, if !futures::future::FusedFuture::is_terminated(&listener) => {}
                _ = woken => {}
                _ = tokio::time::sleep(poll) => {}
            }
        } else if cancel.is_cancelled() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_positions() {
        assert_eq!("now".parse::<From>(), Ok(From::Now));
        assert_eq!("42".parse::<From>(), Ok(From::After(42)));
        assert!("-1".parse::<From>().is_err());
        assert!("soon".parse::<From>().is_err());
    }

    #[test]
    fn lines_for_people_and_programs() {
        let c = FeedChange {
            seq: 7,
            producer: "orders".into(),
            key: "A-1".into(),
            op: "put".into(),
            version: Some(3),
            hash: Some("00112233445566778899".into()),
            source: crate::entity::Source::Webhook,
            at: 0,
            doc: None,
            superseded: false,
        };
        assert_eq!(
            line(&c, false),
            "orders:7\t1970-01-01T00:00:00.000Z\tput   \tA-1\tv3\twebhook\t001122334455"
        );
        let v: serde_json::Value = serde_json::from_str(&line(&c, true)).unwrap();
        assert_eq!(
            (v["seq"].as_i64(), v["key"].as_str()),
            (Some(7), Some("A-1"))
        );
    }
}
