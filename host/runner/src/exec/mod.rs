//! Step execution: a local child process group ([`run_step`]) or an exec in the job's
//! container ([`docker`]), both with their output masked, split into numbered lines and capped
//! by one shared path, and the TERM-then-KILL sequence for timeouts and cancellation.

mod capture;
pub mod docker;
mod lines;
pub mod mask;
mod process;

pub use lines::{LineSplitter, LogLine, Stream, human_size};
pub use mask::{MaskError, MaskStream, SecretMasker};
pub use process::{CancelSignal, ExecError, StepCommand, StepEnd, StepReport, run_step};
