//! Chengis: a self-hosted CI/CD server whose extensions are WebAssembly components.
//!
//! # Layout
//! - [`pipeline`]: finding and reading pipeline files, printing diagnostics (the language
//!   itself is the `chengis-pipeline` crate).
//! - [`exec`]: running a step as a local process group or in a Docker container: output
//!   capture, masking, timeouts.
//! - [`engine`]: running a plan's jobs and steps, env/output propagation, events.
//! - [`plugins`]: the plugin platform's server side: trust allowlist, builtin plugins, and the
//!   calls to step executors, notifiers, SCM status reporters and policies.
//! - [`server`]: the HTTP API (axum), live logs and build events over SSE, health endpoints.
//! - [`status`]: the status enum shared by builds, jobs and steps (the `chengis-model` crate).
//! - [`store`]: the database (SQLite or PostgreSQL): jobs, builds, the queue with leases, secrets.
//! - [`toolchain`]: making sure plugins can be built (`wasm32-wasip2`).
//! - [`agent`]: the lease loop that runs jobs (embedded in `chengis serve`).
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
