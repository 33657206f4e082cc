//! Running one job: its steps in order in the workspace (as local processes, or in the job's
//! container when it names an image), env and output propagation, conditions,
//! `continue-on-error`, step and job timeouts.

use crate::context::{self, Contexts, env_object, set_var};
use crate::envfile;
use crate::shell::{self, ScriptCommand};
use chengis_model::events::RunEvent;
use chengis_model::status::Status;
use chengis_pipeline::container::ContainerOptions;
use chengis_pipeline::expr::Status as ExprStatus;
use chengis_pipeline::model::Service;
use chengis_pipeline::plan::{Piece, PlannedJob, PlannedStep, Text};
use chengis_runner::exec::docker::{
    DockerRuntime, JobSandbox, SandboxLabels, SandboxRequest, ServiceRequest, spec as docker_spec,
};
use chengis_runner::exec::{
    BoxFuture, CancelSignal, ExecError, HostProcess, JobLog, LineSink, StepBackend, StepCommand, StepEnd, StepOutput,
    StepReport,
};
use indexmap::IndexMap;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{Instrument, info_span};

pub mod bridge;
mod plugin_step;

/// Everything a job run shares with the rest of the run.
pub struct JobEnv {
    /// The run's workspace (working directory of steps).
    pub workspace: PathBuf,
    /// A private directory for this job's env/output/script files.
    pub state_dir: PathBuf,
    /// Base environment of every step (CI variables, pipeline env).
    pub base_env: Vec<(String, String)>,
    /// Variables of the agent's own machine (such as `PATH`) that only local steps get; steps
    /// in containers see the image's environment instead.
    pub host_env: Vec<(String, String)>,
    /// The Docker runtime for jobs and steps that name an image.
    pub docker: Arc<DockerRuntime>,
    /// Labels of the containers this job creates.
    pub labels: SandboxLabels,
    /// The name the operator's container allowances are matched against.
    pub allowance_name: String,
    /// The workspace is the agent's own (a checkout), not the user's directory: containers with
    /// a `user:` get it handed over (chown) so that steps can write to it.
    pub owns_workspace: bool,
    /// The plugin platform, for `uses:` steps (none for `chengis run`).
    pub plugins: Option<Arc<dyn crate::executors::StepExecutors>>,
    /// The build as step-executor plugins see it.
    pub plugin_build: Option<chengis_plugin_host::types::Build>,
    /// The job's log: every line of its steps and plugins, masked, numbered and capped.
    pub log: Arc<JobLog>,
    /// Cancels the run.
    pub cancel: CancelSignal,
    /// Where events go.
    pub events: mpsc::Sender<RunEvent>,
    /// TERM-to-KILL grace period.
    pub kill_grace: Duration,
    /// How steps without an image run on this agent (sandbox, step user, process-group
    /// records); `None` runs them as this process (`chengis run`).
    pub host: Option<chengis_runner::sandbox::StepHost>,
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
    /// The job's container: its steps run in one when set.
    pub container: Option<ContainerSpec<'a>>,
}

/// A job's container: image, services and settings.
#[derive(Clone, Copy)]
pub struct ContainerSpec<'a> {
    /// The image (may hold expressions).
    pub image: &'a Text,
    /// Service containers started next to it.
    pub services: &'a IndexMap<String, Service>,
    /// Settings.
    pub options: &'a ContainerOptions,
}

