//! Artifact content between a remote agent and the server: a [`BlobStore`] whose blobs live on
//! the server, reached through the lease (`PUT`/`GET /api/v1/agent/leases/{entry}/blobs`).
//! Uploads carry their SHA-256, which the server checks while storing; downloads are checked
//! against the digest they were asked for before anything is placed in the workspace. Every
//! transfer presents the lease's secret in the `Chengis-Lease-Secret` header (never in the URL,
//! which proxies and access logs record).

use crate::artifacts::{ArtifactError, Blob, BlobStore, copy_hashing};
use crate::remote::{Attempt, Client, RemoteError};
use chengis_model::protocol::{LEASE_SECRET_HEADER, Lease, LeaseSecret};
use serde_json::Value;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// The server's blob store, seen through one lease.
#[derive(Debug)]
pub struct RemoteBlobs {
    client: Arc<Client>,
    url: String,
    lease_token: i64,
    secret: Option<LeaseSecret>,
    tmp: PathBuf,
}

fn remote(what: &'static str, path: &str, detail: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Io { what, path: path.to_string(), source: std::io::Error::other(detail.to_string()) }
}

fn temp_file(tmp: &Path) -> Result<tempfile::NamedTempFile, String> {
    std::fs::create_dir_all(tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    tempfile::NamedTempFile::new_in(tmp)
        .map_err(|e| format!("cannot create a temporary file in {}: {e}", tmp.display()))
}

/// Downloads `url` (through the agent's retry helper) into a new temporary file in `tmp`,
/// presenting the lease's `secret`.
pub(crate) fn fetch(
    client: &Client,
    what: &str,
    url: &str,
    secret: Option<&LeaseSecret>,
    tmp: &Path,
) -> Result<tempfile::NamedTempFile, String> {
    client
        .retry_blocking(what, |c| {
            let mut resp = c.send(what, |http, base, auth, name| {
                let mut req =
                    http.get(&format!("{base}{url}")).header("Authorization", auth).header("Chengis-Agent", name);
                if let Some(secret) = secret {
                    req = req.header(LEASE_SECRET_HEADER, secret.expose());
                }
                req.call()
            })?;
            let mut file = temp_file(tmp).map_err(|e| Attempt::Fail(RemoteError::Setup(e)))?;
            let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
            std::io::copy(&mut body, file.as_file_mut())
                .map_err(|e| Attempt::Retry(format!("reading the download: {e}"), None))?;
            Ok(file)
        })
        .map_err(|e| e.to_string())
}

/// Where an upload goes: the URL and the lease's secret.
struct Target<'a> {
    url: &'a str,
    secret: Option<&'a LeaseSecret>,
}

/// Uploads the file at `path` with its SHA-256 to `to` (through the agent's retry helper);
/// the JSON answer.
fn upload(client: &Client, what: &str, to: Target<'_>, path: &Path, sha256: &str, size: u64) -> Result<Value, String> {
    client
        .retry_blocking(what, |c| {
            let body = std::fs::File::open(path)
                .map_err(|e| Attempt::Fail(RemoteError::Setup(format!("cannot read {}: {e}", path.display()))))?;
            let mut resp = c.send(what, |http, base, auth, name| {
                let mut req = http
                    .put(&format!("{base}{}", to.url))
                    .header("Authorization", auth)
                    .header("Chengis-Agent", name)
                    .header("X-Checksum-Sha256", sha256)
                    .header("Content-Length", &size.to_string());
                if let Some(secret) = to.secret {
                    req = req.header(LEASE_SECRET_HEADER, secret.expose());
                }
                req.send(body)
            })?;
            resp.body_mut().read_json::<Value>().map_err(|e| Attempt::Retry(format!("reading the answer: {e}"), None))
        })
        .map_err(|e| e.to_string())
}

impl RemoteBlobs {
    /// Blobs of the job `lease` holds; temporary files go to `tmp`.
    pub fn new(client: &Arc<Client>, lease: &Lease, tmp: &Path) -> RemoteBlobs {
        RemoteBlobs {
            client: client.clone(),
            url: format!("/api/v1/agent/leases/{}/blobs", lease.entry),
            lease_token: lease.token,
            secret: lease.secret.clone(),
            tmp: tmp.to_path_buf(),
        }
    }
}

impl BlobStore for RemoteBlobs {
    fn put(&self, src: &mut dyn Read) -> Result<Blob, ArtifactError> {
        // Hash into a temporary file first: the digest goes with the upload.
        let mut file = temp_file(&self.tmp).map_err(|e| remote("cannot upload", "", e))?;
        let shown = file.path().display().to_string();
        let (sha256, size) = copy_hashing(src, file.as_file_mut(), &shown)?;
        let url = format!("{}?token={}", self.url, self.lease_token);
        let to = Target { url: &url, secret: self.secret.as_ref() };
        upload(&self.client, "artifact upload", to, file.path(), &sha256, size)
            .map_err(|e| remote("cannot upload", &shown, e))?;
        Ok(Blob { sha256, size })
    }

