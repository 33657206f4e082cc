//! Jobs, builds and secrets: create, list, get, trigger, cancel, retry.

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::engine::builds::TriggerRequest;
use crate::status::Status;
use crate::store::builds::BuildFilter;
use crate::store::builds::{BuildJobRecord, BuildSummary, StepRecord};
use crate::store::jobs::JobRecord;
use crate::store::jobs::{JobUpdate, NewJob};
use crate::store::secrets::SecretScope;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// `GET /api/v1/jobs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    jobs: Vec<JobRecord>,
}

/// `GET /api/v1/builds`: a page of builds and the cursor of the next (older) page.
#[derive(Debug, Serialize, ToSchema)]
pub struct BuildList {
    builds: Vec<BuildSummary>,
    next_cursor: Option<i64>,
}

/// A job of a build with its steps.
#[derive(Debug, Serialize, ToSchema)]
pub struct BuildJobDetail {
    job: BuildJobRecord,
    steps: Vec<StepRecord>,
    /// Why a queued job waits: no registered agent has its labels or resources.
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting_reason: Option<String>,
}

/// `GET /api/v1/builds/{id}`: the build, its jobs (with `needs`: the DAG) and their steps.
#[derive(Debug, Serialize, ToSchema)]
pub struct BuildDetail {
    build: BuildSummary,
    jobs: Vec<BuildJobDetail>,
    /// What the policies said about the plan (every reason), when any policy denied or warned.
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<PolicyResult>,
}

/// The policies' reasons for a build.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyResult {
    /// Why the build was refused, one entry per reason.
    pub denials: Vec<String>,
    /// Warnings of policies that allowed it.
    pub warnings: Vec<String>,
}

/// What the policies said about build `id` (their newest `policy` event), if anything.
pub async fn policy_of(store: &crate::store::Store, id: i64) -> Result<Option<PolicyResult>, crate::store::StoreError> {
    Ok(store.last_event(id, "policy").await?.and_then(|e| serde_json::from_value(e.payload).ok()))
}

/// `GET /api/v1/builds/{id}/tests`: the test cases the build's steps reported.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestResults {
    /// Cases that passed.
    passed: usize,
    /// Cases that failed or errored.
    failed: usize,
    /// Cases that were skipped.
    skipped: usize,
    /// Every case, by job and step.
    tests: Vec<crate::store::tests_results::TestResult>,
}

/// `GET /api/v1/secrets`: names only; values are never returned.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretList {
    secrets: Vec<String>,
}

/// Body of `POST /api/v1/jobs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    name: String,
    repo_url: String,
    #[serde(default)]
    default_branch: Option<String>,
    #[serde(default)]
    pipeline_path: Option<String>,
    #[serde(default)]
    submodules: bool,
    /// The secret SCM webhooks of this job are signed with (write-only).
    #[serde(default)]
    webhook_secret: Option<String>,
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

/// Creates a job.
#[utoipa::path(post, path = "/api/v1/jobs", request_body = CreateJob, responses((status = 201, body = JobRecord), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_job(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateJob>,
) -> Result<(StatusCode, Json<JobRecord>), ApiError> {
    valid_name(&body.name)?;
    if body.repo_url.trim().is_empty() {
        return Err(ApiError::bad_request("`repo_url` must not be empty"));
    }
    if let Some(secret) = &body.webhook_secret {
        valid_webhook_secret(secret)?;
    }
    let job = s
        .builds
        .store
        .create_job(&NewJob {
            name: body.name,
            repo_url: body.repo_url,
            default_branch: body.default_branch.unwrap_or_else(|| "main".into()),
            pipeline_path: body.pipeline_path,
            submodules: body.submodules,
        })
        .await?;
    if let Some(secret) = &body.webhook_secret {
        s.builds.store.set_webhook_secret(&s.builds.keys, &job.name, secret).await?;
        s.hook_cache.forget(&job.name);
    }
    Ok((StatusCode::CREATED, Json(job)))
}

