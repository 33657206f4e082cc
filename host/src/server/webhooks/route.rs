//! `POST /hooks/{provider}/{job}`: the HTTP side of the SCM webhook receivers. A delivery
//! without a delivery id is refused (400: it could not be told from a replay); the rest is
//! verified against the job's webhook secrets (constant time, two secrets during a rotation),
//! recorded with its delivery id and the digest of its body (a repeated id, or a body already
//! received under another id, is answered 200 `duplicate` and starts nothing), parsed,
//! and turned into a build of the commit it names; planning happens after the answer and checks
//! the event against the pipeline's `on:` (a push the pipeline does not want ends `skipped`).
//! `GET /api/v1/webhooks` lists recorded deliveries.

use super::{self as webhooks, Event, PrAction, Provider};
use crate::engine::builds::{TriggerContext, TriggerRequest};
use crate::server::AppState;
use crate::server::error::ApiError;
use crate::store::webhooks::{DeliveryOutcome, DeliveryRecord, NewDelivery};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Instant;

/// Counts each job's verified webhook deliveries over the last minute; past the limit they are
/// answered 429 with `Retry-After` until the oldest leaves the window.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: usize,
    window: std::time::Duration,
    seen: std::sync::Mutex<std::collections::HashMap<String, std::collections::VecDeque<Instant>>>,
}

impl RateLimiter {
    /// At most `per_minute` deliveries per job and minute (0: no limit).
    pub fn new(per_minute: usize) -> Self {
        Self::with_window(per_minute, std::time::Duration::from_secs(60))
    }

    /// At most `limit` events per key in any `window` (0: no limit).
    pub fn with_window(limit: usize, window: std::time::Duration) -> Self {
        RateLimiter { per_minute: limit, window, seen: std::sync::Mutex::new(std::collections::HashMap::new()) }
    }

    /// The limit.
    pub fn per_minute(&self) -> usize {
        self.per_minute
    }

    /// Counts a delivery for `job`; `Some(seconds)` to wait when it is over the limit.
    pub fn check(&self, job: &str) -> Option<u64> {
        if self.per_minute == 0 {
            return None;
        }
        let window = self.window;
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() > 4096 {
            // Forget keys (client addresses, users) quiet for a whole window.
            seen.retain(|_, t| t.back().is_some_and(|last| now.duration_since(*last) < window));
        }
        let times = seen.entry(job.to_string()).or_default();
        while times.front().is_some_and(|t| now.duration_since(*t) >= window) {
            times.pop_front();
        }
        if times.len() >= self.per_minute {
            let oldest = times.front().copied().unwrap_or(now);
            return Some(window.saturating_sub(now.duration_since(oldest)).as_secs().max(1));
        }
        times.push_back(now);
        None
    }
}

/// A job and its active webhook secrets (decrypted), as the receiver needs them.
#[derive(Debug)]
pub struct HookJob {
    /// The job.
    pub job: crate::store::jobs::JobRecord,
    /// Its webhook secrets, current first.
    pub secrets: Vec<String>,
}

/// Jobs and their webhook secrets kept for [`HookCache::TTL`], so that a burst of deliveries
/// reads and decrypts them once. This server forgets a job as soon as it changes it; a change
/// made through another server sharing the database is seen within the TTL (during a rotation
/// the previous secret stays valid anyway).
#[derive(Debug, Default)]
pub struct HookCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (Instant, std::sync::Arc<HookJob>)>>,
}

impl HookCache {
    /// How long an entry is used.
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(2);

    /// The job `name` with its secrets, from the cache or the store.
    pub async fn get(&self, s: &AppState, name: &str) -> Result<std::sync::Arc<HookJob>, crate::store::StoreError> {
        {
            let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, job)) = entries.get(name)
                && at.elapsed() < Self::TTL
            {
                return Ok(job.clone());
            }
        }
        let job = s.builds.store.job(name).await?;
        let secrets = s.builds.store.webhook_secrets(&s.builds.keys, &job.name).await?;
        let entry = std::sync::Arc::new(HookJob { job, secrets });
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() > 10_000 {
            entries.retain(|_, (at, _)| at.elapsed() < Self::TTL);
        }
        entries.insert(name.to_string(), (Instant::now(), entry.clone()));
        Ok(entry)
    }

    /// Forgets a job (it was changed or deleted).
    pub fn forget(&self, name: &str) {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
    }
}

