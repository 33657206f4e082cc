//! A remote agent's [`Peer`]: every call of the job runner as one typed lease call over HTTP;
//! the step executors come as the server allows them, a stage result is looked up (and reused)
//! on the server, and artifacts and caches travel through the server's stores.

use super::plugins::Mirror;
use super::{Client, blobs};
use crate::artifacts::ArtifactSpec;
use crate::assignment::Assignment;
use crate::cache::ResolvedCache;
use crate::executors::StepExecutors;
use crate::files;
use crate::job::JobResult;
use crate::peer::{Before, End, JobFiles, Peer, PeerError};
use crate::runner::system_lines;
use chengis_model::log::LogLine;
use chengis_model::protocol::{self, Lease, Reports};
use chengis_model::status::Status;
use chengis_pipeline::model::When;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The server over HTTP, with the agent's working directory and its copy of the server's
/// allowed step executors.
#[derive(Debug, Clone)]
pub struct RemotePeer {
    client: Arc<Client>,
    work: PathBuf,
    plugins: Arc<Mirror>,
}

impl RemotePeer {
    /// A peer over `client`, with workspaces under `work` and step executors from `plugins`.
    pub fn new(client: Arc<Client>, work: PathBuf, plugins: Arc<Mirror>) -> RemotePeer {
        RemotePeer { client, work, plugins }
    }
}

/// What a remote job's work before the steps leaves for after them.
pub struct Prepared {
    /// Each cache and whether its exact key was restored (then it is not saved again).
    caches: Vec<(ResolvedCache, bool)>,
    /// The stage result's fingerprint, recorded after a success.
    fingerprint: Option<String>,
    /// The artifacts to keep, with their `if:` (or why they cannot be resolved).
    artifacts: Result<Vec<(When, ArtifactSpec)>, String>,
}

impl Peer for RemotePeer {
    type Prepared = Prepared;

    fn work_dir(&self) -> &Path {
        &self.work
    }

    fn executors(&self) -> Option<Arc<dyn StepExecutors>> {
        Some(self.plugins.clone())
    }

    async fn renew(&self, lease: &Lease, _ttl: Duration) -> Result<bool, PeerError> {
        Ok(self.client.lease_call(lease, &protocol::Renew {}).await?.cancel)
    }

    async fn next_line(&self, lease: &Lease) -> Result<u64, PeerError> {
        Ok(self.client.lease_call(lease, &protocol::LogOffset {}).await?.next.max(1))
    }

    async fn append_log(&self, lease: &Lease, lines: &[LogLine]) -> Result<(), PeerError> {
        self.client.lease_call(lease, &protocol::Log { lines: lines.to_vec() }).await?;
        Ok(())
    }

    async fn report(&self, a: &Assignment, reports: Reports) -> Result<(), PeerError> {
        if a.first_line.is_some() {
            self.client.lease_call(&a.lease, &reports).await?;
            return Ok(());
        }
        // A server that predates the `report` call (it sent no `first_line`): one call each.
        if !reports.lines.is_empty() {
            self.append_log(&a.lease, &reports.lines).await?;
        }
        for update in reports.updates {
            self.client.lease_call(&a.lease, &update).await?;
        }
        Ok(())
    }

    async fn finish(&self, a: &Assignment, end: End<'_>, unsent: Reports) -> Result<(), PeerError> {
        // A server that predates reports in `finish` (it sent no `first_line`) gets them first.
        let unsent = match a.first_line {
            Some(_) => unsent,
            None => {
                self.report(a, unsent).await?;
                Reports::default()
            }
        };
        let finish = protocol::Finish {
            status: end.status,
            reason: end.reason.map(str::to_string),
            outputs: end.ran.map(|r| r.0.clone()),
            sandbox: end.ran.map(|r| r.1.to_string()),
            unsent,
        };
        self.client.lease_call(&a.lease, &finish).await?;
        Ok(())
    }

    async fn before_steps(&self, a: &Assignment, job: &JobFiles<'_>) -> Result<Before<Prepared>, PeerError> {
        let client = &self.client;
        if let Err(reason) = self.plugins.sync(client, a, job.tmp).await? {
            system_lines(self, a, job.log, std::slice::from_ref(&reason)).await?;
            return Ok(Before::Fail(reason));
        }
        let params = a.contexts.get("params").cloned().unwrap_or_default();
        let mut fingerprint = None;
        match files::stage_fingerprint(job.workspace, job.sha, &a.spec, &a.plan_env, &params, &job.contexts.needs) {
            Ok(Some(fp)) => {
                let answer = client.lease_call(&a.lease, &protocol::ResultFind { fingerprint: fp.clone() }).await?;
                if answer.reused {
                    return Ok(Before::Reused);
                }
                fingerprint = Some(fp);
            }
            Ok(None) => {}
            Err(line) => system_lines(self, a, job.log, &[line]).await?,
        }
        if !a.spec.download.is_empty() {
            let placed = blobs::download(client, a, job.workspace, job.tmp).await?;
            let line = match &placed {
                Ok(line) | Err(line) => line.clone(),
            };
            system_lines(self, a, job.log, &[line]).await?;
            if let Err(reason) = placed {
                return Ok(Before::Fail(reason));
            }
        }
        let resolved = match files::resolve_caches(&a.spec, job.contexts) {
            Ok(c) => c,
            Err(reason) => return Ok(Before::Fail(reason)),
        };
        let mut caches = Vec::new();
        for c in resolved {
            let r = blobs::restore_cache(client, a, &c, job.workspace, job.tmp).await?;
            system_lines(self, a, job.log, &r.lines).await?;
            caches.push((c, r.exact));
        }
        let retention = a.artifact_rules.retention_ms.map(Duration::from_millis);
        let artifacts = files::resolve_artifacts(&a.spec, job.contexts, retention);
        Ok(Before::Run(Prepared { caches, fingerprint, artifacts }))
    }

    fn writes_after(prepared: &Prepared) -> bool {
        !prepared.caches.is_empty() || prepared.artifacts.as_ref().map_or(true, |s| !s.is_empty())
    }

    async fn after_steps(
        &self,
        a: &Assignment,
        prepared: Prepared,
        job: &JobFiles<'_>,
        result: &mut JobResult,
    ) -> Result<(), PeerError> {
        let client = &self.client;
        match prepared.artifacts {
            Ok(specs) => {
                let specs: Vec<_> =
                    specs.into_iter().filter(|(when, _)| files::wanted(*when, result.status)).map(|(_, s)| s).collect();
                match blobs::keep(client, a, specs, job.workspace, job.tmp).await? {
                    Ok(lines) => system_lines(self, a, job.log, &lines).await?,
                    Err(reason) => {
                        system_lines(self, a, job.log, std::slice::from_ref(&reason)).await?;
                        result.status = Status::Failure;
                        result.reason = Some(reason);
                    }
                }
            }
            Err(reason) if result.status == Status::Success => {
                result.status = Status::Error;
                result.reason = Some(reason);
            }
            Err(reason) => system_lines(self, a, job.log, &[format!("artifacts: {reason}")]).await?,
        }
        if result.status == Status::Success {
            for (c, exact) in &prepared.caches {
                let lines = if *exact {
                    vec![format!("cache `{}`: hit on the exact key, not saved again", c.key)]
                } else {
                    blobs::save_cache(client, a, c, job.workspace, job.tmp).await
                };
                system_lines(self, a, job.log, &lines).await?;
            }
            if let Some(fp) = &prepared.fingerprint {
                client.lease_call(&a.lease, &protocol::ResultRecord { fingerprint: fp.clone() }).await?;
            }
        }
        Ok(())
    }
}
