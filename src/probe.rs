//! `driftd check --probe`: fetch each producer's first snapshot page and say whether the configured pointers find what they should.
//!
//! A config can be valid and still point at the wrong place (`/data` where the
//! vendor answers `/results`). The probe makes one GET per producer, never
//! touches the database, and reports every finding with the TOML path to fix.

use serde_json::Value;

use crate::canonical::{key_string, type_name, version_value};
use crate::config::{PaginationStyle, Producer};
use crate::redact::{redact_url, request_error};

/// One thing the probe found, good or bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    /// The TOML path the finding is about.
    pub path: String,
    pub level: Level,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Ok,
    Warning,
    Problem,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = match self.level {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Problem => "problem",
        };
        write!(f, "{tag}: {}: {}", self.path, self.message)
    }
}

/// Fetches the first page of producer `index` and checks the pointers against it.
pub(crate) async fn probe(client: &reqwest::Client, index: usize, p: &Producer) -> Vec<Finding> {
    let at = format!("producer[{index}].snapshot");
    let s = &p.snapshot;
    let mut out = Vec::new();
    let mut push = |path: String, level: Level, message: String| {
        out.push(Finding {
            path,
            level,
            message,
        })
    };
    let shown = redact_url(&s.url);
    let mut req = client.get(&s.url).timeout(s.timeout());
    for (name, value) in &s.headers {
        req = req.header(name.as_str(), value.expose());
    }
    if let (Some(limit), true) = (
        s.pagination.limit,
        s.pagination.style != PaginationStyle::None,
    ) {
        req = req.query(&[(s.pagination.limit_param(), limit.to_string())]);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let why = if e.is_timeout() {
                "timed out"
            } else {
                "failed"
            };
            push(
                format!("{at}.url"),
                Level::Problem,
                format!("GET {shown} {why}: {}", request_error(e, &s.url)),
            );
            return out;
        }
    };
    let status = resp.status();
    if !status.is_success() {
        let hint = match status.as_u16() {
            401 | 403 => " (check the credentials in snapshot.headers)",
            404 => " (check the path)",
            _ => "",
        };
        push(
            format!("{at}.url"),
            Level::Problem,
            format!("GET {shown} answered {status}{hint}"),
        );
        return out;
    }
    let link = resp
        .headers()
        .get("link")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let page: Value = match resp.json().await {
        Ok(v) => v,
        Err(e) => {
            push(
                format!("{at}.url"),
                Level::Problem,
                format!(
                    "GET {shown}: the body is not JSON: {}",
                    request_error(e, &s.url)
                ),
            );
            return out;
        }
    };
    push(
        format!("{at}.url"),
        Level::Ok,
        format!("GET {shown} answered {status} with JSON"),
    );

    let items = match page.pointer(&s.items) {
        Some(Value::Array(items)) => items,
        other => {
            let found = match other {
                None => "nothing".to_string(),
                Some(v) => type_name(v).to_string(),
            };
            let arrays = array_pointers(&page);
            let hint = if arrays.is_empty() {
                String::new()
            } else {
                format!("; arrays on the page: {}", arrays.join(", "))
            };
            push(
                format!("{at}.items"),
                Level::Problem,
                format!("pointer {:?} finds {found}, not an array{hint}", s.items),
            );
            return out;
        }
    };
    push(
        format!("{at}.items"),
        Level::Ok,
        format!(
            "pointer {:?} finds {} records on the first page",
            s.items,
            items.len()
        ),
    );
    match items.first() {
        None => push(
            format!("{at}.items"),
            Level::Warning,
            "the first page has no records, so key and version could not be checked".into(),
        ),
        Some(first) => {
            match first.pointer(&s.key).map(|k| (k, key_string(k))) {
                Some((_, Some(k))) => push(
                    format!("{at}.key"),
                    Level::Ok,
                    format!("pointer {:?} finds key {k:?}", s.key),
                ),
                Some((v, None)) => push(
                    format!("{at}.key"),
                    Level::Problem,
                    format!(
                        "pointer {:?} finds {}; keys must be strings or integers",
                        s.key,
                        type_name(v)
                    ),
                ),
                None => push(
                    format!("{at}.key"),
                    Level::Problem,
                    format!(
                        "pointer {:?} finds nothing in the first record; its members: {}",
                        s.key,
                        members(first)
                    ),
                ),
            }
            if let Some(vp) = &s.version {
                match first.pointer(vp).map(version_value) {
                    Some(Ok(v)) => push(
                        format!("{at}.version"),
                        Level::Ok,
                        format!("pointer {vp:?} finds version {v}"),
                    ),
                    Some(Err(e)) => push(format!("{at}.version"), Level::Problem, e),
                    None => push(
                        format!("{at}.version"),
                        Level::Problem,
                        format!(
                            "pointer {vp:?} finds nothing in the first record; its members: {}",
                            members(first)
                        ),
                    ),
                }
            }
            for (i, ig) in s.ignore.iter().enumerate() {
                if !ig.contains('*') && first.pointer(ig).is_none() {
                    push(
                        format!("{at}.ignore[{i}]"),
                        Level::Warning,
                        format!("pointer {ig:?} matches nothing in the first record"),
                    );
                }
            }
        }
    }
    let pg = &s.pagination;
    let pat = format!("{at}.pagination");
    let check_present = |field: &str, pointer: &Option<String>, out: &mut Vec<Finding>| {
        if let Some(ptr) = pointer {
            let (level, message) = match page.pointer(ptr) {
                Some(Value::Null) | None => (
                    Level::Warning,
                    format!(
                        "pointer {ptr:?} finds nothing on the first page: is there only one page?"
                    ),
                ),
                Some(v) => (Level::Ok, format!("pointer {ptr:?} finds {}", type_name(v))),
            };
            out.push(Finding {
                path: format!("{pat}.{field}"),
                level,
                message,
            });
        }
    };
    match pg.style {
        PaginationStyle::Cursor => check_present("cursor", &pg.cursor, &mut out),
        PaginationStyle::NextUrl => check_present("next", &pg.next, &mut out),
        PaginationStyle::Page => check_present("total_pages", &pg.total_pages, &mut out),
        PaginationStyle::AfterKey => {
            let ptr = pg.has_more();
            let (level, message) = match page.pointer(ptr) {
                Some(Value::Bool(b)) => (Level::Ok, format!("pointer {ptr:?} finds {b}")),
                Some(v) => (
                    Level::Problem,
                    format!("pointer {ptr:?} finds {}, not a boolean", type_name(v)),
                ),
                None => (
                    Level::Problem,
                    format!(
                        "pointer {ptr:?} finds nothing; after_key pages need a has_more boolean"
                    ),
                ),
            };
            out.push(Finding {
                path: format!("{pat}.has_more"),
                level,
                message,
            });
        }
        PaginationStyle::LinkHeader => {
            let has_next = link
                .as_deref()
                .is_some_and(|l| l.contains("rel=\"next\"") || l.contains("rel=next"));
            out.push(Finding {
                path: format!("{pat}.style"),
                level: if has_next { Level::Ok } else { Level::Warning },
                message: if has_next {
                    "the Link header names a next page".into()
                } else {
                    "no Link header with rel=\"next\" on the first page: is there only one page?"
                        .into()
                },
            });
        }
        PaginationStyle::None | PaginationStyle::Offset => {}
    }
    if let Some(f) = p.record_fetch() {
        let key = items
            .first()
            .and_then(|r| r.pointer(&s.key))
            .and_then(key_string);
        out.extend(probe_fetch(client, index, f, key.as_deref()).await);
    }
    out
}

