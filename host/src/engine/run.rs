//! A whole local run: jobs scheduled by their `needs` with bounded parallelism, dependents of
//! failed jobs skipped with the reason, `post` steps after everything, one final status.

use super::context::{self, Contexts, env_object, set_var};
use super::events::RunEvent;
use super::job::{ContainerSpec, JobEnv, JobResult, JobSpec, run_job};
use crate::exec::docker::{DockerRuntime, SandboxLabels};
use crate::exec::{CancelSignal, SecretMasker};
use crate::status::Status;
use chengis_pipeline::expr::Status as ExprStatus;
use chengis_pipeline::plan::{Plan, PlannedJob};
use indexmap::IndexMap;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
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
    masker: Arc<SecretMasker>,
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
    let mut base = Vec::new();
    for (k, v) in [
        ("CI", "true".to_string()),
        ("CHENGIS", "true".to_string()),
        ("CHENGIS_WORKSPACE", opts.workspace.display().to_string()),
        ("CHENGIS_BUILD_NUMBER", opts.build_number.to_string()),
        ("CHENGIS_PIPELINE", plan.name.clone()),
    ] {
        set_var(&mut base, k, v);
    }
    let root_ctx = Contexts {
        params: context::object(plan.params.iter()),
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
        plugins: opts.plugins.clone(),
        plugin_build: None,
        masker: masker.clone(),
        cancel,
        events: events.clone(),
        kill_grace: opts.kill_grace,
        output_cap: opts.output_cap,
    };

    let semaphore = Arc::new(Semaphore::new(opts.parallel.max(1)));
    let mut results: IndexMap<String, (JobResult, Duration)> = IndexMap::new();
    let mut pending: Vec<&PlannedJob> = plan.jobs.iter().collect();
    let mut running: JoinSet<(String, JobResult, Duration)> = JoinSet::new();
    // Matrix bookkeeping: running combinations per job key (for `max-parallel`), their cancel
    // signals, and the keys where a combination failed with `fail-fast`.
    let mut running_per_key: HashMap<String, (u32, Vec<CancelSignal>)> = HashMap::new();
    let mut failed_fast: HashSet<String> = HashSet::new();
    loop {
        let mut i = 0;
        while i < pending.len() {
            let job = pending[i];
            let busy = running_per_key.get(&job.key).map_or(0, |(n, _)| *n);
            let at_limit = job.max_parallel.is_some_and(|max| busy >= max.max(1));
            if at_limit || !job.needs.iter().all(|n| results.contains_key(n)) {
                i += 1;
                continue;
            }
            pending.remove(i);
            let mut ctx = root_ctx.clone();
            ctx.matrix = context::object(job.matrix.iter());
            ctx.needs = needs_context(job, &plan, &results);
            let failed_need =
                job.needs.iter().find(|n| results.get(*n).is_some_and(|(r, _)| r.status != Status::Success));
            ctx.status = Some(if cancel.is_cancelled() {
                ExprStatus::Cancelled
            } else if failed_need.is_some() {
                ExprStatus::Failure
            } else {
                ExprStatus::Success
            });
            ctx.env = env_object(&pipeline_env);
            let decision = if cancel.is_cancelled() {
                Err((Status::Cancelled, "the run was cancelled".to_string()))
            } else if failed_fast.contains(&job.key) {
                Err((Status::Cancelled, format!("another combination of `{}` failed (fail-fast)", job.key)))
            } else {
                match context::condition(job.condition.as_deref(), &ctx) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err((
                        Status::Skipped,
                        match (failed_need, &job.condition) {
                            (Some(n), None) => {
                                format!("needs `{n}`, which {}", describe(results.get(n).map(|(r, _)| r.status)))
                            }
                            _ => "its `if` condition is false".to_string(),
                        },
                    )),
                    Err(e) => Err((Status::Error, e)),
                }
            };
            if let Err((status, reason)) = decision {
                let _ = events
                    .send(RunEvent::JobFinished {
                        job: job.id.clone(),
                        name: job.name.clone(),
                        status,
                        reason: Some(reason.clone()),
                        duration: Duration::ZERO,
                    })
                    .await;
                results.insert(
                    job.id.clone(),
                    (JobResult { status, reason: Some(reason), outputs: IndexMap::new() }, Duration::ZERO),
                );
                i = 0;
                continue;
            }
            for message in local_limits(job) {
                let _ = events.send(RunEvent::Warning { job: job.id.clone(), message }).await;
            }
            let n = plan.jobs.iter().position(|j| j.id == job.id).unwrap_or(0);
            let job_cancel = cancel.child();
            let slot = running_per_key.entry(job.key.clone()).or_default();
            slot.0 += 1;
            slot.1.push(job_cancel.clone());
            let env = job_env(&job.id, n, job_cancel);
            let job = job.clone();
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
        }
        match running.join_next().await {
            Some(Ok((id, result, duration))) => {
                if let Some(job) = plan.jobs.iter().find(|j| j.id == id) {
                    if let Some(slot) = running_per_key.get_mut(&job.key) {
                        slot.0 = slot.0.saturating_sub(1);
                    }
                    if !job.matrix.is_empty() && job.fail_fast && result.status.is_failure() && !cancel.is_cancelled() {
                        failed_fast.insert(job.key.clone());
                        for sibling in running_per_key.get(&job.key).map(|s| s.1.as_slice()).unwrap_or_default() {
                            sibling.cancel();
                        }
                    }
                }
                results.insert(id, (result, duration));
            }
            Some(Err(e)) => tracing::error!("a job task failed: {e}"),
            None => break,
        }
    }
    let status =
        overall(plan.jobs.iter().filter_map(|j| results.get(&j.id).map(|(r, _)| r.status)), cancel.is_cancelled());
    run_post(&plan, status, &root_ctx, job_env("post", plan.jobs.len(), cancel.clone())).await;
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

