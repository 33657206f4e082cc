//! What an agent does with a job's files around its steps, wherever its storage is: `cache:`
//! and `artifacts:` resolved with the job's contexts, artifacts placed and kept, the
//! fingerprint of a stage result, the workspace removed, and the System lines that say what
//! happened (masked, numbered like the rest of the job's log).

use crate::artifacts::{ArtifactSpec, place};
use crate::cache::ResolvedCache;
use crate::context::Contexts;
use chengis_model::now_ms;
use chengis_model::status::Status;
use chengis_pipeline::PlannedJob;
use chengis_pipeline::model::When;
use serde_json::{Value, json};
use std::path::Path;

/// The fingerprint of a `cache-result: true` job run (`None` for other jobs): the commit's
/// tree, the planned job, the pipeline env and parameters, and the needed jobs' outputs. `Err`:
/// the log line saying why the job runs anyway.
pub fn stage_fingerprint(
    workspace: &Path,
    sha: &str,
    spec: &PlannedJob,
    plan_env: &indexmap::IndexMap<String, chengis_pipeline::Text>,
    params: &Value,
    needs: &Value,
) -> Result<Option<String>, String> {
    if !spec.cache_result {
        return Ok(None);
    }
    let stable = json!({"env": plan_env, "params": params, "needs": needs});
    match crate::cache::tree_of(workspace, sha) {
        Ok(tree) => {
            Ok(Some(crate::cache::fingerprint(&tree, &serde_json::to_value(spec).unwrap_or_default(), &stable)))
        }
        Err(e) => Err(format!("result cache: cannot read the commit's tree ({e}); running the job")),
    }
}

/// Places `files` from `blobs` into the workspace, verifying each; the log line, or why not.
pub async fn place_all(
    blobs: impl crate::artifacts::BlobStore + 'static,
    workspace: &Path,
    files: Vec<chengis_model::records::ArtifactFile>,
) -> Result<String, String> {
    let ws = workspace.to_path_buf();
    let count = files.len();
    match tokio::task::spawn_blocking(move || place(&blobs, &ws, &files)).await {
        Ok(Ok(bytes)) => Ok(format!("download: placed {count} artifact files ({bytes} bytes) in the workspace")),
        Ok(Err(e)) => Err(format!("download: {e}")),
        Err(e) => Err(format!("download: {e}")),
    }
}

/// The log lines about kept artifacts: warnings, then one line per artifact kept.
pub fn kept_lines(specs: &[ArtifactSpec], collected: &crate::artifacts::Collected) -> Vec<String> {
    let mut lines: Vec<String> = collected.warnings.iter().map(|w| format!("warning: {w}")).collect();
    for s in specs {
        let (n, bytes) =
            collected.files.iter().filter(|f| f.name == s.name).fold((0, 0), |(n, b), f| (n + 1, b + f.size));
        if n > 0 {
            lines.push(format!("artifacts: kept `{}` ({n} files, {bytes} bytes)", s.name));
        }
    }
    lines
}

/// Renders a text with `${{ }}` expressions against the job's contexts.
fn render(s: &str, ctx: &Contexts, what: &str) -> Result<String, String> {
    let t = chengis_pipeline::expr::parse_template(s).map_err(|e| format!("{what} `{s}`: {}", e.message))?;
    t.render(ctx).map_err(|e| format!("{what} `{s}`: {e}"))
}

/// The job's `cache:` entries with their expressions evaluated (hashFiles sees the checkout).
pub fn resolve_caches(spec: &PlannedJob, ctx: &Contexts) -> Result<Vec<ResolvedCache>, String> {
    spec.cache
        .iter()
        .map(|c| {
            let key = render(&c.key, ctx, "cache key")?;
            if key.trim().is_empty() {
                return Err(format!("cache key `{}` is empty once evaluated", c.key));
            }
            Ok(ResolvedCache {
                key,
                restore_keys: c.restore_keys.iter().map(|r| render(r, ctx, "restore key")).collect::<Result<_, _>>()?,
                paths: c.paths.iter().map(|p| render(p, ctx, "cache path")).collect::<Result<_, _>>()?,
            })
        })
        .collect()
}

/// The job's `artifacts:` entries with their `if` and expiry.
pub fn resolve_artifacts(
    spec: &PlannedJob,
    ctx: &Contexts,
    default_retention: Option<std::time::Duration>,
) -> Result<Vec<(When, ArtifactSpec)>, String> {
    spec.artifacts
        .iter()
        .map(|a| {
            let name = match &a.name {
                Some(n) => render(n, ctx, "artifact name")?,
                None => spec.key.clone(),
            };
            let life = match &a.expire_in {
                Some(e) => Some(
                    chengis_pipeline::duration::parse_duration(e)
                        .map_err(|err| format!("artifact `{name}`: expire-in `{e}`: {err}"))?,
                ),
                None => default_retention,
            };
            let expires_ms = life.map(|d| now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
            let paths = a.paths.iter().map(|p| render(p, ctx, "artifact path")).collect::<Result<_, _>>()?;
            Ok((a.when.unwrap_or(When::OnSuccess), ArtifactSpec { name, paths, expires_ms }))
        })
        .collect()
}

/// Whether an artifact with this `if` is kept after a job that ended `status`.
pub fn wanted(when: When, status: Status) -> bool {
    match when {
        When::Always => true,
        When::OnSuccess => status == Status::Success,
        When::OnFailure => status != Status::Success && status != Status::Skipped,
    }
}

/// Removes a job's workspace (in the background of the blocking pool).
pub async fn remove_workspace(workspace: &Path) {
    let ws = workspace.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(ws)).await;
}
