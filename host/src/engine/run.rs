//! A whole local run: the one scheduler ([`chengis_model::schedule`]) decides what runs, what is
//! skipped or cancelled and when post steps run; this module spawns the jobs it starts with
//! bounded parallelism and reports one final status.

use super::context::{self, Contexts, env_object, set_var};
use super::events::RunEvent;
use super::job::{ContainerSpec, JobEnv, JobResult, JobSpec, run_job};
use crate::exec::docker::{DockerRuntime, SandboxLabels};
use crate::exec::{CancelSignal, JobLog, SecretMasker};
use crate::status::Status;
use chengis_model::schedule::{
    BuildView, Decision, JobState, JobView, POST_JOB, decide, has_post, needs_result, post_expr_status, post_job,
};
use chengis_pipeline::expr::Status as ExprStatus;
use chengis_pipeline::plan::{Plan, PlannedJob};
use indexmap::IndexMap;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

/// How to run a plan locally.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Working directory of every step.
    pub workspace: PathBuf,
    /// Most jobs running at once.
    pub parallel: usize,
    /// Secrets by name (masked everywhere, readable as `${{ secrets.NAME }}`).
    pub secrets: IndexMap<String, String>,
    /// Variables every step inherits (for local runs: the caller's environment).
    pub inherited_env: Vec<(String, String)>,
    /// TERM-to-KILL grace period.
    pub kill_grace: Duration,
    /// Per-step output cap in bytes.
    pub output_cap: u64,
    /// The `git` context.
    pub git: Value,
    /// The build number shown to steps.
    pub build_number: u64,
    /// The Docker runtime for jobs that name an image.
    pub docker: Arc<DockerRuntime>,
    /// The plugin platform for `uses:` steps (none: `uses:` steps fail with an explanation).
    pub plugins: Option<Arc<crate::plugins::PluginService>>,
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Overall status.
    pub status: Status,
    /// Each job's status and reason, in plan order.
    pub jobs: Vec<(String, Status, Option<String>, Duration)>,
    /// Wall time.
    pub duration: Duration,
}

