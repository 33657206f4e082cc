//! The `on:` filter of notifiers (feature `notifier`): how a finished build or job turned out
//! given the previous run's status ([`Outcome`]), and which outcomes a configuration wants a
//! message for ([`When`]: `success`, `failure`, `fixed`, `always`).

use crate::types::Status;

/// How a finished build or job turned out, as an `on` filter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded, and so did the previous one (or there was none, or it was skipped).
    Success,
    /// It succeeded, and the previous one failed, errored or was cancelled.
    Fixed,
    /// It failed or errored.
    Failure,
    /// It was cancelled or skipped (or is not finished).
    Other,
}

impl Outcome {
    /// The outcome of `status` after a previous finished run that ended as `previous`.
    pub fn of(status: Status, previous: Option<Status>) -> Outcome {
        match status {
            Status::Success if matches!(previous, Some(Status::Failure | Status::Error | Status::Cancelled)) => {
                Outcome::Fixed
            }
            Status::Success => Outcome::Success,
            Status::Failure | Status::Error => Outcome::Failure,
            Status::Pending | Status::Running | Status::Cancelled | Status::Skipped => Outcome::Other,
        }
    }
}

/// The words of an `on` list: which outcomes are notified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct When {
    /// `success`: every success, a fixed one too.
    pub success: bool,
    /// `failure`: every failure or error.
    pub failure: bool,
    /// `fixed`: a success after a failure, error or cancellation.
    pub fixed: bool,
    /// `always`: every finished build or job, whatever its status.
    pub always: bool,
}

impl When {
    /// The words an `on` list accepts, for error messages.
    pub const WORDS: &'static str = "success, failure, fixed, always";

    /// Turns on what `word` (exactly `success`, `failure`, `fixed` or `always`) names; `false`
    /// when it names nothing, for the caller to report under its configuration key.
    pub fn set(&mut self, word: &str) -> bool {
        let flag = match word {
            "success" => &mut self.success,
            "failure" => &mut self.failure,
            "fixed" => &mut self.fixed,
            "always" => &mut self.always,
            _ => return false,
        };
        *flag = true;
        true
    }

    /// Whether no word is on (such a filter would never notify).
    pub fn is_empty(&self) -> bool {
        *self == When::default()
    }

    /// Whether `outcome` is notified.
    pub fn wants(&self, outcome: Outcome) -> bool {
        self.always
            || match outcome {
                Outcome::Success => self.success,
                Outcome::Fixed => self.fixed || self.success,
                Outcome::Failure => self.failure,
                Outcome::Other => false,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        assert_eq!(Outcome::of(Status::Success, None), Outcome::Success);
        assert_eq!(Outcome::of(Status::Success, Some(Status::Success)), Outcome::Success);
        assert_eq!(Outcome::of(Status::Success, Some(Status::Failure)), Outcome::Fixed);
        assert_eq!(Outcome::of(Status::Success, Some(Status::Error)), Outcome::Fixed);
        assert_eq!(Outcome::of(Status::Success, Some(Status::Cancelled)), Outcome::Fixed);
        assert_eq!(Outcome::of(Status::Success, Some(Status::Skipped)), Outcome::Success);
        assert_eq!(Outcome::of(Status::Error, None), Outcome::Failure);
        assert_eq!(Outcome::of(Status::Cancelled, Some(Status::Failure)), Outcome::Other);
    }

    #[test]
    fn words_and_what_they_want() {
        let mut when = When::default();
        assert!(when.is_empty());
        assert!(when.set("failure") && when.set("fixed") && !when.set("Failure") && !when.set("finished"));
        assert_eq!(when, When { failure: true, fixed: true, ..When::default() });
        assert!(when.wants(Outcome::Failure) && when.wants(Outcome::Fixed));
        assert!(!when.wants(Outcome::Success) && !when.wants(Outcome::Other));
        let success = When { success: true, ..When::default() };
        assert!(success.wants(Outcome::Success) && success.wants(Outcome::Fixed) && !success.wants(Outcome::Failure));
        let always = When { always: true, ..When::default() };
        assert!(
            [Outcome::Success, Outcome::Fixed, Outcome::Failure, Outcome::Other].into_iter().all(|o| always.wants(o))
        );
    }
}