/// Largest webhook body accepted (forges send push payloads of a few hundred KB at most).
pub const HOOK_BODY_LIMIT: usize = 5 * 1024 * 1024;

/// Receives one delivery.
pub async fn receive(
    State(s): State<AppState>,
    Path((provider, job)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let provider: Provider = provider.parse().map_err(|_| {
        ApiError::not_found(format!("no webhook provider `{provider}` (github, gitlab, gitea, bitbucket, generic)"))
    })?;
    let body = body.map_err(|e| ApiError {
        status: e.status(),
        code: "payload_too_large",
        message: format!("the webhook body could not be read: {e}"),
        details: json!({"limit_bytes": HOOK_BODY_LIMIT}),
    })?;
    let store = &s.builds.store;
    let hook = s.hook_cache.get(&s, &job).await?;
    let record = &hook.job;
    let Some(delivery_id) = webhooks::delivery_id(provider, &headers) else {
        let names = webhooks::delivery_headers(provider);
        tracing::warn!(job = %record.name, provider = provider.as_str(), "webhook refused: no delivery id");
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "missing_delivery_id",
            message: format!(
                "the {} webhook has no delivery id: header `{}` is missing or not 1 to 128 printable characters{}; \
                 a delivery without one cannot be told from a replay and is refused",
                provider.as_str(),
                names.join("` or `"),
                if provider == Provider::Generic { " without `.`" } else { "" },
            ),
            details: json!({"headers": names}),
        });
    };
    let secret_refs: Vec<&str> = hook.secrets.iter().map(String::as_str).collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    if let Err(e) = webhooks::verify(provider, &headers, &body, &secret_refs, now) {
        tracing::warn!(job = %record.name, provider = provider.as_str(), "webhook refused: {e}");
        return Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: format!("the {} webhook could not be verified: {e}", provider.as_str()),
            details: json!(null),
        });
    }
    if let Some(retry_after) = s.hook_limiter.check(&record.name) {
        tracing::warn!(job = %record.name, "webhook rate limit reached; retry after {retry_after} s");
        let error = ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            message: format!(
                "job `{}` received more than {} webhook deliveries in a minute; retry after {retry_after} s",
                record.name,
                s.hook_limiter.per_minute()
            ),
            details: json!({"retry_after_seconds": retry_after}),
        };
        let mut response = error.into_response();
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(retry_after));
        return Ok(response);
    }
    let event = webhooks::event_name(provider, &headers).unwrap_or_else(|| "unknown".into());
    let digest = webhooks::body_digest(&body);
    let new = NewDelivery {
        job: &record.name,
        provider: provider.as_str(),
        event: &event,
        delivery_id: Some(&delivery_id),
        body_digest: Some(&digest),
        payload: &body,
    };
    let (mut outcome, action) = decide(provider, &event, webhooks::parse(provider, &headers, &body));
    outcome.processing_ms = started.elapsed().as_millis() as i64;
    // One write for what starts no build; a build adds its id afterwards.
    let Some(id) = store.record_delivery(&new, &outcome).await? else {
        return duplicate(&s, &record.name, provider, &delivery_id).await;
    };
    act(&s, &record.name, provider, id, outcome, action, started).await.map(IntoResponse::into_response)
}

