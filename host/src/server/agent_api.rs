//! The agent API: what remote agents call (`/api/v1/agent/...`, authenticated with an agent
//! token), the agents list (`/api/v1/agents`) and agent tokens (`/api/v1/agent-tokens`).
//!
//! Leasing is a long poll: the server claims jobs for the agent's labels and free resources,
//! prepares them exactly as for the embedded agent (contexts, secrets, the job's `if`) and
//! answers as soon as there is work, or after `wait_ms` with none. Every write about a job
//! carries the lease; a stale one (the job was leased again after the agent went silent) is
//! answered 409 `stale_lease`, and the agent drops the job.
//!
//! Who may call: an agent token, under an agent name that token registered (a name is bound to
//! the token that registered it; the embedded agents' names are never a remote agent's). A call
//! about a lease must come from the agent that holds it and present the lease's secret, which
//! only that agent received (in the body's `lease`, or the `Chengis-Lease-Secret` header of a
//! transfer); anything else is 403 `not_lease_holder`. An agent records as artifacts only the
//! blobs it uploaded through the lease, so a blob is readable through a lease only when a job of
//! that build recorded it.

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ErrorBody};
use crate::agent::protocol::{self as p, LeaseAction, LeaseBody};
use crate::agent::server_side::{self, Reports, Update};
use crate::engine::builds::Notice;
use crate::store::agents::{AgentInfo, AgentRecord, AgentTokenRecord, Needs};
use crate::store::queue::{Lease, LeaseRequest, LeaseSecret, NotHolder};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chengis_agent::assignment::Leased;
use chengis_model::protocol::{AgentState, LeasePoll, Registered};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the server leases to remote agents.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Lease duration.
    pub lease_ttl: Duration,
    /// How often agents renew.
    pub renew_every: Duration,
    /// Claims before a job whose agent keeps getting lost is marked `error`.
    pub max_attempts: i64,
    /// Agents waiting in a lease poll now, for ranking.
    pub pollers: Arc<Mutex<HashMap<String, Poller>>>,
}

/// How long an agent may stay silent before it is shown `offline`: the lease time, at least 3 s.
pub fn silence_ms(lease_ttl: Duration) -> i64 {
    (lease_ttl.as_millis() as i64).max(3_000)
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            lease_ttl: Duration::from_secs(10),
            renew_every: Duration::from_secs(1),
            max_attempts: 2,
            pollers: Default::default(),
        }
    }
}

/// An agent waiting in a lease poll: its labels and resources.
#[derive(Debug, Clone)]
pub struct Poller {
    labels: Vec<String>,
    free: Option<Needs>,
    total: Needs,
}

impl Poller {
    /// How well a job that needs `needs` fits this agent, or `None` when it does not fit:
    /// the share of the agent's CPU plus the share of its memory left free after placing the
    /// job (0 to 2; higher is better, so work spreads to the emptiest agents). An agent that
    /// reports no resources scores 0: it takes jobs only when no measured agent can.
    pub fn score(&self, labels: &[String], needs: Needs) -> Option<f64> {
        if !labels.iter().all(|l| self.labels.contains(l)) {
            return None;
        }
        let Some(free) = self.free else { return Some(0.0) };
        if !needs.fits_in(free) {
            return None;
        }
        let share = |left: i64, total: i64| if total > 0 { left as f64 / total as f64 } else { 0.0 };
        Some(
            share(free.cpu_millis - needs.cpu_millis, self.total.cpu_millis)
                + share(free.memory_mb - needs.memory_mb, self.total.memory_mb),
        )
    }
}

/// Removes an agent from the pollers when its poll ends (also when the request is dropped).
struct PollGuard<'a> {
    pollers: &'a Mutex<HashMap<String, Poller>>,
    name: String,
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pollers.lock() {
            p.remove(&self.name);
        }
    }
}

/// The calling agent: its token id and name, from `Authorization: Bearer` and `Chengis-Agent`.
struct Caller {
    token_id: i64,
    name: String,
}

/// Checks the agent token; 401 when it is missing, unknown or revoked (the same answer for all).
async fn caller(s: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let unauthorized = || ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "unauthorized",
        message: "a valid agent token is required (Authorization: Bearer ...)".into(),
        details: json!(null),
    };
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    let token_id = s.builds.store.check_agent_token(token.trim()).await?.ok_or_else(unauthorized)?;
    let name = headers.get("chengis-agent").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request("the Chengis-Agent header must carry the agent's name (1-128 characters)"));
    }
    Ok(Caller { token_id, name })
}

