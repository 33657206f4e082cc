//! The server's half of running a leased job, shared by the embedded agent and the agent API:
//! preparing the job (contexts, secrets, its `if`), applying what the agent reports (steps, test
//! results) and finishing it with the fencing token.

use crate::engine::builds::{BuildContext, Notice, TriggerContext};
use crate::engine::context;
use crate::plugins::dispatch::Change;
use crate::status::Status;
use crate::store::StoreError;
use crate::store::builds::{BuildJobRecord, BuildSummary, StepRecord};
use crate::store::jobs::JobRecord;
use crate::store::queue::Lease;
use crate::store::secrets::MasterKeys;
use chengis_model::schedule::POST_JOB;
use chengis_pipeline::Plan;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// What only the embedded agent keeps from preparing a job (for caches and artifacts).
#[derive(Debug, Clone)]
pub struct LocalParts {
    /// The job's record.
    pub job: JobRecord,
    /// The build.
    pub build: BuildSummary,
    /// The plan.
    pub plan: std::sync::Arc<Plan>,
    /// The build's jobs.
    pub siblings: Vec<BuildJobRecord>,
    /// The webhook event behind the build.
    pub trigger: Option<TriggerContext>,
}

/// Marks the leased job running and prepares it (whether it runs at all, the scheduler decided
/// before it was queued). An error leaves the job to the caller, which ends it `error` with
/// the reason (see [`fail_prepare`]).
pub async fn prepare(
    ctx: &BuildContext,
    keys: &MasterKeys,
    lease: &Lease,
) -> Result<(Assignment, LocalParts), StoreError> {
    let store = &ctx.store;
    let (bj, spec) = store.build_job_planned(lease.build_job_id).await?;
    let build = store.build_summary(bj.build_id).await?;
    let job_record = store.job(&build.job).await?;
    let plan = store.plan(bj.build_id).await?;
    store.start_leased_job(lease).await?;
    if build.status == Status::Queued {
        // Two jobs of one build may start at once: the other one may have done this already.
        match store.transition_build(build.id, Status::Running, None).await {
            Ok(()) => ctx.announce(build.id, Change::Build),
            Err(StoreError::IllegalTransition { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(lost) = &lease.lost_from {
        let event =
            json!({"job": spec.id, "agent": lost, "attempt": lease.attempt, "reason": format!("agent {lost} lost")});
        store.add_event(build.id, "agent_lost", &event).await?;
        tracing::warn!(build = build.id, job = %spec.id, "agent {lost} lost: running attempt {}", lease.attempt);
    }
    store
        .add_event(build.id, "job_status", &json!({"job": spec.id, "status": "running", "attempt": lease.attempt}))
        .await?;
    let _ = ctx.bus.send(Notice::Build(build.id));
    ctx.announce(build.id, Change::Job(spec.id.clone(), Status::Running));

    // Contexts as the local engine builds them (the scheduler already decided the job runs).
    let siblings = match spec.needs_keys.is_empty() && spec.id != POST_JOB {
        true => Vec::new(),
        false => store.build_jobs(bj.build_id).await?,
    };
    let (needs, failed_need) = crate::engine::conditions::needs_context(&plan, &spec, &siblings);
    // The post job's `success()` / `failure()` answer for the build's other jobs.
    let needs_ok = match spec.id == POST_JOB && chengis_model::schedule::has_post(&plan) {
        true => {
            let others = siblings.iter().filter(|s| s.job_key != POST_JOB).map(|s| s.status);
            chengis_model::schedule::overall(others, false) == Status::Success
        }
        false => failed_need.is_none(),
    };
    // The webhook event behind the build, if any (recorded as its `trigger` event).
    let trigger = ctx.trigger_context(build.id).await?;
    // A pull request from a fork runs a pipeline file its author wrote: no secrets, unless an
    // admin opted the job in (its caches are read-only too: see `job_files::scope_of`).
    let fork = trigger.as_ref().is_some_and(|t| t.fork);
    let secrets = match fork && !job_record.fork_secrets {
        true => {
            tracing::info!(build = build.id, job = %spec.id, "pull request from a fork: the job's secrets are withheld");
            BTreeMap::new()
        }
        false => store.secrets_for_job(keys, &build.job).await?,
    };
    let mut contexts = BTreeMap::new();
    contexts.insert("params".to_string(), context::params(&plan));
    contexts.insert("matrix".to_string(), context::object(spec.matrix.iter()));
    contexts.insert("needs".to_string(), needs);
    contexts.insert(
        "build".to_string(),
        json!({"id": build.id, "number": build.number, "job": build.job, "attempt": lease.attempt}),
    );
    contexts.insert("git".to_string(), crate::engine::builds::git_context(&build, trigger.as_ref()));
    let assignment = Assignment {
        lease: lease.clone(),
        build_id: build.id,
        build_number: build.number,
        job: build.job.clone(),
        repo_url: job_record.repo_url.clone(),
        submodules: job_record.submodules,
        commit: build.commit_sha.clone(),
        branch: build.branch.clone(),
        pipeline: plan.name.clone(),
        plan_env: plan.env.clone(),
        spec,
        secrets,
        contexts,
        needs_ok,
        artifact_rules: ArtifactRules {
            retention_ms: ctx.storage.artifact_retention.map(|d| d.as_millis() as u64),
            max_job: ctx.storage.artifact_max_job,
            fail_over_cap: ctx.storage.artifact_fail_over_cap,
            cache_max_entry: ctx.storage.cache_max_entry,
        },
        plugin_build: Some(crate::plugins::dispatch::wit_build(&build, &plan.name, &job_record.repo_url)),
        first_line: Some(store.next_log_offset(lease.build_job_id).await?),
    };
    let local = LocalParts { job: job_record, build, plan, siblings, trigger };
    Ok((assignment, local))
}

/// Ends the job `lease` holds `error` because it could not be prepared, with the reason, and
/// moves its build on (a lease left to expire would blame a lost agent instead).
pub async fn fail_prepare(ctx: &BuildContext, lease: &Lease, error: &StoreError) -> Result<(), StoreError> {
    let reason = format!("the job could not be prepared: {error}");
    tracing::error!(build_job = lease.build_job_id, "{reason}");
    let job = ctx.store.build_job(lease.build_job_id).await?;
    finish(ctx, lease, &job.job_key, job.build_id, Status::Error, Some(&reason), None).await
}

pub use chengis_agent::assignment::{ArtifactRules, Assignment};
pub use chengis_model::protocol::{Reports, Update};

/// Records an update of the job `lease` holds (refused when the lease is stale).
pub async fn apply(
    ctx: &BuildContext,
    lease: &Lease,
    build_id: i64,
    job: &str,
    update: Update,
) -> Result<(), StoreError> {
    apply_all(ctx, lease, build_id, job, vec![update]).await
}

/// Records updates of the job `lease` holds, in order (refused when the lease is stale): a step
/// that started and ended within `updates` is written once, and the events go in one statement.
pub async fn apply_all(
    ctx: &BuildContext,
    lease: &Lease,
    build_id: i64,
    job: &str,
    updates: Vec<Update>,
) -> Result<(), StoreError> {
    let store = &ctx.store;
    let mut events = Vec::new();
    let mut step_ended = false;
    let mut updates = updates.into_iter().peekable();
    // The start of a step whose end follows in this batch: (when, first log line).
    let mut started = None;
    while let Some(update) = updates.next() {
        match update {
            Update::StepStarted { step, name, at_ms, first_line } => {
                events.push((
                    "step_status",
                    json!({"job": job, "step": step, "name": name, "status": "running", "first_line": first_line}),
                ));
                if matches!(updates.peek(), Some(Update::StepFinished { step: next, .. }) if *next == step) {
                    started = Some((at_ms, first_line));
                    continue;
                }
                let rec = StepRecord {
                    idx: step as i64,
                    name,
                    status: Status::Running,
                    exit_code: None,
                    reason: None,
                    started_ms: Some(at_ms),
                    finished_ms: None,
                    first_line: first_line.map(|n| n as i64),
                };
                store.record_step(lease, &rec).await?;
            }
            Update::StepFinished { step, name, status, exit_code, reason, started_ms, at_ms } => {
                events.push((
                    "step_status",
                    json!({"job": job, "step": step, "name": name, "status": status, "exit_code": exit_code}),
                ));
                let (start, first_line) = started.take().map_or((None, None), |(at, line)| (Some(at), line));
                let rec = StepRecord {
                    idx: step as i64,
                    name,
                    status,
                    exit_code: exit_code.map(i64::from),
                    reason,
                    started_ms: started_ms.or(start).or(Some(at_ms)),
                    finished_ms: Some(at_ms),
                    first_line: first_line.map(|n| n as i64),
                };
                store.record_step(lease, &rec).await?;
                step_ended = true;
            }
            Update::Tests { step, suites } => {
                let (passed, failed, skipped) = crate::engine::events::test_counts(&suites);
                store.record_tests(lease, build_id, step as i64, &suites).await?;
                events.push((
                    "tests",
                    json!({"job": job, "step": step, "passed": passed, "failed": failed, "skipped": skipped}),
                ));
            }
        }
    }
    store.add_events(build_id, &events).await?;
    if step_ended {
        let _ = ctx.bus.send(Notice::Build(build_id));
    }
    Ok(())
}

/// Ends the job `lease` holds with `status` (and, when it ran, its outputs and sandbox), then
/// schedules what comes next in the build. Refused when the lease is stale.
pub async fn finish(
    ctx: &BuildContext,
    lease: &Lease,
    job: &str,
    build_id: i64,
    status: Status,
    reason: Option<&str>,
    ran: Option<(&Value, &str)>,
) -> Result<(), StoreError> {
    if let Some((outputs, sandbox)) = ran {
        ctx.store.set_build_job_result(lease, outputs, sandbox).await?;
    }
    ctx.store.complete(lease, status, reason).await?;
    ctx.store.add_event(build_id, "job_status", &json!({"job": job, "status": status, "reason": reason})).await?;
    ctx.announce(build_id, Change::Job(job.to_string(), status));
    let _ = ctx.bus.send(Notice::Build(build_id));
    ctx.schedule_after(build_id, Some(status)).await
}
