//! The HTTP server: routes, shared state, health and metrics endpoints. Delta endpoints live in `ingest/`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    /// `App::run`'s tracker: work a request starts runs on it (see [`uncancelled`]).
    pub tasks: TaskTracker,
    /// Commits deltas (group commit), shared by the endpoints and the maildir watchers.
    pub pipeline: crate::ingest::pipeline::Pipeline,
    pub config: Arc<Config>,
    pub store: Store,
    pub metrics: Metrics,
    /// Wakes in-process workers when work is emitted.
    pub wake: std::sync::Arc<tokio::sync::Notify>,
    /// Fetches records on demand (admin endpoint).
    pub refresher: crate::refresh::Refresher,
    /// Runs keyframes on demand (admin endpoint).
    pub keyframer: crate::keyframe::run::Keyframer,
    /// Cancelled at shutdown: long polls answer and event streams end.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// The router with every route, body limit and request timeout applied.
pub(crate) fn router(state: AppState) -> Router {
    let limit = state.config.server.body_limit_bytes;
    let timeout = Duration::from_secs(state.config.server.request_timeout_secs);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::ingest::routes())
        .merge(crate::admin::routes())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        // After the timeout: long polls and event streams bound themselves.
        .merge(crate::api::routes())
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Runs `work` as a task of `tasks` and awaits it. A request whose client
/// hangs up, or that times out, is dropped; the work is not, so no commit,
/// lease or write is cut off halfway, and shutdown waits for it.
pub(crate) async fn uncancelled<F>(tasks: &TaskTracker, work: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tasks.spawn(work).await {
        Ok(out) => out,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("a request's task was cancelled by the runtime shutting down: {e}"),
        },
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when the database answers and is migrated; 503 naming the failing check otherwise.
async fn readyz(State(s): State<AppState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(3), s.store.readiness()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: database did not answer within 3s\n",
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// Whether `Authorization: Bearer <token>` carries `secret`, compared in constant time (over digests).
pub(crate) fn bearer_matches(
    headers: &axum::http::HeaderMap,
    secret: &crate::config::Secret,
) -> bool {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some(token) = value
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
        .map(|_| value[7..].trim_ascii())
    else {
        return false;
    };
    let given = blake3::hash(token);
    let wanted = blake3::hash(secret.expose().as_bytes());
    subtle::ConstantTimeEq::ct_eq(&given.as_bytes()[..], &wanted.as_bytes()[..]).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use axum::http::HeaderValue;
    use axum::http::{header, HeaderMap};

    #[test]
    fn bearer_tokens() {
        let secret = Secret::new("s3cret");
        let cases: &[(Option<&str>, bool)] = &[
            (Some("Bearer s3cret"), true),
            (Some("bearer s3cret "), true),
            (Some("Bearer s3cre"), false),
            (Some("Bearer s3cretx"), false),
            (Some("Basic s3cret"), false),
            (Some("s3cret"), false),
            (Some("Bearer "), false),
            (None, false),
        ];
        for (value, expected) in cases {
            let mut h = HeaderMap::new();
            if let Some(v) = value {
                h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            }
            assert_eq!(bearer_matches(&h, &secret), *expected, "{value:?}");
        }
    }
}
