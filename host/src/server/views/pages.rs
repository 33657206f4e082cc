//! The dashboard's page handlers: what each page reads from the store and the template that
//! shows it, plus the form posts (trigger, cancel, retry, plugin decisions).

use super::svg::{self, GraphNode, TrendPoint};
use super::{PageError, duration_text, elapsed, page, path_segment, static_version, time_iso, time_text};
use crate::engine::builds::TriggerRequest;
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::status::Status;
use crate::store::builds::{BuildFilter, BuildSummary, StepRecord};
use askama::Template;
use axum::Extension;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use indexmap::IndexMap;
use serde::Deserialize;

type PageResult = Result<Response, PageError>;

fn ctx_of(caller: &Option<Extension<Caller>>) -> super::Ctx {
    super::Ctx::of(caller.as_ref().map(|Extension(c)| c))
}

/// Who a build started from the dashboard is attributed to.
fn who(caller: &Option<Extension<Caller>>) -> String {
    caller.as_ref().and_then(|Extension(c)| c.user.as_ref()).map_or_else(|| "web".to_string(), |u| u.username.clone())
}

/// Builds per page of the home and job pages.
const PAGE: i64 = 50;
/// Lines per page of the log page without JavaScript.
const LOG_PAGE: u64 = 1000;

/// A build as a table row shows it.
struct Row {
    id: i64,
    job: String,
    job_href: String,
    number: i64,
    status: &'static str,
    status_text: String,
    branch: String,
    commit: String,
    subject: String,
    trigger: String,
    who: String,
    started: String,
    started_iso: String,
    duration: String,
}

impl Row {
    fn of(b: &BuildSummary) -> Row {
        let started = b.started_ms.unwrap_or(b.queued_ms);
        Row {
            id: b.id,
            job: b.job.clone(),
            job_href: format!("/jobs/{}", path_segment(&b.job)),
            number: b.number,
            status: b.status.as_str(),
            status_text: b.status.as_str().replace('_', " "),
            branch: b.branch.clone(),
            commit: b.commit_sha.chars().take(8).collect(),
            subject: b.commit_message.lines().next().unwrap_or_default().to_string(),
            trigger: b.trigger.clone(),
            who: b.who.clone(),
            started: time_text(started),
            started_iso: time_iso(started),
            duration: elapsed(b.started_ms, b.finished_ms).map(duration_text).unwrap_or_default(),
        }
    }
}

/// Filters of the build lists (query of `/` and `/jobs/{name}`).
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    job: Option<String>,
    status: Option<String>,
    branch: Option<String>,
    before: Option<i64>,
    after: Option<i64>,
}

/// The query string of a list page with a cursor, keeping the filters.
fn list_href(base: &str, q: &ListQuery, cursor: (&str, i64)) -> String {
    let mut parts = Vec::new();
    for (k, v) in [("job", &q.job), ("status", &q.status), ("branch", &q.branch)] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            parts.push(format!("{k}={}", path_segment(v)));
        }
    }
    parts.push(format!("{}={}", cursor.0, cursor.1));
    format!("{base}?{}", parts.join("&"))
}

fn parse_status(text: Option<&str>) -> Result<Option<Status>, PageError> {
    match text.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => serde_json::from_value::<Status>(serde_json::Value::String(t.to_string())).map(Some).map_err(|_| {
            PageError::bad_request(format!(
                "unknown status `{t}`: queued, running, success, failure, cancelled, timed_out, skipped, error"
            ))
        }),
    }
}

/// One page of builds with "newer"/"older" links.
struct Listing {
    rows: Vec<Row>,
    newer: Option<String>,
    older: Option<String>,
    live: bool,
}