/// Whether `name` is an embedded agent's: one of this server's, or shaped like one
/// (`embedded-N@host`, as `chengis serve` names them), so that a later start with more
/// embedded agents finds its names free.
fn reserved(s: &AppState, name: &str) -> bool {
    let shaped = name
        .strip_prefix("embedded-")
        .and_then(|rest| rest.split_once('@'))
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    shaped || s.builds.storage.local_agents.iter().any(|a| a == name)
}

fn forbidden(code: &'static str, message: String) -> ApiError {
    ApiError { status: StatusCode::FORBIDDEN, code, message, details: json!(null) }
}

/// [`caller`], refused (403) unless the agent name is the caller's own: not an embedded agent's,
/// and, once registered, registered with this token. `registered`: an unregistered name is
/// refused too (calls about leases); otherwise it passes (the lease poll answers it).
async fn bound_caller(s: &AppState, headers: &HeaderMap, registered: bool) -> Result<Caller, ApiError> {
    let c = caller(s, headers).await?;
    let name_taken = || {
        forbidden(
            "agent_name_not_yours",
            format!("the agent name `{}` is not registered with this token: register it first", c.name),
        )
    };
    if reserved(s, &c.name) {
        return Err(forbidden("agent_name_not_yours", format!("the name `{}` belongs to an embedded agent", c.name)));
    }
    match s.builds.store.agent_bound_to(&c.name, c.token_id).await? {
        Some(true) => Ok(c),
        None if !registered => Ok(c),
        _ => Err(name_taken()),
    }
}

/// The lease `token` on queue entry `entry` as the store holds it, when the calling agent holds
/// it and `secret` is its secret; 403 `not_lease_holder` otherwise, 409 when it is stale.
async fn held(
    s: &AppState,
    c: &Caller,
    entry: i64,
    token: i64,
    secret: Option<&LeaseSecret>,
) -> Result<Lease, ApiError> {
    match s.builds.store.held_by(entry, token, &c.name, secret).await? {
        Ok(lease) => Ok(lease),
        Err(NotHolder::Owner) => {
            Err(forbidden("not_lease_holder", format!("queue entry {entry} is leased to another agent")))
        }
        Err(NotHolder::Secret) => Err(forbidden(
            "not_lease_holder",
            format!("a call about the lease on queue entry {entry} needs the secret that came with the lease"),
        )),
    }
}

/// [`held`] for a transfer: the secret comes in the `Chengis-Lease-Secret` header.
async fn held_transfer(s: &AppState, headers: &HeaderMap, entry: i64, token: i64) -> Result<Lease, ApiError> {
    let c = bound_caller(s, headers, true).await?;
    let secret = headers
        .get(chengis_model::protocol::LEASE_SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| LeaseSecret(v.to_string()));
    held(s, &c, entry, token, secret.as_ref()).await
}

/// Registers (or re-registers) the calling agent.
#[utoipa::path(post, path = "/api/v1/agent/register", request_body = AgentInfo, responses((status = 200, body = Registered), (status = 401, body = ErrorBody)))]
pub async fn register(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(mut info): ApiJson<AgentInfo>,
) -> Result<Json<Registered>, ApiError> {
    let c = caller(&s, &headers).await?;
    if info.name != c.name {
        return Err(ApiError::bad_request(format!(
            "the registered name `{}` differs from the Chengis-Agent header `{}`",
            info.name, c.name
        )));
    }
    if reserved(&s, &info.name) {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: format!("the name `{}` belongs to an embedded agent", info.name),
            details: json!(null),
        });
    }
    info.executors = info.executors.clamp(1, 1024);
    if !s.builds.store.register_remote_agent(&info, c.token_id).await? {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "agent_name_taken",
            message: format!(
                "the agent name `{}` is registered with another agent token: choose another --name, or revoke that token first",
                info.name
            ),
            details: json!(null),
        });
    }
    tracing::info!(agent = %info.name, labels = ?info.labels, executors = info.executors, "agent registered");
    Ok(Json(Registered {
        lease_ttl_ms: s.agents.lease_ttl.as_millis() as u64,
        renew_every_ms: s.agents.renew_every.as_millis() as u64,
    }))
}

