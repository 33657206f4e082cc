//! The HTTP server: the JSON API under `/api/v1`, live logs and build events over SSE, and the
//! health endpoints. Routes are grouped one file per family.

pub mod agent_api;
mod api;
pub mod error;
pub mod hooks;
mod openapi;
mod schedules;
mod storage;
mod stream;
pub mod tls;
pub mod views;
pub mod webhooks;

use crate::engine::builds::BuildContext;
use crate::store::secrets::MasterKeys;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, http::StatusCode};
use serde_json::json;
use std::sync::Arc;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 1 << 20;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Builds, store, bus.
    pub builds: BuildContext,
    /// Secret encryption keys.
    pub keys: Arc<MasterKeys>,
    /// Webhook deliveries per job and minute.
    pub hook_limiter: Arc<hooks::RateLimiter>,
    /// Jobs and their webhook secrets, briefly kept for the receivers.
    pub hook_cache: Arc<hooks::HookCache>,
    /// How remote agents lease.
    pub agents: agent_api::AgentSettings,
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/startup", get(|| async { Json(json!({"status": "started"})) }))
        .route("/ready", get(ready))
        .route("/api/v1/openapi.json", get(|| async { Json(openapi::document()) }))
        .route("/api/v1/jobs", get(api::list_jobs).post(api::create_job))
        .route("/api/v1/jobs/{name}", get(api::get_job).put(api::update_job).delete(api::delete_job))
        .route("/api/v1/jobs/{name}/builds", post(api::trigger))
        .route("/api/v1/builds", get(api::list_builds))
        .route("/api/v1/builds/{id}", get(api::get_build))
        .route("/api/v1/builds/{id}/tests", get(api::build_tests))
        .route("/api/v1/builds/{id}/cancel", post(api::cancel))
        .route("/api/v1/builds/{id}/retry", post(api::retry))
        .route("/api/v1/builds/{id}/events", get(stream::build_events))
        .route("/api/v1/builds/{id}/jobs/{job}/logs", get(stream::logs))
        .route("/api/v1/builds/{id}/jobs/{job}/logs/stream", get(stream::log_stream))
        .route("/api/v1/secrets", get(api::list_secrets))
        .route("/api/v1/secrets/{name}", axum::routing::put(api::set_secret).delete(api::delete_secret))
        .route("/api/v1/webhooks", get(hooks::list))
        .route("/api/v1/schedules", get(schedules::list).post(schedules::create))
        .route("/api/v1/schedules/{id}", axum::routing::delete(schedules::delete))
        .route("/api/v1/webhooks/{id}/replay", post(hooks::replay))
        .route("/api/v1/builds/{id}/artifacts", get(storage::list_artifacts))
        .route("/api/v1/builds/{id}/artifacts/{name}", axum::routing::delete(storage::delete_artifact))
        .route("/api/v1/artifacts/{id}", get(storage::download))
        .route("/api/v1/caches", get(storage::list_caches))
        .route("/api/v1/caches/{id}", axum::routing::delete(storage::delete_cache))
        .route("/api/v1/storage", get(storage::report))
        .route("/api/v1/storage/prune", post(storage::prune))
        .route("/api/v1/agents", get(agent_api::list))
        .route("/api/v1/agent-tokens", get(agent_api::list_tokens).post(agent_api::create_token))
        .route("/api/v1/agent-tokens/{id}", axum::routing::delete(agent_api::revoke_token))
        .route("/api/v1/agent/register", post(agent_api::register))
        .route("/api/v1/agent/lease", post(agent_api::lease))
        .route("/api/v1/agent/leases/{entry}/{action}", post(agent_api::lease_action))
        .route("/api/v1/agent/state", post(agent_api::state))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .merge(
            Router::new()
                .route("/api/v1/agent/leases/{entry}/blobs", axum::routing::put(agent_api::put_blob))
                .route("/api/v1/agent/leases/{entry}/blobs/{sha256}", get(agent_api::get_blob))
                .route("/api/v1/agent/leases/{entry}/caches", axum::routing::put(agent_api::put_cache))
                .route("/api/v1/agent/leases/{entry}/caches/{id}", get(agent_api::get_cache))
                .route("/api/v1/agent/leases/{entry}/plugins/{digest}", get(agent_api::get_plugin))
                .layer(DefaultBodyLimit::disable()),
        )
        .merge(
            Router::new()
                .route("/hooks/{provider}/{job}", post(hooks::receive))
                .layer(DefaultBodyLimit::max(hooks::HOOK_BODY_LIMIT)),
        )
        .merge(views::routes())
        .with_state(state)
}

/// Unknown routes: JSON under `/api` and `/hooks`, an HTML page elsewhere (a browser asked).
async fn not_found(uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = uri.path();
    if path.starts_with("/api/") || path.starts_with("/hooks/") || path == "/api" {
        error::ApiError::not_found("no such route").into_response()
    } else {
        views::PageError::not_found(format!("no page at `{path}`")).into_response()
    }
}

async fn ready(State(s): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    match s.builds.store.queue_depth().await {
        Ok(depth) => (StatusCode::OK, Json(json!({"status": "ready", "database": "ok", "queue_depth": depth}))),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not_ready", "database": e.to_string()}))),
    }
}
