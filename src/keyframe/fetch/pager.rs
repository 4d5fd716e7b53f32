//! The pager: the next page's URL from what the last page said, per pagination style.

use std::collections::HashSet;

use reqwest::Url;
use serde_json::Value;

use super::error::{short, shown, type_name, PageAt, PullError};
use super::link::next_link;
use super::sink::PageOutcome;
use crate::config::{PaginationStyle, SnapshotConfig};

/// Decides each next page's URL from the previous page.
pub(super) struct Pager<'c> {
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
    pub(super) fn new(cfg: &'c SnapshotConfig, base: Url, pointer: Option<String>) -> Self {
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

    pub(super) fn first(&mut self) -> Url {
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
    pub(super) fn next(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_replace_their_name_and_keep_the_others() {
        let base = Url::parse("http://h/p?a=1&cursor=old&b=x%20y").unwrap();
        let url = set_params(&base, &[("cursor", "n&w".into()), ("limit", "5".into())]);
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let expected = [("a", "1"), ("b", "x y"), ("cursor", "n&w"), ("limit", "5")];
        assert_eq!(pairs, expected.map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(set_params(&base, &[]), base);
    }
}
