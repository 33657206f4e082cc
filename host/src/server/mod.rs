//! The HTTP server: the JSON API under `/api/v1`, live logs and build events over SSE, and the
//! health endpoints. Routes are grouped one file per family.

pub mod agent_api;
mod api;
pub mod auth;
pub mod error;

mod openapi;
mod schedules;
mod storage;
pub mod stream;
pub mod tls;
pub mod views;
pub mod webhooks;

use crate::engine::builds::BuildContext;
use crate::store::secrets::MasterKeys;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{MethodRouter, get, post};
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
    pub hook_limiter: Arc<webhooks::route::RateLimiter>,
    /// Jobs and their webhook secrets, briefly kept for the receivers.
    pub hook_cache: Arc<webhooks::route::HookCache>,
    /// How remote agents lease.
    pub agents: agent_api::AgentSettings,
    /// Sign-in, lockout and rate-limit settings.
    pub auth: auth::Settings,
    /// Open live streams per user, capped.
    pub streams: Arc<stream::Streams>,
}

/// The router under construction and every `(method, path)` it registered; the route-table
/// test compares these with [`auth::rules::RULES`].
pub struct Routes {
    router: Router<AppState>,
    /// What was registered, in order.
    pub registered: Vec<(&'static str, &'static str)>,
}

impl Routes {
    fn new() -> Self {
        Routes { router: Router::new(), registered: Vec::new() }
    }

    /// Registers `method` on `path` (`route` must answer that method).
    pub fn add(mut self, method: &'static str, path: &'static str, route: MethodRouter<AppState>) -> Self {
        self.registered.push((method, path));
        self.router = self.router.route(path, route);
        self
    }
}

