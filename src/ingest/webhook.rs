//! `POST /hooks/{producer}`: verify the signature, commit the raw delivery to the inbox with its delivery id, apply, answer.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use tracing::warn;

use super::apply::{kept_headers, webhook_dedup_key};
use super::pipeline::{effect, webhook_plan_of};
use super::signature;
use super::{receipt, IngestError};
use crate::entity::Source;
use crate::server::AppState;
use crate::store::{now_ms, Channel, InboxEntry};

/// `Bytes` honours the router's `DefaultBodyLimit`: a larger body is a 413.
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
        .ok_or(IngestError::NotFound("webhook"))?;
    let w = p.webhook.as_ref().ok_or(IngestError::NotFound("webhook"))?;
    let now = chrono::Utc::now().timestamp();
    if let Err(e) = signature::verify(w, &headers, &body, now) {
        pipeline
            .metrics
            .signature_failures
            .with_label_values(&[&p.name])
            .inc();
        // SignatureError never shows a secret or a signature.
        warn!(producer = %p.name, reason = %e, "webhook refused");
        return Err(IngestError::BadSignature);
    }
    let entry = InboxEntry {
        producer: p.name.clone(),
        channel: Channel::Webhook,
        received_at: now_ms(),
        dedup_key: webhook_dedup_key(w, &headers, &body),
        headers: kept_headers(&headers, Some(w)),
        body: body.to_vec(),
    };
    let planned = effect(p, webhook_plan_of(p, w, &body, Source::Webhook));
    let settled = pipeline
        .submit(entry, planned)
        .await
        .map_err(|_| IngestError::Unavailable)?;
    Ok(receipt(settled))
}
