//! The embedded agent's [`Peer`]: the job runner's calls answered in the server's process, from
//! the store (lease checks with the fencing token, log lines, step reports, the job's end) and
//! the server's own artifact and cache stores ([`super::job_files`]).

use super::job_files::{Pending, Storage};
use super::server_side::{self, Assignment, LocalParts, Reports};
use crate::engine::builds::{BuildContext, Notice};
use crate::exec::LogLine;
use crate::store::StoreError;
use crate::store::queue::{Lease, Renewal};
use chengis_agent::executors::StepExecutors;
use chengis_agent::job::JobResult;
use chengis_agent::peer::{Before, End, JobFiles, Peer, PeerError};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The server's process, for one leased job.
#[derive(Debug, Clone)]
pub struct LocalPeer {
    ctx: BuildContext,
    parts: Arc<LocalParts>,
}

impl LocalPeer {
    /// A peer for the job `parts` were prepared for.
    pub fn new(ctx: BuildContext, parts: LocalParts) -> LocalPeer {
        LocalPeer { ctx, parts: Arc::new(parts) }
    }

    fn storage<'a>(&'a self, a: &'a Assignment, files: &JobFiles<'_>) -> Storage<'a> {
        let fork = self.parts.trigger.as_ref().is_some_and(|t| t.fork);
        Storage::new(&self.ctx, &self.parts.job, &self.parts.build, &a.lease, files.log, fork)
    }
}

/// A store error as the runner sees it: a stale lease stops the job's writes.
fn peer_error(e: StoreError) -> PeerError {
    match e {
        StoreError::StaleLease { .. } => PeerError::Stale(e.to_string()),
        other => PeerError::Server(Box::new(other)),
    }
}

impl Peer for LocalPeer {
    type Prepared = Pending;

    fn work_dir(&self) -> &Path {
        &self.ctx.storage.work_dir
    }

    fn executors(&self) -> Option<Arc<dyn StepExecutors>> {
        self.ctx.plugins.clone().map(|p| p as Arc<dyn StepExecutors>)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, PeerError> {
        Ok(matches!(self.ctx.store.renew(lease, ttl).await.map_err(peer_error)?, Renewal::Cancel(_)))
    }

    async fn next_line(&self, lease: &Lease) -> Result<u64, PeerError> {
        self.ctx.store.next_log_offset(lease.build_job_id).await.map_err(peer_error)
    }

    async fn append_log(&self, lease: &Lease, lines: &[LogLine]) -> Result<(), PeerError> {
        store_batch(&self.ctx, lease, lines).await.map_err(peer_error)?;
        let _ = self.ctx.bus.send(Notice::Log(lease.build_job_id));
        Ok(())
    }

    async fn report(&self, a: &Assignment, reports: Reports) -> Result<(), PeerError> {
        if !reports.lines.is_empty() {
            self.append_log(&a.lease, &reports.lines).await?;
        }
        for update in reports.updates {
            server_side::apply(&self.ctx, &a.lease, a.build_id, &a.spec.id, update).await.map_err(peer_error)?;
        }
        Ok(())
    }

    async fn finish(&self, a: &Assignment, end: End<'_>, unsent: Reports) -> Result<(), PeerError> {
        self.report(a, unsent).await?;
        server_side::finish(&self.ctx, &a.lease, &a.spec.id, a.build_id, end.status, end.reason, end.ran)
            .await
            .map_err(peer_error)
    }

    async fn before_steps(&self, a: &Assignment, files: &JobFiles<'_>) -> Result<Before<Pending>, PeerError> {
        let storage = self.storage(a, files);
        storage.before_steps(a, &self.parts, files.workspace, files.sha, files.contexts).await.map_err(peer_error)
    }

    fn writes_after(_: &Pending) -> bool {
        true
    }

    async fn after_steps(
        &self,
        a: &Assignment,
        prepared: Pending,
        files: &JobFiles<'_>,
        result: &mut JobResult,
    ) -> Result<(), PeerError> {
        let storage = self.storage(a, files);
        storage.after_steps(prepared, &self.parts, &a.spec, result, files.workspace).await.map_err(peer_error)
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
