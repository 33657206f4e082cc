//! What a run reports while it goes: the events a renderer (terminal, JSON lines, later the
//! store and SSE) consumes.

use crate::log::LogLine;
use crate::status::Status;
use serde::Serialize;
use std::time::Duration;

/// One thing that happened during a run.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    /// The run started.
    RunStarted {
        /// Pipeline name.
        pipeline: String,
        /// Planned job ids in order.
        jobs: Vec<String>,
        /// The workspace directory.
        workspace: String,
    },
    /// A job started.
    JobStarted {
        /// Planned job id.
        job: String,
        /// Display name.
        name: String,
    },
    /// Something the author should know that does not stop the run.
    Warning {
        /// Planned job id.
        job: String,
        /// What.
        message: String,
    },
    /// A step started.
    StepStarted {
        /// Planned job id.
        job: String,
        /// 0-based step index (post steps count on from the job's steps).
        step: usize,
        /// Display name.
        name: String,
    },
    /// A line of output (already masked).
    Log {
        /// Planned job id.
        job: String,
        /// Step index.
        step: usize,
        /// The line.
        #[serde(flatten)]
        line: LogLine,
    },
    /// A step finished.
    StepFinished {
        /// Planned job id.
        job: String,
        /// Step index.
        step: usize,
        /// Display name.
        name: String,
        /// Result.
        status: Status,
        /// Exit code, when the process exited.
        #[serde(skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        /// Why, when it did not succeed or was skipped.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Wall time.
        #[serde(rename = "duration_ms", with = "millis")]
        duration: Duration,
    },
    /// A step reported test results (step executors such as `junit`).
    Tests {
        /// Planned job id.
        job: String,
        /// Step index.
        step: usize,
        /// The suites it reported.
        suites: Vec<TestSuiteReport>,
    },
    /// A job finished (or was skipped without starting).
    JobFinished {
        /// Planned job id.
        job: String,
        /// Display name.
        name: String,
        /// Result.
        status: Status,
        /// Why, when it did not succeed.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Wall time.
        #[serde(rename = "duration_ms", with = "millis")]
        duration: Duration,
    },
    /// The run finished.
    RunFinished {
        /// Overall result.
        status: Status,
        /// Wall time.
        #[serde(rename = "duration_ms", with = "millis")]
        duration: Duration,
    },
}

pub use crate::reports::{TestCaseReport, TestOutcome, TestSuiteReport, test_counts};

mod millis {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().min(u128::from(u64::MAX)) as u64)
    }
}