async fn listing(s: &AppState, base: &str, q: &ListQuery, job: Option<String>) -> Result<Listing, PageError> {
    let status = parse_status(q.status.as_deref())?;
    let filter = BuildFilter {
        job: job.or_else(|| q.job.clone().filter(|j| !j.is_empty())),
        status,
        branch: q.branch.clone().filter(|b| !b.is_empty()),
        before: q.before,
        after: q.after,
        limit: PAGE + 1,
    };
    let mut builds = s.builds.store.list_builds(&filter).await?;
    let more = builds.len() as i64 > PAGE;
    if more {
        // The extra row only tells there is another page in the direction walked.
        if q.after.is_some() {
            builds.remove(0);
        } else {
            builds.pop();
        }
    }
    let (first, last) = (builds.first().map(|b| b.id), builds.last().map(|b| b.id));
    let older_exists = q.after.is_some() || more;
    let newer_exists = if q.after.is_some() { more } else { q.before.is_some() };
    Ok(Listing {
        newer: first.filter(|_| newer_exists).map(|id| list_href(base, q, ("after", id))),
        older: last.filter(|_| older_exists).map(|id| list_href(base, q, ("before", id))),
        live: builds.iter().any(|b| !b.status.is_finished()),
        rows: builds.iter().map(Row::of).collect(),
    })
}

const STATUSES: &[&str] = &["queued", "running", "success", "failure", "cancelled", "timed_out", "skipped", "error"];

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    title: String,
    nav: &'static str,
    v: &'static str,
    ctx: super::Ctx,
    list: Listing,
    jobs: Vec<String>,
    statuses: &'static [&'static str],
    f_job: String,
    f_status: String,
    f_branch: String,
}

/// `GET /`: recent builds across jobs, with filters and cursor pagination.
pub async fn home(
    State(s): State<AppState>,
    caller: Option<Extension<Caller>>,
    Query(q): Query<ListQuery>,
) -> PageResult {
    let ctx = ctx_of(&caller);
    let list = listing(&s, "/", &q, None).await?;
    let jobs = s.builds.store.jobs().await?.into_iter().map(|j| j.name).collect();
    let t = HomePage {
        title: "Builds".into(),
        nav: "builds",
        v: static_version(),
        ctx: ctx.clone(),
        list,
        jobs,
        statuses: STATUSES,
        f_job: q.job.unwrap_or_default(),
        f_status: q.status.unwrap_or_default(),
        f_branch: q.branch.unwrap_or_default(),
    };
    Ok(page(StatusCode::OK, &t))
}

/// A field of the trigger form.
struct Field {
    name: String,
    description: String,
    /// `text`, `choice` or `boolean`.
    kind: &'static str,
    choices: Vec<String>,
    value: String,
    required: bool,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    title: String,
    nav: &'static str,
    v: &'static str,
    ctx: super::Ctx,
    name: String,
    repo: String,
    default_branch: String,
    list: Listing,
    success_rate: Option<u32>,
    finished_count: usize,
    trend: String,
    fields: Vec<Field>,
    branch: String,
    form_error: Option<String>,
    badge_url: String,
    badge_markdown: String,
}

/// The parameters the job's newest planned build declared (the trigger form's fields).
async fn declared_params(
    s: &AppState,
    job: &str,
) -> Result<IndexMap<String, chengis_pipeline::model::Param>, PageError> {
    let recent = s
        .builds
        .store
        .list_builds(&BuildFilter { job: Some(job.to_string()), limit: 20, ..Default::default() })
        .await?;
    for b in recent {
        if let Some(plan) = s.builds.store.build_plan(b.id).await?
            && let Ok(plan) = serde_json::from_str::<chengis_pipeline::Plan>(&plan)
        {
            return Ok(plan.declared_params);
        }
    }
    Ok(IndexMap::new())
}

