//! One record by key over HTTP: the compiled `[producer.fetch]`, the request, and what the answer means.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT};
use reqwest::StatusCode;
use serde_json::Value;

use crate::canonical::{key_string, parse_pointer, type_name, version_value};
use crate::config::{FetchConfig, NotFound, SnapshotConfig};
use crate::keyframe::fetch::{Pace, Plan};
use crate::redact::{redact_url, request_error};

/// Largest record body read from the fetch URL.
const MAX_BODY: usize = 4 << 20;
/// Longest wait a `Retry-After` header can impose on one key.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);

/// `[producer.fetch]`, checked and prepared once; the snapshot's key and
/// version pointers read the record, the snapshot's rate limit paces it.
#[derive(Debug)]
pub struct RecordFetch {
    pub(crate) cfg: FetchConfig,
    headers: HeaderMap,
    key: String,
    version: Option<String>,
    pace: Pace,
}

/// What the producer answered for a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    Record {
        doc: Value,
        version: Option<i64>,
    },
    /// 404: the producer holds no record of this key.
    NotFound,
}

/// A fetch that did not get an answer to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    pub message: String,
    /// Worth asking again as long as it takes (timeouts, connection
    /// errors, 429, 5xx); otherwise retried up to `max_attempts`.
    pub transient: bool,
    pub retry_after: Option<Duration>,
}

impl FetchError {
    fn permanent(message: String) -> Self {
        Self {
            message,
            transient: false,
            retry_after: None,
        }
    }
}

/// `key` percent-encoded for a URL path segment or query value.
fn encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl RecordFetch {
    /// Compiles `cfg`; the headers default to the snapshot's.
    pub(crate) fn new(
        cfg: &FetchConfig,
        snapshot: &SnapshotConfig,
        plan: &Plan,
    ) -> Result<Self, String> {
        let probe = cfg.url.replace("{key}", "k");
        let url = reqwest::Url::parse(&probe)
            .map_err(|e| format!("invalid url {:?}: {e}", redact_url(&cfg.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "url {:?} must be http or https",
                redact_url(&cfg.url)
            ));
        }
        if !cfg.url.contains("{key}") {
            return Err(format!(
                "url {:?} has no {{key}} to put the record's key in",
                redact_url(&cfg.url)
            ));
        }
        parse_pointer(&cfg.item).map_err(|e| format!("item: {e}"))?;
        let headers = match &cfg.headers {
            None => plan.headers().clone(),
            Some(own) => {
                let mut headers = HeaderMap::new();
                headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
                for (name, value) in own {
                    let name = HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("invalid header name {name:?}"))?;
                    let mut value = HeaderValue::from_str(value.expose()).map_err(|_| {
                        format!("header {name:?}: value is not a valid HTTP header value (value not shown)")
                    })?;
                    value.set_sensitive(true);
                    headers.insert(name, value);
                }
                headers
            }
        };
        Ok(Self {
            cfg: cfg.clone(),
            headers,
            key: snapshot.key.clone(),
            version: snapshot.version.clone(),
            pace: plan.pace().clone(),
        })
    }

    /// The URL of `key`'s record.
    pub fn url(&self, key: &str) -> String {
        self.cfg.url.replace("{key}", &encode(key))
    }

    /// Asks the producer for `key`'s record.
    pub async fn get(&self, client: &reqwest::Client, key: &str) -> Result<Got, FetchError> {
        self.pace.wait().await;
        let url = self.url(key);
        let shown = redact_url(&url);
        let request = client.get(&url).headers(self.headers.clone()).send();
        let mut response = match tokio::time::timeout(self.cfg.timeout(), request).await {
            Err(_) => {
                return Err(FetchError {
                    message: format!("GET {shown}: no answer within {}s", self.cfg.timeout_secs),
                    transient: true,
                    retry_after: None,
                })
            }
            Ok(Err(e)) => {
                let transient = !(e.is_builder() || e.is_redirect());
                return Err(FetchError {
                    message: request_error(e, &url),
                    transient,
                    retry_after: None,
                });
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(Got::NotFound);
        }
        if !status.is_success() {
            let transient = status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::REQUEST_TIMEOUT
                || status.is_server_error();
            let retry_after = crate::keyframe::fetch::retry_after(response.headers())
                .map(|d| d.min(RETRY_AFTER_MAX));
            return Err(FetchError {
                message: format!("GET {shown}: HTTP {status}"),
                transient,
                retry_after,
            });
        }
        let mut body = Vec::new();
        loop {
            let chunk = tokio::time::timeout(self.cfg.timeout(), response.chunk()).await;
            match chunk {
                Err(_) => {
                    return Err(FetchError {
                        message: format!("GET {shown}: the body stalled"),
                        transient: true,
                        retry_after: None,
                    })
                }
                Ok(Err(e)) => {
                    return Err(FetchError {
                        message: request_error(e, &url),
                        transient: true,
                        retry_after: None,
                    })
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => {
                    if body.len() + c.len() > MAX_BODY {
                        return Err(FetchError::permanent(format!(
                            "GET {shown}: the record is larger than {MAX_BODY} bytes"
                        )));
                    }
                    body.extend_from_slice(&c);
                }
            }
        }
        self.read(&body, key)
            .map_err(|e| FetchError::permanent(format!("GET {shown}: {e}")))
    }

    /// The record in an answer's body, checked against the key asked for.
    pub(crate) fn read(&self, body: &[u8], key: &str) -> Result<Got, String> {
        let doc: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let record = match doc.pointer(&self.cfg.item) {
            Some(r @ Value::Object(_)) => r.clone(),
            Some(other) => {
                return Err(format!(
                    "item pointer {:?} holds {}, not an object",
                    self.cfg.item,
                    type_name(other)
                ))
            }
            None => return Err(format!("no record at item pointer {:?}", self.cfg.item)),
        };
        match record.pointer(&self.key).and_then(key_string) {
            Some(k) if k == key => {}
            Some(k) => return Err(format!("asked for key {key:?}, the record has key {k:?}")),
            None => return Err(format!("the record has no key at {:?}", self.key)),
        }
        let version = match self.version.as_deref().and_then(|p| record.pointer(p)) {
            None | Some(Value::Null) => None,
            Some(v) => Some(version_value(v)?),
        };
        Ok(Got::Record {
            doc: record,
            version,
        })
    }

    /// What a 404 means for this producer.
    pub fn not_found(&self) -> NotFound {
        self.cfg.not_found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_whole() {
        assert_eq!(encode("ord-1_a.b~"), "ord-1_a.b~");
        assert_eq!(encode("a/b c?d#é"), "a%2Fb%20c%3Fd%23%C3%A9");
    }
}
