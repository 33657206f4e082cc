//! Artifacts, caches and the disk over the API: list, download (streamed, with ranges) and
//! delete artifacts; list and delete cache entries; the storage report and an on-demand
//! maintenance pass.

use super::AppState;
use super::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use crate::engine::artifacts::{self, ArtifactError, BlobStore};
use crate::engine::disk::{StorageReport, Swept};
use crate::store::artifacts::{ArtifactFile, CacheEntry};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io::{Seek, SeekFrom};
use utoipa::{IntoParams, ToSchema};

/// `GET /api/v1/builds/{id}/artifacts`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactList {
    artifacts: Vec<ArtifactFile>,
}

/// `GET /api/v1/caches`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CacheList {
    caches: Vec<CacheEntry>,
}

/// Query of `GET /api/v1/caches`: `?job=NAME` for one job's entries.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CacheQuery {
    /// Only this job's entries.
    job: Option<String>,
}

impl From<ArtifactError> for ApiError {
    fn from(e: ArtifactError) -> Self {
        let (status, code) = match &e {
            ArtifactError::Corrupt { .. } => (StatusCode::CONFLICT, "corrupt"),
            ArtifactError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                (StatusCode::GONE, "gone")
            }
            _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        ApiError { status, code, message: e.to_string(), details: json!(null) }
    }
}

