//! What the plugin runtime calls back into while a plugin runs: a [`LogSink`] that puts a
//! plugin's lines into the build log (masked, numbered like step output), and a [`Sandbox`]
//! that runs a step executor's commands in the job's sandbox (a local process group, or the
//! job's container) through the same executors as `run:` steps.
//!
//! Plugin calls are synchronous and run on a blocking thread; the sandbox blocks that thread on
//! the async executors through the runtime handle.

use chengis_plugin_host::{ExecOutcome, ExecRequest, LogLevel, LogSink, Sandbox, SandboxError};
use chengis_runner::exec::{
    CancelSignal, JobLog, LineSink, LogLine, SecretMasker, StepBackend, StepCommand, StepEnd, StepOutput, Stream,
};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

/// Puts a plugin's log lines into one step's log, through the job's log pipeline (masked,
/// capped, numbered like process output).
pub struct StepLog(Mutex<StepOutput>);

impl StepLog {
    /// The log of one `uses:` step.
    pub fn new(out: StepOutput) -> StepLog {
        StepLog(Mutex::new(out))
    }

    /// Ends the step's log (the cap warning, when the plugin's lines reached it).
    pub async fn finish(self) {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner()).finish().await;
    }
}

impl LogSink for StepLog {
    fn line(&self, level: LogLevel, line: &str) {
        let stream = match level {
            LogLevel::Debug | LogLevel::Info => Stream::Stdout,
            LogLevel::Warn | LogLevel::Error => Stream::Stderr,
        };
        self.0.lock().unwrap_or_else(|e| e.into_inner()).plugin_line(stream, line);
    }
}

/// Where a step executor's commands run: the backend `run:` steps of the job use, with the
/// step's environment.
pub struct SandboxTarget {
    /// The job's step backend (a local process group, or the job's container).
    pub backend: Arc<dyn StepBackend>,
    /// Where the workspace is as the commands see it.
    pub workspace: PathBuf,
    /// The step's whole environment (on top of the image's, in a container).
    pub env: Vec<(String, String)>,
    /// The agent's host-step sandbox (local commands only).
    pub host: Option<chengis_runner::sandbox::StepHost>,
}

/// The job's sandbox as the runtime sees it.
pub struct StepSandbox {
    /// The async runtime to run executors on.
    pub handle: Handle,
    /// Where commands run.
    pub target: SandboxTarget,
    /// Masks output.
    pub masker: SecretMasker,
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
        let target = &self.target;
        let mut env = target.env.clone();
        chengis_model::env::merge_vars(&mut env, &request.env);
        let cmd = StepCommand {
            program: program.clone(),
            args: args.to_vec(),
            env,
            cwd: target.workspace.join(&workdir),
            timeout: Some(request.timeout),
            kill_grace: self.kill_grace,
            host: target.host.clone(),
        };
        // The command's output goes back to the plugin (which may log it), not into the log:
        // it has a numbering of its own.
        let mut out = JobLog::new(self.masker.clone(), 1, self.output_cap).step(LineSink::Lines(tx));
        let (backend, cancel) = (target.backend.clone(), self.cancel.clone());
        // The command runs on the async runtime; this (blocking) thread forwards its lines to
        // the plugin as they come, so output is live and no async context is blocked.
        let task = self.handle.spawn(async move { backend.run(cmd, &mut out, &cancel).await });
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
