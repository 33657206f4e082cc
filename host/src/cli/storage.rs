//! Storage on the command line: the server's cache, artifact and retention settings (flags,
//! `CHENGIS_*` variables, config keys) and the `chengis cache|artifact` commands.

use super::client::{Client, ClientArgs, enc, print, print_list, s};
use crate::engine::disk::StorageConfig;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

/// Cache, artifact and retention settings of `chengis serve` (sizes such as `10g`, durations
/// such as `30d`; `never` keeps forever).
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
pub struct StorageArgs {
    /// Largest cache archive [default: 2g].
    #[arg(long, env = "CHENGIS_CACHE_MAX_ENTRY_SIZE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_max_entry_size: Option<String>,
    /// Total size of all caches; least recently used go first beyond it [default: 10g].
    #[arg(long, env = "CHENGIS_CACHE_MAX_SIZE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_max_size: Option<String>,
    /// Caches unused this long expire [default: 30d].
    #[arg(long, env = "CHENGIS_CACHE_MAX_AGE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_max_age: Option<String>,
    /// Largest total of one job's artifacts [default: 5g].
    #[arg(long, env = "CHENGIS_ARTIFACT_MAX_SIZE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_max_size: Option<String>,
    /// Over the artifact cap: `fail` the job or `warn` and keep what fits [default: fail].
    #[arg(long, env = "CHENGIS_ARTIFACT_OVER_LIMIT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_over_limit: Option<String>,
    /// Lifetime of artifacts without `expire-in` [default: 30d].
    #[arg(long, env = "CHENGIS_ARTIFACT_RETENTION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_retention: Option<String>,
    /// Logs of builds finished this long ago are deleted [default: 90d].
    #[arg(long, env = "CHENGIS_LOG_RETENTION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_retention: Option<String>,
    /// Builds finished this long ago are deleted [default: never].
    #[arg(long, env = "CHENGIS_BUILD_RETENTION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_retention: Option<String>,
    /// Warn below this much free disk [default: 5g].
    #[arg(long, env = "CHENGIS_DISK_WARN_FREE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_warn_free: Option<String>,
    /// New builds wait below this much free disk [default: 1g].
    #[arg(long, env = "CHENGIS_DISK_CRITICAL_FREE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_critical_free: Option<String>,
    /// Period of the maintenance loop [default: 10m].
    #[arg(long, env = "CHENGIS_MAINTENANCE_INTERVAL")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_interval: Option<String>,
}

/// The config file keys of [`StorageArgs`].
pub const STORAGE_KEYS: &[&str] = &[
    "cache_max_entry_size",
    "cache_max_size",
    "cache_max_age",
    "artifact_max_size",
    "artifact_over_limit",
    "artifact_retention",
    "log_retention",
    "build_retention",
    "disk_warn_free",
    "disk_critical_free",
    "maintenance_interval",
];

fn size(v: &Option<String>, key: &str, default: u64) -> anyhow::Result<u64> {
    match v {
        None => Ok(default),
        Some(s) => chengis_pipeline::container::parse_size(s).map_err(|e| anyhow::anyhow!("{key}: {e}")),
    }
}

fn period(v: &Option<String>, key: &str, default: Option<Duration>) -> anyhow::Result<Option<Duration>> {
    match v.as_deref() {
        None => Ok(default),
        Some("never" | "forever" | "0") => Ok(None),
        Some(s) => chengis_pipeline::duration::parse_duration(s)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{key} `{s}`: {e} (or `never`)")),
    }
}

