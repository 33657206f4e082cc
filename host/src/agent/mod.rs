//! The agent: leases jobs from the queue, runs each exactly as `chengis run` would (checkout at
//! the build's commit, the engine's job runner), renews the lease every second (which carries
//! cancellation), streams logs in batches, and finishes with the fencing token. `chengis serve`
//! runs one in-process (it writes to the store); `chengis agent` makes the same calls over HTTP
//! (`remote`), and the server's half of them lives in `server_side`.

use crate::engine::builds::BuildContext;
use crate::engine::checkout::{CheckoutRequest, checkout, checkout_cached, checkout_reused};
use crate::engine::context;
use crate::engine::events::RunEvent;
use crate::engine::job::{ContainerSpec, JobEnv, JobSpec, run_job};
use crate::exec::docker::{DockerRuntime, SandboxLabels};
use crate::exec::{CancelSignal, SecretMasker};
use crate::status::Status;
use crate::store::now_ms;
use crate::store::queue::{Lease, LeaseRequest};
use crate::store::secrets::MasterKeys;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument;

pub(crate) mod job_files;
pub mod link;
pub use chengis_model::protocol;
pub mod remote;
pub mod remote_blobs;
pub mod remote_plugins;
pub mod server_side;
use job_files::{Storage, remove_workspace};
use link::{Link, LinkError};
use server_side::{Assignment, LocalParts, Reports, Update};

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
}

/// Runs the agent loop until `shutdown` is cancelled.
pub async fn run_agent(ctx: BuildContext, keys: Arc<MasterKeys>, cfg: AgentConfig, shutdown: CancelSignal) {
    let slots = Arc::new(Semaphore::new(cfg.executors.max(1)));
    let mut notices = ctx.bus.subscribe();
    let mut last_disk_warning = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let free = slots.available_permits();
        let disk_full = ctx.storage.disk_state() == crate::engine::disk::DiskState::Critical;
        if disk_full && last_disk_warning.is_none_or(|t: Instant| t.elapsed() > Duration::from_secs(60)) {
            tracing::error!(
                agent = %cfg.name,
                "disk critically low under {}: leasing no new jobs until space is freed",
                ctx.storage.data_dir.display()
            );
            last_disk_warning = Some(Instant::now());
        }
        if free > 0 && !disk_full {
            let req = LeaseRequest {
                agent: &cfg.name,
                labels: &cfg.labels,
                capacity: free,
                ttl: cfg.lease_ttl,
                max_attempts: cfg.max_attempts,
                free: None,
                defer: None,
                registered_ms: None,
            };
            match ctx.store.lease_batch(&req).await {
                Ok(batch) => {
                    for (build_job, reason) in batch.exhausted {
                        if let Err(e) = ctx.job_ended(build_job, &reason).await {
                            tracing::error!(build_job, "moving the build on: {e}");
                        }
                    }
                    for lease in batch.leases {
                        let Ok(permit) = slots.clone().acquire_owned().await else { return };
                        let (ctx, keys, cfg) = (ctx.clone(), keys.clone(), cfg.clone());
                        let span =
                            tracing::info_span!("build_job", build_job = lease.build_job_id, attempt = lease.attempt);
                        tokio::spawn(
                            async move {
                                match server_side::prepare(&ctx, &keys, &lease).await {
                                    Ok((a, local)) => {
                                        if let Err(e) = execute(&Link::Local(ctx), &cfg, a, Some(local), None).await {
                                            tracing::error!("running build job {}: {e}", lease.build_job_id);
                                        }
                                    }
                                    Err(e) => {
                                        if let Err(e) = server_side::fail_prepare(&ctx, &lease, &e).await {
                                            tracing::error!("ending build job {}: {e}", lease.build_job_id);
                                        }
                                    }
                                }
                                drop(permit);
                            }
                            .instrument(span),
                        );
                    }
                }
                Err(e) => tracing::warn!("lease failed: {e}"),
            }
        }
        // Long poll: wake on an enqueue notice, a finished job, or every half second (expired
        // leases of other agents, delayed work).
        tokio::select! {
            _ = notices.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Runs a prepared job on this agent: checkout at the exact commit, the engine's job runner, the
/// log and step reports through `link`, and the end with the fencing token. `local`: the
/// embedded agent's extras (caches, artifacts, stage results); `stop`: cancels the job from
/// outside (a remote agent's drain deadline).
pub async fn execute(
    link: &Link,
    cfg: &AgentConfig,
    a: Assignment,
    local: Option<LocalParts>,
    stop: Option<CancelSignal>,
) -> Result<(), LinkError> {
    let work = link.work_dir();
    let (fresh, state_dir) = job_dirs(&work, a.lease.build_job_id);
    let req = checkout_request(&a);
    // A job whose steps run on this host borrows objects from the agent's cache and reuses a
    // workspace an earlier job of the repository left (cleaned); in a container only the
    // workspace is mounted, so its `.git` must hold its own objects.
    let on_host = a.spec.image.is_none() && a.spec.steps.iter().all(|s| s.image.is_none());
    let cache = on_host.then(|| crate::engine::checkout::cache_dir(&work.join("git-cache"), &req));
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
    let result = run_assignment(link, cfg, a, local, stop, &site).await;
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
        credentials: crate::engine::checkout::GitCredentials::from_secrets(&a.secrets),
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
            super::remove_workspace(&ws).await;
        }
    }
}