/// Lists jobs.
#[utoipa::path(get, path = "/api/v1/jobs", responses((status = 200, body = JobList)))]
pub async fn list_jobs(State(s): State<AppState>) -> Result<Json<JobList>, ApiError> {
    Ok(Json(JobList { jobs: s.builds.store.jobs().await? }))
}

/// One job.
#[utoipa::path(get, path = "/api/v1/jobs/{name}", params(("name" = String, Path, description = "job name")), responses((status = 200, body = JobRecord), (status = 404, body = ErrorBody)))]
pub async fn get_job(State(s): State<AppState>, ApiPath(name): ApiPath<String>) -> Result<Json<JobRecord>, ApiError> {
    Ok(Json(s.builds.store.job(&name).await?))
}

/// Body of `PUT /api/v1/jobs/{name}`: the fields to change (`pipeline_path: null` clears it).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateJob {
    #[serde(default)]
    repo_url: Option<String>,
    #[serde(default)]
    default_branch: Option<String>,
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pipeline_path: Option<Option<String>>,
    #[serde(default)]
    submodules: Option<bool>,
    /// A new webhook secret; the previous one stays valid until the next change (rotation).
    #[serde(default)]
    webhook_secret: Option<String>,
    /// Keep only this job's newest N finished builds (0: keep all); older ones are deleted by
    /// the maintenance loop.
    #[serde(default)]
    keep_builds: Option<i64>,
    /// Give builds of pull requests from forks the job's secrets (admins only: a fork's
    /// pipeline file decides what its steps do with them).
    #[serde(default)]
    fork_secrets: Option<bool>,
}

fn valid_webhook_secret(secret: &str) -> Result<(), ApiError> {
    if secret.len() < 16 || secret.len() > 256 || secret.chars().any(char::is_control) {
        return Err(ApiError::bad_request("`webhook_secret` must be 16 to 256 characters without control characters"));
    }
    Ok(())
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

/// Changes a job.
#[utoipa::path(put, path = "/api/v1/jobs/{name}", params(("name" = String, Path, description = "job name")), request_body = UpdateJob, responses((status = 200, body = JobRecord), (status = 404, body = ErrorBody)))]
pub async fn update_job(
    State(s): State<AppState>,
    Extension(caller): Extension<crate::server::auth::Caller>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateJob>,
) -> Result<Json<JobRecord>, ApiError> {
    if body.fork_secrets == Some(true) && !caller.is_admin_with(crate::server::auth::rules::Scope::ServerAdmin) {
        return Err(ApiError::forbidden(
            "`fork_secrets` gives a fork's pull requests the job's secrets: only an admin (signed in, or with a `server:admin` token) can turn it on",
        ));
    }
    if body.repo_url.as_deref().is_some_and(|u| u.trim().is_empty()) {
        return Err(ApiError::bad_request("`repo_url` must not be empty"));
    }
    if body.keep_builds.is_some_and(|n| n < 0) {
        return Err(ApiError::bad_request("`keep_builds` must be 0 (keep all) or a positive number"));
    }
    if let Some(secret) = &body.webhook_secret {
        valid_webhook_secret(secret)?;
    }
    let job = s
        .builds
        .store
        .update_job(
            &name,
            &JobUpdate {
                repo_url: body.repo_url.as_deref(),
                default_branch: body.default_branch.as_deref(),
                pipeline_path: body.pipeline_path.as_ref().map(|p| p.as_deref()),
                submodules: body.submodules,
                fork_secrets: body.fork_secrets,
            },
        )
        .await?;
    s.hook_cache.forget(&job.name);
    if let Some(secret) = &body.webhook_secret {
        s.builds.store.set_webhook_secret(&s.builds.keys, &job.name, secret).await?;
        s.hook_cache.forget(&job.name);
    }
    if let Some(keep) = body.keep_builds {
        s.builds.store.set_keep_builds(&job.name, Some(keep).filter(|n| *n > 0)).await?;
        return Ok(Json(s.builds.store.job(&job.name).await?));
    }
    Ok(Json(job))
}

/// Deletes a job and its builds.
#[utoipa::path(delete, path = "/api/v1/jobs/{name}", params(("name" = String, Path, description = "job name")), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_job(State(s): State<AppState>, ApiPath(name): ApiPath<String>) -> Result<StatusCode, ApiError> {
    s.builds.store.delete_job(&name).await?;
    s.hook_cache.forget(&name);
    Ok(StatusCode::NO_CONTENT)
}