/// Lists a build's artifact files.
#[utoipa::path(get, path = "/api/v1/builds/{id}/artifacts", params(("id" = i64, Path, description = "build id")), responses((status = 200, body = ArtifactList), (status = 404, body = ErrorBody)))]
pub async fn list_artifacts(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<ArtifactList>, ApiError> {
    s.builds.store.build_summary(id).await?;
    Ok(Json(ArtifactList { artifacts: s.builds.store.artifacts_of_build(id).await? }))
}

/// Deletes every file of a build's artifact (the content goes with the next maintenance pass
/// when nothing else names it).
#[utoipa::path(delete, path = "/api/v1/builds/{id}/artifacts/{name}", params(("id" = i64, Path, description = "build id"), ("name" = String, Path, description = "artifact name")), responses((status = 200, description = "how many files were deleted"), (status = 404, body = ErrorBody)))]
pub async fn delete_artifact(
    State(s): State<AppState>,
    ApiPath((id, name)): ApiPath<(i64, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let n = s.builds.store.artifact_delete(id, &name).await?;
    if n == 0 {
        return Err(ApiError::not_found(format!("build {id} has no artifact named `{name}`")));
    }
    tracing::info!(build = id, "deleted artifact `{name}` ({n} files) through the API");
    Ok(Json(json!({"deleted": n})))
}

/// A parsed `Range: bytes=...` header against a file of `len` bytes: `Ok(None)` for the whole
/// file, `Err` when unsatisfiable.
fn range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else { return Ok(None) };
    let Some(spec) = v.trim().strip_prefix("bytes=") else { return Err(()) };
    if spec.contains(',') {
        // Several ranges: answer the whole file, which RFC 9110 allows.
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        (true, false) => {
            let n: u64 = b.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
        }
        (false, _) => {
            let start: u64 = a.parse().map_err(|_| ())?;
            let end = if b.is_empty() { len.saturating_sub(1) } else { b.parse::<u64>().map_err(|_| ())?.min(len - 1) };
            (start, end)
        }
        (true, true) => return Err(()),
    };
    if len == 0 || start > end || start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// Downloads one artifact file: streamed, `Content-Disposition: attachment`, single byte
/// ranges (206), the SHA-256 as `ETag` and `X-Checksum-Sha256`. The content is checked against
/// its checksum before it is sent; a corrupt file is answered 409.
#[utoipa::path(get, path = "/api/v1/artifacts/{id}", params(("id" = i64, Path, description = "artifact file id")), responses((status = 200, description = "the file"), (status = 206, description = "a range of it"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 416, body = ErrorBody)))]
pub async fn download(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let file = s.builds.store.artifact(id).await?;
    let blobs = s.builds.storage.blobs()?;
    let (sha, shown) = (file.sha256.clone(), file.path.clone());
    let opened = tokio::task::spawn_blocking(move || -> Result<std::fs::File, ArtifactError> {
        artifacts::verify(&blobs, &sha, &shown)?;
        blobs.open(&sha)
    })
    .await
    .map_err(|e| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "unavailable",
        message: e.to_string(),
        details: json!(null),
    })??;
    let len = u64::try_from(file.size).unwrap_or(0);
    let name = file.path.rsplit('/').next().unwrap_or("artifact").replace(['"', '\\', '\r', '\n'], "_");
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .unwrap_or(HeaderValue::from_static("attachment"));
    let (status, start, count) = match range(&headers, len) {
        Ok(None) => (StatusCode::OK, 0, len),
        Ok(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        Err(()) => {
            let mut resp = ApiError {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                code: "range_not_satisfiable",
                message: format!("the range is outside the file's {len} bytes"),
                details: json!(null),
            }
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let mut std_file = opened;
    std_file
        .seek(SeekFrom::Start(start))
        .map_err(|e| ApiError::from(ArtifactError::Io { what: "cannot read", path: file.path.clone(), source: e }))?;
    let reader = tokio::fs::File::from_std(std_file);
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        tokio::io::AsyncReadExt::take(reader, count),
        256 * 1024,
    ));
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_DISPOSITION, disposition);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", file.sha256)) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&file.sha256) {
        h.insert("x-checksum-sha256", v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

/// Lists cache entries, most recently used first.
#[utoipa::path(get, path = "/api/v1/caches", params(CacheQuery), responses((status = 200, body = CacheList)))]
pub async fn list_caches(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<CacheQuery>,
) -> Result<Json<CacheList>, ApiError> {
    Ok(Json(CacheList { caches: s.builds.store.cache_list(q.job.as_deref()).await? }))
}

/// Deletes a cache entry and its archive.
#[utoipa::path(delete, path = "/api/v1/caches/{id}", params(("id" = i64, Path, description = "cache entry id")), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_cache(State(s): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<StatusCode, ApiError> {
    let Some(entry) = s.builds.store.cache_delete(id).await? else {
        return Err(ApiError::not_found(format!("cache entry {id} not found")));
    };
    let _ = std::fs::remove_file(s.builds.storage.cache_dir().join(&entry.file));
    tracing::info!(job = %entry.job, "deleted cache `{}` of {} through the API", entry.key, entry.scope);
    Ok(StatusCode::NO_CONTENT)
}

/// Artifact and cache bytes, the cache hit rate, workspace bytes per agent, free disk, and
/// what retention deleted.
#[utoipa::path(get, path = "/api/v1/storage", responses((status = 200, body = StorageReport)))]
pub async fn report(State(s): State<AppState>) -> Result<Json<StorageReport>, ApiError> {
    let cfg = &s.builds.storage;
    Ok(Json(crate::engine::disk::report(&s.builds.store, cfg, &cfg.local_agents).await?))
}

/// Runs a maintenance pass now and answers what it deleted.
#[utoipa::path(post, path = "/api/v1/storage/prune", responses((status = 200, body = Swept)))]
pub async fn prune(State(s): State<AppState>) -> Result<Json<Swept>, ApiError> {
    Ok(Json(crate::engine::disk::sweep(&s.builds.store, &s.builds.storage).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn ranges() {
        assert_eq!(range(&HeaderMap::new(), 10), Ok(None));
        assert_eq!(range(&h("bytes=0-3"), 10), Ok(Some((0, 3))));
        assert_eq!(range(&h("bytes=4-"), 10), Ok(Some((4, 9))));
        assert_eq!(range(&h("bytes=-3"), 10), Ok(Some((7, 9))));
        assert_eq!(range(&h("bytes=5-100"), 10), Ok(Some((5, 9))));
        assert_eq!(range(&h("bytes=10-"), 10), Err(()));
        assert_eq!(range(&h("bytes=3-1"), 10), Err(()));
        assert_eq!(range(&h("items=0-1"), 10), Err(()));
        assert_eq!(range(&h("bytes=0-1,3-4"), 10), Ok(None));
    }
}
