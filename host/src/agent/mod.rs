//! The agent: leases jobs from the queue, runs each exactly as `chengis run` would (checkout at
//! the build's commit, the engine's job runner), renews the lease every second (which carries
//! cancellation), streams logs into the store in batches, and finishes with the fencing token.
//! `chengis serve` runs one in-process; remote agents will speak the same calls over HTTP.

use crate::engine::builds::{BuildContext, Notice};
use crate::engine::checkout::{CheckoutRequest, checkout};
use crate::engine::context::{self, Contexts};
use crate::engine::events::RunEvent;
use crate::engine::job::{ContainerSpec, JobEnv, JobSpec, run_job};
use crate::exec::docker::{DockerRuntime, SandboxLabels};
use crate::exec::{CancelSignal, LogLine, SecretMasker};
use crate::plugins::dispatch::Change;
use crate::status::Status;
use crate::store::builds::StepRecord;
use crate::store::queue::{Lease, LeaseRequest, Renewal};
use crate::store::secrets::MasterKeys;
use crate::store::{StoreError, now_ms};
use chengis_pipeline::{Plan, PlannedJob};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument;

mod storage;
use storage::{Storage, remove_workspace, resolve_artifacts, resolve_caches, reuse_result, wanted};

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
        let disk_full = ctx.storage.disk_state() == crate::engine::storage::DiskState::Critical;
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
            };
            match ctx.store.lease(&req).await {
                Ok(leases) => {
                    for lease in leases {
                        let Ok(permit) = slots.clone().acquire_owned().await else { return };
                        let (ctx, keys, cfg) = (ctx.clone(), keys.clone(), cfg.clone());
                        let span =
                            tracing::info_span!("build_job", build_job = lease.build_job_id, attempt = lease.attempt);
                        tokio::spawn(
                            async move {
                                if let Err(e) = run_leased(&ctx, &keys, &cfg, &lease).await {
                                    tracing::error!("running build job {}: {e}", lease.build_job_id);
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

async fn run_leased(ctx: &BuildContext, keys: &MasterKeys, cfg: &AgentConfig, lease: &Lease) -> Result<(), StoreError> {
    let store = &ctx.store;
    let bj = store.build_job(lease.build_job_id).await?;
    let build = store.build_summary(bj.build_id).await?;
    let job_record = store.job(&build.job).await?;
    let corrupt = |what: &'static str| move |e: serde_json::Error| StoreError::Corrupt { what, detail: e.to_string() };
    let spec: PlannedJob = serde_json::from_str(&store.build_job_spec(bj.id).await?).map_err(corrupt("job spec"))?;
    let plan: Plan =
        serde_json::from_str(&store.build_plan(bj.build_id).await?.unwrap_or_default()).map_err(corrupt("plan"))?;
    store.start_leased_job(lease).await?;
    if build.status == Status::Queued {
        store.transition_build(build.id, Status::Running, None).await?;
        ctx.announce(build.id, Change::Build);
    }
    store
        .add_event(build.id, "job_status", &json!({"job": spec.id, "status": "running", "attempt": lease.attempt}))
        .await?;
    let _ = ctx.bus.send(Notice::Build(build.id));
    ctx.announce(build.id, Change::Job(spec.id.clone(), Status::Running));

    // Contexts and the job's condition, as the local engine decides them.
    let siblings = store.build_jobs(bj.build_id).await?;
    let mut needs = serde_json::Map::new();
    let mut failed_need = None;
    for key in &spec.needs_keys {
        let mine: Vec<_> =
            siblings.iter().filter(|s| plan.jobs.iter().any(|p| p.id == s.job_key && &p.key == key)).collect();
        let mut outputs = serde_json::Map::new();
        for s in &mine {
            outputs.extend(s.outputs.clone());
            if s.status != Status::Success {
                failed_need = Some((key.clone(), s.status));
            }
        }
        let result = crate::engine::run::overall(mine.iter().map(|s| s.status), false);
        needs.insert(key.clone(), json!({"result": result.as_str(), "outputs": outputs}));
    }
    let secrets = store.secrets_for_job(keys, &build.job).await?;
    // The webhook event behind the build, if any (recorded as its `trigger` event).
    let trigger = store
        .events_after(build.id, 0)
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.kind == "trigger")
        .and_then(|e| serde_json::from_value::<crate::engine::builds::TriggerContext>(e.payload).ok());
    let mut ctx_values = Contexts {
        params: context::object(plan.params.iter()),
        secrets: Value::Object(secrets.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()),
        matrix: context::object(spec.matrix.iter()),
        needs: Value::Object(needs),
        build: json!({"id": build.id, "number": build.number, "job": build.job, "attempt": lease.attempt}),
        git: git_context(&build, trigger.as_ref()),
        status: Some(if failed_need.is_some() {
            chengis_pipeline::expr::Status::Failure
        } else {
            chengis_pipeline::expr::Status::Success
        }),
        ..Contexts::default()
    };
    let run = context::condition(spec.condition.as_deref(), &ctx_values);
    if !matches!(run, Ok(true)) {
        let (status, reason) = match (run, failed_need) {
            (Err(e), _) => (Status::Error, e),
            (_, Some((n, s))) if spec.condition.is_none() => {
                (Status::Skipped, format!("needs `{n}`, which ended `{s}`"))
            }
            _ => (Status::Skipped, "its `if` condition is false".to_string()),
        };
        return finish(ctx, lease, &spec, build.id, status, Some(&reason), Value::Object(Default::default())).await;
    }

    // Workspace at the exact commit.
    let workspace = ctx.data_dir.join("workspaces").join(bj.id.to_string());
    let _ = std::fs::remove_dir_all(&workspace);
    let req = CheckoutRequest {
        url: job_record.repo_url.clone(),
        commit: Some(build.commit_sha.clone()),
        branch: Some(build.branch.clone()).filter(|b| !b.is_empty()),
        depth: 1,
        submodules: job_record.submodules,
        credentials: crate::engine::checkout::GitCredentials::from_secrets(&secrets),
        ..CheckoutRequest::default()
    };
    let ws = workspace.clone();
    let checked = tokio::task::spawn_blocking(move || checkout(&req, &ws)).await;
    let info = match checked {
        Ok(Ok(info)) => info,
        Ok(Err(e)) => {
            remove_workspace(&workspace).await;
            return finish(ctx, lease, &spec, build.id, Status::Error, Some(&e.to_string()), Value::Null).await;
        }
        Err(e) => {
            remove_workspace(&workspace).await;
            return finish(ctx, lease, &spec, build.id, Status::Error, Some(&e.to_string()), Value::Null).await;
        }
    };
    // What the checkout found, plus what only the server knows (the event, the pull request).
    let mut git = serde_json::to_value(&info).unwrap_or_default();
    if let (Some(found), Some(known)) = (git.as_object_mut(), ctx_values.git.as_object()) {
        for (key, value) in known {
            found.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    ctx_values.git = git;
    ctx_values.workspace = workspace.clone();

    let masker = match SecretMasker::new(secrets.values().cloned()) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            remove_workspace(&workspace).await;
            return finish(ctx, lease, &spec, build.id, Status::Error, Some(&e.to_string()), Value::Null).await;
        }
    };
    let host_env: Vec<(String, String)> = vec![
        ("PATH".into(), std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())),
        ("HOME".into(), std::env::var("HOME").unwrap_or_else(|_| "/tmp".into())),
    ];
    let mut base_env: Vec<(String, String)> = vec![
        ("CI".into(), "true".into()),
        ("CHENGIS".into(), "true".into()),
        ("CHENGIS_WORKSPACE".into(), workspace.display().to_string()),
        ("CHENGIS_BUILD_NUMBER".into(), build.number.to_string()),
        ("CHENGIS_BUILD_ID".into(), build.id.to_string()),
        ("CHENGIS_JOB".into(), spec.id.clone()),
        ("CHENGIS_AGENT_NAME".into(), cfg.name.clone()),
    ];
    base_env.extend(info.env());
    for (k, text) in &plan.env {
        ctx_values.env = context::env_object(&base_env);
        if let Ok(v) = context::render(text, &ctx_values) {
            context::set_var(&mut base_env, k, v);
        }
    }
    let cancel = CancelSignal::new();
    let (tx, rx) = mpsc::channel(1024);
    let env = JobEnv {
        workspace: workspace.clone(),
        state_dir: ctx.data_dir.join("state").join(bj.id.to_string()),
        base_env,
        host_env,
        docker: cfg.docker.clone(),
        labels: SandboxLabels {
            build: build.id.to_string(),
            job: spec.id.clone(),
            lease: format!("{}:{}", lease.build_job_id, lease.token),
        },
        allowance_name: build.job.clone(),
        owns_workspace: true,
        plugins: ctx.plugins.clone(),
        plugin_build: Some(crate::plugins::dispatch::wit_build(&build, &plan.name, &job_record.repo_url)),
        masker,
        cancel: cancel.clone(),
        events: tx,
        kill_grace: cfg.kill_grace,
        output_cap: cfg.output_cap,
    };
    let renewer = tokio::spawn(renew_loop(ctx.clone(), lease.clone(), cfg.lease_ttl, cfg.renew_every, cancel.clone()));
    // Storage before the steps: a reused stage result ends the job here; otherwise upstream
    // artifacts and caches go into the workspace.
    let fork = trigger.as_ref().is_some_and(|t| t.fork);
    let storage = Storage::new(ctx, &job_record, &build, lease, &env.masker, fork);
    let fingerprint = if spec.cache_result {
        let stable = json!({"env": plan.env, "params": plan.params, "needs": ctx_values.needs});
        match crate::engine::cache::tree_of(&workspace, &info.sha) {
            Ok(tree) => Some(crate::engine::cache::fingerprint(
                &tree,
                &serde_json::to_value(&spec).unwrap_or_default(),
                &stable,
            )),
            Err(e) => {
                storage.log(&[format!("result cache: cannot read the commit's tree ({e}); running the job")]).await?;
                None
            }
        }
    } else {
        None
    };
    if let Some(fp) = &fingerprint
        && let Some(hit) = store.result_find(job_record.id, &spec.id, fp).await?
    {
        drop(env);
        renewer.abort();
        return reuse_result(ctx, lease, &spec, &build, &storage, hit, fp, &workspace).await;
    }
    if let Err(reason) = storage.download(&spec, &plan, &siblings, &workspace).await? {
        drop(env);
        renewer.abort();
        remove_workspace(&workspace).await;
        return finish(ctx, lease, &spec, build.id, Status::Error, Some(&reason), Value::Null).await;
    }
    let caches = match resolve_caches(&spec, &ctx_values) {
        Ok(c) => c,
        Err(reason) => {
            drop(env);
            renewer.abort();
            remove_workspace(&workspace).await;
            return finish(ctx, lease, &spec, build.id, Status::Error, Some(&reason), Value::Null).await;
        }
    };
    let mut exact = Vec::with_capacity(caches.len());
    for c in &caches {
        let r = crate::engine::cache::restore(store, &ctx.storage, &storage.scope, c, &workspace).await;
        storage.log(&r.lines).await?;
        exact.push(r.exact);
    }
    let artifact_specs = resolve_artifacts(&spec, &ctx_values, ctx.storage.artifact_retention);

    let first_line = store.next_log_offset(bj.id).await?;
    let pump = tokio::spawn(pump_events(ctx.clone(), lease.clone(), build.id, rx, first_line));
    let job_spec = JobSpec {
        id: &spec.id,
        env: &spec.env,
        steps: &spec.steps,
        first_index: 0,
        timeout: spec.timeout,
        container: ContainerSpec::of(&spec),
    };
    let mut result = run_job(job_spec, &env, ctx_values).await;
    drop(env);
    let _ = pump.await;

    // Storage after the steps: artifacts (by their `if`), caches and the stage result.
    match artifact_specs {
        Ok(specs) => {
            let specs: Vec<_> =
                specs.into_iter().filter(|(when, _)| wanted(*when, result.status)).map(|(_, s)| s).collect();
            if let Err(reason) = storage.keep_artifacts(&specs, &workspace).await? {
                result.status = Status::Failure;
                result.reason = Some(reason);
            }
        }
        Err(reason) if result.status == Status::Success => {
            result.status = Status::Error;
            result.reason = Some(reason);
        }
        Err(reason) => storage.log(&[format!("artifacts: {reason}")]).await?,
    }
    if result.status == Status::Success {
        for (c, hit) in caches.iter().zip(exact) {
            if hit {
                storage.log(&[format!("cache `{}`: hit on the exact key, not saved again", c.key)]).await?;
            } else {
                let lines = crate::engine::cache::save(store, &ctx.storage, &storage.scope, c, &workspace).await;
                storage.log(&lines).await?;
            }
        }
        if let Some(fp) = &fingerprint
            && storage.scope.writable
        {
            store.result_record(job_record.id, &spec.id, fp, bj.id).await?;
        }
    }
    renewer.abort();
    remove_workspace(&workspace).await;
    let outputs = Value::Object(result.outputs.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect());
    let sandbox = match &spec.image {
        Some(image) => format!("docker:{}", image.as_literal().unwrap_or_else(|| "(expression)".into())),
        None => "local".into(),
    };
    store.set_build_job_result(lease, &outputs, &sandbox).await?;
    let _ = std::fs::remove_dir_all(ctx.data_dir.join("state").join(bj.id.to_string()));
    finish(ctx, lease, &spec, build.id, result.status, result.reason.as_deref(), outputs).await
}

async fn finish(
    ctx: &BuildContext,
    lease: &Lease,
    spec: &PlannedJob,
    build_id: i64,
    status: Status,
    reason: Option<&str>,
    _outputs: Value,
) -> Result<(), StoreError> {
    ctx.store.complete(lease, status, reason).await?;
    ctx.store.add_event(build_id, "job_status", &json!({"job": spec.id, "status": status, "reason": reason})).await?;
    ctx.announce(build_id, Change::Job(spec.id.clone(), status));
    ctx.schedule(build_id).await
}

/// Renews the lease every `every`; a cancel request or a lost lease cancels the job.
async fn renew_loop(ctx: BuildContext, lease: Lease, ttl: Duration, every: Duration, cancel: CancelSignal) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match ctx.store.renew(&lease, ttl).await {
            Ok(Renewal::Continue(_)) => {}
            Ok(Renewal::Cancel(_)) => cancel.cancel(),
            Err(StoreError::StaleLease { .. }) => {
                tracing::warn!(build_job = lease.build_job_id, "lease lost: stopping the job");
                cancel.cancel();
                return;
            }
            Err(e) => tracing::warn!("renewing the lease: {e}"),
        }
    }
}

/// Moves engine events into the store: log lines in batches (every 50 ms or 64 KiB), steps as
/// rows, and notices for live readers.
async fn pump_events(
    ctx: BuildContext,
    lease: Lease,
    build_id: i64,
    mut rx: mpsc::Receiver<RunEvent>,
    first_line: u64,
) {
    let mut batch: Vec<LogLine> = Vec::new();
    let mut bytes = 0usize;
    let mut last_flush = Instant::now();
    let mut step_started: std::collections::HashMap<usize, i64> = Default::default();
    let offset = first_line.saturating_sub(1);
    loop {
        let next = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await;
        let done = matches!(next, Ok(None));
        match next {
            Ok(Some(RunEvent::Log { mut line, .. })) => {
                line.number += offset;
                bytes += line.text.len();
                batch.push(line);
            }
            Ok(Some(RunEvent::StepStarted { job, step, name })) => {
                step_started.insert(step, now_ms());
                let event = json!({"job": job, "step": step, "name": name, "status": "running"});
                let _ = ctx.store.add_event(build_id, "step_status", &event).await;
                let rec = StepRecord {
                    idx: step as i64,
                    name,
                    status: Status::Running,
                    exit_code: None,
                    reason: None,
                    started_ms: Some(now_ms()),
                    finished_ms: None,
                };
                let _ = ctx.store.record_step(&lease, &rec).await;
            }
            Ok(Some(RunEvent::StepFinished { job, step, name, status, exit_code, reason, .. })) => {
                let event = json!({"job": job, "step": step, "name": name, "status": status, "exit_code": exit_code});
                let _ = ctx.store.add_event(build_id, "step_status", &event).await;
                let _ = ctx.bus.send(Notice::Build(build_id));
                let rec = StepRecord {
                    idx: step as i64,
                    name,
                    status,
                    exit_code: exit_code.map(i64::from),
                    reason,
                    started_ms: step_started.get(&step).copied().or(Some(now_ms())),
                    finished_ms: Some(now_ms()),
                };
                let _ = ctx.store.record_step(&lease, &rec).await;
            }
            Ok(Some(RunEvent::Tests { job, step, suites })) => {
                let (passed, failed, skipped) = crate::engine::events::test_counts(&suites);
                let event = json!({"job": job, "step": step, "passed": passed, "failed": failed, "skipped": skipped});
                let _ = ctx.store.add_event(build_id, "tests", &event).await;
                if let Err(e) = ctx.store.record_tests(&lease, build_id, step as i64, &suites).await {
                    tracing::warn!(build = build_id, job = %job, step, "storing test results: {e}");
                }
            }
            Ok(Some(_)) | Ok(None) | Err(_) => {}
        }
        if !batch.is_empty() && (done || bytes >= 64 * 1024 || last_flush.elapsed() >= Duration::from_millis(50)) {
            store_batch(&ctx, &lease, &batch).await;
            batch.clear();
            bytes = 0;
            last_flush = Instant::now();
            let _ = ctx.bus.send(Notice::Log(lease.build_job_id));
        }
        if done {
            return;
        }
    }
}

/// The `git` context of a server build: the commit (`sha`, `short_sha`, `branch`, `tag`,
/// `message`, `author`), the `event` that started it (`push`, `tag`, `pull_request`,
/// `schedule`, `manual`, ...) and, for pull requests, `pr` (`number`, `head`, `base`).
fn git_context(
    build: &crate::store::builds::BuildSummary,
    trigger: Option<&crate::engine::builds::TriggerContext>,
) -> Value {
    let (branch, tag) = match build.branch.strip_prefix("refs/tags/") {
        Some(tag) => (String::new(), tag.to_string()),
        None => (build.branch.clone(), String::new()),
    };
    let mut git = json!({
        "sha": build.commit_sha,
        "short_sha": build.commit_sha.chars().take(8).collect::<String>(),
        "branch": branch,
        "tag": tag,
        "message": build.commit_message,
        "author": build.commit_author,
        "event": trigger.as_ref().map_or(build.trigger.as_str(), |t| t.event.as_str()),
    });
    if let Some(t) = trigger.filter(|t| t.event == "pull_request") {
        git["pr"] = json!({"number": t.pr_number, "head": t.branch, "base": t.base});
    }
    git
}

/// Stores a batch, retrying transient database errors (a busy database) for up to a minute; a
/// stale lease drops it, since a newer attempt owns the log now.
async fn store_batch(ctx: &BuildContext, lease: &Lease, batch: &[LogLine]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pause = Duration::from_millis(20);
    loop {
        match ctx.store.append_log(lease, batch).await {
            Ok(()) => return,
            Err(e @ StoreError::StaleLease { .. }) => {
                tracing::warn!("dropping log lines: {e}");
                return;
            }
            Err(e) if Instant::now() >= deadline => {
                tracing::error!("giving up storing {} log lines: {e}", batch.len());
                return;
            }
            Err(e) => {
                tracing::debug!("storing log lines, will retry: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}
