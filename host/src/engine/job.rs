//! Running one job: its steps in order in the workspace, env and output propagation,
//! conditions, `continue-on-error`, step and job timeouts.

use super::context::{self, Contexts, env_object, set_var};
use super::envfile;
use super::events::RunEvent;
use super::shell::{self, ScriptCommand};
use crate::exec::{CancelSignal, SecretMasker, StepCommand, StepEnd};
use crate::status::Status;
use chengis_pipeline::expr::Status as ExprStatus;
use chengis_pipeline::plan::{Piece, PlannedStep, Text};
use indexmap::IndexMap;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{Instrument, info_span};

/// Everything a job run shares with the rest of the run.
pub struct JobEnv {
    /// The run's workspace (working directory of steps).
    pub workspace: PathBuf,
    /// A private directory for this job's env/output/script files.
    pub state_dir: PathBuf,
    /// Base environment of every step (inherited variables, CI variables, pipeline env).
    pub base_env: Vec<(String, String)>,
    /// The masker of the run's secrets.
    pub masker: Arc<SecretMasker>,
    /// Cancels the run.
    pub cancel: CancelSignal,
    /// Where events go.
    pub events: mpsc::Sender<RunEvent>,
    /// TERM-to-KILL grace period.
    pub kill_grace: Duration,
    /// Per-step output cap in bytes.
    pub output_cap: u64,
}

/// What a finished job hands to its dependents.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// Final status.
    pub status: Status,
    /// Why it did not succeed.
    pub reason: Option<String>,
    /// Outputs written by its steps to `$CHENGIS_OUTPUT`.
    pub outputs: IndexMap<String, String>,
}

/// One job to run: its id and name, environment and steps.
pub struct JobSpec<'a> {
    /// Planned job id (events and logs).
    pub id: &'a str,
    /// Job environment, rendered after the pipeline env.
    pub env: &'a IndexMap<String, Text>,
    /// The steps.
    pub steps: &'a [PlannedStep],
    /// Index of the first step (post steps continue the numbering).
    pub first_index: usize,
    /// Time limit of the job.
    pub timeout: Option<Duration>,
}

/// Runs the steps of a job. `ctx` holds the contexts (env is filled here).
pub async fn run_job(spec: JobSpec<'_>, env: &JobEnv, mut ctx: Contexts) -> JobResult {
    let span = info_span!("job", job = spec.id);
    run_job_inner(spec, env, &mut ctx).instrument(span).await
}

