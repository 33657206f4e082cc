//! The server's disk: storage limits and retention settings, free-space checks (new builds wait
//! while the disk is critically low), the storage report, and the one maintenance loop that
//! expires artifacts, caches, logs, builds and orphaned workspaces.

use super::artifacts::{BlobStore, LocalBlobs};
use crate::store::{Store, StoreError, now_ms};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Limits and retention of caches, artifacts, logs and builds.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The data directory (`caches/`, `artifacts/`, `workspaces/` below it).
    pub data_dir: PathBuf,
    /// Largest cache archive; a bigger one is not saved.
    pub cache_max_entry: u64,
    /// Total cache size; least recently used entries go first beyond it.
    pub cache_max_total: u64,
    /// Cache entries unused this long expire.
    pub cache_max_age: Duration,
    /// Largest total of a build job's artifacts.
    pub artifact_max_job: u64,
    /// Over the cap: fail the job (true) or keep what fits and warn (false).
    pub artifact_fail_over_cap: bool,
    /// Default lifetime of artifacts without `expire-in` (None: kept until their build goes).
    pub artifact_retention: Option<Duration>,
    /// Logs of builds finished this long ago are deleted (None: kept).
    pub log_retention: Option<Duration>,
    /// Builds finished this long ago are deleted (None: kept; jobs may also keep only N).
    pub build_retention: Option<Duration>,
    /// Workspaces no running job owns and untouched this long are removed.
    pub orphan_workspace_age: Duration,
    /// Below this much free disk: a warning.
    pub disk_warn_free: u64,
    /// Below this much free disk: new builds wait.
    pub disk_critical_free: u64,
    /// Period of the maintenance loop.
    pub maintenance_every: Duration,
    /// The names of this server's embedded agents (they share the workspace directory).
    pub local_agents: Vec<String>,
    /// The embedded agents' work directory (`workspaces/`, step state, object caches), outside
    /// the data directory so that steps never reach the data [default: the data directory].
    pub work_dir: PathBuf,
}

impl StorageConfig {
    /// Defaults for a data directory: 2 GiB entries, 10 GiB of caches for 30 days, 5 GiB of
    /// artifacts per job (fail beyond), artifacts 30 days, logs 90 days, builds kept, warn
    /// below 5 GiB free, wait below 1 GiB, maintenance every 10 minutes.
    pub fn new(data_dir: PathBuf) -> StorageConfig {
        const GIB: u64 = 1 << 30;
        const DAY: u64 = 86_400;
        StorageConfig {
            work_dir: data_dir.clone(),
            data_dir,
            cache_max_entry: 2 * GIB,
            cache_max_total: 10 * GIB,
            cache_max_age: Duration::from_secs(30 * DAY),
            artifact_max_job: 5 * GIB,
            artifact_fail_over_cap: true,
            artifact_retention: Some(Duration::from_secs(30 * DAY)),
            log_retention: Some(Duration::from_secs(90 * DAY)),
            build_retention: None,
            orphan_workspace_age: Duration::from_secs(DAY),
            disk_warn_free: 5 * GIB,
            disk_critical_free: GIB,
            maintenance_every: Duration::from_secs(600),
            local_agents: Vec::new(),
        }
    }

    /// Where cache archives live.
    pub fn cache_dir(&self) -> PathBuf {
        self.data_dir.join("caches")
    }

    /// Where artifact blobs live.
    pub fn artifact_dir(&self) -> PathBuf {
        self.data_dir.join("artifacts")
    }

    /// Where job workspaces live.
    pub fn workspace_dir(&self) -> PathBuf {
        self.work_dir.join("workspaces")
    }

    /// The artifact blob store.
    pub fn blobs(&self) -> Result<LocalBlobs, super::artifacts::ArtifactError> {
        LocalBlobs::open(&self.artifact_dir())
    }
}

/// Free and total bytes of the file system holding `path`.
pub fn disk_space(path: &Path) -> std::io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let block = st.fragment_size() as u64;
    Ok((st.blocks_available() as u64 * block, st.blocks() as u64 * block))
}

/// How full the disk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiskState {
    /// Enough room.
    Ok,
    /// Below the warning threshold.
    Low,
    /// Below the critical threshold: new builds wait.
    Critical,
}

impl StorageConfig {
    /// The disk's state now (Ok when it cannot be read).
    pub fn disk_state(&self) -> DiskState {
        match disk_space(&self.data_dir) {
            Ok((free, _)) if free < self.disk_critical_free => DiskState::Critical,
            Ok((free, _)) if free < self.disk_warn_free => DiskState::Low,
            _ => DiskState::Ok,
        }
    }
}

/// Bytes under `dir` (regular files, not following symlinks).
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

