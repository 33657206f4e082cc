//! One step as a child process group: spawn, read both pipes through the masker and the line
//! splitter, and stop it on timeout or cancellation with SIGTERM to the whole group, then
//! SIGKILL after the grace period.
//!
//! When the step's main process exits, the pipes get 100 ms to drain; a background process that
//! still holds them open is then killed with the rest of the group, so a forgotten `sleep &`
//! never hangs a build. Every step ends with SIGKILL to its group, so nothing it started
//! outlives it.

use super::lines::Stream;
use super::log::StepOutput;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

/// How long the pipes may stay open after the main process exited.
const DRAIN: Duration = Duration::from_millis(100);

/// Cancels a run, a job or a step: cheap to clone, `cancel()` once, observed everywhere.
#[derive(Debug, Clone, Default)]
pub struct CancelSignal(CancellationToken);

impl CancelSignal {
    /// A new, not yet cancelled signal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels everything that watches this signal (and its children).
    pub fn cancel(&self) {
        self.0.cancel();
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes when cancelled.
    pub async fn cancelled(&self) {
        self.0.cancelled().await;
    }

    /// A signal cancelled with this one, that can also be cancelled on its own.
    pub fn child(&self) -> CancelSignal {
        CancelSignal(self.0.child_token())
    }
}

/// A command to run as a step.
#[derive(Debug, Clone)]
pub struct StepCommand {
    /// The program, such as `sh`.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The whole environment of the process (nothing else is inherited).
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Time limit.
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// How a step on the agent's host runs (sandbox, step user, process-group record); `None`
    /// runs it as this process's user, unrecorded (`chengis run`, container execs).
    pub host: Option<crate::sandbox::StepHost>,
}

/// How a step ended. Timeouts and cancellations are decided by us and recorded as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepEnd {
    /// The process exited with this code.
    Exited(i32),
    /// The process was killed by this signal (not by us).
    Signalled(i32),
    /// We stopped it because its time ran out.
    TimedOut,
    /// We stopped it because it was cancelled.
    Cancelled,
    /// The kernel killed it for going over the container's memory limit (bytes, if known).
    OutOfMemory(Option<u64>),
}

/// What happened to a step.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// How it ended.
    pub end: StepEnd,
    /// Wall time.
    pub duration: Duration,
    /// Output bytes dropped by the cap.
    pub dropped_bytes: u64,
}

