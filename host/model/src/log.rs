//! A line of a job's log as every process sees it: numbered, stamped, with its stream.

use serde::{Deserialize, Serialize};

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The step's standard output.
    Stdout,
    /// The step's standard error.
    Stderr,
    /// Chengis itself (warnings such as the output cap).
    System,
}

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    /// Position in the job's log, from 1.
    pub number: u64,
    /// Where it came from.
    pub stream: Stream,
    /// When it was read, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The text, without its line ending (invalid UTF-8 replaced).
    pub text: String,
}