/// Long-polls for jobs matching the agent's labels and free resources.
#[utoipa::path(post, path = "/api/v1/agent/lease", request_body = LeasePoll, responses((status = 200, body = Object, description = "the leased jobs, prepared (`chengis_agent::assignment::Leased`)"), (status = 401, body = ErrorBody)))]
pub async fn lease(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(poll): ApiJson<LeasePoll>,
) -> Result<Json<Leased>, ApiError> {
    let c = bound_caller(&s, &headers, false).await?;
    let Some(polled) = s.builds.store.agent_polled(&c.name, "online").await? else {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "not_registered",
            message: format!("agent `{}` is not registered: register first", c.name),
            details: json!(null),
        });
    };
    // A poll lasts at most half the silence that makes an agent `offline`: an idle agent's
    // polls are its heartbeat.
    let longest = (silence_ms(s.agents.lease_ttl) / 2) as u64;
    let deadline = Instant::now() + Duration::from_millis(poll.wait_ms.min(longest).min(25_000));
    let mut notices = s.builds.bus.subscribe();
    let total = Needs { cpu_millis: polled.cpus * 1000, memory_mb: polled.memory_mb };
    let me = Poller { labels: poll.labels.clone(), free: poll.free, total };
    if let Ok(mut p) = s.agents.pollers.lock() {
        p.insert(c.name.clone(), me.clone());
    }
    let _guard = PollGuard { pollers: &s.agents.pollers, name: c.name.clone() };
    // A job goes to the best-scoring agent among those polling now: this one leaves a job that
    // another waiting agent fits strictly better (that agent is woken to take it).
    let deferred = std::sync::atomic::AtomicBool::new(false);
    let defer = |labels: &[String], needs: Needs| -> bool {
        let Some(mine) = me.score(labels, needs) else { return true };
        let better = s.agents.pollers.lock().is_ok_and(|p| {
            p.iter().any(|(name, other)| name != &c.name && other.score(labels, needs).is_some_and(|o| o > mine))
        });
        if better {
            deferred.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        better
    };
    let disk_full = || s.builds.storage.disk_state() == crate::engine::disk::DiskState::Critical;
    // The state the poll found, then read again after each wait.
    let mut state = Some(polled.state);
    loop {
        let mut assignments = Vec::new();
        // A draining agent (it said so while this poll waited) gets nothing more.
        let current = match state.take() {
            Some(st) => Some(st),
            None => s.builds.store.agent_state(&c.name).await?,
        };
        let draining = current.is_some_and(|st| st != "online");
        if poll.capacity > 0 && !disk_full() && !draining {
            let req = LeaseRequest {
                agent: &c.name,
                labels: &poll.labels,
                capacity: poll.capacity.min(64),
                ttl: s.agents.lease_ttl,
                max_attempts: s.agents.max_attempts,
                free: poll.free,
                defer: Some(&defer),
                registered_ms: Some(polled.registered_ms),
            };
            let batch = s.builds.store.lease_batch(&req).await?;
            for (build_job, reason) in batch.exhausted {
                s.builds.job_ended(build_job, &reason).await?;
            }
            for l in batch.leases {
                match server_side::prepare(&s.builds, &s.keys, &l).await {
                    Ok((a, _)) => assignments.push(a),
                    Err(e) => server_side::fail_prepare(&s.builds, &l, &e).await?,
                }
            }
        }
        if deferred.swap(false, std::sync::atomic::Ordering::Relaxed) {
            let _ = s.builds.bus.send(Notice::Enqueued);
        }
        if !assignments.is_empty() || draining || Instant::now() >= deadline {
            return Ok(Json(Leased { assignments }));
        }
        let left = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(500));
        tokio::select! {
            _ = notices.recv() => {}
            _ = tokio::time::sleep(left) => {}
        }
    }
}

