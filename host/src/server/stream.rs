//! Logs and build events: `GET .../logs?offset=N` for a page, and SSE streams that resume at
//! `Last-Event-ID` (the line number, or the event id) with no gap and no duplicate. Both read
//! the store; notices on the bus only wake them early.
//!
//! Each stream is one task that reads the store and sends to the response body. The task ends
//! as soon as the client leaves: while it waits it also watches the body's channel close (the
//! server drops the body when the connection ends; a keep-alive comment every
//! [`KEEP_ALIVE`] makes a silently vanished client fail a write), so an abandoned stream stops
//! reading the store at once instead of at its next send. Each user holds at most
//! [`Streams::per_user`] streams; the slot is held by the task and freed when it ends.

use super::AppState;
use super::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use crate::engine::builds::Notice;
use crate::exec::LogLine;
use crate::status::Status;
use crate::store::builds::BuildJobRecord;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::{IntoParams, ToSchema};

/// How many live streams one user may hold open at once unless `chengis serve
/// --max-streams-per-user` says otherwise.
pub const DEFAULT_STREAMS_PER_USER: usize = 16;

/// How often an idle stream sends a keep-alive comment (so that a client that vanished without
/// closing its connection fails a write, and proxies keep the connection).
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// The open live streams of each user, capped at [`Streams::per_user`].
#[derive(Debug)]
pub struct Streams {
    per_user: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl Default for Streams {
    fn default() -> Self {
        Streams::new(DEFAULT_STREAMS_PER_USER)
    }
}

impl Streams {
    /// At most `per_user` open streams per user (at least 1).
    pub fn new(per_user: usize) -> Self {
        Streams { per_user: per_user.max(1), open: Mutex::new(HashMap::new()) }
    }

    /// The cap.
    pub fn per_user(&self) -> usize {
        self.per_user
    }

    /// Takes a slot for `user`; `None` when they hold [`Streams::per_user`] already.
    pub fn open(self: &Arc<Self>, user: &str) -> Option<StreamSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(user.to_string()).or_default();
        if *count >= self.per_user {
            return None;
        }
        *count += 1;
        Some(StreamSlot { streams: self.clone(), user: user.to_string() })
    }

    /// How many streams `user` holds open.
    pub fn open_for(&self, user: &str) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).get(user).copied().unwrap_or(0)
    }
}

/// One open stream's slot; dropping it (when the stream's task ends) frees the slot.
#[derive(Debug)]
pub struct StreamSlot {
    streams: Arc<Streams>,
    user: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// A slot for the caller's new stream, or 429 naming the cap.
fn open_slot(s: &AppState, caller: Option<&super::auth::Caller>) -> Result<StreamSlot, ApiError> {
    // Streams need a viewer, so there is always a user; the address is a fallback only.
    let user = caller.map_or_else(
        || "anonymous".to_string(),
        |c| match &c.user {
            Some(u) => format!("user:{}", u.username),
            None => format!("addr:{}", c.ip),
        },
    );
    s.streams.open(&user).ok_or_else(|| ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: "too_many_streams",
        message: format!(
            "you have {} live streams open, the most one user may hold; close one (or wait for it to end) and try again",
            s.streams.per_user()
        ),
        details: serde_json::json!({"limit": s.streams.per_user()}),
    })
}

/// The SSE response of a stream task's channel.
fn sse(rx: mpsc::Receiver<Result<Event, Infallible>>) -> Response {
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

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
    caller: Option<Extension<super::auth::Caller>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let j = find_job(&s, build, &job).await?;
    let slot = open_slot(&s, caller.as_deref())?;
    let mut next = resume_point(&headers, q.offset);
    let (tx, rx) = mpsc::channel(64);
    let mut notices = s.builds.bus.subscribe();
    tokio::spawn(async move {
        // Held for as long as the task runs: the task is the stream.
        let _slot = slot;
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
            let want = |n: &Notice| *n == Notice::Log(j.id) || *n == Notice::Build(j.build_id);
            if wait(&mut notices, &tx, want).await == Woken::Gone {
                return;
            }
        }
    });
    Ok(sse(rx))
}

