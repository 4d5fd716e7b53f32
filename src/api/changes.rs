//! `GET /v1/changes`: the change feed of one producer after a position, as a long poll (JSON) or as Server-Sent Events.
//!
//! Positions are the producer's `changes.seq`. A consumer keeps the last
//! position it handled and asks for what follows (`after=`, or
//! `Last-Event-ID` when its event stream reconnects); it then receives every
//! later change exactly once, in order. Waiting costs no database reads: a
//! waiting request sleeps on the producer's commit signal.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{authorize, bool_param, int_param, producer, ApiError};
use crate::server::AppState;
use crate::store::{FeedChange, Store};

/// The longest a long poll waits for a first change (`wait=`).
pub(crate) const MAX_WAIT_SECS: i64 = 120;
/// Changes per response, or per read of an event stream.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1_000;
/// A comment line this often keeps idle event streams (and proxies) open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(super) async fn changes(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    authorize(&s, &headers)?;
    let name = query
        .get("producer")
        .ok_or_else(|| ApiError::bad_request("query parameter producer is required".into()))?;
    let producer = producer(&s, name)?.to_string();
    let limit = int_param(&query, "limit", DEFAULT_LIMIT, 1..=MAX_LIMIT)?;
    let docs = bool_param(&query, "docs")?;
    let mut after = int_param(&query, "after", 0, 0..=i64::MAX)?;
    let wants_events = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_events {
        if let Some(last) = headers.get("last-event-id") {
            let raw = String::from_utf8_lossy(last.as_bytes()).into_owned();
            after = raw.trim().parse().ok().filter(|v| *v >= 0).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Last-Event-ID {raw:?} is not a feed position (a non-negative integer)"
                ))
            })?;
        }
        let feed = Feed {
            store: s.store.clone(),
            signal: s.store.subscribe_changes(&producer),
            producer,
            after,
            limit,
            docs,
            shutdown: s.shutdown.clone(),
            buffered: VecDeque::new(),
            caught_up: false,
            failed: false,
        };
        return Ok(Sse::new(feed.events())
            .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
            .into_response());
    }
    // The server closes a connection on which nothing moves for
    // `idle_timeout_secs`: answer (empty) a second before that.
    let idle = s.config.server.idle_timeout_secs.saturating_sub(1);
    let wait =
        Duration::from_secs((int_param(&query, "wait", 0, 0..=MAX_WAIT_SECS)? as u64).min(idle));
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first read: a commit after it wakes us.
    let mut signal = s.store.subscribe_changes(&producer);
    let found = loop {
        let found = s.store.changes_after(&producer, after, limit, docs).await?;
        if !found.is_empty() || tokio::time::Instant::now() >= deadline {
            break found;
        }
        tokio::select! {
            woke = signal.changed() => if woke.is_err() { break found },
            _ = tokio::time::sleep_until(deadline) => {}
            _ = s.shutdown.cancelled() => break found,
        }
    };
    let next = found.last().map_or(after, |c| c.seq);
    Ok(Json(json!({ "producer": producer, "changes": found, "next": next })).into_response())
}

/// One consumer's event stream: reads a page, sends it, sleeps on the
/// producer's signal when caught up; ends at shutdown.
struct Feed {
    store: Store,
    signal: watch::Receiver<u64>,
    producer: String,
    after: i64,
    limit: i64,
    docs: bool,
    shutdown: CancellationToken,
    buffered: VecDeque<FeedChange>,
    /// The last read returned less than a page: the stream is caught up,
    /// and only the producer's signal can make another read worthwhile.
    caught_up: bool,
    failed: bool,
}

impl Feed {
    fn events(self) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
        futures::stream::unfold(self, |mut feed| async move {
            let event = feed.next_event().await?;
            Some((Ok(event), feed))
        })
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if self.failed || self.shutdown.is_cancelled() {
                return None;
            }
            if let Some(change) = self.buffered.pop_front() {
                self.after = change.seq;
                let data = serde_json::to_string(&change).expect("a change serializes");
                return Some(
                    Event::default()
                        .id(change.seq.to_string())
                        .event("change")
                        .data(data),
                );
            }
            if self.caught_up {
                // Subscribed before the read that caught up: a commit since
                // has already marked the signal changed.
                tokio::select! {
                    woke = self.signal.changed() => if woke.is_err() { return None },
                    _ = self.shutdown.cancelled() => return None,
                }
                self.caught_up = false;
                continue;
            }
            self.signal.borrow_and_update();
            match self
                .store
                .changes_after(&self.producer, self.after, self.limit, self.docs)
                .await
            {
                Ok(found) => {
                    self.caught_up = i64::try_from(found.len()).unwrap_or(i64::MAX) < self.limit;
                    self.buffered.extend(found);
                }
                Err(e) => {
                    warn!(producer = %self.producer, error = %e, "change feed stream ended: cannot read the feed");
                    self.failed = true;
                    return Some(
                        Event::default()
                            .event("error")
                            .data("database unavailable; reconnect with Last-Event-ID to resume"),
                    );
                }
            }
        }
    }
}
