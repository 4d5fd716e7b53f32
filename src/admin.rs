//! Operator endpoints behind `[server].admin_token`: status, keyframe now, approve a guarded run. Off (404) without a token.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tracing::warn;

use crate::config::Config;
use crate::keyframe::run::KeyframeError;
use crate::server::AppState;
use crate::store::{Store, StoreError};

/// Per producer: health, the guarded run awaiting approval, entities, open
/// drift, the last runs, keys waiting to be fetched, the last catch-up; and
/// the work queue by state.
pub(crate) async fn status_report(config: &Config, store: &Store) -> Result<Value, StoreError> {
    let health = store.producer_health().await?;
    let open = store.open_work_by_producer().await?;
    let guarded = store.guarded_runs().await?;
    let backlog = store.fetch_backlog().await?;
    let mut producers = Vec::new();
    for p in &config.producers {
        let mut runs = Vec::new();
        for run in store.runs(&p.name, 5).await? {
            let causes = store.drift_causes(run.id).await?;
            let mut run = serde_json::to_value(run).unwrap_or_default();
            run["causes"] = json!(causes);
            runs.push(run);
        }
        let (h, since) = health
            .get(&p.name)
            .map(|(h, since)| (h.as_str(), Some(*since)))
            .unwrap_or(("healthy", None));
        producers.push(json!({
            "producer": p.name,
            "health": h,
            "health_since": since,
            "guarded_run": guarded.get(&p.name),
            "entities": store.count_entities(&p.name).await?,
            "open_drift": open.get(&p.name).copied().unwrap_or(0),
            "runs": runs,
            "fetch": p.fetch.as_ref().map(|_| json!({
                "waiting": backlog.get(&p.name).copied().unwrap_or(0),
            })),
            "pacing": match &p.adaptive {
                Some(a) => Some(json!({
                    "min_interval_secs": a.min_interval_secs,
                    "max_interval_secs": a.max_interval_secs,
                    "target_drift_seconds": a.target_drift_seconds,
                    "last": store.pacing(&p.name).await?,
                })),
                None => None,
            },
            "catchup": match &p.catchup {
                Some(c) => Some(json!({
                    "every_secs": c.every_secs,
                    "last": store.catchup_state(&p.name).await?,
                })),
                None => None,
            },
        }));
    }
    Ok(json!({ "producers": producers, "work": store.work_counts().await? }))
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/status", get(status))
        .route("/admin/keyframe/{producer}", post(keyframe))
        .route("/admin/approve/{run_id}", post(approve))
        .route("/admin/refresh/{producer}/{key}", post(refresh))
}

/// An admin error: a status and a message safe to show the caller.
#[derive(Debug)]
struct AdminError(StatusCode, String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(m) => AdminError(StatusCode::CONFLICT, m),
            other => {
                warn!(error = %other, "admin request failed");
                AdminError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database unavailable".into(),
                )
            }
        }
    }
}

fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(), AdminError> {
    let Some(token) = &s.config.server.admin_token else {
        return Err(AdminError(
            StatusCode::NOT_FOUND,
            "admin endpoints are off: set server.admin_token".into(),
        ));
    };
    if crate::server::bearer_matches(headers, token) {
        Ok(())
    } else {
        Err(AdminError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        ))
    }
}

async fn status(State(s): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, AdminError> {
    authorize(&s, &headers)?;
    Ok(Json(status_report(&s.config, &s.store).await?))
}

async fn keyframe(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(producer): Path<String>,
) -> Result<Json<Value>, AdminError> {
    authorize(&s, &headers)?;
    let Some(p) = s.config.producer(&producer) else {
        return Err(AdminError(
            StatusCode::NOT_FOUND,
            format!("unknown producer {producer:?}"),
        ));
    };
    // In a task the request awaits: a client hanging up never drops a run
    // half-way (it would stay `running` and hold its lease).
    let (keyframer, producer) = (s.keyframer.clone(), p.clone());
    let ran = crate::server::uncancelled(
        &s.tasks,
        async move { keyframer.run(&producer, false).await },
    )
    .await;
    match ran {
        Ok(summary) => {
            if summary.work_emitted > 0 {
                s.wake.notify_waiters();
            }
            Ok(Json(
                serde_json::to_value(summary).expect("a summary serializes"),
            ))
        }
        Err(e) => Err(keyframe_error(e)),
    }
}

/// Fetches one record from its producer now and applies it (a versioned
/// write that wins a version tie); answers what the fetch did.
async fn refresh(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((producer, key)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    authorize(&s, &headers)?;
    let Some(p) = s.config.producer(&producer) else {
        return Err(AdminError(
            StatusCode::NOT_FOUND,
            format!("unknown producer {producer:?}"),
        ));
    };
    // In a task the request awaits: a client hanging up never leaves the
    // key leased mid-fetch or its record half-committed.
    let (refresher, producer, cancel) = (s.refresher.clone(), p.clone(), s.shutdown.clone());
    let done = crate::server::uncancelled(&s.tasks, async move {
        refresher.refresh(&producer, &[key.as_str()], &cancel).await
    })
    .await?;
    Ok(Json(json!({ "producer": p.name, "fetched": done })))
}

async fn approve(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(run_id): Path<i64>,
) -> Result<Json<Value>, AdminError> {
    authorize(&s, &headers)?;
    // In a task the request awaits: a client hanging up never cuts an
    // approval between marking the run and emitting its work.
    let (keyframer, config) = (s.keyframer.clone(), s.config.clone());
    let approved =
        crate::server::uncancelled(
            &s.tasks,
            async move { keyframer.approve(&config, run_id).await },
        )
        .await;
    match approved {
        Ok(a) => Ok(Json(
            serde_json::to_value(a).expect("an approval serializes"),
        )),
        Err(e) => Err(keyframe_error(e)),
    }
}

/// The admin answer to a keyframe or approval error.
fn keyframe_error(e: KeyframeError) -> AdminError {
    match e {
        KeyframeError::Store(e) => e.into(),
        KeyframeError::NoSuchRun(_) => AdminError(StatusCode::NOT_FOUND, e.to_string()),
        KeyframeError::Busy(_)
        | KeyframeError::Refused { .. }
        | KeyframeError::UnknownProducer { .. } => AdminError(StatusCode::CONFLICT, e.to_string()),
        other => {
            warn!(error = %other, "admin keyframe failed");
            AdminError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "keyframe could not run; see the daemon's log".into(),
            )
        }
    }
}