fn fields_of(
    declared: &IndexMap<String, chengis_pipeline::model::Param>,
    given: &IndexMap<String, String>,
) -> Vec<Field> {
    use chengis_pipeline::model::ParamType;
    declared
        .iter()
        .map(|(name, p)| Field {
            name: name.clone(),
            description: p.description.clone().unwrap_or_default(),
            kind: if p.kind == ParamType::Boolean {
                "boolean"
            } else if p.choices.is_empty() {
                "text"
            } else {
                "choice"
            },
            choices: p.choices.clone(),
            value: given.get(name).cloned().or_else(|| p.default.clone()).unwrap_or_default(),
            required: p.required && p.default.is_none(),
            error: None,
        })
        .collect()
}

fn host_of(headers: &HeaderMap) -> String {
    headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_string()
}

async fn job_page(
    s: &AppState,
    ctx: &super::Ctx,
    name: &str,
    q: &ListQuery,
    headers: &HeaderMap,
    form: Option<(Vec<Field>, String, Option<String>)>,
) -> Result<JobPage, PageError> {
    let job = s.builds.store.job(name).await?;
    let list = listing(s, &format!("/jobs/{}", path_segment(name)), q, Some(name.to_string())).await?;
    let recent = s
        .builds
        .store
        .list_builds(&BuildFilter { job: Some(name.to_string()), limit: 50, ..Default::default() })
        .await?;
    let finished: Vec<&BuildSummary> = recent.iter().filter(|b| b.status.is_finished()).collect();
    let ok = finished.iter().filter(|b| b.status == Status::Success).count();
    let success_rate = (!finished.is_empty()).then(|| (ok * 100 / finished.len()) as u32);
    let points: Vec<TrendPoint> = finished
        .iter()
        .rev()
        .filter_map(|b| {
            Some(TrendPoint {
                number: b.number,
                id: b.id,
                millis: elapsed(b.started_ms, b.finished_ms)?,
                status: b.status,
            })
        })
        .collect();
    let (fields, branch, form_error) = match form {
        Some(f) => f,
        None => (fields_of(&declared_params(s, name).await?, &IndexMap::new()), String::new(), None),
    };
    let badge_url = format!("http://{}/badge/{}.svg", host_of(headers), path_segment(name));
    Ok(JobPage {
        title: format!("Job {name}"),
        nav: "builds",
        v: static_version(),
        ctx: ctx.clone(),
        name: name.to_string(),
        repo: job.repo_url,
        default_branch: job.default_branch,
        list,
        success_rate,
        finished_count: finished.len(),
        trend: if points.is_empty() { String::new() } else { svg::trend(&points) },
        fields,
        branch,
        form_error,
        badge_markdown: format!("[![{name}]({badge_url})](http://{}/jobs/{})", host_of(headers), path_segment(name)),
        badge_url,
    })
}

