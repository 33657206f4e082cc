//! Chengis: a self-hosted CI/CD server whose extensions are WebAssembly components.
//!
//! # Layout
//! The crates this one builds on, lowest first (each depends only on those above it):
//! `chengis-pipeline` (the language), `chengis-model` (statuses, the one scheduler, log lines,
//! test reports, durations), `chengis-store` (all SQL), `chengis-runner` (steps as processes
//! and containers), `chengis-archive`, `chengis-plugin-host` (wasmtime). In this crate:
//! - [`pipeline`]: finding and reading pipeline files, printing diagnostics.
//! - [`exec`], [`status`], [`store`]: the runner's, the model's and the store's crates, under
//!   the names the rest of this crate uses.
//! - [`engine`]: running a plan's jobs and steps (`chengis run` and the agents alike), the
//!   server's builds (trigger, plan, the scheduler's decisions carried out, cancel, retry),
//!   checkout, caches, artifacts, the disk and its maintenance.
//! - [`plugins`]: the plugin platform's server side: trust allowlist, builtin plugins, and the
//!   calls to step executors, notifiers, SCM status reporters and policies.
//! - [`agent`]: the lease loop that runs jobs (embedded in `chengis serve`, or `chengis agent`
//!   over HTTP), and the typed agent protocol ([`agent::protocol`]).
//! - [`server`]: the HTTP API (axum), webhooks, live logs and build events over SSE, the
//!   dashboard, authentication.
//! - [`toolchain`]: making sure plugins can be built (`wasm32-wasip2`).
//! - [`cli`]: the `chengis` command line.

pub mod agent;
pub mod cli;
pub mod engine;
pub use chengis_runner::exec;
pub mod pipeline;
pub mod plugins;
pub mod server;
pub use chengis_model::status;
pub use chengis_store as store;
pub mod toolchain;
