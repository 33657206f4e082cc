//! The agent's side of the typed protocol: every call the job runner makes to the server while
//! it runs a leased job, as one trait. The embedded agent answers it from the store (in the
//! server crate); a remote agent answers it over HTTP (`remote::peer::RemotePeer`), one
//! `chengis_model::protocol` type per call. The runner (`runner::execute`) is the same for both.

use crate::assignment::Assignment;
use crate::context::Contexts;
use crate::executors::StepExecutors;
use crate::job::JobResult;
use chengis_model::log::LogLine;
use chengis_model::protocol::{Lease, Reports};
use chengis_model::status::Status;
use chengis_runner::exec::JobLog;
use serde_json::Value;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// A newer lease owns the job: stop writing and clean up.
    #[error("stale lease: {0}")]
    Stale(String),
    /// The server refused, failed or could not be reached.
    #[error("{0}")]
    Server(Box<dyn std::error::Error + Send + Sync>),
}

impl PeerError {
    /// True when a newer lease owns the job: stop writing and clean up.
    pub fn is_stale(&self) -> bool {
        matches!(self, PeerError::Stale(_))
    }
}

/// What the work before the steps decided.
pub enum Before<P> {
    /// An earlier build's result was reused: the job has ended.
    Reused,
    /// The job cannot start (a plugin the server does not allow, a missing artifact, an
    /// invalid cache key): end it `error` with this reason.
    Fail(String),
    /// Run the steps; then [`Peer::after_steps`] with this.
    Run(P),
}

/// A job's files as the work around its steps sees them.
pub struct JobFiles<'a> {
    /// The checked-out workspace.
    pub workspace: &'a Path,
    /// The commit checked out.
    pub sha: &'a str,
    /// The job's expression contexts.
    pub contexts: &'a Contexts,
    /// The job's log (every System line goes through it).
    pub log: &'a Arc<JobLog>,
    /// The agent's scratch directory for downloads and archives.
    pub tmp: &'a Path,
}

/// How the end of a job is reported.
pub struct End<'a> {
    /// Its final status.
    pub status: Status,
    /// Why, when not a success.
    pub reason: Option<&'a str>,
    /// When its steps ran: its outputs and where it ran (`local`, `docker:IMAGE`).
    pub ran: Option<(&'a Value, &'a str)>,
}

/// The calls a job runner makes while it runs one leased job.
pub trait Peer: Clone + Send + Sync + 'static {
    /// What the work before the steps leaves for the work after them.
    type Prepared: Send;

    /// Where workspaces and step state live.
    fn work_dir(&self) -> &Path;

    /// The step executors `uses:` steps run with (none: `uses:` steps fail, saying so).
    fn executors(&self) -> Option<Arc<dyn StepExecutors>>;

    /// Extends the lease; `true` when cancellation was requested.
    fn renew(&self, lease: &Lease, ttl: Duration) -> impl Future<Output = Result<bool, PeerError>> + Send;

    /// The next free line number of the job's log.
    fn next_line(&self, lease: &Lease) -> impl Future<Output = Result<u64, PeerError>> + Send;

    /// Stores numbered log lines; a retried batch is stored once.
    fn append_log(&self, lease: &Lease, lines: &[LogLine]) -> impl Future<Output = Result<(), PeerError>> + Send;

    /// Reports log lines and step/test updates together (lines first).
    fn report(&self, a: &Assignment, reports: Reports) -> impl Future<Output = Result<(), PeerError>> + Send;

    /// Ends the job, after the reports not sent yet.
    fn finish(
        &self,
        a: &Assignment,
        end: End<'_>,
        unsent: Reports,
    ) -> impl Future<Output = Result<(), PeerError>> + Send;

    /// The work before the steps: step executors, a stage result to reuse, upstream artifacts,
    /// caches; lines written go through `files.log`.
    fn before_steps(
        &self,
        a: &Assignment,
        files: &JobFiles<'_>,
    ) -> impl Future<Output = Result<Before<Self::Prepared>, PeerError>> + Send;

    /// Whether [`Peer::after_steps`] will write log lines (the step lines not sent yet then go
    /// first).
    fn writes_after(prepared: &Self::Prepared) -> bool;

    /// The work after the steps: artifacts kept, caches saved, the stage result recorded. May
    /// turn the result into a failure (an artifact over its cap).
    fn after_steps(
        &self,
        a: &Assignment,
        prepared: Self::Prepared,
        files: &JobFiles<'_>,
        result: &mut JobResult,
    ) -> impl Future<Output = Result<(), PeerError>> + Send;
}