/// `GET /jobs/{name}`: the job's builds, success rate, duration trend, trigger form, badge.
pub async fn job(
    State(s): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> PageResult {
    let t = job_page(&s, &ctx_of(&caller), &name, &q, &headers, None).await?;
    Ok(page(StatusCode::OK, &t))
}

/// `POST /jobs/{name}/trigger`: the trigger form (branch and parameters), checked against the
/// parameters the pipeline declares; errors show the form again with what is wrong.
pub async fn trigger(
    State(s): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> PageResult {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_bytes(&body).map_err(|e| PageError::bad_request(format!("invalid form: {e}")))?;
    let mut branch = String::new();
    let mut given: IndexMap<String, String> = IndexMap::new();
    for (k, v) in pairs {
        if k == "branch" {
            branch = v.trim().to_string();
        } else if let Some(p) = k.strip_prefix("param.") {
            given.insert(p.to_string(), v);
        }
    }
    s.builds.store.job(&name).await?;
    let declared = declared_params(&s, &name).await?;
    let mut fields = fields_of(&declared, &given);
    let mut params = IndexMap::new();
    let mut bad = false;
    for f in &mut fields {
        let value = match f.kind {
            // An unticked checkbox sends nothing.
            "boolean" => if given.get(&f.name).is_some_and(|v| v == "true") { "true" } else { "false" }.to_string(),
            // A field the form did not send keeps its default.
            _ => f.value.clone(),
        };
        f.value = value.clone();
        if f.kind == "choice" && !f.choices.contains(&value) {
            f.error = Some(format!("must be one of: {}", f.choices.join(", ")));
        } else if f.required && value.is_empty() {
            f.error = Some("is required".into());
        }
        bad |= f.error.is_some();
        if !value.is_empty() || f.kind == "boolean" {
            params.insert(f.name.clone(), value);
        }
    }
    let form_error = if let Some(k) = given.keys().find(|k| !declared.contains_key(*k)) {
        Some(format!("the pipeline declares no parameter `{k}`"))
    } else if branch.chars().any(|c| c.is_control() || c == ' ') || branch.starts_with('-') {
        Some(format!("`{branch}` is not a branch name"))
    } else {
        None
    };
    if bad || form_error.is_some() {
        let t =
            job_page(&s, &ctx_of(&caller), &name, &ListQuery::default(), &headers, Some((fields, branch, form_error)))
                .await?;
        return Ok(page(StatusCode::BAD_REQUEST, &t));
    }
    let req = TriggerRequest { branch: (!branch.is_empty()).then_some(branch), params, ..Default::default() };
    let build = s.builds.trigger(&name, req, "manual", &who(&caller)).await?;
    Ok(Redirect::to(&format!("/builds/{}", build.id)).into_response())
}

/// A step as the build and log pages show it.
struct StepRow {
    name: String,
    status: &'static str,
    status_text: String,
    duration: String,
    reason: String,
}

/// A job of the build page.
struct JobRow {
    key: String,
    anchor: String,
    log_href: String,
    status: &'static str,
    status_text: String,
    duration: String,
    reason: String,
    sandbox: String,
    steps: Vec<StepRow>,
}

fn step_row(st: &StepRecord) -> StepRow {
    StepRow {
        name: st.name.clone(),
        status: st.status.as_str(),
        status_text: st.status.as_str().replace('_', " "),
        duration: elapsed(st.started_ms, st.finished_ms).map(duration_text).unwrap_or_default(),
        reason: st.reason.clone().unwrap_or_default(),
    }
}

#[derive(Template)]
#[template(path = "build.html")]
struct BuildPage {
    title: String,
    nav: &'static str,
    v: &'static str,
    ctx: super::Ctx,
    b: Row,
    finished: bool,
    reason: String,
    commit_full: String,
    author: String,
    graph: String,
    jobs: Vec<JobRow>,
    denials: Vec<String>,
    warnings: Vec<String>,
    artifacts: usize,
    attempts: Vec<Row>,
}

/// `GET /builds/{id}`: summary, pipeline graph, jobs and steps, policy results, artifacts,
/// attempts, cancel and retry.
pub async fn build(State(s): State<AppState>, caller: Option<Extension<Caller>>, Path(id): Path<i64>) -> PageResult {
    let ctx = ctx_of(&caller);
    let store = &s.builds.store;
    let b = store.build_summary(id).await?;
    let mut nodes = Vec::new();
    let mut jobs = Vec::new();
    let mut steps_of = store.steps_of_build(id).await?;
    let mut waiting = store.waiting_reasons(id).await?;
    for j in store.build_jobs(id).await? {
        let steps = steps_of.remove(&j.id).unwrap_or_default();
        let millis = elapsed(j.started_ms, j.finished_ms);
        nodes.push(GraphNode { id: j.job_key.clone(), status: j.status, needs: j.needs.clone(), millis });
        let reason = match (&j.reason, j.status) {
            (Some(r), _) => r.clone(),
            (None, Status::Queued) => waiting.remove(&j.id).unwrap_or_default(),
            _ => String::new(),
        };
        jobs.push(JobRow {
            anchor: format!("job-{}", path_segment(&j.job_key)),
            log_href: format!("/builds/{id}/jobs/{}/log", path_segment(&j.job_key)),
            key: j.job_key,
            status: j.status.as_str(),
            status_text: j.status.as_str().replace('_', " "),
            duration: millis.map(duration_text).unwrap_or_default(),
            reason,
            sandbox: j.sandbox.unwrap_or_default(),
            steps: steps.iter().map(step_row).collect(),
        });
    }
    let (denials, warnings) =
        crate::server::api::policy_of(store, id).await?.map(|p| (p.denials, p.warnings)).unwrap_or_default();
    let artifacts = store.artifacts_of_build(id).await?.len();
    let attempts = store.attempts(b.root_build_id.unwrap_or(b.id)).await?;
    let t = BuildPage {
        title: format!("{} #{}", b.job, b.number),
        nav: "builds",
        v: static_version(),
        ctx: ctx.clone(),
        finished: b.status.is_finished(),
        reason: b.reason.clone().unwrap_or_default(),
        commit_full: b.commit_sha.clone(),
        author: b.commit_author.clone(),
        graph: svg::graph(id, &nodes),
        jobs,
        denials,
        warnings,
        artifacts,
        attempts: if attempts.len() > 1 { attempts.iter().map(Row::of).collect() } else { Vec::new() },
        b: Row::of(&b),
    };
    Ok(page(StatusCode::OK, &t))
}

/// `POST /builds/{id}/cancel`: cancels, then back to the build page.
pub async fn cancel(State(s): State<AppState>, Path(id): Path<i64>) -> PageResult {
    // Who cancelled is in the audit log (the middleware records `build.cancel`).
    s.builds.cancel(id).await?;
    Ok(Redirect::to(&format!("/builds/{id}")).into_response())
}

/// `POST /builds/{id}/retry`: a new attempt; shows its page.
pub async fn retry(State(s): State<AppState>, caller: Option<Extension<Caller>>, Path(id): Path<i64>) -> PageResult {
    let b = s.builds.retry(id, &who(&caller)).await?;
    Ok(Redirect::to(&format!("/builds/{}", b.id)).into_response())
}

/// A stored line as the page without JavaScript shows it.
struct LineRow {
    number: u64,
    stream: &'static str,
    text: String,
}

#[derive(Template)]
#[template(path = "log.html")]
struct LogPage {
    title: String,
    nav: &'static str,
    v: &'static str,
    ctx: super::Ctx,
    build_id: i64,
    build_title: String,
    job: String,
    status: &'static str,
    status_text: String,
    finished: bool,
    lines_url: String,
    stream_url: String,
    events_url: String,
    steps_json: String,
    steps: Vec<StepRow>,
    lines: Vec<LineRow>,
    prev: Option<String>,
    next: Option<String>,
}

/// Query of the log page: the first line of the page shown without JavaScript.
#[derive(Debug, Deserialize)]
pub struct LogQuery {
    from: Option<u64>,
}

/// `GET /builds/{id}/jobs/{job}/log`: the log viewer (live over SSE with JavaScript; pages of
/// 1,000 lines without).
pub async fn log(
    State(s): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path((id, job)): Path<(i64, String)>,
    Query(q): Query<LogQuery>,
) -> PageResult {
    let ctx = ctx_of(&caller);
    let store = &s.builds.store;
    let b = store.build_summary(id).await?;
    let j = store
        .build_jobs(id)
        .await?
        .into_iter()
        .find(|j| j.job_key == job)
        .ok_or_else(|| PageError::not_found(format!("build {id} has no job `{job}`")))?;
    let steps = store.steps(j.id).await?;
    let from = q.from.unwrap_or(1).max(1);
    let lines = store.read_log(j.id, from, LOG_PAGE as usize).await?;
    let base = format!("/builds/{id}/jobs/{}/log", path_segment(&job));
    let steps_json = serde_json::to_string(
        &steps
            .iter()
            .map(|st| {
                serde_json::json!({
                    "idx": st.idx, "name": st.name, "status": st.status, "first_line": st.first_line,
                    "started_ms": st.started_ms, "finished_ms": st.finished_ms,
                })
            })
            .collect::<Vec<_>>(),
    )
    .unwrap_or_else(|_| "[]".into())
    // Inside <script type="application/json">, `</` could end the element.
    .replace("</", "<\\/");
    let api = format!("/api/v1/builds/{id}/jobs/{}", path_segment(&job));
    let t = LogPage {
        title: format!("{job} · {} #{}", b.job, b.number),
        nav: "builds",
        v: static_version(),
        ctx: ctx.clone(),
        build_id: id,
        build_title: format!("{} #{}", b.job, b.number),
        status: j.status.as_str(),
        status_text: j.status.as_str().replace('_', " "),
        finished: j.status.is_finished(),
        lines_url: format!("{api}/logs"),
        stream_url: format!("{api}/logs/stream"),
        events_url: format!("/api/v1/builds/{id}/events"),
        steps_json,
        steps: steps.iter().map(step_row).collect(),
        prev: (from > 1).then(|| format!("{base}?from={}", from.saturating_sub(LOG_PAGE).max(1))),
        next: (lines.len() as u64 == LOG_PAGE).then(|| format!("{base}?from={}", from + LOG_PAGE)),
        lines: lines
            .into_iter()
            .map(|l| LineRow {
                number: l.number,
                stream: match l.stream {
                    crate::exec::Stream::Stdout => "stdout",
                    crate::exec::Stream::Stderr => "stderr",
                    crate::exec::Stream::System => "system",
                },
                text: strip_ansi(&l.text),
            })
            .collect(),
        job,
    };
    Ok(page(StatusCode::OK, &t))
}

/// Text without ANSI escape sequences (the page without JavaScript shows plain text).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            // CSI: parameters then one final byte in @..~.
            Some('[') => {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL or ST.
            Some(']') => {
                chars.next();
                while let Some(c) = chars.next() {
                    if c == '\u{7}' || (c == '\u{1b}' && chars.peek() == Some(&'\\')) {
                        if c == '\u{1b}' {
                            chars.next();
                        }
                        break;
                    }
                }
            }
            _ => {
                chars.next();
            }
        }
    }
    out
}

