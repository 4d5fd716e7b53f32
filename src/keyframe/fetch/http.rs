//! One page over HTTP: pacing, retries with full-jitter backoff, and the body
//! streamed into memory or, once large, an anonymous temp file.

use std::fs::File;
use std::io;
use std::time::Duration;

use reqwest::header::{HeaderMap, LINK, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::error::{transient_status, PageAt, PullError};
use crate::config::SnapshotConfig;
use crate::redact::request_error;

/// Page bodies up to this size stay in memory; larger ones go to a temp file.
pub(super) const MEMORY_BODY_MAX: usize = 4 << 20;
/// Longest wait a `Retry-After` header can impose.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);
/// Ceiling of the exponential backoff (unless `retry_backoff_ms` is larger).
const BACKOFF_MAX_MS: u64 = 60_000;

/// Keeps consecutive request starts to a producer at least `interval`
/// apart. Clones share one clock: a producer's pulls, catch-ups and record
/// fetches draw on one rate limit.
#[derive(Clone, Default)]
pub struct Pace {
    interval: Option<Duration>,
    next: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
    /// When the vendor's quota, as its rate-limit headers last told it,
    /// lets the next request go (`None`: no hold).
    quota: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pace")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Pace {
    pub(super) fn new(interval: Option<Duration>) -> Self {
        Self {
            interval,
            next: Default::default(),
            quota: Default::default(),
        }
    }

    /// Spreads what is left of the vendor's quota over the time until it
    /// resets: after a response saying `remaining` requests are left for
    /// `reset` more, the next one waits `reset / (remaining + 1)` (the whole
    /// window when none are left), so the quota is never run out.
    pub(crate) fn observe_quota(&self, headers: &HeaderMap) {
        let Some(q) = quota(headers) else { return };
        let gap = q
            .reset
            .div_f64(q.remaining as f64 + 1.0)
            .min(QUOTA_WAIT_MAX);
        let until = Instant::now() + gap;
        let mut hold = self.quota.lock().unwrap_or_else(|e| e.into_inner());
        *hold = Some(hold.map_or(until, |h| h.max(until)));
    }

    /// How long the vendor's quota still holds requests back, if at all (a
    /// floor under the next adaptive keyframe's interval).
    pub fn quota_wait(&self) -> Option<Duration> {
        let hold = *self.quota.lock().unwrap_or_else(|e| e.into_inner());
        hold.map(|h| h.saturating_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// Waits for this request's turn.
    pub async fn wait(&self) {
        if let Some(wait) = self.quota_wait() {
            tokio::time::sleep(wait).await;
        }
        let Some(interval) = self.interval else {
            return;
        };
        let start = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let start = next.map_or_else(Instant::now, |n| n.max(Instant::now()));
            *next = Some(start + interval);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}
/// A page body: in memory, or spilled to an anonymous temp file.
pub(super) enum Body {
    Memory(Vec<u8>),
    File(File),
}

pub(super) struct Fetched {
    pub(super) body: Body,
    /// The response's `Link` header values.
    pub(super) links: Vec<String>,
    /// The URL that answered (after redirects), for resolving relative links.
    pub(super) url: Url,
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
        let message = request_error(e, url.as_str());
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
pub(super) async fn fetch_page(
    client: &reqwest::Client,
    cfg: &SnapshotConfig,
    headers: &HeaderMap,
    url: &Url,
    at: &PageAt,
    pace: &Pace,
    requests: &mut u64,
) -> Result<Fetched, PullError> {
    let mut attempt: u32 = 0;
    loop {
        pace.wait().await;
        attempt = attempt.saturating_add(1);
        *requests += 1;
        let failure =
            match tokio::time::timeout(cfg.timeout(), fetch_once(client, url, headers, pace)).await
            {
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

/// Longest a quota can hold one request back.
const QUOTA_WAIT_MAX: Duration = Duration::from_secs(3600);

/// What a response's rate-limit headers say is left of the quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Quota {
    pub(crate) remaining: u64,
    /// Until the quota resets.
    pub(crate) reset: Duration,
}

/// The quota in `X-RateLimit-Remaining`/`X-RateLimit-Reset`,
/// `RateLimit-Remaining`/`RateLimit-Reset`, or the IETF draft's one
/// `RateLimit: limit=…, remaining=…, reset=…`. A reset above 10^9 is a Unix
/// time (as GitHub sends), else seconds from now.
pub(crate) fn quota(headers: &HeaderMap) -> Option<Quota> {
    let get = |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    let pair = [
        ("x-ratelimit-remaining", "x-ratelimit-reset"),
        ("ratelimit-remaining", "ratelimit-reset"),
    ]
    .iter()
    .find_map(|(r, t)| Some((get(r)?, get(t)?)))
    .or_else(|| {
        let field = headers.get("ratelimit")?.to_str().ok()?;
        let item = |key: &str| {
            field.split([',', ';']).find_map(|part| {
                let (k, v) = part.trim().split_once('=')?;
                (k.trim() == key).then(|| v.trim().parse::<u64>().ok())?
            })
        };
        Some((item("remaining")?, item("reset")?))
    })?;
    let (remaining, reset) = pair;
    let reset = if reset > 1_000_000_000 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        reset.saturating_sub(now)
    } else {
        reset
    };
    Some(Quota {
        remaining,
        reset: Duration::from_secs(reset),
    })
}

/// `Retry-After` as seconds or as an HTTP-date (`Sun, 06 Nov 1994 08:49:37
/// GMT`, a time from now), capped; a date already past is no wait.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
        }
    };
    Some(wait.min(RETRY_AFTER_MAX))
}

/// One request, its status checked and its body streamed to memory or disk.
async fn fetch_once(
    client: &reqwest::Client,
    url: &Url,
    headers: &HeaderMap,
    pace: &Pace,
) -> Result<Fetched, Failure> {
    let mut resp = client
        .get(url.clone())
        .headers(headers.clone())
        .send()
        .await
        .map_err(|e| Failure::from_reqwest(e, url))?;
    pace.observe_quota(resp.headers());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn q(pairs: &[(&'static str, &str)]) -> Option<Quota> {
        quota(&headers(pairs))
    }

    #[test]
    fn quotas_from_each_header_family() {
        let secs = Duration::from_secs;
        assert_eq!(
            q(&[("x-ratelimit-remaining", "4"), ("x-ratelimit-reset", "30")]),
            Some(Quota {
                remaining: 4,
                reset: secs(30)
            })
        );
        assert_eq!(
            q(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "12")]),
            Some(Quota {
                remaining: 0,
                reset: secs(12)
            })
        );
        assert_eq!(
            q(&[("ratelimit", "limit=100, remaining=7, reset=50")]),
            Some(Quota {
                remaining: 7,
                reset: secs(50)
            })
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let at = (now + 100).to_string();
        let epoch = q(&[("x-ratelimit-remaining", "1"), ("x-ratelimit-reset", &at)]).unwrap();
        assert!((98..=100).contains(&epoch.reset.as_secs()), "{epoch:?}");
        assert_eq!(q(&[("x-ratelimit-remaining", "4")]), None);
        assert_eq!(q(&[("ratelimit", "limit=100")]), None);
    }

    #[test]
    fn retry_after_in_seconds_and_as_an_http_date() {
        let at = |v: &str| retry_after(&headers(&[("retry-after", v)]));
        assert_eq!(at("7"), Some(Duration::from_secs(7)));
        assert_eq!(at("3600"), Some(RETRY_AFTER_MAX));
        let soon = (chrono::Utc::now() + chrono::TimeDelta::seconds(20))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let wait = at(&soon).unwrap();
        assert!((18..=20).contains(&wait.as_secs()), "{soon}: {wait:?}");
        assert_eq!(at("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(at("soon"), None);
    }

    #[tokio::test]
    async fn a_short_quota_spreads_the_requests_left_over_its_window() {
        let pace = Pace::new(None);
        // 1 s for 3 requests left: one every 250 ms.
        pace.observe_quota(&headers(&[
            ("x-ratelimit-remaining", "3"),
            ("x-ratelimit-reset", "1"),
        ]));
        let wait = pace.quota_wait().unwrap();
        assert!(
            wait > Duration::from_millis(200) && wait <= Duration::from_millis(250),
            "{wait:?}"
        );
        let started = Instant::now();
        pace.wait().await;
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(pace.quota_wait(), None);
        // None left: the whole window.
        pace.observe_quota(&headers(&[("ratelimit", "remaining=0, reset=25")]));
        let wait = pace.quota_wait().unwrap();
        assert!(wait > Duration::from_secs(24), "{wait:?}");
    }
}