/// `renew`, `log-offset`, `log`, `update` and `finish` for a held lease.
#[utoipa::path(post, path = "/api/v1/agent/leases/{entry}/{action}", params(("entry" = i64, Path, description = "queue entry"), ("action" = String, Path, description = "renew, log-offset, log, update or finish")), responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn lease_action(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath((entry, action)): ApiPath<(i64, String)>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let c = bound_caller(&s, &headers, true).await?;
    let Some(action) = LeaseAction::parse(&action) else {
        let known: Vec<&str> = LeaseAction::ALL.iter().map(|a| a.as_str()).collect();
        return Err(ApiError::not_found(format!("no lease action `{action}` ({})", known.join(", "))));
    };
    let body: LeaseBody =
        serde_json::from_value(body).map_err(|e| ApiError::bad_request(format!("invalid lease call: {e}")))?;
    if body.lease.entry != entry {
        return Err(ApiError::bad_request("the lease in the body is not the one in the path"));
    }
    // From here on the lease is the store's, not the body's.
    let lease = held(&s, &c, entry, body.lease.token, body.lease.secret.as_ref()).await?;
    if lease.build_job_id != body.lease.build_job_id {
        return Err(ApiError::bad_request("the lease in the body names another build job"));
    }
    let answer = match action {
        LeaseAction::Renew => {
            answer(renew(&s, &c.name, &lease, body.call::<p::Renew>().map_err(ApiError::bad_request)?).await?)
        }
        LeaseAction::LogOffset => {
            body.call::<p::LogOffset>().map_err(ApiError::bad_request)?;
            store_ref(&s).check_lease(&lease).await?;
            answer(p::LogOffsetAnswer { next: store_ref(&s).next_log_offset(lease.build_job_id).await? })
        }
        LeaseAction::Log => {
            let log: p::Log = body.call().map_err(ApiError::bad_request)?;
            let acknowledged = log.lines.last().map_or(0, |l| l.number);
            apply_reports(&s, &lease, None, Reports { lines: log.lines, updates: Vec::new() }).await?;
            answer(p::Acknowledged { acknowledged })
        }
        LeaseAction::Update => {
            let update: Update = body.call().map_err(ApiError::bad_request)?;
            apply_reports(&s, &lease, None, Reports { lines: Vec::new(), updates: vec![update] }).await?;
            answer(p::Done {})
        }
        LeaseAction::Report => {
            let reports: Reports = body.call().map_err(ApiError::bad_request)?;
            let acknowledged = reports.lines.last().map_or(0, |l| l.number);
            apply_reports(&s, &lease, None, reports).await?;
            answer(p::Acknowledged { acknowledged })
        }
        LeaseAction::Finish => answer(finish(&s, &c.name, &lease, body.call().map_err(ApiError::bad_request)?).await?),
        LeaseAction::Downloads => {
            body.call::<p::Downloads>().map_err(ApiError::bad_request)?;
            answer(downloads(&s, &lease).await?)
        }
        LeaseAction::Artifacts => answer(artifacts(&s, &lease, body.call().map_err(ApiError::bad_request)?).await?),
        LeaseAction::ResultFind => {
            let find: p::ResultFind = body.call().map_err(ApiError::bad_request)?;
            answer(result_find(&s, &lease, &find.fingerprint).await?)
        }
        LeaseAction::ResultRecord => {
            let record: p::ResultRecord = body.call().map_err(ApiError::bad_request)?;
            answer(result_record(&s, &lease, &record.fingerprint).await?)
        }
        LeaseAction::Plugins => answer(plugins(&s, &lease, body.call().map_err(ApiError::bad_request)?).await?),
        LeaseAction::CacheFind => {
            let find: p::CacheFind = body.call().map_err(ApiError::bad_request)?;
            let scope = lease_scope(&s, &lease).await?;
            let cache = crate::engine::cache::ResolvedCache {
                key: find.key,
                restore_keys: find.restore_keys,
                paths: Vec::new(),
            };
            answer(match crate::engine::cache::find(store_ref(&s), &scope, &cache).await {
                Ok(entry) => p::CacheFindAnswer { entry: Some(entry), lines: Vec::new() },
                Err(lines) => p::CacheFindAnswer { entry: None, lines },
            })
        }
    };
    Ok(Json(answer))
}

/// The store behind the agent API.
fn store_ref(s: &AppState) -> &crate::store::Store {
    &s.builds.store
}

/// A typed answer as the route's JSON.
fn answer<A: serde::Serialize>(a: A) -> Value {
    serde_json::to_value(a).unwrap_or_default()
}

async fn renew(s: &AppState, agent: &str, lease: &Lease, _: p::Renew) -> Result<p::RenewAnswer, ApiError> {
    let store = store_ref(s);
    store.agent_seen(agent, None).await?;
    let r = store.renew(lease, s.agents.lease_ttl).await?;
    Ok(p::RenewAnswer { cancel: matches!(r, crate::store::queue::Renewal::Cancel(_)) })
}

async fn finish(s: &AppState, agent: &str, lease: &Lease, f: p::Finish) -> Result<p::Done, ApiError> {
    if !f.status.is_finished() {
        return Err(ApiError::bad_request(format!("`{}` is not a final status", f.status)));
    }
    let (build_id, job) = lease_job(s, lease).await?;
    apply_reports(s, lease, Some((build_id, &job)), f.unsent).await?;
    let ran = f.outputs.as_ref().map(|o| (o, f.sandbox.as_deref().unwrap_or("remote")));
    server_side::finish(&s.builds, lease, &job, build_id, f.status, f.reason.as_deref(), ran).await?;
    tracing::info!(agent = %agent, build = build_id, job = %job, status = %f.status, "job finished on a remote agent");
    Ok(p::Done {})
}

async fn downloads(s: &AppState, lease: &Lease) -> Result<p::DownloadsAnswer, ApiError> {
    let store = store_ref(s);
    let (build_id, _) = lease_job(s, lease).await?;
    let spec = store.planned_job(lease.build_job_id).await?;
    let plan = store.plan(build_id).await?;
    let siblings = store.build_jobs(build_id).await?;
    Ok(match crate::agent::job_files::needed_files(store, &spec, &plan, &siblings, build_id).await? {
        Ok(files) => p::DownloadsAnswer { files, error: None },
        Err(reason) => p::DownloadsAnswer { files: Vec::new(), error: Some(reason) },
    })
}