/// An artifact file as its page shows it.
struct ArtifactRow {
    id: i64,
    job: String,
    name: String,
    path: String,
    size: String,
    bytes: i64,
    sha256: String,
    expires: String,
}

#[derive(Template)]
#[template(path = "artifacts.html")]
struct ArtifactsPage {
    title: String,
    nav: &'static str,
    v: &'static str,
    ctx: super::Ctx,
    build_id: i64,
    build_title: String,
    files: Vec<ArtifactRow>,
    total: String,
}

/// Bytes as people read them (`1.5 MiB`).
fn size_text(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes.max(0) as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// `GET /builds/{id}/artifacts`: names, sizes, checksums and download links.
pub async fn artifacts(
    State(s): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<i64>,
) -> PageResult {
    let ctx = ctx_of(&caller);
    let b = s.builds.store.build_summary(id).await?;
    let files = s.builds.store.artifacts_of_build(id).await?;
    let total: i64 = files.iter().map(|f| f.size).sum();
    let t = ArtifactsPage {
        title: format!("Artifacts · {} #{}", b.job, b.number),
        nav: "builds",
        v: static_version(),
        ctx: ctx.clone(),
        build_id: id,
        build_title: format!("{} #{}", b.job, b.number),
        total: size_text(total),
        files: files
            .into_iter()
            .map(|f| ArtifactRow {
                id: f.id,
                job: f.job,
                name: f.name,
                path: f.path,
                size: size_text(f.size),
                bytes: f.size,
                sha256: f.sha256,
                expires: f.expires_ms.map(time_text).unwrap_or_else(|| "never".into()),
            })
            .collect(),
    };
    Ok(page(StatusCode::OK, &t))
}

/// A plugin as its page shows it.
struct PluginRow {
    name: String,
    version: String,
    kinds: String,
    digest: String,
    digest_short: String,
    requested: Vec<String>,
    granted: Vec<String>,
    state: &'static str,
    builtin: bool,
    decided: String,
    description: String,
}

#[derive(Template)]
#[template(path = "plugins.html")]
struct PluginsPage {
    title: String,
    nav: &'static str,
    v: &'static str,
    ctx: super::Ctx,
    plugins: Vec<PluginRow>,
}

/// `GET /plugins`: installed plugins, requested vs granted capabilities, trust state.
pub async fn plugins(State(s): State<AppState>, caller: Option<Extension<Caller>>) -> PageResult {
    let ctx = ctx_of(&caller);
    let list = s.builds.store.plugins().await?;
    let t = PluginsPage {
        title: "Plugins".into(),
        nav: "plugins",
        v: static_version(),
        ctx: ctx.clone(),
        plugins: list
            .into_iter()
            .map(|p| PluginRow {
                digest_short: p.digest.trim_start_matches("sha256:").chars().take(12).collect(),
                kinds: p.kinds.join(", "),
                state: p.state.as_str(),
                decided: match (&p.decided_by, p.decided_ms) {
                    (Some(by), Some(ms)) => format!("{by}, {}", time_text(ms)),
                    _ => String::new(),
                },
                name: p.name,
                version: p.version,
                digest: p.digest,
                requested: p.requested,
                granted: p.granted,
                builtin: p.builtin,
                description: p.description,
            })
            .collect(),
    };
    Ok(page(StatusCode::OK, &t))
}

/// `POST /plugins/{name}/allow|deny`: records the decision for every version of the plugin
/// (the grants stay as they are; `chengis plugin allow --grant` changes them).
pub async fn decide_plugin(
    State(s): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path((name, decision)): Path<(String, String)>,
) -> PageResult {
    use crate::store::plugins::TrustState;
    let state = match decision.as_str() {
        "allow" => TrustState::Allowed,
        "deny" => TrustState::Denied,
        other => return Err(PageError::not_found(format!("no plugin action `{other}`: allow or deny"))),
    };
    s.builds.store.decide_plugin(&name, None, state, None, &who(&caller)).await?;
    tracing::info!("plugin `{name}`: {} from the dashboard", state.as_str());
    Ok(Redirect::to("/plugins").into_response())
}

/// An agent as its page shows it.
struct AgentRow {
    name: String,
    embedded: bool,
    status: String,
    labels: String,
    capacity: String,
    host: String,
    jobs: Vec<i64>,
    last_seen: String,
    last_seen_iso: String,
}

#[derive(Template)]
#[template(path = "agents.html")]
struct AgentsPage {
    title: String,
    nav: &'static str,
    v: &'static str,
    ctx: super::Ctx,
    agents: Vec<AgentRow>,
}

/// `GET /agents`: embedded and remote agents with labels, capacity, jobs and heartbeat.
pub async fn agents(State(s): State<AppState>, caller: Option<Extension<Caller>>) -> PageResult {
    let ctx = ctx_of(&caller);
    let silent = crate::server::agent_api::silence_ms(s.agents.lease_ttl);
    let list = s.builds.store.agents(silent).await?;
    let t = AgentsPage {
        title: "Agents".into(),
        nav: "agents",
        v: static_version(),
        ctx: ctx.clone(),
        agents: list
            .into_iter()
            .map(|a| AgentRow {
                capacity: format!("{} / {} executors", a.current_jobs.len(), a.info.executors),
                host: format!(
                    "{} {}, {} cores, {} MiB{}",
                    a.info.os,
                    a.info.arch,
                    a.info.cpus,
                    a.info.memory_mb,
                    if a.info.docker { ", docker" } else { "" }
                ),
                labels: a.info.labels.join(", "),
                last_seen: time_text(a.last_seen_ms),
                last_seen_iso: time_iso(a.last_seen_ms),
                name: a.info.name,
                embedded: a.embedded,
                status: a.status,
                jobs: a.current_jobs,
            })
            .collect(),
    };
    Ok(page(StatusCode::OK, &t))
}

/// An audit entry as its page shows it.
struct AuditRow {
    id: i64,
    when: String,
    iso: String,
    actor: String,
    ip: String,
    action: String,
    target: String,
    details: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    title: String,
    nav: &'static str,
    v: &'static str,
    ctx: super::Ctx,
    entries: Vec<AuditRow>,
    total: i64,
    problem: Option<String>,
    older: Option<String>,
}

/// Query of the audit page: entries older than `before`.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    before: Option<i64>,
}

