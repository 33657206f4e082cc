//! The engine: runs a plan's jobs and steps, propagates env and outputs, evaluates conditions,
//! and reports what happens as [`events::RunEvent`]s; on the server, carries out the one
//! scheduler's decisions for builds ([`builds`], [`conditions`]).

pub mod artifacts;
pub mod builds;
pub mod cache;
pub mod checkout;
pub mod conditions;
pub mod context;
pub mod cron;
pub mod disk;
pub mod envfile;
pub mod events;
pub mod job;
mod plugin_step;
pub mod run;
pub mod shell;

pub use run::{RunOptions, RunSummary, run_plan};
