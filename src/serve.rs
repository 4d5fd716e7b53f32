//! The accept loop: HTTP/1 connections through hyper with a header-read timeout, an idle timeout, a cap on open connections, and graceful shutdown.
//!
//! `axum::serve` offers none of these limits, so a client that connects and
//! sends nothing, or half its headers, would hold a connection (and a file
//! descriptor) for ever. Here:
//! - hyper closes a connection whose request headers have not arrived within
//!   `header_read_timeout` of it starting to wait for them (on connect, and
//!   after each response on a kept-alive connection);
//! - a connection on which no byte has moved either way for `idle_timeout`
//!   is closed (a stalled body, a client that stops reading);
//! - at most `max_connections` are open: at the cap nothing more is accepted
//!   (new connections wait in the listen backlog) until one closes;
//! - on shutdown nothing more is accepted, every connection finishes the
//!   request it is serving, and whatever is left after `drain` is closed.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::ServerConfig;

/// The connection limits, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub(crate) fn of(server: &ServerConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(server.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(server.idle_timeout_secs),
            max_connections: server.max_connections,
        }
    }
}

/// How long to wait before accepting again after `accept` failed (such as
/// too many open files), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);
/// The least time between two "connection limit reached" warnings.
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(60);

/// Serves `router` on `listener` until `shutdown`, then drains for at most `drain`.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    let mut last_warned: Option<Instant> = None;
    loop {
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // Once per minute at most, however often the cap is hit.
                let warn_now = last_warned.is_none_or(|t| t.elapsed() >= LIMIT_LOG_EVERY);
                if warn_now {
                    last_warned = Some(Instant::now());
                    warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached: {} connections are open (server.max_connections); \
                         new connections wait to be accepted until one closes",
                        limits.max_connections
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => {
                        if warn_now {
                            info!("below the connection limit again; accepting connections");
                        }
                        slot.expect("the semaphore is never closed")
                    }
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "cannot accept a connection; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            connection(stream, router, limits, shutdown).await;
            drop(slot);
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            open = connections.len(),
            "shutdown: closing connections still open after {drain:?}"
        );
        connections.shutdown().await;
    }
}

/// Serves one connection until it closes, times out, or shutdown completes it.
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let idle_until = activity.last() + limits.idle_timeout;
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    debug!(error = %e, "connection closed with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = tokio::time::sleep_until(idle_until) => {
                if activity.last() + limits.idle_timeout <= Instant::now() {
                    debug!(idle_timeout = ?limits.idle_timeout, "closing a connection on which nothing moved");
                    return;
                }
            }
        }
    }
}

/// When bytes last moved on a connection.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A stream that records in [`Activity`] every read or write that moved bytes.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
