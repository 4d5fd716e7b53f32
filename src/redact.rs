//! How URLs and errors are shown in logs, error messages, stored work errors and CLI output: no credentials, no query string, every cause.
//!
//! A URL's userinfo (`user:password@`) and its query (which often carries a
//! token) never leave the process in text; [`redact_url`] is the one place
//! that cuts them. [`error_chain`] keeps an error's causes ("connection
//! refused"), which reqwest keeps out of its own message.

use std::error::Error;
use std::fmt::Write;

/// A URL as shown anywhere: scheme, host, port and path, without userinfo,
/// query or fragment. Text that does not parse as a URL is cut the same way.
pub(crate) fn redact_url(raw: &str) -> String {
    if let Ok(mut url) = reqwest::Url::parse(raw) {
        if url.has_host() {
            url.set_query(None);
            url.set_fragment(None);
            let _ = url.set_username("");
            let _ = url.set_password(None);
            return url.to_string();
        }
    }
    let cut = raw.find(['?', '#']).map_or(raw, |i| &raw[..i]);
    let (scheme, rest) = match cut.find("://") {
        Some(i) => cut.split_at(i + 3),
        None => ("", cut),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}{rest}")
}

/// An error and its causes joined by `: `. A cause whose text already ends
/// the message is not repeated (sqlx writes its cause into its own message,
/// reqwest and anyhow do not), so every cause appears exactly once.
pub(crate) fn error_chain(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            let _ = write!(out, ": {text}");
        }
        next = cause.source();
    }
    out
}

/// A failed request to `url` as shown: reqwest's error without its URL, with
/// every cause, and with no trace of the URL's password or query left in it.
pub(crate) fn request_error(e: reqwest::Error, url: &str) -> String {
    let mut out = error_chain(&e.without_url());
    if let Ok(u) = reqwest::Url::parse(url) {
        for secret in [u.password(), u.query()].into_iter().flatten() {
            if !secret.is_empty() {
                out = out.replace(secret, "***");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_userinfo_query_and_fragment() {
        let cases = [
            ("http://bob:hunter2@host/work?token=abc", "http://host/work"),
            (
                "https://user:pw@h.test:8443/a/b?token=t#frag",
                "https://h.test:8443/a/b",
            ),
            ("https://token@h.test/x", "https://h.test/x"),
            ("http://127.0.0.1:9/orders", "http://127.0.0.1:9/orders"),
            // Not a URL the parser takes: cut by hand the same way.
            (
                "http://bob:hunter2@ho st/work?token=abc",
                "http://ho st/work",
            ),
            ("bob:pw@host:99999/p?q=1", "host:99999/p"),
            ("no url at all", "no url at all"),
        ];
        for (raw, shown) in cases {
            assert_eq!(redact_url(raw), shown, "{raw}");
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {source}")]
    struct RepeatsCause {
        source: Inner,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct KeepsCauseApart {
        #[source]
        source: Inner,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Inner;

    #[test]
    fn every_cause_appears_once() {
        assert_eq!(
            error_chain(&RepeatsCause { source: Inner }),
            "outer: connection refused"
        );
        assert_eq!(
            error_chain(&KeepsCauseApart { source: Inner }),
            "outer: connection refused"
        );
    }

    #[tokio::test]
    async fn request_errors_keep_their_cause_and_lose_the_url_secrets() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://bob:hunter2@127.0.0.1:{port}/work?token=abc");
        let e = reqwest::Client::new().post(&url).send().await.unwrap_err();
        let shown = request_error(e, &url);
        assert!(shown.to_lowercase().contains("refused"), "{shown}");
        for secret in ["hunter2", "bob", "token", "abc"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
