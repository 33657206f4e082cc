//! Build caches and stage results: restoring a job's `cache:` entries before its first step
//! (exact key, then restore-key prefixes; own branch, then the default branch), saving them
//! after a success when the key missed (own branch only, never from a fork), size limits, and
//! the fingerprint behind `cache-result: true`.

use super::disk::StorageConfig;
use crate::store::artifacts::{CacheEntry, NewCacheEntry};
use crate::store::{Store, StoreError};
pub use chengis_agent::cache::{ResolvedCache, Restored, fingerprint, mib, pack_paths, tree_of, unpack_entry};
use chengis_archive::tarzst::{Persisted, persist};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Whose entries a build may read and write.
#[derive(Debug, Clone)]
pub struct CacheScope {
    /// The job's id.
    pub job_id: i64,
    /// The build's branch (or tag ref): entries are written here.
    pub branch: String,
    /// The job's default branch: read after the build's own.
    pub default_branch: String,
    /// False for pull requests from forks: they read, and write nothing.
    pub writable: bool,
    /// The build (recorded with a saved entry).
    pub build_id: i64,
}

impl CacheScope {
    /// Scopes read, in order.
    pub fn reads(&self) -> Vec<&str> {
        let mut out = vec![self.branch.as_str()];
        if self.default_branch != self.branch {
            out.push(&self.default_branch);
        }
        out
    }
}

/// Restores one cache entry into `workspace`. Never fails the job: a miss, a corrupt archive
/// (deleted, then a miss) or a database error is a line in the log.
pub async fn restore(
    store: &Store,
    cfg: &StorageConfig,
    scope: &CacheScope,
    cache: &ResolvedCache,
    workspace: &Path,
) -> Restored {
    let entry = match find(store, scope, cache).await {
        Ok(entry) => entry,
        Err(lines) => return Restored { exact: false, lines },
    };
    let archive = cfg.cache_dir().join(&entry.file);
    let (dest, found, wanted) = (workspace.to_path_buf(), entry.clone(), cache.clone());
    let restored = tokio::task::spawn_blocking(move || unpack_entry(&archive, &found, &wanted, &dest)).await;
    match restored {
        Ok(Ok(r)) => r,
        Ok(Err(r)) => {
            tracing::warn!(job_id = scope.job_id, key = %entry.key, "cache entry unusable, deleting it: {}", r.lines.join("; "));
            drop_entry(store, cfg, &entry).await;
            r
        }
        Err(e) => Restored {
            exact: false,
            lines: vec![format!("cache `{}`: restore failed ({e}); continuing without it", cache.key)],
        },
    }
}

/// Finds the entry a cache restores from (counted as a lookup and, when found, a hit and a
/// use); `Err`: the log lines of a miss or a failed lookup.
pub async fn find(store: &Store, scope: &CacheScope, cache: &ResolvedCache) -> Result<CacheEntry, Vec<String>> {
    let _ = store.counter_add("cache_lookups", 1).await;
    match store.cache_find(scope.job_id, &scope.reads(), &cache.key, &cache.restore_keys).await {
        Ok(Some(entry)) => {
            let _ = store.counter_add("cache_hits", 1).await;
            let _ = store.cache_touch(entry.id).await;
            Ok(entry)
        }
        Ok(None) => Err(vec![format!("cache `{}`: miss", cache.key)]),
        Err(e) => Err(vec![format!("cache `{}`: lookup failed ({e}); continuing without it", cache.key)]),
    }
}

/// Deletes an entry's row and its archive.
pub async fn drop_entry(store: &Store, cfg: &StorageConfig, entry: &CacheEntry) {
    if let Ok(Some(e)) = store.cache_delete(entry.id).await {
        let _ = std::fs::remove_file(cfg.cache_dir().join(&e.file));
    }
}

/// Saves one cache entry from `workspace` after a success. The archive is written to a
/// temporary file and renamed into place; the database row decides which of two concurrent
/// saves of one key wins (the other's archive is removed).
pub async fn save(
    store: &Store,
    cfg: &StorageConfig,
    scope: &CacheScope,
    cache: &ResolvedCache,
    workspace: &Path,
) -> Vec<String> {
    if !scope.writable {
        return vec![format!("cache `{}`: not saved (pull requests from forks write no cache)", cache.key)];
    }
    let dir = cfg.cache_dir();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return vec![format!("cache `{}`: not saved: cannot create {}: {e}", cache.key, dir.display())];
    }
    let (ws, paths, limit) = (workspace.to_path_buf(), cache.paths.clone(), cfg.cache_max_entry);
    let packed = tokio::task::spawn_blocking(move || pack_paths(&ws, &paths, &dir, limit)).await;
    match packed {
        Ok(Ok(Some(p))) => {
            let files = p.files;
            keep(store, cfg, scope, cache, p, files).await
        }
        Ok(Ok(None)) => {
            vec![format!("cache `{}`: not saved: no file matches {}", cache.key, cache.paths.join(", "))]
        }
        Ok(Err(e)) => vec![format!("cache `{}`: not saved: {e}", cache.key)],
        Err(e) => vec![format!("cache `{}`: not saved: {e}", cache.key)],
    }
}

