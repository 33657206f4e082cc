//! The Chengis runner: what runs a job's steps on an agent or under `chengis run`, with no
//! database and no server in it.
//!
//! # Layout
//! - [`exec`]: the step backends behind one trait ([`exec::StepBackend`]: a local process
//!   group, an exec in the job's Docker container), the one log pipeline of a job
//!   ([`exec::JobLog`]: every line masked, numbered and capped), and the TERM-then-KILL sequence
//!   for timeouts and cancellation.
//! - [`sandbox`]: host steps without the agent's authority (step user, Landlock), the record
//!   of running steps' process groups, and the start-up hardening of server and agent.

#![warn(missing_docs)]

pub mod exec;
pub mod sandbox;
