//! Logs and build events: `GET .../logs?offset=N` for a page, and SSE streams that resume at
//! `Last-Event-ID` (the line number, or the event id) with no gap and no duplicate. Both read
//! the store; notices on the bus only wake them early.

use super::AppState;
use super::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use crate::engine::builds::Notice;
use crate::exec::LogLine;
use crate::store::builds::BuildJobRecord;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::{IntoParams, ToSchema};

/// Query of the log routes.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// First line number wanted (default 1); for streams, `Last-Event-ID` takes precedence.
    offset: Option<u64>,
    /// Most lines in one answer (default 10,000).
    limit: Option<usize>,
}

/// A page of a job's log.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    lines: Vec<LogLine>,
    next_offset: u64,
    finished: bool,
}

/// The build job `job` (a numeric id or a planned job id) of build `build`.
async fn find_job(s: &AppState, build: i64, job: &str) -> Result<BuildJobRecord, ApiError> {
    let jobs = s.builds.store.build_jobs(build).await?;
    jobs.into_iter()
        .find(|j| j.job_key == job || job.parse::<i64>().is_ok_and(|id| id == j.id))
        .ok_or_else(|| ApiError::not_found(format!("build {build} has no job `{job}`")))
}

/// `GET /api/v1/builds/{id}/jobs/{job}/logs?offset=N&limit=M`: lines numbered N and later.
#[utoipa::path(get, path = "/api/v1/builds/{id}/jobs/{job}/logs", params(("id" = i64, Path, description = "build id"), ("job" = String, Path, description = "planned job id or build job id"), LogQuery), responses((status = 200, body = LogPage), (status = 404, body = ErrorBody)))]
pub async fn logs(
    State(s): State<AppState>,
    ApiPath((build, job)): ApiPath<(i64, String)>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Json<LogPage>, ApiError> {
    let j = find_job(&s, build, &job).await?;
    let from = q.offset.unwrap_or(1).max(1);
    let lines = s.builds.store.read_log(j.id, from, q.limit.unwrap_or(10_000).clamp(1, 100_000)).await?;
    let next_offset = lines.last().map_or(from, |l| l.number + 1);
    Ok(Json(LogPage { lines, next_offset, finished: j.status.is_finished() }))
}

fn resume_point(headers: &HeaderMap, offset: Option<u64>) -> u64 {
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    match (last, offset) {
        (Some(id), _) => id + 1,
        (None, Some(o)) => o.max(1),
        (None, None) => 1,
    }
}

/// `GET .../logs/stream`: SSE of log lines (event `line`, id = line number), then `end`.
#[utoipa::path(get, path = "/api/v1/builds/{id}/jobs/{job}/logs/stream", params(("id" = i64, Path, description = "build id"), ("job" = String, Path, description = "planned job id or build job id"), ("Last-Event-ID" = Option<u64>, Header, description = "resume after this line"), LogQuery), responses((status = 200, description = "text/event-stream of `line` events (JSON LogLine, id = line number) and a final `end`", content_type = "text/event-stream"), (status = 404, body = ErrorBody)))]
pub async fn log_stream(
    State(s): State<AppState>,
    ApiPath((build, job)): ApiPath<(i64, String)>,
    ApiQuery(q): ApiQuery<LogQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let j = find_job(&s, build, &job).await?;
    let mut next = resume_point(&headers, q.offset);
    let (tx, rx) = mpsc::channel(64);
    let mut notices = s.builds.bus.subscribe();
    tokio::spawn(async move {
        let store = &s.builds.store;
        loop {
            let finished = store.build_job_status(j.id).await.map(|st| st.is_finished()).unwrap_or(true);
            let lines = match store.read_log(j.id, next, 1000).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("log stream: {e}");
                    return;
                }
            };
            for line in &lines {
                let event = Event::default().id(line.number.to_string()).event("line").json_data(line);
                let Ok(event) = event else { continue };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
                next = line.number + 1;
            }
            if lines.is_empty() && finished {
                let _ = tx.send(Ok(Event::default().event("end").data("{}"))).await;
                return;
            }
            if !lines.is_empty() {
                continue;
            }
            wait(&mut notices, |n| *n == Notice::Log(j.id) || *n == Notice::Build(j.build_id)).await;
        }
    });
    Ok(Sse::new(ReceiverStream::<Result<Event, Infallible>>::new(rx)).keep_alive(KeepAlive::default()).into_response())
}

/// `GET /api/v1/builds/{id}/events`: SSE of the build's status changes (id = event id), ending
/// with `end` once the build finished.
#[utoipa::path(get, path = "/api/v1/builds/{id}/events", params(("id" = i64, Path, description = "build id"), ("Last-Event-ID" = Option<u64>, Header, description = "resume after this event")), responses((status = 200, description = "text/event-stream of `build_status` and `job_status` events and a final `end`", content_type = "text/event-stream"), (status = 404, body = ErrorBody)))]
pub async fn build_events(
    State(s): State<AppState>,
    ApiPath(build): ApiPath<i64>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    s.builds.store.build(build).await?;
    let mut after = resume_point(&headers, None) as i64 - 1;
    let (tx, rx) = mpsc::channel(64);
    let mut notices = s.builds.bus.subscribe();
    tokio::spawn(async move {
        let store = &s.builds.store;
        loop {
            let finished = store.build(build).await.map(|b| b.status.is_finished()).unwrap_or(true);
            let Ok(events) = store.events_after(build, after).await else { return };
            for e in &events {
                let Ok(event) = Event::default().id(e.id.to_string()).event(e.kind.clone()).json_data(e) else {
                    continue;
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
                after = e.id;
            }
            if events.is_empty() && finished {
                let _ = tx.send(Ok(Event::default().event("end").data("{}"))).await;
                return;
            }
            if events.is_empty() {
                wait(&mut notices, |n| *n == Notice::Build(build)).await;
            }
        }
    });
    Ok(Sse::new(ReceiverStream::<Result<Event, Infallible>>::new(rx)).keep_alive(KeepAlive::default()).into_response())
}

/// Waits for a matching notice, or one second (the store is the truth; notices only hurry).
async fn wait(notices: &mut tokio::sync::broadcast::Receiver<Notice>, want: impl Fn(&Notice) -> bool) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match notices.recv().await {
                Ok(n) if want(&n) => return,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return;
                }
            }
        }
    })
    .await;
}
