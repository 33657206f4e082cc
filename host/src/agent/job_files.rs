//! The embedded agent's storage steps around a job, on the server's own stores: placing
//! upstream artifacts, restoring and saving caches, keeping this job's artifacts, reusing a
//! stage result, and the log lines that say what happened (System lines, masked, in the job's
//! log). Remote agents reach the same stores through the agent API, which uses the pieces here.

use super::server_side::{Assignment, LocalParts, finish};
use crate::engine::builds::BuildContext;
use crate::engine::cache::{CacheScope, ResolvedCache};
use crate::exec::JobLog;
use crate::status::Status;
use crate::store::StoreError;
use crate::store::artifacts::CachedResult;
use crate::store::builds::{BuildJobRecord, BuildSummary};
use crate::store::jobs::JobRecord;
use crate::store::queue::Lease;
use chengis_agent::artifacts::{ArtifactSpec, collect};
use chengis_agent::context::Contexts;
use chengis_agent::files::{
    kept_lines, place_all, remove_workspace, resolve_artifacts, resolve_caches, stage_fingerprint, wanted,
};
use chengis_agent::peer::Before;
use chengis_pipeline::model::When;
use chengis_pipeline::{Plan, PlannedJob};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

/// Storage work waiting for the steps to end.
pub struct Pending {
    caches: Vec<ResolvedCache>,
    exact: Vec<bool>,
    artifacts: Result<Vec<(When, ArtifactSpec)>, String>,
    fingerprint: Option<String>,
}

/// Storage work of one leased job.
pub(crate) struct Storage<'a> {
    ctx: &'a BuildContext,
    lease: &'a Lease,
    log: Arc<JobLog>,
    /// Whose caches the job reads and writes.
    pub scope: CacheScope,
}

impl<'a> Storage<'a> {
    /// The storage of a leased job of `build` (`fork`: a pull request from a fork, which writes
    /// no cache).
    pub fn new(
        ctx: &'a BuildContext,
        job: &JobRecord,
        build: &BuildSummary,
        lease: &'a Lease,
        log: &Arc<JobLog>,
        fork: bool,
    ) -> Storage<'a> {
        Storage { ctx, lease, log: log.clone(), scope: scope_of(job, build, fork) }
    }

    /// Before the steps: a reused stage result ends the job here; otherwise upstream artifacts
    /// and caches go into the workspace.
    pub async fn before_steps(
        &self,
        a: &Assignment,
        parts: &LocalParts,
        workspace: &Path,
        sha: &str,
        ctx_values: &Contexts,
    ) -> Result<Before<Pending>, StoreError> {
        let (ctx, spec) = (self.ctx, &a.spec);
        let params = serde_json::to_value(&parts.plan.params).unwrap_or_default();
        let fingerprint = match stage_fingerprint(workspace, sha, spec, &parts.plan.env, &params, &ctx_values.needs) {
            Ok(fp) => fp,
            Err(line) => {
                self.log(&[line]).await?;
                None
            }
        };
        if let Some(fp) = &fingerprint
            && let Some(hit) = ctx.store.result_find(parts.job.id, &spec.id, fp).await?
        {
            reuse_result(ctx, self.lease, spec, &parts.build, self, hit, fp, workspace).await?;
            return Ok(Before::Reused);
        }
        if let Err(reason) = self.download(spec, &parts.plan, &parts.siblings, workspace).await? {
            return Ok(Before::Fail(reason));
        }
        let caches = match resolve_caches(spec, ctx_values) {
            Ok(c) => c,
            Err(reason) => return Ok(Before::Fail(reason)),
        };
        let mut exact = Vec::with_capacity(caches.len());
        for c in &caches {
            let r = crate::engine::cache::restore(&ctx.store, &ctx.storage, &self.scope, c, workspace).await;
            self.log(&r.lines).await?;
            exact.push(r.exact);
        }
        let artifacts = resolve_artifacts(spec, ctx_values, ctx.storage.artifact_retention);
        Ok(Before::Run(Pending { caches, exact, artifacts, fingerprint }))
    }

    /// After the steps: artifacts (by their `if`), caches and the stage result.
    pub async fn after_steps(
        &self,
        pending: Pending,
        parts: &LocalParts,
        spec: &PlannedJob,
        result: &mut chengis_agent::job::JobResult,
        workspace: &Path,
    ) -> Result<(), StoreError> {
        let ctx = self.ctx;
        match pending.artifacts {
            Ok(specs) => {
                let specs: Vec<_> =
                    specs.into_iter().filter(|(when, _)| wanted(*when, result.status)).map(|(_, s)| s).collect();
                if let Err(reason) = self.keep_artifacts(&specs, workspace).await? {
                    result.status = Status::Failure;
                    result.reason = Some(reason);
                }
            }
            Err(reason) if result.status == Status::Success => {
                result.status = Status::Error;
                result.reason = Some(reason);
            }
            Err(reason) => self.log(&[format!("artifacts: {reason}")]).await?,
        }
        if result.status == Status::Success {
            for (c, hit) in pending.caches.iter().zip(pending.exact) {
                if hit {
                    self.log(&[format!("cache `{}`: hit on the exact key, not saved again", c.key)]).await?;
                } else {
                    let lines = crate::engine::cache::save(&ctx.store, &ctx.storage, &self.scope, c, workspace).await;
                    self.log(&lines).await?;
                }
            }
            if let Some(fp) = &pending.fingerprint
                && self.scope.writable
            {
                let bj = self.lease.build_job_id;
                ctx.store.result_record(parts.job.id, &spec.id, fp, bj).await?;
            }
        }
        Ok(())
    }

    /// Appends lines to the job's log (masked, as System lines).
    pub async fn log(&self, lines: &[String]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        self.ctx.store.append_log(self.lease, &self.log.system(lines)).await?;
        let _ = self.ctx.bus.send(crate::engine::builds::Notice::Log(self.lease.build_job_id));
        Ok(())
    }

    /// Places the artifacts named by `download:` (of the jobs in `needs`) into the workspace.
    /// `Err` inside: the job cannot start (a missing name, a corrupt file).
    pub async fn download(
        &self,
        spec: &PlannedJob,
        plan: &Plan,
        siblings: &[BuildJobRecord],
        workspace: &Path,
    ) -> Result<Result<(), String>, StoreError> {
        if spec.download.is_empty() {
            return Ok(Ok(()));
        }
        let files = match needed_files(&self.ctx.store, spec, plan, siblings, self.scope.build_id).await? {
            Ok(files) => files,
            Err(reason) => {
                self.log(std::slice::from_ref(&reason)).await?;
                return Ok(Err(reason));
            }
        };
        let line = match self.ctx.storage.blobs() {
            Ok(blobs) => place_all(blobs, workspace, files).await,
            Err(e) => Err(format!("download: {e}")),
        };
        match line {
            Ok(l) => {
                self.log(&[l]).await?;
                Ok(Ok(()))
            }
            Err(reason) => {
                self.log(std::slice::from_ref(&reason)).await?;
                Ok(Err(reason))
            }
        }
    }

    /// Keeps this job's artifacts. `Err` inside: the job fails (over the cap, or unreadable).
    pub async fn keep_artifacts(
        &self,
        specs: &[ArtifactSpec],
        workspace: &Path,
    ) -> Result<Result<(), String>, StoreError> {
        if specs.is_empty() {
            return Ok(Ok(()));
        }
        let blobs = match self.ctx.storage.blobs() {
            Ok(b) => b,
            Err(e) => return Ok(Err(format!("artifacts: {e}"))),
        };
        let (ws, specs_owned) = (workspace.to_path_buf(), specs.to_vec());
        let (limit, fail) = (self.ctx.storage.artifact_max_job, self.ctx.storage.artifact_fail_over_cap);
        let collected = tokio::task::spawn_blocking(move || collect(&blobs, &ws, &specs_owned, limit, fail)).await;
        let collected = match collected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let reason = format!("artifacts: {e}");
                self.log(std::slice::from_ref(&reason)).await?;
                return Ok(Err(reason));
            }
            Err(e) => return Ok(Err(format!("artifacts: {e}"))),
        };
        self.ctx.store.artifact_insert(self.lease, &collected.files).await?;
        let lines = kept_lines(specs, &collected);
        self.log(&lines).await?;
        Ok(Ok(()))
    }
}

