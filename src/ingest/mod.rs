//! Deltas: webhooks and emails in, committed to the inbox, applied to entities in version order.
//!
//! # Layout
//! - `webhook`: `POST /hooks/{producer}`: signature, delivery id, commit, answer.
//! - `inbound`: `POST /inbound-email/{producer}`: bearer token, commit, answer.
//! - `maildir`: the per-producer maildir watcher (`new/` → inbox → `cur/`).
//! - `apply`: payload mapping, email rules, dedup keys, kept headers (pure).
//! - `pipeline`: group commit into the inbox, the pending-inbox sweeper, replay.
//! - `signature`: webhook signature schemes (pure).
//! - `email`: MIME parsing and email rules (pure).
//!
//! A delta is acknowledged (2xx) only after its raw body is committed to the
//! inbox; an email file leaves `new/` only after its commit.

pub(crate) mod apply;
pub(crate) mod email;
mod inbound;
pub(crate) mod maildir;
pub mod pipeline;
pub mod signature;
mod webhook;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::server::AppState;
use crate::store::{InboxOutcome, Settled};

/// The delta endpoints (`/hooks/{producer}`, `/inbound-email/{producer}`).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/hooks/{producer}", post(webhook::receive))
        .route("/inbound-email/{producer}", post(inbound::receive))
}

/// Long-running ingest tasks, owned by `App::run`: the pending-inbox sweeper
/// and one maildir watcher per producer with `email.maildir`.
pub fn background(
    state: &AppState,
    shutdown: &CancellationToken,
) -> Vec<Pin<Box<dyn Future<Output = ()> + Send + 'static>>> {
    let pipeline = state.pipeline.clone();
    let mut tasks: Vec<Pin<Box<dyn Future<Output = ()> + Send + 'static>>> =
        vec![Box::pin(pipeline.clone().sweep(shutdown.clone()))];
    for p in &state.config.producers {
        if let Some(dir) = p.email.as_ref().and_then(|e| e.maildir.as_ref()) {
            tasks.push(Box::pin(maildir::watch(
                pipeline.clone(),
                p.name.clone(),
                PathBuf::from(dir),
                state.config.server.body_limit_bytes,
                shutdown.clone(),
            )));
        }
    }
    tasks
}

/// What a delta endpoint answers once the delta is committed.
#[derive(Debug, serde::Serialize)]
struct Receipt {
    inbox_id: i64,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate_of: Option<i64>,
}

/// 200 once settled (a duplicate too, so the vendor stops retrying), 202
/// while pending or waiting for its record to be fetched, 400 when rejected.
fn receipt(s: Settled) -> Response {
    let status = match s.outcome {
        InboxOutcome::Pending | InboxOutcome::Fetching => StatusCode::ACCEPTED,
        InboxOutcome::Rejected => StatusCode::BAD_REQUEST,
        InboxOutcome::Applied
        | InboxOutcome::Stale
        | InboxOutcome::Duplicate
        | InboxOutcome::Unmatched
        | InboxOutcome::Fetched
        | InboxOutcome::Tie => StatusCode::OK,
    };
    let body = Receipt {
        inbox_id: s.id,
        outcome: s.outcome.as_str(),
        error: s.error,
        duplicate_of: s.duplicate_of,
    };
    (status, Json(body)).into_response()
}

/// Why a delta endpoint refused a request. The messages name no internals.
#[derive(Debug, thiserror::Error)]
enum IngestError {
    #[error("no {0} endpoint for this producer")]
    NotFound(&'static str),
    #[error("signature verification failed")]
    BadSignature,
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("the inbox is unavailable; retry later")]
    Unavailable,
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadSignature | Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        match self {
            Self::Unauthorized => {
                (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
            }
            Self::Unavailable => (status, [(header::RETRY_AFTER, "1")], body).into_response(),
            _ => (status, body).into_response(),
        }
    }
}