async fn run_job_inner(spec: JobSpec<'_>, env: &JobEnv, ctx: &mut Contexts) -> JobResult {
    let deadline = spec.timeout.map(|t| Instant::now() + t);
    let mut job_env: Vec<(String, String)> = env.base_env.clone();
    let mut failure: Option<(Status, String)> = None;
    if let Err(e) = std::fs::create_dir_all(&env.state_dir) {
        return JobResult {
            status: Status::Error,
            reason: Some(format!("cannot create {}: {e}", env.state_dir.display())),
            outputs: IndexMap::new(),
        };
    }
    ctx.env = env_object(&job_env);
    for (k, text) in spec.env {
        match context::render(text, ctx) {
            Ok(v) => set_var(&mut job_env, k, v),
            Err(e) => failure = Some((Status::Error, format!("env `{k}`: {e}"))),
        }
        ctx.env = env_object(&job_env);
    }
    let mut outputs: IndexMap<String, String> = IndexMap::new();
    let mut steps_ctx = serde_json::Map::new();
    let mut next_line = 1u64;
    for step in spec.steps {
        let index = spec.first_index + step.index;
        ctx.status = Some(if env.cancel.is_cancelled() {
            ExprStatus::Cancelled
        } else if failure.is_some() {
            ExprStatus::Failure
        } else {
            ExprStatus::Success
        });
        ctx.env = env_object(&job_env);
        ctx.steps = Value::Object(steps_ctx.clone());
        let started = Instant::now();
        let run = match context::condition(step.condition.as_deref(), ctx) {
            Ok(run) => run,
            Err(e) => {
                finish(env, spec.id, index, &step.name, Status::Error, None, Some(e.clone()), started).await;
                failure.get_or_insert((Status::Error, e));
                continue;
            }
        };
        if !run {
            let reason = match step.condition {
                Some(_) => "its `if` condition is false",
                None => "an earlier step failed",
            };
            finish(env, spec.id, index, &step.name, Status::Skipped, None, Some(reason.into()), started).await;
            continue;
        }
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let limit = match (step.timeout, remaining) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let _ = env
            .events
            .send(RunEvent::StepStarted { job: spec.id.to_string(), step: index, name: step.name.clone() })
            .await;
        let (status, exit_code, reason, written) =
            run_one(step, index, env, ctx, &job_env, limit, spec.id, &mut next_line)
                .instrument(info_span!("step", step = index, name = %step.name))
                .await;
        let status = if status == Status::TimedOut
            && step.timeout.is_none_or(|t| limit.is_some_and(|l| l < t))
            && deadline.is_some()
        {
            // The job's deadline, not the step's own limit, stopped it.
            failure.get_or_insert((Status::TimedOut, "the job ran out of time".into()));
            Status::TimedOut
        } else {
            status
        };
        for (k, v) in &written.env {
            set_var(&mut job_env, k, v.clone());
        }
        let mut step_outputs = serde_json::Map::new();
        for (k, v) in &written.outputs {
            outputs.insert(k.clone(), v.clone());
            step_outputs.insert(k.clone(), Value::String(v.clone()));
        }
        let outcome = status.as_str();
        let conclusion = if status.is_failure() && step.continue_on_error { "success" } else { outcome };
        if let Some(id) = &step.id {
            steps_ctx
                .insert(id.clone(), json!({"outputs": step_outputs, "outcome": outcome, "conclusion": conclusion}));
        }
        finish(env, spec.id, index, &step.name, status, exit_code, reason.clone(), started).await;
        if status.is_failure() && !step.continue_on_error {
            failure.get_or_insert((
                status,
                format!("step `{}` {}", step.name, reason.unwrap_or_else(|| status.to_string())),
            ));
        }
    }
    match failure {
        None => JobResult { status: Status::Success, reason: None, outputs },
        Some((status, reason)) => JobResult { status, reason: Some(reason), outputs },
    }
}

/// Env and outputs a step wrote to its files.
#[derive(Default)]
struct Written {
    env: Vec<(String, String)>,
    outputs: Vec<(String, String)>,
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    env: &JobEnv,
    job: &str,
    step: usize,
    name: &str,
    status: Status,
    exit_code: Option<i32>,
    reason: Option<String>,
    started: Instant,
) {
    let _ = env
        .events
        .send(RunEvent::StepFinished {
            job: job.to_string(),
            step,
            name: name.to_string(),
            status,
            exit_code,
            reason,
            duration: started.elapsed(),
        })
        .await;
}

