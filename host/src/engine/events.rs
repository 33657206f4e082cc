//! What a run reports while it goes: the events a renderer (terminal, JSON lines, later the
//! store and SSE) consumes.

use crate::exec::LogLine;
use crate::status::Status;
use serde::{Deserialize, Serialize};
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

/// A named group of test cases a step reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestSuiteReport {
    /// The suite's name.
    pub name: String,
    /// Its cases.
    pub cases: Vec<TestCaseReport>,
}

/// One test case a step reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCaseReport {
    /// The test's name.
    pub name: String,
    /// Class, module or file.
    pub classname: String,
    /// How it ended.
    pub outcome: TestOutcome,
    /// How long it took.
    pub duration_ms: u64,
    /// The failure message, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How a test case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestOutcome {
    /// It passed.
    Passed,
    /// An assertion failed.
    Failed,
    /// It was not run.
    Skipped,
    /// It could not run.
    Errored,
}

impl TestOutcome {
    /// The outcome as stored and shown: `passed`, `failed`, `skipped`, `errored`.
    pub fn as_str(self) -> &'static str {
        match self {
            TestOutcome::Passed => "passed",
            TestOutcome::Failed => "failed",
            TestOutcome::Skipped => "skipped",
            TestOutcome::Errored => "errored",
        }
    }
}

/// Counts of passed, failed (failed or errored) and skipped cases.
pub fn test_counts(suites: &[TestSuiteReport]) -> (usize, usize, usize) {
    let cases = suites.iter().flat_map(|s| &s.cases);
    cases.fold((0, 0, 0), |(p, f, s), c| match c.outcome {
        TestOutcome::Passed => (p + 1, f, s),
        TestOutcome::Failed | TestOutcome::Errored => (p, f + 1, s),
        TestOutcome::Skipped => (p, f, s + 1),
    })
}

mod millis {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().min(u128::from(u64::MAX)) as u64)
    }
}