/// Every route of the server, before the access middleware.
pub fn routes() -> Routes {
    use axum::routing::{delete, patch, put};
    let unlimited = || DefaultBodyLimit::disable();
    Routes::new()
        .add("GET", "/health", get(|| async { Json(json!({"status": "ok"})) }))
        .add("GET", "/startup", get(|| async { Json(json!({"status": "started"})) }))
        .add("GET", "/ready", get(ready))
        .add("GET", "/api/v1/openapi.json", get(|| async { Json(openapi::document()) }))
        .add("GET", "/api/v1/jobs", get(api::list_jobs))
        .add("POST", "/api/v1/jobs", post(api::create_job))
        .add("GET", "/api/v1/jobs/{name}", get(api::get_job))
        .add("PUT", "/api/v1/jobs/{name}", put(api::update_job))
        .add("DELETE", "/api/v1/jobs/{name}", delete(api::delete_job))
        .add("POST", "/api/v1/jobs/{name}/builds", post(api::trigger))
        .add("GET", "/api/v1/jobs/{name}/builds/{number}", get(api::get_build_by_number))
        .add("GET", "/api/v1/builds", get(api::list_builds))
        .add("GET", "/api/v1/builds/{id}", get(api::get_build))
        .add("GET", "/api/v1/builds/{id}/tests", get(api::build_tests))
        .add("POST", "/api/v1/builds/{id}/cancel", post(api::cancel))
        .add("POST", "/api/v1/builds/{id}/retry", post(api::retry))
        .add("GET", "/api/v1/builds/{id}/events", get(stream::build_events))
        .add("GET", "/api/v1/builds/{id}/jobs/{job}/logs", get(stream::logs))
        .add("GET", "/api/v1/builds/{id}/jobs/{job}/logs/stream", get(stream::log_stream))
        .add("GET", "/api/v1/secrets", get(api::list_secrets))
        .add("PUT", "/api/v1/secrets/{name}", put(api::set_secret))
        .add("DELETE", "/api/v1/secrets/{name}", delete(api::delete_secret))
        .add("GET", "/api/v1/webhooks", get(webhooks::route::list))
        .add("POST", "/api/v1/webhooks/{id}/replay", post(webhooks::route::replay))
        .add("GET", "/api/v1/schedules", get(schedules::list))
        .add("POST", "/api/v1/schedules", post(schedules::create))
        .add("DELETE", "/api/v1/schedules/{id}", delete(schedules::delete))
        .add("GET", "/api/v1/builds/{id}/artifacts", get(storage::list_artifacts))
        .add("DELETE", "/api/v1/builds/{id}/artifacts/{name}", delete(storage::delete_artifact))
        .add("GET", "/api/v1/artifacts/{id}", get(storage::download))
        .add("GET", "/api/v1/caches", get(storage::list_caches))
        .add("DELETE", "/api/v1/caches/{id}", delete(storage::delete_cache))
        .add("GET", "/api/v1/storage", get(storage::report))
        .add("POST", "/api/v1/storage/prune", post(storage::prune))
        .add("GET", "/api/v1/agents", get(agent_api::list))
        .add("GET", "/api/v1/agent-tokens", get(agent_api::list_tokens))
        .add("POST", "/api/v1/agent-tokens", post(agent_api::create_token))
        .add("DELETE", "/api/v1/agent-tokens/{id}", delete(agent_api::revoke_token))
        .add("POST", "/api/v1/agent/register", post(agent_api::register))
        .add("POST", "/api/v1/agent/lease", post(agent_api::lease))
        .add("POST", "/api/v1/agent/leases/{entry}/{action}", post(agent_api::lease_action))
        .add("POST", "/api/v1/agent/state", post(agent_api::state))
        .add("PUT", "/api/v1/agent/leases/{entry}/blobs", put(agent_api::put_blob).layer(unlimited()))
        .add("GET", "/api/v1/agent/leases/{entry}/blobs/{sha256}", get(agent_api::get_blob))
        .add("PUT", "/api/v1/agent/leases/{entry}/caches", put(agent_api::put_cache).layer(unlimited()))
        .add("GET", "/api/v1/agent/leases/{entry}/caches/{id}", get(agent_api::get_cache))
        .add("GET", "/api/v1/agent/leases/{entry}/plugins/{digest}", get(agent_api::get_plugin))
        .add(
            "POST",
            "/hooks/{provider}/{job}",
            post(webhooks::route::receive).layer(DefaultBodyLimit::max(webhooks::route::HOOK_BODY_LIMIT)),
        )
        .add("GET", "/login", get(auth::routes::login_form))
        .add("POST", "/login", post(auth::routes::login))
        .add("POST", "/logout", post(auth::routes::logout))
        .add("POST", "/api/v1/login", post(auth::routes::api_login))
        .add("GET", "/api/v1/me", get(auth::routes::whoami))
        .add("POST", "/api/v1/me/password", post(auth::routes::change_password))
        .add("DELETE", "/api/v1/me/token", delete(auth::routes::revoke_own_token))
        .add("GET", "/api/v1/tokens", get(auth::routes::list_tokens))
        .add("POST", "/api/v1/tokens", post(auth::routes::create_token))
        .add("DELETE", "/api/v1/tokens/{id}", delete(auth::routes::revoke_token))
        .add("GET", "/api/v1/users", get(auth::routes::list_users))
        .add("POST", "/api/v1/users", post(auth::routes::create_user))
        .add("PATCH", "/api/v1/users/{name}", patch(auth::routes::change_user))
        .add("GET", "/api/v1/audit", get(auth::routes::audit))
        .add("GET", "/api/v1/audit/verify", get(auth::routes::audit_verify))
        .merge_views()
}

/// The whole router: every route behind the access middleware, JSON or HTML 404s for the rest,
/// and the security headers on every answer.
pub fn router(state: AppState) -> Router {
    routes()
        .router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authorize))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(auth::security_headers))
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

/// Ready when the database answers. `plugins` says whether the builtin plugins are still being
/// compiled (the first start of a database): the server takes work meanwhile, and what needs a
/// builtin waits for it.
async fn ready(State(s): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let plugins = s.builds.plugins.as_ref().map(|p| p.builtin_progress()).map(|p| {
        if !p.pending.is_empty() {
            json!({"status": "compiling", "pending": p.pending})
        } else if !p.failed.is_empty() {
            // Names only: this route answers anyone; the reasons are in the server's log.
            json!({"status": "failed", "failed": p.failed.keys().collect::<Vec<_>>()})
        } else {
            json!({"status": "ready"})
        }
    });
    match s.builds.store.queue_depth().await {
        Ok(depth) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "database": "ok", "queue_depth": depth, "plugins": plugins})),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not_ready", "database": e.to_string()}))),
    }
}
