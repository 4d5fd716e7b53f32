//! Pulling a producer snapshot over HTTP: pagination, retries, streaming, spill.
//!
//! # Design
//! [`pull`] walks the producer's pages one request at a time. Memory stays
//! proportional to the number of records, never to the bytes pulled:
//! - each page body is streamed into a buffer, or into an anonymous temp file
//!   once it outgrows `MEMORY_BODY_MAX` (4 MiB), under one timeout that covers the
//!   whole response;
//! - the body is parsed on the blocking pool by a serde `DeserializeSeed`
//!   (`Walk`) that descends only along the `items` pointer and the style's
//!   pagination pointer, skips every other member with `IgnoredAny`, and hands
//!   the array's elements to a callback one at a time;
//! - per record nothing stays in memory: its entry (key, bucket, hash,
//!   version and where its JSON sits) goes to an on-disk index grouped by
//!   bucket range (`index.rs`), sorted range by range when the pull ends, and
//!   its JSON to one spill temp file that [`Snapshot::doc`] reads back with
//!   `pread`; the bucket digests are summed while the index is sorted.
//!
//! A pull either returns the complete snapshot or fails as a whole: there is
//! no partial result. Transient failures (timeouts, connection errors, 429,
//! 5xx) are retried with full-jitter exponential backoff; everything else fails
//! at once. Errors name the page and its URL without query string (queries can
//! carry tokens); header values are never part of an error or a log line.
//!
//! # Layout
//! [`pull`] is the only loop and the only place the pieces meet: per page it
//! asks `http.rs` for the body, hands it to `sink.rs` on the blocking pool,
//! and gives what the page said to the pager for the next URL.
//! - `plan.rs`: the snapshot config checked once per pull into a `Plan` (URL,
//!   headers, pace, capture pointer) and the `Rules` that make an item a record;
//! - `http.rs`: one page over HTTP (`fetch_page`): pacing, retries with
//!   backoff, the body streamed to memory or a temp file;
//! - `sink.rs`: one body parsed (`parse_page`): each item becomes a
//!   [`RemoteRecord`] in the index, its JSON goes to the spill file (`Sink`);
//! - `index.rs`: the records on disk by bucket range (`IndexWriter`, `RecordIndex`);
//! - `walk.rs`: the streaming serde walker `parse_page` drives (pure);
//! - `pager.rs`: `Pager::step`, a pure transition from what a page said to the
//!   next URL, the end, or a `PagingError` (loops, `max_pages`, short pages);
//!   `link.rs` parses RFC 8288 `Link` headers for it (pure);
//! - `error.rs`: [`PullError`], [`PageAt`] and how values are shown in errors.
//!
//! Tests: `pager/tests.rs` (tables, no server), `walk/tests.rs` (a property
//! test), `tests.rs` (`pull` end to end against loopback servers).

mod error;
mod http;
mod index;
mod link;
mod pager;
mod plan;
mod sink;
#[cfg(test)]
mod tests;
mod walk;

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use serde_json::Value;

use self::error::shown;
pub use self::error::{PageAt, PullError};
pub(crate) use self::http::retry_after;
pub use self::http::Pace;
use self::http::{fetch_page, Fetched};
use self::index::RecordIndex;
use self::pager::{Page, Pager};
pub use self::plan::Plan;
pub(crate) use self::plan::BUCKET_BITS_MAX;
use self::sink::{parse_page, Sink};
use crate::canonical::{Digest, RecordHash};

/// Where a record's raw JSON sits in the spill file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocAt {
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

/// One record of a snapshot: what the compare needs, plus where its JSON is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRecord {
    pub key: Box<str>,
    pub bucket: u32,
    pub hash: RecordHash,
    pub version: Option<i64>,
    pub doc: DocAt,
}

/// A producer's complete state as pulled: the records on disk, sorted by
/// `(bucket, key)` with unique keys, and their bucket digests in memory.
#[derive(Debug)]
pub struct Snapshot {
    index: RecordIndex,
    /// The digest of every bucket that holds a record.
    pub(crate) digests: BTreeMap<u32, Digest>,
    /// Pages fetched, a final empty page included.
    pub pages: u64,
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Wall clock (ms since the epoch) when the pull began.
    pub(crate) started_at_ms: i64,
    /// The newest version among the records (where a first catch-up starts).
    pub newest_version: Option<i64>,
    spill: File,
}

