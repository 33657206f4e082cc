//! The engine: runs a plan's jobs and steps, propagates env and outputs, decides conditions,
//! and reports what happens as [`events::RunEvent`]s.

pub mod artifacts;
pub mod builds;
pub mod cache;
pub mod checkout;
pub mod conditions;
pub mod context;
pub mod cron;
pub mod envfile;
pub mod events;
pub mod job;
mod plugin_step;
pub mod run;
pub mod shell;
pub mod storage;

pub use run::{RunOptions, RunSummary, run_plan};
