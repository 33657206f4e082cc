//! The one scheduler: decides from a build's job states what runs next, what is skipped or
//! cancelled, when post steps run and when the build ends.
//!
//! [`decide`] is a pure function. `chengis run` calls it after every job that ends; the server
//! calls it after every change of a build (a job finished, a lease ran out of attempts, a
//! cancel). The caller applies the [`Decision`]s (spawn or enqueue a job, record a job that ends
//! without running, ask a running job to stop, run the post job, end the build) and calls it
//! again; no code decides a job's status around it.

use crate::status::Status;
use chengis_pipeline::expr::Status as ExprStatus;
use chengis_pipeline::plan::{Plan, PlannedJob, PlannedStep};

/// The id of the job that runs a pipeline's `post:` steps after all other jobs.
pub const POST_JOB: &str = "post";

/// Where a job stands, as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Not handed to an executor yet: waiting for its needs.
    Waiting,
    /// Handed to an executor (spawned, or in the queue) and not started yet.
    Queued,
    /// Running on an executor.
    Running,
    /// Finished with this status.
    Done(Status),
}

impl JobState {
    /// The state of a job from its stored status and whether it was handed to an executor.
    pub fn of(status: Status, handed_out: bool) -> JobState {
        match status {
            Status::Queued if handed_out => JobState::Queued,
            Status::Queued => JobState::Waiting,
            Status::Running => JobState::Running,
            done => JobState::Done(done),
        }
    }

    fn started(self) -> bool {
        matches!(self, JobState::Queued | JobState::Running)
    }

    fn done(self) -> Option<Status> {
        match self {
            JobState::Done(s) => Some(s),
            _ => None,
        }
    }
}

/// One job of the build and where it stands.
#[derive(Debug, Clone)]
pub struct JobView<'a> {
    /// The planned job.
    pub job: &'a PlannedJob,
    /// Its state.
    pub state: JobState,
    /// A stop was already asked of it (not asked again).
    pub stop_requested: bool,
}

/// The build as a whole.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildView {
    /// Someone cancelled the build (or a newer build superseded it).
    pub cancelled: bool,
    /// The state of the post job, when the pipeline has `post:` steps.
    pub post: Option<JobState>,
}

/// What the caller must do.
///
/// After a cancel, waiting jobs end `cancelled` as soon as their needs have ended, unless their
/// `if:` holds for a cancelled build (`always()`, `cancelled()`): those run. Started jobs are
/// asked to stop, except those whose `if:` holds for a cancelled build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Hand the job to an executor (spawn it, or enqueue it for an agent).
    Start {
        /// The job id.
        job: String,
    },
    /// End a job that never started, with this status (`skipped`, `cancelled` or `error`).
    End {
        /// The job id.
        job: String,
        /// Its final status.
        status: Status,
        /// Why.
        reason: String,
    },
    /// Ask a started job to stop (it ends `cancelled` when its executor stops it).
    Stop {
        /// The job id.
        job: String,
        /// Why.
        reason: String,
    },
    /// Every job ended: run the post job (see [`post_job`]) for a build that ended `status`.
    StartPost {
        /// The build's status from its jobs.
        status: Status,
    },
    /// The build is over with this status.
    Finish {
        /// The final status.
        status: Status,
    },
}

/// Why a job was cancelled because the build was.
pub const BUILD_CANCELLED: &str = "the build was cancelled";