/// Fetches the record of `key` (a key the snapshot's first page holds)
/// through `[producer.fetch]` and checks it reads as a record.
async fn probe_fetch(
    client: &reqwest::Client,
    index: usize,
    f: &crate::refresh::RecordFetch,
    key: Option<&str>,
) -> Vec<Finding> {
    let path = format!("producer[{index}].fetch");
    let Some(key) = key else {
        return vec![Finding {
            path: format!("{path}.url"),
            level: Level::Warning,
            message:
                "the snapshot's first page gave no key to fetch, so the fetch URL was not tried"
                    .into(),
        }];
    };
    let shown = redact_url(&f.url(key));
    let (level, message) = match f.get(client, key).await {
        Ok(crate::refresh::Got::Record { version, .. }) => (
            Level::Ok,
            format!(
                "GET {shown} answered record {key:?}{}",
                version.map(|v| format!(" at version {v}")).unwrap_or_default()
            ),
        ),
        Ok(crate::refresh::Got::NotFound) => (
            Level::Problem,
            format!("GET {shown} answered 404 for key {key:?}, which the snapshot holds (check the path and {{key}})"),
        ),
        Err(e) => (Level::Problem, e.message),
    };
    vec![Finding {
        path: format!("{path}.url"),
        level,
        message,
    }]
}

fn members(v: &Value) -> String {
    match v {
        Value::Object(m) => m
            .keys()
            .map(|k| format!("/{k}"))
            .collect::<Vec<_>>()
            .join(", "),
        other => format!("({}, not an object)", type_name(other)),
    }
}

/// Pointers to the arrays at the top two levels of a page (hints for `items`).
fn array_pointers(page: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if page.is_array() {
        out.push("\"\" (the page itself)".to_string());
    }
    if let Value::Object(m) = page {
        for (k, v) in m {
            match v {
                Value::Array(_) => out.push(format!("/{k}")),
                Value::Object(inner) => {
                    for (k2, v2) in inner {
                        if v2.is_array() {
                            out.push(format!("/{k}/{k2}"));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    out
}
