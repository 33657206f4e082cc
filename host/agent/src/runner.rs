//! The job runner of every agent: a leased job checked out at the build's commit (into a
//! workspace reused from an earlier job of the repository when its steps run on this host),
//! the work before the steps, the steps ([`crate::job::run_job`]), the work after them, and the
//! end with the fencing token; meanwhile the lease is renewed (which carries cancellation) and
//! log lines and step updates go to the server in batches. The embedded agent and a remote
//! agent differ only in their [`Peer`].

use crate::assignment::Assignment;
use crate::checkout::{CheckoutRequest, checkout, checkout_cached, checkout_reused};
use crate::context;
use crate::files::remove_workspace;
use crate::job::{ContainerSpec, JobEnv, JobSpec, run_job};
use crate::peer::{Before, End, JobFiles, Peer, PeerError};
use chengis_model::events::RunEvent;
use chengis_model::now_ms;
use chengis_model::protocol::{Lease, Reports, Update};
use chengis_model::status::Status;
use chengis_runner::exec::docker::{DockerRuntime, SandboxLabels};
use chengis_runner::exec::{CancelSignal, JobLog, SecretMasker};
use chengis_runner::sandbox::{HostPolicy, StepHost};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Its name (lease owner).
    pub name: String,
    /// Its labels.
    pub labels: Vec<String>,
    /// Jobs at once.
    pub executors: usize,
    /// Lease duration; renewed every `renew_every`.
    pub lease_ttl: Duration,
    /// Renewal period (also the longest delay before a cancel is seen).
    pub renew_every: Duration,
    /// Claims before a job whose agent keeps getting lost is marked `error`.
    pub max_attempts: i64,
    /// TERM-to-KILL grace period.
    pub kill_grace: Duration,
    /// Per-step output cap.
    pub output_cap: u64,
    /// Containers for jobs that name an image.
    pub docker: Arc<DockerRuntime>,
    /// How steps without an image run (`--host-steps`), and where running steps are recorded.
    pub host: Arc<HostPolicy>,
}

/// Runs a leased job on this agent: checkout at the exact commit, the work before the steps,
/// the job runner, the work after them, the log and step reports through `peer`, and the end
/// with the fencing token. `stop`: cancels the job from outside (a remote agent's drain
/// deadline).
pub async fn execute<P: Peer>(
    peer: &P,
    cfg: &AgentConfig,
    a: Assignment,
    stop: Option<CancelSignal>,
) -> Result<(), PeerError> {
    let work = peer.work_dir().to_path_buf();
    let (fresh, state_dir) = job_dirs(&work, a.lease.build_job_id);
    let req = checkout_request(&a);
    // A job whose steps run on this host borrows objects from the agent's cache and reuses a
    // workspace an earlier job of the repository left (cleaned); in a container only the
    // workspace is mounted, so its `.git` must hold its own objects.
    let on_host = a.spec.image.is_none() && a.spec.steps.iter().all(|s| s.image.is_none());
    let cache = on_host.then(|| crate::checkout::cache_dir(&work.join("git-cache"), &req));
    let reused = cache.as_ref().and_then(|c| pool::take(&work, c));
    let workspace = match (&reused, &cache) {
        (Some(ws), _) => ws.clone(),
        (None, Some(_)) => pool::new_path(&work),
        (None, None) => fresh,
    };
    let site = Site {
        work: work.clone(),
        req: req.clone(),
        workspace: workspace.clone(),
        state_dir: state_dir.clone(),
        cache: cache.clone(),
        reused: reused.is_some(),
    };
    let result = run_assignment(peer, cfg, a, stop, &site).await;
    // Whatever happened, the job's files go: a reusable workspace of a job that ended normally
    // is cleaned back to its commit now (nothing the job wrote stays while it waits); one whose
    // lease a newer attempt took (or whose end was not stored) is deleted.
    match cache {
        Some(cache) if result.is_ok() && workspace.join(".git").is_dir() => {
            let ws = workspace.clone();
            let cleaned = tokio::task::spawn_blocking(move || checkout_reused(&req, &ws, &cache).map(|_| cache)).await;
            match cleaned {
                Ok(Ok(cache)) => pool::put(&work, cache, workspace, cfg.executors.max(1)).await,
                _ => remove_workspace(&workspace).await,
            }
        }
        _ => remove_workspace(&workspace).await,
    }
    remove_workspace(&state_dir).await;
    result
}