impl Snapshot {
    /// Records in the snapshot.
    pub fn len(&self) -> u64 {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records a bucket range at a time, in `(bucket, key)` order; each
    /// item holds one range (at most 1/256 of the snapshot).
    pub fn chunks(&self) -> impl Iterator<Item = Result<Vec<RemoteRecord>, PullError>> + '_ {
        (0..self.index.ranges()).map(|i| self.index.range(i))
    }

    /// Every record, in `(bucket, key)` order, in memory: for small snapshots and tests.
    pub fn records(&self) -> Result<Vec<RemoteRecord>, PullError> {
        let mut out = Vec::new();
        for chunk in self.chunks() {
            out.extend(chunk?);
        }
        Ok(out)
    }

    /// The records of `buckets` (sorted ascending), in `(bucket, key)` order.
    pub(crate) fn in_buckets(&self, buckets: &[u32]) -> Result<Vec<RemoteRecord>, PullError> {
        self.index.in_buckets(buckets)
    }

    /// Reads a record's JSON back from the spill file.
    pub fn doc(&self, r: &RemoteRecord) -> Result<Value, PullError> {
        self.doc_at(&r.key, r.doc)
    }

    /// Reads the JSON of the record `key` at `at` back from the spill file.
    pub(crate) fn doc_at(&self, key: &str, at: DocAt) -> Result<Value, PullError> {
        let action = || {
            format!(
                "reading the document of key {:?} at offset {} ({} bytes)",
                key, at.offset, at.len
            )
        };
        let mut buf = vec![0; at.len as usize];
        self.spill
            .read_exact_at(&mut buf, at.offset)
            .map_err(|source| PullError::Spill {
                action: action(),
                source,
            })?;
        serde_json::from_slice(&buf).map_err(|e| PullError::Spill {
            action: action(),
            source: e.into(),
        })
    }
}

/// Pulls the producer's complete state as `plan` describes it.
pub async fn pull(client: &reqwest::Client, plan: &Plan) -> Result<Snapshot, PullError> {
    let started_at_ms = chrono::Utc::now().timestamp_millis();
    let cfg = &plan.cfg;
    let (mut pager, mut url) = Pager::start(cfg, plan.base.clone(), plan.capture_pointer.clone());
    let pace = plan.pace.clone();
    let mut sink = Sink::new(plan.rules.bucket_bits)?;
    let (mut pages, mut requests) = (0u64, 0u64);
    loop {
        pages += 1;
        let at = PageAt {
            page: pages,
            url: shown(&url),
        };
        let fetched =
            fetch_page(client, cfg, &plan.headers, &url, &at, &pace, &mut requests).await?;
        let Fetched {
            body,
            links,
            url: page_url,
        } = fetched;
        let rules = Arc::clone(&plan.rules);
        let task_at = at.clone();
        let (returned, outcome) = tokio::task::spawn_blocking(move || {
            let outcome = parse_page(body, &mut sink, &rules, &task_at);
            (sink, outcome)
        })
        .await
        .map_err(|e| PullError::Task {
            at: at.clone(),
            message: e.to_string(),
        })?;
        sink = returned;
        let outcome = outcome?;
        tracing::debug!(page = pages, items = outcome.items, url = %at.url, "snapshot page");
        let page = Page {
            number: pages,
            items: outcome.items,
            captured: outcome.captured.as_ref(),
            last_key: outcome.last_key.as_deref(),
            links: &links,
            url: &page_url,
        };
        match pager.step(&page).map_err(|e| e.at(at))? {
            None => break,
            Some(next) => url = next,
        }
    }
    let newest_version = sink.newest_version;
    let (index, digests, spill) = tokio::task::spawn_blocking(move || sink.finish())
        .await
        .map_err(|e| PullError::Spill {
            action: "sorting the records".into(),
            source: io::Error::other(e.to_string()),
        })??;
    Ok(Snapshot {
        index,
        digests,
        pages,
        requests,
        started_at_ms,
        newest_version,
        spill,
    })
}
