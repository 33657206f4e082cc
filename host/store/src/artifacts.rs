//! Storage bookkeeping: build cache entries (scoped to job and branch, first save wins, LRU
//! order), stage results for `cache-result`, artifact rows (files in the blob store), the
//! storage counters (cache hits, deletions) and the retention queries of the maintenance loop.

use super::builds::held_at;
use super::queue::Lease;
use super::{Backend, Store, StoreError, now_ms};

pub use chengis_model::records::{ArtifactFile, CacheEntry, NewArtifactFile};
use sqlx::Row;
use std::collections::{BTreeMap, HashSet};

/// A cache entry to record.
#[derive(Debug, Clone)]
pub struct NewCacheEntry<'a> {
    /// The job's id.
    pub job_id: i64,
    /// The branch scope.
    pub scope: &'a str,
    /// The key.
    pub key: &'a str,
    /// The archive's file name.
    pub file: &'a str,
    /// Archive size.
    pub size: i64,
    /// Its SHA-256.
    pub sha256: &'a str,
    /// The build saving it.
    pub build_id: i64,
}

/// A stage result that can stand in for a run.
#[derive(Debug, Clone)]
pub struct CachedResult {
    /// The build job whose success is reused.
    pub build_job_id: i64,
    /// Its build.
    pub build_id: i64,
    /// That build's number.
    pub build_number: i64,
    /// Its outputs.
    pub outputs: serde_json::Map<String, serde_json::Value>,
}

const CACHE_COLUMNS: &str = "c.id, j.name AS job, c.scope, c.cache_key, c.file, c.size, c.sha256, c.build_id, \
     c.created_ms, c.last_used_ms";
const ARTIFACT_COLUMNS: &str =
    "a.id, bj.build_id, bj.job_key, a.name, a.path, a.size, a.sha256, a.created_ms, a.expires_ms";

fn cache_entry(row: &sqlx::any::AnyRow) -> Result<CacheEntry, StoreError> {
    Ok(CacheEntry {
        id: row.try_get("id")?,
        job: row.try_get("job")?,
        scope: row.try_get("scope")?,
        key: row.try_get("cache_key")?,
        file: row.try_get("file")?,
        size: row.try_get("size")?,
        sha256: row.try_get("sha256")?,
        build_id: row.try_get("build_id")?,
        created_ms: row.try_get("created_ms")?,
        last_used_ms: row.try_get("last_used_ms")?,
    })
}

fn artifact_file(row: &sqlx::any::AnyRow) -> Result<ArtifactFile, StoreError> {
    Ok(ArtifactFile {
        id: row.try_get("id")?,
        build_id: row.try_get("build_id")?,
        job: row.try_get("job_key")?,
        name: row.try_get("name")?,
        path: row.try_get("path")?,
        size: row.try_get("size")?,
        sha256: row.try_get("sha256")?,
        created_ms: row.try_get("created_ms")?,
        expires_ms: row.try_get("expires_ms")?,
    })
}

impl Store {
    /// The entry a build restores: the exact `key` in each scope in order (the build's own
    /// branch, then the default branch), else for each restore-key prefix in order the newest
    /// entry of each scope whose key starts with it.
    pub async fn cache_find(
        &self,
        job_id: i64,
        scopes: &[&str],
        key: &str,
        restore_keys: &[String],
    ) -> Result<Option<CacheEntry>, StoreError> {
        for scope in scopes {
            let row = sqlx::query(&format!(
                "SELECT {CACHE_COLUMNS} FROM cache_entries c JOIN jobs j ON j.id = c.job_id \
                 WHERE c.job_id = $1 AND c.scope = $2 AND c.cache_key = $3"
            ))
            .bind(job_id)
            .bind(scope.to_string())
            .bind(key.to_string())
            .fetch_optional(self.pool())
            .await?;
            if let Some(row) = row {
                return cache_entry(&row).map(Some);
            }
        }
        for prefix in restore_keys.iter().filter(|p| !p.is_empty()) {
            for scope in scopes {
                // substr instead of LIKE: no wildcard escaping, same on both backends.
                let row = sqlx::query(&format!(
                    "SELECT {CACHE_COLUMNS} FROM cache_entries c JOIN jobs j ON j.id = c.job_id \
                     WHERE c.job_id = $1 AND c.scope = $2 AND substr(c.cache_key, 1, CAST($3 AS INTEGER)) = $4 \
                     ORDER BY c.created_ms DESC, c.id DESC LIMIT 1"
                ))
                .bind(job_id)
                .bind(scope.to_string())
                .bind(prefix.chars().count() as i64)
                .bind(prefix.clone())
                .fetch_optional(self.pool())
                .await?;
                if let Some(row) = row {
                    return cache_entry(&row).map(Some);
                }
            }
        }
        Ok(None)
    }

