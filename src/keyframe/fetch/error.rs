//! Why a pull fails ([`PullError`], [`PageAt`]) and how URLs and values are shown in errors.

use std::fmt;
use std::io;

use reqwest::{StatusCode, Url};

use crate::redact::redact_url;

/// Opaque values (cursors, keys) are cut to this many characters in errors.
const SHOWN_VALUE_MAX: usize = 80;

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

fn attempts_text(n: &u32) -> String {
    if *n == 1 {
        "1 attempt".into()
    } else {
        format!("{n} attempts")
    }
}

pub(super) fn transient_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// A URL as shown in errors and logs: no query, fragment or credentials.
pub(super) fn shown(url: &Url) -> String {
    redact_url(url.as_str())
}

/// An opaque value cut to a readable length.
pub(super) fn short(s: &str) -> String {
    match s.char_indices().nth(SHOWN_VALUE_MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_hide_query_and_credentials() {
        let url = Url::parse("https://user:pw@h.test:8443/a/b?token=t#frag").unwrap();
        assert_eq!(shown(&url), "https://h.test:8443/a/b");
    }
}
