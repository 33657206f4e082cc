//! The Chengis runner: what runs a job's steps on an agent or under `chengis run`, with no
//! database and no server in it.
//!
//! # Layout
//! - [`exec`]: a step as a local process group or an exec in the job's Docker container, its
//!   output masked, split into numbered lines and capped by one shared path, and the
//!   TERM-then-KILL sequence for timeouts and cancellation.
//! - [`sandbox`]: host steps without the agent's authority (step user, Landlock), the record
//!   of running steps' process groups, and the start-up hardening of server and agent.

#![warn(missing_docs)]

pub mod exec;
pub mod sandbox;
