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
//! - per record only a [`RemoteRecord`] is kept (key, bucket, hash, version and
//!   where its JSON sits); the JSON itself is appended to one spill temp file
//!   that [`Snapshot::doc`] reads back with `pread`.
//!
//! A pull either returns the complete snapshot or fails as a whole: there is
//! no partial result. Transient failures (timeouts, connection errors, 429,
//! 5xx) are retried with full-jitter exponential backoff; everything else fails
//! at once. Errors name the page and its URL without query string (queries can
//! carry tokens); header values are never part of an error or a log line.

use std::collections::HashSet;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, LINK, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::canonical::{
    bucket_of, key_string, parse_pointer, version_value, RecordHash, RecordHasher,
};
use crate::config::{PaginationStyle, SnapshotConfig};
use crate::redact::{redact_url, request_error};

/// Page bodies up to this size stay in memory; larger ones go to a temp file.
const MEMORY_BODY_MAX: usize = 4 << 20;
/// Longest wait a `Retry-After` header can impose.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);
/// Ceiling of the exponential backoff (unless `retry_backoff_ms` is larger).
const BACKOFF_MAX_MS: u64 = 60_000;
/// Opaque values (cursors, keys) are cut to this many characters in errors.
const SHOWN_VALUE_MAX: usize = 80;
/// Largest bucket width `bucket_bits` may ask for (as the config validates).
const BUCKET_BITS_MAX: u8 = 24;

/// One record of a snapshot: what the compare needs, plus where its JSON is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRecord {
    pub key: Box<str>,
    pub bucket: u32,
    pub hash: RecordHash,
    pub version: Option<i64>,
    /// Where the record's raw JSON starts in the spill file.
    pub doc_offset: u64,
    pub doc_len: u32,
}

/// A producer's complete state as pulled.
#[derive(Debug)]
pub struct Snapshot {
    /// Sorted by `(bucket, key)`; keys are unique.
    pub records: Vec<RemoteRecord>,
    /// Pages fetched, a final empty page included.
    pub pages: u64,
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Wall clock (ms since the epoch) when the pull began.
    pub started_at_ms: i64,
    spill: File,
}

impl Snapshot {
    /// Reads a record's JSON back from the spill file.
    pub fn doc(&self, r: &RemoteRecord) -> Result<Value, PullError> {
        let action = || {
            format!(
                "reading the document of key {:?} at offset {} ({} bytes)",
                r.key, r.doc_offset, r.doc_len
            )
        };
        let mut buf = vec![0; r.doc_len as usize];
        self.spill
            .read_exact_at(&mut buf, r.doc_offset)
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

/// Where a failure happened: the page number and its URL without query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageAt {
    pub page: u64,
    pub url: String,
}

impl fmt::Display for PageAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "page {} of {}", self.page, self.url)
    }
}

/// Why a pull failed; the whole pull fails, there is never a partial snapshot.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("snapshot config: {0}")]
    Config(String),
    #[error("{at}: HTTP {status} after {}", attempts_text(.attempts))]
    Status {
        at: PageAt,
        status: StatusCode,
        attempts: u32,
    },
    #[error("{at}: no complete response within {timeout_secs} s after {}", attempts_text(.attempts))]
    Timeout {
        at: PageAt,
        timeout_secs: u64,
        attempts: u32,
    },
    #[error("{at}: request failed after {}: {message}", attempts_text(.attempts))]
    Request {
        at: PageAt,
        message: String,
        transient: bool,
        attempts: u32,
    },
    #[error("{at}: invalid JSON: {message}")]
    InvalidJson { at: PageAt, message: String },
    #[error("{at}: items pointer {pointer:?} not found")]
    ItemsMissing { at: PageAt, pointer: String },
    #[error("{at}: items pointer {pointer:?} holds {found}, not an array")]
    ItemsNotArray {
        at: PageAt,
        pointer: String,
        found: &'static str,
    },
    #[error("{at}: record {index}: key pointer {pointer:?} not found")]
    KeyMissing {
        at: PageAt,
        index: u64,
        pointer: String,
    },
    #[error("{at}: record {index}: key at {pointer:?} is {found}, not a string or an integer")]
    BadKey {
        at: PageAt,
        index: u64,
        pointer: String,
        found: &'static str,
    },
    #[error("{at}: record {index} (key {key:?}): bad version at {pointer:?}: {message}")]
    BadVersion {
        at: PageAt,
        index: u64,
        key: String,
        pointer: String,
        message: String,
    },
    #[error("{at}: record {index} (key {key:?}): document of {len} bytes is too large")]
    RecordTooLarge {
        at: PageAt,
        index: u64,
        key: String,
        len: usize,
    },
    #[error("duplicate key {key:?} in the snapshot")]
    DuplicateKey { key: String },
    #[error("{at}: pagination loop: {what} {value:?} was already requested")]
    Loop {
        at: PageAt,
        what: &'static str,
        value: String,
    },
    #[error("{at}: more pages follow but max_pages is {max_pages}")]
    TooManyPages { at: PageAt, max_pages: u64 },
    #[error("{at}: short page: no items before the last page ({total_pages} pages announced at {pointer:?})")]
    ShortPage {
        at: PageAt,
        total_pages: u64,
        pointer: String,
    },
    #[error("{at}: {message}")]
    Pagination { at: PageAt, message: String },
    #[error("spill file: {action}: {source}")]
    Spill {
        action: String,
        #[source]
        source: io::Error,
    },
    #[error("{at}: parsing task failed: {message}")]
    Task { at: PageAt, message: String },
}

impl PullError {
    /// Timeouts, connection errors, 429 and 5xx: worth trying again later.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => transient_status(*status),
            Self::Timeout { .. } => true,
            Self::Request { transient, .. } => *transient,
            _ => false,
        }
    }
}

fn attempts_text(n: &u32) -> String {
    if *n == 1 {
        "1 attempt".into()
    } else {
        format!("{n} attempts")
    }
}

fn transient_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Pulls the producer's complete state described by `cfg`.
pub async fn pull(
    client: &reqwest::Client,
    cfg: &SnapshotConfig,
    hasher: &RecordHasher,
    bucket_bits: u8,
) -> Result<Snapshot, PullError> {
    let started_at_ms = chrono::Utc::now().timestamp_millis();
    let plan = Plan::new(cfg, hasher, bucket_bits)?;
    let mut pager = Pager::new(cfg, plan.base.clone(), plan.capture_pointer.clone());
    let mut pace = Pace {
        interval: plan.interval,
        next: None,
    };
    let mut sink = Sink::new()?;
    let mut url = pager.first();
    let (mut pages, mut requests) = (0u64, 0u64);
    loop {
        pages += 1;
        let at = PageAt {
            page: pages,
            url: shown(&url),
        };
        let fetched = fetch_page(
            client,
            cfg,
            &plan.headers,
            &url,
            &at,
            &mut pace,
            &mut requests,
        )
        .await?;
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
        match pager.next(pages, &outcome, &links, &page_url, &at)? {
            None => break,
            Some(_) if pages >= cfg.max_pages => {
                return Err(PullError::TooManyPages {
                    at,
                    max_pages: cfg.max_pages,
                })
            }
            Some(next) => url = next,
        }
    }
    let (records, spill) = tokio::task::spawn_blocking(move || sink.finish())
        .await
        .map_err(|e| PullError::Spill {
            action: "sorting the records".into(),
            source: io::Error::other(e.to_string()),
        })??;
    Ok(Snapshot {
        records,
        pages,
        requests,
        started_at_ms,
        spill,
    })
}

/// The config, checked and prepared once per pull.
struct Plan {
    base: Url,
    headers: HeaderMap,
    interval: Option<Duration>,
    capture_pointer: Option<String>,
    rules: Arc<Rules>,
}

/// What the blocking parser needs to turn an item into a [`RemoteRecord`].
struct Rules {
    hasher: RecordHasher,
    bucket_bits: u8,
    items_pointer: String,
    key_pointer: String,
    key: Vec<String>,
    version: Option<(String, Vec<String>)>,
    paths: Paths,
}

