//! Chengis: a self-hosted CI/CD server whose extensions are WebAssembly components.
//!
//! # Layout
//! The crates this one builds on, lowest first (each depends only on those above it):
//! `chengis-pipeline` (the language), `chengis-model` (statuses, the one scheduler, log lines,
//! test reports, durations, the agent protocol), `chengis-store` (all SQL), `chengis-runner`
//! (steps as processes and containers), `chengis-archive`, `chengis-plugin-host` (wasmtime),
//! `chengis-agent` (the job runner and the remote agent; no database). In this crate:
//! - [`pipeline`]: finding and reading pipeline files, printing diagnostics.
//! - [`exec`], [`status`], [`store`]: the runner's, the model's and the store's crates, under
//!   the names the rest of this crate uses.
//! - [`engine`]: the server's builds (trigger, plan, the scheduler's decisions carried out,
//!   cancel, retry), `chengis run`, schedules, the server's caches, the disk and its
//!   maintenance; the agent crate's job runner pieces re-exported under their old names.
//! - [`plugins`]: the plugin platform's server side: trust allowlist, builtin plugins, the
//!   step executors `uses:` steps get, and the calls to notifiers, SCM status reporters and
//!   policies.
//! - [`agent`]: the embedded agent's lease loop and its peer over the store, preparing a leased
//!   job, the server's artifact and cache work for agents; the remote agent re-exported from
//!   `chengis-agent` ([`agent::remote`]) and the typed protocol ([`agent::protocol`]).
//! - [`server`]: the HTTP API (axum), webhooks, live logs and build events over SSE, the
//!   dashboard, authentication.
//! - [`toolchain`]: making sure plugins can be built (`wasm32-wasip2`).
//! - [`memory`]: giving freed heap memory back to the OS (fixed allocator thresholds for the
//!   long-running commands, trims after start-up, plugin compiles and password checks).
//! - [`cli`]: the `chengis` command line.

pub mod agent;
pub mod cli;
pub mod engine;
pub mod memory;
pub use chengis_runner::exec;
pub mod pipeline;
pub mod plugins;
pub mod server;
pub use chengis_model::status;
pub use chengis_store as store;
pub mod toolchain;