impl StorageArgs {
    /// These flags over `file` (flag and environment win).
    pub fn over(&self, file: &StorageArgs) -> StorageArgs {
        let pick = |a: &Option<String>, b: &Option<String>| a.clone().or_else(|| b.clone());
        StorageArgs {
            cache_max_entry_size: pick(&self.cache_max_entry_size, &file.cache_max_entry_size),
            cache_max_size: pick(&self.cache_max_size, &file.cache_max_size),
            cache_max_age: pick(&self.cache_max_age, &file.cache_max_age),
            artifact_max_size: pick(&self.artifact_max_size, &file.artifact_max_size),
            artifact_over_limit: pick(&self.artifact_over_limit, &file.artifact_over_limit),
            artifact_retention: pick(&self.artifact_retention, &file.artifact_retention),
            log_retention: pick(&self.log_retention, &file.log_retention),
            build_retention: pick(&self.build_retention, &file.build_retention),
            disk_warn_free: pick(&self.disk_warn_free, &file.disk_warn_free),
            disk_critical_free: pick(&self.disk_critical_free, &file.disk_critical_free),
            maintenance_interval: pick(&self.maintenance_interval, &file.maintenance_interval),
        }
    }

    /// The settings for `data_dir`, every value checked.
    pub fn config(&self, data_dir: PathBuf) -> anyhow::Result<StorageConfig> {
        let d = StorageConfig::new(data_dir);
        let over = match self.artifact_over_limit.as_deref() {
            None | Some("fail") => true,
            Some("warn") => false,
            Some(other) => bail!("artifact_over_limit: `{other}` is not `fail` or `warn`"),
        };
        let cfg = StorageConfig {
            cache_max_entry: size(&self.cache_max_entry_size, "cache_max_entry_size", d.cache_max_entry)?,
            cache_max_total: size(&self.cache_max_size, "cache_max_size", d.cache_max_total)?,
            cache_max_age: period(&self.cache_max_age, "cache_max_age", Some(d.cache_max_age))?
                .unwrap_or(Duration::MAX),
            artifact_max_job: size(&self.artifact_max_size, "artifact_max_size", d.artifact_max_job)?,
            artifact_fail_over_cap: over,
            artifact_retention: period(&self.artifact_retention, "artifact_retention", d.artifact_retention)?,
            log_retention: period(&self.log_retention, "log_retention", d.log_retention)?,
            build_retention: period(&self.build_retention, "build_retention", d.build_retention)?,
            disk_warn_free: size(&self.disk_warn_free, "disk_warn_free", d.disk_warn_free)?,
            disk_critical_free: size(&self.disk_critical_free, "disk_critical_free", d.disk_critical_free)?,
            maintenance_every: period(&self.maintenance_interval, "maintenance_interval", Some(d.maintenance_every))?
                .filter(|p| !p.is_zero())
                .context("maintenance_interval cannot be `never`")?,
            ..d
        };
        if cfg.maintenance_every < Duration::from_secs(1) {
            bail!("maintenance_interval must be at least 1s");
        }
        Ok(cfg)
    }
}

/// `chengis cache ...`.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List cache entries, most recently used first.
    List {
        /// Only this job's.
        #[arg(long)]
        job: Option<String>,
    },
    /// Delete one entry by id.
    Rm {
        /// The entry's id (from `chengis cache list`).
        id: i64,
    },
    /// Run the server's maintenance pass now (expiry, eviction, retention).
    Prune,
}

/// `chengis artifact ...`.
#[derive(Debug, Subcommand)]
pub enum ArtifactCommand {
    /// List a build's artifact files.
    List {
        /// The build id.
        build: i64,
    },
    /// Download a build's artifact files into a directory (at their workspace paths).
    Download {
        /// The build id.
        build: i64,
        /// Only this artifact.
        #[arg(long)]
        name: Option<String>,
        /// Where to put them.
        #[arg(long, short, default_value = ".")]
        output: PathBuf,
    },
    /// Delete a build's artifact.
    Rm {
        /// The build id.
        build: i64,
        /// The artifact's name.
        name: String,
    },
}

fn mib(v: &Value) -> String {
    format!("{:.1} MiB", v.as_f64().unwrap_or(0.0) / (1024.0 * 1024.0))
}

