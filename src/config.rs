//! The TOML configuration: its types, `${VAR}` substitution, and whole-file validation.
//!
//! Loading runs in three passes so every problem is reported at once:
//! 1. substitute `${VAR}` in every string of the parsed TOML tree, collecting
//!    each unset variable with its path;
//! 2. deserialize into [`Config`], collecting every unknown key (through
//!    `serde_ignored`, which sees all of them where `deny_unknown_fields` would
//!    stop at the first);
//! 3. validate the typed config as a whole (cron, time zones, URLs, pointers,
//!    regexes, cross-field rules).
//!
//! Every problem names its TOML path (`producer[1].schedule`) and the bad value.
//! Secrets live in [`Secret`], whose `Debug` prints `***`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::canonical::check_pointer;

/// A string that must never be printed: `Debug` and `Display` show `***`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

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

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default, rename = "producer")]
    pub producers: Vec<ProducerConfig>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerConfig {
    /// Address the HTTP server binds (webhooks, inbound email, metrics, health).
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
    /// Keyframe schedule: cron with seconds (`sec min hour dom month dow`).
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
}

impl ProducerConfig {
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.timezone
            .as_deref()
            .and_then(|tz| tz.parse().ok())
            .unwrap_or(chrono_tz::UTC)
    }
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
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Apply,
    Http,
    None,
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
pub mod defaults {
    use super::Secret;

    pub fn listen() -> String {
        "127.0.0.1:7070".into()
    }
    pub fn body_limit_bytes() -> usize {
        1024 * 1024
    }
    pub fn request_timeout_secs() -> u64 {
        30
    }
    pub fn header_read_timeout_secs() -> u64 {
        10
    }
    pub fn idle_timeout_secs() -> u64 {
        60
    }
    pub fn server_max_connections() -> usize {
        512
    }
    pub fn database_url() -> Secret {
        Secret::new("sqlite://driftd.db")
    }
    pub fn max_connections() -> u32 {
        10
    }
    pub fn retention_days() -> u32 {
        30
    }
    pub fn bucket_bits() -> u8 {
        16
    }
    pub fn max_drift_ratio() -> f64 {
        0.5
    }
    pub fn unhealthy_after() -> u32 {
        3
    }
    pub fn key() -> String {
        "/id".into()
    }
    pub fn snapshot_timeout_secs() -> u64 {
        30
    }
    pub fn max_pages() -> u64 {
        100_000
    }
    pub fn retries() -> u32 {
        3
    }
    pub fn retry_backoff_ms() -> u64 {
        500
    }
    pub fn tolerance_secs() -> u64 {
        300
    }
    pub fn work_timeout_secs() -> u64 {
        10
    }
    pub fn max_attempts() -> u32 {
        5
    }
    pub fn concurrency() -> u32 {
        4
    }
    pub fn lease_secs() -> u64 {
        60
    }
    pub fn backoff_base_ms() -> u64 {
        1000
    }
    pub fn backoff_max_ms() -> u64 {
        300_000
    }
}

/// One problem in a config file: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} problem{}",
            self.file,
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// A loaded config and the warnings `driftd check` prints (such as unsigned webhooks).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Problem>,
}

