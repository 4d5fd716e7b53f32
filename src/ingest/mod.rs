//! Deltas: webhook signature checks, email parsing and rules.

pub mod email;
pub mod signature;

use std::future::Future;
use std::pin::Pin;

use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::server::AppState;

/// The delta endpoints (`/hooks/{producer}`, `/inbound-email/{producer}`).
pub fn routes() -> Router<AppState> {
    Router::new()
}

/// Long-running ingest tasks (maildir watchers), owned by `App::run`.
pub fn background(
    _state: &AppState,
    _shutdown: &CancellationToken,
) -> Vec<Pin<Box<dyn Future<Output = ()> + Send + 'static>>> {
    Vec::new()
}