/// Who a build started through the API is attributed to: the signed-in user or the owner of
/// the API token (the access middleware put the caller in the request's extensions).
fn who(caller: Option<&Extension<Caller>>) -> String {
    caller.and_then(|Extension(c)| c.user.as_ref()).map_or_else(|| "api".to_string(), |u| u.username.clone())
}

/// Triggers a build (the body is optional: the default branch, no parameters).
#[utoipa::path(post, path = "/api/v1/jobs/{name}/builds", params(("name" = String, Path, description = "job name")), request_body = Option<TriggerRequest>, responses((status = 201, body = BuildSummary), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn trigger(
    State(s): State<AppState>,
    caller: Option<Extension<Caller>>,
    ApiPath(name): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<BuildSummary>), ApiError> {
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
    let build = s.builds.trigger(&name, req, "manual", &who(caller.as_ref())).await?;
    Ok((StatusCode::CREATED, Json(build)))
}

/// Query of `GET /api/v1/builds`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only builds of this job.
    job: Option<String>,
    /// Only builds with this status.
    status: Option<String>,
    /// Only builds of this branch.
    branch: Option<String>,
    /// Cursor: only builds older than this id (the previous page's `next_cursor`).
    before: Option<i64>,
    /// Page size, 1 to 200 (default 50).
    limit: Option<i64>,
}

/// Lists builds, newest first, with filters and cursor pagination (`before`).
#[utoipa::path(get, path = "/api/v1/builds", params(ListQuery), responses((status = 200, body = BuildList), (status = 400, body = ErrorBody)))]
pub async fn list_builds(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<BuildList>, ApiError> {
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
        .list_builds(&BuildFilter { job: q.job, status, branch: q.branch, before: q.before, after: None, limit })
        .await?;
    let next_cursor = if builds.len() as i64 == limit { builds.last().map(|b| b.id) } else { None };
    Ok(Json(BuildList { builds, next_cursor }))
}

/// A build with its jobs and steps.
#[utoipa::path(get, path = "/api/v1/builds/{id}", params(("id" = i64, Path, description = "build id")), responses((status = 200, body = BuildDetail), (status = 404, body = ErrorBody)))]
pub async fn get_build(State(s): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<BuildDetail>, ApiError> {
    Ok(Json(build_detail(&s, id).await?))
}

/// A build by its job and number within the job (`hello#3`), with its jobs and steps: the same
/// answer as `GET /api/v1/builds/{id}`.
#[utoipa::path(get, path = "/api/v1/jobs/{name}/builds/{number}", params(("name" = String, Path, description = "job name"), ("number" = i64, Path, description = "the build's number within the job")), responses((status = 200, body = BuildDetail), (status = 404, body = ErrorBody)))]
pub async fn get_build_by_number(
    State(s): State<AppState>,
    ApiPath((name, number)): ApiPath<(String, i64)>,
) -> Result<Json<BuildDetail>, ApiError> {
    let id = s.builds.store.build_id_by_number(&name, number).await?;
    Ok(Json(build_detail(&s, id).await?))
}

async fn build_detail(s: &AppState, id: i64) -> Result<BuildDetail, ApiError> {
    let store = &s.builds.store;
    let build = store.build_summary(id).await?;
    let mut jobs = Vec::new();
    let mut steps_of = store.steps_of_build(id).await?;
    let mut waiting = store.waiting_reasons(id).await?;
    for j in store.build_jobs(id).await? {
        let steps = steps_of.remove(&j.id).unwrap_or_default();
        let waiting_reason = waiting.remove(&j.id).filter(|_| j.status == crate::status::Status::Queued);
        jobs.push(BuildJobDetail { job: j, steps, waiting_reason });
    }
    let policy = policy_of(store, id).await?;
    Ok(BuildDetail { build, jobs, policy })
}

/// The test cases a build's steps reported (e.g. with the `junit` plugin).
#[utoipa::path(get, path = "/api/v1/builds/{id}/tests", params(("id" = i64, Path, description = "build id")), responses((status = 200, body = TestResults), (status = 404, body = ErrorBody)))]
pub async fn build_tests(State(s): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<TestResults>, ApiError> {
    let store = &s.builds.store;
    store.build_summary(id).await?;
    let tests = store.test_results(id).await?;
    let count = |what: &[&str]| tests.iter().filter(|t| what.contains(&t.outcome.as_str())).count();
    let (passed, failed, skipped) = (count(&["passed"]), count(&["failed", "errored"]), count(&["skipped"]));
    Ok(Json(TestResults { passed, failed, skipped, tests }))
}

/// Cancels a build: waiting jobs end at once, running ones are stopped through their lease;
/// answers once the build has ended (`cancelled`), or after 10 s with the build as it is then
/// (still `running` while an agent stops a job).
#[utoipa::path(post, path = "/api/v1/builds/{id}/cancel", params(("id" = i64, Path, description = "build id")), responses((status = 200, body = BuildSummary), (status = 409, body = ErrorBody)))]
pub async fn cancel(State(s): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<BuildSummary>, ApiError> {
    let mut notices = s.builds.bus.subscribe();
    s.builds.cancel(id).await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let build = s.builds.store.build_summary(id).await?;
        if build.status.is_finished() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(build));
        }
        let _ = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + std::time::Duration::from_millis(250)),
            notices.recv(),
        )
        .await;
    }
}

