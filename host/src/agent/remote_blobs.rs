//! Artifact content between a remote agent and the server: a [`BlobStore`] whose blobs live on
//! the server, reached through the lease (`PUT`/`GET /api/v1/agent/leases/{entry}/blobs`).
//! Uploads carry their SHA-256, which the server checks while storing; downloads are checked
//! against the digest they were asked for before anything is placed in the workspace.

use crate::engine::artifacts::{ArtifactError, Blob, BlobStore, copy_hashing};
use crate::store::queue::Lease;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The server's blob store, seen through one lease.
#[derive(Debug)]
pub struct RemoteBlobs {
    http: ureq::Agent,
    url: String,
    bearer: String,
    name: String,
    lease_token: i64,
    tmp: PathBuf,
}

fn remote(what: &'static str, path: &str, detail: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Io { what, path: path.to_string(), source: std::io::Error::other(detail.to_string()) }
}

impl RemoteBlobs {
    /// Blobs of the job `lease` holds; temporary files go to `tmp`.
    pub fn new(client: &super::remote::Client, lease: &Lease, tmp: &Path) -> Result<RemoteBlobs, ArtifactError> {
        std::fs::create_dir_all(tmp).map_err(|e| remote("cannot create", &tmp.display().to_string(), e))?;
        let (http, base, bearer, name) = client.parts();
        Ok(RemoteBlobs {
            http,
            url: format!("{base}/api/v1/agent/leases/{}/blobs", lease.entry),
            bearer: format!("Bearer {bearer}"),
            name: name.to_string(),
            lease_token: lease.token,
            tmp: tmp.to_path_buf(),
        })
    }

    /// A request with the agent's credentials and the lease's token, tried up to 5 times while
    /// the failure is transient (no answer, 5xx, 429).
    fn send(
        &self,
        what: &'static str,
        shown: &str,
        mut once: impl FnMut() -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>, ArtifactError> {
        let mut pause = Duration::from_millis(200);
        for attempt in 1..=5 {
            match once() {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(mut r) => {
                    let status = r.status().as_u16();
                    let text = r.body_mut().read_to_string().unwrap_or_default();
                    if !(status == 429 || status >= 500) || attempt == 5 {
                        return Err(remote(what, shown, format!("HTTP {status}: {text}")));
                    }
                }
                Err(e) if attempt == 5 => return Err(remote(what, shown, e)),
                Err(_) => {}
            }
            std::thread::sleep(pause);
            pause *= 2;
        }
        Err(remote(what, shown, "no answer"))
    }

    fn temp_file(&self) -> Result<(std::fs::File, tempfile::TempPath), ArtifactError> {
        let f = tempfile::NamedTempFile::new_in(&self.tmp)
            .map_err(|e| remote("cannot create a temporary file in", &self.tmp.display().to_string(), e))?;
        let (file, path) = f.into_parts();
        Ok((file, path))
    }
}

impl BlobStore for RemoteBlobs {
    fn put(&self, src: &mut dyn Read) -> Result<Blob, ArtifactError> {
        // Hash into a temporary file first: the digest goes with the upload.
        let (mut file, path) = self.temp_file()?;
        let shown = path.display().to_string();
        let (sha256, size) = copy_hashing(src, &mut file, &shown)?;
        let resp = self.send("cannot upload", &shown, || {
            let body = std::fs::File::open(&path).map_err(ureq::Error::Io)?;
            self.http
                .put(&format!("{}?token={}", self.url, self.lease_token))
                .header("Authorization", &self.bearer)
                .header("Chengis-Agent", &self.name)
                .header("X-Checksum-Sha256", &sha256)
                .header("Content-Length", &size.to_string())
                .send(body)
        })?;
        drop(resp);
        Ok(Blob { sha256, size })
    }

