//! The CLI's exit codes and the one typed error that maps to them: every failure a command
//! reports ends as one of the documented codes (README, "Exit codes").

/// The command did what was asked.
pub const OK: i32 = 0;
/// A build failed (`build trigger --wait`, `run`), lint found errors, or the command failed in
/// a way no other code names (a server error, a local file that cannot be written).
pub const FAILED: i32 = 1;
/// Bad usage: arguments clap refuses, a reference or value the CLI or the server rejects as
/// malformed (HTTP 400, 422).
pub const USAGE: i32 = 2;
/// The server cannot be reached: refused, unknown host, timed out, or the wrong protocol.
pub const UNREACHABLE: i32 = 3;
/// Not signed in, a wrong password or token, or not allowed (HTTP 401, 403).
pub const DENIED: i32 = 4;
/// What was named does not exist (HTTP 404).
pub const NOT_FOUND: i32 = 5;
/// It conflicts with what exists (HTTP 409): a duplicate name, a build that already ended.
pub const CONFLICT: i32 = 6;

/// A failure with a known exit code; the message is shown as `error: MESSAGE`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage ([`USAGE`]).
    #[error("{0}")]
    Usage(String),
    /// The server cannot be reached ([`UNREACHABLE`]).
    #[error("{0}")]
    Unreachable(String),
    /// Not signed in or not allowed ([`DENIED`]).
    #[error("{0}")]
    Denied(String),
    /// Not found ([`NOT_FOUND`]).
    #[error("{0}")]
    NotFound(String),
    /// A conflict ([`CONFLICT`]).
    #[error("{0}")]
    Conflict(String),
    /// Any other refusal or failure ([`FAILED`]).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The process exit code of this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => USAGE,
            CliError::Unreachable(_) => UNREACHABLE,
            CliError::Denied(_) => DENIED,
            CliError::NotFound(_) => NOT_FOUND,
            CliError::Conflict(_) => CONFLICT,
            CliError::Failed(_) => FAILED,
        }
    }

    /// The error for an HTTP error status and its message.
    pub fn from_status(status: u16, message: String) -> CliError {
        match status {
            400 | 413 | 422 => CliError::Usage(message),
            401 | 403 => CliError::Denied(message),
            404 => CliError::NotFound(message),
            409 => CliError::Conflict(message),
            _ => CliError::Failed(message),
        }
    }
}

/// Returns a [`CliError::Usage`] with a formatted message from the enclosing function.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err($crate::cli::error::CliError::Usage(format!($($arg)*)).into())
    };
}
pub(crate) use usage;

/// An error as bad usage ([`USAGE`]), its whole chain in the message.
pub fn as_usage(e: impl Into<anyhow::Error>) -> CliError {
    CliError::Usage(format!("{:#}", e.into()))
}

/// The exit code of an error that ended a command: the code of the first [`CliError`] in its
/// chain, else [`FAILED`].
pub fn exit_code(error: &anyhow::Error) -> i32 {
    error.chain().find_map(|e| e.downcast_ref::<CliError>()).map_or(FAILED, CliError::exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_their_codes_through_context() {
        for (status, code) in [(400, 2), (401, 4), (403, 4), (404, 5), (409, 6), (500, 1), (429, 1)] {
            let e = anyhow::Error::from(CliError::from_status(status, "x".into())).context("doing y");
            assert_eq!(exit_code(&e), code, "HTTP {status}");
        }
        assert_eq!(exit_code(&anyhow::anyhow!("plain")), FAILED);
        assert_eq!(exit_code(&CliError::Unreachable("down".into()).into()), UNREACHABLE);
    }
}