/// The workspace and step-state directory of build job `id` under `work`.
fn job_dirs(work: &std::path::Path, id: i64) -> (std::path::PathBuf, std::path::PathBuf) {
    (work.join("workspaces").join(id.to_string()), work.join("state").join(id.to_string()))
}

/// The body of [`execute`], with `work` the agent's working directory.
async fn run_assignment(
    link: &Link,
    cfg: &AgentConfig,
    a: Assignment,
    local: Option<LocalParts>,
    stop: Option<CancelSignal>,
    site: &Site,
) -> Result<(), LinkError> {
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
        Ok(Err(e)) => return fail(link, &a, &e.to_string()).await,
        Err(e) => return fail(link, &a, &e.to_string()).await,
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
        Ok(m) => Arc::new(m),
        Err(e) => return fail(link, &a, &e.to_string()).await,
    };
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
        plugins: link.plugins(),
        plugin_build: a.plugin_build.clone(),
        masker: masker.clone(),
        cancel: cancel.clone(),
        events: tx,
        kill_grace: cfg.kill_grace,
        output_cap: cfg.output_cap,
    };
    let renewer = tokio::spawn(renew_loop(link.clone(), a.lease.clone(), cfg.lease_ttl, cfg.renew_every, cancel));
    let stop_helpers = || {
        renewer.abort();
        if let Some(s) = &stopper {
            s.abort();
        }
    };

    // Storage before the steps (embedded agent); a remote agent says what it does not do yet.
    let storage = match (link, &local) {
        (Link::Local(ctx), Some(parts)) => {
            let fork = parts.trigger.as_ref().is_some_and(|t| t.fork);
            Some(Storage::new(ctx, &parts.job, &parts.build, &a.lease, &masker, fork))
        }
        _ => None,
    };
    // The log's next line number: the lease tells a remote agent (the embedded agent's
    // storage writes lines of its own, so it asks), valid until a line is written here.
    let mut next_line = match link {
        Link::Remote(..) => a.first_line,
        Link::Local(_) => None,
    };
    let mut pending = None;
    let mut remote_caches = Vec::new();
    let mut fingerprint: Option<String> = None;
    if let (Some(st), Some(parts)) = (&storage, &local) {
        match st.before_steps(&a, parts, &workspace, &info.sha, &ctx_values).await? {
            job_files::Before::Reused => {
                drop(env);
                stop_helpers();
                return Ok(());
            }
            job_files::Before::Fail(reason) => {
                drop(env);
                stop_helpers();
                return fail(link, &a, &reason).await;
            }
            job_files::Before::Run(p) => pending = Some(p),
        }
    } else if let Link::Remote(client, ..) = link {
        // A remote agent: the step executors it uses come as the server allows them; a stage
        // result is looked up (and reused) on the server; artifacts and caches travel through
        // the server's stores.
        if let Some(service) = link.plugins() {
            match remote_plugins::sync(client, &service, &a, &work.join("tmp")).await? {
                Ok(()) => {}
                Err(reason) => {
                    drop(env);
                    stop_helpers();
                    system_lines(link, &a, &masker, std::slice::from_ref(&reason), &mut next_line).await?;
                    return fail(link, &a, &reason).await;
                }
            }
        }
        let params = a.contexts.get("params").cloned().unwrap_or_default();
        match job_files::stage_fingerprint(&workspace, &info.sha, &a.spec, &a.plan_env, &params, &ctx_values.needs) {
            Ok(Some(fp)) => {
                let answer = client.lease_call(&a.lease, &protocol::ResultFind { fingerprint: fp.clone() }).await?;
                if answer.reused {
                    drop(env);
                    stop_helpers();
                    return Ok(());
                }
                fingerprint = Some(fp);
            }
            Ok(None) => {}
            Err(line) => system_lines(link, &a, &masker, &[line], &mut next_line).await?,
        }
        if !a.spec.download.is_empty() {
            let tmp = work.join("tmp");
            let placed = remote_blobs::download(client, &a, &workspace, &tmp).await?;
            let line = match &placed {
                Ok(line) | Err(line) => line.clone(),
            };
            system_lines(link, &a, &masker, &[line], &mut next_line).await?;
            if let Err(reason) = placed {
                drop(env);
                stop_helpers();
                return fail(link, &a, &reason).await;
            }
        }
        let caches = match job_files::resolve_caches(&a.spec, &ctx_values) {
            Ok(c) => c,
            Err(reason) => {
                drop(env);
                stop_helpers();
                return fail(link, &a, &reason).await;
            }
        };
        for c in caches {
            let r = remote_blobs::restore_cache(client, &a, &c, &workspace, &work.join("tmp")).await?;
            system_lines(link, &a, &masker, &r.lines, &mut next_line).await?;
            remote_caches.push((c, r.exact));
        }
    }
    let retention = a.artifact_rules.retention_ms.map(Duration::from_millis);
    let remote_artifacts =
        matches!(link, Link::Remote(..)).then(|| job_files::resolve_artifacts(&a.spec, &ctx_values, retention));
    let first_line = known_or_asked(link, &a.lease, next_line).await?;
    let pump = tokio::spawn(pump_events(link.clone(), a.clone(), rx, first_line));
    let job_spec = JobSpec {
        id: &a.spec.id,
        env: &a.spec.env,
        steps: &a.spec.steps,
        first_index: 0,
        timeout: a.spec.timeout,
        container: ContainerSpec::of(&a.spec),
    };
    let mut result = run_job(job_spec, &env, ctx_values).await;
    drop(env);
    // The pump only fails with a stale lease; a pump that panicked lost its unsent reports.
    let (mut unsent, mut pump_error) = match pump.await {
        Ok(Ok(reports)) => (reports, None),
        Ok(Err(e)) => (Reports::default(), Some(e)),
        Err(_) => (Reports::default(), None),
    };
    // Lines written after the steps (artifacts, caches, the embedded agent's storage) must
    // follow the unsent ones: send those now. Otherwise they go with the job's end.
    let lines_follow = storage.is_some()
        || !remote_caches.is_empty()
        || remote_artifacts.as_ref().is_some_and(|specs| specs.as_ref().map_or(true, |s| !s.is_empty()));
    if pump_error.is_none() && !unsent.is_empty() && lines_follow {
        match link.report(&a, std::mem::take(&mut unsent)).await {
            Ok(()) => {}
            Err(e) if e.is_stale() => pump_error = Some(e),
            Err(e) => tracing::warn!(build = a.build_id, job = %a.spec.id, "reporting: {e}"),
        }
    }

    if let (Some(st), Some(parts), Some(p)) = (&storage, &local, pending) {
        st.after_steps(p, parts, &a.spec, &mut result, &workspace).await?;
    }
    if let (Link::Remote(client, ..), Some(specs)) = (link, remote_artifacts) {
        match specs {
            Ok(specs) => {
                let specs: Vec<_> = specs
                    .into_iter()
                    .filter(|(when, _)| job_files::wanted(*when, result.status))
                    .map(|(_, s)| s)
                    .collect();
                match remote_blobs::keep(client, &a, specs, &workspace, &work.join("tmp")).await? {
                    Ok(lines) => system_lines(link, &a, &masker, &lines, &mut None).await?,
                    Err(reason) => {
                        system_lines(link, &a, &masker, std::slice::from_ref(&reason), &mut None).await?;
                        result.status = Status::Failure;
                        result.reason = Some(reason);
                    }
                }
            }
            Err(reason) if result.status == Status::Success => {
                result.status = Status::Error;
                result.reason = Some(reason);
            }
            Err(reason) => system_lines(link, &a, &masker, &[format!("artifacts: {reason}")], &mut None).await?,
        }
        if result.status == Status::Success {
            for (c, exact) in &remote_caches {
                let lines = if *exact {
                    vec![format!("cache `{}`: hit on the exact key, not saved again", c.key)]
                } else {
                    remote_blobs::save_cache(client, &a, c, &workspace, &work.join("tmp")).await
                };
                system_lines(link, &a, &masker, &lines, &mut None).await?;
            }
            if let Some(fp) = &fingerprint {
                client.lease_call(&a.lease, &protocol::ResultRecord { fingerprint: fp.clone() }).await?;
            }
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
    link.finish(&a, result.status, result.reason.as_deref(), Some((&outputs, &sandbox)), unsent).await
}

/// Ends a job that could not start (`error`); [`execute`] removes its workspace.
async fn fail(link: &Link, a: &Assignment, reason: &str) -> Result<(), LinkError> {
    link.finish(a, Status::Error, Some(reason), None, Reports::default()).await
}

/// Writes the agent's own (masked, System) lines to the job's log. `next`: the log's next line number when
/// known (asked from the server when not), advanced past the lines written.
async fn system_lines(
    link: &Link,
    a: &Assignment,
    masker: &SecretMasker,
    texts: &[String],
    next: &mut Option<u64>,
) -> Result<(), LinkError> {
    if texts.is_empty() {
        return Ok(());
    }
    let first = known_or_asked(link, &a.lease, *next).await?;
    link.append_log(&a.lease, &job_files::system_log(first, masker, texts)).await?;
    *next = Some(first + texts.len() as u64);
    Ok(())
}

/// The log's next line number: `known`, or asked from the server.
async fn known_or_asked(link: &Link, lease: &Lease, known: Option<u64>) -> Result<u64, LinkError> {
    match known {
        Some(n) => Ok(n),
        None => link.next_line(lease).await,
    }
}

/// Renews the lease every `every`; a cancel request or a lost lease cancels the job.
async fn renew_loop(link: Link, lease: Lease, ttl: Duration, every: Duration, cancel: CancelSignal) {
    // The lease was just granted: the first renewal is due one period from now.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        match link.renew(&lease, ttl).await {
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
async fn pump_events(
    link: Link,
    a: Assignment,
    mut rx: mpsc::Receiver<RunEvent>,
    first_line: u64,
) -> Result<Reports, LinkError> {
    const EVERY: Duration = Duration::from_millis(50);
    let mut unsent = Reports::default();
    let mut bytes = 0usize;
    let mut since: Option<Instant> = None;
    let mut step_started: std::collections::HashMap<usize, i64> = Default::default();
    let offset = first_line.saturating_sub(1);
    // The number the next line will get: where a starting step's lines begin.
    let mut next_line = first_line.max(1);
    let mut stale: Option<LinkError> = None;
    loop {
        let wait = since.map_or(EVERY, |t| EVERY.saturating_sub(t.elapsed()));
        let next = tokio::time::timeout(wait, rx.recv()).await;
        let update = match next {
            Ok(None) => return stale.map_or(Ok(unsent), Err),
            Ok(Some(RunEvent::Log { mut line, .. })) => {
                line.number += offset;
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
                && let Err(e) = link.report(&a, batch).await
            {
                tracing::warn!(build = a.build_id, job = %a.spec.id, "reporting: {e}");
                if e.is_stale() {
                    stale = Some(e);
                }
            }
        }
    }
}