/// A step that could not be run at all.
#[derive(Debug, Error)]
pub enum ExecError {
    /// The program could not be started.
    #[error("cannot start `{program}` in {cwd}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The working directory.
        cwd: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The container engine failed to run the step.
    #[error("the container engine could not run the step: {message}")]
    Sandbox {
        /// What went wrong.
        message: String,
    },
    /// Waiting for the process failed.
    #[error("lost track of `{program}`: {source}")]
    Wait {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn signal_group(pgid: i32, signal: Signal) {
    // ESRCH (the group is gone) is the expected outcome once everything exited.
    let _ = killpg(Pid::from_raw(pgid), signal);
}

/// Records why the step is being stopped, sends SIGTERM to its group, and returns when the
/// SIGKILL is due.
fn begin_stop(reason: StepEnd, stopped: &mut Option<StepEnd>, pgid: i32, grace: Duration) -> Instant {
    tracing::info!(?reason, "stopping the step: SIGTERM to its process group");
    *stopped = Some(reason);
    signal_group(pgid, Signal::SIGTERM);
    Instant::now() + grace
}

/// The absolute path of `program` found through the `PATH` of `env`, as `execvp` would find it
/// (`None` when it names a path already, is not found, or a relative `PATH` entry comes first):
/// given a path, the standard library starts the child with `posix_spawn` instead of copying
/// the whole agent with `fork` (it must fork to search a `PATH` other than its own).
fn resolve_program(program: &str, env: &[(String, String)]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.is_empty() || program.contains('/') {
        return None;
    }
    let path = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str())?;
    for dir in path.split(':') {
        if !dir.starts_with('/') {
            return None;
        }
        let candidate = std::path::Path::new(dir).join(program);
        if std::fs::metadata(&candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
            return Some(candidate);
        }
    }
    None
}

/// Runs `cmd`; its output goes through `out` (masked, capped, numbered in the job's log).
pub async fn run_step(cmd: StepCommand, out: &mut StepOutput, cancel: &CancelSignal) -> Result<StepReport, ExecError> {
    let started = Instant::now();
    // A sandboxed step searches its `PATH` itself, as the step user under its rules (a
    // directory only the agent can enter, such as one under root's home, is skipped).
    let sandboxed = cmd.host.as_ref().is_some_and(|h| h.policy.mode == crate::sandbox::HostSteps::Sandboxed);
    let program = match sandboxed {
        true => None,
        false => resolve_program(&cmd.program, &cmd.env),
    }
    .unwrap_or_else(|| PathBuf::from(&cmd.program));
    let mut command = tokio::process::Command::new(program);
    let prepared = match &cmd.host {
        Some(host) => Some(host.prepare().map_err(|e| ExecError::Sandbox { message: e.to_string() })?),
        None => None,
    };
    if let Some(p) = &prepared {
        if let Some((uid, gid)) = p.user {
            command.uid(uid).gid(gid);
        }
        if p.ruleset.is_some() || p.user.is_some() {
            let child = crate::sandbox::Prepared {
                user: p.user,
                ruleset: match &p.ruleset {
                    Some(fd) => Some(fd.try_clone().map_err(|e| ExecError::Sandbox { message: e.to_string() })?),
                    None => None,
                },
            };
            // SAFETY: the closure only makes system calls on values prepared above.
            unsafe {
                command.pre_exec(move || crate::sandbox::apply_in_child(&child));
            }
        }
    }
    command
        .args(&cmd.args)
        .env_clear()
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&cmd.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| ExecError::Spawn {
        program: cmd.program.clone(),
        cwd: cmd.cwd.display().to_string(),
        source,
    })?;
    let pgid = child.id().map_or(0, |id| id as i32);
    // Recorded before anything is read from it: a later agent of the same state kills the group
    // if this process dies before the step ends.
    let _record = match &cmd.host {
        Some(host) => match crate::sandbox::records::Record::write(&host.policy.records, pgid) {
            Ok(r) => Some(r),
            Err(source) => {
                signal_group(pgid, Signal::SIGKILL);
                let path = host.policy.records.display().to_string();
                let e = crate::sandbox::SandboxError::Record { path, source };
                return Err(ExecError::Sandbox { message: e.to_string() });
            }
        },
        None => None,
    };
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        signal_group(pgid, Signal::SIGKILL);
        return Err(ExecError::Spawn {
            program: cmd.program,
            cwd: cmd.cwd.display().to_string(),
            source: std::io::Error::other("no pipes"),
        });
    };
    let (mut buf_out, mut buf_err) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut out_open, mut err_open) = (true, true);
    let mut exit: Option<ExitStatus> = None;
    let mut stopped: Option<StepEnd> = None;
    let deadline = cmd.timeout.map(|t| started + t);
    let mut kill_at: Option<Instant> = None;
    let mut drain_until: Option<Instant> = None;
    let far = started + Duration::from_secs(365 * 86_400);

    while out_open || err_open || exit.is_none() {
        tokio::select! {
            r = stdout.read(&mut buf_out), if out_open => match r {
                Ok(n) if n > 0 => out.feed(Stream::Stdout, &buf_out[..n]).await,
                _ => out_open = false,
            },
            r = stderr.read(&mut buf_err), if err_open => match r {
                Ok(n) if n > 0 => out.feed(Stream::Stderr, &buf_err[..n]).await,
                _ => err_open = false,
            },
            status = child.wait(), if exit.is_none() => {
                let status = status.map_err(|source| ExecError::Wait { program: cmd.program.clone(), source })?;
                exit = Some(status);
                drain_until = Some(Instant::now() + DRAIN);
            }
            _ = sleep_until(deadline.unwrap_or(far)), if deadline.is_some() && stopped.is_none() && exit.is_none() => {
                kill_at = Some(begin_stop(StepEnd::TimedOut, &mut stopped, pgid, cmd.kill_grace));
            }
            _ = cancel.cancelled(), if stopped.is_none() && exit.is_none() => {
                kill_at = Some(begin_stop(StepEnd::Cancelled, &mut stopped, pgid, cmd.kill_grace));
            }
            _ = sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() => {
                tracing::info!(program = %cmd.program, "grace period over: SIGKILL to its process group");
                signal_group(pgid, Signal::SIGKILL);
                kill_at = None;
            }
            _ = sleep_until(drain_until.unwrap_or(far)), if drain_until.is_some() && (out_open || err_open) => {
                // Something the step started in the background still holds the pipes.
                signal_group(pgid, Signal::SIGKILL);
                out_open = false;
                err_open = false;
            }
        }
    }
    signal_group(pgid, Signal::SIGKILL);
    out.finish().await;
    let end = match (stopped, exit) {
        (Some(reason), _) => reason,
        (None, Some(status)) => match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
            (Some(code), _) => StepEnd::Exited(code),
            (None, Some(sig)) => StepEnd::Signalled(sig),
            (None, None) => StepEnd::Exited(-1),
        },
        (None, None) => StepEnd::Exited(-1),
    };
    Ok(StepReport { end, duration: started.elapsed(), dropped_bytes: out.dropped() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{JobLog, LineSink, LogLine, SecretMasker};
    use tokio::sync::mpsc;

    fn sh(script: &str) -> StepCommand {
        StepCommand {
            program: "sh".into(),
            args: vec!["-e".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
            cwd: std::env::temp_dir(),
            timeout: None,
            kill_grace: Duration::from_millis(300),
            host: None,
        }
    }

    async fn run(cmd: StepCommand, masker: &SecretMasker, cancel: &CancelSignal) -> (StepReport, Vec<LogLine>) {
        run_capped(cmd, masker, 1 << 20, cancel).await
    }

    async fn run_capped(
        cmd: StepCommand,
        masker: &SecretMasker,
        cap: u64,
        cancel: &CancelSignal,
    ) -> (StepReport, Vec<LogLine>) {
        let log = JobLog::new(masker.clone(), 1, cap);
        let (tx, mut rx) = mpsc::channel(16);
        let collector = tokio::spawn(async move {
            let mut v = Vec::new();
            while let Some(l) = rx.recv().await {
                v.push(l);
            }
            v
        });
        let mut out = log.step(LineSink::Lines(tx));
        let report = run_step(cmd, &mut out, cancel).await.unwrap();
        drop(out);
        (report, collector.await.unwrap())
    }

    #[test]
    fn programs_are_found_through_the_steps_own_path() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, other) = (dir.path().join("bin"), dir.path().join("other"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::write(bin.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::write(bin.join("data"), "not a program").unwrap();
        use std::os::unix::fs::PermissionsExt;
        for f in [other.join("tool"), bin.join("tool")] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let env = |path: String| vec![("PATH".to_string(), "/nowhere".to_string()), ("PATH".to_string(), path)];
        let path = format!("/nonexistent:{}:{}", bin.display(), other.display());
        // The last PATH set wins, the first directory holding an executable file is taken.
        assert_eq!(resolve_program("tool", &env(path.clone())), Some(bin.join("tool")));
        // Not executable, not found, already a path, or a relative entry first: left to execvp.
        assert_eq!(resolve_program("data", &env(path.clone())), None);
        assert_eq!(resolve_program("missing", &env(path)), None);
        assert_eq!(resolve_program("./tool", &env(bin.display().to_string())), None);
        assert_eq!(resolve_program("tool", &env(format!("bin:{}", bin.display()))), None);
        assert_eq!(resolve_program("tool", &[]), None);
    }

    #[tokio::test]
    async fn exit_codes_and_lines() {
        let (r, lines) = run(sh("echo out; echo err >&2; exit 3"), &SecretMasker::none(), &CancelSignal::new()).await;
        assert_eq!(r.end, StepEnd::Exited(3));
        let mut texts: Vec<(&str, Stream)> = lines.iter().map(|l| (l.text.as_str(), l.stream)).collect();
        texts.sort_by_key(|t| t.0);
        assert_eq!(texts, [("err", Stream::Stderr), ("out", Stream::Stdout)]);
        assert_eq!(lines.iter().map(|l| l.number).max(), Some(2));
    }

    #[tokio::test]
    async fn masks_output() {
        let m = SecretMasker::new(["topsecret".to_string()]).unwrap();
        let (_, lines) = run(sh("printf 'a tops'; sleep 0.1; printf 'ecret b\\n'"), &m, &CancelSignal::new()).await;
        assert_eq!(lines[0].text, "a *** b");
    }

    #[tokio::test]
    async fn sigterm_ignoring_step_is_killed_after_grace() {
        let mut cmd = sh("trap '' TERM; echo ready; sleep 30");
        cmd.timeout = Some(Duration::from_millis(300));
        let start = std::time::Instant::now();
        let (r, _) = run(cmd, &SecretMasker::none(), &CancelSignal::new()).await;
        assert_eq!(r.end, StepEnd::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(start.elapsed() >= Duration::from_millis(600), "SIGKILL came before the grace period");
    }

    #[tokio::test]
    async fn cancel_stops_the_step() {
        let cancel = CancelSignal::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.cancel();
        });
        let (r, _) = run(sh("sleep 30"), &SecretMasker::none(), &cancel).await;
        assert_eq!(r.end, StepEnd::Cancelled);
    }

    #[tokio::test]
    async fn background_processes_do_not_outlive_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}", pidfile.display());
        let (r, _) = run(sh(&script), &SecretMasker::none(), &CancelSignal::new()).await;
        assert_eq!(r.end, StepEnd::Exited(0));
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let alive = nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z");
        assert!(!alive, "background sleep {pid} survived the step");
    }

    #[tokio::test]
    async fn output_cap_reports_dropped_bytes() {
        let cmd = sh("head -c 5000 /dev/zero | tr '\\0' 'x' | fold -w 99");
        let (r, lines) = run_capped(cmd, &SecretMasker::none(), 1000, &CancelSignal::new()).await;
        assert_eq!(r.end, StepEnd::Exited(0));
        assert_eq!(r.dropped_bytes, 5000 + 50 - 1000);
        let warnings: Vec<&LogLine> = lines.iter().filter(|l| l.stream == Stream::System).collect();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].text.contains("dropped 4050 bytes"), "{}", warnings[0].text);
    }

    #[tokio::test]
    async fn spawn_failure_names_the_program() {
        let mut cmd = sh("true");
        cmd.program = "/nonexistent/chengis-test".into();
        let (tx, _rx) = mpsc::channel::<LogLine>(1);
        let mut out = JobLog::new(SecretMasker::none(), 1, 1 << 20).step(LineSink::Lines(tx));
        let err = run_step(cmd, &mut out, &CancelSignal::new()).await.unwrap_err();
        assert!(err.to_string().contains("/nonexistent/chengis-test"));
    }
}