/// Runs a finished build again as a new attempt linked to the first.
#[utoipa::path(post, path = "/api/v1/builds/{id}/retry", params(("id" = i64, Path, description = "build id")), responses((status = 201, body = BuildSummary), (status = 409, body = ErrorBody)))]
pub async fn retry(
    State(s): State<AppState>,
    caller: Option<Extension<Caller>>,
    ApiPath(id): ApiPath<i64>,
) -> Result<(StatusCode, Json<BuildSummary>), ApiError> {
    let build = s.builds.retry(id, &who(caller.as_ref())).await?;
    Ok((StatusCode::CREATED, Json(build)))
}

/// Query of the secret routes: `?job=NAME` for a job's scope.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ScopeQuery {
    /// A job's scope instead of the global one.
    job: Option<String>,
}

fn scope(q: &ScopeQuery) -> SecretScope {
    match &q.job {
        Some(j) => SecretScope::Job(j.clone()),
        None => SecretScope::Global,
    }
}

/// Body of `PUT /api/v1/secrets/{name}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSecret {
    value: String,
}

/// Names of the secrets of a scope.
#[utoipa::path(get, path = "/api/v1/secrets", params(ScopeQuery), responses((status = 200, body = SecretList)))]
pub async fn list_secrets(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ScopeQuery>,
) -> Result<Json<SecretList>, ApiError> {
    Ok(Json(SecretList { secrets: s.builds.store.secret_names(&scope(&q)).await? }))
}

/// Sets a secret (write-only: it can be replaced or deleted, never read back).
#[utoipa::path(put, path = "/api/v1/secrets/{name}", params(("name" = String, Path, description = "secret name"), ScopeQuery), request_body = SetSecret, responses((status = 204), (status = 400, body = ErrorBody)))]
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

/// Deletes a secret.
#[utoipa::path(delete, path = "/api/v1/secrets/{name}", params(("name" = String, Path, description = "secret name"), ScopeQuery), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_secret(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ScopeQuery>,
) -> Result<StatusCode, ApiError> {
    s.builds.store.delete_secret(&scope(&q), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