/// Where a job runs: the agent's work dir, what to check out, the job's workspace (new, or
/// `reused` from an earlier job), its step-state directory, and the object cache its checkout
/// borrows from (steps on this host).
struct Site {
    work: std::path::PathBuf,
    req: CheckoutRequest,
    workspace: std::path::PathBuf,
    state_dir: std::path::PathBuf,
    cache: Option<std::path::PathBuf>,
    reused: bool,
}

/// What to check out for assignment `a`.
fn checkout_request(a: &Assignment) -> CheckoutRequest {
    CheckoutRequest {
        url: a.repo_url.clone(),
        commit: Some(a.commit.clone()),
        branch: Some(a.branch.clone()).filter(|b| !b.is_empty()),
        depth: 1,
        submodules: a.submodules,
        credentials: crate::checkout::GitCredentials::from_secrets(&a.secrets),
        ..CheckoutRequest::default()
    }
}

/// Workspaces kept between jobs, per agent work dir and object cache: a job of a repository
/// the agent built before checks out into a cleaned workspace of it, writing only what
/// differs, instead of creating (and later deleting) every file of the repository and its
/// `.git` again. At most `executors` wait per work dir; the rest are deleted.
mod pool {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::{LazyLock, Mutex};

    #[derive(Default)]
    struct Idle {
        by_cache: HashMap<PathBuf, Vec<PathBuf>>,
        count: usize,
        next: u64,
    }

    static POOLS: LazyLock<Mutex<HashMap<PathBuf, Idle>>> = LazyLock::new(Default::default);

    /// Names of pooled workspaces (not numbers: the retention sweep leaves them alone).
    const PREFIX: &str = "reuse-";

