//! The status of builds, jobs and steps: one enum, matched exhaustively everywhere.
//!
//! State machine: `queued -> running -> {success, failure, cancelled, timed_out, error}`;
//! `queued -> {skipped, cancelled, error}`. Finished states are final.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a build, job or step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting to run.
    Queued,
    /// Running now.
    Running,
    /// Finished and succeeded.
    Success,
    /// Finished and failed (a non-zero exit, a failed step).
    Failure,
    /// Stopped by a person or by a failure elsewhere.
    Cancelled,
    /// Stopped because it ran out of time.
    TimedOut,
    /// Not run: its condition was false or a dependency did not succeed.
    Skipped,
    /// Could not run because of a problem outside the user's commands.
    Error,
}

impl Status {
    /// The text stored and shown for this status.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Cancelled => "cancelled",
            Status::TimedOut => "timed_out",
            Status::Skipped => "skipped",
            Status::Error => "error",
        }
    }

    /// True once the status can no longer change.
    pub fn is_finished(self) -> bool {
        match self {
            Status::Queued | Status::Running => false,
            Status::Success
            | Status::Failure
            | Status::Cancelled
            | Status::TimedOut
            | Status::Skipped
            | Status::Error => true,
        }
    }

    /// True for results that count as a failure of the whole (skipped and success do not).
    pub fn is_failure(self) -> bool {
        match self {
            Status::Failure | Status::Cancelled | Status::TimedOut | Status::Error => true,
            Status::Queued | Status::Running | Status::Success | Status::Skipped => false,
        }
    }

    /// Whether moving from `self` to `next` is allowed by the state machine.
    pub fn can_become(self, next: Status) -> bool {
        match self {
            Status::Queued => next != Status::Queued,
            Status::Running => next.is_finished() && next != Status::Skipped,
            Status::Success
            | Status::Failure
            | Status::Cancelled
            | Status::TimedOut
            | Status::Skipped
            | Status::Error => false,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine() {
        assert!(Status::Queued.can_become(Status::Running));
        assert!(Status::Queued.can_become(Status::Skipped));
        assert!(Status::Running.can_become(Status::TimedOut));
        assert!(!Status::Running.can_become(Status::Skipped));
        assert!(!Status::Running.can_become(Status::Queued));
        assert!(!Status::Success.can_become(Status::Failure));
    }

    #[test]
    fn text_round_trip() {
        for s in [
            Status::Queued,
            Status::Running,
            Status::Success,
            Status::Failure,
            Status::Cancelled,
            Status::TimedOut,
            Status::Skipped,
            Status::Error,
        ] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
    }
}
