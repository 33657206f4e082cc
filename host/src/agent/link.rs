//! How an agent reaches the server while it runs a job: in-process (the embedded agent writes
//! to the store) or over HTTP (a remote agent). One set of calls, so the job runner is the same.

use super::protocol;
use super::remote::{Client, RemoteError};
use super::server_side::{self, Assignment, Reports, Update};
use crate::engine::builds::{BuildContext, Notice};
use crate::exec::LogLine;
use crate::status::Status;
use crate::store::StoreError;
use crate::store::queue::{Lease, Renewal};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The store refused or failed (embedded agent).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server refused or could not be reached (remote agent).
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl LinkError {
    /// True when a newer lease owns the job: stop writing and clean up.
    pub fn is_stale(&self) -> bool {
        matches!(self, LinkError::Store(StoreError::StaleLease { .. }) | LinkError::Remote(RemoteError::Stale(_)))
    }
}

/// The agent's way to the server.
#[derive(Debug, Clone)]
pub enum Link {
    /// In the server's process.
    Local(BuildContext),
    /// Over HTTP, with the agent's working directory and its mirror of the server's allowed
    /// step executors.
    Remote(Arc<Client>, PathBuf, Option<Arc<crate::plugins::PluginService>>),
}

impl Link {
    /// Where workspaces and step state live.
    pub fn work_dir(&self) -> PathBuf {
        match self {
            Link::Local(ctx) => ctx.data_dir.clone(),
            Link::Remote(_, dir, _) => dir.clone(),
        }
    }

    /// The plugin platform for `uses:` steps.
    pub fn plugins(&self) -> Option<Arc<crate::plugins::PluginService>> {
        match self {
            Link::Local(ctx) => ctx.plugins.clone(),
            Link::Remote(_, _, plugins) => plugins.clone(),
        }
    }

    /// Extends the lease; `true` when cancellation was requested.
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, LinkError> {
        match self {
            Link::Local(ctx) => Ok(matches!(ctx.store.renew(lease, ttl).await?, Renewal::Cancel(_))),
            Link::Remote(c, ..) => Ok(c.lease_call(lease, &protocol::Renew {}).await?.cancel),
        }
    }

    /// The next free line number of the job's log.
    pub async fn next_line(&self, lease: &Lease) -> Result<u64, LinkError> {
        match self {
            Link::Local(ctx) => Ok(ctx.store.next_log_offset(lease.build_job_id).await?),
            Link::Remote(c, ..) => Ok(c.lease_call(lease, &protocol::LogOffset {}).await?.next.max(1)),
        }
    }

    /// Stores numbered log lines, retrying transient failures; a retried batch is stored once.
    pub async fn append_log(&self, lease: &Lease, lines: &[LogLine]) -> Result<(), LinkError> {
        match self {
            Link::Local(ctx) => {
                store_batch(ctx, lease, lines).await?;
                let _ = ctx.bus.send(Notice::Log(lease.build_job_id));
                Ok(())
            }
            Link::Remote(c, ..) => {
                c.lease_call(lease, &protocol::Log { lines: lines.to_vec() }).await?;
                Ok(())
            }
        }
    }

    /// Reports a step or test update.
    pub async fn update(&self, a: &Assignment, update: Update) -> Result<(), LinkError> {
        match self {
            Link::Local(ctx) => Ok(server_side::apply(ctx, &a.lease, a.build_id, &a.spec.id, update).await?),
            Link::Remote(c, ..) => {
                c.lease_call(&a.lease, &update).await?;
                Ok(())
            }
        }
    }

    /// Reports log lines and updates together (lines first). A server that predates the
    /// `report` call (it sent no `first_line`) gets them one call each.
    pub async fn report(&self, a: &Assignment, reports: Reports) -> Result<(), LinkError> {
        match self {
            Link::Remote(c, ..) if a.first_line.is_some() => {
                c.lease_call(&a.lease, &reports).await?;
                Ok(())
            }
            _ => {
                if !reports.lines.is_empty() {
                    self.append_log(&a.lease, &reports.lines).await?;
                }
                for update in reports.updates {
                    self.update(a, update).await?;
                }
                Ok(())
            }
        }
    }

    /// Ends the job (with its outputs and sandbox when it ran), after the reports not sent yet.
    pub async fn finish(
        &self,
        a: &Assignment,
        status: Status,
        reason: Option<&str>,
        ran: Option<(&Value, &str)>,
        unsent: Reports,
    ) -> Result<(), LinkError> {
        match self {
            Link::Local(ctx) => {
                self.report(a, unsent).await?;
                Ok(server_side::finish(ctx, &a.lease, &a.spec.id, a.build_id, status, reason, ran).await?)
            }
            Link::Remote(c, ..) => {
                // A server that predates reports in `finish` (it sent no `first_line`) gets them
                // first.
                let unsent = match a.first_line {
                    Some(_) => unsent,
                    None => {
                        self.report(a, unsent).await?;
                        Reports::default()
                    }
                };
                let finish = protocol::Finish {
                    status,
                    reason: reason.map(str::to_string),
                    outputs: ran.map(|r| r.0.clone()),
                    sandbox: ran.map(|r| r.1.to_string()),
                    unsent,
                };
                c.lease_call(&a.lease, &finish).await?;
                Ok(())
            }
        }
    }
}

/// Stores a batch, retrying transient database errors (a busy database) for up to a minute; a
/// stale lease is returned at once, since a newer attempt owns the log now.
async fn store_batch(ctx: &BuildContext, lease: &Lease, batch: &[LogLine]) -> Result<(), StoreError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pause = Duration::from_millis(20);
    loop {
        match ctx.store.append_log(lease, batch).await {
            Ok(()) => return Ok(()),
            Err(e @ StoreError::StaleLease { .. }) => return Err(e),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!("storing log lines, will retry: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}