    fn with<T>(work: &Path, f: impl FnOnce(&mut Idle) -> T) -> T {
        let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
        let idle = pools.entry(work.to_path_buf()).or_insert_with(|| {
            // An earlier process's pooled workspaces: nobody knows what state they are in.
            if let Ok(entries) = std::fs::read_dir(work.join("workspaces")) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with(PREFIX) {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
            Idle::default()
        });
        f(idle)
    }

    /// An idle workspace of `cache`, if one waits.
    pub(super) fn take(work: &Path, cache: &Path) -> Option<PathBuf> {
        with(work, |idle| {
            let ws = idle.by_cache.get_mut(cache)?.pop()?;
            idle.count -= 1;
            Some(ws)
        })
    }

    /// A new pooled workspace path under `work`.
    pub(super) fn new_path(work: &Path) -> PathBuf {
        with(work, |idle| {
            idle.next += 1;
            work.join("workspaces").join(format!("{PREFIX}{}-{}", std::process::id(), idle.next))
        })
    }

    /// Returns a cleaned workspace; deleted instead when `max` already wait.
    pub(super) async fn put(work: &Path, cache: PathBuf, ws: PathBuf, max: usize) {
        let kept = with(work, |idle| {
            if idle.count >= max {
                return false;
            }
            idle.count += 1;
            idle.by_cache.entry(cache).or_default().push(ws.clone());
            true
        });
        if !kept {
            crate::files::remove_workspace(&ws).await;
        }
    }
}

/// The workspace and step-state directory of build job `id` under `work`.
fn job_dirs(work: &std::path::Path, id: i64) -> (std::path::PathBuf, std::path::PathBuf) {
    (work.join("workspaces").join(id.to_string()), work.join("state").join(id.to_string()))
}

/// The body of [`execute`], with `work` the agent's working directory.
async fn run_assignment<P: Peer>(
    peer: &P,
    cfg: &AgentConfig,
    a: Assignment,
    stop: Option<CancelSignal>,
    site: &Site,
) -> Result<(), PeerError> {
    let (work, req) = (site.work.as_path(), site.req.clone());
    let bj_id = a.lease.build_job_id;
    let (workspace, state_dir) = (site.workspace.clone(), site.state_dir.clone());
    if !site.reused {
        let _ = std::fs::remove_dir_all(&workspace);
    }
    let (ws, cache, reused) = (workspace.clone(), site.cache.clone(), site.reused);
    let t0 = Instant::now();
    let info = match tokio::task::spawn_blocking(move || match cache {
        // A reused workspace that cannot be reset (a job made a file undeletable, say) is
        // replaced by a new checkout.
        Some(cache) if reused => checkout_reused(&req, &ws, &cache).or_else(|e| {
            tracing::debug!("a new workspace instead of {}: {e}", ws.display());
            let _ = std::fs::remove_dir_all(&ws);
            checkout_cached(&req, &ws, &cache)
        }),
        Some(cache) => checkout_cached(&req, &ws, &cache),
        None => checkout(&req, &ws),
    })
    .await
    {
        Ok(Ok(info)) => {
            tracing::debug!("checked out {} in {} ms", info.short_sha, t0.elapsed().as_millis());
            info
        }
        Ok(Err(e)) => return fail(peer, &a, &e.to_string()).await,
        Err(e) => return fail(peer, &a, &e.to_string()).await,
    };
    // What the checkout found, plus what only the server knows (the event, the pull request).
    let mut git = serde_json::to_value(&info).unwrap_or_default();
    if let (Some(found), Some(known)) = (git.as_object_mut(), a.contexts.get("git").and_then(Value::as_object)) {
        for (key, value) in known {
            found.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    let mut ctx_values = a.contexts(Some(git));
    ctx_values.workspace = workspace.clone();

    let masker = match SecretMasker::new(a.secrets.values().cloned()) {
        Ok(m) => m,
        Err(e) => return fail(peer, &a, &e.to_string()).await,
    };
    // The job's one log: every line written from here on (the work before the steps, the
    // steps, plugins, the work after them) is numbered, masked and capped by it.
    let first_line = match a.first_line {
        Some(n) => n,
        None => peer.next_line(&a.lease).await?,
    };
    let log = JobLog::new(masker, first_line, cfg.output_cap);
    let host_env: Vec<(String, String)> = vec![
        ("PATH".into(), std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())),
        ("HOME".into(), std::env::var("HOME").unwrap_or_else(|_| "/tmp".into())),
    ];
    let mut base_env =
        context::base_env(&workspace, a.build_number.max(0) as u64, &a.pipeline, Some(a.spec.id.as_str()));
    context::set_var(&mut base_env, "CHENGIS_BUILD_ID", a.build_id.to_string());
    context::set_var(&mut base_env, "CHENGIS_AGENT_NAME", cfg.name.clone());
    base_env.extend(info.env());
    for (k, text) in &a.plan_env {
        ctx_values.env = context::env_object(&base_env);
        if let Ok(v) = context::render(text, &ctx_values) {
            context::set_var(&mut base_env, k, v);
        }
    }
    let cancel = CancelSignal::new();
    let stopper = stop.map(|stop| {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            cancel.cancel();
        })
    });
    let (tx, rx) = mpsc::channel(1024);
    let env = JobEnv {
        workspace: workspace.clone(),
        state_dir,
        base_env,
        host_env,
        docker: cfg.docker.clone(),
        labels: SandboxLabels {
            build: a.build_id.to_string(),
            job: a.spec.id.clone(),
            lease: format!("{}:{}", bj_id, a.lease.token),
        },
        allowance_name: a.job.clone(),
        owns_workspace: true,
        plugins: peer.executors(),
        plugin_build: a.plugin_build.clone(),
        log: log.clone(),
        cancel: cancel.clone(),
        events: tx,
        kill_grace: cfg.kill_grace,
        host: Some(StepHost {
            policy: cfg.host.clone(),
            writable: vec![workspace.clone(), site.state_dir.clone()],
            readable: site.cache.iter().cloned().collect(),
        }),
    };
    let renewer = tokio::spawn(renew_loop(peer.clone(), a.lease.clone(), cfg.lease_ttl, cfg.renew_every, cancel));
    let stop_helpers = || {
        renewer.abort();
        if let Some(s) = &stopper {
            s.abort();
        }
    };

