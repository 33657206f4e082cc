//! The traits the host's executors implement for plugins: [`Sandbox`] runs a command in a
//! job's sandbox (a container or a local process group) for a step executor's `exec` import,
//! and [`LogSink`] receives every line a plugin logs or prints, and every line of output of
//! the commands it runs.

use std::time::Duration;

/// The severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Detail for plugin authors.
    Debug,
    /// Normal progress, and the output of commands.
    Info,
    /// Something unexpected.
    Warn,
    /// Something that failed.
    Error,
}

/// Where a plugin's log lines go: the build log (masked by the implementation), a
/// notification record, or a test's memory.
pub trait LogSink: Send + Sync {
    /// Receives one line, without its trailing newline.
    fn line(&self, level: LogLevel, line: &str);
}

/// A command to run in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// The working directory relative to the workspace root (checked not to escape it).
    pub workdir: Option<String>,
    /// The longest the command may run.
    pub timeout: Duration,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecOutcome {
    /// The exit code, or `None` when a signal or the timeout ended it.
    pub code: Option<i32>,
    /// Whether the timeout ended it.
    pub timed_out: bool,
}

/// A command could not be run at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SandboxError(pub String);

/// Runs commands in one job's sandbox. Implemented by the local and Docker executors.
pub trait Sandbox: Send + Sync {
    /// Runs `request` to completion or to its timeout, sending each line of its stdout and
    /// stderr to `output` as it is produced.
    fn exec(&self, request: &ExecRequest, output: &mut dyn FnMut(&str)) -> Result<ExecOutcome, SandboxError>;
}
