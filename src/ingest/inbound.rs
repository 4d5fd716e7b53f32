//! `POST /inbound-email/{producer}`: a raw RFC 5322 message from an inbound-parse provider, behind a bearer token.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use tracing::warn;

use super::apply::{dedup_key, kept_headers};
use super::pipeline::{effect, email_plan_of};
use super::{receipt, IngestError};
use crate::entity::Source;
use crate::server::AppState;
use crate::store::{now_ms, Channel, InboxEntry};

pub(super) async fn receive(
    State(state): State<AppState>,
    Path(producer): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, IngestError> {
    let pipeline = &state.pipeline;
    let p = pipeline
        .producers
        .get(&producer)
        .ok_or(IngestError::NotFound("inbound-email"))?;
    let secret = p
        .email
        .as_ref()
        .and_then(|e| e.secret.as_ref())
        .filter(|s| !s.expose().is_empty())
        .ok_or(IngestError::NotFound("inbound-email"))?;
    if !crate::server::bearer_matches(&headers, secret) {
        warn!(producer = %p.name, "inbound email refused: missing or wrong bearer token");
        return Err(IngestError::Unauthorized);
    }
    let (plan, message_id) = email_plan_of(p, &body, Source::Email);
    let entry = InboxEntry {
        producer: p.name.clone(),
        channel: Channel::Email,
        received_at: now_ms(),
        dedup_key: message_id.as_deref().and_then(dedup_key),
        headers: kept_headers(&headers, None),
        body: body.to_vec(),
    };
    let settled = pipeline
        .submit(entry, effect(p, plan))
        .await
        .map_err(|_| IngestError::Unavailable)?;
    Ok(receipt(settled))
}