/// Runs `chengis cache ...`.
pub fn cache(args: &ClientArgs, cmd: CacheCommand) -> anyhow::Result<i32> {
    let c = Client::new(args)?;
    match cmd {
        CacheCommand::List { job } => {
            let query = job.map(|j| format!("?job={}", enc(&j))).unwrap_or_default();
            let v = c.get(&format!("/api/v1/caches{query}"))?;
            print_list(args.format, &v, "caches", "no caches", |v| {
                v["caches"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        format!(
                            "{:<5} {:<20} {:<16} {:<40} {:>10}\n",
                            s(&e["id"]),
                            s(&e["job"]),
                            s(&e["scope"]),
                            s(&e["key"]),
                            mib(&e["size"])
                        )
                    })
                    .collect()
            });
        }
        CacheCommand::Rm { id } => {
            c.delete(&format!("/api/v1/caches/{id}"))?;
            print(args.format, &json!({"deleted": id}), |_| format!("cache entry {id} deleted\n"));
        }
        CacheCommand::Prune => {
            let v = c.post("/api/v1/storage/prune", json!({}))?;
            print(args.format, &v, |v| {
                format!(
                    "deleted: {} builds, {} log chunks, {} artifact files, {} blobs, {} caches, {} workspaces ({} bytes)\n",
                    s(&v["builds"]),
                    s(&v["logs"]),
                    s(&v["artifacts"]),
                    s(&v["blobs"]),
                    s(&v["caches"]),
                    s(&v["workspaces"]),
                    s(&v["bytes"])
                )
            });
        }
    }
    Ok(0)
}

/// Runs `chengis artifact ...`.
pub fn artifact(args: &ClientArgs, cmd: ArtifactCommand) -> anyhow::Result<i32> {
    let c = Client::new(args)?;
    match cmd {
        ArtifactCommand::List { build } => {
            let v = c.get(&format!("/api/v1/builds/{build}/artifacts"))?;
            print_list(args.format, &v, "artifacts", &format!("build {build} has no artifacts"), |v| {
                v["artifacts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        format!(
                            "{:<5} {:<16} {:<16} {:<40} {:>12} {}\n",
                            s(&a["id"]),
                            s(&a["job"]),
                            s(&a["name"]),
                            s(&a["path"]),
                            s(&a["size"]),
                            s(&a["sha256"])
                        )
                    })
                    .collect()
            });
        }
        ArtifactCommand::Download { build, name, output } => {
            let v = c.get(&format!("/api/v1/builds/{build}/artifacts"))?;
            let files: Vec<&Value> = v["artifacts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| name.as_deref().is_none_or(|n| a["name"].as_str() == Some(n)))
                .collect();
            if files.is_empty() {
                return Err(super::error::CliError::NotFound(format!(
                    "build {build} has no artifact{}",
                    name.map(|n| format!(" named `{n}`")).unwrap_or_default()
                ))
                .into());
            }
            let root = cap_std::fs::Dir::open_ambient_dir(&output, cap_std::ambient_authority())
                .with_context(|| format!("cannot open {}", output.display()))?;
            let mut total = 0;
            for f in &files {
                let path = f["path"].as_str().unwrap_or_default();
                let rel = std::path::Path::new(path);
                if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                    root.create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
                }
                let mut out = root.create(rel).with_context(|| format!("cannot create {path}"))?;
                total += c.download(&format!("/api/v1/artifacts/{}", s(&f["id"])), &mut out)?;
            }
            print(args.format, &json!({"files": files.len(), "bytes": total}), |_| {
                format!("downloaded {} files ({total} bytes) into {}\n", files.len(), output.display())
            });
        }
        ArtifactCommand::Rm { build, name } => {
            let v = c.delete(&format!("/api/v1/builds/{build}/artifacts/{}", enc(&name)))?;
            print(args.format, &v, |v| format!("deleted {} files of artifact {name}\n", s(&v["deleted"])));
        }
    }
    Ok(0)
}