/// Runs `plan`; events go to `events`; `cancel` stops it (Ctrl-C).
pub async fn run_plan(
    plan: Plan,
    opts: RunOptions,
    masker: SecretMasker,
    cancel: CancelSignal,
    events: mpsc::Sender<RunEvent>,
) -> RunSummary {
    let started = Instant::now();
    let state = tempfile::Builder::new().prefix("chengis-run-").tempdir();
    let state_root = match &state {
        Ok(d) => d.path().to_path_buf(),
        Err(_) => std::env::temp_dir(),
    };
    let _ = events
        .send(RunEvent::RunStarted {
            pipeline: plan.name.clone(),
            jobs: plan.jobs.iter().map(|j| j.id.clone()).collect(),
            workspace: opts.workspace.display().to_string(),
        })
        .await;
    let base = context::base_env(&opts.workspace, opts.build_number, &plan.name, None);
    let root_ctx = Contexts {
        params: context::params(&plan),
        secrets: context::object(opts.secrets.iter()),
        git: opts.git.clone(),
        build: json!({"number": opts.build_number, "workspace": opts.workspace.display().to_string(), "pipeline": plan.name}),
        workspace: opts.workspace.clone(),
        ..Contexts::default()
    };
    let mut pipeline_env = base.clone();
    let mut env_ctx = root_ctx.clone();
    for (k, text) in &plan.env {
        let mut visible = opts.inherited_env.clone();
        for (k, v) in &pipeline_env {
            set_var(&mut visible, k, v.clone());
        }
        env_ctx.env = env_object(&visible);
        match context::render(text, &env_ctx) {
            Ok(v) => set_var(&mut pipeline_env, k, v),
            Err(e) => tracing::warn!(variable = %k, "pipeline env: {e}"),
        }
    }
    let job_env = |id: &str, n: usize, cancel: CancelSignal| JobEnv {
        workspace: opts.workspace.clone(),
        state_dir: state_root.join(format!("job-{n}")),
        base_env: {
            let mut e = pipeline_env.clone();
            set_var(&mut e, "CHENGIS_JOB", id.to_string());
            e
        },
        host_env: opts.inherited_env.clone(),
        docker: opts.docker.clone(),
        labels: SandboxLabels {
            build: opts.build_number.to_string(),
            job: id.to_string(),
            lease: format!("pid:{}", std::process::id()),
        },
        allowance_name: id.to_string(),
        owns_workspace: false,
        plugins: opts.plugins.clone().map(|p| p as Arc<dyn chengis_agent::executors::StepExecutors>),
        plugin_build: None,
        // Each job's log numbers its own lines.
        log: JobLog::new(masker.clone(), 1, opts.output_cap),
        cancel,
        events: events.clone(),
        kill_grace: opts.kill_grace,
        host: None,
    };

    let semaphore = Arc::new(Semaphore::new(opts.parallel.max(1)));
    let mut results: IndexMap<String, (JobResult, Duration)> = IndexMap::new();
    let mut states: Vec<JobState> = vec![JobState::Waiting; plan.jobs.len()];
    let mut stops: Vec<Option<CancelSignal>> = vec![None; plan.jobs.len()];
    let mut stop_asked: Vec<bool> = vec![false; plan.jobs.len()];
    let mut post_state = has_post(&plan).then_some(JobState::Waiting);
    let mut running: JoinSet<(String, JobResult, Duration)> = JoinSet::new();
    let spawn = |running: &mut JoinSet<(String, JobResult, Duration)>, job: PlannedJob, env: JobEnv, ctx: Contexts| {
        let sem = semaphore.clone();
        let events = events.clone();
        running.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let started = Instant::now();
            let _ = events.send(RunEvent::JobStarted { job: job.id.clone(), name: job.name.clone() }).await;
            let result = run_job(
                JobSpec {
                    id: &job.id,
                    env: &job.env,
                    steps: &job.steps,
                    first_index: 0,
                    timeout: job.timeout,
                    container: ContainerSpec::of(&job),
                },
                &env,
                ctx,
            )
            .await;
            let duration = started.elapsed();
            let _ = events
                .send(RunEvent::JobFinished {
                    job: job.id.clone(),
                    name: job.name.clone(),
                    status: result.status,
                    reason: result.reason.clone(),
                    duration,
                })
                .await;
            (job.id, result, duration)
        });
    };
    let job_ctx = |job: &PlannedJob, results: &IndexMap<String, (JobResult, Duration)>| {
        let mut ctx = root_ctx.clone();
        ctx.matrix = context::object(job.matrix.iter());
        ctx.needs = needs_context(job, &plan, results);
        ctx.env = env_object(&pipeline_env);
        ctx
    };
    // The one scheduler decides; this loop carries its decisions out and waits for jobs (or a
    // cancel, which the scheduler then turns into stops).
    let mut cancel_seen = false;
    let post_stop = CancelSignal::new();
    let status = loop {
        let views: Vec<JobView> = plan
            .jobs
            .iter()
            .enumerate()
            .map(|(i, job)| JobView { job, state: states[i], stop_requested: stop_asked[i] })
            .collect();
        let build = BuildView { cancelled: cancel.is_cancelled(), post: post_state };
        let decisions = decide(&views, build, &mut |job, expr| {
            let mut ctx = job_ctx(job, &results);
            ctx.status = Some(expr);
            context::condition(job.condition.as_deref(), &ctx)
        });
        let mut finished = None;
        for decision in decisions {
            match decision {
                Decision::Start { job: id } => {
                    let Some(n) = plan.jobs.iter().position(|j| j.id == id) else { continue };
                    let job = &plan.jobs[n];
                    for message in local_limits(job) {
                        let _ = events.send(RunEvent::Warning { job: job.id.clone(), message }).await;
                    }
                    let mut ctx = job_ctx(job, &results);
                    let failed_need =
                        job.needs.iter().any(|n| results.get(n).is_some_and(|(r, _)| r.status != Status::Success));
                    ctx.status = Some(if failed_need { ExprStatus::Failure } else { ExprStatus::Success });
                    // Each job has its own signal: a cancel of the run reaches the jobs the
                    // scheduler stops (a job whose `if:` holds after a cancel goes on).
                    let job_cancel = CancelSignal::new();
                    stops[n] = Some(job_cancel.clone());
                    states[n] = JobState::Queued;
                    spawn(&mut running, job.clone(), job_env(&job.id, n, job_cancel), ctx);
                }
                Decision::End { job: id, status, reason } => {
                    let name = plan.jobs.iter().find(|j| j.id == id).map_or_else(|| id.clone(), |j| j.name.clone());
                    let _ = events
                        .send(RunEvent::JobFinished {
                            job: id.clone(),
                            name,
                            status,
                            reason: Some(reason.clone()),
                            duration: Duration::ZERO,
                        })
                        .await;
                    match plan.jobs.iter().position(|j| j.id == id) {
                        Some(n) => states[n] = JobState::Done(status),
                        None => post_state = Some(JobState::Done(status)),
                    }
                    let result = JobResult { status, reason: Some(reason), outputs: IndexMap::new() };
                    results.insert(id, (result, Duration::ZERO));
                }
                Decision::Stop { job: id, .. } => match plan.jobs.iter().position(|j| j.id == id) {
                    Some(n) => {
                        stop_asked[n] = true;
                        if let Some(stop) = &stops[n] {
                            stop.cancel();
                        }
                    }
                    None => post_stop.cancel(),
                },
                Decision::StartPost { status } => {
                    post_state = Some(JobState::Queued);
                    if let Some(post) = post_job(&plan, status) {
                        let mut ctx = root_ctx.clone();
                        ctx.status = Some(post_expr_status(status));
                        let env = job_env(POST_JOB, plan.jobs.len(), post_stop.clone());
                        spawn(&mut running, post, env, ctx);
                    } else {
                        post_state = Some(JobState::Done(Status::Skipped));
                    }
                }
                Decision::Finish { status } => finished = Some(status),
            }
        }
        if let Some(status) = finished {
            break status;
        }
        let next = tokio::select! {
            next = running.join_next() => next,
            _ = cancel.cancelled(), if !cancel_seen => {
                cancel_seen = true;
                continue;
            }
        };
        match next {
            Some(Ok((id, result, duration))) => {
                match plan.jobs.iter().position(|j| j.id == id) {
                    Some(n) => states[n] = JobState::Done(result.status),
                    None => post_state = Some(JobState::Done(result.status)),
                }
                results.insert(id, (result, duration));
            }
            Some(Err(e)) => {
                tracing::error!("a job task failed: {e}");
                break Status::Error;
            }
            // Nothing runs and nothing can start: only a scheduler bug gets here.
            None => {
                tracing::error!("no job can run and the run has not ended");
                break Status::Error;
            }
        }
    };
    let duration = started.elapsed();
    let _ = events.send(RunEvent::RunFinished { status, duration }).await;
    RunSummary {
        status,
        jobs: plan
            .jobs
            .iter()
            .map(|j| match results.get(&j.id) {
                Some((r, d)) => (j.id.clone(), r.status, r.reason.clone(), *d),
                None => (j.id.clone(), Status::Error, Some("never ran".into()), Duration::ZERO),
            })
            .collect(),
        duration,
    }
}