/// `GET /api/v1/storage`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StorageReport {
    /// Artifact files and the bytes of their distinct blobs.
    pub artifacts: Usage,
    /// Cache entries, their bytes, and restores.
    pub caches: CacheUsage,
    /// Workspace bytes per agent of this server.
    pub workspaces: Vec<AgentWorkspaces>,
    /// The data directory's file system.
    pub disk: DiskReport,
    /// What the maintenance loop deleted since the database was created.
    pub deleted: std::collections::BTreeMap<String, i64>,
}

/// A count and a size.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// How many.
    pub count: i64,
    /// Bytes.
    pub bytes: i64,
}

/// Cache usage and effectiveness.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CacheUsage {
    /// Entries.
    pub count: i64,
    /// Bytes of their archives.
    pub bytes: i64,
    /// Restores attempted.
    pub lookups: i64,
    /// Restores that found an entry (exact key or restore-key).
    pub hits: i64,
    /// hits / lookups (0 before the first lookup).
    pub hit_rate: f64,
}

/// One agent's workspaces.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AgentWorkspaces {
    /// The agent.
    pub agent: String,
    /// Bytes of its job workspaces.
    pub bytes: u64,
}

/// Disk space.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DiskReport {
    /// Free bytes.
    pub free_bytes: u64,
    /// Size of the file system.
    pub total_bytes: u64,
    /// `ok`, `low` or `critical`.
    pub state: DiskState,
    /// The warning threshold.
    pub warn_below: u64,
    /// The threshold below which new builds wait.
    pub critical_below: u64,
}

/// Builds the storage report.
pub async fn report(store: &Store, cfg: &StorageConfig, agents: &[String]) -> Result<StorageReport, StoreError> {
    let (artifact_count, artifact_bytes) = store.artifact_totals().await?;
    let (cache_count, cache_bytes) = store.cache_totals().await?;
    let counters = store.counters().await?;
    let get = |k: &str| counters.get(k).copied().unwrap_or(0);
    let (lookups, hits) = (get("cache_lookups"), get("cache_hits"));
    let ws_dir = cfg.workspace_dir();
    let ws_bytes = tokio::task::spawn_blocking(move || dir_bytes(&ws_dir)).await.unwrap_or(0);
    let (free, total) = disk_space(&cfg.data_dir).unwrap_or((0, 0));
    Ok(StorageReport {
        artifacts: Usage { count: artifact_count, bytes: artifact_bytes },
        caches: CacheUsage {
            count: cache_count,
            bytes: cache_bytes,
            lookups,
            hits,
            hit_rate: if lookups > 0 { hits as f64 / lookups as f64 } else { 0.0 },
        },
        // The embedded agents share one workspace directory; remote agents report their own.
        workspaces: agents.iter().map(|a| AgentWorkspaces { agent: a.clone(), bytes: ws_bytes }).collect(),
        disk: DiskReport {
            free_bytes: free,
            total_bytes: total,
            state: cfg.disk_state(),
            warn_below: cfg.disk_warn_free,
            critical_below: cfg.disk_critical_free,
        },
        deleted: counters
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix("deleted_").map(|k| (k.to_string(), v)))
            .collect(),
    })
}

/// What one maintenance pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Swept {
    /// Artifact files (rows) expired.
    pub artifacts: u64,
    /// Artifact blobs deleted (no row names them any more).
    pub blobs: u64,
    /// Cache entries deleted (expired, evicted, or orphaned archives).
    pub caches: u64,
    /// Log chunks deleted.
    pub logs: u64,
    /// Builds deleted.
    pub builds: u64,
    /// Workspaces removed.
    pub workspaces: u64,
    /// Bytes freed on disk (files removed).
    pub bytes: u64,
}