#[allow(clippy::too_many_arguments)]
async fn run_one(
    step: &PlannedStep,
    index: usize,
    env: &JobEnv,
    ctx: &Contexts,
    job_env: &[(String, String)],
    limit: Option<Duration>,
    job_id: &str,
    next_line: &mut u64,
) -> (Status, Option<i32>, Option<String>, Written) {
    let Some(run) = &step.run else {
        let uses = step.uses.as_deref().unwrap_or("?");
        return (
            Status::Error,
            None,
            Some(format!(
                "`uses: {uses}` needs a step-executor plugin; `chengis run` runs `run:` steps only (plugins run on the server)"
            )),
            Written::default(),
        );
    };
    let mut step_env: Vec<(String, String)> = job_env.to_vec();
    for (k, text) in &step.env {
        match context::render(text, ctx) {
            Ok(v) => set_var(&mut step_env, k, v),
            Err(e) => return (Status::Error, None, Some(format!("env `{k}`: {e}")), Written::default()),
        }
    }
    // `${{ }}` in `run:` reaches the shell as environment variables, never spliced into the text.
    let mut script = String::new();
    let mut n = 0;
    for piece in &run.0 {
        match piece {
            Piece::Lit(s) => script.push_str(s),
            Piece::Expr(src) => match context::eval(src, ctx) {
                Ok(v) => {
                    n += 1;
                    let name = format!("CHENGIS_EXPR_{n}");
                    script.push_str(&format!("${{{name}}}"));
                    set_var(&mut step_env, &name, chengis_pipeline::expr::to_display_string(&v));
                }
                Err(e) => return (Status::Error, None, Some(e), Written::default()),
            },
        }
    }
    let env_file = env.state_dir.join(format!("step-{index}.env"));
    let out_file = env.state_dir.join(format!("step-{index}.output"));
    for f in [&env_file, &out_file] {
        if let Err(e) = std::fs::write(f, b"") {
            return (Status::Error, None, Some(format!("cannot create {}: {e}", f.display())), Written::default());
        }
    }
    set_var(&mut step_env, "CHENGIS_ENV", env_file.display().to_string());
    set_var(&mut step_env, "CHENGIS_OUTPUT", out_file.display().to_string());
    set_var(&mut step_env, "CHENGIS_STEP", step.name.clone());
    let cwd = match &step.working_directory {
        None => env.workspace.clone(),
        Some(dir) => match context::render(dir, ctx) {
            Ok(d) => match inside(&env.workspace, &d) {
                Some(p) => p,
                None => {
                    return (
                        Status::Error,
                        None,
                        Some(format!("working-directory `{d}` leaves the workspace")),
                        Written::default(),
                    );
                }
            },
            Err(e) => return (Status::Error, None, Some(e), Written::default()),
        },
    };
    let ScriptCommand { program, args } = match shell::command(step.shell.as_deref(), &script, &env.state_dir, index) {
        Ok(c) => c,
        Err(e) => return (Status::Error, None, Some(e), Written::default()),
    };
    let cmd = StepCommand {
        program,
        args,
        env: step_env,
        cwd,
        timeout: limit,
        kill_grace: env.kill_grace,
        output_cap: env.output_cap,
    };
    let wrap = |line| RunEvent::Log { job: job_id.to_string(), step: index, line };
    let report = crate::exec::run_step(cmd, &env.masker, &env.cancel, *next_line, &env.events, wrap).await;
    if let Ok(r) = &report {
        *next_line = r.next_line;
    }
    let (status, code, reason) = match report {
        Err(e) => return (Status::Error, None, Some(e.to_string()), Written::default()),
        Ok(r) => match r.end {
            StepEnd::Exited(0) => (Status::Success, Some(0), None),
            StepEnd::Exited(c) => (Status::Failure, Some(c), Some(format!("exited with code {c}"))),
            StepEnd::Signalled(s) => (Status::Failure, None, Some(format!("was killed by signal {s}"))),
            StepEnd::TimedOut => (
                Status::TimedOut,
                None,
                Some(format!("timed out after {}", humantime::format_duration(limit.unwrap_or_default()))),
            ),
            StepEnd::Cancelled => (Status::Cancelled, None, Some("was cancelled".into())),
        },
    };
    let mut written = Written::default();
    let mut reason = reason;
    for (file, target) in [(&env_file, &mut written.env), (&out_file, &mut written.outputs)] {
        match std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|t| envfile::parse(&t).map_err(|e| e.to_string()))
        {
            Ok(pairs) => *target = pairs,
            Err(e) => {
                let which = if file == &env_file { "$CHENGIS_ENV" } else { "$CHENGIS_OUTPUT" };
                reason = Some(format!("{which}: {e}"));
                return (Status::Failure, code, reason, Written::default());
            }
        }
    }
    (status, code, reason, written)
}

/// Resolves `rel` inside `root`, refusing absolute paths and `..` that climb out.
fn inside(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut out = root.to_path_buf();
    let mut depth = 0usize;
    for part in Path::new(rel).components() {
        match part {
            std::path::Component::Normal(p) => {
                out.push(p);
                depth += 1;
            }
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir if depth > 0 => {
                out.pop();
                depth -= 1;
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_directory_stays_inside() {
        let root = Path::new("/w");
        assert_eq!(inside(root, "a/b/../c"), Some(PathBuf::from("/w/a/c")));
        assert_eq!(inside(root, "./a"), Some(PathBuf::from("/w/a")));
        assert_eq!(inside(root, "../x"), None);
        assert_eq!(inside(root, "/etc"), None);
    }
}
