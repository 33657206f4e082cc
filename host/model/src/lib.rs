//! What every Chengis process agrees on, with no I/O: the status of builds, jobs and steps and
//! the job-state machine ([`status`]), the one scheduler that decides what runs, what is skipped
//! or cancelled and when a build ends ([`schedule`]), and durations as people read them
//! ([`duration`]).
//!
//! # Layout
//! - [`status`]: [`Status`] and its transitions.
//! - [`schedule`]: [`schedule::decide`], a pure function over a build's job states, used by
//!   `chengis run`, the server and every agent.
//! - [`duration`]: [`human_duration`] (`2s`, `1m 5s`, `350ms`).
//! - [`env`]: environments as ordered lists of variables.
//! - [`events`]: what a run reports while it goes ([`events::RunEvent`]).
//! - [`log`]: [`log::LogLine`] and its [`log::Stream`].
//! - [`reports`]: test results a step reported.
//! - [`protocol`]: the agent protocol (the lease, reports, one type per lease call).
//! - [`records`]: plugins, cache entries and artifact files as every process sees them.

#![warn(missing_docs)]

pub mod duration;
pub mod env;
pub mod events;
pub mod log;
pub mod protocol;
pub mod records;
pub mod reports;
pub mod schedule;
pub mod status;

pub use duration::human_duration;
pub use status::Status;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