impl Config {
    /// Reads, substitutes and validates the file at `path` with the process environment.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![Problem {
                path: String::new(),
                message: format!("cannot read config file: {e}"),
            }],
        })?;
        Self::parse(&file, &text, &|name| std::env::var(name).ok())
    }

    /// Parses TOML text, taking `${VAR}` values from `env`.
    pub fn parse(
        file: &str,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Loaded, ConfigError> {
        let fail = |problems| ConfigError {
            file: file.to_string(),
            problems,
        };
        let mut tree: toml::Value = match text.parse::<toml::Table>() {
            Ok(t) => toml::Value::Table(t),
            Err(e) => {
                return Err(fail(
                    vec![Problem {
                        path: String::new(),
                        message: format!("invalid TOML: {}", e.message().trim()),
                    }]
                    .into_iter()
                    .chain(e.span().map(|s| Problem {
                        path: String::new(),
                        message: format!("at line {}", line_of(text, s.start)),
                    }))
                    .collect(),
                ));
            }
        };
        let mut problems = Vec::new();
        substitute_env(&mut tree, &mut String::new(), env, &mut problems);

        let mut unknown = Vec::new();
        let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(format_ignored(&path));
        let de = serde_ignored::Deserializer::new(tree, &mut on_unknown);
        let parsed: Result<Config, _> = serde_path_to_error::deserialize(de);
        for path in unknown {
            problems.push(Problem {
                path,
                message: "unknown key".into(),
            });
        }
        let config = match parsed {
            Ok(c) => c,
            Err(e) => {
                problems.push(Problem {
                    path: toml_path(&e.path().to_string()),
                    message: e.inner().to_string(),
                });
                return Err(fail(problems));
            }
        };
        let mut warnings = Vec::new();
        validate(&config, &mut problems, &mut warnings);
        if problems.is_empty() {
            Ok(Loaded { config, warnings })
        } else {
            Err(fail(problems))
        }
    }

    pub fn producer(&self, name: &str) -> Option<&ProducerConfig> {
        self.producers.iter().find(|p| p.name == name)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// `producer.1.schedule` (serde's path) → `producer[1].schedule`.
fn toml_path(dotted: &str) -> String {
    let mut out = String::new();
    for part in dotted.split('.') {
        if part.chars().all(|c| c.is_ascii_digit()) && !part.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

fn format_ignored(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", format_ignored(parent)),
        P::Map { parent, key } => {
            let p = format_ignored(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            format_ignored(parent)
        }
    }
}

/// Replaces `${NAME}` (or `${NAME:-default}`) in every string of `v`; `$${` stays a literal `${`.
fn substitute_env(
    v: &mut toml::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match v {
        toml::Value::String(s) => match expand(s, env) {
            Ok(expanded) => *s = expanded,
            Err(missing) => {
                for name in missing {
                    problems.push(Problem {
                        path: path.clone(),
                        message: format!("environment variable {name:?} is not set"),
                    });
                }
            }
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                substitute_env(item, path, env, problems);
                path.truncate(len);
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                substitute_env(item, path, env, problems);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Expands `${NAME}` references; returns the names that are unset.
pub fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(s.len());
    let mut missing = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            match tail.find('}') {
                Some(end) => {
                    let reference = &tail[..end];
                    let (name, default) = match reference.split_once(":-") {
                        Some((name, default)) => (name, Some(default)),
                        None => (reference, None),
                    };
                    match (env(name), default) {
                        (Some(value), _) => out.push_str(&value),
                        (None, Some(default)) => out.push_str(default),
                        (None, None) => missing.push(name.to_string()),
                    }
                    rest = &tail[end + 1..];
                }
                None => {
                    out.push_str(after);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

/// Parses a cron expression with seconds, as the scheduler reads it.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

struct Check<'a> {
    problems: &'a mut Vec<Problem>,
}

impl Check<'_> {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn pointer(&mut self, path: impl Into<String>, pointer: &str) {
        if let Err(e) = check_pointer(pointer) {
            self.push(path, e.to_string());
        }
    }

    fn regex(&mut self, path: impl Into<String>, re: &str) -> Option<regex::Regex> {
        match regex::Regex::new(re) {
            Ok(r) => Some(r),
            Err(e) => {
                self.push(path, format!("invalid regex {re:?}: {e}"));
                None
            }
        }
    }

    fn http_url(&mut self, path: impl Into<String>, url: &str) {
        let shown = crate::redact::redact_url(url);
        match reqwest::Url::parse(url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(u) => self.push(
                path,
                format!("URL {shown:?} must be http or https, not {:?}", u.scheme()),
            ),
            Err(e) => self.push(path, format!("invalid URL {shown:?}: {e}")),
        }
    }
}

fn validate(config: &Config, problems: &mut Vec<Problem>, warnings: &mut Vec<Problem>) {
    let mut c = Check { problems };

    if let Err(e) = config.server.listen.parse::<SocketAddr>() {
        c.push(
            "server.listen",
            format!("invalid socket address {:?}: {e}", config.server.listen),
        );
    }
    if let (Some(read), Some(admin)) = (&config.server.read_token, &config.server.admin_token) {
        if read.expose() == admin.expose() {
            c.push(
                "server.read_token",
                "must differ from server.admin_token: the application's token must not grant admin rights",
            );
        }
    }
    if config.server.body_limit_bytes == 0 {
        c.push("server.body_limit_bytes", "must be greater than 0");
    }
    let server = &config.server;
    if server.header_read_timeout_secs == 0 {
        c.push("server.header_read_timeout_secs", "must be at least 1");
    }
    if server.idle_timeout_secs <= server.request_timeout_secs {
        c.push(
            "server.idle_timeout_secs",
            format!(
                "{} must be greater than server.request_timeout_secs ({}): a request still being handled moves no bytes",
                server.idle_timeout_secs, server.request_timeout_secs
            ),
        );
    }
    if server.max_connections == 0 {
        c.push("server.max_connections", "must be at least 1");
    }
    let url = config.database.url.expose();
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        let scheme = url.split(':').next().unwrap_or_default();
        c.push(
            "database.url",
            format!("unsupported database scheme {scheme:?}: use sqlite://PATH or postgres://…"),
        );
    }
    if config.database.max_connections == 0 {
        c.push("database.max_connections", "must be at least 1");
    }
    if config.producers.is_empty() {
        warnings.push(Problem {
            path: "producer".into(),
            message: "no producers configured: driftd will only serve metrics".into(),
        });
    }

    let mut names = BTreeSet::new();
    for (i, p) in config.producers.iter().enumerate() {
        let at = format!("producer[{i}]");
        let valid_name = !p.name.is_empty()
            && p.name.len() <= 64
            && p.name
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_');
        if !valid_name {
            c.push(
                format!("{at}.name"),
                format!(
                    "invalid producer name {:?}: use 1-64 of a-z, 0-9, '-', '_'",
                    p.name
                ),
            );
        } else if !names.insert(p.name.as_str()) {
            c.push(
                format!("{at}.name"),
                format!("duplicate producer name {:?}", p.name),
            );
        }
        if let Err(e) = parse_cron(&p.schedule) {
            c.push(
                format!("{at}.schedule"),
                format!("invalid cron expression {:?}: {e}", p.schedule),
            );
        }
        if let Some(tz) = &p.timezone {
            if tz.parse::<chrono_tz::Tz>().is_err() {
                c.push(
                    format!("{at}.timezone"),
                    format!("unknown time zone {tz:?}"),
                );
            }
        }
        if p.bucket_bits > 24 {
            c.push(
                format!("{at}.bucket_bits"),
                format!("bucket_bits {} is out of range 0..=24", p.bucket_bits),
            );
        }
        if !(p.max_drift_ratio > 0.0 && p.max_drift_ratio <= 1.0) {
            c.push(
                format!("{at}.max_drift_ratio"),
                format!("max_drift_ratio {} must be in (0, 1]", p.max_drift_ratio),
            );
        }
        if p.unhealthy_after == 0 {
            c.push(format!("{at}.unhealthy_after"), "must be at least 1");
        }
        validate_snapshot(&mut c, &format!("{at}.snapshot"), &p.snapshot);
        if let Some(w) = &p.webhook {
            validate_webhook(&mut c, warnings, &format!("{at}.webhook"), w);
        }
        if let Some(e) = &p.email {
            validate_email(&mut c, &format!("{at}.email"), e);
        }
        validate_work(&mut c, &format!("{at}.work"), &p.work);
    }
}

fn validate_snapshot(c: &mut Check<'_>, at: &str, s: &SnapshotConfig) {
    c.http_url(format!("{at}.url"), &s.url);
    c.pointer(format!("{at}.items"), &s.items);
    c.pointer(format!("{at}.key"), &s.key);
    if let Some(v) = &s.version {
        c.pointer(format!("{at}.version"), v);
    }
    for (i, p) in s.ignore.iter().enumerate() {
        c.pointer(format!("{at}.ignore[{i}]"), p);
    }
    for name in s.headers.keys() {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            c.push(
                format!("{at}.headers"),
                format!("invalid header name {name:?}"),
            );
        }
    }
    if s.timeout_secs == 0 {
        c.push(format!("{at}.timeout_secs"), "must be at least 1");
    }
    if s.max_pages == 0 {
        c.push(format!("{at}.max_pages"), "must be at least 1");
    }
    if let Some(r) = s.rate_limit {
        if !(r > 0.0 && r.is_finite()) {
            c.push(
                format!("{at}.rate_limit"),
                format!("rate_limit {r} must be a positive number of requests per second"),
            );
        }
    }
    let pg = &s.pagination;
    let pat = format!("{at}.pagination");
    let need = |c: &mut Check<'_>, field: &str, value: &Option<String>| match value {
        Some(p) => c.pointer(format!("{pat}.{field}"), p),
        None => c.push(
            format!("{pat}.{field}"),
            format!("required for style {:?}", style_name(pg.style)),
        ),
    };
    match pg.style {
        PaginationStyle::Cursor => need(c, "cursor", &pg.cursor),
        PaginationStyle::NextUrl => need(c, "next", &pg.next),
        PaginationStyle::Offset if pg.limit.is_none() => {
            c.push(format!("{pat}.limit"), "required for style \"offset\"")
        }
        _ => {}
    }
    for (field, value) in [("total_pages", &pg.total_pages), ("has_more", &pg.has_more)] {
        if let Some(p) = value {
            c.pointer(format!("{pat}.{field}"), p);
        }
    }
    if pg.limit == Some(0) {
        c.push(format!("{pat}.limit"), "must be at least 1");
    }
}

fn style_name(style: PaginationStyle) -> &'static str {
    match style {
        PaginationStyle::None => "none",
        PaginationStyle::Cursor => "cursor",
        PaginationStyle::NextUrl => "next_url",
        PaginationStyle::LinkHeader => "link_header",
        PaginationStyle::Page => "page",
        PaginationStyle::Offset => "offset",
        PaginationStyle::AfterKey => "after_key",
    }
}

fn validate_webhook(c: &mut Check<'_>, warnings: &mut Vec<Problem>, at: &str, w: &WebhookConfig) {
    match w.scheme {
        SignatureScheme::None => warnings.push(Problem {
            path: format!("{at}.scheme"),
            message: "scheme \"none\": anyone who can reach the endpoint can write deltas".into(),
        }),
        scheme => {
            if w.secret.is_none() {
                c.push(format!("{at}.secret"), "required unless scheme is \"none\"");
            }
            if scheme == SignatureScheme::HmacSha256 && w.header.is_none() {
                c.push(
                    format!("{at}.header"),
                    "required for scheme \"hmac-sha256\"",
                );
            }
            if scheme == SignatureScheme::StandardWebhooks {
                for (field, s) in [
                    ("secret", &w.secret),
                    ("previous_secret", &w.previous_secret),
                ] {
                    if let Some(s) = s {
                        let raw = s.expose().strip_prefix("whsec_").unwrap_or(s.expose());
                        use base64::Engine as _;
                        if base64::engine::general_purpose::STANDARD
                            .decode(raw)
                            .is_err()
                        {
                            c.push(
                                format!("{at}.{field}"),
                                "must be base64, optionally prefixed with whsec_ (value not shown)",
                            );
                        }
                    }
                }
            }
        }
    }
    c.pointer(format!("{at}.items"), &w.items);
    c.pointer(format!("{at}.key"), &w.key);
    for (field, p) in [
        ("version", &w.version),
        ("deleted", &w.deleted),
        ("event", &w.event),
        ("dedup_pointer", &w.dedup_pointer),
    ] {
        if let Some(p) = p {
            c.pointer(format!("{at}.{field}"), p);
        }
    }
    if !w.delete_events.is_empty() && w.event.is_none() {
        c.push(format!("{at}.event"), "required when delete_events is set");
    }
}

fn validate_email(c: &mut Check<'_>, at: &str, e: &EmailConfig) {
    if e.maildir.is_none() && e.secret.is_none() {
        c.push(
            at.to_string(),
            "set maildir, or secret for the inbound-email endpoint, or both",
        );
    }
    for (i, r) in e.rule.iter().enumerate() {
        let rat = format!("{at}.rule[{i}]");
        let mut groups = BTreeSet::new();
        for (field, re) in [("subject", &r.subject), ("body", &r.body)] {
            if let Some(re) = re {
                if let Some(re) = c.regex(format!("{rat}.{field}"), re) {
                    groups.extend(re.capture_names().flatten().map(str::to_string));
                }
            }
        }
        if r.subject.is_none() && r.body.is_none() {
            c.push(rat.clone(), "a rule needs a subject or a body regex");
            continue;
        }
        let need_group = |c: &mut Check<'_>, path: String, g: &str| {
            if !groups.contains(g) {
                c.push(path, format!("no named group {g:?} in the rule's regexes"));
            }
        };
        need_group(c, format!("{rat}.key"), &r.key);
        if let Some(v) = &r.version {
            need_group(c, format!("{rat}.version"), v);
        }
        for (pointer, group) in &r.set {
            c.pointer(format!("{rat}.set"), pointer);
            need_group(c, format!("{rat}.set.{pointer:?}"), group);
        }
    }
}

fn validate_work(c: &mut Check<'_>, at: &str, w: &WorkConfig) {
    match (&w.action, &w.url) {
        (Action::Http, None) => c.push(format!("{at}.url"), "required for action \"http\""),
        (Action::Http, Some(url)) => c.http_url(format!("{at}.url"), url),
        _ => {}
    }
    if w.max_attempts == 0 {
        c.push(format!("{at}.max_attempts"), "must be at least 1");
    }
    if w.concurrency == 0 {
        c.push(format!("{at}.concurrency"), "must be at least 1");
    }
    if w.lease_secs == 0 {
        c.push(format!("{at}.lease_secs"), "must be at least 1");
    } else if w.action == Action::Http && w.lease_secs <= w.timeout_secs {
        // A lease that can end while a call still runs lets another worker
        // deliver the same item again (the lease is renewed, but a renewal
        // that is late must not be the only guard).
        c.push(
            format!("{at}.lease_secs"),
            format!(
                "{} must be greater than timeout_secs {}: an item's lease must outlast its call",
                w.lease_secs, w.timeout_secs
            ),
        );
    }
    if w.backoff_base_ms > w.backoff_max_ms {
        c.push(
            format!("{at}.backoff_base_ms"),
            format!(
                "{} exceeds backoff_max_ms {}",
                w.backoff_base_ms, w.backoff_max_ms
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            _ => None,
        }
    }

    const MINIMAL: &str = r#"
[[producer]]
name = "orders"
schedule = "0 */5 * * * *"
[producer.snapshot]
url = "http://127.0.0.1:9/orders"
headers = { Authorization = "Bearer ${TOKEN}" }
"#;

    #[test]
    fn minimal_config_gets_defaults_and_substitution() {
        let loaded = Config::parse("t.toml", MINIMAL, &env).unwrap();
        let c = loaded.config;
        assert_eq!(c.server.listen, "127.0.0.1:7070");
        assert_eq!(c.database.url.expose(), "sqlite://driftd.db");
        let p = &c.producers[0];
        assert_eq!(p.bucket_bits, 16);
        assert_eq!(p.snapshot.key, "/id");
        assert_eq!(
            p.snapshot.headers["Authorization"].expose(),
            "Bearer s3cret"
        );
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "secret leaked into Debug"
        );
    }

    #[test]
    fn connection_limits_default_and_are_validated() {
        let c = Config::parse("t.toml", MINIMAL, &env).unwrap().config;
        assert_eq!(c.server.header_read_timeout_secs, 10);
        assert_eq!(c.server.idle_timeout_secs, 60);
        assert_eq!(c.server.max_connections, 512);
        let text = format!(
            "[server]\nheader_read_timeout_secs = 0\nrequest_timeout_secs = 30\nidle_timeout_secs = 30\nmax_connections = 0\n{MINIMAL}"
        );
        let shown = Config::parse("t.toml", &text, &env)
            .unwrap_err()
            .to_string();
        for expected in [
            "server.header_read_timeout_secs: must be at least 1",
            "server.idle_timeout_secs: 30 must be greater than server.request_timeout_secs (30)",
            "server.max_connections: must be at least 1",
        ] {
            assert!(shown.contains(expected), "{expected:?} in {shown}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
[server]
listn = "0.0.0.0:1"
[[producer]]
name = "a"
schedule = "* * * * * *"
[producer.snapshot]
url = "http://127.0.0.1:9/"
[[producer]]
name = "b"
schedule = "*/5 * *"
[producer.snapshot]
url = "http://127.0.0.1:9/"
headers = { X-Key = "${MISSING_VAR}" }
"#;
        let err = Config::parse("t.toml", text, &env).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("server.listn: unknown key"), "{shown}");
        assert!(
            shown.contains("producer[1].schedule: invalid cron expression \"*/5 * *\""),
            "{shown}"
        );
        assert!(
            shown.contains("producer[1].snapshot.headers.X-Key: environment variable \"MISSING_VAR\" is not set"),
            "{shown}"
        );
        assert_eq!(err.problems.len(), 3, "{shown}");
    }

    #[test]
    fn type_errors_name_the_path() {
        let text = "[[producer]]\nname = \"a\"\nschedule = \"* * * * * *\"\nbucket_bits = \"x\"\n[producer.snapshot]\nurl = \"http://127.0.0.1:9/\"\n";
        let err = Config::parse("t.toml", text, &env).unwrap_err();
        assert!(
            err.to_string()
                .contains("producer[0].bucket_bits: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn semantic_checks() {
        let cases: &[(&str, &str)] = &[
            (
                "name = \"Bad Name\"",
                "producer[0].name: invalid producer name \"Bad Name\"",
            ),
            (
                "timezone = \"Mars/Base\"",
                "producer[0].timezone: unknown time zone \"Mars/Base\"",
            ),
            (
                "bucket_bits = 30",
                "producer[0].bucket_bits: bucket_bits 30 is out of range",
            ),
            (
                "max_drift_ratio = 0.0",
                "producer[0].max_drift_ratio: max_drift_ratio 0 must be in (0, 1]",
            ),
        ];
        for (line, expected) in cases {
            let text = format!("[[producer]]\nname = \"a\"\nschedule = \"* * * * * *\"\n{line}\n[producer.snapshot]\nurl = \"http://127.0.0.1:9/\"\n");
            let text = text.replacen(
                "name = \"a\"\n",
                if line.starts_with("name") {
                    ""
                } else {
                    "name = \"a\"\n"
                },
                1,
            );
            let err = Config::parse("t.toml", &text, &env).unwrap_err();
            assert!(err.to_string().contains(expected), "{line}: {err}");
        }
    }

    #[test]
    fn work_checks() {
        let parse = |work: &str| {
            let text = format!("[[producer]]\nname = \"a\"\nschedule = \"* * * * * *\"\n[producer.snapshot]\nurl = \"http://127.0.0.1:9/\"\n[producer.work]\n{work}\n");
            Config::parse("t.toml", &text, &env).map(|_| ())
        };
        let http = "action = \"http\"\nurl = \"http://127.0.0.1:9/w\"";
        for (lease, timeout) in [(2, 30), (10, 10)] {
            let err = parse(&format!(
                "{http}\nlease_secs = {lease}\ntimeout_secs = {timeout}"
            ))
            .unwrap_err();
            assert!(
                err.to_string().contains(&format!(
                    "producer[0].work.lease_secs: {lease} must be greater than timeout_secs {timeout}"
                )),
                "{err}"
            );
        }
        assert!(parse(&format!("{http}\nlease_secs = 11\ntimeout_secs = 10")).is_ok());
        // Only a call can outlast a lease: `apply` items are one transaction.
        assert!(parse("action = \"apply\"\nlease_secs = 1\ntimeout_secs = 10").is_ok());
        // A URL in a problem is shown without its credentials or query.
        let err = parse("action = \"http\"\nurl = \"ftp://bob:hunter2@host/w?token=abc\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("producer[0].work.url: URL \"ftp://host/w\" must be http or https"),
            "{err}"
        );
        for secret in ["bob", "hunter2", "token=abc"] {
            assert!(!err.contains(secret), "{secret} in {err}");
        }
    }

    #[test]
    fn expand_handles_escapes_and_multiple_names() {
        assert_eq!(expand("a${TOKEN}b", &env).unwrap(), "as3cretb");
        assert_eq!(expand("$${TOKEN} $x", &env).unwrap(), "${TOKEN} $x");
        assert_eq!(expand("${A}${B}", &env).unwrap_err(), vec!["A", "B"]);
        assert_eq!(expand("${A:-x}-${TOKEN:-y}", &env).unwrap(), "x-s3cret");
    }

    #[test]
    fn secrets_never_appear_in_errors() {
        let text = "[[producer]]\nname = \"a\"\nschedule = \"* * * * * *\"\n[producer.snapshot]\nurl = \"http://127.0.0.1:9/\"\n[producer.webhook]\nscheme = \"standard-webhooks\"\nsecret = \"whsec_${TOKEN}!!\"\n";
        let err = Config::parse("t.toml", text, &env).unwrap_err();
        assert!(
            err.to_string()
                .contains("producer[0].webhook.secret: must be base64"),
            "{err}"
        );
        assert!(!err.to_string().contains("s3cret"));
    }
}
