//! The `builds` and `build_jobs` tables: numbered builds per job and their jobs, with status
//! changes checked against the state machine of [`Status`].

use super::{Store, StoreError, now_ms, parse_status};
use crate::status::Status;
use sqlx::Row;

/// What starting a build records.
#[derive(Debug, Clone, Default)]
pub struct NewBuild {
    /// Trigger kind: `manual`, `push`, `schedule`, `retry`, ...
    pub trigger: String,
    /// Who or what triggered it.
    pub who: String,
    /// Commit to build.
    pub commit_sha: String,
    /// Branch the commit is on.
    pub branch: String,
    /// For retries: the first build of the chain.
    pub root_build_id: Option<i64>,
    /// Attempt number (1 for a new build).
    pub attempt: i64,
}

/// A build as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRecord {
    /// Database id.
    pub id: i64,
    /// The job's id.
    pub job_id: i64,
    /// Number within the job, from 1.
    pub number: i64,
    /// Current status.
    pub status: Status,
    /// Attempt number.
    pub attempt: i64,
}

impl Store {
    /// Creates a queued build with the job's next number (numbers never repeat within a job).
    pub async fn create_build(&self, job_id: i64, b: &NewBuild) -> Result<BuildRecord, StoreError> {
        let mut tx = self.pool().begin().await?;
        let number: i64 =
            sqlx::query_scalar("UPDATE jobs SET next_number = next_number + 1 WHERE id = $1 RETURNING next_number - 1")
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("job {job_id}")))?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO builds (job_id, number, status, trigger, who, commit_sha, branch, attempt, root_build_id, queued_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(job_id)
        .bind(number)
        .bind(Status::Queued.as_str())
        .bind(&b.trigger)
        .bind(&b.who)
        .bind(&b.commit_sha)
        .bind(&b.branch)
        .bind(b.attempt.max(1))
        .bind(b.root_build_id)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(BuildRecord { id, job_id, number, status: Status::Queued, attempt: b.attempt.max(1) })
    }

    /// Adds a job to a build, queued.
    pub async fn create_build_job(
        &self,
        build_id: i64,
        job_key: &str,
        spec: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO build_jobs (build_id, job_key, status, spec) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(build_id)
        .bind(job_key)
        .bind(Status::Queued.as_str())
        .bind(spec.to_string())
        .fetch_one(self.pool())
        .await?)
    }

    /// The status of a build job.
    pub async fn build_job_status(&self, id: i64) -> Result<Status, StoreError> {
        let s: Option<String> = sqlx::query_scalar("SELECT status FROM build_jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        parse_status(&s.ok_or_else(|| StoreError::NotFound(format!("build job {id}")))?)
    }

    /// Moves a build job to `to`, refusing transitions the state machine forbids. The update is
    /// conditional on the status read, so two writers cannot both move it from the same state.
    pub async fn transition_build_job(&self, id: i64, to: Status, reason: Option<&str>) -> Result<(), StoreError> {
        let from = self.build_job_status(id).await?;
        if !from.can_become(to) {
            return Err(StoreError::IllegalTransition { what: format!("build job {id}"), from, to });
        }
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE build_jobs SET status = $1, reason = COALESCE($2, reason), \
             started_ms = CASE WHEN $1 = 'running' THEN $3 ELSE started_ms END, \
             finished_ms = CASE WHEN $1 IN ('running', 'queued') THEN finished_ms ELSE $3 END \
             WHERE id = $4 AND status = $5",
        )
        .bind(to.as_str())
        .bind(reason)
        .bind(now)
        .bind(id)
        .bind(from.as_str())
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            let now_status = self.build_job_status(id).await?;
            return Err(StoreError::IllegalTransition { what: format!("build job {id}"), from: now_status, to });
        }
        Ok(())
    }

    /// A build by id.
    pub async fn build(&self, id: i64) -> Result<BuildRecord, StoreError> {
        let row = sqlx::query("SELECT id, job_id, number, status, attempt FROM builds WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("build {id}")))?;
        let status: String = row.try_get("status")?;
        Ok(BuildRecord {
            id: row.try_get("id")?,
            job_id: row.try_get("job_id")?,
            number: row.try_get("number")?,
            status: parse_status(&status)?,
            attempt: row.try_get("attempt")?,
        })
    }
}
