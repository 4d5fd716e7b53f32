//! `POST /v1/work/{id}/done`: the application reports that it carried out a work item; behind the admin token.
//!
//! Finishing writes (the item's state, the mirror's row), so it runs in a
//! task of its own that the request only awaits: a client that hangs up
//! cannot cancel it halfway.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::ApiError;
use crate::server::AppState;
use crate::store::StoreError;

pub(super) async fn done(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    let Some(token) = &s.config.server.admin_token else {
        return Err(ApiError::not_found(
            "work completion is off: set server.admin_token".into(),
        ));
    };
    if !crate::server::bearer_matches(&headers, token) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (work completion needs the admin token)".into(),
        ));
    }
    let (store, config) = (s.store.clone(), s.config.clone());
    let finished = crate::server::uncancelled(&s.tasks, async move {
        crate::work::finish_by_hand(&store, &config, id).await
    })
    .await;
    match finished {
        Ok(w) => Ok(Json(json!({
            "id": w.id,
            "producer": w.producer,
            "key": w.key,
            "state": w.state.as_str(),
        }))),
        Err(StoreError::Invalid(m)) if m.ends_with("does not exist") => Err(ApiError::not_found(m)),
        Err(StoreError::Invalid(m)) => Err(ApiError(StatusCode::CONFLICT, m)),
        Err(e) => Err(e.into()),
    }
}
