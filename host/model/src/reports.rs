//! Test results a step reported (JUnit and the like), as agents send them and the store keeps them.

use serde::{Deserialize, Serialize};

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