/// `GET /audit`: the audit log, newest first, 200 per page, with the chain's check (admins).
pub async fn audit(
    State(s): State<AppState>,
    caller: Option<Extension<Caller>>,
    Query(q): Query<AuditQuery>,
) -> PageResult {
    const PER_PAGE: i64 = 200;
    let store = &s.builds.store;
    let verdict = store.verify_audit().await?;
    let entries = store.audit_newest(q.before.unwrap_or(0), PER_PAGE).await?;
    let t = AuditPage {
        title: "Audit log".into(),
        nav: "audit",
        v: static_version(),
        ctx: ctx_of(&caller),
        older: entries.last().filter(|e| e.id > 1).map(|e| format!("/audit?before={}", e.id)),
        entries: entries
            .into_iter()
            .map(|e| AuditRow {
                id: e.id,
                when: time_text(e.at_ms),
                iso: time_iso(e.at_ms),
                actor: e.actor,
                ip: e.ip,
                action: e.action,
                target: e.target,
                details: e.details,
            })
            .collect(),
        total: verdict.entries,
        problem: verdict.problem,
    };
    Ok(page(StatusCode::OK, &t))
}

/// Query of a badge: the branch, and the label on its left.
#[derive(Debug, Deserialize)]
pub struct BadgeQuery {
    branch: Option<String>,
    label: Option<String>,
}