/// Files younger than this are never treated as orphans: a writer may be between writing the
/// file and recording its row.
const ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// One maintenance pass: expire artifacts, caches (age, then LRU over the total cap, then
/// archives no row names), logs, builds (age and per-job keep-last-N), orphaned workspaces and
/// artifact blobs; vacuum SQLite when worth it. Every deletion is logged and counted.
pub async fn sweep(store: &Store, cfg: &StorageConfig) -> Result<Swept, StoreError> {
    let now = now_ms();
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let mut swept = Swept::default();

    // Builds first: deleting one cascades to its jobs, logs, events and artifact rows.
    let cutoff = cfg.build_retention.map(|d| now - ms(d));
    for (id, job, number) in store.builds_to_expire(cutoff).await? {
        store.delete_build(id).await?;
        tracing::info!(build = id, "retention: deleted build {job} #{number}");
        swept.builds += 1;
    }
    if let Some(age) = cfg.log_retention {
        let n = store.logs_expire(now - ms(age)).await?;
        if n > 0 {
            tracing::info!("retention: deleted {n} log chunks of builds finished over {} ago", human(age));
        }
        swept.logs += n;
    }
    let n = store.artifacts_expire(now).await?;
    if n > 0 {
        tracing::info!("retention: {n} artifact files expired");
    }
    swept.artifacts += n;

    // Caches: age, then the total cap (least recently used first).
    for (e, _) in super::cache::evict(store, cfg).await? {
        swept.caches += 1;
        swept.bytes += u64::try_from(e.size).unwrap_or(0);
    }
    let known = store.cache_files().await?;
    let cache_dir = cfg.cache_dir();
    let (n, bytes) = remove_orphans(&cache_dir, |name| known.contains(name));
    swept.caches += n;
    swept.bytes += bytes;

    // Blobs no artifact row names.
    let blobs = cfg.blobs().ok();
    if let Some(blobs) = blobs {
        let named = store.artifact_blobs().await?;
        let listed = tokio::task::spawn_blocking(move || {
            let mut removed = (0u64, 0u64);
            for (sha, modified, size) in blobs.list().unwrap_or_default() {
                let old = modified.elapsed().is_ok_and(|age| age > ORPHAN_GRACE);
                if old && !named.contains(&sha) && blobs.delete(&sha).unwrap_or(false) {
                    tracing::info!("retention: deleted artifact blob {sha} ({size} bytes), no artifact names it");
                    removed.0 += 1;
                    removed.1 += size;
                }
            }
            removed
        })
        .await
        .unwrap_or_default();
        swept.blobs += listed.0;
        swept.bytes += listed.1;
    }

    // Workspaces of jobs that no longer run, untouched for a day.
    if let Ok(entries) = std::fs::read_dir(cfg.workspace_dir()) {
        for e in entries.flatten() {
            let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<i64>().ok()) else { continue };
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > cfg.orphan_workspace_age);
            if old && !store.build_job_active(id).await? {
                let path = e.path();
                let bytes = dir_bytes(&path);
                if std::fs::remove_dir_all(&path).is_ok() {
                    tracing::info!("retention: removed orphaned workspace {}", path.display());
                    swept.workspaces += 1;
                    swept.bytes += bytes;
                }
            }
        }
    }

    for (name, n) in [
        ("deleted_builds", swept.builds),
        ("deleted_log_chunks", swept.logs),
        ("deleted_artifacts", swept.artifacts),
        ("deleted_blobs", swept.blobs),
        ("deleted_caches", swept.caches),
        ("deleted_workspaces", swept.workspaces),
        ("deleted_bytes", swept.bytes),
    ] {
        if n > 0 {
            store.counter_add(name, i64::try_from(n).unwrap_or(i64::MAX)).await?;
        }
    }
    let pages = store.vacuum_if_worth_it().await?;
    if pages > 0 {
        tracing::info!("retention: vacuumed the database ({pages} free pages)");
    }
    Ok(swept)
}

/// Runs [`sweep`] every `maintenance_every` (the first pass at start), and warns while the disk
/// is low.
pub async fn run_maintenance(store: Store, cfg: Arc<StorageConfig>, shutdown: crate::exec::CancelSignal) {
    let mut tick = tokio::time::interval(cfg.maintenance_every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match sweep(&store, &cfg).await {
            Ok(s) if s != Swept::default() => tracing::info!(
                builds = s.builds,
                logs = s.logs,
                artifacts = s.artifacts,
                blobs = s.blobs,
                caches = s.caches,
                workspaces = s.workspaces,
                bytes = s.bytes,
                "maintenance pass done"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("maintenance pass: {e}"),
        }
        match (cfg.disk_state(), disk_space(&cfg.data_dir)) {
            (DiskState::Critical, Ok((free, _))) => {
                tracing::error!(
                    "disk critically low: {free} bytes free under {}; new builds wait",
                    cfg.data_dir.display()
                )
            }
            (DiskState::Low, Ok((free, _))) => {
                tracing::warn!("disk low: {free} bytes free under {}", cfg.data_dir.display())
            }
            _ => {}
        }
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Removes a file; returns the bytes freed.
fn remove_file(path: &Path) -> u64 {
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    match std::fs::remove_file(path) {
        Ok(()) => size,
        Err(_) => 0,
    }
}

/// Removes files of `dir` older than the grace period that `known` does not claim; returns
/// (files, bytes).
fn remove_orphans(dir: &Path, known: impl Fn(&str) -> bool) -> (u64, u64) {
    let mut out = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Ok(meta) = e.metadata() else { continue };
        let old = meta.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > ORPHAN_GRACE);
        if meta.is_file() && old && !known(&name) {
            let bytes = remove_file(&e.path());
            tracing::info!("retention: deleted cache archive {name} that no entry names");
            out.0 += 1;
            out.1 += bytes;
        }
    }
    out
}