/// The overall status from the job statuses: cancelled if the run was, else the first failure
/// kind in severity order, else success (skipped jobs do not fail a run).
pub fn overall(statuses: impl Iterator<Item = Status>, cancelled: bool) -> Status {
    if cancelled {
        return Status::Cancelled;
    }
    let all: Vec<Status> = statuses.collect();
    for s in [Status::Error, Status::Failure, Status::TimedOut, Status::Cancelled] {
        if all.contains(&s) {
            return s;
        }
    }
    Status::Success
}

async fn run_post(plan: &Plan, status: Status, root: &Contexts, env: JobEnv) {
    let steps: Vec<_> = plan
        .post_always
        .iter()
        .chain(if status == Status::Success { &plan.post_on_success } else { &plan.post_on_failure })
        .cloned()
        .enumerate()
        .map(|(i, mut s)| {
            s.index = i;
            // Post steps run whatever happened before them in the post block.
            if s.condition.is_none() {
                s.condition = Some("always()".into());
            }
            s
        })
        .collect();
    if steps.is_empty() {
        return;
    }
    let no_env = IndexMap::new();
    let spec = JobSpec { id: "post", env: &no_env, steps: &steps, first_index: 0, timeout: None, container: None };
    let mut ctx = root.clone();
    ctx.status = Some(if status == Status::Success { ExprStatus::Success } else { ExprStatus::Failure });
    let _ = env.events.send(RunEvent::JobStarted { job: "post".into(), name: "post".into() }).await;
    let started = Instant::now();
    let result = run_job(spec, &env, ctx).await;
    let _ = env
        .events
        .send(RunEvent::JobFinished {
            job: "post".into(),
            name: "post".into(),
            status: result.status,
            reason: result.reason,
            duration: started.elapsed(),
        })
        .await;
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
        let result = if statuses.iter().all(|s| *s == Status::Skipped) && !statuses.is_empty() {
            Status::Skipped
        } else {
            overall(statuses.into_iter(), false)
        };
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

fn describe(status: Option<Status>) -> String {
    match status {
        Some(Status::Skipped) => "was skipped".into(),
        Some(s) => format!("ended `{s}`"),
        None => "did not run".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overall_status() {
        assert_eq!(overall([Status::Success, Status::Skipped].into_iter(), false), Status::Success);
        assert_eq!(overall([Status::Success, Status::TimedOut, Status::Failure].into_iter(), false), Status::Failure);
        assert_eq!(overall([Status::Success].into_iter(), true), Status::Cancelled);
    }
}
