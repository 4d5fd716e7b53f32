//! The config file's types: what each TOML table and key means, with its default.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// A string that must never be printed: `Debug` and `Display` show `***`.
/// A newtype to serde too (not `transparent`), so that reading the config
/// knows which values are secret and never shows them.
#[derive(Clone, Deserialize, PartialEq, Eq)]
pub struct Secret(String);

/// The name serde gives [`Secret`].
pub(super) const SECRET: &str = "Secret";

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Every table of the file, as its header is written, with its keys (from
/// the types' own field lists): where a key unknown in one table belongs.
pub(super) fn tables() -> [(&'static str, &'static [&'static str]); 12] {
    use super::de::fields_of;
    [
        ("[server]", fields_of::<ServerConfig>()),
        ("[database]", fields_of::<DatabaseConfig>()),
        ("[[producer]]", fields_of::<ProducerConfig>()),
        ("[producer.snapshot]", fields_of::<SnapshotConfig>()),
        (
            "[producer.snapshot.pagination]",
            fields_of::<PaginationConfig>(),
        ),
        ("[producer.webhook]", fields_of::<WebhookConfig>()),
        ("[producer.email]", fields_of::<EmailConfig>()),
        ("[[producer.email.rule]]", fields_of::<EmailRule>()),
        ("[producer.work]", fields_of::<WorkConfig>()),
        ("[producer.fetch]", fields_of::<FetchConfig>()),
        ("[producer.catchup]", fields_of::<CatchupConfig>()),
        ("[producer.adaptive]", fields_of::<AdaptiveConfig>()),
    ]
}

/// The file as written, before validation compiles its producers.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct ConfigFile {
    #[serde(default)]
    pub(super) server: ServerConfig,
    #[serde(default)]
    pub(super) database: DatabaseConfig,
    #[serde(default, rename = "producer")]
    pub(super) producers: Vec<ProducerConfig>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerConfig {
    /// `HOST:PORT` the HTTP server binds (webhooks, inbound email, metrics,
    /// health); a host name is resolved when it binds.
    #[serde(default = "defaults::listen")]
    pub listen: String,
    /// Bearer token for the admin endpoints; admin endpoints are off without one.
    pub admin_token: Option<Secret>,
    /// Bearer token for the application's `/v1` API (change feed, entities);
    /// the API is off without one.
    pub read_token: Option<Secret>,
    #[serde(default = "defaults::body_limit_bytes")]
    pub body_limit_bytes: usize,
    #[serde(default = "defaults::request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// A request's headers must arrive within this many seconds from when the
    /// server starts waiting for them (on connect, and between requests on a
    /// kept-alive connection), or the connection is closed.
    #[serde(default = "defaults::header_read_timeout_secs")]
    pub header_read_timeout_secs: u64,
    /// A connection on which no byte moves either way for this many seconds
    /// (a stalled body, a client that stops reading its answer) is closed.
    #[serde(default = "defaults::idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Most connections open at once; beyond it new ones wait to be accepted.
    #[serde(default = "defaults::server_max_connections")]
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: defaults::listen(),
            admin_token: None,
            read_token: None,
            body_limit_bytes: defaults::body_limit_bytes(),
            request_timeout_secs: defaults::request_timeout_secs(),
            header_read_timeout_secs: defaults::header_read_timeout_secs(),
            idle_timeout_secs: defaults::idle_timeout_secs(),
            max_connections: defaults::server_max_connections(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (created if missing) or `postgres://USER@HOST/DB`.
    #[serde(default = "defaults::database_url")]
    pub url: Secret,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    /// Days to keep settled inbox rows, finished work, and keyframe runs with
    /// their drift lists (a guarded run older than this has expired and can no
    /// longer be approved); 0 keeps everything. The `changes` log is never pruned.
    #[serde(default = "defaults::retention_days")]
    pub retention_days: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: defaults::database_url(),
            max_connections: defaults::max_connections(),
            retention_days: defaults::retention_days(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProducerConfig {
    /// Lowercase letters, digits, `-` and `_`; used in URLs and metric labels.
    pub name: String,
    /// Keyframe schedule: cron with seconds (`sec min hour dom month dow`),
    /// or `adaptive` (paced by the drift found; `[producer.adaptive]`).
    pub schedule: String,
    /// IANA time zone the schedule is read in; UTC when absent.
    pub timezone: Option<String>,
    #[serde(default = "defaults::bucket_bits")]
    pub bucket_bits: u8,
    /// Deletions and overwrites (`extra` + `changed`) above this share of the
    /// local rows trip the guard; additions (`missing`) never do.
    #[serde(default = "defaults::max_drift_ratio")]
    pub max_drift_ratio: f64,
    /// Deletions and overwrites above this many rows trip the guard; no row limit when absent.
    pub max_drift_rows: Option<u64>,
    /// Failed keyframes in a row before the producer is `unavailable`.
    #[serde(default = "defaults::unhealthy_after")]
    pub unhealthy_after: u32,
    pub snapshot: SnapshotConfig,
    pub webhook: Option<WebhookConfig>,
    pub email: Option<EmailConfig>,
    #[serde(default)]
    pub work: WorkConfig,
    /// One record by key: for thin deltas, version ties and `driftd refresh`.
    pub fetch: Option<FetchConfig>,
    /// Incremental pulls between keyframes.
    pub catchup: Option<CatchupConfig>,
    /// The bounds and target of `schedule = "adaptive"`.
    pub adaptive: Option<AdaptiveConfig>,
}

/// What a 404 from the fetch URL means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotFound {
    /// Nothing is written; the keyframe decides whether the record is gone.
    #[default]
    Ignore,
    /// The record was deleted at the producer: the local row is deleted.
    Delete,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FetchConfig {
    /// One record's URL; `{key}` is replaced by the key, percent-encoded.
    pub url: String,
    /// JSON pointer to the record in the response; empty for the whole body.
    #[serde(default)]
    pub item: String,
    /// Request headers; the snapshot's headers when absent.
    pub headers: Option<BTreeMap<String, Secret>>,
    #[serde(default = "defaults::fetch_timeout_secs")]
    pub timeout_secs: u64,
    #[serde(default)]
    pub not_found: NotFound,
    /// Failed fetches of a key (other than transient ones: timeouts,
    /// connection errors, 429, 5xx, which are retried for as long as it
    /// takes) before the deltas waiting on it are rejected.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "defaults::backoff_base_ms")]
    pub backoff_base_ms: u64,
    #[serde(default = "defaults::fetch_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Fetches in flight at once.
    #[serde(default = "defaults::concurrency")]
    pub concurrency: u32,
}

impl FetchConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// How the `since` value is written into the catch-up URL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinceFormat {
    /// RFC 3339 in UTC (versions are RFC 3339 timestamps); `overlap` in seconds.
    #[default]
    Rfc3339,
    /// The version as an integer; `overlap` in version units.
    Integer,
}

/// `schedule = "adaptive"`: each keyframe is scheduled from the drift rate
/// the previous ones measured (`pacing`).
#[derive(Debug, Clone, Deserialize)]
pub struct AdaptiveConfig {
    /// The shortest interval between keyframes, in seconds (fractions allowed).
    pub min_interval_secs: f64,
    /// The longest interval between keyframes, in seconds.
    pub max_interval_secs: f64,
    /// Drift-seconds allowed to accumulate between two keyframes (one record
    /// wrong for an hour is 3600): the interval is sqrt(2 × this / drift rate).
    pub target_drift_seconds: f64,
    /// At most this many keyframes a day, for vendors with quotas.
    pub max_pulls_per_day: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CatchupConfig {
    /// The first page of what changed since a time; `{since}` is replaced by
    /// the newest version seen at the previous catch-up minus `overlap`
    /// (percent-encoded). Paged and read like the snapshot.
    pub url: String,
    /// Seconds between catch-ups.
    #[serde(default = "defaults::catchup_every_secs")]
    pub every_secs: u64,
    #[serde(default)]
    pub since_format: SinceFormat,
    /// How far before the newest version seen the next catch-up starts.
    #[serde(default = "defaults::catchup_overlap")]
    pub overlap: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SnapshotConfig {
    /// First page of the producer's full state.
    pub url: String,
    /// JSON pointer to the array of records in a page; empty for a bare array.
    #[serde(default)]
    pub items: String,
    /// JSON pointer to a record's key (string or integer).
    #[serde(default = "defaults::key")]
    pub key: String,
    /// JSON pointer to a monotonically increasing version (integer or RFC 3339).
    pub version: Option<String>,
    /// JSON pointers left out of the hash (`*` matches any member or index).
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Request headers; values may hold `${VAR}` secrets and are never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    #[serde(default = "defaults::snapshot_timeout_secs")]
    pub timeout_secs: u64,
    #[serde(default = "defaults::max_pages")]
    pub max_pages: u64,
    /// Requests per second; unlimited when absent.
    pub rate_limit: Option<f64>,
    /// Retries of a page after a transient error (timeout, connection, 429, 5xx).
    #[serde(default = "defaults::retries")]
    pub retries: u32,
    #[serde(default = "defaults::retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    #[serde(default)]
    pub pagination: PaginationConfig,
}

impl SnapshotConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaginationStyle {
    #[default]
    None,
    Cursor,
    NextUrl,
    LinkHeader,
    Page,
    Offset,
    AfterKey,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PaginationConfig {
    #[serde(default)]
    pub style: PaginationStyle,
    /// `cursor`: pointer to the next-page token in the body.
    pub cursor: Option<String>,
    /// `next_url`: pointer to the next page's URL in the body.
    pub next: Option<String>,
    /// Query parameter carrying the cursor, page number, offset or last key.
    pub param: Option<String>,
    /// Query parameter carrying the page size, sent with `limit`.
    pub limit_param: Option<String>,
    /// Page size to ask for (required by `offset`).
    pub limit: Option<u64>,
    /// `page`: pointer to the total number of pages; otherwise an empty page ends.
    pub total_pages: Option<String>,
    /// `page`: number of the first page.
    pub start: Option<u64>,
    /// `after_key`: pointer to the boolean saying more pages follow.
    pub has_more: Option<String>,
}

impl PaginationConfig {
    /// The query parameter name, defaulted per style.
    pub fn param(&self) -> &str {
        if let Some(p) = &self.param {
            return p;
        }
        match self.style {
            PaginationStyle::Cursor => "cursor",
            PaginationStyle::Page => "page",
            PaginationStyle::Offset => "offset",
            PaginationStyle::AfterKey => "starting_after",
            _ => "",
        }
    }

    pub fn limit_param(&self) -> &str {
        self.limit_param.as_deref().unwrap_or("limit")
    }

    pub fn has_more(&self) -> &str {
        self.has_more.as_deref().unwrap_or("/has_more")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureScheme {
    HmacSha256,
    Github,
    Stripe,
    StandardWebhooks,
    None,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    #[default]
    Hex,
    Base64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeltaMode {
    #[default]
    Replace,
    MergePatch,
    /// The delta only names the record (`key`): driftd fetches it through
    /// `[producer.fetch]` and applies what the producer holds.
    Fetch,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebhookConfig {
    pub scheme: SignatureScheme,
    pub secret: Option<Secret>,
    /// The old secret, still accepted while a rotation is under way.
    pub previous_secret: Option<Secret>,
    /// `hmac-sha256`: header carrying the signature.
    pub header: Option<String>,
    #[serde(default)]
    pub encoding: SignatureEncoding,
    /// `hmac-sha256`: prefix before the signature, such as `sha256=`.
    pub prefix: Option<String>,
    /// Largest accepted age of a signed timestamp.
    #[serde(default = "defaults::tolerance_secs")]
    pub tolerance_secs: u64,
    /// Pointer to an array of records in the body; empty for one record per body.
    #[serde(default)]
    pub items: String,
    #[serde(default = "defaults::key")]
    pub key: String,
    pub version: Option<String>,
    #[serde(default)]
    pub mode: DeltaMode,
    /// Pointer to a boolean that marks the record deleted.
    pub deleted: Option<String>,
    /// Pointer to the event type in the body (see `delete_events`).
    pub event: Option<String>,
    /// Event types that turn the delta into a deletion.
    #[serde(default)]
    pub delete_events: Vec<String>,
    /// Header whose value identifies a delivery (redeliveries are duplicates).
    pub dedup_header: Option<String>,
    /// Pointer to a delivery id in the body, when the header is absent.
    pub dedup_pointer: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmailConfig {
    /// Maildir whose `new/` is watched; messages move to `cur/` once committed.
    pub maildir: Option<String>,
    /// Shared secret the inbound-email endpoint requires (bearer token).
    pub secret: Option<Secret>,
    #[serde(default)]
    pub rule: Vec<EmailRule>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmailRule {
    pub name: String,
    /// Allowed senders (addresses or `@domain`); any sender when empty.
    #[serde(default)]
    pub from: Vec<String>,
    /// Regex over the subject, with named groups.
    pub subject: Option<String>,
    /// Regex over the text body, with named groups.
    pub body: Option<String>,
    /// Named group holding the entity key.
    pub key: String,
    /// Named group holding the version, if any.
    pub version: Option<String>,
    /// Merge patch to build: JSON pointer in the entity → named group.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// `fetch`: the email only names the record (`key`); driftd fetches it
    /// through `[producer.fetch]` instead of building a patch.
    #[serde(default)]
    pub mode: RuleMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleMode {
    #[default]
    Patch,
    Fetch,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Apply,
    Http,
    None,
}

impl Action {
    /// The action as written in the config (and in the work metrics' label).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "apply",
            Self::Http => "http",
            Self::None => "none",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkConfig {
    #[serde(default)]
    pub action: Action,
    /// `http`: where the spec is POSTed.
    pub url: Option<String>,
    /// `http`: key for our own HMAC-SHA256 signature (`X-Driftd-Signature`).
    pub secret: Option<Secret>,
    #[serde(default = "defaults::work_timeout_secs")]
    pub timeout_secs: u64,
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "defaults::concurrency")]
    pub concurrency: u32,
    #[serde(default = "defaults::lease_secs")]
    pub lease_secs: u64,
    #[serde(default = "defaults::backoff_base_ms")]
    pub backoff_base_ms: u64,
    #[serde(default = "defaults::backoff_max_ms")]
    pub backoff_max_ms: u64,
}

impl Default for WorkConfig {
    fn default() -> Self {
        Self {
            action: Action::default(),
            url: None,
            secret: None,
            timeout_secs: defaults::work_timeout_secs(),
            max_attempts: defaults::max_attempts(),
            concurrency: defaults::concurrency(),
            lease_secs: defaults::lease_secs(),
            backoff_base_ms: defaults::backoff_base_ms(),
            backoff_max_ms: defaults::backoff_max_ms(),
        }
    }
}

/// Every default in one place; `config/example.toml` documents the same values.
pub(crate) mod defaults {
    use super::Secret;

    pub(crate) fn listen() -> String {
        "127.0.0.1:7070".into()
    }
    pub(crate) fn body_limit_bytes() -> usize {
        1024 * 1024
    }
    pub(crate) fn request_timeout_secs() -> u64 {
        30
    }
    pub(crate) fn header_read_timeout_secs() -> u64 {
        10
    }
    pub(crate) fn idle_timeout_secs() -> u64 {
        60
    }
    pub(crate) fn server_max_connections() -> usize {
        512
    }
    pub(crate) fn database_url() -> Secret {
        Secret::new("sqlite://driftd.db")
    }
    pub(crate) fn max_connections() -> u32 {
        10
    }
    pub(crate) fn retention_days() -> u32 {
        30
    }
    pub(crate) fn bucket_bits() -> u8 {
        16
    }
    pub(crate) fn max_drift_ratio() -> f64 {
        0.5
    }
    pub(crate) fn unhealthy_after() -> u32 {
        3
    }
    pub(crate) fn key() -> String {
        "/id".into()
    }
    pub(crate) fn snapshot_timeout_secs() -> u64 {
        30
    }
    pub(crate) fn max_pages() -> u64 {
        100_000
    }
    pub(crate) fn retries() -> u32 {
        3
    }
    pub(crate) fn retry_backoff_ms() -> u64 {
        500
    }
    pub(crate) fn tolerance_secs() -> u64 {
        300
    }
    pub(crate) fn work_timeout_secs() -> u64 {
        10
    }
    pub(crate) fn max_attempts() -> u32 {
        5
    }
    pub(crate) fn concurrency() -> u32 {
        4
    }
    pub(crate) fn lease_secs() -> u64 {
        60
    }
    pub(crate) fn backoff_base_ms() -> u64 {
        1000
    }
    pub(crate) fn backoff_max_ms() -> u64 {
        300_000
    }
    pub(crate) fn fetch_timeout_secs() -> u64 {
        10
    }
    pub(crate) fn fetch_backoff_max_ms() -> u64 {
        60_000
    }
    pub(crate) fn catchup_every_secs() -> u64 {
        60
    }
    pub(crate) fn catchup_overlap() -> u64 {
        60
    }
}