async fn artifacts(s: &AppState, lease: &Lease, call: p::Artifacts) -> Result<p::ArtifactsAnswer, ApiError> {
    let blobs = s.builds.storage.blobs()?;
    // Only blobs this lease uploaded: recording another build's digest must not make its file
    // readable through this lease.
    let shas: Vec<&str> = call.files.iter().map(|f| f.sha256.as_str()).collect();
    let missing = store_ref(s).not_uploaded(lease, &shas).await?;
    for f in &call.files {
        if missing.contains(&f.sha256) || crate::engine::artifacts::BlobStore::open(&blobs, &f.sha256).is_err() {
            return Err(ApiError::bad_request(format!(
                "artifact file {} ({}) was not uploaded through this lease",
                f.path, f.sha256
            )));
        }
    }
    store_ref(s).artifact_insert(lease, &call.files).await?;
    Ok(p::ArtifactsAnswer { kept: call.files.len() })
}

fn check_fingerprint(fingerprint: &str) -> Result<(), ApiError> {
    match fingerprint.len() == 64 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
        true => Ok(()),
        false => Err(ApiError::bad_request("a stage result fingerprint is 64 hex digits")),
    }
}

async fn result_record(s: &AppState, lease: &Lease, fingerprint: &str) -> Result<p::ResultRecordAnswer, ApiError> {
    check_fingerprint(fingerprint)?;
    let store = store_ref(s);
    let scope = lease_scope(s, lease).await?;
    let spec = store.planned_job(lease.build_job_id).await?;
    if scope.writable {
        store.result_record(scope.job_id, &spec.id, fingerprint, lease.build_job_id).await?;
    }
    Ok(p::ResultRecordAnswer { recorded: scope.writable })
}

async fn result_find(s: &AppState, lease: &Lease, fingerprint: &str) -> Result<p::ResultFindAnswer, ApiError> {
    check_fingerprint(fingerprint)?;
    let store = store_ref(s);
    let scope = lease_scope(s, lease).await?;
    let spec = store.planned_job(lease.build_job_id).await?;
    let Some(hit) = store.result_find(scope.job_id, &spec.id, fingerprint).await? else {
        return Ok(p::ResultFindAnswer { reused: false });
    };
    // Reused here, as for the embedded agent: outputs, artifacts, the log line, the end.
    let build = store.build_summary(scope.build_id).await?;
    let job = store.job(&build.job).await?;
    // The job's log continues where the agent's lines end (it writes nothing after a reuse).
    let first = store.next_log_offset(lease.build_job_id).await?;
    let log = crate::exec::JobLog::new(crate::exec::SecretMasker::none(), first, 0);
    let storage = crate::agent::job_files::Storage::new(&s.builds, &job, &build, lease, &log, !scope.writable);
    let nowhere = std::path::Path::new("/nonexistent/chengis-remote-workspace");
    crate::agent::job_files::reuse_result(&s.builds, lease, &spec, &build, &storage, hit, fingerprint, nowhere).await?;
    Ok(p::ResultFindAnswer { reused: true })
}

async fn plugins(s: &AppState, lease: &Lease, call: p::Plugins) -> Result<p::PluginsAnswer, ApiError> {
    lease_job(s, lease).await?;
    let Some(service) = &s.builds.plugins else {
        return Ok(p::PluginsAnswer { error: Some("the server runs no plugin platform".into()), ..Default::default() });
    };
    // Allowed ones with their grants and config; the others by name with why (their step fails
    // when it runs, as on the embedded agent).
    let mut out = p::PluginsAnswer::default();
    for r in call.references.iter().take(64) {
        match service.resolve_step_executor(r).await {
            Ok((record, _)) => {
                let config = store_ref(s).plugin_config(&record.name).await?;
                out.plugins.push(p::ResolvedPlugin { record, config });
            }
            Err(e) => {
                let name = r.split_once('@').map_or(r.as_str(), |(n, _)| n);
                out.unresolved.insert(name.to_string(), e.to_string());
            }
        }
    }
    Ok(out)
}

/// Stores an agent's log lines (numbered consecutively) and then its updates, each write fenced
/// by `lease`; `job` is the lease's build and job when the caller already looked them up.
async fn apply_reports(s: &AppState, lease: &Lease, job: Option<(i64, &str)>, r: Reports) -> Result<(), ApiError> {
    if r.lines.windows(2).any(|w| w[1].number != w[0].number + 1) {
        return Err(ApiError::bad_request("log lines must be numbered consecutively"));
    }
    if !r.lines.is_empty() {
        s.builds.store.append_log(lease, &r.lines).await?;
        let _ = s.builds.bus.send(Notice::Log(lease.build_job_id));
    }
    if r.updates.is_empty() {
        return Ok(());
    }
    let (build_id, job) = match job {
        Some((b, j)) => (b, j.to_string()),
        None => lease_job(s, lease).await?,
    };
    Ok(server_side::apply_all(&s.builds, lease, build_id, &job, r.updates).await?)
}

