//! Caches as an agent handles them, wherever they are stored: `cache:` entries resolved,
//! paths packed into an archive, an entry's archive verified and unpacked, and the fingerprint
//! of a stage result (`cache-result: true`).

use chengis_archive::select::select;
use chengis_archive::tarzst::{PackLimits, pack, unpack};
use chengis_model::records::CacheEntry;
use sha2::{Digest, Sha256};
use std::path::Path;

/// A `cache:` entry with its expressions evaluated.
#[derive(Debug, Clone)]
pub struct ResolvedCache {
    /// The exact key.
    pub key: String,
    /// Prefixes tried when the key misses.
    pub restore_keys: Vec<String>,
    /// What to archive.
    pub paths: Vec<String>,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The key matched exactly (nothing to save afterwards).
    pub exact: bool,
    /// What the log should say.
    pub lines: Vec<String>,
}

/// `bytes` in MiB with one decimal, for log lines.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Unpacks `entry`'s archive (verified against its SHA-256 first) into `workspace`; `Err`: the
/// archive is unusable (a warning line; the caller treats it as a miss).
pub fn unpack_entry(
    archive: &Path,
    entry: &CacheEntry,
    cache: &ResolvedCache,
    workspace: &Path,
) -> Result<Restored, Restored> {
    match unpack(archive, &entry.sha256, workspace) {
        Ok(u) => {
            let how = if entry.key == cache.key { "restored" } else { "restored (restore-key)" };
            Ok(Restored {
                exact: entry.key == cache.key,
                lines: vec![format!(
                    "cache `{}`: {how} `{}` saved by {} ({} files, {})",
                    cache.key,
                    entry.key,
                    entry.scope,
                    u.files,
                    mib(entry.size as u64)
                )],
            })
        }
        Err(e) => Err(Restored {
            exact: false,
            lines: vec![format!(
                "warning: cache `{}`: entry `{}` is unusable ({e}); treated as a miss",
                cache.key, entry.key
            )],
        }),
    }
}

/// Archives `paths` of `workspace` into a temporary file in `dir` (at most `limit` bytes);
/// `None` when nothing matches.
pub fn pack_paths(
    workspace: &Path,
    paths: &[String],
    dir: &Path,
    limit: u64,
) -> Result<Option<chengis_archive::tarzst::Packed>, String> {
    let selection = select(workspace, paths).map_err(|e| e.to_string())?;
    if selection.entries.is_empty() {
        return Ok(None);
    }
    pack(workspace, &selection, dir, PackLimits { max_bytes: Some(limit), ..PackLimits::default() })
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The fingerprint of a job run for `cache-result`: the commit's tree, the planned job (its
/// steps, image, env, matrix values), the pipeline env, the build's parameters and the outputs
/// of the jobs it needs. Build numbers, ids, times and secrets' values are not part of it.
pub fn fingerprint(tree: &str, job: &serde_json::Value, stable: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    h.update(b"chengis-result-v1\0");
    h.update(tree.as_bytes());
    h.update([0]);
    h.update(job.to_string().as_bytes());
    h.update([0]);
    h.update(stable.to_string().as_bytes());
    hex::encode(h.finalize())
}

/// The tree id of `commit` in the repository at `workspace`.
pub fn tree_of(workspace: &Path, commit: &str) -> Result<String, git2::Error> {
    let repo = git2::Repository::open(workspace)?;
    let oid = git2::Oid::from_str(commit)?;
    Ok(repo.find_commit(oid)?.tree_id().to_string())
}