    let tmp = work.join("tmp");
    let files = JobFiles { workspace: &workspace, sha: &info.sha, contexts: &ctx_values, log: &log, tmp: &tmp };
    let prepared = match peer.before_steps(&a, &files).await {
        Ok(Before::Run(p)) => p,
        Ok(Before::Reused) => {
            drop(env);
            stop_helpers();
            return Ok(());
        }
        Ok(Before::Fail(reason)) => {
            drop(env);
            stop_helpers();
            return fail(peer, &a, &reason).await;
        }
        Err(e) => {
            drop(env);
            stop_helpers();
            return Err(e);
        }
    };
    let pump = tokio::spawn(pump_events(peer.clone(), a.clone(), rx, log.next_number()));
    let job_spec = JobSpec {
        id: &a.spec.id,
        env: &a.spec.env,
        steps: &a.spec.steps,
        first_index: 0,
        timeout: a.spec.timeout,
        container: ContainerSpec::of(&a.spec),
    };
    // The work after the steps sees the contexts the steps started with.
    let ctx_after = ctx_values.clone();
    let mut result = run_job(job_spec, &env, ctx_values).await;
    drop(env);
    if cfg.host.user.is_some() {
        // The steps ran as the step user: the work after them (and the cleanup) sees the
        // agent's own files again.
        let ws = workspace.clone();
        let _ = tokio::task::spawn_blocking(move || chengis_runner::sandbox::reclaim(&ws)).await;
    }
    // The pump only fails with a stale lease; a pump that panicked lost its unsent reports.
    let (mut unsent, mut pump_error) = match pump.await {
        Ok(Ok(reports)) => (reports, None),
        Ok(Err(e)) => (Reports::default(), Some(e)),
        Err(_) => (Reports::default(), None),
    };
    // Lines written after the steps (artifacts, caches, a stage result) must follow the unsent
    // ones: send those now. Otherwise they go with the job's end.
    if pump_error.is_none() && !unsent.is_empty() && P::writes_after(&prepared) {
        match peer.report(&a, std::mem::take(&mut unsent)).await {
            Ok(()) => {}
            Err(e) if e.is_stale() => pump_error = Some(e),
            Err(e) => tracing::warn!(build = a.build_id, job = %a.spec.id, "reporting: {e}"),
        }
    }
    if pump_error.is_none() {
        let files = JobFiles { workspace: &workspace, sha: &info.sha, contexts: &ctx_after, log: &log, tmp: &tmp };
        if let Err(e) = peer.after_steps(&a, prepared, &files, &mut result).await {
            stop_helpers();
            return Err(e);
        }
    }
    stop_helpers();
    if let Some(e) = pump_error
        && e.is_stale()
    {
        tracing::warn!("a newer attempt owns build job {bj_id}; this run's result is dropped");
        return Err(e);
    }
    let outputs = Value::Object(result.outputs.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect());
    let sandbox = match &a.spec.image {
        Some(image) => format!("docker:{}", image.as_literal().unwrap_or_else(|| "(expression)".into())),
        None => "local".into(),
    };
    let end = End { status: result.status, reason: result.reason.as_deref(), ran: Some((&outputs, &sandbox)) };
    peer.finish(&a, end, unsent).await
}

/// Ends a job that could not start (`error`); [`execute`] removes its workspace.
async fn fail<P: Peer>(peer: &P, a: &Assignment, reason: &str) -> Result<(), PeerError> {
    peer.finish(a, End { status: Status::Error, reason: Some(reason), ran: None }, Reports::default()).await
}