/// The build and planned job id of a held lease.
async fn lease_job(s: &AppState, lease: &Lease) -> Result<(i64, String), ApiError> {
    Ok(s.builds.store.held_job(lease).await?)
}

/// Records that the calling agent is draining or has drained (it leases nothing more until it
/// polls or registers again).
#[utoipa::path(post, path = "/api/v1/agent/state", request_body = AgentState, responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn state(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AgentState>,
) -> Result<Json<Value>, ApiError> {
    let c = bound_caller(&s, &headers, false).await?;
    if !matches!(body.state.as_str(), "draining" | "drained") {
        return Err(ApiError::bad_request(format!("unknown agent state `{}`: draining or drained", body.state)));
    }
    s.builds.store.agent_seen(&c.name, Some(&body.state)).await?;
    tracing::info!(agent = %c.name, "agent {}", body.state);
    Ok(Json(json!({})))
}

/// Registered agents.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AgentList {
    /// Embedded and remote agents.
    pub agents: Vec<AgentRecord>,
}

/// Lists agents: status, labels, capacity, current jobs, last heartbeat.
#[utoipa::path(get, path = "/api/v1/agents", responses((status = 200, body = AgentList)))]
pub async fn list(State(s): State<AppState>) -> Result<Json<AgentList>, ApiError> {
    let silent = silence_ms(s.agents.lease_ttl);
    Ok(Json(AgentList { agents: s.builds.store.agents(silent).await? }))
}

/// A new agent token's name.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAgentToken {
    /// A name to recognise it by.
    #[serde(default)]
    pub name: Option<String>,
}

/// A created agent token (the secret is shown only here).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CreatedAgentToken {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// The secret for `chengis agent --token`.
    pub token: String,
}

/// Creates an agent token.
#[utoipa::path(post, path = "/api/v1/agent-tokens", request_body = NewAgentToken, responses((status = 201, body = CreatedAgentToken)))]
pub async fn create_token(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<NewAgentToken>,
) -> Result<(StatusCode, Json<CreatedAgentToken>), ApiError> {
    let name = body.name.unwrap_or_else(|| "agent".into());
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::bad_request("a token name has 1 to 128 characters"));
    }
    let (id, token) = s.builds.store.create_agent_token(&name).await?;
    tracing::info!(token = id, name = %name, "agent token created");
    Ok((StatusCode::CREATED, Json(CreatedAgentToken { id, name, token })))
}

/// Agent tokens (never their secrets).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AgentTokenList {
    /// The tokens.
    pub tokens: Vec<AgentTokenRecord>,
}

/// Lists agent tokens.
#[utoipa::path(get, path = "/api/v1/agent-tokens", responses((status = 200, body = AgentTokenList)))]
pub async fn list_tokens(State(s): State<AppState>) -> Result<Json<AgentTokenList>, ApiError> {
    Ok(Json(AgentTokenList { tokens: s.builds.store.agent_tokens().await? }))
}

/// Revokes an agent token (by id or name): agents using it are refused at their next call.
#[utoipa::path(delete, path = "/api/v1/agent-tokens/{id}", params(("id" = String, Path, description = "token id or name")), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke_token(State(s): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<StatusCode, ApiError> {
    if s.builds.store.revoke_agent_token(&id).await? {
        tracing::info!(token = %id, "agent token revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no live agent token `{id}`")))
    }
}

/// The fencing token of a lease, for blob transfers.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LeaseToken {
    /// The lease's fencing token.
    pub token: i64,
}

/// The build of the job `lease` holds.
async fn held_build(s: &AppState, lease: &Lease) -> Result<i64, ApiError> {
    Ok(s.builds.store.build_job(lease.build_job_id).await?.build_id)
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "unavailable",
        message: e.to_string(),
        details: json!(null),
    }
}

/// The SHA-256 an upload was sent with (`X-Checksum-Sha256`), in lower-case hex.
fn checksum_header(headers: &HeaderMap) -> Result<String, ApiError> {
    let claimed = headers.get("x-checksum-sha256").and_then(|v| v.to_str().ok()).unwrap_or_default().to_lowercase();
    if claimed.len() != 64 || !claimed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request("X-Checksum-Sha256 must carry the body's SHA-256 in hex"));
    }
    Ok(claimed)
}