    fn open(&self, sha256: &str) -> Result<std::fs::File, ArtifactError> {
        let url = format!("{}/{sha256}?token={}", self.url, self.lease_token);
        let file = fetch(&self.client, "artifact download", &url, self.secret.as_ref(), &self.tmp)
            .map_err(|e| remote("cannot download", sha256, e))?;
        // The caller checks the content against `sha256` while copying it out; the name goes
        // now, the open file stays readable until dropped.
        let (mut f, _path) = file.into_parts();
        f.rewind().map_err(|e| remote("cannot read", sha256, e))?;
        Ok(f)
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
    client: &std::sync::Arc<crate::remote::Client>,
    a: &crate::assignment::Assignment,
    workspace: &Path,
    tmp: &Path,
) -> Result<Result<String, String>, crate::remote::RemoteError> {
    let answer = client.lease_call(&a.lease, &chengis_model::protocol::Downloads {}).await?;
    if let Some(reason) = answer.error {
        return Ok(Err(reason));
    }
    let files = answer.files;
    let blobs = RemoteBlobs::new(client, &a.lease, tmp);
    Ok(crate::files::place_all(blobs, workspace, files).await)
}

/// Uploads a remote agent's artifacts and records them; the log lines, or why the job fails.
pub async fn keep(
    client: &std::sync::Arc<crate::remote::Client>,
    a: &crate::assignment::Assignment,
    specs: Vec<crate::artifacts::ArtifactSpec>,
    workspace: &Path,
    tmp: &Path,
) -> Result<Result<Vec<String>, String>, crate::remote::RemoteError> {
    if specs.is_empty() {
        return Ok(Ok(Vec::new()));
    }
    let blobs = RemoteBlobs::new(client, &a.lease, tmp);
    let (ws, owned) = (workspace.to_path_buf(), specs.clone());
    let (limit, fail) = (a.artifact_rules.max_job, a.artifact_rules.fail_over_cap);
    let collected =
        tokio::task::spawn_blocking(move || crate::artifacts::collect(&blobs, &ws, &owned, limit, fail)).await;
    let collected = match collected {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Ok(Err(format!("artifacts: {e}"))),
        Err(e) => return Ok(Err(format!("artifacts: {e}"))),
    };
    client.lease_call(&a.lease, &chengis_model::protocol::Artifacts { files: collected.files.clone() }).await?;
    Ok(Ok(crate::files::kept_lines(&specs, &collected)))
}

/// Restores one cache entry from the server into a remote agent's workspace (never fails the
/// job: a miss or an unusable archive is a line in the log).
pub async fn restore_cache(
    client: &std::sync::Arc<crate::remote::Client>,
    a: &crate::assignment::Assignment,
    cache: &crate::cache::ResolvedCache,
    workspace: &Path,
    tmp: &Path,
) -> Result<crate::cache::Restored, crate::remote::RemoteError> {
    use crate::cache::Restored;
    let find = chengis_model::protocol::CacheFind { key: cache.key.clone(), restore_keys: cache.restore_keys.clone() };
    let answer = client.lease_call(&a.lease, &find).await?;
    let Some(entry) = answer.entry else {
        return Ok(Restored { exact: false, lines: answer.lines });
    };
    let url = format!("/api/v1/agent/leases/{}/caches/{}?token={}", a.lease.entry, entry.id, a.lease.token);
    let (c, tmp, ws, wanted) = (client.clone(), tmp.to_path_buf(), workspace.to_path_buf(), cache.clone());
    let secret = a.lease.secret.clone();
    let restored = tokio::task::spawn_blocking(move || -> Result<Restored, String> {
        let archive = fetch(&c, "cache download", &url, secret.as_ref(), &tmp)?;
        // The archive is verified against the entry's SHA-256 before anything is extracted.
        Ok(crate::cache::unpack_entry(archive.path(), &entry, &wanted, &ws).unwrap_or_else(|r| r))
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
    client: &std::sync::Arc<crate::remote::Client>,
    a: &crate::assignment::Assignment,
    cache: &crate::cache::ResolvedCache,
    workspace: &Path,
    tmp: &Path,
) -> Vec<String> {
    let (c, tmp, ws, paths) = (client.clone(), tmp.to_path_buf(), workspace.to_path_buf(), cache.paths.clone());
    let (limit, key, lease) = (a.artifact_rules.cache_max_entry, cache.key.clone(), a.lease.clone());
    let saved = tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        let Some(packed) = crate::cache::pack_paths(&ws, &paths, &tmp, limit)? else {
            return Ok(vec![format!("cache `{key}`: not saved: no file matches {}", paths.join(", "))]);
        };
        let url = format!(
            "/api/v1/agent/leases/{}/caches?token={}&key={}&files={}",
            lease.entry,
            lease.token,
            crate::remote::percent_encode(&key),
            packed.files
        );
        let to = Target { url: &url, secret: lease.secret.as_ref() };
        let v = upload(&c, "cache upload", to, packed.file.path(), &packed.sha256, packed.size)?;
        Ok(serde_json::from_value(v["lines"].clone()).unwrap_or_default())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    saved.unwrap_or_else(|e| vec![format!("cache `{}`: not saved: {e}", cache.key)])
}