impl Plan {
    fn new(
        cfg: &SnapshotConfig,
        hasher: &RecordHasher,
        bucket_bits: u8,
    ) -> Result<Self, PullError> {
        let bad = |m: String| PullError::Config(m);
        let base = Url::parse(&cfg.url)
            .map_err(|e| bad(format!("invalid url {:?}: {e}", redact_url(&cfg.url))))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad(format!(
                "url {:?} must be http or https, not {:?}",
                shown(&base),
                base.scheme()
            )));
        }
        if bucket_bits > BUCKET_BITS_MAX {
            return Err(bad(format!(
                "bucket_bits {bucket_bits} is out of range 0..={BUCKET_BITS_MAX}"
            )));
        }
        let pointer =
            |field: &str, p: &str| parse_pointer(p).map_err(|e| bad(format!("{field}: {e}")));
        let items = pointer("items", &cfg.items)?;
        let key = pointer("key", &cfg.key)?;
        let version = match &cfg.version {
            Some(v) => Some((v.clone(), pointer("version", v)?)),
            None => None,
        };

        let pg = &cfg.pagination;
        let required = |field: &str, style: &str, value: &Option<String>| {
            value.clone().ok_or_else(|| {
                bad(format!(
                    "pagination.{field} is required for style {style:?}"
                ))
            })
        };
        let capture_pointer = match pg.style {
            PaginationStyle::Cursor => Some(required("cursor", "cursor", &pg.cursor)?),
            PaginationStyle::NextUrl => Some(required("next", "next_url", &pg.next)?),
            PaginationStyle::Page => pg.total_pages.clone(),
            PaginationStyle::AfterKey => Some(pg.has_more().to_string()),
            PaginationStyle::None | PaginationStyle::Offset | PaginationStyle::LinkHeader => None,
        };
        if pg.style == PaginationStyle::Offset && pg.limit.is_none() {
            return Err(bad(
                "pagination.limit is required for style \"offset\"".into()
            ));
        }
        if pg.limit == Some(0) {
            return Err(bad("pagination.limit must be at least 1".into()));
        }
        let captures = match &capture_pointer {
            Some(p) => vec![pointer("pagination pointer", p)?],
            None => Vec::new(),
        };

        let interval = match cfg.rate_limit {
            None => None,
            Some(rate) => Some(
                Duration::try_from_secs_f64(1.0 / rate)
                    .ok()
                    .filter(|_| rate > 0.0)
                    .ok_or_else(|| {
                        bad(format!(
                            "rate_limit {rate} must be a positive number of requests per second"
                        ))
                    })?,
            ),
        };

        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        for (name, value) in &cfg.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| bad(format!("invalid header name {name:?}")))?;
            let mut value = HeaderValue::from_str(value.expose()).map_err(|_| {
                bad(format!(
                    "header {name:?}: value is not a valid HTTP header value (value not shown)"
                ))
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }

        Ok(Self {
            base,
            headers,
            interval,
            capture_pointer,
            rules: Arc::new(Rules {
                hasher: hasher.clone(),
                bucket_bits,
                items_pointer: cfg.items.clone(),
                key_pointer: cfg.key.clone(),
                key,
                version,
                paths: Paths { items, captures },
            }),
        })
    }
}

/// Keeps consecutive request starts at least `interval` apart.
struct Pace {
    interval: Option<Duration>,
    next: Option<Instant>,
}

impl Pace {
    async fn wait(&mut self) {
        let Some(interval) = self.interval else {
            return;
        };
        if let Some(next) = self.next {
            tokio::time::sleep_until(next).await;
        }
        self.next = Some(Instant::now() + interval);
    }
}

// ---------------------------------------------------------------------------
// Fetching one page
// ---------------------------------------------------------------------------

/// A page body: in memory, or spilled to an anonymous temp file.
enum Body {
    Memory(Vec<u8>),
    File(File),
}

struct Fetched {
    body: Body,
    /// The response's `Link` header values.
    links: Vec<String>,
    /// The URL that answered (after redirects), for resolving relative links.
    url: Url,
}

/// One failed attempt, before it becomes a [`PullError`].
enum Failure {
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    Timeout,
    Request {
        message: String,
        transient: bool,
    },
    Spill(io::Error),
}

impl Failure {
    fn from_reqwest(e: reqwest::Error, url: &Url) -> Self {
        let transient = !(e.is_builder() || e.is_redirect() || e.is_status());
        let message = request_error(e, url.as_str());
        Failure::Request { message, transient }
    }

    fn is_transient(&self) -> bool {
        match self {
            Failure::Status { status, .. } => transient_status(*status),
            Failure::Timeout => true,
            Failure::Request { transient, .. } => *transient,
            Failure::Spill(_) => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Failure::Status { status, .. } => format!("HTTP {status}"),
            Failure::Timeout => "timeout".into(),
            Failure::Request { message, .. } => message.clone(),
            Failure::Spill(e) => e.to_string(),
        }
    }

    fn into_error(self, at: PageAt, attempts: u32, timeout_secs: u64) -> PullError {
        match self {
            Failure::Status { status, .. } => PullError::Status {
                at,
                status,
                attempts,
            },
            Failure::Timeout => PullError::Timeout {
                at,
                timeout_secs,
                attempts,
            },
            Failure::Request { message, transient } => PullError::Request {
                at,
                message,
                transient,
                attempts,
            },
            Failure::Spill(source) => PullError::Spill {
                action: format!("buffering the body of {at}"),
                source,
            },
        }
    }
}

/// Fetches one page, retrying transient failures.
async fn fetch_page(
    client: &reqwest::Client,
    cfg: &SnapshotConfig,
    headers: &HeaderMap,
    url: &Url,
    at: &PageAt,
    pace: &mut Pace,
    requests: &mut u64,
) -> Result<Fetched, PullError> {
    let mut attempt: u32 = 0;
    loop {
        pace.wait().await;
        attempt = attempt.saturating_add(1);
        *requests += 1;
        let failure =
            match tokio::time::timeout(cfg.timeout(), fetch_once(client, url, headers)).await {
                Ok(Ok(fetched)) => return Ok(fetched),
                Ok(Err(failure)) => failure,
                Err(_) => Failure::Timeout,
            };
        if failure.is_transient() && attempt <= cfg.retries {
            let delay = failure
                .retry_after()
                .unwrap_or_else(|| backoff(cfg.retry_backoff_ms, attempt));
            tracing::debug!(
                page = at.page,
                url = %at.url,
                attempt,
                delay_ms = delay.as_millis() as u64,
                reason = %failure.describe(),
                "retrying snapshot page"
            );
            tokio::time::sleep(delay).await;
            continue;
        }
        return Err(failure.into_error(at.clone(), attempt, cfg.timeout_secs));
    }
}

/// Full jitter: a uniform delay in `0..=base·2^(attempt-1)`, capped.
fn backoff(base_ms: u64, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let ceiling = base_ms
        .saturating_mul(1u64 << exp)
        .min(BACKOFF_MAX_MS.max(base_ms));
    Duration::from_millis(rand::random_range(0..=ceiling))
}

/// `Retry-After: <seconds>`, capped; the HTTP-date form is ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(RETRY_AFTER_MAX))
}

/// One request, its status checked and its body streamed to memory or disk.
async fn fetch_once(
    client: &reqwest::Client,
    url: &Url,
    headers: &HeaderMap,
) -> Result<Fetched, Failure> {
    let mut resp = client
        .get(url.clone())
        .headers(headers.clone())
        .send()
        .await
        .map_err(|e| Failure::from_reqwest(e, url))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(Failure::Status {
            status,
            retry_after: retry_after(resp.headers()),
        });
    }
    let links = resp
        .headers()
        .get_all(LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    let page_url = resp.url().clone();
    let hint = resp.content_length().unwrap_or(0);
    let mut incoming = if hint > MEMORY_BODY_MAX as u64 {
        Incoming::File(spill_file().map_err(Failure::Spill)?)
    } else {
        Incoming::Memory(Vec::with_capacity(hint as usize))
    };
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Failure::from_reqwest(e, url))?
    {
        incoming.push(&chunk).await.map_err(Failure::Spill)?;
    }
    Ok(Fetched {
        body: incoming.finish().await.map_err(Failure::Spill)?,
        links,
        url: page_url,
    })
}

fn spill_file() -> io::Result<tokio::io::BufWriter<tokio::fs::File>> {
    let file = tempfile::tempfile()?;
    Ok(tokio::io::BufWriter::with_capacity(
        256 << 10,
        tokio::fs::File::from_std(file),
    ))
}

/// A body being received.
enum Incoming {
    Memory(Vec<u8>),
    File(tokio::io::BufWriter<tokio::fs::File>),
}

impl Incoming {
    async fn push(&mut self, chunk: &[u8]) -> io::Result<()> {
        if let Incoming::Memory(buf) = self {
            if buf.len() + chunk.len() <= MEMORY_BODY_MAX {
                buf.extend_from_slice(chunk);
                return Ok(());
            }
            let buffered = std::mem::take(buf);
            let mut file = spill_file()?;
            file.write_all(&buffered).await?;
            *self = Incoming::File(file);
        }
        if let Incoming::File(file) = self {
            file.write_all(chunk).await?;
        }
        Ok(())
    }