/// `GET /api/v1/builds/{id}/events`: SSE of the build's status changes (id = event id), ending
/// with `end` once the build finished.
#[utoipa::path(get, path = "/api/v1/builds/{id}/events", params(("id" = i64, Path, description = "build id"), ("Last-Event-ID" = Option<u64>, Header, description = "resume after this event")), responses((status = 200, description = "text/event-stream of `build_status` and `job_status` events and a final `end`", content_type = "text/event-stream"), (status = 404, body = ErrorBody)))]
pub async fn build_events(
    State(s): State<AppState>,
    ApiPath(build): ApiPath<i64>,
    caller: Option<Extension<super::auth::Caller>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    s.builds.store.build(build).await?;
    let slot = open_slot(&s, caller.as_deref())?;
    let mut after = resume_point(&headers, None) as i64 - 1;
    let (tx, rx) = mpsc::channel(64);
    let mut notices = s.builds.bus.subscribe();
    tokio::spawn(async move {
        // Held for as long as the task runs: the task is the stream.
        let _slot = slot;
        let store = &s.builds.store;
        // Every event up to now is read at once; a later one comes with a notice (the receiver
        // was subscribed before the first read, so none is missed), or at worst within the
        // second after which the store is read anyway.
        loop {
            let Ok(events) = store.events_after(build, after).await else { return };
            let mut final_status = false;
            for e in &events {
                let Ok(event) = Event::default().id(e.id.to_string()).event(e.kind.clone()).json_data(e) else {
                    continue;
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
                after = e.id;
                final_status |= e.kind == "build_status"
                    && e.payload
                        .get("status")
                        .cloned()
                        .and_then(|v| serde_json::from_value::<Status>(v).ok())
                        .is_some_and(Status::is_finished);
            }
            // The build's own status is the truth when its final event is not among these.
            let finished = final_status
                || (events.is_empty() && store.build(build).await.map(|b| b.status.is_finished()).unwrap_or(true));
            if finished {
                // Events written with the final status (in the same change) are read first.
                if final_status && let Ok(rest) = store.events_after(build, after).await {
                    for e in &rest {
                        if let Ok(event) = Event::default().id(e.id.to_string()).event(e.kind.clone()).json_data(e)
                            && tx.send(Ok(event)).await.is_err()
                        {
                            return;
                        }
                    }
                }
                let _ = tx.send(Ok(Event::default().event("end").data("{}"))).await;
                return;
            }
            if wait(&mut notices, &tx, |n| *n == Notice::Build(build)).await == Woken::Gone {
                return;
            }
        }
    });
    Ok(sse(rx))
}

/// Why [`wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woken {
    /// A matching notice (or missed notices) arrived: read the store now.
    Notice,
    /// A second passed: read the store anyway (it is the truth; notices only hurry).
    Timeout,
    /// The client left (the response body, and with it the channel's receiver, is gone).
    Gone,
}

/// Waits for a matching notice or one second, and ends early when the client leaves.
async fn wait<T>(
    notices: &mut tokio::sync::broadcast::Receiver<Notice>,
    tx: &mpsc::Sender<T>,
    want: impl Fn(&Notice) -> bool,
) -> Woken {
    let notice = async {
        loop {
            match notices.recv().await {
                Ok(n) if want(&n) => return Woken::Notice,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return Woken::Notice,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    };
    tokio::select! {
        biased;
        () = tx.closed() => Woken::Gone,
        woken = notice => woken,
        () = tokio::time::sleep(Duration::from_secs(1)) => Woken::Timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_whose_client_left_stops_waiting_instead_of_reading_again() {
        let (bus, mut notices) = tokio::sync::broadcast::channel::<Notice>(8);
        let (tx, rx) = mpsc::channel::<u8>(1);
        // Connected and quiet: the wait ends after its second, and the stream reads again.
        assert_eq!(wait(&mut notices, &tx, |_| true).await, Woken::Timeout);
        bus.send(Notice::Build(7)).unwrap();
        assert_eq!(wait(&mut notices, &tx, |n| *n == Notice::Build(7)).await, Woken::Notice);
        // The client leaves in the middle of a wait: the wait says so, instead of a timeout
        // that would send the task back to the store.
        let waiting = tokio::spawn(async move { wait(&mut notices, &tx, |_| false).await });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(waiting.await.unwrap(), Woken::Gone);
    }

    #[test]
    fn each_user_holds_at_most_the_cap_and_a_closed_stream_frees_its_slot() {
        let streams = Arc::new(Streams::new(2));
        let a = streams.open("user:ada").unwrap();
        let _b = streams.open("user:ada").unwrap();
        assert!(streams.open("user:ada").is_none(), "a third stream is over the cap");
        let _other = streams.open("user:bob").expect("the cap is per user");
        drop(a);
        assert_eq!(streams.open_for("user:ada"), 1);
        assert!(streams.open("user:ada").is_some(), "a closed stream frees its slot");
        assert_eq!(Streams::new(0).per_user(), 1);
    }
}