/// Moves a packed archive (in the cache directory's file system) into place and records the
/// entry: the first save of a key wins (the other's archive is removed), then eviction runs.
/// Returns the log lines.
pub async fn keep(
    store: &Store,
    cfg: &StorageConfig,
    scope: &CacheScope,
    cache: &ResolvedCache,
    packed: chengis_archive::tarzst::Packed,
    files: u64,
) -> Vec<String> {
    if !scope.writable {
        return vec![format!("cache `{}`: not saved (pull requests from forks write no cache)", cache.key)];
    }
    let file = unique_name(scope, &cache.key);
    let dest: PathBuf = cfg.cache_dir().join(&file);
    let (sha, size) = (packed.sha256.clone(), packed.size);
    let persisted = tokio::task::spawn_blocking(move || match persist(packed, &dest).map_err(|e| e.to_string())? {
        Persisted::Written => Ok(()),
        Persisted::AlreadyExists => Err("an archive of that name exists".to_string()),
    })
    .await;
    match persisted {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return vec![format!("cache `{}`: not saved: {e}", cache.key)],
        Err(e) => return vec![format!("cache `{}`: not saved: {e}", cache.key)],
    }
    let row = NewCacheEntry {
        job_id: scope.job_id,
        scope: &scope.branch,
        key: &cache.key,
        file: &file,
        size: i64::try_from(size).unwrap_or(i64::MAX),
        sha256: &sha,
        build_id: scope.build_id,
    };
    match store.cache_insert(&row).await {
        Ok(true) => {
            let mut lines =
                vec![format!("cache `{}`: saved for {} ({files} files, {})", cache.key, scope.branch, mib(size))];
            if let Ok(evicted) = evict(store, cfg).await
                && !evicted.is_empty()
            {
                let _ = store.counter_add("deleted_caches", evicted.len() as i64).await;
                lines.extend(
                    evicted.iter().map(|(e, why)| format!("cache: deleted `{}` of {} ({why})", e.key, e.scope)),
                );
            }
            lines
        }
        Ok(false) => {
            let _ = std::fs::remove_file(cfg.cache_dir().join(&file));
            vec![format!("cache `{}`: another build saved this key first; kept that entry", cache.key)]
        }
        Err(e) => {
            let _ = std::fs::remove_file(cfg.cache_dir().join(&file));
            vec![format!("cache `{}`: not saved: {e}", cache.key)]
        }
    }
}

/// Deletes the entries unused for longer than the cache age, then the least recently used
/// while the total is over the size cap (each with its archive, logged); returns them with why.
/// The maintenance loop runs it, and every save right after writing.
pub async fn evict(store: &Store, cfg: &StorageConfig) -> Result<Vec<(CacheEntry, &'static str)>, StoreError> {
    let now = crate::store::now_ms();
    let max_age = i64::try_from(cfg.cache_max_age.as_millis()).unwrap_or(i64::MAX);
    let cap = i64::try_from(cfg.cache_max_total).unwrap_or(i64::MAX);
    let mut entries = store.cache_list(None).await?;
    let mut total: i64 = entries.iter().map(|e| e.size).sum();
    entries.sort_by_key(|e| e.last_used_ms);
    let mut out = Vec::new();
    for e in entries {
        let expired = now - e.last_used_ms > max_age;
        if !expired && total <= cap {
            continue;
        }
        if store.cache_delete(e.id).await?.is_some() {
            let _ = std::fs::remove_file(cfg.cache_dir().join(&e.file));
            total -= e.size;
            let why =
                if expired { "unused for longer than the cache age" } else { "least recently used over the size cap" };
            tracing::info!(job = %e.job, "cache: deleted `{}` of {} ({why})", e.key, e.scope);
            out.push((e, why));
        }
    }
    Ok(out)
}

/// A file name no other save uses: the scope, key, time and process hashed.
fn unique_name(scope: &CacheScope, key: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = Sha256::new();
    h.update(scope.job_id.to_le_bytes());
    h.update(scope.branch.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(crate::store::now_ms().to_le_bytes());
    h.update(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
    let digest = hex::encode(&h.finalize()[..16]);
    format!("{digest}.tar.zst")
}
