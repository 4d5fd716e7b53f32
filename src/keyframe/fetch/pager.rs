//! The pager: a pure transition from what a page said to the next page's URL.
//!
//! `pull` fetches and parses; between two pages it hands the pager what it
//! saw ([`Page`]) and [`Pager::step`] answers with the next URL, `None` after
//! the last page, or a [`PagingError`] that `pull` places at the page. Each
//! style keeps its own progress in one variant of `Progress`. No IO, no clock:
//! the tests below drive it with tables.

use std::collections::HashSet;

use reqwest::Url;
use serde_json::Value;

use super::error::{short, shown, PageAt, PullError};
use super::link::next_link;
use crate::canonical::type_name;
use crate::config::{PaginationConfig, PaginationStyle, SnapshotConfig};

/// What the pager needs to know about a page just fetched and parsed.
pub(super) struct Page<'a> {
    /// Pages fetched so far, this one included.
    pub(super) number: u64,
    pub(super) items: u64,
    /// The value at the style's pagination pointer, when present.
    pub(super) captured: Option<&'a Value>,
    /// Key of the page's last item (for `after_key`).
    pub(super) last_key: Option<&'a str>,
    /// The response's `Link` header values.
    pub(super) links: &'a [String],
    /// The URL that answered (after redirects), for resolving relative links.
    pub(super) url: &'a Url,
}

/// Why the pull cannot go on after a page.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PagingError {
    /// A cursor, URL or key already requested came back.
    Loop { what: &'static str, value: String },
    /// More pages follow, but `max_pages` were fetched.
    TooManyPages { max_pages: u64 },
    /// An empty page before the last page announced.
    ShortPage { total_pages: u64, pointer: String },
    /// The page's pagination data cannot be used.
    Invalid(String),
}

impl PagingError {
    /// The pull's error, placed at the page that caused it.
    pub(super) fn at(self, at: PageAt) -> PullError {
        match self {
            Self::Loop { what, value } => PullError::Loop { at, what, value },
            Self::TooManyPages { max_pages } => PullError::TooManyPages { at, max_pages },
            Self::ShortPage {
                total_pages,
                pointer,
            } => PullError::ShortPage {
                at,
                total_pages,
                pointer,
            },
            Self::Invalid(message) => PullError::Pagination { at, message },
        }
    }
}

/// How far a pull got, one variant per pagination style.
enum Progress {
    /// `none`: the first page is the only one.
    Single,
    /// `cursor`: the cursors already requested.
    Cursor { seen: HashSet<String> },
    /// `next_url`: the URLs already requested.
    NextUrl { seen: HashSet<String> },
    /// `link_header`: the URLs already requested.
    LinkHeader { seen: HashSet<String> },
    /// `page`: the page number last requested and the total announced.
    Page { number: u64, total: Option<u64> },
    /// `offset`: the offset last requested.
    Offset { offset: u64 },
    /// `after_key`: the keys already requested after.
    AfterKey { seen: HashSet<String> },
}

/// Decides each next page's URL from the previous page.
pub(super) struct Pager<'c> {
    cfg: &'c SnapshotConfig,
    base: Url,
    /// The style's pagination pointer, for messages.
    pointer: String,
    progress: Progress,
}

impl<'c> Pager<'c> {
    /// The pager for `cfg` (whose URL is `base`) and the first page's URL.
    pub(super) fn start(
        cfg: &'c SnapshotConfig,
        base: Url,
        pointer: Option<String>,
    ) -> (Self, Url) {
        let pg = &cfg.pagination;
        let request = |value: Option<String>| request_url(pg, &base, value);
        let (progress, first) = match pg.style {
            PaginationStyle::None => (Progress::Single, base.clone()),
            PaginationStyle::Cursor => {
                // A cursor already in the URL is where the pull starts.
                let seen = base
                    .query_pairs()
                    .find(|(k, _)| k == pg.param())
                    .map(|(_, v)| v.into_owned())
                    .into_iter()
                    .collect();
                (Progress::Cursor { seen }, request(None))
            }
            PaginationStyle::NextUrl => {
                let url = request(None);
                let seen = HashSet::from([url.to_string()]);
                (Progress::NextUrl { seen }, url)
            }
            PaginationStyle::LinkHeader => {
                let url = request(None);
                let seen = HashSet::from([url.to_string()]);
                (Progress::LinkHeader { seen }, url)
            }
            PaginationStyle::Page => {
                let number = pg.start.unwrap_or(1);
                let progress = Progress::Page {
                    number,
                    total: None,
                };
                (progress, request(Some(number.to_string())))
            }
            PaginationStyle::Offset => {
                (Progress::Offset { offset: 0 }, request(Some(0.to_string())))
            }
            PaginationStyle::AfterKey => (
                Progress::AfterKey {
                    seen: HashSet::new(),
                },
                request(None),
            ),
        };
        let pager = Self {
            cfg,
            base,
            pointer: pointer.unwrap_or_default(),
            progress,
        };
        (pager, first)
    }

