//! One step inside the job container through the exec API.
//!
//! Exec has no kill call, so the step runs under a tiny `sh` wrapper, and stopping it runs a
//! second exec: `kill -TERM -1`, then `kill -KILL -1` after the grace period. Inside the
//! container's PID namespace `-1` means every process but PID 1 (the keep-alive) and the killer
//! itself, which is exactly the running step and everything it started; steps run one at a time.
//! The wrapper does the same with SIGKILL once the step's main process exits, so a forgotten
//! background process never holds the output open or outlives its step.

use super::sandbox::{JobSandbox, exec_output};
use crate::exec::capture::{OutputCapture, send_lines};
use crate::exec::{CancelSignal, ExecError, LogLine, SecretMasker, StepEnd, StepReport, Stream};
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

/// Runs `"$@"`, then kills whatever it left behind, and exits with its code.
const WRAPPER: &str = "\"$@\"; rc=$?; kill -KILL -1 2>/dev/null; exit $rc";
/// How long the output may stay open after the final SIGKILL before we stop reading.
const AFTER_KILL: Duration = Duration::from_secs(5);

/// A step to run in a container.
#[derive(Debug, Clone)]
pub struct ContainerStep {
    /// The program, such as `sh`.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The whole environment of the step (nothing of the agent's is inherited).
    pub env: Vec<(String, String)>,
    /// Working directory inside the container.
    pub cwd: String,
    /// Time limit.
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Most output bytes kept.
    pub output_cap: u64,
}

impl JobSandbox {
    /// Runs `step` in the job container; lines (masked, numbered from `first_line`) go to
    /// `out` wrapped by `wrap`.
    pub async fn run_step<E>(
        &self,
        step: ContainerStep,
        masker: &SecretMasker,
        cancel: &CancelSignal,
        first_line: u64,
        out: &mpsc::Sender<E>,
        wrap: impl Fn(LogLine) -> E,
    ) -> Result<StepReport, ExecError> {
        let started = Instant::now();
        let fail = |e: bollard::errors::Error| ExecError::Sandbox { message: format!("`{}`: {e}", step.program) };
        let mut cmd = vec!["/bin/sh".to_string(), "-c".into(), WRAPPER.into(), "chengis-step".into()];
        cmd.push(step.program.clone());
        cmd.extend(step.args.iter().cloned());
        let exec = self
            .docker
            .create_exec(
                &self.container,
                CreateExecOptions {
                    cmd: Some(cmd),
                    env: Some(step.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                    working_dir: Some(step.cwd.clone()),
                    user: self.user.clone(),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..CreateExecOptions::default()
                },
            )
            .await
            .map_err(fail)?;
        let StartExecResults::Attached { mut output, .. } =
            self.docker.start_exec(&exec.id, Some(StartExecOptions::default())).await.map_err(fail)?
        else {
            return Err(ExecError::Sandbox { message: "the engine started the step detached".into() });
        };
        let mut capture = OutputCapture::new(masker, first_line, step.output_cap);
        let far = started + Duration::from_secs(365 * 86_400);
        let deadline = step.timeout.map(|t| started + t);
        let mut stopped: Option<StepEnd> = None;
        let mut kill_at: Option<Instant> = None;
        let mut give_up_at: Option<Instant> = None;
        let mut stream_error: Option<String> = None;
        loop {
            tokio::select! {
                item = output.next() => match item {
                    Some(Ok(LogOutput::StdOut { message })) => {
                        send_lines(out, &wrap, capture.feed(Stream::Stdout, &message)).await
                    }
                    Some(Ok(LogOutput::StdErr { message })) => {
                        send_lines(out, &wrap, capture.feed(Stream::Stderr, &message)).await
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        stream_error = Some(e.to_string());
                        break;
                    }
                    None => break,
                },
                _ = sleep_until(deadline.unwrap_or(far)), if deadline.is_some() && stopped.is_none() => {
                    stopped = Some(StepEnd::TimedOut);
                    kill_at = Some(self.signal_all("TERM", step.kill_grace).await);
                }
                _ = cancel.cancelled(), if stopped.is_none() => {
                    stopped = Some(StepEnd::Cancelled);
                    kill_at = Some(self.signal_all("TERM", step.kill_grace).await);
                }
                _ = sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() => {
                    tracing::info!(program = %step.program, "grace period over: SIGKILL to the step's processes");
                    self.signal_all("KILL", Duration::ZERO).await;
                    kill_at = None;
                    give_up_at = Some(Instant::now() + AFTER_KILL);
                }
                _ = sleep_until(give_up_at.unwrap_or(far)), if give_up_at.is_some() => break,
            }
        }
        send_lines(out, &wrap, capture.finish()).await;
        let end = match stopped {
            Some(reason) => reason,
            None => {
                if let Some(e) = stream_error {
                    return Err(ExecError::Sandbox {
                        message: format!("reading the output of `{}`: {e}", step.program),
                    });
                }
                let code = self.exit_code(&exec.id).await.map_err(fail)?;
                if code == 137 && self.oom_killed().await {
                    StepEnd::OutOfMemory(self.memory)
                } else {
                    StepEnd::Exited(code)
                }
            }
        };
        Ok(StepReport {
            end,
            duration: started.elapsed(),
            dropped_bytes: capture.dropped(),
            next_line: capture.next_number(),
        })
    }

    /// Sends `signal` to every process of the container but PID 1; returns when the next
    /// stage (SIGKILL) is due.
    async fn signal_all(&self, signal: &str, grace: Duration) -> Instant {
        tracing::info!(signal, "stopping the step: signal to the step's processes");
        let cmd = vec!["/bin/sh".into(), "-c".into(), format!("kill -{signal} -1")];
        if let Err(e) = exec_output(&self.docker, &self.container, cmd, self.user.clone()).await {
            tracing::warn!("signalling the step: {e}");
        }
        Instant::now() + grace
    }

    /// The exit code of a finished exec (polled briefly: the engine records it just after the
    /// output ends).
    async fn exit_code(&self, exec_id: &str) -> Result<i32, bollard::errors::Error> {
        for _ in 0..50 {
            let info = self.docker.inspect_exec(exec_id).await?;
            if info.running != Some(true)
                && let Some(code) = info.exit_code
            {
                return Ok(code as i32);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(-1)
    }

    /// True when the kernel's OOM killer struck in this container since the last check
    /// (the `oom_kill` counter of its memory cgroup, v1 or v2).
    async fn oom_killed(&self) -> bool {
        let cmd = vec![
            "/bin/sh".into(),
            "-c".into(),
            "cat /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null".into(),
        ];
        let Ok((_, text)) = exec_output(&self.docker, &self.container, cmd, None).await else { return false };
        let count: u64 = text
            .lines()
            .filter_map(|l| l.strip_prefix("oom_kill "))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let before = self.oom_kills.swap(count, std::sync::atomic::Ordering::Relaxed);
        count > before
    }
}