/// The answer to a delivery the job has had already: 200 `duplicate`, nothing started. A
/// repeated delivery id is a forge's retry; the same body under a new id is a replay of a
/// captured request (the forges do not sign their ids) and is logged as such.
async fn duplicate(s: &AppState, job: &str, provider: Provider, delivery_id: &str) -> Result<Response, ApiError> {
    let retry = s.builds.store.delivery_seen(job, provider.as_str(), delivery_id).await?;
    let reason = if retry {
        "this delivery id was received before"
    } else {
        tracing::warn!(
            job,
            provider = provider.as_str(),
            delivery = delivery_id,
            "webhook body received before under another delivery id (a replay?); nothing started"
        );
        "this body was received before under another delivery id"
    };
    let body = json!({"status": "duplicate", "delivery": delivery_id, "triggered": false, "reason": reason});
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// What a delivery asks for, decided before it is recorded.
enum Action {
    /// Answer with this status and body (the delivery id is added).
    Answer(StatusCode, Value),
    /// The payload is not valid: 400 with this message.
    Invalid(String),
    /// Start this build (`push` or `pull_request`).
    Build(Box<TriggerRequest>, &'static str),
}

/// The outcome to record and the action for a parsed delivery.
fn decide(provider: Provider, event: &str, parsed: Result<Event, webhooks::ParseError>) -> (DeliveryOutcome, Action) {
    let mut outcome = DeliveryOutcome { status: "accepted", ..DeliveryOutcome::default() };
    let action = match parsed {
        Err(e) => {
            outcome.status = "invalid";
            outcome.detail = Some(e.to_string());
            Action::Invalid(format!("the {} `{event}` payload is not valid: {e}", provider.as_str()))
        }
        Ok(Event::Ping) => {
            outcome.status = "ignored";
            outcome.detail = Some("ping".into());
            Action::Answer(StatusCode::OK, json!({"status": "pong"}))
        }
        Ok(Event::Ignored { event }) => {
            outcome.status = "ignored";
            outcome.detail = Some(format!("event `{event}` does not start builds"));
            Action::Answer(StatusCode::ACCEPTED, json!({"status": "ignored", "event": event}))
        }
        Ok(Event::Push(push)) => {
            outcome.repository = push.repository.clone();
            outcome.git_ref = push.git_ref.clone();
            outcome.commit_sha = push.after.clone();
            if push.deleted {
                outcome.status = "skipped";
                outcome.detail = Some("a deleted branch or tag never builds".into());
                Action::Answer(StatusCode::ACCEPTED, json!({"status": "skipped", "reason": "deleted"}))
            } else {
                let branch = match (&push.branch, &push.tag) {
                    (Some(b), _) => b.clone(),
                    (None, Some(t)) => format!("refs/tags/{t}"),
                    (None, None) => push.git_ref.clone(),
                };
                let context = TriggerContext {
                    event: if push.tag.is_some() { "tag" } else { "push" }.into(),
                    branch: push.branch.clone(),
                    tag: push.tag.clone(),
                    changed_files: push.changed_files.clone(),
                    before: push.before.clone(),
                    ..TriggerContext::default()
                };
                let req = TriggerRequest {
                    branch: Some(branch),
                    commit: Some(push.after.clone()),
                    context: Some(context),
                    ..Default::default()
                };
                Action::Build(Box::new(req), "push")
            }
        }
        Ok(Event::PullRequest(pr)) => {
            outcome.repository = pr.repository.clone();
            outcome.git_ref = pr.head_ref.clone();
            outcome.commit_sha = pr.head_sha.clone();
            match pr.action {
                PrAction::Opened | PrAction::Synchronize | PrAction::Reopened => {
                    let context = TriggerContext {
                        event: "pull_request".into(),
                        branch: Some(pr.head_ref.clone()),
                        base: Some(pr.base_ref.clone()),
                        pr_number: Some(pr.number),
                        pr_action: Some(pr.action.as_str().to_string()),
                        fork: pr.is_fork(),
                        ..TriggerContext::default()
                    };
                    let req = TriggerRequest {
                        branch: Some(pr.head_ref.clone()),
                        commit: Some(pr.head_sha.clone()),
                        context: Some(context),
                        ..Default::default()
                    };
                    Action::Build(Box::new(req), "pull_request")
                }
                other => {
                    outcome.status = "ignored";
                    outcome.detail = Some(format!("pull request action {other:?} does not build"));
                    Action::Answer(StatusCode::ACCEPTED, json!({"status": "ignored"}))
                }
            }
        }
    };
    (outcome, action)
}

/// Carries out a recorded delivery's action.
async fn act(
    s: &AppState,
    job: &str,
    provider: Provider,
    id: i64,
    mut outcome: DeliveryOutcome,
    action: Action,
    started: Instant,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    match action {
        Action::Answer(code, mut body) => {
            body["id"] = json!(id);
            Ok((code, Json(body)))
        }
        Action::Invalid(message) => Err(ApiError::bad_request(message)),
        Action::Build(mut req, trigger) => {
            if let Some(context) = req.context.as_mut() {
                context.delivery = Some(id);
            }
            let answer = start(s, job, *req, trigger, provider, id, &mut outcome).await;
            outcome.processing_ms = started.elapsed().as_millis() as i64;
            s.builds.store.finish_delivery(id, &outcome).await?;
            answer
        }
    }
}

/// Starts the build a delivery asks for.
async fn start(
    s: &AppState,
    job: &str,
    req: TriggerRequest,
    trigger: &str,
    provider: Provider,
    id: i64,
    outcome: &mut DeliveryOutcome,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    match s.builds.trigger(job, req, trigger, &format!("webhook:{}", provider.as_str())).await {
        Ok(build) => {
            outcome.build_id = Some(build.id);
            Ok((StatusCode::ACCEPTED, Json(json!({"status": "accepted", "build": build.id, "id": id}))))
        }
        Err(e) => {
            outcome.status = "failed";
            outcome.detail = Some(e.to_string());
            Err(e.into())
        }
    }
}

/// Replays a recorded delivery: its payload is processed again as a new delivery (same job,
/// provider and event; no signature check, it was verified when it arrived).
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/replay", params(("id" = i64, Path, description = "delivery id")), responses((status = 202, body = Object), (status = 404, body = crate::server::error::ErrorBody)))]
pub async fn replay(
    State(s): State<AppState>,
    crate::server::error::ApiPath(id): crate::server::error::ApiPath<i64>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let started = Instant::now();
    let (record, payload) = s.builds.store.delivery_payload(id).await?;
    let provider: Provider = record
        .provider
        .parse()
        .map_err(|_| ApiError::bad_request(format!("unknown provider `{}`", record.provider)))?;
    let mut headers = HeaderMap::new();
    if let (Some(name), Ok(value)) = (webhooks::event_header(provider), record.event.parse()) {
        headers.insert(name, value);
    }
    headers.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    let replay_id = format!("replay-{id}-{}", crate::store::now_ms());
    let new = NewDelivery {
        job: &record.job,
        provider: provider.as_str(),
        event: &record.event,
        delivery_id: Some(&replay_id),
        // An operator's replay is meant to run again: it is not held to the body's digest.
        body_digest: None,
        payload: &payload,
    };
    let (outcome, action) = decide(provider, &record.event, webhooks::parse(provider, &headers, &payload));
    let new_id = s
        .builds
        .store
        .record_delivery(&new, &outcome)
        .await?
        .ok_or_else(|| ApiError::bad_request("replayed twice at once"))?;
    tracing::info!(job = %record.job, delivery = id, replay = new_id, "webhook delivery replayed");
    act(&s, &record.job, provider, new_id, outcome, action, started).await
}

/// Query of `GET /api/v1/webhooks`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// Only this job's deliveries.
    job: Option<String>,
    /// How many (default 50).
    limit: Option<i64>,
}

/// `GET /api/v1/webhooks`: recorded deliveries, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    /// The deliveries.
    deliveries: Vec<DeliveryRecord>,
}

/// Lists recorded webhook deliveries, newest first (`?job=NAME`, `?limit=N`, at most 500).
#[utoipa::path(get, path = "/api/v1/webhooks", params(DeliveryQuery), responses((status = 200, body = DeliveryList)))]
pub async fn list(State(s): State<AppState>, Query(q): Query<DeliveryQuery>) -> Result<Json<DeliveryList>, ApiError> {
    let deliveries = s.builds.store.deliveries(q.job.as_deref(), q.limit.unwrap_or(50)).await?;
    Ok(Json(DeliveryList { deliveries }))
}
