//! Local process execution: a step as a child process group with its output masked, split into
//! numbered lines and capped, and the TERM-then-KILL sequence for timeouts and cancellation.

mod lines;
pub mod mask;
mod process;

pub use lines::{LineSplitter, LogLine, Stream};
pub use mask::{MaskError, MaskStream, SecretMasker};
pub use process::{CancelSignal, ExecError, StepCommand, StepEnd, StepReport, run_step};
