//! Cron schedules over the API: `GET /api/v1/schedules` lists them (the pipeline's
//! `on.schedule` entries and server-side ones), `POST /api/v1/schedules` adds a server-side
//! schedule, `DELETE /api/v1/schedules/{id}` removes one.

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::engine::cron::{self, ScheduleError};
use crate::store::schedules::ScheduleRecord;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

/// `GET /api/v1/schedules`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    schedules: Vec<ScheduleRecord>,
}

/// Query of `GET /api/v1/schedules`: `?job=NAME` for one job's schedules.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ScheduleQuery {
    /// Only this job's schedules.
    job: Option<String>,
}

/// Body of `POST /api/v1/schedules`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// The job to build.
    pub job: String,
    /// Cron expression: 5 fields (minute hour day-of-month month day-of-week) or 6 with
    /// seconds first.
    pub cron: String,
    /// Branch to build [default: the job's default branch].
    #[serde(default)]
    pub branch: Option<String>,
    /// IANA time zone the expression is read in [default: `UTC`].
    #[serde(default)]
    pub timezone: Option<String>,
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::Store(e) => e.into(),
            e => ApiError::bad_request(e.to_string()),
        }
    }
}

/// Lists the schedules with their next run.
#[utoipa::path(get, path = "/api/v1/schedules", params(ScheduleQuery), responses((status = 200, body = ScheduleList)))]
pub async fn list(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ScheduleQuery>,
) -> Result<Json<ScheduleList>, ApiError> {
    let schedules = s.builds.store.schedules(q.job.as_deref()).await?;
    Ok(Json(ScheduleList { schedules }))
}

/// Adds a server-side schedule to a job.
#[utoipa::path(post, path = "/api/v1/schedules", request_body = CreateSchedule, responses((status = 201, body = ScheduleRecord), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateSchedule>,
) -> Result<(StatusCode, Json<ScheduleRecord>), ApiError> {
    let record =
        cron::add_schedule(&s.builds.store, &body.job, &body.cron, body.timezone.as_deref(), body.branch.as_deref())
            .await?;
    Ok((StatusCode::CREATED, Json(record)))
}

/// Deletes a server-side schedule (one from the pipeline's `on.schedule` is removed by editing
/// the pipeline).
#[utoipa::path(delete, path = "/api/v1/schedules/{id}", params(("id" = i64, Path, description = "schedule id")), responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(State(s): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<StatusCode, ApiError> {
    let record = s.builds.store.schedule(id).await?;
    if cron::from_pipeline(&record) {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: format!(
                "schedule {id} comes from the `on.schedule` of job `{}`'s pipeline: remove it there",
                record.job
            ),
            details: json!(null),
        });
    }
    s.builds.store.delete_schedule(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