    /// The next page's URL after `page`, or `None` after the last page.
    pub(super) fn step(&mut self, page: &Page<'_>) -> Result<Option<Url>, PagingError> {
        let next = self.next(page)?;
        if next.is_some() && page.number >= self.cfg.max_pages {
            return Err(PagingError::TooManyPages {
                max_pages: self.cfg.max_pages,
            });
        }
        Ok(next)
    }

    fn next(&mut self, page: &Page<'_>) -> Result<Option<Url>, PagingError> {
        let Self {
            cfg,
            base,
            pointer,
            progress,
        } = self;
        let (pg, base): (&PaginationConfig, &Url) = (&cfg.pagination, base);
        let request = |value: String| Some(request_url(pg, base, Some(value)));
        let invalid = |message: String| Err(PagingError::Invalid(message));
        match progress {
            Progress::Single => Ok(None),
            Progress::Cursor { seen } => {
                let token = match page.captured {
                    None | Some(Value::Null) => return Ok(None),
                    Some(Value::String(s)) if s.is_empty() => return Ok(None),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(other) => {
                        return invalid(format!(
                            "cursor at {pointer:?} is {}, not a string or a number",
                            type_name(other)
                        ))
                    }
                };
                if !seen.insert(token.clone()) {
                    return Err(PagingError::Loop {
                        what: "cursor",
                        value: short(&token),
                    });
                }
                Ok(request(token))
            }
            Progress::NextUrl { seen } => {
                let next = match page.captured {
                    None | Some(Value::Null) => return Ok(None),
                    Some(Value::String(s)) if s.is_empty() => return Ok(None),
                    Some(Value::String(s)) => s,
                    Some(other) => {
                        return invalid(format!(
                            "next URL at {pointer:?} is {}, not a string",
                            type_name(other)
                        ))
                    }
                };
                follow(seen, base, next, "next URL", page.url).map(Some)
            }
            Progress::LinkHeader { seen } => match next_link(page.links) {
                None => Ok(None),
                Some(next) => follow(seen, base, &next, "Link rel=\"next\"", page.url).map(Some),
            },
            Progress::Page { number, total } => {
                if let Some(ptr) = &pg.total_pages {
                    match page.captured {
                        Some(v) => match v.as_u64() {
                            Some(n) => *total = Some(n),
                            None => {
                                return invalid(format!(
                                    "total_pages at {ptr:?} is {}, not a non-negative integer",
                                    type_name(v)
                                ))
                            }
                        },
                        None if total.is_none() => {
                            return invalid(format!("total_pages pointer {ptr:?} not found"))
                        }
                        None => {}
                    }
                    let announced = total.unwrap_or(0);
                    if page.number >= announced {
                        return Ok(None);
                    }
                    if page.items == 0 {
                        return Err(PagingError::ShortPage {
                            total_pages: announced,
                            pointer: ptr.clone(),
                        });
                    }
                } else if page.items == 0 {
                    return Ok(None);
                }
                *number += 1;
                Ok(request(number.to_string()))
            }
            Progress::Offset { offset } => {
                if page.items < pg.limit.unwrap_or(0) {
                    return Ok(None);
                }
                *offset += page.items;
                Ok(request(offset.to_string()))
            }
            Progress::AfterKey { seen } => {
                let more = match page.captured {
                    Some(Value::Bool(b)) => *b,
                    Some(other) => {
                        return invalid(format!(
                            "has_more at {pointer:?} is {}, not a boolean",
                            type_name(other)
                        ))
                    }
                    None => return invalid(format!("has_more pointer {pointer:?} not found")),
                };
                if !more {
                    return Ok(None);
                }
                let Some(last) = page.last_key else {
                    return invalid(format!(
                        "has_more at {pointer:?} is true on a page without items"
                    ));
                };
                if !seen.insert(last.to_string()) {
                    return Err(PagingError::Loop {
                        what: "after key",
                        value: short(last),
                    });
                }
                Ok(request(last.to_string()))
            }
        }
    }
}

/// `base` with the style's parameter (if any) and the limit (if set).
fn request_url(pg: &PaginationConfig, base: &Url, value: Option<String>) -> Url {
    let mut set: Vec<(&str, String)> = Vec::new();
    if let Some(v) = value {
        set.push((pg.param(), v));
    }
    if let Some(limit) = pg.limit {
        set.push((pg.limit_param(), limit.to_string()));
    }
    set_params(base, &set)
}

/// Resolves a next-page link, keeping it on the snapshot URL's origin.
fn follow(
    seen: &mut HashSet<String>,
    base: &Url,
    next: &str,
    what: &'static str,
    page_url: &Url,
) -> Result<Url, PagingError> {
    let invalid = |message: String| PagingError::Invalid(message);
    let url = page_url.join(next).map_err(|e| {
        let before_query = next.split('?').next().unwrap_or_default();
        invalid(format!("invalid {what} {:?}: {e}", short(before_query)))
    })?;
    if url.origin() != base.origin() {
        return Err(invalid(format!(
            "{what} {} is not on the origin of {}: headers are only sent to that origin",
            shown(&url),
            shown(base)
        )));
    }
    if !seen.insert(url.to_string()) {
        return Err(PagingError::Loop {
            what,
            value: shown(&url),
        });
    }
    Ok(url)
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

#[cfg(test)]
mod tests;
