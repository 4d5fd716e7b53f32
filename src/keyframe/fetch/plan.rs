//! The snapshot config compiled once, when the config is validated: a `Plan` for
//! the requests and the `Rules` that turn an item into a record.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT};
use reqwest::Url;

use super::error::{shown, PullError};
use super::http::Pace;
use super::walk::Paths;
use crate::canonical::{parse_pointer, RecordHasher};
use crate::config::{PaginationStyle, SnapshotConfig};
use crate::redact::redact_url;

/// Largest bucket width `bucket_bits` may ask for (as the config validates).
pub(crate) const BUCKET_BITS_MAX: u8 = 24;

/// A producer's snapshot settings, checked and prepared once (validation
/// builds it; every pull of the producer uses it).
pub struct Plan {
    pub(super) cfg: SnapshotConfig,
    pub(super) base: Url,
    pub(super) headers: HeaderMap,
    pub(super) pace: Pace,
    pub(super) capture_pointer: Option<String>,
    pub(super) rules: Arc<Rules>,
}

/// What the blocking parser needs to turn an item into a [`RemoteRecord`].
pub(super) struct Rules {
    pub(super) hasher: RecordHasher,
    pub(super) bucket_bits: u8,
    pub(super) items_pointer: String,
    pub(super) key_pointer: String,
    pub(super) key: Vec<String>,
    pub(super) version: Option<(String, Vec<String>)>,
    pub(super) paths: Paths,
}

impl std::fmt::Debug for Plan {
    // Headers carry secrets: only the URL, without its query, is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("url", &shown(&self.base))
            .finish_non_exhaustive()
    }
}

impl Plan {
    pub(crate) fn new(
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
            cfg: cfg.clone(),
            base,
            headers,
            pace: Pace::new(interval),
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

impl Plan {
    /// The same pull from another first page (a catch-up's URL): the same
    /// headers, pagination, pointers and rate limit.
    pub fn with_url(&self, url: &str) -> Result<Self, PullError> {
        let base = Url::parse(url)
            .map_err(|e| PullError::Config(format!("invalid url {:?}: {e}", redact_url(url))))?;
        Ok(Self {
            cfg: self.cfg.clone(),
            base,
            headers: self.headers.clone(),
            pace: self.pace.clone(),
            capture_pointer: self.capture_pointer.clone(),
            rules: Arc::clone(&self.rules),
        })
    }

    /// The producer's rate limit, shared by everything that calls it.
    pub fn pace(&self) -> &Pace {
        &self.pace
    }

    /// The snapshot's request headers (secrets marked sensitive).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}
