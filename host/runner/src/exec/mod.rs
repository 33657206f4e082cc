//! Step execution: the step backends behind one trait ([`StepBackend`]: a local child process
//! group, [`run_step`], or an exec in the job's container, [`docker`]), the one log pipeline
//! every line of a job goes through ([`JobLog`]: masked, numbered, capped), and the
//! TERM-then-KILL sequence for timeouts and cancellation.

mod backend;
pub mod docker;
mod lines;
pub mod log;
pub mod mask;
mod process;

pub use backend::{BoxFuture, HostProcess, StepBackend};
pub use lines::{LineSplitter, LogLine, Stream, human_size};
pub use log::{JobLog, LineSink, StepOutput};
pub use mask::{MaskError, MaskStream, SecretMasker};
pub use process::{CancelSignal, ExecError, StepCommand, StepEnd, StepReport, run_step};