/// Whose caches a build of `job` reads and writes (`fork`: a pull request from a fork).
pub(crate) fn scope_of(job: &JobRecord, build: &BuildSummary, fork: bool) -> CacheScope {
    let branch = if build.branch.is_empty() { job.default_branch.clone() } else { build.branch.clone() };
    CacheScope {
        job_id: job.id,
        branch,
        default_branch: job.default_branch.clone(),
        writable: !fork,
        build_id: build.id,
    }
}

/// The artifact files `download:` names, of the jobs in `needs`; `Err` inside: a name no
/// needed job kept.
pub(crate) async fn needed_files(
    store: &crate::store::Store,
    spec: &PlannedJob,
    plan: &Plan,
    siblings: &[BuildJobRecord],
    build_id: i64,
) -> Result<Result<Vec<crate::store::artifacts::ArtifactFile>, String>, StoreError> {
    let needed: Vec<&str> = siblings
        .iter()
        .filter(|s| plan.jobs.iter().any(|p| p.id == s.job_key && spec.needs_keys.contains(&p.key)))
        .map(|s| s.job_key.as_str())
        .collect();
    let all = spec.download.iter().any(|d| d == "all");
    let files: Vec<_> = store
        .artifacts_of_build(build_id)
        .await?
        .into_iter()
        .filter(|f| needed.contains(&f.job.as_str()) && (all || spec.download.contains(&f.name)))
        .collect();
    if let Some(missing) = spec.download.iter().find(|d| *d != "all" && !files.iter().any(|f| &f.name == *d)) {
        return Ok(Err(format!("download: no job in `needs` kept an artifact named `{missing}`")));
    }
    Ok(Ok(files))
}

/// Ends a job with an earlier build's successful result: its outputs and artifacts, a log line
/// and a `job_status` event that say where they came from.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn reuse_result(
    ctx: &BuildContext,
    lease: &Lease,
    spec: &PlannedJob,
    build: &BuildSummary,
    storage: &Storage<'_>,
    hit: CachedResult,
    fingerprint: &str,
    workspace: &Path,
) -> Result<(), StoreError> {
    let short: String = fingerprint.chars().take(12).collect();
    storage
        .log(&[format!(
            "result cache: build #{} ran this job on the same tree with the same definition and inputs (fingerprint {short}) and succeeded; its steps are skipped and its outputs and artifacts reused",
            hit.build_number
        )])
        .await?;
    let copied = ctx.store.artifact_copy(lease, hit.build_job_id).await?;
    if copied > 0 {
        storage.log(&[format!("result cache: reused {copied} artifact files")]).await?;
    }
    let outputs = Value::Object(hit.outputs);
    ctx.store.set_build_job_result(lease, &outputs, "cached").await?;
    ctx.store
        .add_event(
            build.id,
            "result_cached",
            &json!({"job": spec.id, "from_build": hit.build_id, "from_number": hit.build_number, "fingerprint": fingerprint}),
        )
        .await?;
    remove_workspace(workspace).await;
    let reason = format!("result reused from build #{}", hit.build_number);
    finish(ctx, lease, &spec.id, build.id, Status::Success, Some(&reason), None).await
}