    /// Records a saved entry; false when another build saved the same key in the same scope
    /// first (the first write wins).
    pub async fn cache_insert(&self, e: &NewCacheEntry<'_>) -> Result<bool, StoreError> {
        let now = now_ms();
        let done = sqlx::query(
            "INSERT INTO cache_entries (job_id, scope, cache_key, file, size, sha256, build_id, created_ms, last_used_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (job_id, scope, cache_key) DO NOTHING",
        )
        .bind(e.job_id)
        .bind(e.scope.to_string())
        .bind(e.key.to_string())
        .bind(e.file.to_string())
        .bind(e.size)
        .bind(e.sha256.to_string())
        .bind(e.build_id)
        .bind(now)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks an entry used now (least-recently-used order).
    pub async fn cache_touch(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE cache_entries SET last_used_ms = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Removes an entry's row; returns it (its file is the caller's to delete).
    pub async fn cache_delete(&self, id: i64) -> Result<Option<CacheEntry>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CACHE_COLUMNS} FROM cache_entries c JOIN jobs j ON j.id = c.job_id WHERE c.id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let entry = cache_entry(&row)?;
        sqlx::query("DELETE FROM cache_entries WHERE id = $1").bind(id).execute(self.pool()).await?;
        Ok(Some(entry))
    }

    /// Entries, most recently used first; only `job`'s when given.
    pub async fn cache_list(&self, job: Option<&str>) -> Result<Vec<CacheEntry>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CACHE_COLUMNS} FROM cache_entries c JOIN jobs j ON j.id = c.job_id \
             WHERE ($1 = '' OR j.name = $2) ORDER BY c.last_used_ms DESC, c.id DESC"
        ))
        .bind(job.unwrap_or_default().to_string())
        .bind(job.unwrap_or_default().to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(cache_entry).collect()
    }

    /// The file names of every entry (to find archives no row names).
    pub async fn cache_files(&self) -> Result<HashSet<String>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT file FROM cache_entries").fetch_all(self.pool()).await?;
        Ok(rows.into_iter().collect())
    }

    /// Number of entries and their total size.
    pub async fn cache_totals(&self) -> Result<(i64, i64), StoreError> {
        let row =
            sqlx::query("SELECT COUNT(*) AS n, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes FROM cache_entries")
                .fetch_one(self.pool())
                .await?;
        Ok((row.try_get("n")?, row.try_get("bytes")?))
    }

    /// A stored successful result of `job_key` with this fingerprint.
    pub async fn result_find(
        &self,
        job_id: i64,
        job_key: &str,
        fingerprint: &str,
    ) -> Result<Option<CachedResult>, StoreError> {
        let row = sqlx::query(
            "SELECT r.build_job_id, bj.build_id, b.number, bj.outputs FROM result_cache r \
             JOIN build_jobs bj ON bj.id = r.build_job_id JOIN builds b ON b.id = bj.build_id \
             WHERE r.job_id = $1 AND r.job_key = $2 AND r.fingerprint = $3 AND bj.status = 'success'",
        )
        .bind(job_id)
        .bind(job_key.to_string())
        .bind(fingerprint.to_string())
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let outputs: String = row.try_get("outputs")?;
        let outputs = serde_json::from_str(&outputs)
            .map_err(|e| StoreError::Corrupt { what: "build job outputs", detail: e.to_string() })?;
        Ok(Some(CachedResult {
            build_job_id: row.try_get("build_job_id")?,
            build_id: row.try_get("build_id")?,
            build_number: row.try_get("number")?,
            outputs,
        }))
    }

    /// Remembers a successful result under its fingerprint (the first one stays).
    pub async fn result_record(
        &self,
        job_id: i64,
        job_key: &str,
        fingerprint: &str,
        build_job_id: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO result_cache (job_id, job_key, fingerprint, build_job_id, created_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (job_id, job_key, fingerprint) DO UPDATE SET build_job_id = excluded.build_job_id, \
             created_ms = excluded.created_ms",
        )
        .bind(job_id)
        .bind(job_key.to_string())
        .bind(fingerprint.to_string())
        .bind(build_job_id)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records the artifact files of a leased job (refused for a stale lease).
    pub async fn artifact_insert(&self, lease: &Lease, files: &[NewArtifactFile]) -> Result<(), StoreError> {
        let now = now_ms();
        for f in files {
            let done = sqlx::query(&format!(
                "INSERT INTO artifacts (build_job_id, name, path, size, sha256, created_ms, expires_ms) \
                 SELECT $1, $2, $3, $4, $5, $6, $7 WHERE {}",
                held_at(8)
            ))
            .bind(lease.build_job_id)
            .bind(f.name.clone())
            .bind(f.path.clone())
            .bind(f.size)
            .bind(f.sha256.clone())
            .bind(now)
            .bind(f.expires_ms)
            .bind(lease.entry)
            .bind(lease.token)
            .execute(self.pool())
            .await?;
            if done.rows_affected() == 0 {
                self.check_lease(lease).await?;
            }
        }
        Ok(())
    }

    /// Notes that the agent holding `lease` uploaded the blob `sha256` through it (refused for a
    /// stale lease): only such blobs may it record ([`Store::not_uploaded`]).
    pub async fn lease_upload(&self, lease: &Lease, sha256: &str) -> Result<(), StoreError> {
        self.check_lease(lease).await?;
        sqlx::query(
            "INSERT INTO lease_uploads (entry, token, sha256, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (entry, token, sha256) DO NOTHING",
        )
        .bind(lease.entry)
        .bind(lease.token)
        .bind(sha256)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Those of `shas` the agent holding `lease` did not upload through it: recording one would
    /// make another build's file readable through this lease.
    pub async fn not_uploaded(&self, lease: &Lease, shas: &[&str]) -> Result<Vec<String>, StoreError> {
        let uploaded: HashSet<String> =
            sqlx::query_scalar("SELECT sha256 FROM lease_uploads WHERE entry = $1 AND token = $2")
                .bind(lease.entry)
                .bind(lease.token)
                .fetch_all(self.pool())
                .await?
                .into_iter()
                .collect();
        Ok(shas.iter().filter(|s| !uploaded.contains(**s)).map(|s| s.to_string()).collect())
    }

    /// Gives a leased job the artifact rows of an earlier build job (a reused stage result).
    pub async fn artifact_copy(&self, lease: &Lease, from_build_job: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(&format!(
            "INSERT INTO artifacts (build_job_id, name, path, size, sha256, created_ms, expires_ms) \
             SELECT $1, name, path, size, sha256, created_ms, expires_ms FROM artifacts WHERE build_job_id = $2 AND {}",
            held_at(3)
        ))
        .bind(lease.build_job_id)
        .bind(from_build_job)
        .bind(lease.entry)
        .bind(lease.token)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// The artifact files of a build, by job, name and path.
    pub async fn artifacts_of_build(&self, build_id: i64) -> Result<Vec<ArtifactFile>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts a JOIN build_jobs bj ON bj.id = a.build_job_id \
             WHERE bj.build_id = $1 ORDER BY bj.job_key, a.name, a.path"
        ))
        .bind(build_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(artifact_file).collect()
    }

    /// One artifact file.
    pub async fn artifact(&self, id: i64) -> Result<ArtifactFile, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts a JOIN build_jobs bj ON bj.id = a.build_job_id WHERE a.id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(artifact_file).transpose()?.ok_or_else(|| StoreError::NotFound(format!("artifact {id}")))
    }

    /// Deletes a build's artifact `name` (every file of it); returns how many files.
    pub async fn artifact_delete(&self, build_id: i64, name: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM artifacts WHERE name = $1 AND build_job_id IN (SELECT id FROM build_jobs WHERE build_id = $2)",
        )
        .bind(name.to_string())
        .bind(build_id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// Deletes the artifact files that expired before `now`; returns how many.
    pub async fn artifacts_expire(&self, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM artifacts WHERE expires_ms IS NOT NULL AND expires_ms <= $1")
            .bind(now)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Every blob some artifact row still names.
    pub async fn artifact_blobs(&self) -> Result<HashSet<String>, StoreError> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT sha256 FROM artifacts").fetch_all(self.pool()).await?;
        Ok(rows.into_iter().collect())
    }

    /// Number of artifact files and the bytes of distinct blobs they name.
    pub async fn artifact_totals(&self) -> Result<(i64, i64), StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM artifacts").fetch_one(self.pool()).await?;
        let bytes: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM (SELECT sha256, MAX(size) AS size FROM artifacts GROUP BY sha256) t",
        )
        .fetch_one(self.pool())
        .await?;
        Ok((n, bytes))
    }

    /// Adds `delta` to a storage counter.
    pub async fn counter_add(&self, name: &str, delta: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO storage_counters (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = storage_counters.value + excluded.value",
        )
        .bind(name.to_string())
        .bind(delta)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Every storage counter.
    pub async fn counters(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows = sqlx::query("SELECT name, value FROM storage_counters").fetch_all(self.pool()).await?;
        rows.iter().map(|r| Ok((r.try_get("name")?, r.try_get("value")?))).collect()
    }

    /// Deletes the log lines of builds that finished before `cutoff`; returns how many chunks.
    pub async fn logs_expire(&self, cutoff: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM log_chunks WHERE build_job_id IN (SELECT bj.id FROM build_jobs bj \
             JOIN builds b ON b.id = bj.build_id WHERE b.finished_ms IS NOT NULL AND b.finished_ms < $1)",
        )
        .bind(cutoff)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// Finished builds to delete: finished before `cutoff` (when given), or beyond a job's
    /// `keep_builds` newest builds. Returns (build id, job name, number).
    pub async fn builds_to_expire(&self, cutoff: Option<i64>) -> Result<Vec<(i64, String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT b.id, j.name, b.number FROM builds b JOIN jobs j ON j.id = b.job_id \
             WHERE b.finished_ms IS NOT NULL AND ( \
               ($1 > 0 AND b.finished_ms < $2) OR \
               (j.keep_builds IS NOT NULL AND (SELECT COUNT(*) FROM builds n WHERE n.job_id = b.job_id AND n.number > b.number) >= j.keep_builds) \
             ) ORDER BY b.id",
        )
        .bind(cutoff.unwrap_or(0))
        .bind(cutoff.unwrap_or(0))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("name")?, r.try_get("number")?))).collect()
    }

    /// Deletes a finished build and everything of it (jobs, logs, events, artifact rows).
    pub async fn delete_build(&self, id: i64) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("UPDATE builds SET root_build_id = NULL WHERE root_build_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM builds WHERE id = $1 AND finished_ms IS NOT NULL").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether a build job is still running (its workspace is in use).
    pub async fn build_job_active(&self, id: i64) -> Result<bool, StoreError> {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM build_jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(matches!(status.as_deref(), Some("running" | "queued")))
    }

    /// Reclaims free pages when more than a quarter of the file is free (SQLite only); returns
    /// the pages freed.
    pub async fn vacuum_if_worth_it(&self) -> Result<i64, StoreError> {
        if self.backend() != Backend::Sqlite {
            return Ok(0);
        }
        let free: i64 = sqlx::query_scalar("PRAGMA freelist_count").fetch_one(self.pool()).await?;
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(self.pool()).await?;
        if free < 256 || free * 4 < pages {
            return Ok(0);
        }
        sqlx::query("VACUUM").execute(self.pool()).await?;
        Ok(free)
    }

    /// Sets a job's "keep the newest N builds" (None: keep all).
    pub async fn set_keep_builds(&self, job: &str, keep: Option<i64>) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE jobs SET keep_builds = $1 WHERE name = $2")
            .bind(keep)
            .bind(job.to_string())
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("job `{job}`")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod upload_tests {
    use super::*;
    use crate::queue::Priority;
    use crate::queue::holder_tests::{build_job, request};
    use crate::testdb::stores;
    use std::time::Duration;

    #[tokio::test]
    async fn a_lease_may_record_only_the_blobs_it_uploaded_through_itself() {
        for (store, _dir) in stores().await {
            let (mine, theirs) = ("a".repeat(64), "b".repeat(64));
            let bj = build_job(&store, "uploads").await;
            store.enqueue(bj, Priority::Normal, &[]).await.unwrap();
            let first = store.lease(&request("agent-a", Duration::from_millis(1))).await.unwrap().remove(0);
            store.lease_upload(&first, &mine).await.unwrap();
            store.lease_upload(&first, &mine).await.unwrap();
            assert_eq!(store.not_uploaded(&first, &[&mine, &theirs]).await.unwrap(), vec![theirs.clone()]);

            // A new claim of the row starts with nothing uploaded; the stale one uploads nothing.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let next = store.lease(&request("agent-b", Duration::from_secs(30))).await.unwrap().remove(0);
            assert_eq!(store.not_uploaded(&next, &[&mine]).await.unwrap(), vec![mine.clone()]);
            let err = store.lease_upload(&first, &theirs).await.unwrap_err();
            assert!(matches!(err, StoreError::StaleLease { .. }), "{err}");
            let left: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM lease_uploads").fetch_one(store.pool()).await.unwrap();
            assert_eq!(left, 0);

            // The job's end forgets its uploads.
            store.lease_upload(&next, &mine).await.unwrap();
            store.start_leased_job(&next).await.unwrap();
            store.complete(&next, chengis_model::Status::Success, None).await.unwrap();
            let left: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM lease_uploads").fetch_one(store.pool()).await.unwrap();
            assert_eq!(left, 0);
        }
    }
}
