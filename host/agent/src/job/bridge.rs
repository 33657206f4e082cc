//! What the plugin runtime calls back into while a plugin runs: a [`LogSink`] that puts a
//! plugin's lines into the build log (masked, numbered like step output), and a [`Sandbox`]
//! that runs a step executor's commands in the job's sandbox (a local process group, or the
//! job's container) through the same executors as `run:` steps.
//!
//! Plugin calls are synchronous and run on a blocking thread; the sandbox blocks that thread on
//! the async executors through the runtime handle.

use chengis_model::events::RunEvent;
use chengis_plugin_host::{ExecOutcome, ExecRequest, LogLevel, LogSink, Sandbox, SandboxError};
use chengis_runner::exec::docker::JobSandbox;
use chengis_runner::exec::{CancelSignal, LogLine, SecretMasker, StepCommand, StepEnd, Stream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

/// Puts a plugin's log lines into one step's log.
pub struct StepLog {
    /// Where run events go.
    pub events: mpsc::Sender<RunEvent>,
    /// The planned job id.
    pub job: String,
    /// The step index.
    pub step: usize,
    /// Masks the run's secrets.
    pub masker: Arc<SecretMasker>,
    /// The number of the next line.
    pub next_line: AtomicU64,
}

impl StepLog {
    /// The number the next line will get.
    pub fn next_line(&self) -> u64 {
        self.next_line.load(Ordering::Relaxed)
    }
}

impl LogSink for StepLog {
    fn line(&self, level: LogLevel, line: &str) {
        let stream = match level {
            LogLevel::Debug | LogLevel::Info => Stream::Stdout,
            LogLevel::Warn | LogLevel::Error => Stream::Stderr,
        };
        let number = self.next_line.fetch_add(1, Ordering::Relaxed);
        let time_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let line = LogLine { number, stream, time_ms, text: self.masker.mask_str(line) };
        // A closed channel means nobody listens any more; the plugin still runs to its end.
        let _ = self.events.blocking_send(RunEvent::Log { job: self.job.clone(), step: self.step, line });
    }
}

/// Where a step executor's commands run.
pub enum SandboxTarget {
    /// Local processes in the workspace with this environment.
    Local {
        /// The workspace.
        workspace: PathBuf,
        /// The step's whole environment.
        env: Vec<(String, String)>,
        /// The agent's host-step sandbox.
        host: Option<chengis_runner::sandbox::StepHost>,
    },
    /// The job's container, with this environment (on top of the image's).
    Container {
        /// The job's sandbox.
        sandbox: Arc<JobSandbox>,
        /// The step's environment.
        env: Vec<(String, String)>,
    },
}

/// The job's sandbox as the runtime sees it.
pub struct StepSandbox {
    /// The async runtime to run executors on.
    pub handle: Handle,
    /// Where commands run.
    pub target: SandboxTarget,
    /// Masks output.
    pub masker: Arc<SecretMasker>,
    /// Cancels the job.
    pub cancel: CancelSignal,
    /// TERM-to-KILL grace period.
    pub kill_grace: Duration,
    /// Output cap per command.
    pub output_cap: u64,
}

impl Sandbox for StepSandbox {
    fn exec(&self, request: &ExecRequest, output: &mut dyn FnMut(&str)) -> Result<ExecOutcome, SandboxError> {
        let Some((program, args)) = request.argv.split_first() else {
            return Err(SandboxError("the command is empty".into()));
        };
        let workdir = request.workdir.clone().unwrap_or_default();
        let (tx, mut rx) = mpsc::channel::<LogLine>(256);
        let (masker, cancel) = (self.masker.clone(), self.cancel.clone());
        let wrap = |line: LogLine| line;
        // The command runs on the async runtime; this (blocking) thread forwards its lines to
        // the plugin as they come, so output is live and no async context is blocked.
        let task = match &self.target {
            SandboxTarget::Local { workspace, env, host } => {
                let mut env = env.clone();
                chengis_model::env::merge_vars(&mut env, &request.env);
                let cmd = StepCommand {
                    program: program.clone(),
                    args: args.to_vec(),
                    env,
                    cwd: workspace.join(&workdir),
                    timeout: Some(request.timeout),
                    kill_grace: self.kill_grace,
                    output_cap: self.output_cap,
                    host: host.clone(),
                };
                self.handle
                    .spawn(async move { chengis_runner::exec::run_step(cmd, &masker, &cancel, 1, &tx, wrap).await })
            }
            SandboxTarget::Container { sandbox, env } => {
                let mut env = env.clone();
                chengis_model::env::merge_vars(&mut env, &request.env);
                let step = StepCommand {
                    program: program.clone(),
                    args: args.to_vec(),
                    env,
                    cwd: PathBuf::from(chengis_runner::exec::docker::spec::WORKSPACE).join(&workdir),
                    timeout: Some(request.timeout),
                    kill_grace: self.kill_grace,
                    output_cap: self.output_cap,
                    host: None,
                };
                let sandbox = sandbox.clone();
                self.handle.spawn(async move { sandbox.run_step(step, &masker, &cancel, 1, &tx, wrap).await })
            }
        };
        while let Some(line) = rx.blocking_recv() {
            output(&line.text);
        }
        let report = self.handle.block_on(task).map_err(|e| SandboxError(format!("the command's task failed: {e}")))?;
        let report = report.map_err(|e| SandboxError(e.to_string()))?;
        Ok(match report.end {
            StepEnd::Exited(code) => ExecOutcome { code: Some(code), timed_out: false },
            StepEnd::TimedOut => ExecOutcome { code: None, timed_out: true },
            StepEnd::Signalled(_) | StepEnd::Cancelled | StepEnd::OutOfMemory(_) => {
                ExecOutcome { code: None, timed_out: false }
            }
        })
    }
}