impl<'a> ContainerSpec<'a> {
    /// The container of a planned job, when it names an image.
    pub fn of(job: &'a PlannedJob) -> Option<ContainerSpec<'a>> {
        job.image.as_ref().map(|image| ContainerSpec { image, services: &job.services, options: &job.container })
    }
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
    if let Err(e) = create_state_dir(&env.state_dir) {
        return JobResult {
            status: Status::Error,
            reason: Some(format!("cannot create {}: {e}", env.state_dir.display())),
            outputs: IndexMap::new(),
        };
    }
    let in_container = spec.container.is_some();
    ctx.env = visible_env(env, &job_env, in_container);
    for (k, text) in spec.env {
        match context::render(text, ctx) {
            Ok(v) => set_var(&mut job_env, k, v),
            Err(e) => failure = Some((Status::Error, format!("env `{k}`: {e}"))),
        }
        ctx.env = visible_env(env, &job_env, in_container);
    }
    let sandbox = match spec.container {
        None => None,
        Some(c) => match start_job_sandbox(c, env, ctx).await {
            Ok(s) => Some(Arc::new(s)),
            Err(reason) => return JobResult { status: Status::Error, reason: Some(reason), outputs: IndexMap::new() },
        },
    };
    let result = run_steps(&spec, env, ctx, job_env, failure, deadline, sandbox.as_ref()).await;
    // Plugin calls are over, so this is the only reference; otherwise the last holder's drop
    // removes the containers in the background.
    if let Some(mut s) = sandbox.and_then(|s| Arc::try_unwrap(s).ok()) {
        s.teardown().await;
    }
    result
}

/// Starts the job's container sandbox (network, services, job container).
async fn start_job_sandbox(spec: ContainerSpec<'_>, env: &JobEnv, ctx: &Contexts) -> Result<JobSandbox, String> {
    let image = context::render(spec.image, ctx).map_err(|e| format!("image: {e}"))?;
    let mut services = Vec::new();
    for (name, svc) in spec.services {
        let wait_timeout = match &svc.wait_timeout {
            Some(t) => Some(
                chengis_pipeline::duration::parse_duration(t)
                    .map_err(|e| format!("service `{name}`: wait-timeout `{t}`: {e}"))?,
            ),
            None => None,
        };
        services.push(ServiceRequest {
            name: name.clone(),
            image: svc.image.clone(),
            env: svc.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            command: svc.command.clone(),
            ports: svc.ports.clone(),
            health_cmd: svc.health_cmd.clone(),
            wait_timeout,
        });
    }
    let request = SandboxRequest {
        job_name: &env.allowance_name,
        image: &image,
        options: spec.options,
        services,
        workspace: &env.workspace,
        state_dir: &env.state_dir,
        labels: env.labels.clone(),
        join_network: None,
        hand_over_workspace: env.owns_workspace,
    };
    JobSandbox::start(&env.docker, request).await.map_err(|e| format!("cannot start the job's container: {e}"))
}

/// The `env` context: what a step would see (the host's variables only for local steps).
fn visible_env(env: &JobEnv, job_env: &[(String, String)], in_container: bool) -> Value {
    if in_container {
        return env_object(job_env);
    }
    let mut all = env.host_env.clone();
    for (k, v) in job_env {
        set_var(&mut all, k, v.clone());
    }
    env_object(&all)
}

/// The job's private directory for step files; world-writable because containers may run
/// steps as another user (it lives inside a private parent).
fn create_state_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
}

