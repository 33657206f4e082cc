//! One step inside the job container, through the runner (PID 1, see `runner`): the step's
//! script is written to the job's private directory, its name and the end marker are sent to
//! the runner's stdin, and the output is read back from the attached streams until the marker
//! (with the exit code) has come on both.
//!
//! Stopping a step runs an exec: `kill -TERM -1`, then `kill -KILL -1` after the grace period.
//! Inside the container's PID namespace `-1` means every process but PID 1 (the runner) and the
//! killer itself, which is exactly the running step and everything it started; steps run one at
//! a time. The runner does the same with SIGKILL once a step's main process exits, so a
//! forgotten background process never outlives its step.

use super::runner::{MarkerScanner, step_script};
use super::sandbox::{JobSandbox, exec_output};
use crate::exec::{CancelSignal, ExecError, StepCommand, StepEnd, StepOutput, StepReport, Stream};
use bollard::container::LogOutput;
use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, sleep_until};

/// How long the output may stay open after the final SIGKILL before we stop reading.
const AFTER_KILL: Duration = Duration::from_secs(5);

impl JobSandbox {
    /// Runs `step` in the job container; its output goes through `out` (masked, capped,
    /// numbered in the job's log).
    pub async fn run_step(
        &self,
        step: StepCommand,
        out: &mut StepOutput,
        cancel: &CancelSignal,
    ) -> Result<StepReport, ExecError> {
        let started = Instant::now();
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        let script_name = format!("run-{run}.sh");
        let script = step_script(&step.cwd.display().to_string(), &step.env, &step.program, &step.args);
        let host_path = self.state_dir.join(&script_name);
        std::fs::write(&host_path, script)
            .map_err(|e| ExecError::Sandbox { message: format!("cannot write {}: {e}", host_path.display()) })?;
        let mut guard = self.runner.lock().await;
        let Some(runner) = guard.as_mut() else {
            return Err(ExecError::Sandbox { message: "the job container's runner is gone".into() });
        };
        let command = format!("{}/{script_name} {}\n", super::spec::STATE, self.mark);
        let sent = async {
            runner.input.write_all(command.as_bytes()).await?;
            runner.input.flush().await
        };
        if let Err(e) = sent.await {
            *guard = None;
            return Err(ExecError::Sandbox { message: format!("cannot reach the job container's runner: {e}") });
        }
        let (mut out_scan, mut err_scan) = (MarkerScanner::new(&self.mark), MarkerScanner::new(&self.mark));
        let far = started + Duration::from_secs(365 * 86_400);
        let deadline = step.timeout.map(|t| started + t);
        let mut stopped: Option<StepEnd> = None;
        let mut kill_at: Option<Instant> = None;
        let mut give_up_at: Option<Instant> = None;
        let mut lost: Option<String> = None;
        while out_scan.exit().is_none() || err_scan.exit().is_none() {
            tokio::select! {
                item = runner.output.next() => match item {
                    Some(Ok(LogOutput::StdOut { message })) => {
                        let bytes = out_scan.feed(&message);
                        out.feed(Stream::Stdout, &bytes).await
                    }
                    Some(Ok(LogOutput::StdErr { message })) => {
                        let bytes = err_scan.feed(&message);
                        out.feed(Stream::Stderr, &bytes).await
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        lost = Some(e.to_string());
                        break;
                    }
                    None => {
                        lost = Some("the job container stopped".into());
                        break;
                    }
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
                _ = sleep_until(give_up_at.unwrap_or(far)), if give_up_at.is_some() => {
                    lost = Some("the step did not stop after SIGKILL".into());
                    break;
                }
            }
        }
        if lost.is_some() {
            // The runner cannot be trusted to be in step with us any more.
            *guard = None;
            for (stream, scan) in [(Stream::Stdout, &mut out_scan), (Stream::Stderr, &mut err_scan)] {
                let rest = scan.flush();
                out.feed(stream, &rest).await;
            }
        }
        drop(guard);
        let _ = std::fs::remove_file(&host_path);
        out.finish().await;
        let end = match (stopped, lost) {
            (Some(reason), _) => reason,
            (None, Some(why)) => {
                if self.oom_killed().await {
                    StepEnd::OutOfMemory(self.memory)
                } else {
                    return Err(ExecError::Sandbox { message: format!("`{}`: {why}", step.program) });
                }
            }
            (None, None) => match out_scan.exit().unwrap_or(-1) {
                137 if self.oom_killed().await => StepEnd::OutOfMemory(self.memory),
                code => StepEnd::Exited(code),
            },
        };
        Ok(StepReport { end, duration: started.elapsed(), dropped_bytes: out.dropped() })
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