    fn open(&self, sha256: &str) -> Result<std::fs::File, ArtifactError> {
        let (mut file, path) = self.temp_file()?;
        let mut resp = self.send("cannot download", sha256, || {
            self.http
                .get(&format!("{}/{sha256}?token={}", self.url, self.lease_token))
                .header("Authorization", &self.bearer)
                .header("Chengis-Agent", &self.name)
                .call()
        })?;
        let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
        let (actual, _) = copy_hashing(&mut body, &mut file, sha256)?;
        if actual != sha256 {
            return Err(ArtifactError::Corrupt { path: sha256.to_string(), expected: sha256.to_string(), actual });
        }
        file.rewind().map_err(|e| remote("cannot read", &path.display().to_string(), e))?;
        // The name goes; the open file stays readable until dropped.
        drop(path);
        Ok(file)
    }

    fn delete(&self, sha256: &str) -> Result<bool, ArtifactError> {
        Err(remote("cannot delete", sha256, "agents do not delete server blobs"))
    }

    fn list(&self) -> Result<Vec<(String, SystemTime, u64)>, ArtifactError> {
        Ok(Vec::new())
    }
}

/// Places the artifacts `download:` names (of the jobs in `needs`) into the workspace of a
/// remote agent's job; `Err` inside: the job cannot start.
pub async fn download(
    client: &std::sync::Arc<super::remote::Client>,
    a: &super::server_side::Assignment,
    workspace: &Path,
    tmp: &Path,
) -> Result<Result<String, String>, super::remote::RemoteError> {
    let answer: serde_json::Value = client.lease_call(&a.lease, "downloads", serde_json::json!({})).await?;
    if let Some(reason) = answer["error"].as_str() {
        return Ok(Err(reason.to_string()));
    }
    let files: Vec<crate::store::storage::ArtifactFile> = match serde_json::from_value(answer["files"].clone()) {
        Ok(f) => f,
        Err(e) => return Ok(Err(format!("download: unexpected answer from the server: {e}"))),
    };
    let blobs = match RemoteBlobs::new(client, &a.lease, tmp) {
        Ok(b) => b,
        Err(e) => return Ok(Err(format!("download: {e}"))),
    };
    Ok(super::storage::place_all(blobs, workspace, files).await)
}

/// Uploads a remote agent's artifacts and records them; the log lines, or why the job fails.
pub async fn keep(
    client: &std::sync::Arc<super::remote::Client>,
    a: &super::server_side::Assignment,
    specs: Vec<crate::engine::artifacts::ArtifactSpec>,
    workspace: &Path,
    tmp: &Path,
) -> Result<Result<Vec<String>, String>, super::remote::RemoteError> {
    if specs.is_empty() {
        return Ok(Ok(Vec::new()));
    }
    let blobs = match RemoteBlobs::new(client, &a.lease, tmp) {
        Ok(b) => b,
        Err(e) => return Ok(Err(format!("artifacts: {e}"))),
    };
    let (ws, owned) = (workspace.to_path_buf(), specs.clone());
    let (limit, fail) = (a.artifact_rules.max_job, a.artifact_rules.fail_over_cap);
    let collected =
        tokio::task::spawn_blocking(move || crate::engine::artifacts::collect(&blobs, &ws, &owned, limit, fail)).await;
    let collected = match collected {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Ok(Err(format!("artifacts: {e}"))),
        Err(e) => return Ok(Err(format!("artifacts: {e}"))),
    };
    let _: serde_json::Value =
        client.lease_call(&a.lease, "artifacts", serde_json::json!({ "files": collected.files })).await?;
    Ok(Ok(super::storage::kept_lines(&specs, &collected)))
}

/// Restores one cache entry from the server into a remote agent's workspace (never fails the
/// job: a miss or an unusable archive is a line in the log).
pub async fn restore_cache(
    client: &std::sync::Arc<super::remote::Client>,
    a: &super::server_side::Assignment,
    cache: &crate::engine::cache::ResolvedCache,
    workspace: &Path,
    tmp: &Path,
) -> Result<crate::engine::cache::Restored, super::remote::RemoteError> {
    use crate::engine::cache::Restored;
    let body = serde_json::json!({"key": cache.key, "restore_keys": cache.restore_keys});
    let answer: serde_json::Value = client.lease_call(&a.lease, "cache-find", body).await?;
    let entry: crate::store::storage::CacheEntry = match serde_json::from_value(answer["entry"].clone()) {
        Ok(e) => e,
        Err(_) => {
            let lines = serde_json::from_value(answer["lines"].clone()).unwrap_or_default();
            return Ok(Restored { exact: false, lines });
        }
    };
    let (http, base, bearer, name) = client.parts();
    let url = format!("{base}/api/v1/agent/leases/{}/caches/{}?token={}", a.lease.entry, entry.id, a.lease.token);
    let (bearer, name, tmp, ws, wanted) =
        (format!("Bearer {bearer}"), name.to_string(), tmp.to_path_buf(), workspace.to_path_buf(), cache.clone());
    let restored = tokio::task::spawn_blocking(move || -> Result<Restored, String> {
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        let mut archive = tempfile::NamedTempFile::new_in(&tmp).map_err(|e| e.to_string())?;
        let mut resp = http
            .get(&url)
            .header("Authorization", &bearer)
            .header("Chengis-Agent", &name)
            .call()
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status().as_u16()));
        }
        let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
        std::io::copy(&mut body, archive.as_file_mut()).map_err(|e| e.to_string())?;
        // The archive is verified against the entry's SHA-256 before anything is extracted.
        Ok(crate::engine::cache::unpack_entry(archive.path(), &entry, &wanted, &ws).unwrap_or_else(|r| r))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    Ok(restored.unwrap_or_else(|e| Restored {
        exact: false,
        lines: vec![format!("cache `{}`: restore failed ({e}); continuing without it", cache.key)],
    }))
}

