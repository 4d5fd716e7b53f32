//! `GET /v1/entities/{producer}/{key}` and `GET /v1/entities/{producer}?after=KEY&limit=N`: the mirror's rows with their sync state.
//!
//! The sync state is derived from the work queue, as everywhere: an open
//! `pending` item is `drifted`, a `running` one `correcting`, none `in_sync`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::{authorize, int_param, producer, ApiError};
use crate::server::AppState;
use crate::state::{SyncState, WorkState};
use crate::store::Entity;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1_000;

fn sync_state(open: Option<&WorkState>) -> SyncState {
    match open {
        Some(WorkState::Pending) => SyncState::Drifted,
        Some(WorkState::Running) => SyncState::Correcting,
        _ => SyncState::InSync,
    }
}

fn entity_json(producer: &str, e: Entity, open: Option<&WorkState>) -> Value {
    json!({
        "producer": producer,
        "key": e.key,
        "doc": e.doc,
        "version": e.version,
        "hash": e.hash.map(|h| hex::encode(h.0)),
        "updated_at": e.updated_at,
        "source": e.source,
        "sync_state": sync_state(open).as_str(),
    })
}

pub(super) async fn one(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((name, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers)?;
    let producer = producer(&s, &name)?;
    let entity = s.store.entity(producer, &key).await?;
    let Some(entity) = entity.filter(|e| !e.deleted) else {
        return Err(ApiError::not_found(format!(
            "producer {producer:?} has no entity {key:?}"
        )));
    };
    let open = s.store.open_work_states(producer, &[key.as_str()]).await?;
    Ok(Json(entity_json(producer, entity, open.get(&key))))
}

pub(super) async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers)?;
    let producer = producer(&s, &name)?;
    let limit = int_param(&query, "limit", DEFAULT_LIMIT, 1..=MAX_LIMIT)?;
    let after = query.get("after").map(String::as_str);
    let page = s.store.entity_page(producer, after, limit).await?;
    let keys: Vec<&str> = page.iter().map(|e| e.key.as_str()).collect();
    let open = s.store.open_work_states(producer, &keys).await?;
    let next = if i64::try_from(page.len()).unwrap_or(i64::MAX) == limit {
        page.last().map(|e| e.key.clone())
    } else {
        None
    };
    let items: Vec<Value> = page
        .into_iter()
        .map(|e| {
            let state = open.get(&e.key);
            entity_json(producer, e, state)
        })
        .collect();
    Ok(Json(
        json!({ "producer": producer, "entities": items, "next": next }),
    ))
}