/// Streams an upload into `file`, at most `limit` bytes (`cap` names the limit in the 413),
/// checking its SHA-256 against `X-Checksum-Sha256`; returns its size and SHA-256.
async fn receive(
    headers: &HeaderMap,
    body: axum::body::Body,
    file: &tempfile::NamedTempFile,
    limit: u64,
    cap: &str,
) -> Result<(u64, String), ApiError> {
    let claimed = checksum_header(headers)?;
    let mut out = tokio::fs::File::from_std(file.reopen().map_err(unavailable)?);
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the upload: {e}")))?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "payload_too_large",
                message: format!("the upload is over {cap} of {limit} bytes"),
                details: json!(null),
            });
        }
        sha2::Digest::update(&mut hasher, &chunk);
        tokio::io::AsyncWriteExt::write_all(&mut out, &chunk).await.map_err(unavailable)?;
    }
    tokio::io::AsyncWriteExt::flush(&mut out).await.map_err(unavailable)?;
    let actual = hex::encode(sha2::Digest::finalize(hasher));
    if actual != claimed {
        return Err(ApiError::bad_request(format!(
            "the upload's SHA-256 is {actual}, not the {claimed} it was sent with"
        )));
    }
    Ok((size, actual))
}

/// Stores an artifact file uploaded by the agent holding the lease; the body's SHA-256 must
/// match `X-Checksum-Sha256`, and the body may not exceed the per-job artifact cap.
#[utoipa::path(put, path = "/api/v1/agent/leases/{entry}/blobs", params(("entry" = i64, Path, description = "queue entry"), LeaseToken, ("Chengis-Lease-Secret" = String, Header, description = "the secret that came with the lease"), ("X-Checksum-Sha256" = String, Header, description = "SHA-256 of the body")), request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn put_blob(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(entry): ApiPath<i64>,
    super::error::ApiQuery(q): super::error::ApiQuery<LeaseToken>,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let lease = held_transfer(&s, &headers, entry, q.token).await?;
    let blobs = s.builds.storage.blobs()?;
    let tmp = tempfile::NamedTempFile::new_in(blobs.root().join("tmp")).map_err(unavailable)?;
    let (size, sha256) =
        receive(&headers, body, &tmp, s.builds.storage.artifact_max_job, "the per-job artifact cap").await?;
    // Checked while received: moved into place as it is, not copied and hashed again.
    let name = tmp.path().file_name().map(|n| format!("tmp/{}", n.to_string_lossy())).unwrap_or_default();
    let _path = tmp.into_temp_path();
    let stored = blobs.adopt(&name, &sha256, size)?;
    s.builds.store.lease_upload(&lease, &stored.sha256).await?;
    Ok(Json(json!({"sha256": stored.sha256, "size": stored.size})))
}

/// Sends an artifact file of the lease's build to the agent holding the lease.
#[utoipa::path(get, path = "/api/v1/agent/leases/{entry}/blobs/{sha256}", params(("entry" = i64, Path, description = "queue entry"), ("sha256" = String, Path, description = "the file's SHA-256"), LeaseToken, ("Chengis-Lease-Secret" = String, Header, description = "the secret that came with the lease")), responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn get_blob(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath((entry, sha)): ApiPath<(i64, String)>,
    super::error::ApiQuery(q): super::error::ApiQuery<LeaseToken>,
) -> Result<axum::response::Response, ApiError> {
    let lease = held_transfer(&s, &headers, entry, q.token).await?;
    let build_id = held_build(&s, &lease).await?;
    // Only files of this build: a lease is no key to every artifact of the server.
    if !s.builds.store.artifacts_of_build(build_id).await?.iter().any(|f| f.sha256 == sha) {
        return Err(ApiError::not_found(format!("build {build_id} has no artifact file {sha}")));
    }
    let blobs = s.builds.storage.blobs()?;
    let file = tokio::task::spawn_blocking(move || crate::engine::artifacts::BlobStore::open(&blobs, &sha))
        .await
        .map_err(unavailable)??;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        tokio::fs::File::from_std(file),
        256 * 1024,
    ));
    let mut resp = axum::response::Response::new(body);
    let h = resp.headers_mut();
    h.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/octet-stream"));
    h.insert(axum::http::header::CONTENT_LENGTH, axum::http::HeaderValue::from(len));
    Ok(resp)
}

/// The cache scope of the build a lease holds (its job, branch, default branch, fork or not).
async fn lease_scope(s: &AppState, lease: &Lease) -> Result<crate::engine::cache::CacheScope, ApiError> {
    let store = &s.builds.store;
    let build_id = held_build(s, lease).await?;
    let build = store.build_summary(build_id).await?;
    let job = store.job(&build.job).await?;
    let fork = s.builds.trigger_context(build_id).await?.is_some_and(|t| t.fork);
    Ok(crate::agent::job_files::scope_of(&job, &build, fork))
}