/// Writes the agent's own lines to the job's log (masked and numbered by `log`, as System
/// lines).
pub(crate) async fn system_lines<P: Peer>(
    peer: &P,
    a: &Assignment,
    log: &JobLog,
    texts: &[String],
) -> Result<(), PeerError> {
    if texts.is_empty() {
        return Ok(());
    }
    peer.append_log(&a.lease, &log.system(texts)).await
}

/// Renews the lease every `every`; a cancel request or a lost lease cancels the job.
async fn renew_loop<P: Peer>(peer: P, lease: Lease, ttl: Duration, every: Duration, cancel: CancelSignal) {
    // The lease was just granted: the first renewal is due one period from now.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        match peer.renew(&lease, ttl).await {
            Ok(false) => {}
            Ok(true) => cancel.cancel(),
            Err(e) if e.is_stale() => {
                tracing::warn!(build_job = lease.build_job_id, "lease lost: stopping the job");
                cancel.cancel();
                return;
            }
            Err(e) => tracing::warn!("renewing the lease: {e}"),
        }
    }
}

/// Moves engine events to the server in batches: log lines and step/test updates together,
/// sent when 50 ms have passed since the first unsent one or 64 KiB of lines wait. Memory stays
/// bounded: the channel holds 1024 events, and while a batch is being stored the job's output
/// waits (backpressure). What is unsent when the steps end is returned, to go with the job's
/// end (a short job then costs one call instead of three). Returns the first stale-lease error
/// (after which nothing more is sent).
async fn pump_events<P: Peer>(
    peer: P,
    a: Assignment,
    mut rx: mpsc::Receiver<RunEvent>,
    first_line: u64,
) -> Result<Reports, PeerError> {
    const EVERY: Duration = Duration::from_millis(50);
    let mut unsent = Reports::default();
    let mut bytes = 0usize;
    let mut since: Option<Instant> = None;
    let mut step_started: std::collections::HashMap<usize, i64> = Default::default();
    // The number the next line will get: where a starting step's lines begin.
    let mut next_line = first_line.max(1);
    let mut stale: Option<PeerError> = None;
    loop {
        let wait = since.map_or(EVERY, |t| EVERY.saturating_sub(t.elapsed()));
        let next = tokio::time::timeout(wait, rx.recv()).await;
        let update = match next {
            Ok(None) => return stale.map_or(Ok(unsent), Err),
            Ok(Some(RunEvent::Log { line, .. })) => {
                next_line = next_line.max(line.number + 1);
                bytes += line.text.len();
                unsent.lines.push(line);
                None
            }
            Ok(Some(RunEvent::StepStarted { step, name, .. })) => {
                step_started.insert(step, now_ms());
                Some(Update::StepStarted { step, name, at_ms: now_ms(), first_line: Some(next_line) })
            }
            Ok(Some(RunEvent::StepFinished { step, name, status, exit_code, reason, .. })) => {
                Some(Update::StepFinished {
                    step,
                    name,
                    status,
                    exit_code,
                    reason,
                    started_ms: step_started.get(&step).copied(),
                    at_ms: now_ms(),
                })
            }
            Ok(Some(RunEvent::Tests { step, suites, .. })) => Some(Update::Tests { step, suites }),
            Ok(Some(_)) | Err(_) => None,
        };
        unsent.updates.extend(update);
        if !unsent.is_empty() && since.is_none() {
            since = Some(Instant::now());
        }
        if since.is_some_and(|t| t.elapsed() >= EVERY) || bytes >= 64 * 1024 {
            let batch = std::mem::take(&mut unsent);
            (bytes, since) = (0, None);
            if stale.is_none()
                && let Err(e) = peer.report(&a, batch).await
            {
                tracing::warn!(build = a.build_id, job = %a.spec.id, "reporting: {e}");
                if e.is_stale() {
                    stale = Some(e);
                }
            }
        }
    }
}