    async fn finish(self) -> io::Result<Body> {
        match self {
            Incoming::Memory(buf) => Ok(Body::Memory(buf)),
            Incoming::File(mut file) => {
                file.flush().await?;
                Ok(Body::File(file.into_inner().into_std().await))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing one page (on the blocking pool)
// ---------------------------------------------------------------------------

/// What a page said about pagination.
struct PageOutcome {
    items: u64,
    /// The value at the style's pagination pointer, when present.
    captured: Option<Value>,
    /// Key of the page's last item (for `after_key`).
    last_key: Option<String>,
}

/// Accumulates records and their spilled JSON across pages.
struct Sink {
    spill: BufWriter<File>,
    offset: u64,
    /// Fixed-size blocks, so growing never copies (and briefly doubles) every record.
    blocks: Vec<Vec<RemoteRecord>>,
    scratch: Vec<u8>,
}

/// Records per block of [`Sink::blocks`].
const BLOCK: usize = 1 << 16;

impl Sink {
    fn new() -> Result<Self, PullError> {
        let file = tempfile::tempfile().map_err(|source| PullError::Spill {
            action: "creating the spill file".into(),
            source,
        })?;
        Ok(Self {
            spill: BufWriter::with_capacity(256 << 10, file),
            offset: 0,
            blocks: Vec::new(),
            scratch: Vec::new(),
        })
    }

    fn accept(
        &mut self,
        rules: &Rules,
        at: &PageAt,
        index: u64,
        item: &Value,
    ) -> Result<(), PullError> {
        let key_value = lookup(item, &rules.key).ok_or_else(|| PullError::KeyMissing {
            at: at.clone(),
            index,
            pointer: rules.key_pointer.clone(),
        })?;
        let key = key_string(key_value).ok_or_else(|| PullError::BadKey {
            at: at.clone(),
            index,
            pointer: rules.key_pointer.clone(),
            found: match key_value {
                Value::Number(_) => "a non-integer number",
                other => type_name(other),
            },
        })?;
        let version = match &rules.version {
            None => None,
            Some((pointer, tokens)) => match lookup(item, tokens) {
                None | Some(Value::Null) => None,
                Some(v) => Some(version_value(v).map_err(|message| PullError::BadVersion {
                    at: at.clone(),
                    index,
                    key: key.clone(),
                    pointer: pointer.clone(),
                    message,
                })?),
            },
        };
        let hash = rules.hasher.hash(item);
        let bucket = bucket_of(&key, rules.bucket_bits);

        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, item).map_err(|e| PullError::Spill {
            action: format!("serializing record {index} of {at}"),
            source: e.into(),
        })?;
        let doc_len = u32::try_from(self.scratch.len()).map_err(|_| PullError::RecordTooLarge {
            at: at.clone(),
            index,
            key: key.clone(),
            len: self.scratch.len(),
        })?;
        self.spill
            .write_all(&self.scratch)
            .map_err(|source| PullError::Spill {
                action: format!("writing record {index} of {at}"),
                source,
            })?;
        if self.blocks.last().is_none_or(|b| b.len() == BLOCK) {
            self.blocks.push(Vec::with_capacity(BLOCK));
        }
        let block = self.blocks.last_mut().expect("a block was just ensured");
        block.push(RemoteRecord {
            key: key.into_boxed_str(),
            bucket,
            hash,
            version,
            doc_offset: self.offset,
            doc_len,
        });
        self.offset += u64::from(doc_len);
        Ok(())
    }

    /// Sorts by `(bucket, key)`, rejects duplicate keys, flushes the spill file.
    fn finish(self) -> Result<(Vec<RemoteRecord>, File), PullError> {
        let Sink { spill, blocks, .. } = self;
        // One exactly sized vector; each block is freed as soon as it is moved.
        let mut records = Vec::with_capacity(blocks.iter().map(Vec::len).sum());
        for block in blocks {
            records.extend(block);
        }
        records.sort_unstable_by(|a, b| a.bucket.cmp(&b.bucket).then_with(|| a.key.cmp(&b.key)));
        if let Some(w) = records.windows(2).find(|w| w[0].key == w[1].key) {
            return Err(PullError::DuplicateKey {
                key: w[0].key.to_string(),
            });
        }
        let spill = spill.into_inner().map_err(|e| PullError::Spill {
            action: "flushing".into(),
            source: e.into_error(),
        })?;
        Ok((records, spill))
    }
}

fn parse_page(
    body: Body,
    sink: &mut Sink,
    rules: &Rules,
    at: &PageAt,
) -> Result<PageOutcome, PullError> {
    let mut index = 0u64;
    let mut walk = Walk::new(&rules.paths, |item: Value| {
        let r = sink.accept(rules, at, index, &item);
        index += 1;
        r
    });
    let walked = match body {
        Body::Memory(buf) => walk.run(&mut serde_json::Deserializer::from_slice(&buf)),
        Body::File(mut file) => {
            file.seek(SeekFrom::Start(0))
                .map_err(|source| PullError::Spill {
                    action: format!("rewinding the body of {at}"),
                    source,
                })?;
            let reader = BufReader::with_capacity(256 << 10, file);
            walk.run(&mut serde_json::Deserializer::from_reader(reader))
        }
    };
    let Walk {
        items, captured, ..
    } = walk;
    match walked {
        Ok(()) => {}
        Err(WalkError::Item(e)) => return Err(e),
        Err(WalkError::Json(e)) => {
            return Err(PullError::InvalidJson {
                at: at.clone(),
                message: e.to_string(),
            })
        }
    }
    match items {
        Found::Missing => Err(PullError::ItemsMissing {
            at: at.clone(),
            pointer: rules.items_pointer.clone(),
        }),
        Found::NotArray(found) => Err(PullError::ItemsNotArray {
            at: at.clone(),
            pointer: rules.items_pointer.clone(),
            found,
        }),
        Found::Array => Ok(PageOutcome {
            items: index,
            captured: captured.into_iter().next().flatten(),
            // The last record this page added, if it added any.
            last_key: (index > 0)
                .then(|| sink.blocks.last().and_then(|b| b.last()))
                .flatten()
                .map(|r| r.key.to_string()),
        }),
    }
}

// ---------------------------------------------------------------------------
// The streaming walker
// ---------------------------------------------------------------------------

/// The pointers a [`Walk`] follows, as unescaped tokens.
struct Paths {
    /// Where the array of items is; its elements go to the callback.
    items: Vec<String>,
    /// Small values to capture (at most 32).
    captures: Vec<Vec<String>>,
}

enum Found {
    Missing,
    NotArray(&'static str),
    Array,
}

enum WalkError<E> {
    /// The callback rejected an item.
    Item(E),
    Json(serde_json::Error),
}

/// One pass over a JSON document: streams the items array to `on_item`, captures
/// the values at `captures`, and skips everything else without building it.
struct Walk<'p, F, E> {
    paths: &'p Paths,
    on_item: F,
    items: Found,
    captured: Vec<Option<Value>>,
    failed: Option<E>,
}

impl<'p, F, E> Walk<'p, F, E>
where
    F: FnMut(Value) -> Result<(), E>,
{
    fn new(paths: &'p Paths, on_item: F) -> Self {
        debug_assert!(paths.captures.len() <= 32);
        Self {
            paths,
            on_item,
            items: Found::Missing,
            captured: vec![None; paths.captures.len()],
            failed: None,
        }
    }

    fn run<'de, R: serde_json::de::Read<'de>>(
        &mut self,
        de: &mut serde_json::Deserializer<R>,
    ) -> Result<(), WalkError<E>> {
        let active = Active {
            items: true,
            captures: (1u64 << self.paths.captures.len()).wrapping_sub(1) as u32,
        };
        let walked = Node {
            walk: &mut *self,
            depth: 0,
            active,
        }
        .deserialize(&mut *de)
        .and_then(|()| de.end());
        walked.map_err(|e| match self.failed.take() {
            Some(failed) => WalkError::Item(failed),
            None => WalkError::Json(e),
        })
    }

    fn item(&mut self, item: Value) -> Result<(), &'static str> {
        (self.on_item)(item).map_err(|e| {
            self.failed = Some(e);
            "item rejected"
        })
    }

    /// Takes what the active paths want from an already built value.
    fn take_from_value(
        &mut self,
        v: &Value,
        depth: usize,
        active: Active,
    ) -> Result<(), &'static str> {
        let paths = self.paths;
        for (i, tokens) in paths.captures.iter().enumerate() {
            if active.captures & (1 << i) != 0 {
                if let Some(x) = lookup(v, &tokens[depth..]) {
                    self.captured[i] = Some(x.clone());
                }
            }
        }
        if active.items {
            match lookup(v, &paths.items[depth..]) {
                None => {}
                Some(Value::Array(items)) => {
                    self.items = Found::Array;
                    for item in items {
                        self.item(item.clone())?;
                    }
                }
                Some(other) => self.items = Found::NotArray(type_name(other)),
            }
        }
        Ok(())
    }
}

/// The paths still matching at a node: items, and a bit per capture.
#[derive(Clone, Copy)]
struct Active {
    items: bool,
    captures: u32,
}

impl Active {
    fn is_empty(self) -> bool {
        !self.items && self.captures == 0
    }

    fn step(self, paths: &Paths, depth: usize, token: &str) -> Self {
        let mut captures = 0;
        for (i, tokens) in paths.captures.iter().enumerate() {
            if self.captures & (1 << i) != 0 && tokens.get(depth).is_some_and(|t| t == token) {
                captures |= 1 << i;
            }
        }
        Self {
            items: self.items && paths.items.get(depth).is_some_and(|t| t == token),
            captures,
        }
    }

    fn capture_ends(self, paths: &Paths, depth: usize) -> bool {
        paths
            .captures
            .iter()
            .enumerate()
            .any(|(i, t)| self.captures & (1 << i) != 0 && t.len() == depth)
    }
}

/// A node of the document reached along at least one active path.
struct Node<'w, 'p, F, E> {
    walk: &'w mut Walk<'p, F, E>,
    depth: usize,
    active: Active,
}

impl<'de, F, E> DeserializeSeed<'de> for Node<'_, '_, F, E>
where
    F: FnMut(Value) -> Result<(), E>,
{
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let paths = self.walk.paths;
        let items_here = self.active.items && paths.items.len() == self.depth;
        // A capture ending here, or one going on into the items array, needs the
        // value built (it is small in any sensible config).
        if self.active.captures != 0 && (items_here || self.active.capture_ends(paths, self.depth))
        {
            let v = Value::deserialize(d)?;
            return self
                .walk
                .take_from_value(&v, self.depth, self.active)
                .map_err(de::Error::custom);
        }
        d.deserialize_any(NodeVisitor {
            walk: self.walk,
            depth: self.depth,
            active: self.active,
            items_here,
        })
    }
}

struct NodeVisitor<'w, 'p, F, E> {
    walk: &'w mut Walk<'p, F, E>,
    depth: usize,
    active: Active,
    items_here: bool,
}

