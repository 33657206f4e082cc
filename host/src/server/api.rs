//! Jobs, builds and secrets: create, list, get, trigger, cancel, retry.

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::engine::builds::TriggerRequest;
use crate::status::Status;
use crate::store::builds::BuildFilter;
use crate::store::jobs::NewJob;
use crate::store::secrets::SecretScope;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

/// Body of `POST /api/v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    name: String,
    repo_url: String,
    #[serde(default)]
    default_branch: Option<String>,
    #[serde(default)]
    pipeline_path: Option<String>,
}

fn valid_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid job name `{name}`: use letters, digits, `-`, `_` and `.` (at most 100)"
        )))
    }
}

pub async fn create_job(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateJob>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    valid_name(&body.name)?;
    if body.repo_url.trim().is_empty() {
        return Err(ApiError::bad_request("`repo_url` must not be empty"));
    }
    let job = s
        .builds
        .store
        .create_job(&NewJob {
            name: body.name,
            repo_url: body.repo_url,
            default_branch: body.default_branch.unwrap_or_else(|| "main".into()),
            pipeline_path: body.pipeline_path,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!(job))))
}

pub async fn list_jobs(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"jobs": s.builds.store.jobs().await?})))
}

pub async fn get_job(State(s): State<AppState>, ApiPath(name): ApiPath<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.builds.store.job(&name).await?)))
}

/// Body of `PUT /api/v1/jobs/{name}`: the fields to change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateJob {
    #[serde(default)]
    repo_url: Option<String>,
    #[serde(default)]
    default_branch: Option<String>,
    #[serde(default, with = "double_option")]
    pipeline_path: Option<Option<String>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

pub async fn update_job(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateJob>,
) -> Result<Json<Value>, ApiError> {
    if body.repo_url.as_deref().is_some_and(|u| u.trim().is_empty()) {
        return Err(ApiError::bad_request("`repo_url` must not be empty"));
    }
    let job = s
        .builds
        .store
        .update_job(
            &name,
            body.repo_url.as_deref(),
            body.default_branch.as_deref(),
            body.pipeline_path.as_ref().map(|p| p.as_deref()),
        )
        .await?;
    Ok(Json(json!(job)))
}

pub async fn delete_job(State(s): State<AppState>, ApiPath(name): ApiPath<String>) -> Result<StatusCode, ApiError> {
    s.builds.store.delete_job(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn trigger(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // The body is optional: an empty one triggers the default branch.
    let req: TriggerRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TriggerRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_json",
            message: format!("invalid trigger request: {e}"),
            details: Value::Null,
        })?
    };
    if let Some(c) = &req.commit
        && (c.len() != 40 || !c.chars().all(|ch| ch.is_ascii_hexdigit()))
    {
        return Err(ApiError::bad_request(format!("`commit` must be a full 40-character SHA, got `{c}`")));
    }
    let build = s.builds.trigger(&name, req, "manual", "api").await?;
    Ok((StatusCode::CREATED, Json(json!(build))))
}

/// Query of `GET /api/v1/builds`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    job: Option<String>,
    status: Option<String>,
    branch: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

pub async fn list_builds(State(s): State<AppState>, ApiQuery(q): ApiQuery<ListQuery>) -> Result<Json<Value>, ApiError> {
    let status = match &q.status {
        None => None,
        Some(text) => Some(serde_json::from_value::<Status>(Value::String(text.clone())).map_err(|_| {
            ApiError::bad_request(format!(
                "unknown status `{text}`: queued, running, success, failure, cancelled, timed_out, skipped, error"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 200"));
    }
    let builds = s
        .builds
        .store
        .list_builds(&BuildFilter { job: q.job, status, branch: q.branch, before: q.before, limit })
        .await?;
    let next = if builds.len() as i64 == limit { builds.last().map(|b| b.id) } else { None };
    Ok(Json(json!({"builds": builds, "next_cursor": next})))
}

pub async fn get_build(State(s): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<Value>, ApiError> {
    let store = &s.builds.store;
    let build = store.build_summary(id).await?;
    let mut jobs = Vec::new();
    for j in store.build_jobs(id).await? {
        let steps = store.steps(j.id).await?;
        jobs.push(json!({"job": j, "steps": steps}));
    }
    Ok(Json(json!({"build": build, "jobs": jobs})))
}

pub async fn cancel(State(s): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<Value>, ApiError> {
    s.builds.cancel(id).await?;
    Ok(Json(json!(s.builds.store.build_summary(id).await?)))
}

pub async fn retry(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let build = s.builds.retry(id, "api").await?;
    Ok((StatusCode::CREATED, Json(json!(build))))
}

/// Query of the secret routes: `?job=NAME` for a job's scope.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeQuery {
    job: Option<String>,
}

fn scope(q: &ScopeQuery) -> SecretScope {
    match &q.job {
        Some(j) => SecretScope::Job(j.clone()),
        None => SecretScope::Global,
    }
}

/// Body of `PUT /api/v1/secrets/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSecret {
    value: String,
}

pub async fn list_secrets(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ScopeQuery>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"secrets": s.builds.store.secret_names(&scope(&q)).await?})))
}

pub async fn set_secret(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ScopeQuery>,
    ApiJson(body): ApiJson<SetSecret>,
) -> Result<StatusCode, ApiError> {
    if !chengis_pipeline::decode::is_env_name(&name) {
        return Err(ApiError::bad_request(format!(
            "invalid secret name `{name}`: letters, digits and `_`, not starting with a digit"
        )));
    }
    if body.value.chars().count() < crate::exec::mask::MIN_SECRET_LEN {
        return Err(ApiError::bad_request(
            "a secret value must be at least 4 characters long, or masking it would hide ordinary text",
        ));
    }
    s.builds.store.set_secret(&s.keys, &scope(&q), &name, &body.value).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn delete_secret(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ScopeQuery>,
) -> Result<StatusCode, ApiError> {
    s.builds.store.delete_secret(&scope(&q), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