/// Sends a cache archive of the lease's job to the agent holding the lease.
#[utoipa::path(get, path = "/api/v1/agent/leases/{entry}/caches/{id}", params(("entry" = i64, Path, description = "queue entry"), ("id" = i64, Path, description = "cache entry id"), LeaseToken, ("Chengis-Lease-Secret" = String, Header, description = "the secret that came with the lease")), responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn get_cache(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath((entry, id)): ApiPath<(i64, i64)>,
    super::error::ApiQuery(q): super::error::ApiQuery<LeaseToken>,
) -> Result<axum::response::Response, ApiError> {
    let lease = held_transfer(&s, &headers, entry, q.token).await?;
    let scope = lease_scope(&s, &lease).await?;
    let job = s.builds.store.build_summary(scope.build_id).await?.job;
    let cache = s.builds.store.cache_list(None).await?.into_iter().find(|c| c.id == id);
    // Only the entries this build may read.
    let Some(cache) = cache.filter(|c| c.job == job && scope.reads().contains(&c.scope.as_str())) else {
        return Err(ApiError::not_found(format!("no cache entry {id} for this job")));
    };
    let file = tokio::fs::File::open(s.builds.storage.cache_dir().join(&cache.file)).await.map_err(unavailable)?;
    let mut resp = axum::response::Response::new(axum::body::Body::from_stream(
        tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024),
    ));
    resp.headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/octet-stream"));
    Ok(resp)
}

/// Where a cache archive upload goes.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CacheUpload {
    /// The lease's fencing token.
    pub token: i64,
    /// The cache key.
    pub key: String,
    /// Files in the archive (for the log).
    #[serde(default)]
    pub files: u64,
}

/// Saves a cache archive packed by the agent holding the lease (SHA-256 in
/// `X-Checksum-Sha256`, at most the largest cache entry); the first save of a key wins.
#[utoipa::path(put, path = "/api/v1/agent/leases/{entry}/caches", params(("entry" = i64, Path, description = "queue entry"), CacheUpload, ("Chengis-Lease-Secret" = String, Header, description = "the secret that came with the lease"), ("X-Checksum-Sha256" = String, Header, description = "SHA-256 of the body")), request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn put_cache(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(entry): ApiPath<i64>,
    super::error::ApiQuery(q): super::error::ApiQuery<CacheUpload>,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let lease = held_transfer(&s, &headers, entry, q.token).await?;
    let scope = lease_scope(&s, &lease).await?;
    if q.key.is_empty() || q.key.len() > 512 {
        return Err(ApiError::bad_request("a cache key has 1 to 512 characters"));
    }
    let cfg = &s.builds.storage;
    let dir = cfg.cache_dir();
    tokio::fs::create_dir_all(&dir).await.map_err(unavailable)?;
    let tmp = tempfile::Builder::new().prefix(".chengis-upload-").tempfile_in(&dir).map_err(unavailable)?;
    let (size, sha256) = receive(&headers, body, &tmp, cfg.cache_max_entry, "the largest cache entry").await?;
    let packed = chengis_archive::tarzst::Packed { file: tmp, sha256, size, files: q.files };
    let cache = crate::engine::cache::ResolvedCache { key: q.key.clone(), restore_keys: Vec::new(), paths: Vec::new() };
    let lines = crate::engine::cache::keep(&s.builds.store, cfg, &scope, &cache, packed, q.files).await;
    Ok(Json(json!({ "lines": lines })))
}

/// Sends the component of an allowed step executor to the agent holding the lease (the agent
/// checks the digest before recording it).
#[utoipa::path(get, path = "/api/v1/agent/leases/{entry}/plugins/{digest}", params(("entry" = i64, Path, description = "queue entry"), ("digest" = String, Path, description = "the component's `sha256:` digest"), LeaseToken, ("Chengis-Lease-Secret" = String, Header, description = "the secret that came with the lease")), responses((status = 200, content_type = "application/wasm", body = Vec<u8>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn get_plugin(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath((entry, digest)): ApiPath<(i64, String)>,
    super::error::ApiQuery(q): super::error::ApiQuery<LeaseToken>,
) -> Result<axum::response::Response, ApiError> {
    held_transfer(&s, &headers, entry, q.token).await?;
    let record = s.builds.store.plugin_by_digest(&digest).await?.filter(|p| {
        p.state == crate::store::plugins::TrustState::Allowed
            && p.world == crate::plugins::world_name(chengis_plugin_host::World::StepExecutor)
    });
    let Some(record) = record else {
        return Err(ApiError::not_found(format!("no allowed step executor {digest}")));
    };
    let bytes = tokio::fs::read(&record.path).await.map_err(unavailable)?;
    let mut resp = axum::response::Response::new(axum::body::Body::from(bytes));
    resp.headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/wasm"));
    Ok(resp)
}
