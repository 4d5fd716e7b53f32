//! `POST /inbound-email/{producer}`: a raw RFC 5322 message from an inbound-parse provider, behind a bearer token.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::Extension;
use subtle::ConstantTimeEq;
use tracing::warn;

use super::apply::{dedup_key, kept_headers};
use super::{pipeline, receipt, IngestError, LazyPipeline};
use crate::config::Secret;
use crate::server::AppState;
use crate::store::{now_ms, Channel, InboxEntry, Source};

pub(super) async fn receive(
    State(state): State<AppState>,
    Extension(lazy): Extension<LazyPipeline>,
    Path(producer): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, IngestError> {
    let pipeline = pipeline(&state, &lazy);
    let p = pipeline
        .producers
        .get(&producer)
        .ok_or(IngestError::NotFound("inbound-email"))?;
    let secret = p
        .config
        .email
        .as_ref()
        .and_then(|e| e.secret.as_ref())
        .filter(|s| !s.expose().is_empty())
        .ok_or(IngestError::NotFound("inbound-email"))?;
    if !bearer_matches(&headers, secret) {
        warn!(producer = %p.config.name, "inbound email refused: missing or wrong bearer token");
        return Err(IngestError::Unauthorized);
    }
    let (plan, message_id) = p.email_plan(&body, Source::Email);
    let entry = InboxEntry {
        producer: p.config.name.clone(),
        channel: Channel::Email,
        received_at: now_ms(),
        dedup_key: message_id.as_deref().and_then(dedup_key),
        headers: kept_headers(&headers, None),
        body: body.to_vec(),
    };
    let settled = pipeline
        .submit(entry, p.effect(plan))
        .await
        .map_err(|_| IngestError::Unavailable)?;
    Ok(receipt(settled))
}

/// `Authorization: Bearer <secret>`, compared in constant time (over
/// digests, so the length of the secret does not show either).
fn bearer_matches(headers: &HeaderMap, secret: &Secret) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
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
    given.as_bytes().ct_eq(wanted.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

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