/// Decides what happens next in a build. `condition` evaluates a job's `if:` (absent:
/// `success()`) for the status the expression functions see; the caller supplies the contexts
/// (`needs` outputs, parameters, ...). Decisions come in the order to apply them; a job ended
/// here may let others start, which are in the same answer.
pub fn decide(
    jobs: &[JobView<'_>],
    build: BuildView,
    condition: &mut dyn FnMut(&PlannedJob, ExprStatus) -> Result<bool, String>,
) -> Vec<Decision> {
    let mut state: Vec<JobState> = jobs.iter().map(|j| j.state).collect();
    let mut stop_asked: Vec<bool> = jobs.iter().map(|j| j.stop_requested).collect();
    let mut out = Vec::new();
    let status_of = |state: &[JobState], id: &str| {
        jobs.iter().position(|j| j.job.id == id).map_or(Some(Status::Skipped), |i| state[i].done())
    };
    // A matrix job whose combination failed with `fail-fast` stops its siblings.
    let failed_fast = |state: &[JobState], key: &str| {
        jobs.iter().zip(state).any(|(j, s)| {
            j.job.key == key
                && !j.job.matrix.is_empty()
                && j.job.fail_fast
                && s.done().is_some_and(|s| s.is_failure() && s != Status::Cancelled)
        })
    };
    loop {
        let mut changed = false;
        for (i, view) in jobs.iter().enumerate() {
            let job = view.job;
            if state[i] != JobState::Waiting {
                continue;
            }
            let needs: Vec<(&str, Option<Status>)> =
                job.needs.iter().map(|n| (n.as_str(), status_of(&state, n))).collect();
            let ready = needs.iter().all(|(_, s)| s.is_some());
            let end = if !ready {
                None
            } else if build.cancelled {
                // After a cancel only a job whose `if:` holds for a cancelled build runs
                // (`always()`, `cancelled()`).
                match job.condition.as_ref().map(|_| condition(job, ExprStatus::Cancelled)) {
                    Some(Ok(true)) => {
                        state[i] = JobState::Queued;
                        out.push(Decision::Start { job: job.id.clone() });
                        changed = true;
                        continue;
                    }
                    Some(Err(e)) => Some((Status::Error, e)),
                    Some(Ok(false)) | None => Some((Status::Cancelled, BUILD_CANCELLED.to_string())),
                }
            } else if failed_fast(&state, &job.key) {
                Some((Status::Cancelled, format!("another combination of `{}` failed (fail-fast)", job.key)))
            } else {
                let failed_need = needs.iter().find(|(_, s)| *s != Some(Status::Success));
                let expr = if failed_need.is_some() { ExprStatus::Failure } else { ExprStatus::Success };
                match condition(job, expr) {
                    Ok(true) => {
                        let busy = jobs.iter().zip(&state).filter(|(j, s)| j.job.key == job.key && s.started()).count();
                        if job.max_parallel.is_some_and(|max| busy >= max.max(1) as usize) {
                            continue;
                        }
                        state[i] = JobState::Queued;
                        out.push(Decision::Start { job: job.id.clone() });
                        changed = true;
                        continue;
                    }
                    Ok(false) => Some((
                        Status::Skipped,
                        match (failed_need, &job.condition) {
                            (Some((n, s)), None) => format!("needs `{n}`, which {}", describe(*s)),
                            _ => "its `if` condition is false".to_string(),
                        },
                    )),
                    Err(e) => Some((Status::Error, e)),
                }
            };
            if let Some((status, reason)) = end {
                state[i] = JobState::Done(status);
                out.push(Decision::End { job: job.id.clone(), status, reason });
                changed = true;
            }
        }
        for (i, view) in jobs.iter().enumerate() {
            if !state[i].started() || stop_asked[i] {
                continue;
            }
            let mut goes_on =
                || view.job.condition.is_some() && matches!(condition(view.job, ExprStatus::Cancelled), Ok(true));
            let reason = if build.cancelled {
                if goes_on() {
                    continue;
                }
                BUILD_CANCELLED.to_string()
            } else if failed_fast(&state, &view.job.key) {
                format!("another combination of `{}` failed (fail-fast)", view.job.key)
            } else {
                continue;
            };
            stop_asked[i] = true;
            out.push(Decision::Stop { job: view.job.id.clone(), reason });
        }
        if !changed {
            break;
        }
    }
    let finals: Option<Vec<Status>> = state.iter().map(|s| s.done()).collect();
    let Some(finals) = finals else { return out };
    let status = overall(finals.into_iter(), build.cancelled);
    match build.post {
        None | Some(JobState::Done(_)) => out.push(Decision::Finish { status }),
        Some(JobState::Waiting) if build.cancelled => {
            out.push(Decision::End { job: POST_JOB.into(), status: Status::Cancelled, reason: BUILD_CANCELLED.into() });
            out.push(Decision::Finish { status });
        }
        Some(JobState::Waiting) => out.push(Decision::StartPost { status }),
        Some(JobState::Queued | JobState::Running) if build.cancelled => {
            out.push(Decision::Stop { job: POST_JOB.into(), reason: BUILD_CANCELLED.into() })
        }
        Some(JobState::Queued | JobState::Running) => {}
    }
    out
}

/// The overall status from the job statuses: cancelled if the build was, else the first
/// failure kind in severity order, else success (skipped jobs do not fail a build).
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

/// The result a `needs.<key>.result` shows for the statuses of a job's combinations: skipped
/// when all were, else [`overall`].
pub fn needs_result(statuses: &[Status]) -> Status {
    if !statuses.is_empty() && statuses.iter().all(|s| *s == Status::Skipped) {
        Status::Skipped
    } else {
        overall(statuses.iter().copied(), false)
    }
}

/// Whether `plan` has post steps (and so a post job).
pub fn has_post(plan: &Plan) -> bool {
    !(plan.post_always.is_empty() && plan.post_on_success.is_empty() && plan.post_on_failure.is_empty())
}

/// The post job of a build that ended `status`: the `always` steps, then the `on-success` or
/// the `on-failure` ones; each step without an `if:` runs whatever happened before it in the
/// post job. `None` when the pipeline has no post steps for that status.
pub fn post_job(plan: &Plan, status: Status) -> Option<PlannedJob> {
    let chosen = if status == Status::Success { &plan.post_on_success } else { &plan.post_on_failure };
    let steps: Vec<PlannedStep> = plan
        .post_always
        .iter()
        .chain(chosen)
        .cloned()
        .enumerate()
        .map(|(i, mut s)| {
            s.index = i;
            if s.condition.is_none() {
                s.condition = Some("always()".into());
            }
            s
        })
        .collect();
    if steps.is_empty() {
        return None;
    }
    Some(PlannedJob {
        id: POST_JOB.into(),
        key: POST_JOB.into(),
        name: POST_JOB.into(),
        matrix: Default::default(),
        needs: Vec::new(),
        needs_keys: Vec::new(),
        condition: Some("always()".into()),
        image: None,
        runs_on: Vec::new(),
        services: Default::default(),
        container: Default::default(),
        env: Default::default(),
        steps,
        timeout: None,
        cache: Vec::new(),
        artifacts: Vec::new(),
        download: Vec::new(),
        cache_result: false,
        approval: None,
        fail_fast: false,
        max_parallel: None,
    })
}

/// The status the post job's expressions see (`success()` / `failure()`).
pub fn post_expr_status(build: Status) -> ExprStatus {
    match build {
        Status::Success => ExprStatus::Success,
        Status::Cancelled => ExprStatus::Cancelled,
        _ => ExprStatus::Failure,
    }
}

fn describe(status: Option<Status>) -> String {
    match status {
        Some(Status::Skipped) => "was skipped".into(),
        Some(s) => format!("ended `{s}`"),
        None => "did not run".into(),
    }
}

#[cfg(test)]
mod tests;
