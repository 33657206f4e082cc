//! The engine: the server's builds (trigger, plan, the one scheduler's decisions carried out,
//! cancel, retry: [`builds`], [`conditions`]), `chengis run` ([`run`]), schedules, the server's
//! caches and its disk. Running a job's steps (checkout, the job runner, contexts, artifacts)
//! lives in the `chengis-agent` crate, re-exported here under the names the rest of this crate
//! uses.

pub mod builds;
pub mod cache;
pub mod conditions;
pub mod cron;
pub mod disk;
pub mod events;
pub mod run;

pub use chengis_agent::{artifacts, checkout, context, envfile, job, shell};
pub use run::{RunOptions, RunSummary, run_plan};