/// `needs.<job>.result` and `needs.<job>.outputs`; for a matrix job, outputs of all its
/// combinations merged (later ones win) and the worst result.
fn needs_context(job: &PlannedJob, plan: &Plan, results: &IndexMap<String, (JobResult, Duration)>) -> Value {
    let mut out = serde_json::Map::new();
    for key in &job.needs_keys {
        let mut outputs = serde_json::Map::new();
        let mut statuses = Vec::new();
        for j in plan.jobs.iter().filter(|j| &j.key == key) {
            if let Some((r, _)) = results.get(&j.id) {
                statuses.push(r.status);
                for (k, v) in &r.outputs {
                    outputs.insert(k.clone(), Value::String(v.clone()));
                }
            }
        }
        let result = needs_result(&statuses);
        out.insert(key.clone(), json!({"result": result.as_str(), "outputs": outputs}));
    }
    Value::Object(out)
}

/// What a job asks for that the local process executor does not do, as warnings.
fn local_limits(job: &PlannedJob) -> Vec<String> {
    let mut out = Vec::new();
    let unused = [
        ("cache", !job.cache.is_empty()),
        ("artifacts", !job.artifacts.is_empty()),
        ("download", !job.download.is_empty()),
        ("cache-result", job.cache_result),
        ("approval", job.approval.is_some()),
        ("runs-on", !job.runs_on.is_empty()),
    ];
    for (key, present) in unused {
        if present {
            out.push(format!("`{key}` is handled by the server and ignored by `chengis run`"));
        }
    }
    out
}
