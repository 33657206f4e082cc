//! The Chengis agent: runs leased jobs. A job is checked out at the build's commit, its steps
//! run as local processes, in containers or as step-executor plugins, its caches and artifacts
//! move before and after, and everything it reports goes to the server through one trait
//! ([`peer::Peer`]): the server's store for the embedded agent, HTTP for a remote agent. This
//! crate holds no database and no HTTP server (`cargo tree -p chengis-agent` shows no sqlx,
//! axum, askama or argon2); `chengis run` uses its job runner too.
//!
//! # Layout
//! - [`runner`]: [`runner::execute`], one leased job from checkout to its end; [`runner::AgentConfig`].
//! - [`peer`]: the calls the runner makes ([`peer::Peer`]).
//! - [`job`]: the steps of one job in order ([`job::run_job`]): env, outputs, conditions,
//!   timeouts, the job's container, and `uses:` steps.
//! - [`executors`]: where `uses:` steps find their plugins ([`executors::StepExecutors`]).
//! - [`checkout`]: git checkout at a commit (libgit2), object caches, reused workspaces.
//! - [`context`], [`envfile`], [`shell`]: expressions' contexts, `$CHENGIS_ENV`/`$CHENGIS_OUTPUT`
//!   files, and `run:` scripts as commands.
//! - [`cache`], [`artifacts`], [`files`]: caches and artifacts as an agent handles them.
//! - [`assignment`]: what the server hands an agent for one job.
//! - [`remote`]: `chengis agent`: registration, the lease poll, the HTTP peer, blobs and the
//!   copy of the server's plugin decisions.

#![warn(missing_docs)]

pub mod artifacts;
pub mod assignment;
pub mod cache;
pub mod checkout;
pub mod context;
pub mod envfile;
pub mod executors;
pub mod files;
pub mod job;
pub mod peer;
pub mod remote;
pub mod runner;
pub mod shell;