#[allow(clippy::too_many_arguments)]
async fn run_steps(
    spec: &JobSpec<'_>,
    env: &JobEnv,
    ctx: &mut Contexts,
    mut job_env: Vec<(String, String)>,
    mut failure: Option<(Status, String)>,
    deadline: Option<Instant>,
    sandbox: Option<&Arc<JobSandbox>>,
) -> JobResult {
    let in_container = sandbox.is_some();
    let mut outputs: IndexMap<String, String> = IndexMap::new();
    let mut steps_ctx = serde_json::Map::new();
    for step in spec.steps {
        let index = spec.first_index + step.index;
        ctx.status = Some(if env.cancel.is_cancelled() {
            ExprStatus::Cancelled
        } else if failure.is_some() {
            ExprStatus::Failure
        } else {
            ExprStatus::Success
        });
        ctx.env = visible_env(env, &job_env, in_container);
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
        if !run && env.cancel.is_cancelled() && step.condition.is_none() && failure.is_none() {
            // Stopped before this step began: the step and the job end `cancelled`.
            let reason = "was cancelled before it began".to_string();
            finish(env, spec.id, index, &step.name, Status::Cancelled, None, Some(reason.clone()), started).await;
            failure.get_or_insert((Status::Cancelled, format!("step `{}` {reason}", step.name)));
            continue;
        }
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
        let (status, exit_code, mut reason, written) =
            run_one(step, index, env, ctx, &job_env, limit, spec.id, sandbox)
                .instrument(info_span!("step", step = index, name = %step.name))
                .await;
        if status == Status::TimedOut
            && step.timeout.is_none_or(|t| limit.is_some_and(|l| l < t))
            && let Some(job_limit) = spec.timeout.filter(|_| deadline.is_some())
        {
            // The job's deadline, not the step's own limit, stopped it.
            let why = format!("timed out after {}", chengis_model::human_duration(job_limit));
            reason = Some(why.clone());
            failure.get_or_insert((Status::TimedOut, why));
        }
        for (k, v) in &written.env {
            set_var(&mut job_env, k, v.clone());
        }
        let mut step_outputs = serde_json::Map::new();
        for (k, v) in &written.outputs {
            // Later steps of this job see the value; the job's outputs (stored, shown, and read
            // by other jobs) go through the log's masker like every log line, and the log says
            // so (as GitHub Actions does).
            let masked = env.log.mask(v);
            if masked != *v {
                let text = format!("warning: output `{k}` contains a secret; it is stored and passed on masked");
                for line in env.log.system(&[text]) {
                    let _ = env.events.send(RunEvent::Log { job: spec.id.to_string(), step: index, line }).await;
                }
            }
            outputs.insert(k.clone(), masked);
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

/// Env and outputs a step wrote to its files (or a plugin set).
#[derive(Default)]
pub(super) struct Written {
    pub(super) env: Vec<(String, String)>,
    pub(super) outputs: Vec<(String, String)>,
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
    sandbox: Option<&Arc<JobSandbox>>,
) -> (Status, Option<i32>, Option<String>, Written) {
    let mut step_env: Vec<(String, String)> = job_env.to_vec();
    for (k, text) in &step.env {
        match context::render(text, ctx) {
            Ok(v) => set_var(&mut step_env, k, v),
            Err(e) => return (Status::Error, None, Some(format!("env `{k}`: {e}")), Written::default()),
        }
    }
    let Some(run) = &step.run else {
        let uses = step.uses.as_deref().unwrap_or("?");
        let Some(service) = &env.plugins else {
            return (
                Status::Error,
                None,
                Some(format!("`uses: {uses}` needs a step-executor plugin, and this run has no plugin platform")),
                Written::default(),
            );
        };
        if sandbox.is_some() {
            set_var(&mut step_env, "CHENGIS_WORKSPACE", docker_spec::WORKSPACE.to_string());
        }
        set_var(&mut step_env, "CHENGIS_STEP", step.name.clone());
        let (status, reason, written) =
            plugin_step::run(service, step, uses, index, env, ctx, step_env, limit, job_id, sandbox).await;
        return (status, None, reason, written);
    };
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
    let step_image = match &step.image {
        Some(text) => match context::render(text, ctx) {
            Ok(i) => Some(i),
            Err(e) => return (Status::Error, None, Some(format!("image: {e}")), Written::default()),
        },
        None => None,
    };
    let container = sandbox.is_some() || step_image.is_some();
    // Where the step sees the workspace and its own files.
    let (workspace, files) = if container {
        (PathBuf::from(docker_spec::WORKSPACE), PathBuf::from(docker_spec::STATE))
    } else {
        (env.workspace.clone(), env.state_dir.clone())
    };
    set_var(&mut step_env, "CHENGIS_ENV", files.join(format!("step-{index}.env")).display().to_string());
    set_var(&mut step_env, "CHENGIS_OUTPUT", files.join(format!("step-{index}.output")).display().to_string());
    set_var(&mut step_env, "CHENGIS_STEP", step.name.clone());
    if container {
        set_var(&mut step_env, "CHENGIS_WORKSPACE", docker_spec::WORKSPACE.to_string());
    }
    let cwd = match &step.working_directory {
        None => workspace.clone(),
        Some(dir) => match context::render(dir, ctx) {
            Ok(d) => match inside(&workspace, &d) {
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
    let ScriptCommand { program, args } =
        match shell::command(step.shell.as_deref(), &script, &env.state_dir, &files, index) {
            Ok(c) => c,
            Err(e) => return (Status::Error, None, Some(e), Written::default()),
        };
    // Local steps also get the agent's own variables; containers have the image's.
    let step_env = if container {
        step_env
    } else {
        let mut full_env = env.host_env.clone();
        context::merge_vars(&mut full_env, &step_env);
        if let Err(e) = sandbox_home(env, &mut full_env) {
            return (Status::Error, None, Some(e), Written::default());
        }
        full_env
    };
    let cmd = StepCommand {
        program,
        args,
        env: step_env,
        cwd,
        timeout: limit,
        kill_grace: env.kill_grace,
        host: if container { None } else { env.host.clone() },
    };
    let mut out = env.log.step(LineSink::Events { tx: env.events.clone(), job: job_id.to_string(), step: index });
    let report = match (step_image.as_deref(), sandbox) {
        (None, None) => HostProcess.run(cmd, &mut out, &env.cancel).await,
        (None, Some(job)) => job.run(cmd, &mut out, &env.cancel).await,
        (Some(image), join) => StepImage { image, join, env }.run(cmd, &mut out, &env.cancel).await,
    };
    let (status, code, reason) = match report {
        Err(e) => return (Status::Error, None, Some(e.to_string()), Written::default()),
        Ok(r) => match r.end {
            StepEnd::Exited(0) => (Status::Success, Some(0), None),
            StepEnd::Exited(c) => (Status::Failure, Some(c), Some(format!("exited with code {c}"))),
            StepEnd::Signalled(s) => (Status::Failure, None, Some(format!("was killed by signal {s}"))),
            StepEnd::TimedOut => (
                Status::TimedOut,
                None,
                Some(format!("timed out after {}", chengis_model::human_duration(limit.unwrap_or_default()))),
            ),
            StepEnd::Cancelled => (Status::Cancelled, None, Some("was cancelled".into())),
            StepEnd::OutOfMemory(limit) => (
                Status::Failure,
                Some(137),
                Some(match limit {
                    Some(bytes) => format!(
                        "was killed: oom (out of memory: over the job's memory limit of {})",
                        chengis_runner::exec::human_size(bytes)
                    ),
                    None => "was killed: oom (out of memory)".into(),
                }),
            ),
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

/// A step with an `image:` of its own: a container of that image (next to the job's container
/// when there is one), started for the step and removed right after.
struct StepImage<'a> {
    image: &'a str,
    join: Option<&'a Arc<JobSandbox>>,
    env: &'a JobEnv,
}

impl StepBackend for StepImage<'_> {
    fn run<'a>(
        &'a self,
        cmd: StepCommand,
        out: &'a mut StepOutput,
        cancel: &'a CancelSignal,
    ) -> BoxFuture<'a, Result<StepReport, ExecError>> {
        Box::pin(async move {
            let env = self.env;
            let started = match self.join {
                Some(job) => job.step_sandbox(self.image, &env.allowance_name).await,
                None => {
                    let options = ContainerOptions::default();
                    let request = SandboxRequest {
                        job_name: &env.allowance_name,
                        image: self.image,
                        options: &options,
                        services: Vec::new(),
                        workspace: &env.workspace,
                        state_dir: &env.state_dir,
                        labels: env.labels.clone(),
                        join_network: None,
                        hand_over_workspace: false,
                    };
                    JobSandbox::start(&env.docker, request).await
                }
            };
            let mut own = started.map_err(|e| ExecError::Sandbox { message: e.to_string() })?;
            let report = own.run_step(cmd, out, cancel).await;
            own.teardown().await;
            report
        })
    }
}

/// A sandboxed host step's `HOME` and `TMPDIR`: directories of its job's state (the agent's
/// home and `/tmp` are out of its reach).
pub(crate) fn sandbox_home(env: &JobEnv, vars: &mut Vec<(String, String)>) -> Result<(), String> {
    use chengis_runner::sandbox::HostSteps;
    if env.host.as_ref().is_none_or(|h| h.policy.mode != HostSteps::Sandboxed) {
        return Ok(());
    }
    for (var, dir) in [("HOME", "home"), ("TMPDIR", "tmp")] {
        let path = env.state_dir.join(dir);
        std::fs::create_dir_all(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        set_var(vars, var, path.display().to_string());
    }
    Ok(())
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