/// `GET /badge/{job}.svg?branch=B`: the newest build's status as a flat badge, with an ETag
/// (304 when unchanged) and `Cache-Control: no-cache`.
pub async fn badge(
    State(s): State<AppState>,
    Path(file): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> PageResult {
    let q: BadgeQuery = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| PageError::bad_request(format!("invalid badge query: {e}")))?;
    let job = file.strip_suffix(".svg").ok_or_else(|| PageError::not_found("badges end in `.svg`"))?;
    s.builds.store.job(job).await?;
    let newest = s
        .builds
        .store
        .list_builds(&BuildFilter {
            job: Some(job.to_string()),
            branch: q.branch.filter(|b| !b.is_empty()),
            limit: 1,
            ..Default::default()
        })
        .await?;
    let (message, color) = svg::badge_message(newest.first().map(|b| b.status));
    let body = svg::badge(q.label.as_deref().unwrap_or("build"), message, color);
    let etag = {
        use sha2::Digest;
        format!("\"{}\"", hex::encode(&sha2::Sha256::digest(body.as_bytes())[..10]))
    };
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if matches { StatusCode::NOT_MODIFIED.into_response() } else { body.into_response() };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/svg+xml; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_is_stripped_for_the_plain_page() {
        assert_eq!(strip_ansi("\u{1b}[1;31mred\u{1b}[0m plain \u{1b}]0;title\u{7}x"), "red plain x");
    }

    #[test]
    fn list_links_keep_filters() {
        let q = ListQuery { job: Some("web app".into()), status: Some("failure".into()), ..Default::default() };
        assert_eq!(list_href("/", &q, ("before", 9)), "/?job=web%20app&status=failure&before=9");
        assert_eq!(size_text(1536), "1.5 KiB");
    }
}
