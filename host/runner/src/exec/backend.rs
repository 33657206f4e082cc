//! The step backends behind one trait: where a step's command runs (a local process group on
//! the agent's host, or the job's container). The job runner picks one per step and a plugin's
//! commands run through the same one as the `run:` steps of its job.

use super::docker::JobSandbox;
use super::log::StepOutput;
use super::process::{CancelSignal, ExecError, StepCommand, StepReport, run_step};
use std::future::Future;
use std::pin::Pin;

/// A boxed future, for traits held as `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs one step's command, its output into `out`, stopped by `cancel` or its time limit.
pub trait StepBackend: Send + Sync {
    /// Runs `cmd` to its end.
    fn run<'a>(
        &'a self,
        cmd: StepCommand,
        out: &'a mut StepOutput,
        cancel: &'a CancelSignal,
    ) -> BoxFuture<'a, Result<StepReport, ExecError>>;
}

/// A local child process group on the agent's host (sandboxed as `cmd.host` says).
#[derive(Debug, Clone, Copy, Default)]
pub struct HostProcess;

impl StepBackend for HostProcess {
    fn run<'a>(
        &'a self,
        cmd: StepCommand,
        out: &'a mut StepOutput,
        cancel: &'a CancelSignal,
    ) -> BoxFuture<'a, Result<StepReport, ExecError>> {
        Box::pin(run_step(cmd, out, cancel))
    }
}

impl StepBackend for JobSandbox {
    fn run<'a>(
        &'a self,
        cmd: StepCommand,
        out: &'a mut StepOutput,
        cancel: &'a CancelSignal,
    ) -> BoxFuture<'a, Result<StepReport, ExecError>> {
        Box::pin(self.run_step(cmd, out, cancel))
    }
}
