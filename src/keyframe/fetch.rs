//! Pulling a producer snapshot over HTTP: pagination, retries, streaming, spill.
//!
//! # Design
//! [`pull`] walks the producer's pages one request at a time. Memory stays
//! proportional to the number of records, never to the bytes pulled:
//! - each page body is streamed into a buffer, or into an anonymous temp file
//!   once it outgrows [`MEMORY_BODY_MAX`], under one timeout that covers the
//!   whole response;
//! - the body is parsed on the blocking pool by a serde `DeserializeSeed`
//!   ([`Walk`]) that descends only along the `items` pointer and the style's
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
        let base = Url::parse(&cfg.url).map_err(|e| {
            let mut shown_url = cfg.url.clone();
            shown_url.truncate(shown_url.find('?').unwrap_or(shown_url.len()));
            bad(format!("invalid url {shown_url:?}: {e}"))
        })?;
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
        let e = e.without_url();
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let _ = write!(message, ": {s}");
            source = s.source();
        }
        // Belt and braces: no query string (which may carry tokens) in a message.
        if let Some(q) = url.query().filter(|q| !q.is_empty()) {
            message = message.replace(q, "…");
        }
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
    records: Vec<RemoteRecord>,
    scratch: Vec<u8>,
}

impl Sink {
    fn new() -> Result<Self, PullError> {
        let file = tempfile::tempfile().map_err(|source| PullError::Spill {
            action: "creating the spill file".into(),
            source,
        })?;
        Ok(Self {
            spill: BufWriter::with_capacity(256 << 10, file),
            offset: 0,
            records: Vec::new(),
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
        self.records.push(RemoteRecord {
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
        let Sink {
            spill, mut records, ..
        } = self;
        records.sort_unstable_by(|a, b| a.bucket.cmp(&b.bucket).then_with(|| a.key.cmp(&b.key)));
        if let Some(w) = records.windows(2).find(|w| w[0].key == w[1].key) {
            return Err(PullError::DuplicateKey {
                key: w[0].key.to_string(),
            });
        }
        records.shrink_to_fit();
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
    let first_record = sink.records.len();
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
            last_key: sink.records[first_record..]
                .last()
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
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
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