impl<F, E> NodeVisitor<'_, '_, F, E> {
    fn scalar<X>(self, found: &'static str) -> Result<(), X> {
        if self.items_here {
            self.walk.items = Found::NotArray(found);
        }
        Ok(())
    }
}

impl<'de, F, E> Visitor<'de> for NodeVisitor<'_, '_, F, E>
where
    F: FnMut(Value) -> Result<(), E>,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<X: de::Error>(self, _: bool) -> Result<(), X> {
        self.scalar("a boolean")
    }

    fn visit_i64<X: de::Error>(self, _: i64) -> Result<(), X> {
        self.scalar("a number")
    }

    fn visit_u64<X: de::Error>(self, _: u64) -> Result<(), X> {
        self.scalar("a number")
    }

    fn visit_f64<X: de::Error>(self, _: f64) -> Result<(), X> {
        self.scalar("a number")
    }

    fn visit_str<X: de::Error>(self, _: &str) -> Result<(), X> {
        self.scalar("a string")
    }

    fn visit_unit<X: de::Error>(self) -> Result<(), X> {
        self.scalar("null")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.items_here {
            self.walk.items = Found::NotArray("an object");
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        let paths = self.walk.paths;
        while let Some(key) = map.next_key::<String>()? {
            let sub = self.active.step(paths, self.depth, &key);
            if sub.is_empty() {
                map.next_value::<IgnoredAny>()?;
            } else {
                map.next_value_seed(Node {
                    walk: &mut *self.walk,
                    depth: self.depth + 1,
                    active: sub,
                })?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.items_here {
            self.walk.items = Found::Array;
            while let Some(item) = seq.next_element::<Value>()? {
                self.walk.item(item).map_err(de::Error::custom)?;
            }
            return Ok(());
        }
        let paths = self.walk.paths;
        let mut token = String::new();
        for index in 0usize.. {
            token.clear();
            let _ = write!(token, "{index}");
            let sub = self.active.step(paths, self.depth, &token);
            let more = if sub.is_empty() {
                seq.next_element::<IgnoredAny>()?.is_some()
            } else {
                seq.next_element_seed(Node {
                    walk: &mut *self.walk,
                    depth: self.depth + 1,
                    active: sub,
                })?
                .is_some()
            };
            if !more {
                break;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Pagination
// ---------------------------------------------------------------------------

/// Decides each next page's URL from the previous page.
struct Pager<'c> {
    cfg: &'c SnapshotConfig,
    base: Url,
    /// The style's pagination pointer, for messages.
    pointer: Option<String>,
    /// Cursors, URLs or after-keys already requested.
    seen: HashSet<String>,
    page_no: u64,
    offset: u64,
    total_pages: Option<u64>,
}

impl<'c> Pager<'c> {
    fn new(cfg: &'c SnapshotConfig, base: Url, pointer: Option<String>) -> Self {
        Self {
            cfg,
            base,
            pointer,
            seen: HashSet::new(),
            page_no: cfg.pagination.start.unwrap_or(1),
            offset: 0,
            total_pages: None,
        }
    }

    /// `cfg.url` with the style's parameter (if any) and the limit (if set).
    fn request_url(&self, value: Option<String>) -> Url {
        let pg = &self.cfg.pagination;
        let mut set: Vec<(&str, String)> = Vec::new();
        if let Some(v) = value {
            set.push((pg.param(), v));
        }
        if let Some(limit) = pg.limit {
            set.push((pg.limit_param(), limit.to_string()));
        }
        set_params(&self.base, &set)
    }

    fn first(&mut self) -> Url {
        let pg = &self.cfg.pagination;
        match pg.style {
            PaginationStyle::None => self.base.clone(),
            PaginationStyle::Cursor => {
                // A cursor already in the URL is where the pull starts.
                if let Some((_, v)) = self.base.query_pairs().find(|(k, _)| k == pg.param()) {
                    self.seen.insert(v.into_owned());
                }
                self.request_url(None)
            }
            PaginationStyle::NextUrl | PaginationStyle::LinkHeader => {
                let url = self.request_url(None);
                self.seen.insert(url.to_string());
                url
            }
            PaginationStyle::Page => self.request_url(Some(self.page_no.to_string())),
            PaginationStyle::Offset => self.request_url(Some(self.offset.to_string())),
            PaginationStyle::AfterKey => self.request_url(None),
        }
    }

    /// The next page's URL, or `None` after the last page.
    fn next(
        &mut self,
        fetched: u64,
        out: &PageOutcome,
        links: &[String],
        page_url: &Url,
        at: &PageAt,
    ) -> Result<Option<Url>, PullError> {
        let pointer = self.pointer.clone().unwrap_or_default();
        let pagination = |message: String| PullError::Pagination {
            at: at.clone(),
            message,
        };
        let pg = &self.cfg.pagination;
        match pg.style {
            PaginationStyle::None => Ok(None),
            PaginationStyle::Cursor => {
                let token = match &out.captured {
                    None | Some(Value::Null) => return Ok(None),
                    Some(Value::String(s)) if s.is_empty() => return Ok(None),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(other) => {
                        return Err(pagination(format!(
                            "cursor at {pointer:?} is {}, not a string or a number",
                            type_name(other)
                        )))
                    }
                };
                if !self.seen.insert(token.clone()) {
                    return Err(PullError::Loop {
                        at: at.clone(),
                        what: "cursor",
                        value: short(&token),
                    });
                }
                Ok(Some(self.request_url(Some(token))))
            }
            PaginationStyle::NextUrl => {
                let next = match &out.captured {
                    None | Some(Value::Null) => return Ok(None),
                    Some(Value::String(s)) if s.is_empty() => return Ok(None),
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => {
                        return Err(pagination(format!(
                            "next URL at {pointer:?} is {}, not a string",
                            type_name(other)
                        )))
                    }
                };
                self.follow(&next, "next URL", page_url, at).map(Some)
            }
            PaginationStyle::LinkHeader => match next_link(links) {
                None => Ok(None),
                Some(next) => self
                    .follow(&next, "Link rel=\"next\"", page_url, at)
                    .map(Some),
            },
            PaginationStyle::Page => {
                if let Some(ptr) = &pg.total_pages {
                    match &out.captured {
                        Some(v) => match v.as_u64() {
                            Some(n) => self.total_pages = Some(n),
                            None => {
                                return Err(pagination(format!(
                                    "total_pages at {ptr:?} is {}, not a non-negative integer",
                                    type_name(v)
                                )))
                            }
                        },
                        None if self.total_pages.is_none() => {
                            return Err(pagination(format!(
                                "total_pages pointer {ptr:?} not found"
                            )))
                        }
                        None => {}
                    }
                    let total = self.total_pages.unwrap_or(0);
                    if fetched >= total {
                        return Ok(None);
                    }
                    if out.items == 0 {
                        return Err(PullError::ShortPage {
                            at: at.clone(),
                            total_pages: total,
                            pointer: ptr.clone(),
                        });
                    }
                } else if out.items == 0 {
                    return Ok(None);
                }
                self.page_no += 1;
                Ok(Some(self.request_url(Some(self.page_no.to_string()))))
            }
            PaginationStyle::Offset => {
                if out.items < pg.limit.unwrap_or(0) {
                    return Ok(None);
                }
                self.offset += out.items;
                Ok(Some(self.request_url(Some(self.offset.to_string()))))
            }
            PaginationStyle::AfterKey => {
                let more = match &out.captured {
                    Some(Value::Bool(b)) => *b,
                    Some(other) => {
                        return Err(pagination(format!(
                            "has_more at {pointer:?} is {}, not a boolean",
                            type_name(other)
                        )))
                    }
                    None => {
                        return Err(pagination(format!(
                            "has_more pointer {pointer:?} not found"
                        )))
                    }
                };
                if !more {
                    return Ok(None);
                }
                let Some(last) = out.last_key.clone() else {
                    return Err(pagination(format!(
                        "has_more at {pointer:?} is true on a page without items"
                    )));
                };
                if !self.seen.insert(last.clone()) {
                    return Err(PullError::Loop {
                        at: at.clone(),
                        what: "after key",
                        value: short(&last),
                    });
                }
                Ok(Some(self.request_url(Some(last))))
            }
        }
    }

    /// Resolves a next-page link, keeping it on the snapshot URL's origin.
    fn follow(
        &mut self,
        next: &str,
        what: &'static str,
        page_url: &Url,
        at: &PageAt,
    ) -> Result<Url, PullError> {
        let pagination = |message: String| PullError::Pagination {
            at: at.clone(),
            message,
        };
        let url = page_url.join(next).map_err(|e| {
            let before_query = next.split('?').next().unwrap_or_default();
            pagination(format!("invalid {what} {:?}: {e}", short(before_query)))
        })?;
        if url.origin() != self.base.origin() {
            return Err(pagination(format!(
                "{what} {} is not on the origin of {}: headers are only sent to that origin",
                shown(&url),
                shown(&self.base)
            )));
        }
        if !self.seen.insert(url.to_string()) {
            return Err(PullError::Loop {
                at: at.clone(),
                what,
                value: shown(&url),
            });
        }
        Ok(url)
    }
}

/// `url` with each of `set` replacing any parameter of that name; others kept.
fn set_params(url: &Url, set: &[(&str, String)]) -> Url {
    if set.is_empty() {
        return url.clone();
    }
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !set.iter().any(|(name, _)| k == name))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut out = url.clone();
    out.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .extend_pairs(set.iter().map(|(k, v)| (*k, v.as_str())));
    out
}

/// The target of the first `rel="next"` link among `Link` header values.
fn next_link(values: &[String]) -> Option<String> {
    values.iter().find_map(|v| {
        parse_links(v)
            .into_iter()
            .find(|(_, rels)| rels.iter().any(|r| r == "next"))
            .map(|(target, _)| target)
    })
}

/// Parses an RFC 8288 `Link` value into `(target, rel values in lowercase)`.
fn parse_links(header: &str) -> Vec<(String, Vec<String>)> {
    let mut sc = Scan { s: header, i: 0 };
    let mut out = Vec::new();
    loop {
        while sc.peek().is_some_and(|c| c == ',' || c.is_whitespace()) {
            sc.bump();
        }
        match sc.bump() {
            None => break,
            Some('<') => {}
            Some(_) => {
                sc.skip_link();
                continue;
            }
        }
        let target = sc.take_while(|c| c != '>').to_string();
        if sc.bump() != Some('>') {
            break;
        }
        let mut rels: Option<Vec<String>> = None;
        loop {
            sc.skip_ws();
            if sc.peek() != Some(';') {
                break;
            }
            sc.bump();
            sc.skip_ws();
            let name = sc
                .take_while(|c| !matches!(c, '=' | ';' | ',') && !c.is_whitespace())
                .to_ascii_lowercase();
            sc.skip_ws();
            let mut value = String::new();
            if sc.peek() == Some('=') {
                sc.bump();
                sc.skip_ws();
                if sc.peek() == Some('"') {
                    sc.bump();
                    while let Some(c) = sc.bump() {
                        match c {
                            '"' => break,
                            '\\' => value.extend(sc.bump()),
                            c => value.push(c),
                        }
                    }
                } else {
                    value = sc
                        .take_while(|c| !matches!(c, ';' | ',') && !c.is_whitespace())
                        .to_string();
                }
            }
            // RFC 8288 §3.3: occurrences of rel after the first are ignored.
            if name == "rel" && rels.is_none() {
                rels = Some(
                    value
                        .split_whitespace()
                        .map(str::to_ascii_lowercase)
                        .collect(),
                );
            }
        }
        out.push((target, rels.unwrap_or_default()));
        sc.skip_link();
    }
    out
}

struct Scan<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<char> {
        self.s[self.i..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.bump();
        }
        &self.s[start..self.i]
    }

    /// Skips to the comma ending the current link (quotes respected).
    fn skip_link(&mut self) {
        let mut quoted = false;
        while let Some(c) = self.peek() {
            match c {
                ',' if !quoted => return,
                '"' => quoted = !quoted,
                '\\' if quoted => {
                    self.bump();
                }
                _ => {}
            }
            self.bump();
        }
    }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// A URL as shown in errors and logs: no query, fragment or credentials.
fn shown(url: &Url) -> String {
    redact_url(url.as_str())
}

/// An opaque value cut to a readable length.
fn short(s: &str) -> String {
    match s.char_indices().nth(SHOWN_VALUE_MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value at unescaped pointer `tokens` (array members by decimal index).
fn lookup<'v>(v: &'v Value, tokens: &[String]) -> Option<&'v Value> {
    tokens.iter().try_fold(v, |v, t| match v {
        Value::Object(m) => m.get(t),
        // Same rule as the streaming walker: the token is the index in decimal.
        Value::Array(a) => t
            .parse::<usize>()
            .ok()
            .filter(|i| i.to_string() == *t)
            .and_then(|i| a.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Mutex;

    use axum::extract::{Query, RawQuery};
    use axum::http::{header, HeaderMap as Headers, StatusCode as S};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use axum::{Json, Router};
    use futures::StreamExt as _;
    use serde_json::json;

    const BITS: u8 = 8;

    type Params = Query<HashMap<String, String>>;

    fn hasher() -> RecordHasher {
        RecordHasher::new(&["/meta/fetched_at"]).unwrap()
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    fn config(text: &str) -> SnapshotConfig {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn record(i: usize) -> Value {
        json!({
            "id": format!("r{i:05}"),
            "n": i,
            "price": i as f64 * 1.25,
            "name": format!("item \"{i}\" é"),
            "tags": ["a", i % 7],
            "meta": {"fetched_at": i * 3, "ok": i.is_multiple_of(2)},
        })
    }

    fn records(n: usize) -> Arc<Vec<Value>> {
        Arc::new((0..n).map(record).collect())
    }

    fn num(q: &HashMap<String, String>, name: &str) -> Option<usize> {
        q.get(name)?.parse().ok()
    }

    /// Serves the router built from the server's own base URL on a loopback port.
    async fn serve_at(app: impl FnOnce(String) -> Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = app(base.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        base
    }

    async fn serve(app: Router) -> String {
        serve_at(|_| app).await
    }

    async fn pull_ok(cfg: &SnapshotConfig) -> Snapshot {
        pull(&client(), cfg, &hasher(), BITS)
            .await
            .unwrap_or_else(|e| panic!("pull failed: {e}"))
    }

    async fn pull_err(cfg: &SnapshotConfig) -> PullError {
        match pull(&client(), cfg, &hasher(), BITS).await {
            Ok(s) => panic!("pull succeeded with {} records", s.records.len()),
            Err(e) => e,
        }
    }

    /// The snapshot holds exactly `served`: same keys, hashes, buckets and documents.
    fn check(snap: &Snapshot, served: &[Value]) {
        let h = hasher();
        let by_key: HashMap<String, &Value> = served
            .iter()
            .map(|v| (key_string(&v["id"]).unwrap(), v))
            .collect();
        assert_eq!(by_key.len(), served.len(), "served keys are unique");
        assert_eq!(snap.records.len(), served.len());
        for w in snap.records.windows(2) {
            assert!(
                (w[0].bucket, &w[0].key) < (w[1].bucket, &w[1].key),
                "records sorted by (bucket, key) without duplicates"
            );
        }
        for r in &snap.records {
            let v = by_key
                .get(&*r.key)
                .unwrap_or_else(|| panic!("key {:?} was not served", r.key));
            assert_eq!(r.hash, h.hash(v), "hash of {}", r.key);
            assert_eq!(r.bucket, bucket_of(&r.key, BITS));
            assert_eq!(r.version, None);
            assert_eq!(&snap.doc(r).unwrap(), *v, "document of {}", r.key);
        }
    }

    // -- pagination styles --------------------------------------------------

    #[tokio::test]
    async fn none_style_reads_one_root_array() {
        let recs = records(2_500);
        let served = recs.clone();
        let base = serve(Router::new().route(
            "/all",
            get(move || {
                let recs = served.clone();
                async move { Json(recs.to_vec()) }
            }),
        ))
        .await;
        let snap = pull_ok(&config(&format!("url = \"{base}/all\"\n"))).await;
        check(&snap, &recs);
        assert_eq!((snap.pages, snap.requests), (1, 1));
        assert!(snap.started_at_ms > 1_600_000_000_000);
    }

    #[tokio::test]
    async fn cursor_style_replaces_the_cursor_and_keeps_other_params() {
        let recs = records(2_300);
        let served = recs.clone();
        let app = Router::new().route(
            "/items",
            get(move |RawQuery(q): RawQuery| {
                let recs = served.clone();
                async move {
                    let url = Url::parse(&format!("http://x/?{}", q.unwrap_or_default())).unwrap();
                    let one = |name: &str| {
                        let v: Vec<String> = url
                            .query_pairs()
                            .filter(|(k, _)| k == name)
                            .map(|(_, v)| v.into_owned())
                            .collect();
                        (v.len() == 1).then(|| v[0].clone())
                    };
                    let start: Option<usize> =
                        one("cursor").and_then(|c| c.strip_prefix('c')?.parse().ok());
                    let (Some("eu"), Some("250"), Some(start)) =
                        (one("region").as_deref(), one("limit").as_deref(), start)
                    else {
                        return (S::BAD_REQUEST, Json(json!({"error": "bad query"})));
                    };
                    let end = (start + 250).min(recs.len());
                    let next = if end < recs.len() {
                        json!(format!("c{end}"))
                    } else {
                        json!(null)
                    };
                    let page = json!({"data": &recs[start..end], "meta": {"next": next}});
                    (S::OK, Json(page))
                }
            }),
        );
        let base = serve(app).await;
        let cfg = config(&format!(
            r#"url = "{base}/items?cursor=c0&region=eu"
items = "/data"
retry_backoff_ms = 1
[pagination]
style = "cursor"
cursor = "/meta/next"
limit = 250
"#
        ));
        let snap = pull_ok(&cfg).await;
        check(&snap, &recs);
        assert_eq!((snap.pages, snap.requests), (10, 10));
    }

    #[tokio::test]
    async fn next_url_style_resolves_relative_urls() {
        let recs = records(2_100);
        let served = recs.clone();
        let base = serve(Router::new().route(
            "/api/n",
            get(move |Query(q): Params| {
                let recs = served.clone();
                async move {
                    let page = num(&q, "page").unwrap_or(1);
                    let start = ((page - 1) * 250).min(recs.len());
                    let end = (start + 250).min(recs.len());
                    let next = if end < recs.len() {
                        format!("n?page={}", page + 1)
                    } else {
                        String::new()
                    };
                    Json(json!({"items": &recs[start..end], "links": {"next": next}}))
                }
            }),
        ))
        .await;
        let cfg = config(&format!(
            r#"url = "{base}/api/n?page=1"
items = "/items"
[pagination]
style = "next_url"
next = "/links/next"
"#
        ));
        let snap = pull_ok(&cfg).await;
        check(&snap, &recs);
        assert_eq!(snap.pages, 9);
    }

    #[tokio::test]
    async fn link_header_style_finds_rel_next_among_several_links() {
        let recs = records(2_400);
        let served = recs.clone();
        let base = serve_at(move |base| {
            Router::new().route(
                "/l",
                get(move |Query(q): Params| {
                    let (recs, base) = (served.clone(), base.clone());
                    async move {
                        let p = num(&q, "p").unwrap_or(1);
                        let start = ((p - 1) * 250).min(recs.len());
                        let end = (start + 250).min(recs.len());
                        let mut links = vec![r#"</l?p=1>; rel="first""#.to_string()];
                        if end < recs.len() {
                            links.push(if p.is_multiple_of(2) {
                                format!("<{base}/l?p={}>; rel=next", p + 1)
                            } else {
                                format!(r#"</l?p={}> ; title="a, b; c" ; rel="last NEXT""#, p + 1)
                            });
                        } else if p > 1 {
                            links.push(format!("</l?p={}>; rel=prev", p - 1));
                        }
                        (
                            [(header::LINK, links.join(", "))],
                            Json(recs[start..end].to_vec()),
                        )
                    }
                }),
            )
        })
        .await;
        let cfg = config(&format!(
            "url = \"{base}/l\"\n[pagination]\nstyle = \"link_header\"\n"
        ));
        let snap = pull_ok(&cfg).await;
        check(&snap, &recs);
        assert_eq!(snap.pages, 10);
    }

    /// A `page` style server: `{"results": [...], "total_pages": N}`, pages from 1.
    fn numbered_pages(recs: Arc<Vec<Value>>, per: usize) -> Router {
        Router::new().route(
            "/pg",
            get(move |Query(q): Params| {
                let recs = recs.clone();
                async move {
                    let (Some(page), Some(n)) = (num(&q, "page"), num(&q, "per_page")) else {
                        return (S::BAD_REQUEST, Json(json!({})));
                    };
                    assert_eq!(n, per, "page size asked for");
                    let start = ((page - 1) * n).min(recs.len());
                    let end = (start + n).min(recs.len());
                    let total = recs.len().div_ceil(n);
                    let body = json!({"results": &recs[start..end], "total_pages": total});
                    (S::OK, Json(body))
                }
            }),
        )
    }

    #[tokio::test]
    async fn page_style_stops_after_total_pages() {
        let recs = records(2_250);
        let base = serve(numbered_pages(recs.clone(), 250)).await;
        let cfg = config(&format!(
            r#"url = "{base}/pg"
items = "/results"
[pagination]
style = "page"
limit_param = "per_page"
limit = 250
total_pages = "/total_pages"
"#
        ));
        let snap = pull_ok(&cfg).await;
        check(&snap, &recs);
        assert_eq!(snap.pages, 9, "no request after the announced last page");
    }

    #[tokio::test]
    async fn page_style_without_total_stops_on_an_empty_page() {
        let recs = records(2_100);
        let served = recs.clone();
        let base = serve(Router::new().route(
            "/pz",
            get(move |Query(q): Params| {
                let recs = served.clone();
                async move {
                    let page = num(&q, "page").unwrap_or(usize::MAX / 2);
                    let limit = num(&q, "limit").unwrap_or(0);
                    let start = page.saturating_mul(limit).min(recs.len());
                    let end = (start + limit).min(recs.len());
                    Json(recs[start..end].to_vec())
                }
            }),
        ))
        .await;
        let cfg = config(&format!(
            "url = \"{base}/pz\"\n[pagination]\nstyle = \"page\"\nstart = 0\nlimit = 300\n"
        ));
        let snap = pull_ok(&cfg).await;
        check(&snap, &recs);
        assert_eq!(snap.pages, 8, "7 full pages and the empty one");
    }

    #[tokio::test]
    async fn offset_style_stops_on_a_short_page() {
        let recs = records(2_600);
        let served = recs.clone();
        let base = serve(Router::new().route(
            "/o",
            get(move |Query(q): Params| {
                let recs = served.clone();
                async move {
                    let (Some(offset), Some(limit)) = (num(&q, "offset"), num(&q, "limit")) else {
                        return (S::BAD_REQUEST, Json(json!([])));
                    };
                    let start = offset.min(recs.len());
                    let end = (start + limit).min(recs.len());
                    (S::OK, Json(json!(&recs[start..end])))
                }
            }),
        ))
        .await;
        let cfg = config(&format!(
            "url = \"{base}/o\"\n[pagination]\nstyle = \"offset\"\nlimit = 250\n"
        ));
        let snap = pull_ok(&cfg).await;
        check(&snap, &recs);
        assert_eq!(snap.pages, 11);
    }

    #[tokio::test]
    async fn after_key_style_passes_the_last_integer_key() {
        let recs: Arc<Vec<Value>> = Arc::new(
            (0..2_750)
                .map(|i| {
                    let mut r = record(i);
                    r["id"] = json!(i * 10);
                    r
                })
                .collect(),
        );
        let served = recs.clone();
        let base = serve(Router::new().route(
            "/ak",
            get(move |Query(q): Params| {
                let recs = served.clone();
                async move {
                    let start = match q.get("starting_after") {
                        None => 0,
                        Some(k) => match recs
                            .iter()
                            .position(|r| key_string(&r["id"]).as_ref() == Some(k))
                        {
                            Some(i) => i + 1,
                            None => return (S::BAD_REQUEST, Json(json!({}))),
                        },
                    };
                    let end = (start + num(&q, "limit").unwrap_or(10)).min(recs.len());
                    let body = json!({"data": &recs[start..end], "has_more": end < recs.len()});
                    (S::OK, Json(body))
                }
            }),
        ))
        .await;
        let cfg = config(&format!(
            "url = \"{base}/ak\"\nitems = \"/data\"\n[pagination]\nstyle = \"after_key\"\nlimit = 250\n"
        ));
        let snap = pull_ok(&cfg).await;
        check(&snap, &recs);
        assert_eq!(snap.pages, 11);
        assert!(snap.records.iter().any(|r| &*r.key == "27490"));
    }

    #[tokio::test]
    async fn a_large_single_document_streams_through_a_temp_file() {
        let recs: Arc<Vec<Value>> = Arc::new(
            (0..50_000)
                .map(|i| {
                    let mut r = record(i);
                    r["pad"] = json!("x".repeat(40));
                    r
                })
                .collect(),
        );
        let body = Arc::new(serde_json::to_vec(&json!({"count": 50_000, "data": &*recs})).unwrap());
        assert!(body.len() > MEMORY_BODY_MAX, "the body must outgrow memory");
        let (sized, chunked) = (body.clone(), body.clone());
        let base = serve(
            Router::new()
                .route(
                    "/big",
                    get(move || {
                        let body = sized.clone();
                        async move { ([(header::CONTENT_TYPE, "application/json")], body.to_vec()) }
                    }),
                )
                .route(
                    "/big-chunked",
                    get(move || {
                        let body = chunked.clone();
                        async move {
                            let chunks: Vec<Result<Vec<u8>, io::Error>> =
                                body.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
                            axum::body::Body::from_stream(futures::stream::iter(chunks))
                        }
                    }),
                ),
        )
        .await;
        for path in ["big", "big-chunked"] {
            let cfg = config(&format!("url = \"{base}/{path}\"\nitems = \"/data\"\n"));
            let snap = pull_ok(&cfg).await;
            check(&snap, &recs);
            assert_eq!(snap.pages, 1, "{path}");
        }
    }

    // -- failures -------------------------------------------------------------

    /// A route answering with `respond(request number)`, counting requests.
    fn counted(
        hits: &Arc<AtomicUsize>,
        respond: impl Fn(usize) -> Response + Clone + Send + Sync + 'static,
    ) -> Router {
        let hits = hits.clone();
        Router::new().route(
            "/x",
            get(move || {
                let n = hits.fetch_add(1, SeqCst);
                let r = respond(n);
                async move { r }
            }),
        )
    }

    #[tokio::test]
    async fn server_errors_are_retried_then_fail_the_pull() {
        let hits = Arc::new(AtomicUsize::new(0));
        let base = serve(counted(&hits, |_| {
            (S::INTERNAL_SERVER_ERROR, "boom").into_response()
        }))
        .await;
        let cfg = config(&format!(
            "url = \"{base}/x?api_key=zzz-query-token\"\nretries = 2\nretry_backoff_ms = 1\n"
        ));
        let err = pull_err(&cfg).await;
        assert!(
            matches!(
                err,
                PullError::Status {
                    status: S::INTERNAL_SERVER_ERROR,
                    attempts: 3,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(hits.load(SeqCst), 3, "one request and two retries");
        assert!(err.is_transient());
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "page 1 of {base}/x: HTTP 500 Internal Server Error after 3 attempts"
            )),
            "{msg}"
        );
        assert!(
            !msg.contains("zzz") && !format!("{err:?}").contains("zzz"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn transient_errors_then_success_honour_retry_after() {
        let hits = Arc::new(AtomicUsize::new(0));
        let base = serve(counted(&hits, |n| match n {
            0 => S::SERVICE_UNAVAILABLE.into_response(),
            1 => (S::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")]).into_response(),
            _ => Json(json!([{"id": "a"}, {"id": "b"}])).into_response(),
        }))
        .await;
        let cfg = config(&format!(
            "url = \"{base}/x\"\nretries = 3\nretry_backoff_ms = 1\n"
        ));
        let began = Instant::now();
        let snap = pull_ok(&cfg).await;
        assert_eq!((snap.requests, snap.pages, snap.records.len()), (3, 1, 2));
        assert!(
            began.elapsed() >= Duration::from_secs(1),
            "Retry-After: 1 was honoured"
        );
        assert_eq!(hits.load(SeqCst), 3);
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let hits = Arc::new(AtomicUsize::new(0));
        let base = serve(counted(&hits, |_| S::NOT_FOUND.into_response())).await;
        let cfg = config(&format!(
            "url = \"{base}/x\"\nretries = 3\nretry_backoff_ms = 1\n"
        ));
        let err = pull_err(&cfg).await;
        assert!(
            matches!(
                err,
                PullError::Status {
                    status: S::NOT_FOUND,
                    attempts: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!err.is_transient());
        assert_eq!(hits.load(SeqCst), 1);
        assert!(
            err.to_string()
                .contains("HTTP 404 Not Found after 1 attempt"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_slow_response_times_out() {
        let base = serve(Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Json(json!([]))
            }),
        ))
        .await;
        let cfg = config(&format!(
            "url = \"{base}/slow\"\ntimeout_secs = 1\nretries = 0\n"
        ));
        let began = Instant::now();
        let err = pull_err(&cfg).await;
        assert!(
            matches!(
                err,
                PullError::Timeout {
                    timeout_secs: 1,
                    attempts: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(began.elapsed() < Duration::from_secs(5));
        assert!(err.is_transient());
        assert!(
            err.to_string().contains("no complete response within 1 s"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_timeout_covers_the_whole_body() {
        let hits = Arc::new(AtomicUsize::new(0));
        let base = serve(counted(&hits, |_| {
            let head = futures::stream::iter([Ok::<_, io::Error>("[{\"id\": \"a\"},".to_string())]);
            axum::body::Body::from_stream(head.chain(futures::stream::pending())).into_response()
        }))
        .await;
        let cfg = config(&format!(
            "url = \"{base}/x\"\ntimeout_secs = 1\nretries = 1\nretry_backoff_ms = 1\n"
        ));
        let err = pull_err(&cfg).await;
        assert!(
            matches!(err, PullError::Timeout { attempts: 2, .. }),
            "{err:?}"
        );
        assert_eq!(hits.load(SeqCst), 2, "a stalled body is retried");
    }

    #[tokio::test]
    async fn connection_errors_are_transient() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = config(&format!(
            "url = \"http://127.0.0.1:{port}/x?token=qqq\"\nretries = 1\nretry_backoff_ms = 1\n"
        ));
        let err = pull_err(&cfg).await;
        assert!(
            matches!(
                err,
                PullError::Request {
                    transient: true,
                    attempts: 2,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.is_transient());
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "page 1 of http://127.0.0.1:{port}/x: request failed after 2 attempts"
            )),
            "{msg}"
        );
        assert!(
            !msg.contains("qqq") && !format!("{err:?}").contains("qqq"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn invalid_json_names_the_page() {
        let base = serve(Router::new().route(
            "/o",
            get(|Query(q): Params| async move {
                match num(&q, "offset") {
                    Some(0) => r#"[{"id": "a"}, {"id": "b"}]"#,
                    _ => r#"[{"id": "c"}, {"id": "#,
                }
            }),
        ))
        .await;
        let cfg = config(&format!(
            "url = \"{base}/o\"\n[pagination]\nstyle = \"offset\"\nlimit = 2\n"
        ));
        let err = pull_err(&cfg).await;
        assert!(
            matches!(err, PullError::InvalidJson { ref at, .. } if at.page == 2),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("page 2 of {base}/o: invalid JSON: ")),
            "{msg}"
        );
        assert!(msg.contains("line 1"), "{msg}");
        assert!(!err.is_transient());
    }

    #[tokio::test]
    async fn the_items_pointer_must_lead_to_an_array() {
        let base = serve(
            Router::new()
                .route(
                    "/missing",
                    get(|| async { Json(json!({"items": [], "data2": []})) }),
                )
                .route("/object", get(|| async { Json(json!({"data": {"a": 1}})) }))
                .route("/trailing", get(|| async { r#"{"data": []} x"# })),
        )
        .await;
        let cfg = |path: &str| config(&format!("url = \"{base}/{path}\"\nitems = \"/data\"\n"));

        let err = pull_err(&cfg("missing")).await;
        assert!(matches!(err, PullError::ItemsMissing { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("page 1 of {base}/missing: items pointer \"/data\" not found")
        );

        let err = pull_err(&cfg("object")).await;
        assert!(
            matches!(
                err,
                PullError::ItemsNotArray {
                    found: "an object",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("items pointer \"/data\" holds an object, not an array"),
            "{err}"
        );

        let err = pull_err(&cfg("trailing")).await;
        assert!(matches!(err, PullError::InvalidJson { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn records_need_a_string_or_integer_key() {
        let base = serve(
            Router::new()
                .route(
                    "/bool",
                    get(|| async { Json(json!([{"id": "a"}, {"id": true}])) }),
                )
                .route("/float", get(|| async { Json(json!([{"id": 1.5}])) }))
                .route(
                    "/none",
                    get(|| async { Json(json!([{"id": 1}, {"id": 2}, {"name": "x"}])) }),
                ),
        )
        .await;
        let cfg = |path: &str| config(&format!("url = \"{base}/{path}\"\n"));

        let err = pull_err(&cfg("bool")).await;
        assert!(
            matches!(
                err,
                PullError::BadKey {
                    index: 1,
                    found: "a boolean",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .ends_with(": record 1: key at \"/id\" is a boolean, not a string or an integer"),
            "{err}"
        );
        let err = pull_err(&cfg("float")).await;
        assert!(err.to_string().contains("is a non-integer number"), "{err}");
        let err = pull_err(&cfg("none")).await;
        assert!(
            matches!(err, PullError::KeyMissing { index: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("page 1 of"), "{err}");
    }

    #[tokio::test]
    async fn a_duplicate_key_across_pages_fails_the_pull() {
        let base = serve(Router::new().route(
            "/pz",
            get(|Query(q): Params| async move {
                Json(match num(&q, "page") {
                    Some(1) => json!([{"id": "a"}, {"id": "dup"}]),
                    Some(2) => json!([{"id": "b"}, {"id": "dup", "other": 1}]),
                    _ => json!([]),
                })
            }),
        ))
        .await;
        let cfg = config(&format!(
            "url = \"{base}/pz\"\n[pagination]\nstyle = \"page\"\n"
        ));
        let err = pull_err(&cfg).await;
        assert!(
            matches!(err, PullError::DuplicateKey { ref key } if key == "dup"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "duplicate key \"dup\" in the snapshot");
    }

    #[tokio::test]
    async fn a_repeated_cursor_is_a_loop() {
        let hits = Arc::new(AtomicUsize::new(0));
        let base = serve(counted(&hits, |n| {
            Json(json!({"data": [{"id": n}], "next": "abc"})).into_response()
        }))
        .await;
        let cfg = config(&format!(
            "url = \"{base}/x\"\nitems = \"/data\"\n[pagination]\nstyle = \"cursor\"\ncursor = \"/next\"\n"
        ));
        let err = pull_err(&cfg).await;
        assert!(
            matches!(err, PullError::Loop { what: "cursor", .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("page 2 of {base}/x: pagination loop: cursor \"abc\" was already requested")
        );
        assert_eq!(hits.load(SeqCst), 2);
    }

    #[tokio::test]
    async fn more_than_max_pages_fails_the_pull() {
        let hits = Arc::new(AtomicUsize::new(0));
        let base = serve(counted(&hits, |n| Json(json!([{"id": n}])).into_response())).await;
        let cfg = config(&format!(
            "url = \"{base}/x\"\nmax_pages = 3\n[pagination]\nstyle = \"page\"\n"
        ));
        let err = pull_err(&cfg).await;
        assert!(
            matches!(err, PullError::TooManyPages { max_pages: 3, .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("page 3 of {base}/x: more pages follow but max_pages is 3")
        );
        assert_eq!(hits.load(SeqCst), 3, "no request beyond max_pages");
    }

    #[tokio::test]
    async fn an_empty_page_before_the_last_is_a_short_page() {
        let base = serve(Router::new().route(
            "/pg",
            get(|Query(q): Params| async move {
                let page = num(&q, "page").unwrap_or(0);
                let items = if page == 3 {
                    json!([])
                } else {
                    json!([{"id": page}])
                };
                Json(json!({"results": items, "pages": 5}))
            }),
        ))
        .await;
        let cfg = config(&format!(
            "url = \"{base}/pg\"\nitems = \"/results\"\n[pagination]\nstyle = \"page\"\ntotal_pages = \"/pages\"\n"
        ));
        let err = pull_err(&cfg).await;
        assert!(
            matches!(err, PullError::ShortPage { total_pages: 5, ref at, .. } if at.page == 3),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("page 3 of {base}/pg: short page")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn after_key_requires_a_boolean_has_more() {
        let base = serve(Router::new().route(
            "/ak",
            get(|| async { Json(json!({"data": [{"id": 1}], "more": true})) }),
        ))
        .await;
        let cfg = config(&format!(
            "url = \"{base}/ak\"\nitems = \"/data\"\n[pagination]\nstyle = \"after_key\"\n"
        ));
        let err = pull_err(&cfg).await;
        assert!(matches!(err, PullError::Pagination { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("has_more pointer \"/has_more\" not found"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn next_urls_must_stay_on_the_origin() {
        let base = serve_at(|base| {
            let port = base.rsplit(':').next().unwrap_or_default().to_string();
            Router::new().route(
                "/n",
                get(move || {
                    let next = format!("http://localhost:{port}/n?page=2");
                    async move { Json(json!({"items": [{"id": 1}], "next": next})) }
                }),
            )
        })
        .await;
        let cfg = config(&format!(
            "url = \"{base}/n\"\nitems = \"/items\"\n[pagination]\nstyle = \"next_url\"\nnext = \"/next\"\n"
        ));
        let err = pull_err(&cfg).await;
        assert!(matches!(err, PullError::Pagination { .. }), "{err:?}");
        assert!(err.to_string().contains("is not on the origin of"), "{err}");
    }

    // -- versions, headers, rate limit -------------------------------------------

    #[tokio::test]
    async fn versions_from_integers_and_rfc3339_strings() {
        let base = serve(
            Router::new()
                .route(
                    "/v",
                    get(|| async {
                        Json(json!([
                            {"id": "a", "v": "2026-01-01T00:00:00Z"},
                            {"id": "b", "v": 42},
                            {"id": "c", "v": null},
                            {"id": "d"},
                            {"id": "e", "v": "2026-01-01T01:00:00.5+01:00"},
                        ]))
                    }),
                )
                .route(
                    "/bad",
                    get(|| async { Json(json!([{"id": "a", "v": "yesterday"}])) }),
                ),
        )
        .await;
        let snap = pull_ok(&config(&format!("url = \"{base}/v\"\nversion = \"/v\"\n"))).await;
        let versions: HashMap<&str, Option<i64>> =
            snap.records.iter().map(|r| (&*r.key, r.version)).collect();
        let jan1 = 1_767_225_600_000_000_000;
        assert_eq!(versions["a"], Some(jan1));
        assert_eq!(versions["b"], Some(42));
        assert_eq!(versions["c"], None);
        assert_eq!(versions["d"], None);
        assert_eq!(versions["e"], Some(jan1 + 500_000_000));

        let unversioned = pull_ok(&config(&format!("url = \"{base}/v\"\n"))).await;
        assert!(unversioned.records.iter().all(|r| r.version.is_none()));

        let err = pull_err(&config(&format!(
            "url = \"{base}/bad\"\nversion = \"/v\"\n"
        )))
        .await;
        assert!(
            matches!(err, PullError::BadVersion { index: 0, ref key, .. } if key == "a"),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("record 0 (key \"a\"): bad version at \"/v\"")
                && msg.contains("yesterday"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn headers_are_sent_and_never_shown() {
        let app = Router::new()
            .route(
                "/secure",
                get(|h: Headers| async move {
                    let auth = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                    let key = h.get("x-api-key").and_then(|v| v.to_str().ok());
                    if auth == Some("Bearer s3cret-token") && key == Some("k3y-value") {
                        Json(json!([{"id": "a"}])).into_response()
                    } else {
                        S::UNAUTHORIZED.into_response()
                    }
                }),
            )
            .route("/fail", get(|| async { S::INTERNAL_SERVER_ERROR }))
            .route("/deny", get(|| async { S::FORBIDDEN }))
            .route("/garbage", get(|| async { "{" }));
        let base = serve(app).await;
        let env = |name: &str| match name {
            "TOKEN" => Some("s3cret-token".to_string()),
            "KEY" => Some("k3y-value".to_string()),
            _ => None,
        };
        let cfg_for = |path: &str, extra: &str| {
            let text = format!(
                r#"[[producer]]
name = "p"
schedule = "0 * * * * *"
[producer.snapshot]
url = "{base}/{path}"
retries = 1
retry_backoff_ms = 1
headers = {{ Authorization = "Bearer ${{TOKEN}}", X-Api-Key = "${{KEY}}"{extra} }}
"#
            );
            crate::config::Config::parse("t.toml", &text, &env)
                .unwrap_or_else(|e| panic!("{e}"))
                .config
                .producers[0]
                .snapshot
                .clone()
        };
        let snap = pull_ok(&cfg_for("secure", "")).await;
        assert_eq!(snap.records.len(), 1, "the server accepted the headers");

        let mut errors = Vec::new();
        for path in ["fail", "deny", "garbage"] {
            errors.push(pull_err(&cfg_for(path, "")).await);
        }
        errors.push(pull_err(&cfg_for("secure", r#", X-Bad = "k3y-value\u0001""#)).await);
        assert!(matches!(errors[3], PullError::Config(_)), "{:?}", errors[3]);
        for err in &errors {
            for shown in [err.to_string(), format!("{err:?}")] {
                assert!(
                    !shown.contains("s3cret") && !shown.contains("k3y-value"),
                    "secret in {shown}"
                );
            }
        }
    }

    #[tokio::test]
    async fn the_rate_limit_spaces_requests() {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let seen = arrivals.clone();
        let base = serve(Router::new().route(
            "/pz",
            get(move |Query(q): Params| {
                seen.lock().unwrap().push(Instant::now());
                let page = num(&q, "page").unwrap_or(99);
                async move {
                    Json(if page <= 4 {
                        json!([{"id": page}])
                    } else {
                        json!([])
                    })
                }
            }),
        ))
        .await;
        let cfg = config(&format!(
            "url = \"{base}/pz\"\nrate_limit = 20.0\n[pagination]\nstyle = \"page\"\n"
        ));
        let began = Instant::now();
        let snap = pull_ok(&cfg).await;
        assert_eq!((snap.pages, snap.records.len()), (5, 4));
        assert!(
            began.elapsed() >= Duration::from_millis(200),
            "5 requests at 20/s"
        );
        let arrivals = arrivals.lock().unwrap();
        for w in arrivals.windows(2) {
            assert!(
                w[1] - w[0] >= Duration::from_millis(40),
                "gap {:?}",
                w[1] - w[0]
            );
        }
    }

    // -- pure helpers --------------------------------------------------------------

    #[test]
    fn link_headers_parse_per_rfc_8288() {
        let links = [
            r#"<https://a.test/p?x=1>; rel="first", </p?page=3>; title="a, b; rel=next"; rel="last next""#.to_string(),
        ];
        assert_eq!(next_link(&links).as_deref(), Some("/p?page=3"));
        let unquoted = ["<https://a.test/2>; rel=next".to_string()];
        assert_eq!(next_link(&unquoted).as_deref(), Some("https://a.test/2"));
        let split = [
            "</1>; rel=prev".to_string(),
            "</3>; REL=\"Next\"".to_string(),
        ];
        assert_eq!(next_link(&split).as_deref(), Some("/3"));
        let none = [r#"</1>; rel="prev nextish"; rel=next, junk, <"#.to_string()];
        assert_eq!(next_link(&none), None, "only the first rel counts");
    }

    #[test]
    fn params_replace_their_name_and_keep_the_others() {
        let base = Url::parse("http://h/p?a=1&cursor=old&b=x%20y").unwrap();
        let url = set_params(&base, &[("cursor", "n&w".into()), ("limit", "5".into())]);
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let expected = [("a", "1"), ("b", "x y"), ("cursor", "n&w"), ("limit", "5")];
        assert_eq!(pairs, expected.map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(set_params(&base, &[]), base);
    }

    #[test]
    fn shown_urls_hide_query_and_credentials() {
        let url = Url::parse("https://user:pw@h.test:8443/a/b?token=t#frag").unwrap();
        assert_eq!(shown(&url), "https://h.test:8443/a/b");
    }

    #[test]
    fn the_walker_streams_items_and_captures_in_one_pass() {
        let paths = Paths {
            items: parse_pointer("/pages/1/rows").unwrap(),
            captures: vec![
                parse_pointer("/meta/next").unwrap(),
                parse_pointer("/pages/0/x").unwrap(),
            ],
        };
        let text = r#"{"skip": {"deep": [1, {"a": null}]}, "pages": [{"x": 7}, {"rows": [{"id": 1}, {"id": 2}]}],
                       "meta": {"next": "c2", "other": [true]}}"#;
        let mut seen = Vec::new();
        let mut walk = Walk::new(&paths, |v: Value| {
            seen.push(v);
            Ok::<(), ()>(())
        });
        assert!(walk
            .run(&mut serde_json::Deserializer::from_str(text))
            .is_ok());
        assert!(matches!(walk.items, Found::Array));
        assert_eq!(walk.captured, vec![Some(json!("c2")), Some(json!(7))]);
        assert_eq!(seen, vec![json!({"id": 1}), json!({"id": 2})]);

        // A capture at the items array itself builds the value and still streams the items.
        let paths = Paths {
            items: parse_pointer("/d").unwrap(),
            captures: vec![parse_pointer("/d/1").unwrap()],
        };
        let mut count = 0;
        let mut walk = Walk::new(&paths, |_| {
            count += 1;
            if count > 2 {
                Err("third")
            } else {
                Ok(())
            }
        });
        let r = walk.run(&mut serde_json::Deserializer::from_str(
            r#"{"d": [1, 2, 3]}"#,
        ));
        assert!(matches!(r, Err(WalkError::Item("third"))));
        assert_eq!(walk.captured, vec![Some(json!(2))]);
    }
}
