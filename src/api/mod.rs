//! The application's API under `/v1`, behind `[server].read_token`: the change feed and the read API over the mirror; work completion behind the admin token. Off (404) without its token.
//!
//! The feed and the read API only read, so a request may be dropped at any
//! await point (a client hanging up) without leaving anything half-done;
//! work completion writes in a task of its own.

mod changes;
mod entities;
mod work;

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tracing::warn;

use crate::server::AppState;
use crate::store::StoreError;

/// The `/v1` routes. They are mounted outside the request timeout: a long
/// poll and an event stream outlive it by design and bound themselves.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/changes", get(changes::changes))
        .route("/v1/entities/{producer}", get(entities::list))
        .route("/v1/entities/{producer}/{key}", get(entities::one))
        .route("/v1/work/{id}/done", axum::routing::post(work::done))
}

/// An API error: a status and a message safe to show the caller.
#[derive(Debug)]
pub(crate) struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(message: String) -> Self {
        Self(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: String) -> Self {
        Self(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        warn!(error = %e, "API request failed");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "database unavailable".into(),
        )
    }
}

/// The read token, checked in constant time; the API is off without one.
fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &s.config.server.read_token else {
        return Err(ApiError::not_found(
            "the /v1 API is off: set server.read_token".into(),
        ));
    };
    if crate::server::bearer_matches(headers, token) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        ))
    }
}

/// A configured producer's name, or 404.
fn producer<'a>(s: &'a AppState, name: &str) -> Result<&'a str, ApiError> {
    s.config
        .producer(name)
        .map(|p| p.name.as_str())
        .ok_or_else(|| ApiError::not_found(format!("unknown producer {name:?}")))
}

/// A query parameter parsed as an integer in `range`, `default` when absent.
fn int_param(
    query: &HashMap<String, String>,
    name: &str,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64, ApiError> {
    let Some(raw) = query.get(name) else {
        return Ok(default);
    };
    match raw.trim().parse::<i64>() {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(ApiError::bad_request(format!(
            "query parameter {name} = {raw:?} must be an integer from {} to {}",
            range.start(),
            range.end()
        ))),
    }
}

/// A boolean query parameter: `1`/`true`/`yes` or `0`/`false`/`no`.
fn bool_param(query: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match query.get(name).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "") => Ok(true),
        Some(v) if matches!(v.as_str(), "0" | "false" | "no") => Ok(false),
        Some(v) => Err(ApiError::bad_request(format!(
            "query parameter {name} = {v:?} must be 1 or 0"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_parameters() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(int_param(&q(&[]), "limit", 100, 1..=1000).unwrap(), 100);
        assert_eq!(
            int_param(&q(&[("limit", "7")]), "limit", 100, 1..=1000).unwrap(),
            7
        );
        let e = int_param(&q(&[("limit", "0")]), "limit", 100, 1..=1000).unwrap_err();
        assert_eq!(e.0, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.1,
            "query parameter limit = \"0\" must be an integer from 1 to 1000"
        );
        assert!(int_param(&q(&[("after", "x")]), "after", 0, 0..=i64::MAX).is_err());
        assert!(bool_param(&q(&[("docs", "1")]), "docs").unwrap());
        assert!(!bool_param(&q(&[]), "docs").unwrap());
        assert!(bool_param(&q(&[("docs", "maybe")]), "docs").is_err());
    }
}