/// Packs a cache's paths on a remote agent and uploads the archive to the server, which keeps
/// it unless another build saved the key first; the log lines.
pub async fn save_cache(
    client: &std::sync::Arc<super::remote::Client>,
    a: &super::server_side::Assignment,
    cache: &crate::engine::cache::ResolvedCache,
    workspace: &Path,
    tmp: &Path,
) -> Vec<String> {
    let (http, base, bearer, name) = client.parts();
    let (bearer, name, tmp, ws, paths) =
        (format!("Bearer {bearer}"), name.to_string(), tmp.to_path_buf(), workspace.to_path_buf(), cache.paths.clone());
    let (limit, key, lease) = (a.artifact_rules.cache_max_entry, cache.key.clone(), a.lease.clone());
    let base = base.to_string();
    let saved = tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        let Some(packed) = crate::engine::cache::pack_paths(&ws, &paths, &tmp, limit)? else {
            return Ok(vec![format!("cache `{key}`: not saved: no file matches {}", paths.join(", "))]);
        };
        let url = format!(
            "{base}/api/v1/agent/leases/{}/caches?token={}&key={}&files={}",
            lease.entry,
            lease.token,
            super::remote::percent_encode(&key),
            packed.files
        );
        let file = std::fs::File::open(packed.file.path()).map_err(|e| e.to_string())?;
        let mut resp = http
            .put(&url)
            .header("Authorization", &bearer)
            .header("Chengis-Agent", &name)
            .header("X-Checksum-Sha256", &packed.sha256)
            .header("Content-Length", &packed.size.to_string())
            .send(file)
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let v: serde_json::Value = resp.body_mut().read_json().map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("HTTP {status}: {}", v["error"]["message"].as_str().unwrap_or_default()));
        }
        Ok(serde_json::from_value(v["lines"].clone()).unwrap_or_default())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    saved.unwrap_or_else(|e| vec![format!("cache `{}`: not saved: {e}", cache.key)])
}
